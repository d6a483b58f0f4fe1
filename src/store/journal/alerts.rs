//! Balance alerts (DESIGN.md section 8): edge-triggered, decided in the commit that moves the
//! balance, under its row lock, from the batch's entries in commit order. The pure half: which
//! alerts fire and how each one's `armed` flag ends.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::plan::EntryRows;

/// An alert as the commit read it (under the balance row's lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Alert {
    pub id: Uuid,
    pub user: Uuid,
    pub currency: String,
    /// `true`: fires when the balance goes below `threshold`; `false`: above it.
    pub below: bool,
    pub threshold: i64,
    pub armed: bool,
}

impl Alert {
    /// Whether the condition holds for `balance` (minor units).
    fn holds(&self, balance: i64) -> bool {
        if self.below {
            balance < self.threshold
        } else {
            balance > self.threshold
        }
    }
}

/// One `balance.alert`: the alert, the entry's transaction and the balance after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Firing {
    pub alert: Uuid,
    pub transaction_id: Uuid,
    pub balance: i64,
}

/// What the commit writes: the alerts whose state changed (`id`, armed at the end, times
/// fired) and the events.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct AlertChanges {
    pub states: Vec<(Uuid, bool, i64)>,
    pub firings: Vec<Firing>,
}

/// Walks each alert's account through the batch's entries in order: an armed alert fires once
/// when an entry's balance makes its condition hold (and disarms); a disarmed one re-arms when
/// an entry's balance makes it stop holding. A batch that crosses twice fires twice.
pub(super) fn crossings(alerts: &[Alert], entries: &EntryRows) -> AlertChanges {
    let mut by_account: BTreeMap<(Uuid, &str), Vec<(Uuid, i64)>> = BTreeMap::new();
    for n in 0..entries.deltas.len() {
        by_account
            .entry((entries.users[n], entries.currencies[n]))
            .or_default()
            .push((entries.transaction_ids[n], entries.balances_after[n]));
    }
    let mut changes = AlertChanges::default();
    for alert in alerts {
        let Some(balances) = by_account.get(&(alert.user, alert.currency.as_str())) else {
            continue;
        };
        let mut armed = alert.armed;
        let mut fired = 0;
        for &(transaction_id, balance) in balances {
            let holds = alert.holds(balance);
            if armed && holds {
                armed = false;
                fired += 1;
                changes.firings.push(Firing {
                    alert: alert.id,
                    transaction_id,
                    balance,
                });
            } else if !armed && !holds {
                armed = true;
            }
        }
        if armed != alert.armed || fired > 0 {
            changes.states.push((alert.id, armed, fired));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(user: Uuid, balances: &[i64]) -> EntryRows {
        let mut rows = EntryRows::default();
        for (n, &balance) in balances.iter().enumerate() {
            rows.transaction_ids.push(Uuid::from_u128(n as u128 + 1));
            rows.users.push(user);
            rows.currencies.push("USD");
            rows.deltas.push(1);
            rows.balances_after.push(balance);
        }
        rows
    }

    fn below(threshold: i64, armed: bool) -> Alert {
        Alert {
            id: Uuid::from_u128(99),
            user: Uuid::from_u128(7),
            currency: "USD".into(),
            below: true,
            threshold,
            armed,
        }
    }

    #[test]
    fn an_armed_alert_fires_once_per_crossing_and_rearms_when_it_crosses_back() {
        let user = Uuid::from_u128(7);
        // 150 → 90 (fires) → 80 (still below: nothing) → 120 (re-arms) → 50 (fires again).
        let changes = crossings(&[below(100, true)], &entries(user, &[150, 90, 80, 120, 50]));
        assert_eq!(
            changes
                .firings
                .iter()
                .map(|f| f.balance)
                .collect::<Vec<_>>(),
            [90, 50]
        );
        assert_eq!(changes.states, [(Uuid::from_u128(99), false, 2)]);
    }

    #[test]
    fn a_disarmed_alert_only_rearms_and_an_untouched_one_changes_nothing() {
        let user = Uuid::from_u128(7);
        let changes = crossings(&[below(100, false)], &entries(user, &[100]));
        assert!(changes.firings.is_empty());
        assert_eq!(changes.states, [(Uuid::from_u128(99), true, 0)]);
        let changes = crossings(&[below(100, true)], &entries(user, &[100, 200]));
        assert_eq!(changes, AlertChanges::default());
        let other = crossings(&[below(100, true)], &entries(Uuid::from_u128(8), &[1]));
        assert_eq!(other, AlertChanges::default());
    }

    #[test]
    fn above_fires_strictly_above_the_threshold() {
        let mut alert = below(100, true);
        alert.below = false;
        let user = Uuid::from_u128(7);
        assert!(crossings(&[alert.clone()], &entries(user, &[100]))
            .firings
            .is_empty());
        assert_eq!(crossings(&[alert], &entries(user, &[101])).firings.len(), 1);
    }
}
