//! The pipeline's state, without I/O: the active alerts, the silences, the
//! routing tree, inhibition rules, the aggregation groups and the in-memory
//! mirror of the notification log. Inputs go in (`ingest`, `set_silences`),
//! due notifications come out (`due`), outcomes go back (`delivered`) — all
//! at an instant the caller provides.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::group::{AggregationGroup, Flush, Notification, NotifiedState};
use crate::inhibit::{self, InhibitRule};
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
    alerts: BTreeMap<Fingerprint, Alert>,
    silences: Vec<Silence>,
    groups: BTreeMap<GroupId, AggregationGroup>,
    log: HashMap<GroupId, NotifiedState>,
}

impl Dispatcher {
    pub fn new(
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

    /// Restores the notification log (after a restart).
    pub fn restore_log(&mut self, entries: impl IntoIterator<Item = (GroupId, NotifiedState)>) {
        self.log.extend(entries);
    }

    pub fn set_silences(&mut self, silences: Vec<Silence>) {
        self.silences = silences;
    }

    pub fn silences(&self) -> &[Silence] {
        &self.silences
    }

    /// Takes in an alert (new or an update of a known one) and puts it in
    /// the groups of every route it matches. Returns the merged alert.
    pub fn ingest(&mut self, alert: Alert, now: DateTime<Utc>) -> Alert {
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

    /// The matched routes whose receiver can deliver. When none can (e.g.
    /// the summary webhook is not configured), the root route's receiver
    /// takes the alert rather than nobody.
    pub fn routes_for(&self, labels: &crate::model::LabelSet) -> Vec<crate::route::RouteOpts> {
        let matched: Vec<crate::route::RouteOpts> = self
            .route
            .matching(labels)
            .into_iter()
            .filter(|o| self.enabled.contains(&o.receiver))
            .cloned()
            .collect();
        if matched.is_empty() && self.enabled.contains(&self.route.opts.receiver) {
            return vec![self.route.opts.clone()];
        }
        matched
    }

    /// The earliest instant a group wants to flush.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.groups.values().map(AggregationGroup::next_flush).min()
    }

    fn muted(&self, alert: &Alert, now: DateTime<Utc>) -> bool {
        self.silences.iter().any(|s| s.mutes(&alert.labels, now))
            || !inhibit::inhibited_by(&self.inhibit_rules, alert, self.alerts.values(), now)
                .is_empty()
    }

    /// Flushes every due group.
    pub fn due(&mut self, now: DateTime<Utc>) -> DueWork {
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
    pub fn delivered(
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

    /// Fingerprints of the alerts the dispatcher still holds.
    pub fn fingerprints(&self) -> BTreeSet<Fingerprint> {
        self.alerts.keys().copied().collect()
    }

    pub fn alert(&self, fp: &Fingerprint) -> Option<&Alert> {
        self.alerts.get(fp)
    }

    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// Every known alert with its receivers and what mutes it.
    pub fn views(&self, now: DateTime<Utc>) -> Vec<AlertView> {
        self.alerts
            .values()
            .map(|alert| AlertView {
                alert: alert.clone(),
                receivers: self
                    .routes_for(&alert.labels)
                    .into_iter()
                    .map(|o| o.receiver)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                silenced_by: silence::silenced_by(&self.silences, &alert.labels, now),
                inhibited_by: inhibit::inhibited_by(
                    &self.inhibit_rules,
                    alert,
                    self.alerts.values(),
                    now,
                ),
            })
            .collect()
    }
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
}
