//! Discord webhooks: one embed per alert, coloured by severity, with fields
//! for environment / severity / instance and a timestamp. Discord's limits
//! are enforced here (title 256, description 4096, 25 fields, field name 256
//! and value 1024, footer 2048, 6000 characters over all embeds, 10 embeds,
//! content 2000), cutting with an ellipsis and saying what was left out.

use serde_json::{Value, json};

use super::{AlertText, Receiver, ReceiverKind, RenderContext, chars, link, title, truncate};
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

impl Receiver for Discord {
    fn kind(&self) -> ReceiverKind {
        ReceiverKind::Discord
    }

    fn payload(&self, n: &Notification, ctx: &RenderContext) -> Value {
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
}
