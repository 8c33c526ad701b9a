//! Aggregation groups as a state machine driven by the caller's clock: a
//! group is born with its first alert and flushes after `group_wait`, then
//! every `group_interval`. A flush notifies only when something changed since
//! the last notification (a new firing alert, a newly resolved one when the
//! receiver wants those) or when `repeat_interval` has passed — Alertmanager's
//! dedup stage, over a notification log that survives restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Alert, Fingerprint, LabelSet};
use crate::route::RouteOpts;

/// What a receiver was last told about a group: the notification log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedState {
    pub firing: BTreeSet<Fingerprint>,
    pub resolved: BTreeSet<Fingerprint>,
    pub at: DateTime<Utc>,
}

impl NotifiedState {
    /// A stable hash of the firing and resolved sets (not of the time).
    pub fn hash(&self) -> String {
        state_hash(&self.firing, &self.resolved)
    }
}

pub fn state_hash(firing: &BTreeSet<Fingerprint>, resolved: &BTreeSet<Fingerprint>) -> String {
    let mut h = Sha256::new();
    for fp in firing {
        h.update(fp.to_string().as_bytes());
        h.update(b",");
    }
    h.update(b"|");
    for fp in resolved {
        h.update(fp.to_string().as_bytes());
        h.update(b",");
    }
    hex::encode(&h.finalize()[..16])
}

/// Alertmanager's rule for whether a flush must notify.
pub fn needs_update(
    last: Option<&NotifiedState>,
    firing: &BTreeSet<Fingerprint>,
    resolved: &BTreeSet<Fingerprint>,
    send_resolved: bool,
    repeat_interval: chrono::Duration,
    now: DateTime<Utc>,
) -> bool {
    let Some(last) = last else {
        return !firing.is_empty();
    };
    if !firing.is_subset(&last.firing) {
        return true;
    }
    if firing.is_empty() {
        // Everything resolved: tell the receiver once, if it had been told
        // something was firing.
        return !last.firing.is_empty();
    }
    if send_resolved && !resolved.is_subset(&last.resolved) {
        return true;
    }
    last.at + repeat_interval <= now
}

/// One notification to one receiver about one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub receiver: String,
    pub group_key: String,
    pub group_labels: LabelSet,
    /// Labels every alert of the notification shares.
    pub common_labels: LabelSet,
    pub common_annotations: LabelSet,
    pub firing: Vec<Alert>,
    pub resolved: Vec<Alert>,
    /// The state this notification tells the receiver about; recorded in the
    /// notification log once delivered.
    pub state: NotifiedState,
}

impl Notification {
    pub fn new(
        receiver: &str,
        group_key: &str,
        group_labels: LabelSet,
        firing: Vec<Alert>,
        resolved: Vec<Alert>,
        now: DateTime<Utc>,
    ) -> Self {
        let all: Vec<&Alert> = firing.iter().chain(resolved.iter()).collect();
        let common = |pick: fn(&Alert) -> &LabelSet| -> LabelSet {
            let Some(first) = all.first() else {
                return LabelSet::new();
            };
            pick(first)
                .iter()
                .filter(|(k, v)| all.iter().all(|a| pick(a).get(*k) == Some(*v)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let common_labels = common(|a| &a.labels);
        let common_annotations = common(|a| &a.annotations);
        let state = NotifiedState {
            firing: firing.iter().map(Alert::fingerprint).collect(),
            resolved: resolved.iter().map(Alert::fingerprint).collect(),
            at: now,
        };
        Self {
            receiver: receiver.to_owned(),
            group_key: group_key.to_owned(),
            group_labels,
            common_labels,
            common_annotations,
            firing,
            resolved,
            state,
        }
    }

    /// Firing when any alert fires, resolved otherwise.
    pub fn status(&self) -> crate::model::Status {
        if self.firing.is_empty() {
            crate::model::Status::Resolved
        } else {
            crate::model::Status::Firing
        }
    }

    /// Every alert of the notification, firing first.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.firing.iter().chain(self.resolved.iter())
    }

    /// The highest severity among the firing alerts (or all, when resolved).
    pub fn severity(&self) -> Option<crate::model::Severity> {
        let source: Vec<&Alert> = if self.firing.is_empty() {
            self.resolved.iter().collect()
        } else {
            self.firing.iter().collect()
        };
        source.iter().filter_map(|a| a.severity()).min()
    }
}

/// What a flush decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Flush {
    /// Not due yet.
    NotDue,
    /// Due, nothing to tell.
    Quiet,
    /// Due and nothing to deliver, but the log must move on (everything
    /// resolved for a receiver that does not want resolved notifications).
    Record(NotifiedState),
    /// Deliver this.
    Notify(Notification),
}

/// The alerts one route sends to one receiver under one group key.
#[derive(Debug, Clone)]
pub struct AggregationGroup {
    pub opts: RouteOpts,
    pub key: String,
    pub labels: LabelSet,
    pub send_resolved: bool,
    /// Shared with the dispatcher's own map: one copy of each alert.
    alerts: BTreeMap<Fingerprint, Arc<Alert>>,
    next_flush: DateTime<Utc>,
    has_flushed: bool,
    /// The last flush: the group's interval grid (flushes every
    /// `group_interval`) counts from there.
    last_flush: Option<DateTime<Utc>>,
    /// Alerts dropped since the last [`AggregationGroup::take_dropped`], so
    /// the dispatcher can forget them without scanning every group.
    dropped: Vec<Fingerprint>,
}

impl AggregationGroup {
    /// A group born now: it first flushes after `group_wait`.
    pub fn new(opts: RouteOpts, first: &Alert, send_resolved: bool, now: DateTime<Utc>) -> Self {
        let key = opts.group_key(&first.labels);
        let labels = opts.group_by.group_labels(&first.labels);
        let next_flush = now + opts.group_wait;
        Self {
            opts,
            key,
            labels,
            send_resolved,
            alerts: BTreeMap::new(),
            next_flush,
            has_flushed: false,
            last_flush: None,
            dropped: Vec::new(),
        }
    }

    /// Adds or refreshes an alert. An alert that started longer than
    /// `group_wait` ago makes a not-yet-flushed group flush at once.
    /// Returns true when the alert is new to the group.
    pub fn insert(&mut self, alert: impl Into<Arc<Alert>>, now: DateTime<Utc>) -> bool {
        let alert = alert.into();
        if !self.has_flushed && alert.starts_at + self.opts.group_wait < now {
            self.next_flush = self.next_flush.min(now);
        }
        // A change: a group sleeping through quiet flushes wakes at its
        // next grid point (a no-op for a group that is not sleeping).
        self.wake(now);
        self.alerts.insert(alert.fingerprint(), alert).is_none()
    }

    /// The alerts the group holds.
    pub fn held(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values().map(|a| &**a)
    }

    /// The first point of the group's flush grid (its last flush plus a
    /// whole number of `group_interval`s, at least one) at or after `at`.
    /// Before the first flush: the scheduled first flush.
    fn grid_at_or_after(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let Some(last) = self.last_flush else {
            return self.next_flush;
        };
        let interval = self.opts.group_interval;
        let first = last + interval;
        if at <= first {
            return first;
        }
        let (Some(behind), Some(step)) =
            ((at - first).num_nanoseconds(), interval.num_nanoseconds())
        else {
            return at;
        };
        if step <= 0 {
            return at;
        }
        let steps = behind / step + i64::from(behind % step != 0);
        steps
            .checked_mul(step)
            .map_or(at, |ns| first + chrono::Duration::nanoseconds(ns))
    }

    /// Skips the flushes before `until` (on the group's grid): the caller
    /// knows they would be quiet — nothing in the group changes by itself
    /// before then, and every outside change wakes it ([`Self::wake`]).
    pub fn sleep_until(&mut self, until: DateTime<Utc>) {
        if self.has_flushed {
            self.next_flush = self.next_flush.max(self.grid_at_or_after(until));
        }
    }

    /// Something that decides what the group would tell may have changed at
    /// `at` (an alert, its log entry, a silence): a sleeping group flushes
    /// again at its first grid point at or after `at`, as it would have had
    /// it never slept. A group that is not sleeping keeps its next flush.
    pub fn wake(&mut self, at: DateTime<Utc>) {
        if self.has_flushed {
            self.next_flush = self.next_flush.min(self.grid_at_or_after(at));
        }
    }

    /// The alerts dropped (resolved and told) since the last call.
    pub fn take_dropped(&mut self) -> Vec<Fingerprint> {
        std::mem::take(&mut self.dropped)
    }

    pub fn next_flush(&self) -> DateTime<Utc> {
        self.next_flush
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.alerts.contains_key(fp)
    }

    /// Flushes when due: muted alerts are left out; `last` is what the
    /// receiver was last told about this group.
    pub fn flush(
        &mut self,
        now: DateTime<Utc>,
        last: Option<&NotifiedState>,
        is_muted: impl Fn(&Alert) -> bool,
    ) -> Flush {
        if now < self.next_flush {
            return Flush::NotDue;
        }
        self.has_flushed = true;
        self.last_flush = Some(now);
        self.next_flush = now + self.opts.group_interval;
        // Decided on fingerprints (the map's keys); the alerts are copied
        // only when there is something to send.
        let (mut firing_fps, mut resolved_fps) = (BTreeSet::new(), BTreeSet::new());
        for (fp, alert) in self.alerts.iter().filter(|(_, a)| !is_muted(a)) {
            if alert.is_resolved(now) {
                resolved_fps.insert(*fp);
            } else {
                firing_fps.insert(*fp);
            }
        }
        if firing_fps.is_empty() && resolved_fps.is_empty() {
            // Everything muted (or nothing left): like Alertmanager, the
            // pipeline stops before the log, so un-muting an alert the
            // receiver already knows about does not re-notify.
            return Flush::Quiet;
        }
        if !needs_update(
            last,
            &firing_fps,
            &resolved_fps,
            self.send_resolved,
            self.opts.repeat_interval,
            now,
        ) {
            self.drop_resolved(&resolved_fps, now);
            return Flush::Quiet;
        }
        let copy = |fps: &BTreeSet<Fingerprint>| -> Vec<Alert> {
            fps.iter()
                .filter_map(|fp| self.alerts.get(fp))
                .map(|a| Alert::clone(a))
                .collect()
        };
        let firing = copy(&firing_fps);
        let resolved = if self.send_resolved {
            copy(&resolved_fps)
        } else {
            Vec::new()
        };
        if firing.is_empty() && resolved.is_empty() {
            self.drop_resolved(&resolved_fps, now);
            return Flush::Record(NotifiedState {
                firing: BTreeSet::new(),
                resolved: resolved_fps,
                at: now,
            });
        }
        Flush::Notify(Notification::new(
            &self.opts.receiver,
            &self.key,
            self.labels.clone(),
            firing,
            resolved,
            now,
        ))
    }

    /// After a delivered notification: its resolved alerts are done with.
    pub fn delivered(&mut self, notification: &Notification, now: DateTime<Utc>) {
        self.drop_resolved(&notification.state.resolved, now);
    }

    fn drop_resolved(&mut self, resolved: &BTreeSet<Fingerprint>, now: DateTime<Utc>) {
        for fp in resolved {
            if self.alerts.get(fp).is_some_and(|a| a.is_resolved(now)) {
                self.alerts.remove(fp);
                self.dropped.push(*fp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::model::tests::{alert, at};
    use crate::route::{Route, RouteConfig};

    fn opts() -> RouteOpts {
        let route = Route::compile(&RouteConfig {
            receiver: Some("slack".into()),
            group_by: Some(vec!["alertname".into()]),
            ..RouteConfig::default()
        })
        .expect("compiles");
        route.opts.clone()
    }

    fn firing(name: &str, i: usize, starts: i64) -> Alert {
        alert(&[("alertname", name), ("instance", &i.to_string())], starts)
    }

    /// Runs the group over `steps` seconds (one flush attempt per second),
    /// recording deliveries; returns the times and sizes of notifications.
    fn drive(
        group: &mut AggregationGroup,
        log: &mut Option<NotifiedState>,
        from: i64,
        to: i64,
    ) -> Vec<(i64, usize, usize)> {
        let mut sent = Vec::new();
        for t in from..=to {
            if let Flush::Notify(n) = group.flush(at(t), log.as_ref(), |_| false) {
                sent.push((t, n.firing.len(), n.resolved.len()));
                group.delivered(&n, at(t));
                *log = Some(n.state.clone());
            }
        }
        sent
    }

    #[test]
    fn a_storm_within_group_wait_is_one_notification() {
        let first = firing("Down", 0, 0);
        let mut group = AggregationGroup::new(opts(), &first, true, at(0));
        assert_eq!(group.next_flush(), at(30), "group_wait 30s");
        for i in 0..100 {
            group.insert(firing("Down", i, (i as i64) / 4), at((i as i64) / 4));
        }
        let mut log = None;
        assert_eq!(drive(&mut group, &mut log, 0, 329), vec![(30, 100, 0)]);
    }

    #[test]
    fn new_alert_waits_for_group_interval_and_unchanged_repeats() {
        let first = firing("Down", 0, 0);
        let mut group = AggregationGroup::new(opts(), &first, true, at(0));
        group.insert(first, at(0));
        let mut log = None;
        assert_eq!(drive(&mut group, &mut log, 0, 100), vec![(30, 1, 0)]);
        // A new alert at t=101: the next tick is 30 + 300 = 330.
        group.insert(firing("Down", 1, 101), at(101));
        assert_eq!(drive(&mut group, &mut log, 101, 400), vec![(330, 2, 0)]);
        // Unchanged: quiet until repeat_interval (4h) has passed since 330,
        // at the first group_interval tick after it.
        let repeat_due = 330 + 4 * 3600;
        let sent = drive(&mut group, &mut log, 401, repeat_due + 300);
        assert_eq!(sent, vec![(repeat_due, 2, 0)]);
    }

    #[test]
    fn resolved_alerts_are_sent_once_when_wanted() {
        let mut a = firing("Down", 0, 0);
        a.ends_at = Some(at(1000));
        let mut group = AggregationGroup::new(opts(), &a, true, at(0));
        group.insert(a.clone(), at(0));
        let mut b = firing("Down", 1, 0);
        b.ends_at = Some(at(100));
        group.insert(b, at(0));
        let mut log = None;
        // b resolves at 100, seen at the tick at 330; a resolves at 1000,
        // seen at 1230 (all resolved → the group empties).
        let sent = drive(&mut group, &mut log, 0, 2000);
        assert_eq!(sent, vec![(30, 2, 0), (330, 1, 1), (1230, 0, 1)]);
        assert!(group.is_empty());

        // Without send_resolved: a partial resolve is quiet, the full
        // resolve is only recorded.
        let mut group = AggregationGroup::new(opts(), &a, false, at(0));
        group.insert(a.clone(), at(0));
        let mut log: Option<NotifiedState> = None;
        let mut outcomes = Vec::new();
        for t in 0..=2000 {
            match group.flush(at(t), log.as_ref(), |_| false) {
                Flush::Notify(n) => {
                    outcomes.push((t, "notify"));
                    log = Some(n.state.clone());
                    group.delivered(&n, at(t));
                }
                Flush::Record(state) => {
                    outcomes.push((t, "record"));
                    log = Some(state);
                }
                Flush::Quiet | Flush::NotDue => {}
            }
        }
        assert_eq!(outcomes, vec![(30, "notify"), (1230, "record")]);
        assert!(group.is_empty());
    }

    #[test]
    fn muted_alerts_are_left_out_and_unmuting_notifies() {
        let a = firing("Down", 0, 0);
        let b = firing("Down", 1, 0);
        let mut group = AggregationGroup::new(opts(), &a, true, at(0));
        group.insert(a.clone(), at(0));
        group.insert(b.clone(), at(0));
        let muted_fp = b.fingerprint();
        let Flush::Notify(n) = group.flush(at(30), None, |x| x.fingerprint() == muted_fp) else {
            panic!("expected a notification");
        };
        assert_eq!(n.firing, vec![a.clone()]);
        let log = Some(n.state.clone());
        assert_eq!(
            group.flush(at(330), log.as_ref(), |x| x.fingerprint() == muted_fp),
            Flush::Quiet
        );
        let Flush::Notify(n) = group.flush(at(630), log.as_ref(), |_| false) else {
            panic!("unmuted alert must notify");
        };
        assert_eq!(n.firing.len(), 2);
    }

    #[test]
    fn late_first_alert_flushes_at_once_and_restart_respects_the_log() {
        let old = firing("Down", 0, -3600);
        let mut group = AggregationGroup::new(opts(), &old, true, at(0));
        group.insert(old.clone(), at(0));
        assert_eq!(group.next_flush(), at(0), "started long ago: no group_wait");
        // After a restart the log says the receiver already knows.
        let log = NotifiedState {
            firing: BTreeSet::from([old.fingerprint()]),
            resolved: BTreeSet::new(),
            at: at(-60),
        };
        assert_eq!(group.flush(at(0), Some(&log), |_| false), Flush::Quiet);
    }

    #[test]
    fn needs_update_table() {
        let fp = |n: u64| Fingerprint(n);
        let set = |v: &[u64]| v.iter().map(|n| fp(*n)).collect::<BTreeSet<_>>();
        let last = NotifiedState {
            firing: set(&[1, 2]),
            resolved: set(&[3]),
            at: at(0),
        };
        let repeat = Duration::hours(4);
        let table = [
            (None, set(&[]), set(&[]), true, 10, false),
            (None, set(&[1]), set(&[]), true, 10, true),
            (Some(&last), set(&[1, 2]), set(&[3]), true, 10, false),
            (Some(&last), set(&[1, 2, 4]), set(&[]), true, 10, true),
            (Some(&last), set(&[1]), set(&[2, 3]), true, 10, true),
            (Some(&last), set(&[1]), set(&[2, 3]), false, 10, false),
            (Some(&last), set(&[]), set(&[1, 2, 3]), false, 10, true),
            (Some(&last), set(&[1, 2]), set(&[]), true, 4 * 3600, true),
        ];
        for (i, (last, firing, resolved, send_resolved, t, expected)) in
            table.into_iter().enumerate()
        {
            assert_eq!(
                needs_update(last, &firing, &resolved, send_resolved, repeat, at(t)),
                expected,
                "row {i}"
            );
        }
    }

    #[test]
    fn notification_common_labels_and_hash() {
        let a = alert(
            &[("alertname", "Down"), ("service", "api"), ("instance", "1")],
            0,
        );
        let b = alert(
            &[("alertname", "Down"), ("service", "api"), ("instance", "2")],
            0,
        );
        let n = Notification::new("slack", "k", LabelSet::new(), vec![a, b], vec![], at(0));
        assert_eq!(n.common_labels.len(), 2);
        assert_eq!(
            n.common_labels.get("service").map(String::as_str),
            Some("api")
        );
        assert_eq!(n.state.hash().len(), 32);
        let other = NotifiedState {
            at: at(99),
            ..n.state.clone()
        };
        assert_eq!(n.state.hash(), other.hash(), "time is not part of the hash");
    }
}
