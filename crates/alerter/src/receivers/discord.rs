//! Discord webhooks: one embed per alert, coloured by severity, with fields
//! for environment / severity / instance and a timestamp. Discord's limits
//! are enforced here (title 256, description 4096, 25 fields, field name 256
//! and value 1024, footer 2048, 6000 characters over all embeds, 10 embeds,
//! content 2000), cutting with an ellipsis and saying what was left out.

use serde_json::{Value, json};

use super::{
    AlertText, Receiver, ReceiverKind, RenderContext, chars, link, report, title, truncate,
};
use crate::group::Notification;
use crate::model::{Alert, Severity};

pub const MAX_TITLE: usize = 256;
pub const MAX_DESCRIPTION: usize = 4096;
pub const MAX_FIELDS: usize = 25;
pub const MAX_FIELD_NAME: usize = 256;
pub const MAX_FIELD_VALUE: usize = 1024;
pub const MAX_FOOTER: usize = 2048;
pub const MAX_TOTAL: usize = 6000;
pub const MAX_EMBEDS: usize = 10;
pub const MAX_CONTENT: usize = 2000;

pub const COLOUR_CRITICAL: u32 = 0xE0_1E_5A;
pub const COLOUR_HIGH: u32 = 0xFF_8C_00;
pub const COLOUR_WARNING: u32 = 0xEC_B2_2E;
pub const COLOUR_INFO: u32 = 0x36_C5_F0;
pub const COLOUR_RESOLVED: u32 = 0x2E_B6_7D;
pub const COLOUR_UNKNOWN: u32 = 0x99_99_99;

pub struct Discord;

pub fn colour(severity: Option<Severity>, resolved: bool) -> u32 {
    if resolved {
        return COLOUR_RESOLVED;
    }
    match severity {
        Some(Severity::Critical) => COLOUR_CRITICAL,
        Some(Severity::High) => COLOUR_HIGH,
        Some(Severity::Warning) => COLOUR_WARNING,
        Some(Severity::Info) => COLOUR_INFO,
        None => COLOUR_UNKNOWN,
    }
}

/// One embed being built, with its texts kept apart for size accounting.
struct Embed {
    title: String,
    description: String,
    colour: u32,
    fields: Vec<(String, String)>,
    footer: String,
    timestamp: String,
}

impl Embed {
    fn size(&self) -> usize {
        chars(&self.title)
            + chars(&self.description)
            + chars(&self.footer)
            + self
                .fields
                .iter()
                .map(|(k, v)| chars(k) + chars(v))
                .sum::<usize>()
    }

    fn to_json(&self) -> Value {
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v, "inline": true}))
            .collect();
        let mut embed = json!({
            "title": self.title,
            "color": self.colour,
            "fields": fields,
            "timestamp": self.timestamp,
            "footer": {"text": self.footer},
        });
        if !self.description.is_empty() {
            embed["description"] = json!(self.description);
        }
        embed
    }
}

fn alert_embed(alert: &Alert, resolved: bool, n: &Notification, ctx: &RenderContext) -> Embed {
    let state = if resolved { "RESOLVED" } else { "FIRING" };
    let severity = alert.severity();
    let mut fields = Vec::new();
    if !ctx.environment.is_empty() {
        fields.push(("Environment".to_owned(), ctx.environment.clone()));
    }
    fields.push((
        "Severity".to_owned(),
        severity
            .map(|s| format!("{} ({})", s.as_str(), s.priority()))
            .unwrap_or_else(|| "unknown".into()),
    ));
    for label in ["instance", "service"] {
        if let Some(v) = alert.labels.get(label) {
            let mut name = label.to_owned();
            name[..1].make_ascii_uppercase();
            fields.push((name, v.clone()));
        }
    }
    if let Some((label, url)) = link(alert) {
        fields.push((label.to_owned(), url));
    }
    let fields = fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .take(MAX_FIELDS)
        .map(|(k, v)| (truncate(&k, MAX_FIELD_NAME), truncate(&v, MAX_FIELD_VALUE)))
        .collect();
    let at = if resolved {
        alert.ends_at.unwrap_or(alert.starts_at)
    } else {
        alert.starts_at
    };
    Embed {
        title: truncate(&format!("[{state}] {}", alert.name()), MAX_TITLE),
        description: truncate(&AlertText::of(alert).markdown("**"), MAX_DESCRIPTION),
        colour: colour(severity, resolved),
        fields,
        footer: truncate(&format!("opsloop · {}", n.group_key), MAX_FOOTER),
        timestamp: at.to_rfc3339(),
    }
}

/// A report (daily summary, weekly report) as one embed: the title, the
/// headline as description, per section a full-width heading field with its
/// lines then its figures as inline fields, a links field, the CLI command
/// in the footer. Cut to Discord's limits (25 fields, 6000 characters) with
/// a last field saying how many were left out; never rejected.
pub fn report_payload(view: &report::ReportView, n: &Notification) -> Value {
    // (name, value, inline), before the limits.
    let mut all: Vec<(String, String, bool)> = Vec::new();
    for section in &view.sections {
        let lines = if section.lines.is_empty() {
            "\u{200b}".to_owned()
        } else {
            section.lines.join("\n")
        };
        all.push((section.heading.clone(), lines, false));
        for (k, v) in &section.fields {
            all.push((k.clone(), v.clone(), true));
        }
    }
    if !view.links.is_empty() {
        let links: Vec<String> = view
            .links
            .iter()
            .map(|(label, url)| format!("[{label}]({url})"))
            .collect();
        all.push(("Links".into(), links.join(" · "), false));
    }
    let all: Vec<(String, String, bool)> = all
        .into_iter()
        .map(|(k, v, inline)| {
            let v = if v.trim().is_empty() {
                "—".to_owned()
            } else {
                v
            };
            (
                truncate(&k, MAX_FIELD_NAME),
                truncate(&v, MAX_FIELD_VALUE),
                inline,
            )
        })
        .collect();
    let title = truncate(&view.title, MAX_TITLE);
    let footer = truncate(&view.footer, MAX_FOOTER);
    // The headline takes what the title and footer leave, up to a quarter
    // of the total so the figures keep most of the room.
    let description = truncate(&view.headline, MAX_DESCRIPTION.min(MAX_TOTAL / 4));
    // Room for a closing "…and N more" field.
    const MORE_FIELD: usize = 100;
    let mut used = chars(&title) + chars(&description) + chars(&footer);
    let mut fields: Vec<(String, String, bool)> = Vec::new();
    for (i, (k, v, inline)) in all.iter().enumerate() {
        let size = chars(k) + chars(v);
        let last_slot = fields.len() + 1 == MAX_FIELDS;
        let rest_after = all.len() - i - 1;
        let reserve = if rest_after > 0 { MORE_FIELD } else { 0 };
        let fits = used + size + reserve <= MAX_TOTAL;
        if !fits || (last_slot && rest_after > 0) {
            break;
        }
        used += size;
        fields.push((k.clone(), v.clone(), *inline));
    }
    if fields.len() < all.len() {
        fields.push((
            "…".into(),
            format!(
                "and {} more fields not shown; the full report is in `opsloop report`",
                all.len() - fields.len()
            ),
            false,
        ));
    }
    let mut embed = json!({
        "title": title,
        "color": COLOUR_INFO,
        "fields": fields.iter().map(|(k, v, inline)| json!({"name": k, "value": v, "inline": inline})).collect::<Vec<_>>(),
        "timestamp": n.state.at.to_rfc3339(),
    });
    if !footer.is_empty() {
        embed["footer"] = json!({"text": footer});
    }
    if !description.is_empty() {
        embed["description"] = json!(description);
    }
    if let Some((_, url)) = view.links.first() {
        embed["url"] = json!(url);
    }
    json!({
        "username": "opsloop",
        "content": truncate(&view.title, MAX_CONTENT),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    })
}

impl Receiver for Discord {
    fn kind(&self) -> ReceiverKind {
        ReceiverKind::Discord
    }

    fn payload(&self, n: &Notification, ctx: &RenderContext) -> Value {
        if let Some(view) = report::view(n) {
            return report_payload(&view, n);
        }
        let all: Vec<(&Alert, bool)> = n
            .firing
            .iter()
            .map(|a| (a, false))
            .chain(n.resolved.iter().map(|a| (a, true)))
            .collect();
        let shown = if all.len() > MAX_EMBEDS {
            MAX_EMBEDS - 1
        } else {
            all.len()
        };
        let mut embeds: Vec<Embed> = all[..shown]
            .iter()
            .map(|(a, resolved)| alert_embed(a, *resolved, n, ctx))
            .collect();
        if all.len() > shown {
            let names: Vec<String> = all[shown..]
                .iter()
                .map(|(a, _)| {
                    let instance = a.labels.get("instance").map(String::as_str).unwrap_or("");
                    format!("• {} {instance}", a.name())
                })
                .collect();
            embeds.push(Embed {
                title: format!("…and {} more alerts", all.len() - shown),
                description: truncate(&names.join("\n"), MAX_DESCRIPTION),
                colour: colour(n.severity(), n.firing.is_empty()),
                fields: Vec::new(),
                footer: String::new(),
                timestamp: n.state.at.to_rfc3339(),
            });
        }

        // Keep the sum of all embeds within 6000 characters: shorten the
        // description first, then drop fields, then drop the embed.
        let mut budget = MAX_TOTAL;
        let mut kept = Vec::new();
        let total = embeds.len();
        for mut embed in embeds {
            if embed.size() > budget {
                let others = embed.size() - chars(&embed.description);
                if others < budget {
                    embed.description = truncate(&embed.description, budget - others);
                } else {
                    embed.description.clear();
                    while embed.size() > budget && !embed.fields.is_empty() {
                        embed.fields.pop();
                    }
                    if embed.size() > budget {
                        embed.footer.clear();
                    }
                }
            }
            if embed.size() > budget || embed.title.is_empty() && embed.description.is_empty() {
                break;
            }
            budget -= embed.size();
            kept.push(embed);
        }
        let mut content = title(n);
        if kept.len() < total {
            content.push_str(&format!(" ({} embeds not shown)", total - kept.len()));
        }
        json!({
            "username": "opsloop",
            "content": truncate(&content, MAX_CONTENT),
            "embeds": kept.iter().map(Embed::to_json).collect::<Vec<_>>(),
            "allowed_mentions": {"parse": []},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::tests::{oversized, small};

    fn assert_within_limits(p: &Value) {
        assert!(chars(p["content"].as_str().expect("content")) <= MAX_CONTENT);
        let embeds = p["embeds"].as_array().expect("embeds");
        assert!(embeds.len() <= MAX_EMBEDS);
        let mut total = 0;
        for e in embeds {
            let title = chars(e["title"].as_str().expect("title"));
            let description = e["description"].as_str().map(chars).unwrap_or(0);
            let footer = chars(e["footer"]["text"].as_str().expect("footer"));
            assert!(title <= MAX_TITLE && description <= MAX_DESCRIPTION && footer <= MAX_FOOTER);
            let fields = e["fields"].as_array().expect("fields");
            assert!(fields.len() <= MAX_FIELDS);
            for f in fields {
                let (name, value) = (
                    chars(f["name"].as_str().expect("n")),
                    chars(f["value"].as_str().expect("v")),
                );
                assert!(name <= MAX_FIELD_NAME && value <= MAX_FIELD_VALUE && value > 0);
                total += name + value;
            }
            total += title + description + footer;
        }
        assert!(total <= MAX_TOTAL, "{total} characters");
    }

    #[test]
    fn shape_of_a_small_notification() {
        let ctx = RenderContext {
            environment: "production".into(),
            external_url: String::new(),
        };
        let p = Discord.payload(&small(), &ctx);
        assert_within_limits(&p);
        assert_eq!(p["content"], "[FIRING:1] Down");
        let embeds = p["embeds"].as_array().expect("embeds");
        assert_eq!(embeds.len(), 2);
        assert_eq!(embeds[0]["title"], "[FIRING] Down");
        assert_eq!(embeds[0]["color"], COLOUR_CRITICAL);
        assert_eq!(embeds[0]["description"], "api is down");
        let names: Vec<&str> = embeds[0]["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .map(|f| f["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            ["Environment", "Severity", "Instance", "Service", "Runbook"]
        );
        assert_eq!(embeds[0]["fields"][1]["value"], "critical (P0)");
        assert_eq!(embeds[1]["color"], COLOUR_RESOLVED);
        assert!(
            embeds[0]["timestamp"]
                .as_str()
                .expect("ts")
                .starts_with("2027-01-15T08:00:00")
        );
        assert_eq!(p["allowed_mentions"]["parse"], json!([]));
    }

    #[test]
    fn oversized_notifications_stay_within_limits() {
        for n in [1, 2, 10, 11, 300] {
            let p = Discord.payload(&oversized(n), &RenderContext::default());
            assert_within_limits(&p);
            assert!(!p["embeds"].as_array().expect("embeds").is_empty());
        }
        let p = Discord.payload(&oversized(300), &RenderContext::default());
        assert!(p["content"].as_str().expect("c").contains("not shown"));
    }

    #[test]
    fn colours_follow_severity() {
        let table = [
            (Some(Severity::Critical), false, COLOUR_CRITICAL),
            (Some(Severity::High), false, COLOUR_HIGH),
            (Some(Severity::Warning), false, COLOUR_WARNING),
            (Some(Severity::Info), false, COLOUR_INFO),
            (None, false, COLOUR_UNKNOWN),
            (Some(Severity::Critical), true, COLOUR_RESOLVED),
        ];
        for (severity, resolved, expected) in table {
            assert_eq!(colour(severity, resolved), expected);
        }
    }

    fn field_values(p: &Value) -> Vec<(String, String)> {
        p["embeds"][0]["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().expect("name").to_owned(),
                    f["value"].as_str().expect("value").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_weekly_report_renders_as_an_embed_with_fields() {
        use crate::receivers::report::tests::{weekly_body, weekly_notification};
        let n = weekly_notification(
            &weekly_body(),
            "week to 2026-11-23: objectives 3 met / 2 missed",
        );
        let p = Discord.payload(&n, &RenderContext::default());
        assert_within_limits(&p);
        let embeds = p["embeds"].as_array().expect("embeds");
        assert_eq!(embeds.len(), 1);
        let e = &embeds[0];
        assert_eq!(e["title"], "📊 Weekly report · 2026-11-16 → 2026-11-23");
        assert_eq!(
            e["description"],
            "week to 2026-11-23: objectives 3 met / 2 missed"
        );
        assert_eq!(e["color"], COLOUR_INFO);
        assert_eq!(
            e["url"],
            "https://runbooks.example/opsloop/runbook.md#weekly-report"
        );
        assert_eq!(
            e["footer"]["text"],
            "Full figures: `opsloop report weekly --week-of 2026-11-16`"
        );
        let fields = field_values(&p);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
        };
        assert_eq!(
            get("steps availability"),
            "95.2 % of 42 (objective 99.90 %) ❌ missed"
        );
        assert_eq!(
            get("heartbeat p95 latency"),
            "130 ms (objective 500 ms) ✅ met"
        );
        assert_eq!(get("MTTR"), "1.5 h");
        assert_eq!(get("Spent"), "$105.50 of $186.67 (56.5 %)");
        assert!(get("Links").contains("[Runbook](https://runbooks.example/"));
        let all = serde_json::to_string(&p).expect("json");
        assert!(!all.contains("successRate"), "no raw JSON");
        // Section headings are full-width, figures inline.
        let raw = e["fields"].as_array().expect("fields");
        assert_eq!(raw[0]["name"], "Service level objectives");
        assert_eq!(raw[0]["inline"], false);
        assert_eq!(raw[1]["inline"], true);
    }

    #[test]
    fn an_oversized_report_is_cut_visibly_within_limits() {
        use crate::receivers::report::tests::{oversized_weekly_body, weekly_notification};
        let n = weekly_notification(&oversized_weekly_body(), &"h".repeat(10_000));
        let p = Discord.payload(&n, &RenderContext::default());
        assert_within_limits(&p);
        let fields = field_values(&p);
        assert!(fields.len() <= MAX_FIELDS);
        let (name, value) = fields.last().expect("a last field");
        assert_eq!(name, "…");
        assert!(value.contains("more fields not shown"), "{value}");
        let description = p["embeds"][0]["description"].as_str().expect("description");
        assert!(description.ends_with('…'));
        // Many small fields: the 25-field limit, not the size, cuts.
        let mut many = crate::receivers::report::tests::weekly_body();
        let kinds: serde_json::Map<String, Value> =
            (0..60).map(|i| (format!("k{i}"), json!(1.0))).collect();
        many["cost"]["byKind"] = Value::Object(kinds);
        let p = Discord.payload(&weekly_notification(&many, "s"), &RenderContext::default());
        assert_within_limits(&p);
        let fields = field_values(&p);
        assert_eq!(fields.len(), MAX_FIELDS);
        assert!(fields[MAX_FIELDS - 1].1.contains("more fields not shown"));
    }

    #[test]
    fn the_daily_summary_renders_as_an_embed() {
        let p = Discord.payload(
            &crate::receivers::report::tests::daily_notification(),
            &RenderContext::default(),
        );
        assert_within_limits(&p);
        let fields = field_values(&p);
        assert_eq!(
            fields[0],
            ("Proposals (5)".to_owned(), "\u{200b}".to_owned())
        );
        assert!(fields.contains(&("approved".to_owned(), "4".to_owned())));
        assert!(fields.contains(&("Events".to_owned(), "57 events recorded".to_owned())));
    }
}
