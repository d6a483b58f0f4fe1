//! A bulk's items: parsed one by one (errors named by index), turned into movements with their
//! derived idempotency claims, and their parties checked before anything is submitted.

use std::collections::HashSet;

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Mode;
use crate::auth::Principal;
use crate::domain::{
    Authority, Description, IdempotencyClaim, IdempotencyKey, Movement, Reference, TransactionKind,
    UserId, SYSTEM_USER_ID,
};
use crate::error::{ApiError, FieldError};
use crate::routes::input::{parse, Fields, JsonObject};
use crate::routes::AppState;
use crate::store;

/// A validated item, before it becomes a movement.
pub(super) struct ItemSpec {
    kind: TransactionKind,
    from: UserId,
    to: UserId,
    amount: crate::domain::Amount,
    currency: crate::domain::Currency,
    description: Option<Description>,
    reference: Option<Reference>,
    /// `Admin` when the item moves another user's money (re-checked in the commit).
    authority: Authority,
    /// `hold.timeout_s`: the item is a hold (transfers and debits only).
    hold: Option<u32>,
}

impl ItemSpec {
    pub(super) fn authority(&self) -> Authority {
        self.authority
    }
}

/// Item `index` of a bulk as the caller `principal` sent it; `hold_max` is
/// `holds.timeout_s_max`. Errors: every field error of the item, named
/// `transactions[<index>].<field>`.
pub(super) fn parse_item(
    index: usize,
    item: Value,
    principal: Principal,
    hold_max: u32,
) -> Result<ItemSpec, Vec<FieldError>> {
    let prefix = |errors: Vec<FieldError>| {
        errors
            .into_iter()
            .map(|error| {
                FieldError::new(
                    format!("transactions[{index}].{}", error.field),
                    error.message,
                )
            })
            .collect()
    };
    let Value::Object(object) = item else {
        return Err(vec![FieldError::new(
            format!("transactions[{index}]"),
            "must be an object",
        )]);
    };
    let mut fields = Fields::new(JsonObject(object));
    let kind = fields.required(
        "type",
        parse::text(|kind: &str| match TransactionKind::parse(kind) {
            Some(
                kind @ (TransactionKind::Credit
                | TransactionKind::Debit
                | TransactionKind::Transfer),
            ) => Ok(kind),
            _ => Err(crate::domain::TextError::Invalid(
                "must be credit, debit or transfer",
            )),
        }),
    );
    let amount = fields.required("amount", parse::amount);
    let currency = fields.required("currency", parse::currency);
    let description = fields.optional("description", parse::text(Description::parse));
    let reference = fields.optional("reference", parse::text(Reference::parse));
    let user_id = fields
        .optional("user_id", parse::uuid)
        .map(UserId::from_uuid);
    let from_user_id = fields
        .optional("from_user_id", parse::uuid)
        .map(UserId::from_uuid);
    let to_user_id = fields
        .optional("to_user_id", parse::uuid)
        .map(UserId::from_uuid);
    let hold = fields.optional("hold", parse::hold(hold_max));
    // The system account is every credit's and debit's counterparty, never a party by name.
    for (name, value) in [
        ("user_id", user_id),
        ("from_user_id", from_user_id),
        ("to_user_id", to_user_id),
    ] {
        if value.is_some_and(UserId::is_system) {
            fields.error(name, "no such user");
        }
    }
    match kind {
        Some(TransactionKind::Transfer) => {
            if user_id.is_some() {
                fields.error("user_id", "is not a field of a transfer (use from_user_id)");
            }
            if to_user_id.is_none() {
                fields.error("to_user_id", "is required");
            }
            if to_user_id.is_some() && to_user_id == Some(from_user_id.unwrap_or(principal.user)) {
                fields.error("to_user_id", "must be another user than the sender");
            }
        }
        Some(kind) => {
            for (name, value) in [("from_user_id", from_user_id), ("to_user_id", to_user_id)] {
                if value.is_some() {
                    fields.error(name, "is not a field of a credit or debit (use user_id)");
                }
            }
            if kind == TransactionKind::Credit && hold.is_some() {
                fields.error(
                    "hold",
                    "a credit cannot be held (only money leaving a user's account can)",
                );
            }
        }
        None => {}
    }
    fields.finish().map_err(|error| match error {
        ApiError::Validation(errors) => prefix(errors),
        _ => Vec::new(),
    })?;
    let kind = kind.expect("finish() refuses missing fields");
    let (from, to) = match kind {
        TransactionKind::Credit => (SYSTEM_USER_ID, user_id.unwrap_or(principal.user)),
        TransactionKind::Debit => (user_id.unwrap_or(principal.user), SYSTEM_USER_ID),
        _ => (
            from_user_id.unwrap_or(principal.user),
            to_user_id.expect("checked above"),
        ),
    };
    let owner = if kind == TransactionKind::Credit {
        to
    } else {
        from
    };
    let authority = if owner == principal.user {
        Authority::Owner
    } else {
        Authority::Admin
    };
    Ok(ItemSpec {
        kind,
        from,
        to,
        amount: amount.expect("finish() refuses missing fields"),
        currency: currency.expect("finish() refuses missing fields"),
        description,
        reference,
        authority,
        hold,
    })
}

/// The movements of the validated items, each claimed under `<key>#<index>` when the request
/// has a key. Every item's stored request hash covers the whole bulk (mode and every item), so
/// the same key with any other body (an item changed, added or removed, the other mode) is
/// `idempotency_key_reused`, never a partial replay or a partial application.
pub(super) fn movements(
    specs: Vec<ItemSpec>,
    principal: Principal,
    mode: Mode,
    key: Option<&IdempotencyKey>,
) -> Vec<Movement> {
    let mut movements: Vec<Movement> = specs
        .into_iter()
        .map(|spec| {
            let movement = match spec.kind {
                TransactionKind::Credit => Movement::credit(
                    spec.to,
                    spec.amount,
                    spec.currency,
                    principal.user,
                    spec.authority,
                ),
                TransactionKind::Debit => Movement::debit(
                    spec.from,
                    spec.amount,
                    spec.currency,
                    principal.user,
                    spec.authority,
                ),
                _ => Movement::transfer(
                    spec.from,
                    spec.to,
                    spec.amount,
                    spec.currency,
                    principal.user,
                    spec.authority,
                ),
            };
            let movement = movement
                .expect("parse_item refuses system parties and self-transfers")
                .with_details(spec.description, spec.reference);
            match spec.hold {
                Some(timeout_s) => movement
                    .with_hold(timeout_s)
                    .expect("parse_item refuses held credits and zero timeouts"),
                None => movement,
            }
        })
        .collect();
    if let Some(key) = key {
        let bulk_hash = {
            let mut hasher = Sha256::new();
            let mode_name: &[u8] = match mode {
                Mode::Atomic => b"atomic",
                Mode::Independent => b"independent",
            };
            hasher.update(mode_name);
            hasher.update((movements.len() as u64).to_be_bytes());
            for movement in &movements {
                hasher.update(movement.request_hash());
            }
            hasher.finalize()
        };
        movements = movements
            .into_iter()
            .enumerate()
            .map(|(index, movement)| {
                let mut hasher = Sha256::new();
                hasher.update(bulk_hash);
                hasher.update((index as u64).to_be_bytes());
                movement.with_claim(IdempotencyClaim {
                    key: IdempotencyKey::parse(&format!("{}#{index}", key.as_str()))
                        .expect("250 + 5 characters fit"),
                    request_hash: hasher.finalize().into(),
                })
            })
            .collect();
    }

    movements
}

/// Every party must be an active user (the caller included: a token outlives its user).
pub(super) async fn check_parties(
    state: &AppState,
    principal: Principal,
    specs: &[Movement],
) -> Result<(), ApiError> {
    let mut wanted: HashSet<Uuid> = HashSet::from([principal.user.as_uuid()]);
    for spec in specs {
        for party in [spec.from(), spec.to()] {
            if !party.is_system() {
                wanted.insert(party.as_uuid());
            }
        }
    }
    let wanted: Vec<Uuid> = wanted.into_iter().collect();
    let client = state.pool.get().await?;
    let active: HashSet<Uuid> = store::users::active_among(&client, &wanted)
        .await?
        .into_iter()
        .collect();
    if !active.contains(&principal.user.as_uuid()) {
        return Err(ApiError::Unauthorized(
            "the user of this access token no longer exists",
        ));
    }
    let mut errors = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let named = match spec.kind() {
            TransactionKind::Transfer => [("from_user_id", spec.from()), ("to_user_id", spec.to())],
            TransactionKind::Credit => [("user_id", spec.to()), ("user_id", spec.to())],
            _ => [("user_id", spec.from()), ("user_id", spec.from())],
        };
        let mut reported = false;
        for (field, party) in named {
            if !reported && !party.is_system() && !active.contains(&party.as_uuid()) {
                errors.push(FieldError::new(
                    format!("transactions[{index}].{field}"),
                    "no such user",
                ));
                reported = true;
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}
