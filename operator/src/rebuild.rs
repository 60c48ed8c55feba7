//! Scheduled rebuilds as pure functions: which schedule tick is due, the name of the
//! collection it creates, and which older rebuilt collections go.

use crate::crd::{CollectionAlias, CollectionAliasStatus, RebuildSpec};
use croner::Cron;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use std::str::FromStr;

/// Missed ticks further back than this are not caught up one by one (an operator that was
/// down for a week starts one rebuild, not hundreds).
const CATCH_UP_SECONDS: i64 = 7 * 24 * 3600;

/// The nicknames a CronJob schedule accepts, as the 5-field expressions they stand for.
const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// A rebuild schedule: a 5-field cron expression (or nickname) in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

impl Schedule {
    /// The schedule of `expression` in the IANA zone `time_zone` (UTC when None). Only what a
    /// CronJob accepts: croner would also take a seconds field, which the CRD does not allow.
    pub fn new(expression: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let trimmed = expression.trim();
        let five = match NICKNAMES.iter().find(|(n, _)| *n == trimmed) {
            Some((_, five)) => five.to_string(),
            None if trimmed.starts_with('@') => {
                return Err(format!("invalid schedule {expression:?}: unknown nickname"));
            }
            None => trimmed.to_string(),
        };
        if five.split_whitespace().count() != 5 {
            return Err(format!(
                "invalid schedule {expression:?}: a cron expression has 5 fields (minute hour day-of-month month day-of-week)"
            ));
        }
        let cron = Cron::from_str(&five).map_err(|e| format!("invalid schedule {expression:?}: {e}"))?;
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|e| format!("invalid timeZone {name:?}: {e}"))?,
        };
        Ok(Schedule { cron, zone })
    }

    /// The first tick strictly after `t`.
    pub fn after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron.find_next_occurrence(&t.to_zoned(self.zone.clone()), false).ok().map(|z| z.timestamp())
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

/// Whether a tick is too late to start: missed by more than `deadline` seconds.
pub fn missed(tick: Timestamp, now: Timestamp, deadline: Option<i64>) -> bool {
    deadline.is_some_and(|d| now.as_second() - tick.as_second() > d)
}

/// `<alias>-<yyyymmdd>-<hhmm>` of the tick: the same tick always names the same collection,
/// so a retried reconcile cannot start a second rebuild.
pub fn collection_name(alias: &str, tick: Timestamp) -> String {
    format!("{alias}-{}", tick.strftime("%Y%m%d-%H%M"))
}

/// The time an alias's schedule counts from: the tick last handled (`status.lastRebuild`), or
/// the alias's creation before any. The controller, the console and the metrics all read it
/// here, so the next rebuild they show is the one the controller starts.
pub fn counted_from(ca: &CollectionAlias, status: &CollectionAliasStatus) -> Option<Timestamp> {
    status
        .last_rebuild
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| ca.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The next tick of `rebuild` after the one last handled (a controller that stops handling
/// ticks leaves it in the past), or what is wrong with the schedule.
pub fn next_tick(ca: &CollectionAlias, rebuild: &RebuildSpec) -> Result<Option<Timestamp>, String> {
    let schedule = Schedule::new(&rebuild.schedule, rebuild.time_zone.as_deref())?;
    Ok(counted_from(ca, &ca.status.clone().unwrap_or_default()).and_then(|since| schedule.after(since)))
}

/// Rebuilt collections to delete: all but the newest `keep` of those not protected (what any
/// alias targets, serves or served before, and the newest rebuild). `collections` are (name,
/// creation time).
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
        let nightly = Schedule::new("0 3 * * *", None).unwrap();
        let since = at("2026-11-24T03:00:00Z");
        assert_eq!(nightly.due(since, at("2026-11-25T02:59:59Z")), None);
        assert_eq!(nightly.due(since, at("2026-11-25T03:00:00Z")), Some(at("2026-11-25T03:00:00Z")));
        // Down for two days: one rebuild, for the latest tick.
        assert_eq!(nightly.due(since, at("2026-11-27T04:00:00Z")), Some(at("2026-11-27T03:00:00Z")));
        assert_eq!(nightly.after(at("2026-11-27T04:00:00Z")), Some(at("2026-11-28T03:00:00Z")));
    }

    #[test]
    fn a_long_outage_is_not_replayed_tick_by_tick() {
        let every_minute = Schedule::new("* * * * *", None).unwrap();
        let due = every_minute.due(at("2025-01-01T00:00:00Z"), at("2026-11-25T12:00:30Z"));
        assert_eq!(due, Some(at("2026-11-25T12:00:00Z")));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let err = Schedule::new("every night", None).unwrap_err();
        assert!(err.contains("invalid schedule \"every night\""), "{err}");
        // Seconds (croner's 6-field form) are not a CronJob schedule.
        let err = Schedule::new("0 0 3 * * *", None).unwrap_err();
        assert!(err.contains("a cron expression has 5 fields"), "{err}");
        let err = Schedule::new("@fortnightly", None).unwrap_err();
        assert!(err.contains("unknown nickname"), "{err}");
        let err = Schedule::new("0 3 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(err.contains("invalid timeZone \"Mars/Olympus\""), "{err}");
    }

    #[test]
    fn nicknames_and_time_zones_follow_cronjob() {
        let daily = Schedule::new("@daily", None).unwrap();
        assert_eq!(daily.after(at("2026-11-25T12:00:00Z")), Some(at("2026-11-26T00:00:00Z")));
        // 03:00 in Berlin: 02:00 UTC in winter, 01:00 UTC in summer.
        let berlin = Schedule::new("0 3 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(berlin.after(at("2026-12-01T12:00:00Z")), Some(at("2026-12-02T02:00:00Z")));
        assert_eq!(berlin.after(at("2026-07-01T12:00:00Z")), Some(at("2026-07-02T01:00:00Z")));
    }

    #[test]
    fn a_tick_past_its_starting_deadline_is_missed() {
        let tick = at("2026-11-25T03:00:00Z");
        assert!(!missed(tick, at("2026-11-25T03:09:59Z"), Some(600)));
        assert!(missed(tick, at("2026-11-25T03:10:01Z"), Some(600)));
        assert!(!missed(tick, at("2026-11-30T03:00:00Z"), None));
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
