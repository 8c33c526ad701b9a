//! The pipeline's state, without I/O: the active alerts, the silences, the
//! routing tree, inhibition rules, the aggregation groups and the in-memory
//! mirror of the notification log. Inputs go in (`ingest`, `set_silences`),
//! due notifications come out (`due`), outcomes go back (`delivered`) — all
//! at an instant the caller provides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::group::{AggregationGroup, Flush, Notification, NotifiedState};
use crate::inhibit::InhibitRule;
use crate::model::{Alert, Fingerprint};
use crate::route::Route;
use crate::silence::{self, Silence};

/// (receiver, group key): the identity of a group and of its log entry.
pub type GroupId = (String, String);

/// An alert's place in the pipeline, for the read APIs.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertView {
    pub alert: Alert,
    pub receivers: Vec<String>,
    pub silenced_by: Vec<Uuid>,
    pub inhibited_by: Vec<Fingerprint>,
}

/// What a call to [`Dispatcher::due`] produced.
#[derive(Debug, Default)]
pub struct DueWork {
    /// Notifications to deliver.
    pub notify: Vec<Notification>,
    /// Log entries to record without a delivery.
    pub record: Vec<(GroupId, NotifiedState)>,
    /// Resolved alerts no group holds any more: their rows can go.
    pub forgotten: Vec<Fingerprint>,
}

pub struct Dispatcher {
    route: Route,
    inhibit_rules: Vec<InhibitRule>,
    /// Receivers that can deliver; routes to others are skipped.
    enabled: BTreeSet<String>,
    /// Receivers that want resolved notifications.
    send_resolved: BTreeSet<String>,
    /// The alerts, shared with the groups that hold them.
    alerts: BTreeMap<Fingerprint, Arc<Alert>>,
    silences: Vec<Silence>,
    groups: HashMap<GroupId, AggregationGroup>,
    /// The due-time index: every group under its next flush instant, so a
    /// tick visits only the groups that are due.
    due_index: BTreeSet<(DateTime<Utc>, GroupId)>,
    /// How many groups hold each alert: an alert leaves when the last
    /// group drops it, without scanning the groups.
    holders: HashMap<Fingerprint, u32>,
    /// Alerts no group holds (no route to an enabled receiver), under when
    /// they end: forgotten once ended.
    unheld: BTreeSet<(DateTime<Utc>, Fingerprint)>,
    /// Per inhibition rule, the alerts matching its source matchers: a
    /// target is checked against these, not against every alert.
    inhibit_sources: Vec<BTreeSet<Fingerprint>>,
    /// The notification log of the live groups (a group that ends leaves
    /// the log as "nothing firing", the same as no entry).
    log: HashMap<GroupId, NotifiedState>,
    /// Future instants a silence starts or ends: every group wakes then
    /// (what is muted changes with time, not with an input).
    silence_edges: BTreeSet<DateTime<Utc>>,
    /// The silences changed since the last [`Dispatcher::due`]: every
    /// group wakes.
    silences_changed: bool,
    /// The instant of the last [`Dispatcher::due`].
    last_due: Option<DateTime<Utc>>,
}

/// The longest a quiet group sleeps between flushes even with nothing
/// due: a bound on the cost of a missed wake-up, not a schedule.
const SLEEP_AT_MOST: chrono::Duration = chrono::Duration::minutes(5);

impl Dispatcher {
    pub fn new(
        route: Route,
        inhibit_rules: Vec<InhibitRule>,
        enabled: BTreeSet<String>,
        send_resolved: BTreeSet<String>,
    ) -> Self {
        let inhibit_sources = vec![BTreeSet::new(); inhibit_rules.len()];
        Self {
            route,
            inhibit_rules,
            enabled,
            send_resolved,
            alerts: BTreeMap::new(),
            silences: Vec::new(),
            groups: HashMap::new(),
            due_index: BTreeSet::new(),
            holders: HashMap::new(),
            unheld: BTreeSet::new(),
            inhibit_sources,
            log: HashMap::new(),
            silence_edges: BTreeSet::new(),
            silences_changed: false,
            last_due: None,
        }
    }

    /// Restores the notification log (after a restart).
    pub fn restore_log(&mut self, entries: impl IntoIterator<Item = (GroupId, NotifiedState)>) {
        self.log.extend(entries);
    }

    /// Drops log entries of groups that do not exist (after a restore and
    /// the alerts' reload): for a group born later, an entry left by a
    /// group that ended says "nothing firing", the same as none.
    pub fn prune_log(&mut self) {
        let groups = &self.groups;
        self.log.retain(|id, _| groups.contains_key(id));
    }

    /// Replaces the silences; when they differ, every group wakes at the
    /// next [`Dispatcher::due`] (the same silences again cost nothing).
    pub fn set_silences(&mut self, silences: Vec<Silence>) {
        if silences == self.silences {
            return;
        }
        self.silence_edges = silences
            .iter()
            .flat_map(|s| [s.starts_at, s.ends_at])
            .collect();
        self.silences = silences;
        self.silences_changed = true;
    }

    /// Wakes every group at its first grid point at or after `at` (a
    /// silence changed: what is muted may differ for any of them).
    fn wake_all(&mut self, at: DateTime<Utc>) {
        for (id, group) in &mut self.groups {
            let before = group.next_flush();
            group.wake(at);
            let after = group.next_flush();
            if after != before {
                self.due_index.remove(&(before, id.clone()));
                self.due_index.insert((after, id.clone()));
            }
        }
    }

    /// After a quiet flush, whether the group may sleep: nothing outside
    /// it but a silence (which wakes every group) can change what it would
    /// tell. An alert an inhibition rule may target is muted by other
    /// alerts' changes, so its group keeps flushing every interval.
    fn may_sleep(&self, group: &AggregationGroup) -> bool {
        self.inhibit_rules.is_empty()
            || group
                .held()
                .all(|a| !self.inhibit_rules.iter().any(|r| r.is_target(&a.labels)))
    }

    /// Until when a quiet group has nothing to tell unless an input wakes
    /// it: its repeat, the next end of one of its alerts, at most
    /// [`SLEEP_AT_MOST`].
    fn quiet_until(
        &self,
        id: &GroupId,
        group: &AggregationGroup,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let repeat = self
            .log
            .get(id)
            .map(|last| last.at + group.opts.repeat_interval);
        let next_end = group
            .held()
            .filter_map(|a| a.ends_at)
            .filter(|end| *end > now)
            .min();
        [repeat, next_end]
            .into_iter()
            .flatten()
            .fold(now + SLEEP_AT_MOST, DateTime::min)
    }

    pub fn silences(&self) -> &[Silence] {
        &self.silences
    }

    /// Takes in an alert (new or an update of a known one) and puts it in
    /// the groups of every route it matches. Returns the merged alert.
    /// Touches only those groups.
    pub fn ingest(&mut self, alert: Alert, now: DateTime<Utc>) -> Alert {
        let fp = alert.fingerprint();
        let merged = match self.alerts.remove(&fp) {
            Some(known) => {
                self.unheld_remove(fp, &known);
                let mut known = Arc::unwrap_or_clone(known);
                known.merge(alert, now);
                known
            }
            None => {
                for (rule, sources) in self.inhibit_rules.iter().zip(&mut self.inhibit_sources) {
                    if rule.is_source(&alert.labels) {
                        sources.insert(fp);
                    }
                }
                alert
            }
        };
        let shared = Arc::new(merged);
        self.alerts.insert(fp, shared.clone());
        for opts in self.routes_for(&shared.labels) {
            let key = opts.group_key(&shared.labels);
            let id = (opts.receiver.clone(), key);
            let send_resolved = self.send_resolved.contains(&opts.receiver);
            let group = self.groups.entry(id.clone()).or_insert_with(|| {
                let group = AggregationGroup::new(opts.clone(), &shared, send_resolved, now);
                self.due_index.insert((group.next_flush(), id.clone()));
                group
            });
            let before = group.next_flush();
            if group.insert(shared.clone(), now) {
                *self.holders.entry(fp).or_default() += 1;
            }
            let after = group.next_flush();
            if after != before {
                self.due_index.remove(&(before, id.clone()));
                self.due_index.insert((after, id));
            }
        }
        if !self.holders.contains_key(&fp)
            && let Some(end) = shared.ends_at
        {
            self.unheld.insert((end, fp));
        }
        Alert::clone(&shared)
    }

    fn unheld_remove(&mut self, fp: Fingerprint, alert: &Alert) {
        if let Some(end) = alert.ends_at {
            self.unheld.remove(&(end, fp));
        }
    }

    /// The routes `labels` are delivered on ([`crate::route::Route::deliverable`]).
    pub fn routes_for(&self, labels: &crate::model::LabelSet) -> Vec<crate::route::RouteOpts> {
        self.route.deliverable(labels, &self.enabled)
    }

    /// The earliest instant a group wants to flush.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        let group = self.due_index.first().map(|(at, _)| *at);
        let edge = self.silence_edges.first().copied();
        [group, edge].into_iter().flatten().min()
    }

    /// The alerts that inhibit `alert` now, looking only at each rule's
    /// source alerts.
    fn inhibitors(&self, fp: Fingerprint, alert: &Alert, now: DateTime<Utc>) -> Vec<Fingerprint> {
        let mut found = Vec::new();
        for (rule, sources) in self.inhibit_rules.iter().zip(&self.inhibit_sources) {
            if sources.is_empty() || !rule.is_target(&alert.labels) {
                continue;
            }
            for source_fp in sources {
                let Some(source) = self.alerts.get(source_fp) else {
                    continue;
                };
                if rule.source_inhibits((*source_fp, source), (fp, alert), now)
                    && !found.contains(source_fp)
                {
                    found.push(*source_fp);
                }
            }
        }
        found
    }

    fn muted(&self, alert: &Alert, now: DateTime<Utc>) -> bool {
        self.silences.iter().any(|s| s.mutes(&alert.labels, now))
            || (!self.inhibit_rules.is_empty()
                && !self.inhibitors(alert.fingerprint(), alert, now).is_empty())
    }

    /// Flushes every due group: visits only those, in due-time order. A
    /// group whose flush was quiet sleeps until something can change that
    /// (see [`AggregationGroup::sleep_until`]), so an idle alerter visits
    /// each group about once per repeat, not once per group interval.
    pub fn due(&mut self, now: DateTime<Utc>) -> DueWork {
        let mut work = DueWork::default();
        let mut woken_at = None;
        while let Some(edge) = self.silence_edges.first().copied()
            && edge <= now
        {
            self.silence_edges.pop_first();
            woken_at = Some(woken_at.unwrap_or(edge));
        }
        if std::mem::take(&mut self.silences_changed) {
            // Changed somewhen after the last due: wake as of just after it.
            let since = self
                .last_due
                .map_or(now, |at| at + chrono::Duration::nanoseconds(1));
            woken_at = Some(woken_at.map_or(since, |at: DateTime<Utc>| at.min(since)));
        }
        if let Some(at) = woken_at {
            self.wake_all(at);
        }
        self.last_due = Some(now);
        while let Some((at, _)) = self.due_index.first()
            && *at <= now
        {
            let Some((_, id)) = self.due_index.pop_first() else {
                break;
            };
            let Some(mut group) = self.groups.remove(&id) else {
                continue;
            };
            let flushed = group.flush(now, self.log.get(&id), |a| self.muted(a, now));
            match flushed {
                Flush::Notify(n) => work.notify.push(n),
                Flush::Record(state) => {
                    self.log.insert(id.clone(), state.clone());
                    work.record.push((id.clone(), state));
                }
                Flush::Quiet => {
                    if self.may_sleep(&group) {
                        let until = self.quiet_until(&id, &group, now);
                        group.sleep_until(until);
                    }
                }
                Flush::NotDue => {}
            }
            self.settle_group(id, group, now, &mut work.forgotten);
        }
        self.forget_unheld(now, &mut work.forgotten);
        work
    }

    /// Puts a group back after a change: re-indexed under its next flush,
    /// or gone (with its log entry) when empty; the alerts it dropped lose
    /// a holder.
    fn settle_group(
        &mut self,
        id: GroupId,
        mut group: AggregationGroup,
        now: DateTime<Utc>,
        forgotten: &mut Vec<Fingerprint>,
    ) {
        for fp in group.take_dropped() {
            self.release(fp, now, forgotten);
        }
        if group.is_empty() {
            self.log.remove(&id);
        } else {
            self.due_index.insert((group.next_flush(), id.clone()));
            self.groups.insert(id, group);
        }
    }

    /// One group let go of an alert: with no holder left it is forgotten
    /// once resolved (or waits, unheld, until it is).
    fn release(&mut self, fp: Fingerprint, now: DateTime<Utc>, forgotten: &mut Vec<Fingerprint>) {
        let Some(count) = self.holders.get_mut(&fp) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.holders.remove(&fp);
        match self
            .alerts
            .get(&fp)
            .map(|a| (a.is_resolved(now), a.ends_at))
        {
            Some((true, _)) => self.forget(fp, forgotten),
            Some((false, Some(end))) => {
                self.unheld.insert((end, fp));
            }
            _ => {}
        }
    }

    fn forget(&mut self, fp: Fingerprint, forgotten: &mut Vec<Fingerprint>) {
        if let Some(alert) = self.alerts.remove(&fp) {
            self.unheld_remove(fp, &alert);
            for sources in &mut self.inhibit_sources {
                sources.remove(&fp);
            }
            forgotten.push(fp);
        }
    }

    /// Forgets the alerts no group holds that have ended.
    fn forget_unheld(&mut self, now: DateTime<Utc>, forgotten: &mut Vec<Fingerprint>) {
        while let Some((end, fp)) = self.unheld.first().copied()
            && end <= now
        {
            self.unheld.pop_first();
            if !self.holders.contains_key(&fp) {
                self.forget(fp, forgotten);
            }
        }
    }

    /// Records a delivered notification: the log moves on and its resolved
    /// alerts leave the group. Returns the alerts forgotten as a result.
    /// Touches only that group.
    pub fn delivered(
        &mut self,
        notification: &Notification,
        now: DateTime<Utc>,
    ) -> Vec<Fingerprint> {
        let id = (
            notification.receiver.clone(),
            notification.group_key.clone(),
        );
        let mut forgotten = Vec::new();
        self.log.insert(id.clone(), notification.state.clone());
        if let Some(mut group) = self.groups.remove(&id) {
            self.due_index.remove(&(group.next_flush(), id.clone()));
            group.delivered(notification, now);
            // Its log entry moved on: what it would tell may differ.
            group.wake(now);
            self.settle_group(id, group, now, &mut forgotten);
        }
        self.forget_unheld(now, &mut forgotten);
        forgotten
    }

    /// The group's notification is queued for delivery or on the wire
    /// (the caller's queues hold it): until its outcome comes back
    /// ([`Dispatcher::delivered`], [`Dispatcher::undelivered`]) or an
    /// input changes the group (an alert, a silence), a flush could only
    /// repeat it, so the group sleeps (five minutes at most). Without
    /// this, every group waiting behind a slow receiver would flush again
    /// each `group_interval`: work proportional to the backlog, not to what
    /// changed. Groups an inhibition rule may target keep flushing (see
    /// `may_sleep`).
    pub fn park(&mut self, receiver: &str, group_key: &str, now: DateTime<Utc>) {
        let id = (receiver.to_owned(), group_key.to_owned());
        let Some(group) = self.groups.get(&id) else {
            return;
        };
        if !self.may_sleep(group) {
            return;
        }
        if let Some(group) = self.groups.get_mut(&id) {
            let before = group.next_flush();
            group.sleep_until(now + SLEEP_AT_MOST);
            self.reindex(id, before);
        }
    }

    /// A notification was given up (dead-lettered, or its receiver is
    /// gone): its group flushes again at its next grid point, as if it
    /// had never been parked.
    pub fn undelivered(&mut self, notification: &Notification, now: DateTime<Utc>) {
        let id = (
            notification.receiver.clone(),
            notification.group_key.clone(),
        );
        if let Some(group) = self.groups.get_mut(&id) {
            let before = group.next_flush();
            group.wake(now);
            self.reindex(id, before);
        }
    }

    /// Moves a group in the due-time index after its next flush changed.
    fn reindex(&mut self, id: GroupId, before: DateTime<Utc>) {
        let Some(after) = self.groups.get(&id).map(AggregationGroup::next_flush) else {
            return;
        };
        if after != before {
            self.due_index.remove(&(before, id.clone()));
            self.due_index.insert((after, id));
        }
    }

    /// Fingerprints of the alerts the dispatcher still holds.
    pub fn fingerprints(&self) -> BTreeSet<Fingerprint> {
        self.alerts.keys().copied().collect()
    }

    pub fn alert(&self, fp: &Fingerprint) -> Option<&Alert> {
        self.alerts.get(fp).map(|a| &**a)
    }

    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Firing, silenced and inhibited alerts, counted without copying any.
    pub fn counts(&self, now: DateTime<Utc>) -> AlertCounts {
        let mut counts = AlertCounts::default();
        for (fp, alert) in &self.alerts {
            if !alert.is_resolved(now) {
                counts.firing += 1;
            }
            if self.silences.iter().any(|s| s.mutes(&alert.labels, now)) {
                counts.silenced += 1;
            }
            if !self.inhibitors(*fp, alert, now).is_empty() {
                counts.inhibited += 1;
            }
        }
        counts
    }

    /// Every known alert with its receivers and what mutes it.
    pub fn views(&self, now: DateTime<Utc>) -> Vec<AlertView> {
        self.alerts
            .iter()
            .map(|(fp, alert)| AlertView {
                alert: Alert::clone(alert),
                receivers: self
                    .routes_for(&alert.labels)
                    .into_iter()
                    .map(|o| o.receiver)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                silenced_by: silence::silenced_by(&self.silences, &alert.labels, now),
                inhibited_by: self.inhibitors(*fp, alert, now),
            })
            .collect()
    }
}

/// What the alert gauges show.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertCounts {
    pub firing: usize,
    pub silenced: usize,
    pub inhibited: usize,
}

/// Which alerts a read API returns (Alertmanager's `GET /api/v2/alerts`
/// parameters; all flags default to true).
#[derive(Debug, Clone)]
pub struct AlertFilter {
    pub active: bool,
    pub silenced: bool,
    pub inhibited: bool,
    pub include_resolved: bool,
    pub matchers: Vec<crate::matchers::Matcher>,
    /// Only alerts routed to a receiver matching this (anchored) regex.
    pub receiver: Option<regex::Regex>,
}

impl Default for AlertFilter {
    fn default() -> Self {
        Self {
            active: true,
            silenced: true,
            inhibited: true,
            include_resolved: false,
            matchers: Vec::new(),
            receiver: None,
        }
    }
}

impl AlertFilter {
    pub fn keep(&self, view: &AlertView, now: DateTime<Utc>) -> bool {
        if !self.include_resolved && view.alert.is_resolved(now) {
            return false;
        }
        let silenced = !view.silenced_by.is_empty();
        let inhibited = !view.inhibited_by.is_empty();
        if (silenced && !self.silenced)
            || (inhibited && !self.inhibited)
            || (!silenced && !inhibited && !self.active)
        {
            return false;
        }
        if !crate::matchers::matches_all(&self.matchers, &view.alert.labels) {
            return false;
        }
        match &self.receiver {
            Some(re) => view.receivers.iter().any(|r| re.is_match(r)),
            None => true,
        }
    }
}

#[cfg(test)]
#[path = "dispatch_reference.rs"]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inhibit::default_rules;
    use crate::matchers::Matcher;
    use crate::model::tests::{alert, at};
    use crate::route::{RouteConfig, default_route};

    fn dispatcher(enabled: &[&str]) -> Dispatcher {
        let mut route = default_route();
        route.group_wait = Some("30s".into());
        let rules = default_rules()
            .iter()
            .map(|c| InhibitRule::compile(c).expect("rule"))
            .collect();
        let enabled: BTreeSet<String> = enabled.iter().map(|s| (*s).to_owned()).collect();
        Dispatcher::new(
            Route::compile(&route).expect("route"),
            rules,
            enabled.clone(),
            enabled,
        )
    }

    fn deliver_all(d: &mut Dispatcher, t: i64) -> Vec<(String, usize)> {
        let work = d.due(at(t));
        let mut out = Vec::new();
        for n in work.notify {
            out.push((n.receiver.clone(), n.firing.len()));
            d.delivered(&n, at(t));
        }
        out.sort();
        out
    }

    #[test]
    fn routes_to_every_enabled_receiver_once() {
        let mut d = dispatcher(&["slack", "discord", "pagerduty"]);
        let mut a = alert(
            &[
                ("alertname", "Down"),
                ("severity", "critical"),
                ("service", "api"),
            ],
            0,
        );
        a.ends_at = Some(at(10_000));
        d.ingest(a, at(0));
        assert_eq!(d.next_wakeup(), Some(at(30)));
        assert!(deliver_all(&mut d, 29).is_empty());
        assert_eq!(
            deliver_all(&mut d, 30),
            vec![
                ("discord".into(), 1),
                ("pagerduty".into(), 1),
                ("slack".into(), 1)
            ]
        );
        assert!(deliver_all(&mut d, 330).is_empty(), "nothing changed");
    }

    #[test]
    fn inhibited_and_silenced_alerts_are_muted_until_the_silence_expires() {
        let mut d = dispatcher(&["slack"]);
        let crit = alert(
            &[
                ("alertname", "Down"),
                ("severity", "critical"),
                ("service", "api"),
            ],
            0,
        );
        let warn = alert(
            &[
                ("alertname", "Slow"),
                ("severity", "warning"),
                ("service", "api"),
            ],
            0,
        );
        let other = alert(
            &[
                ("alertname", "Slow"),
                ("severity", "warning"),
                ("service", "db"),
            ],
            0,
        );
        for a in [&crit, &warn, &other] {
            d.ingest(a.clone(), at(0));
        }
        let silence = Silence {
            id: Uuid::nil(),
            matchers: vec![Matcher::parse("service=db").expect("m")],
            starts_at: at(0),
            ends_at: at(100),
            created_by: "ops".into(),
            comment: "maintenance".into(),
            updated_at: at(0),
        };
        d.set_silences(vec![silence]);
        // crit goes to slack (group Down/api); warn is inhibited, other is
        // silenced: their group (Slow/*) has nothing to say.
        let views = d.views(at(30));
        let view = |a: &Alert| views.iter().find(|v| v.alert == *a).cloned().expect("view");
        assert_eq!(view(&warn).inhibited_by, vec![crit.fingerprint()]);
        assert_eq!(view(&other).silenced_by, vec![Uuid::nil()]);
        assert_eq!(view(&crit).receivers, vec!["slack".to_owned()]);
        assert_eq!(deliver_all(&mut d, 30), vec![("slack".into(), 1)]);
        // The silence expires at 100; the next tick of the Slow/db group
        // (30 + 300) tells slack about `other`.
        assert_eq!(deliver_all(&mut d, 330), vec![("slack".into(), 1)]);
        let views = d.views(at(330));
        assert!(views.iter().all(|v| v.silenced_by.is_empty()));
    }

    #[test]
    fn disabled_receivers_get_no_groups_and_resolved_alerts_are_forgotten() {
        let mut d = Dispatcher::new(
            Route::compile(&RouteConfig {
                receiver: Some("hook".into()),
                group_wait: Some("0s".into()),
                ..RouteConfig::default()
            })
            .expect("route"),
            Vec::new(),
            BTreeSet::from(["hook".to_owned()]),
            BTreeSet::from(["hook".to_owned()]),
        );
        let mut a = alert(&[("alertname", "X")], 0);
        a.ends_at = Some(at(50));
        d.ingest(a.clone(), at(0));
        assert_eq!(deliver_all(&mut d, 0), vec![("hook".into(), 1)]);
        assert_eq!(d.alert_count(), 1);
        // Resolved at 50, told at the 300 tick, then forgotten.
        let work = d.due(at(300));
        assert_eq!(work.notify.len(), 1);
        assert_eq!(work.notify[0].resolved.len(), 1);
        d.delivered(&work.notify[0], at(300));
        assert_eq!(d.alert_count(), 0);
        assert_eq!(d.next_wakeup(), None);

        let mut none = dispatcher(&[]);
        none.ingest(alert(&[("alertname", "Y")], 0), at(0));
        assert_eq!(none.next_wakeup(), None);

        // Info goes to `summary`; without a summary webhook the root
        // receiver (slack) takes it instead of nobody.
        let mut slack_only = dispatcher(&["slack"]);
        slack_only.ingest(
            alert(&[("alertname", "Fyi"), ("severity", "info")], 0),
            at(0),
        );
        assert_eq!(deliver_all(&mut slack_only, 30), vec![("slack".into(), 1)]);
    }

    /// A group with nothing new sleeps through its quiet flushes until its
    /// repeat, the end of one of its alerts or a change wakes it.
    #[test]
    fn quiet_groups_sleep_until_something_can_change() {
        let route = Route::compile(&RouteConfig {
            receiver: Some("slack".into()),
            group_by: Some(vec!["alertname".into()]),
            group_wait: Some("0s".into()),
            group_interval: Some("1s".into()),
            repeat_interval: Some("1h".into()),
            ..RouteConfig::default()
        })
        .expect("route");
        let enabled = BTreeSet::from(["slack".to_owned()]);
        let mut d = Dispatcher::new(route, Vec::new(), enabled.clone(), enabled);
        let mut down = alert(&[("alertname", "Down"), ("i", "1")], 0);
        down.ends_at = Some(at(100));
        d.ingest(down, at(0));
        let sent = d.due(at(0)).notify;
        assert_eq!(sent.len(), 1);
        d.delivered(&sent[0], at(0));
        assert_eq!(d.next_wakeup(), Some(at(1)), "awake right after a change");
        assert!(d.due(at(1)).notify.is_empty());
        assert_eq!(
            d.next_wakeup(),
            Some(at(100)),
            "asleep until the alert ends"
        );
        // A second alert wakes the group at its next grid point.
        d.ingest(alert(&[("alertname", "Down"), ("i", "2")], 7), at(7));
        assert_eq!(d.next_wakeup(), Some(at(7)));
        let sent = d.due(at(7)).notify;
        assert_eq!(sent.len(), 1);
        d.delivered(&sent[0], at(7));
        assert!(d.due(at(8)).notify.is_empty());
        assert_eq!(d.next_wakeup(), Some(at(100)));
        // A silence wakes every group; its end is a wake-up of its own.
        d.set_silences(vec![Silence {
            id: Uuid::from_u128(1),
            matchers: vec![Matcher::parse("alertname=Other").expect("matcher")],
            starts_at: at(8),
            ends_at: at(50),
            created_by: "test".into(),
            comment: "elsewhere".into(),
            updated_at: at(8),
        }]);
        assert!(d.due(at(9)).notify.is_empty(), "woken, nothing new");
        assert_eq!(d.next_wakeup(), Some(at(50)));
        // The same silences again wake nobody.
        d.set_silences(d.silences().to_vec());
        assert!(d.due(at(10)).notify.is_empty());
        assert_eq!(d.next_wakeup(), Some(at(50)));
        // The first alert ends: resolved is sent on the grid.
        assert!(d.due(at(50)).notify.is_empty());
        let resolved = d.due(at(100)).notify;
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].resolved.len(), 1);
    }

    /// A group whose notification waits for delivery does not flush
    /// again each interval; its outcome, or a change, wakes it.
    #[test]
    fn parked_groups_wait_for_their_outcome() {
        let mut route = default_route();
        route.group_wait = Some("30s".into());
        route.group_interval = Some("10s".into());
        let enabled = BTreeSet::from(["slack".to_owned()]);
        let mut d = Dispatcher::new(
            Route::compile(&route).expect("route"),
            Vec::new(),
            enabled.clone(),
            enabled,
        );
        let firing = |pairs: &[(&str, &str)], t: i64| {
            let mut a = alert(pairs, t);
            a.ends_at = Some(at(100_000));
            a
        };
        d.ingest(firing(&[("alertname", "Full")], 0), at(0));
        let first = d.due(at(30)).notify;
        assert_eq!(first.len(), 1);
        let n = first[0].clone();
        d.park(&n.receiver, &n.group_key, at(30));
        d.park("slack", "no such group", at(30));
        // Unparked, the group would notify again at every interval.
        assert!(d.due(at(100)).notify.is_empty(), "parked");
        // Given up: it flushes again (and notifies) at once.
        d.undelivered(&n, at(100));
        assert_eq!(
            d.due(at(100)).notify.len(),
            1,
            "retried after the dead letter"
        );
        d.park(&n.receiver, &n.group_key, at(100));
        assert!(d.due(at(200)).notify.is_empty());
        // A new alert in the group wakes it.
        d.ingest(firing(&[("alertname", "Full"), ("i", "2")], 200), at(200));
        let woken = d.due(at(200)).notify;
        assert_eq!(woken.len(), 1);
        assert_eq!(woken[0].firing.len(), 2);
        // Delivered: nothing more until something changes.
        d.park(&n.receiver, &n.group_key, at(200));
        d.delivered(&woken[0], at(200));
        assert!(d.due(at(250)).notify.is_empty());
        d.undelivered(&woken[0], at(250));
        assert!(d.due(at(260)).notify.is_empty(), "nothing new to tell");
    }

    /// The due-time index against the scanning dispatcher it replaced, on
    /// randomized inputs (seeded): the same notifications and log records
    /// at the same instants, the same alerts held, the same next wake-up.
    #[test]
    fn due_time_index_decides_as_the_scanning_dispatcher() {
        use rand::{Rng, SeedableRng};

        use crate::inhibit::InhibitRuleConfig;

        fn key(n: &Notification) -> (String, String) {
            (n.receiver.clone(), n.group_key.clone())
        }

        for seed in 0..12u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let pick = |rng: &mut rand::rngs::StdRng, options: &[&str]| -> String {
                options[rng.random_range(0..options.len())].to_owned()
            };
            let route = RouteConfig {
                receiver: Some("team".into()),
                group_by: Some(vec!["alertname".into()]),
                group_wait: Some(pick(&mut rng, &["0s", "5s", "30s"])),
                group_interval: Some(pick(&mut rng, &["1s", "10s", "60s"])),
                repeat_interval: Some(pick(&mut rng, &["2m", "1h"])),
                routes: vec![RouteConfig {
                    matchers: vec!["severity=\"critical\"".into()],
                    receiver: Some("pager".into()),
                    group_by: Some(vec!["alertname".into(), "service".into()]),
                    continue_matching: true,
                    ..RouteConfig::default()
                }],
                ..RouteConfig::default()
            };
            let route = Route::compile(&route).expect("route");
            let rules = vec![
                InhibitRule::compile(&InhibitRuleConfig {
                    source_matchers: vec!["severity=\"critical\"".into()],
                    target_matchers: vec!["severity=\"warning\"".into()],
                    equal: vec!["service".into()],
                })
                .expect("rule"),
            ];
            // Some seeds leave the root receiver disabled: alerts routed
            // nowhere are held by no group.
            let enabled: BTreeSet<String> = if seed % 3 == 0 {
                BTreeSet::from(["pager".to_owned()])
            } else {
                BTreeSet::from(["team".to_owned(), "pager".to_owned()])
            };
            let send_resolved: BTreeSet<String> = if seed % 2 == 0 {
                enabled.clone()
            } else {
                BTreeSet::from(["pager".to_owned()])
            };
            let mut new = Dispatcher::new(
                route.clone(),
                rules.clone(),
                enabled.clone(),
                send_resolved.clone(),
            );
            let mut old = reference::ScanningDispatcher::new(route, rules, enabled, send_resolved);
            let mut undelivered: Vec<Notification> = Vec::new();
            let mut notified = 0;
            for t in 0..400i64 {
                let now = at(t);
                for _ in 0..rng.random_range(0..4) {
                    let name = pick(&mut rng, &["Down", "Slow", "Full", "Lost", "Hot", "Cold"]);
                    let severity = pick(&mut rng, &["critical", "warning", "info"]);
                    let service = pick(&mut rng, &["api", "db", "web"]);
                    let instance = rng.random_range(0..4).to_string();
                    let mut a = alert(
                        &[
                            ("alertname", &name),
                            ("severity", &severity),
                            ("service", &service),
                            ("instance", &instance),
                        ],
                        t - rng.random_range(0..120),
                    );
                    a.ends_at = Some(now + chrono::Duration::seconds(rng.random_range(-5..240)));
                    a.updated_at = now;
                    assert_eq!(
                        new.ingest(a.clone(), now),
                        old.ingest(a, now),
                        "seed {seed} t {t}"
                    );
                }
                if rng.random_range(0..100) < 2 {
                    let silences = vec![Silence {
                        id: Uuid::from_u128(t as u128),
                        matchers: vec![
                            Matcher::parse(&format!(
                                "alertname={}",
                                pick(&mut rng, &["Down", "Slow", "Full"])
                            ))
                            .expect("matcher"),
                        ],
                        starts_at: now,
                        ends_at: now + chrono::Duration::seconds(rng.random_range(1..200)),
                        created_by: "test".into(),
                        comment: "random".into(),
                        updated_at: now,
                    }];
                    new.set_silences(silences.clone());
                    old.set_silences(silences);
                }
                // Deliveries left over from earlier instants, some now.
                let late: Vec<Notification> = std::mem::take(&mut undelivered);
                for n in late {
                    if rng.random_range(0..3) == 0 {
                        new.delivered(&n, now);
                        old.delivered(&n, now);
                    } else {
                        undelivered.push(n);
                    }
                }
                let mut a = new.due(now);
                let mut b = old.due(now);
                a.notify.sort_by_key(key);
                b.notify.sort_by_key(key);
                a.record.sort_by(|x, y| x.0.cmp(&y.0));
                b.record.sort_by(|x, y| x.0.cmp(&y.0));
                assert_eq!(a.notify, b.notify, "seed {seed} t {t}: notifications");
                assert_eq!(a.record, b.record, "seed {seed} t {t}: log records");
                assert_eq!(
                    new.fingerprints(),
                    old.fingerprints(),
                    "seed {seed} t {t}: alerts held"
                );
                // Quiet groups sleep, so the index may wake later than the
                // scan would; what it sends, and when, is the same.
                assert_eq!(
                    new.next_wakeup().is_some(),
                    old.next_wakeup().is_some(),
                    "seed {seed} t {t}: wake-up"
                );
                assert_eq!(
                    new.group_count(),
                    old.group_count(),
                    "seed {seed} t {t}: groups"
                );
                notified += a.notify.len();
                for n in a.notify {
                    match rng.random_range(0..10) {
                        0..7 => {
                            let forgotten = new.delivered(&n, now);
                            old.delivered(&n, now);
                            assert!(forgotten.iter().all(|fp| new.alert(fp).is_none()));
                        }
                        7..9 => undelivered.push(n),
                        _ => {} // dead-lettered: never recorded
                    }
                }
                assert_eq!(
                    new.fingerprints(),
                    old.fingerprints(),
                    "seed {seed} t {t}: after delivery"
                );
            }
            assert!(
                notified > 20,
                "seed {seed}: the run exercised the groups ({notified})"
            );
        }
    }
}
