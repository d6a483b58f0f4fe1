//! Domain types: values that can only be built valid (parse, don't validate). They know nothing
//! of JSON or SQL; `routes/` and `store/` translate at the edges.

mod fx;
mod limits;
mod money;
mod movement;
mod rules;
mod schedule;
mod transaction;
mod user;

pub use fx::{convert, target_minor, Conversion, ConversionError, Rate, RateError, SpreadBps};
pub use limits::{LimitSpec, LimitSpecError, WINDOW_MAX_S};
pub use money::{Amount, AmountError, Currency, CurrencyError};
pub use movement::{
    AccountKey, AccountState, Authority, CommittedBalance, Exchange, HoldEnd, IdempotencyClaim,
    Movement, MovementError, Phase, Reversal,
};
pub use rules::{
    check_sequence, Bounds, BoundsError, Change, Counted, CurrencyBounds, Leg, LimitBreach,
    LimitKind, Limits, Prefixes, Refusal, Snapshot, WindowUsage, MONEY_BOUND_MINOR,
};
pub use schedule::{
    whole_seconds, Calendar, CalendarError, End, Every, MisfirePolicy, OnFailure, Recurrence,
    RunOutcome, ScheduleStatus, COUNT_MAX,
};
pub use transaction::{
    Description, IdempotencyKey, Reference, TextError, TransactionKind, TransactionStatus,
};
pub use user::{Email, LoginName, Password, Role, UserId, Username, FEES_USER_ID, SYSTEM_USER_ID};
