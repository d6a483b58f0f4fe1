//! When a schedule's occurrences are due (DESIGN.md section 9): a start instant and, for a
//! recurring schedule, a [`Recurrence`] (every day, week or month, an interval, a count or an
//! end, in an IANA time zone). The calendar arithmetic is RFC 5545's, done by the `rrule` crate
//! with `chrono-tz`'s zone data, never by hand: local wall time is kept across DST changes (a
//! time in the spring gap moves forward by the gap, 02:30 becomes 03:30; an ambiguous autumn
//! time takes its first instant), and a monthly schedule started on the 29th to 31st runs on the
//! last day of shorter months (expressed as `BYMONTHDAY=28,...,d;BYSETPOS=-1`: iCalendar alone
//! would skip the months that lack day `d`).
//!
//! Occurrences are numbered from 1 (the start is occurrence 1) and computed lazily, by
//! iterating the rule from the start: nothing is materialized, and the cost of occurrence `n` is
//! `O(n)`, bounded by [`COUNT_MAX`] and the intervals' bounds for a schedule with an end.

use chrono::{DateTime, Datelike, Utc};

/// Most occurrences a recurring schedule may have (`count`).
pub const COUNT_MAX: u32 = 10_000;

/// The unit a schedule recurs by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Day,
    Week,
    Month,
}

impl Every {
    pub fn parse(text: &str) -> Option<Every> {
        match text {
            "day" => Some(Every::Day),
            "week" => Some(Every::Week),
            "month" => Some(Every::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Every::Day => "day",
            Every::Week => "week",
            Every::Month => "month",
        }
    }

    /// The largest `interval` of this unit: ten years, so a schedule's next occurrence is
    /// never further away than that.
    pub fn interval_max(self) -> u16 {
        match self {
            Every::Day => 3660,
            Every::Week => 520,
            Every::Month => 120,
        }
    }
}

/// How a recurring schedule ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Never (until cancelled).
    Never,
    /// After this many occurrences, 1 to [`COUNT_MAX`].
    Count(u32),
    /// At the last occurrence at or before this instant.
    Until(DateTime<Utc>),
}

/// Every `interval` days, weeks or months in `zone`, ending per `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recurrence {
    pub every: Every,
    pub interval: u16,
    pub end: End,
    pub zone: chrono_tz::Tz,
}

/// Why a calendar could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("interval must be from 1 to {max} for every {every}")]
    Interval { every: &'static str, max: u16 },
    #[error("count must be from 1 to {COUNT_MAX}")]
    Count,
    #[error("until must not be before start_at")]
    UntilBeforeStart,
    #[error("the recurrence is not valid: {0}")]
    Rule(String),
}

impl CalendarError {
    /// The request field (inside `recurrence`) the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            CalendarError::Interval { .. } => "interval",
            CalendarError::Count => "count",
            CalendarError::UntilBeforeStart => "until",
            CalendarError::Rule(_) => "every",
        }
    }
}

/// What the executor does with occurrences it finds due more than `schedules.misfire_grace_s`
/// ago (after downtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisfirePolicy {
    /// One run now for all the missed occurrences (the latest); the others are skipped.
    RunOnce,
    /// Every missed occurrence runs, in order.
    CatchUp,
    /// The missed occurrences are skipped; the schedule goes on with the next one.
    Skip,
}

impl MisfirePolicy {
    pub fn parse(text: &str) -> Option<MisfirePolicy> {
        match text {
            "run_once" => Some(MisfirePolicy::RunOnce),
            "catch_up" => Some(MisfirePolicy::CatchUp),
            "skip" => Some(MisfirePolicy::Skip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MisfirePolicy::RunOnce => "run_once",
            MisfirePolicy::CatchUp => "catch_up",
            MisfirePolicy::Skip => "skip",
        }
    }
}

/// What the executor does when the ledger refuses an occurrence (insufficient funds, a limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The occurrence is recorded failed; the schedule goes on.
    Fail,
    /// Tried again every `schedules.retry_interval_s`, up to `schedules.retry_max_attempts`
    /// attempts, then recorded failed.
    Retry,
}

impl OnFailure {
    pub fn parse(text: &str) -> Option<OnFailure> {
        match text {
            "fail" => Some(OnFailure::Fail),
            "retry" => Some(OnFailure::Retry),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Fail => "fail",
            OnFailure::Retry => "retry",
        }
    }
}

/// A schedule's state: `active` and `paused` ones have a next occurrence; `cancelled` and
/// `completed` ones are finished and never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleStatus {
    Active,
    Paused,
    Cancelled,
    Completed,
}

impl ScheduleStatus {
    pub fn parse(text: &str) -> Option<ScheduleStatus> {
        match text {
            "active" => Some(ScheduleStatus::Active),
            "paused" => Some(ScheduleStatus::Paused),
            "cancelled" => Some(ScheduleStatus::Cancelled),
            "completed" => Some(ScheduleStatus::Completed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleStatus::Active => "active",
            ScheduleStatus::Paused => "paused",
            ScheduleStatus::Cancelled => "cancelled",
            ScheduleStatus::Completed => "completed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, ScheduleStatus::Cancelled | ScheduleStatus::Completed)
    }
}

/// How an occurrence was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Completed,
    Failed,
    Skipped,
}

impl RunOutcome {
    pub fn parse(text: &str) -> Option<RunOutcome> {
        match text {
            "completed" => Some(RunOutcome::Completed),
            "failed" => Some(RunOutcome::Failed),
            "skipped" => Some(RunOutcome::Skipped),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::Failed => "failed",
            RunOutcome::Skipped => "skipped",
        }
    }
}

/// A schedule's calendar: when each occurrence is due. Built only valid ([`Calendar::new`]).
#[derive(Debug, Clone)]
pub struct Calendar {
    start: DateTime<Utc>,
    /// `None` for a one-off schedule (its only occurrence is `start`).
    rule: Option<rrule::RRuleSet>,
}

/// `Tz` of `rrule`, the crate's own wrapper of a `chrono_tz::Tz`.
fn zone_of(zone: chrono_tz::Tz) -> rrule::Tz {
    rrule::Tz::Tz(zone)
}

impl Calendar {
    /// A calendar from `start` (whole seconds: a fraction is dropped, as iCalendar has none)
    /// with an optional recurrence.
    ///
    /// Errors: an interval of 0 or above [`Every::interval_max`], a count of 0 or above
    /// [`COUNT_MAX`], an end before the start, or a rule `rrule` refuses.
    pub fn new(
        start: DateTime<Utc>,
        recurrence: Option<Recurrence>,
    ) -> Result<Calendar, CalendarError> {
        let start = whole_seconds(start);
        let Some(recurrence) = recurrence else {
            return Ok(Calendar { start, rule: None });
        };
        let every = recurrence.every;
        if !(1..=every.interval_max()).contains(&recurrence.interval) {
            return Err(CalendarError::Interval {
                every: every.as_str(),
                max: every.interval_max(),
            });
        }
        let zone = zone_of(recurrence.zone);
        let local_start = start.with_timezone(&zone);
        let frequency = match every {
            Every::Day => rrule::Frequency::Daily,
            Every::Week => rrule::Frequency::Weekly,
            Every::Month => rrule::Frequency::Monthly,
        };
        let mut rule = rrule::RRule::new(frequency).interval(recurrence.interval);
        let day = local_start.day();
        if every == Every::Month && day > 28 {
            // The last day of the month when the month is too short for `day`: of the days
            // 28..=day that the month has, the last (BYSETPOS=-1). `day` itself is the last of
            // them in every month that has it, so the start is an occurrence.
            let days = (28..=day)
                .map(|day| i8::try_from(day).expect("a day of the month fits an i8"))
                .collect();
            rule = rule.by_month_day(days).by_set_pos(vec![-1]);
        }
        match recurrence.end {
            End::Never => {}
            End::Count(count) => {
                if !(1..=COUNT_MAX).contains(&count) {
                    return Err(CalendarError::Count);
                }
                rule = rule.count(count);
            }
            End::Until(until) => {
                if until < start {
                    return Err(CalendarError::UntilBeforeStart);
                }
                rule = rule.until(until.with_timezone(&rrule::Tz::UTC));
            }
        }
        let set = rule
            .build(local_start)
            .map_err(|error| CalendarError::Rule(error.to_string()))?;
        Ok(Calendar {
            start,
            rule: Some(set),
        })
    }

    /// The first occurrence (the start, in whole seconds).
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// All occurrences in order, lazily.
    fn occurrences(&self) -> Box<dyn Iterator<Item = DateTime<Utc>> + '_> {
        match &self.rule {
            None => Box::new(std::iter::once(self.start)),
            Some(set) => Box::new(set.clone().into_iter().map(|at| at.with_timezone(&Utc))),
        }
    }

    /// Occurrences `n, n + 1, ...` (from 1) with their due times, lazily: what the executor
    /// and a resume walk through (one pass, not one iteration from the start per occurrence).
    pub fn from_occurrence(&self, n: u64) -> impl Iterator<Item = (u64, DateTime<Utc>)> + '_ {
        let skip = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
        self.occurrences()
            .zip(1..)
            .skip(skip)
            .map(|(at, n)| (n, at))
    }

    /// When occurrence `n` (from 1) is due; `None` past the last one.
    pub fn occurrence(&self, n: u64) -> Option<DateTime<Utc>> {
        let index = usize::try_from(n.checked_sub(1)?).ok()?;
        self.occurrences().nth(index)
    }

    /// The first occurrence strictly after `due` (the one after an occurrence due at `due`);
    /// `None` when the schedule ends before.
    pub fn after(&self, due: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.occurrences().find(|at| *at > due)
    }
}

/// `at` without its fraction of a second.
pub fn whole_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).expect("a whole second of a valid instant")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::{America::New_York, Europe::Berlin};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn calendar(
        start: &str,
        every: Every,
        interval: u16,
        end: End,
        zone: chrono_tz::Tz,
    ) -> Calendar {
        Calendar::new(
            utc(start),
            Some(Recurrence {
                every,
                interval,
                end,
                zone,
            }),
        )
        .unwrap()
    }

    /// The first `n` occurrences as RFC 3339 in `zone`.
    fn first(calendar: &Calendar, n: usize, zone: chrono_tz::Tz) -> Vec<String> {
        calendar
            .occurrences()
            .take(n)
            .map(|at| at.with_timezone(&zone).to_rfc3339())
            .collect()
    }

    #[test]
    fn a_one_off_has_one_occurrence() {
        let calendar = Calendar::new(utc("2030-01-01T10:00:00.750Z"), None).unwrap();
        assert_eq!(calendar.occurrence(1), Some(utc("2030-01-01T10:00:00Z")));
        assert_eq!(calendar.occurrence(2), None);
        assert_eq!(calendar.occurrence(0), None);
        assert_eq!(calendar.after(calendar.start()), None);
    }

    #[test]
    fn berlin_daily_keeps_wall_time_across_both_dst_changes() {
        // 2030: CEST starts Sunday 31 March (02:00 → 03:00), ends Sunday 27 October (03:00 →
        // 02:00). 02:30 does not exist on 31 March and exists twice on 27 October.
        let spring = calendar("2030-03-30T01:30:00Z", Every::Day, 1, End::Never, Berlin);
        assert_eq!(
            first(&spring, 3, Berlin),
            [
                "2030-03-30T02:30:00+01:00",
                // In the gap: moved forward by the gap.
                "2030-03-31T03:30:00+02:00",
                "2030-04-01T02:30:00+02:00",
            ]
        );
        let autumn = calendar("2030-10-26T00:30:00Z", Every::Day, 1, End::Never, Berlin);
        assert_eq!(
            first(&autumn, 3, Berlin),
            [
                "2030-10-26T02:30:00+02:00",
                // Ambiguous: the first of the two instants (still CEST).
                "2030-10-27T02:30:00+02:00",
                "2030-10-28T02:30:00+01:00",
            ]
        );
        // A 09:00 schedule is 09:00 local on both sides: 24 h apart in UTC except across the
        // change, where it is 23 h (spring) or 25 h (autumn).
        let nine = calendar("2030-03-30T08:00:00Z", Every::Day, 1, End::Never, Berlin);
        let due: Vec<_> = nine.occurrences().take(3).collect();
        assert_eq!(due[1] - due[0], chrono::Duration::hours(23));
        assert_eq!(due[2] - due[1], chrono::Duration::hours(24));
    }

    #[test]
    fn new_york_weekly_keeps_wall_time_across_both_dst_changes() {
        // 2030: EDT starts Sunday 10 March 02:00, ends Sunday 3 November 02:00.
        let spring = calendar("2030-03-03T07:30:00Z", Every::Week, 1, End::Never, New_York);
        assert_eq!(
            first(&spring, 3, New_York),
            [
                "2030-03-03T02:30:00-05:00",
                "2030-03-10T03:30:00-04:00",
                "2030-03-17T02:30:00-04:00",
            ]
        );
        let autumn = calendar("2030-10-27T05:30:00Z", Every::Week, 1, End::Never, New_York);
        assert_eq!(
            first(&autumn, 3, New_York),
            [
                "2030-10-27T01:30:00-04:00",
                "2030-11-03T01:30:00-04:00",
                "2030-11-10T01:30:00-05:00",
            ]
        );
    }

    #[test]
    fn monthly_on_the_31st_runs_on_the_last_day_of_shorter_months() {
        let rent = calendar(
            "2031-01-31T09:00:00Z",
            Every::Month,
            1,
            End::Never,
            chrono_tz::UTC,
        );
        let days: Vec<String> = rent
            .occurrences()
            .take(13)
            .map(|at| at.format("%Y-%m-%d").to_string())
            .collect();
        assert_eq!(
            days,
            [
                "2031-01-31",
                "2031-02-28",
                "2031-03-31",
                "2031-04-30",
                "2031-05-31",
                "2031-06-30",
                "2031-07-31",
                "2031-08-31",
                "2031-09-30",
                "2031-10-31",
                "2031-11-30",
                "2031-12-31",
                "2032-01-31",
            ]
        );
        // In a leap year February has a 29th; a schedule on the 30th takes it too.
        let thirtieth = calendar(
            "2032-01-30T09:00:00Z",
            Every::Month,
            1,
            End::Never,
            chrono_tz::UTC,
        );
        assert_eq!(thirtieth.occurrence(2), Some(utc("2032-02-29T09:00:00Z")));
        assert_eq!(thirtieth.occurrence(3), Some(utc("2032-03-30T09:00:00Z")));
        // The day is the local one: 23:30 UTC on 30 April is 1 May in Berlin.
        let local = calendar("2031-01-30T23:30:00Z", Every::Month, 1, End::Never, Berlin);
        assert_eq!(
            first(&local, 2, Berlin),
            ["2031-01-31T00:30:00+01:00", "2031-02-28T00:30:00+01:00"]
        );
    }

    #[test]
    fn february_29th() {
        // Every 12 months from 29 February: the 28th in common years, the 29th in leap years.
        let yearly = calendar(
            "2028-02-29T12:00:00Z",
            Every::Month,
            12,
            End::Never,
            chrono_tz::UTC,
        );
        let days: Vec<String> = yearly
            .occurrences()
            .take(5)
            .map(|at| at.format("%Y-%m-%d").to_string())
            .collect();
        assert_eq!(
            days,
            [
                "2028-02-29",
                "2029-02-28",
                "2030-02-28",
                "2031-02-28",
                "2032-02-29"
            ]
        );
        // Daily across it.
        let daily = calendar(
            "2028-02-28T12:00:00Z",
            Every::Day,
            1,
            End::Never,
            chrono_tz::UTC,
        );
        assert_eq!(daily.occurrence(2), Some(utc("2028-02-29T12:00:00Z")));
        assert_eq!(daily.occurrence(3), Some(utc("2028-03-01T12:00:00Z")));
    }

    #[test]
    fn count_and_until_end_the_schedule() {
        let counted = calendar(
            "2030-01-01T00:00:00Z",
            Every::Day,
            2,
            End::Count(3),
            chrono_tz::UTC,
        );
        assert_eq!(counted.occurrence(3), Some(utc("2030-01-05T00:00:00Z")));
        assert_eq!(counted.occurrence(4), None);
        assert_eq!(counted.after(utc("2030-01-05T00:00:00Z")), None);
        // `until` is inclusive: an occurrence exactly at it is the last.
        let until = calendar(
            "2030-01-01T00:00:00Z",
            Every::Day,
            2,
            End::Until(utc("2030-01-05T00:00:00Z")),
            chrono_tz::UTC,
        );
        assert_eq!(until.occurrences().count(), 3);
        let before = calendar(
            "2030-01-01T00:00:00Z",
            Every::Day,
            2,
            End::Until(utc("2030-01-04T23:59:59Z")),
            chrono_tz::UTC,
        );
        assert_eq!(before.occurrences().count(), 2);
        // `after` steps from an occurrence to the next one.
        assert_eq!(
            counted.after(utc("2030-01-01T00:00:00Z")),
            Some(utc("2030-01-03T00:00:00Z"))
        );
    }

    #[test]
    fn bad_recurrences_are_refused() {
        let start = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let recurrence = |interval, end| {
            Some(Recurrence {
                every: Every::Month,
                interval,
                end,
                zone: Berlin,
            })
        };
        assert!(matches!(
            Calendar::new(start, recurrence(0, End::Never)),
            Err(CalendarError::Interval { .. })
        ));
        assert!(matches!(
            Calendar::new(start, recurrence(121, End::Never)),
            Err(CalendarError::Interval { .. })
        ));
        assert_eq!(
            Calendar::new(start, recurrence(1, End::Count(0))).unwrap_err(),
            CalendarError::Count
        );
        assert_eq!(
            Calendar::new(start, recurrence(1, End::Count(COUNT_MAX + 1))).unwrap_err(),
            CalendarError::Count
        );
        assert_eq!(
            Calendar::new(
                start,
                recurrence(1, End::Until(start - chrono::Duration::seconds(1)))
            )
            .unwrap_err(),
            CalendarError::UntilBeforeStart
        );
    }
}
