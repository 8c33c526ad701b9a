//! The dispatcher as it was before the due-time index (it scanned every
//! group per tick and every alert × group per delivery), kept for tests
//! only: the table test in `dispatch` runs both on the same randomized
//! inputs and expects the same notifications at the same instants.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::{DueWork, GroupId};
use crate::group::{AggregationGroup, Flush, Notification, NotifiedState};
use crate::inhibit::{self, InhibitRule};
use crate::model::{Alert, Fingerprint};
use crate::route::Route;
use crate::silence::Silence;

pub(super) struct ScanningDispatcher {
    route: Route,
    inhibit_rules: Vec<InhibitRule>,
    /// Receivers that can deliver; routes to others are skipped.
    enabled: BTreeSet<String>,
    /// Receivers that want resolved notifications.
    send_resolved: BTreeSet<String>,
    alerts: BTreeMap<Fingerprint, Alert>,
    silences: Vec<Silence>,
    groups: BTreeMap<GroupId, AggregationGroup>,
    log: HashMap<GroupId, NotifiedState>,
}

impl ScanningDispatcher {
    pub(super) fn new(
        route: Route,
        inhibit_rules: Vec<InhibitRule>,
        enabled: BTreeSet<String>,
        send_resolved: BTreeSet<String>,
    ) -> Self {
        Self {
            route,
            inhibit_rules,
            enabled,
            send_resolved,
            alerts: BTreeMap::new(),
            silences: Vec::new(),
            groups: BTreeMap::new(),
            log: HashMap::new(),
        }
    }

    pub(super) fn set_silences(&mut self, silences: Vec<Silence>) {
        self.silences = silences;
    }

    /// Takes in an alert (new or an update of a known one) and puts it in
    /// the groups of every route it matches. Returns the merged alert.
    pub(super) fn ingest(&mut self, alert: Alert, now: DateTime<Utc>) -> Alert {
        let fp = alert.fingerprint();
        let merged = match self.alerts.remove(&fp) {
            Some(mut known) => {
                known.merge(alert, now);
                known
            }
            None => alert,
        };
        self.alerts.insert(fp, merged.clone());
        for opts in self.routes_for(&merged.labels) {
            let key = opts.group_key(&merged.labels);
            let id = (opts.receiver.clone(), key);
            let send_resolved = self.send_resolved.contains(&opts.receiver);
            self.groups
                .entry(id)
                .or_insert_with(|| AggregationGroup::new(opts.clone(), &merged, send_resolved, now))
                .insert(merged.clone(), now);
        }
        merged
    }

    /// The routes `labels` are delivered on ([`crate::route::Route::deliverable`]).
    pub(super) fn routes_for(
        &self,
        labels: &crate::model::LabelSet,
    ) -> Vec<crate::route::RouteOpts> {
        self.route.deliverable(labels, &self.enabled)
    }

    /// The earliest instant a group wants to flush.
    pub(super) fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.groups.values().map(AggregationGroup::next_flush).min()
    }

    fn muted(&self, alert: &Alert, now: DateTime<Utc>) -> bool {
        self.silences.iter().any(|s| s.mutes(&alert.labels, now))
            || !inhibit::inhibited_by(&self.inhibit_rules, alert, self.alerts.values(), now)
                .is_empty()
    }

    /// Flushes every due group.
    pub(super) fn due(&mut self, now: DateTime<Utc>) -> DueWork {
        let mut work = DueWork::default();
        let mut groups = std::mem::take(&mut self.groups);
        for (id, group) in groups.iter_mut() {
            if now < group.next_flush() {
                continue;
            }
            match group.flush(now, self.log.get(id), |a| self.muted(a, now)) {
                Flush::Notify(n) => work.notify.push(n),
                Flush::Record(state) => {
                    self.log.insert(id.clone(), state.clone());
                    work.record.push((id.clone(), state));
                }
                Flush::Quiet | Flush::NotDue => {}
            }
        }
        groups.retain(|_, g| !g.is_empty());
        self.groups = groups;
        work.forgotten = self.collect_garbage(now);
        work
    }

    /// Records a delivered notification: the log moves on and its resolved
    /// alerts leave the group. Returns the alerts forgotten as a result.
    pub(super) fn delivered(
        &mut self,
        notification: &Notification,
        now: DateTime<Utc>,
    ) -> Vec<Fingerprint> {
        let id = (
            notification.receiver.clone(),
            notification.group_key.clone(),
        );
        self.log.insert(id.clone(), notification.state.clone());
        if let Some(group) = self.groups.get_mut(&id) {
            group.delivered(notification, now);
            if group.is_empty() {
                self.groups.remove(&id);
            }
        }
        self.collect_garbage(now)
    }

    /// Resolved alerts no group holds any more are forgotten; returns them.
    fn collect_garbage(&mut self, now: DateTime<Utc>) -> Vec<Fingerprint> {
        let groups = &self.groups;
        let mut forgotten = Vec::new();
        self.alerts.retain(|fp, alert| {
            let keep = !alert.is_resolved(now) || groups.values().any(|g| g.contains(fp));
            if !keep {
                forgotten.push(*fp);
            }
            keep
        });
        forgotten
    }

    pub(super) fn fingerprints(&self) -> BTreeSet<Fingerprint> {
        self.alerts.keys().copied().collect()
    }

    pub(super) fn group_count(&self) -> usize {
        self.groups.len()
    }
}
