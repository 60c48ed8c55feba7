//! Scheduled rebuilds as pure functions: which schedule tick is due, the name of the
//! collection it creates, and which older rebuilt collections go.

use croner::Cron;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use std::str::FromStr;

/// Missed ticks further back than this are not caught up one by one (an operator that was
/// down for a week starts one rebuild, not hundreds).
const CATCH_UP_SECONDS: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct Schedule(Cron);

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cron::from_str(s).map(Schedule).map_err(|e| format!("invalid schedule {s:?}: {e}"))
    }
}

impl Schedule {
    /// The first tick strictly after `t` (UTC).
    pub fn after(&self, t: Timestamp) -> Option<Timestamp> {
        self.0.find_next_occurrence(&t.to_zoned(TimeZone::UTC), false).ok().map(|z| z.timestamp())
    }

    /// The latest tick in `(since, now]`: the rebuild that is due, if any.
    pub fn due(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let floor = Timestamp::from_second(now.as_second() - CATCH_UP_SECONDS).unwrap_or(since);
        let mut tick = self.after(since.max(floor)).filter(|t| *t <= now)?;
        while let Some(next) = self.after(tick).filter(|t| *t <= now) {
            tick = next;
        }
        Some(tick)
    }
}

/// `<alias>-<yyyymmdd>-<hhmm>` of the tick: the same tick always names the same collection,
/// so a retried reconcile cannot start a second rebuild.
pub fn collection_name(alias: &str, tick: Timestamp) -> String {
    format!("{alias}-{}", tick.strftime("%Y%m%d-%H%M"))
}

/// Rebuilt collections to delete: all but the newest `keep` of those not protected (the
/// alias's target, current and previous). `collections` are (name, creation time).
pub fn to_delete(mut collections: Vec<(String, Timestamp)>, protected: &[&str], keep: usize) -> Vec<String> {
    collections.retain(|(name, _)| !protected.contains(&name.as_str()));
    collections.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    collections.into_iter().skip(keep).map(|(name, _)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_latest_missed_tick_is_due_and_none_before_the_first() {
        let nightly: Schedule = "0 3 * * *".parse().unwrap();
        let since = at("2026-11-24T03:00:00Z");
        assert_eq!(nightly.due(since, at("2026-11-25T02:59:59Z")), None);
        assert_eq!(nightly.due(since, at("2026-11-25T03:00:00Z")), Some(at("2026-11-25T03:00:00Z")));
        // Down for two days: one rebuild, for the latest tick.
        assert_eq!(nightly.due(since, at("2026-11-27T04:00:00Z")), Some(at("2026-11-27T03:00:00Z")));
        assert_eq!(nightly.after(at("2026-11-27T04:00:00Z")), Some(at("2026-11-28T03:00:00Z")));
    }

    #[test]
    fn a_long_outage_is_not_replayed_tick_by_tick() {
        let every_minute: Schedule = "* * * * *".parse().unwrap();
        let due = every_minute.due(at("2025-01-01T00:00:00Z"), at("2026-11-25T12:00:30Z"));
        assert_eq!(due, Some(at("2026-11-25T12:00:00Z")));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let err = "every night".parse::<Schedule>().unwrap_err();
        assert!(err.contains("invalid schedule \"every night\""), "{err}");
    }

    #[test]
    fn names_come_from_the_tick() {
        assert_eq!(collection_name("products", at("2026-11-25T03:00:00Z")), "products-20261125-0300");
    }

    #[test]
    fn history_keeps_the_newest_and_never_the_protected() {
        let c = |n: &str, day: u32| (n.to_string(), at(&format!("2026-11-{day:02}T03:00:00Z")));
        let all = vec![c("p-1", 1), c("p-2", 2), c("p-3", 3), c("p-4", 4), c("p-5", 5)];
        // p-5 is the target being built, p-4 current, p-1 previous (after a rollback).
        let gone = to_delete(all.clone(), &["p-5", "p-4", "p-1"], 1);
        assert_eq!(gone, ["p-2"]);
        assert_eq!(to_delete(all.clone(), &["p-5", "p-4"], 0), ["p-3", "p-2", "p-1"]);
        assert!(to_delete(all, &[], 10).is_empty());
    }
}
