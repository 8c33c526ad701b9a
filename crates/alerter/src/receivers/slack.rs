//! Slack incoming webhooks, in Block Kit: a header with the severity emoji
//! and alert name, fields for severity / service / time (the display zone and UTC),
//! the description, the alerts listed compactly, and a button to the runbook
//! or dashboard when annotated. Slack's limits are enforced here (header 150
//! characters, section text 3000, ten fields of 2000, 50 blocks), cutting
//! with an ellipsis so a payload is never rejected.

use serde_json::{Value, json};

use super::{
    AlertText, Receiver, ReceiverKind, RenderContext, describe, display_timezone, link, report,
    title, truncate, zoned_and_utc,
};
use crate::group::Notification;
use crate::model::Severity;

pub const MAX_HEADER: usize = 150;
pub const MAX_SECTION_TEXT: usize = 3000;
pub const MAX_FIELD_TEXT: usize = 2000;
pub const MAX_FIELDS: usize = 10;
pub const MAX_BLOCKS: usize = 50;
pub const MAX_BUTTON_TEXT: usize = 75;
/// Elements of one actions block.
pub const MAX_ACTION_ELEMENTS: usize = 25;
pub const MAX_URL: usize = 3000;
pub const MAX_CONTEXT_TEXT: usize = 3000;
/// The fallback `text` shown in notifications.
pub const MAX_FALLBACK_TEXT: usize = 3000;

pub struct Slack;

pub fn emoji(notification: &Notification) -> &'static str {
    if notification.firing.is_empty() {
        return "✅";
    }
    match notification.severity() {
        Some(Severity::Critical) => "🔴",
        Some(Severity::High) => "🟠",
        Some(Severity::Warning) => "🟡",
        Some(Severity::Info) => "🔵",
        None => "⚪",
    }
}

fn mrkdwn_section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, MAX_SECTION_TEXT)}})
}

/// A report (daily summary, weekly report) as Block Kit: a header, the
/// headline, per section a bold heading with its lines and its figures as
/// fields (ten per section block), link buttons and a context line with the
/// CLI command. Cut to Slack's limits with `…`, never rejected.
pub fn report_payload(view: &report::ReportView) -> Value {
    let field = |(k, v): &(String, String)| json!({"type": "mrkdwn", "text": truncate(&format!("*{k}*\n{v}"), MAX_FIELD_TEXT)});
    let mut blocks = vec![json!({"type": "header", "text": {"type": "plain_text",
        "text": truncate(&view.title, MAX_HEADER), "emoji": true}})];
    if !view.headline.is_empty() {
        blocks.push(mrkdwn_section(&view.headline));
    }
    // Tail: buttons and the footer, reserved before the sections.
    let mut tail = Vec::new();
    let buttons: Vec<Value> = view
        .links
        .iter()
        .filter(|(_, url)| url.chars().count() <= MAX_URL)
        .take(MAX_ACTION_ELEMENTS)
        .map(|(label, url)| {
            json!({"type": "button",
            "text": {"type": "plain_text", "text": truncate(label, MAX_BUTTON_TEXT)}, "url": url})
        })
        .collect();
    if !buttons.is_empty() {
        tail.push(json!({"type": "actions", "elements": buttons}));
    }
    if !view.footer.is_empty() {
        tail.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
            "text": truncate(&view.footer, MAX_CONTEXT_TEXT)}]}));
    }
    let mut body = Vec::new();
    for section in &view.sections {
        body.push(json!({"type": "divider"}));
        let mut text = format!("*{}*", section.heading);
        for line in &section.lines {
            text.push('\n');
            text.push_str(line);
        }
        body.push(mrkdwn_section(&text));
        for chunk in section.fields.chunks(MAX_FIELDS) {
            body.push(
                json!({"type": "section", "fields": chunk.iter().map(field).collect::<Vec<_>>()}),
            );
        }
    }
    let room = MAX_BLOCKS - blocks.len() - tail.len();
    if body.len() > room {
        let left_out = body.len() - (room - 1);
        body.truncate(room - 1);
        body.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
            "text": format!("… {left_out} more blocks not shown; the full report is in `opsloop report`")}]}));
    }
    blocks.extend(body);
    blocks.extend(tail);
    let fallback = if view.headline.is_empty() {
        view.title.clone()
    } else {
        format!("{}: {}", view.title, view.headline)
    };
    json!({
        "text": truncate(&fallback, MAX_FALLBACK_TEXT),
        "blocks": blocks,
    })
}

impl Receiver for Slack {
    fn kind(&self) -> ReceiverKind {
        ReceiverKind::Slack
    }

    fn payload(&self, n: &Notification, ctx: &RenderContext) -> Value {
        if let Some(view) = report::view(n) {
            return report_payload(&view);
        }
        let header = format!("{} {}", emoji(n), title(n));
        let severity = n
            .severity()
            .map(|s| format!("{} ({})", s.as_str(), s.priority()))
            .unwrap_or_else(|| "unknown".into());
        let first = n.alerts().next();
        let service = n
            .common_labels
            .get("service")
            .cloned()
            .unwrap_or_else(|| "—".into());
        let started = first
            .map(|a| zoned_and_utc(a.starts_at, display_timezone()))
            .unwrap_or_default();
        let mut fields = vec![
            ("Severity", severity),
            ("Service", service),
            ("Started", started),
        ];
        if !ctx.environment.is_empty() {
            fields.push(("Environment", ctx.environment.clone()));
        }
        let fields: Vec<Value> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| json!({"type": "mrkdwn", "text": truncate(&format!("*{k}*\n{v}"), MAX_FIELD_TEXT)}))
            .collect();

        let mut blocks = vec![
            json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&header, MAX_HEADER), "emoji": true}}),
            json!({"type": "section", "fields": fields}),
        ];
        // The first alert's headline (bold) and description: the body of
        // the message. The listing below does not repeat these texts.
        let shown = first.map(AlertText::of);
        let body = shown.map(|t| t.markdown("*")).unwrap_or_default();
        if !body.is_empty() {
            blocks.push(mrkdwn_section(&body));
        }
        let already_shown =
            |text: &str| shown.is_some_and(|t| t.headline == Some(text) || t.body == Some(text));

        // Tail blocks (button, context) are reserved before listing alerts.
        let mut tail = Vec::new();
        if let Some((label, url)) = first.and_then(link)
            && url.chars().count() <= MAX_URL
        {
            tail.push(json!({"type": "actions", "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": truncate(label, MAX_BUTTON_TEXT)},
                "url": url,
            }]}));
        }
        let context = format!(
            "{} firing, {} resolved · group {}",
            n.firing.len(),
            n.resolved.len(),
            n.group_key
        );
        tail.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(&context, MAX_CONTEXT_TEXT)}]}));

        // The alerts, one compact line each, packed into sections.
        let lines: Vec<String> = n
            .firing
            .iter()
            .map(|a| ("🔥", a))
            .chain(n.resolved.iter().map(|a| ("✅", a)))
            .map(|(mark, a)| {
                let instance = a
                    .labels
                    .get("instance")
                    .map(|i| format!(" `{i}`"))
                    .unwrap_or_default();
                let text = describe(a);
                let line = if text.is_empty() || already_shown(&text) {
                    format!("{mark} *{}*{instance}", a.name())
                } else {
                    format!("{mark} *{}*{instance} {text}", a.name())
                };
                // One line never takes more than a tenth of a section.
                truncate(&line, MAX_SECTION_TEXT / 10)
            })
            .collect();
        let room = MAX_BLOCKS - blocks.len() - tail.len();
        // (text, lines in it) per section, packed greedily.
        let mut sections: Vec<(String, usize)> = Vec::new();
        for line in &lines {
            match sections.last_mut() {
                Some((text, count))
                    if text.chars().count() + 1 + line.chars().count() <= MAX_SECTION_TEXT =>
                {
                    text.push('\n');
                    text.push_str(line);
                    *count += 1;
                }
                _ => sections.push((line.clone(), 1)),
            }
        }
        if sections.len() > room {
            sections.truncate(room.saturating_sub(1));
            let listed: usize = sections.iter().map(|(_, c)| c).sum();
            sections.push((format!("…and {} more", lines.len() - listed), 0));
        }
        let sections: Vec<String> = sections.into_iter().map(|(t, _)| t).collect();
        blocks.extend(sections.iter().map(|s| mrkdwn_section(s)));
        blocks.extend(tail);
        blocks.truncate(MAX_BLOCKS);

        json!({
            "text": truncate(&header, MAX_FALLBACK_TEXT),
            "blocks": blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::chars;
    use crate::receivers::tests::{oversized, small};

    /// Every text in the payload within Slack's limits.
    fn assert_within_limits(payload: &Value) {
        let blocks = payload["blocks"].as_array().expect("blocks");
        assert!(blocks.len() <= MAX_BLOCKS, "{} blocks", blocks.len());
        assert!(chars(payload["text"].as_str().expect("text")) <= MAX_FALLBACK_TEXT);
        for block in blocks {
            match block["type"].as_str().expect("type") {
                "header" => {
                    assert!(chars(block["text"]["text"].as_str().expect("t")) <= MAX_HEADER)
                }
                "section" => {
                    if let Some(text) = block["text"]["text"].as_str() {
                        assert!(chars(text) <= MAX_SECTION_TEXT);
                    }
                    if let Some(fields) = block["fields"].as_array() {
                        assert!(!fields.is_empty() && fields.len() <= MAX_FIELDS);
                        for f in fields {
                            assert!(chars(f["text"].as_str().expect("f")) <= MAX_FIELD_TEXT);
                        }
                    }
                }
                "actions" => {
                    for e in block["elements"].as_array().expect("elements") {
                        assert!(chars(e["text"]["text"].as_str().expect("t")) <= MAX_BUTTON_TEXT);
                        assert!(chars(e["url"].as_str().expect("u")) <= MAX_URL);
                    }
                }
                "context" => {
                    for e in block["elements"].as_array().expect("elements") {
                        assert!(chars(e["text"].as_str().expect("t")) <= MAX_CONTEXT_TEXT);
                    }
                }
                "divider" => {}
                other => panic!("unexpected block {other}"),
            }
        }
    }

    #[test]
    fn shape_of_a_small_notification() {
        let ctx = RenderContext {
            environment: "production".into(),
            external_url: String::new(),
        };
        let p = Slack.payload(&small(), &ctx);
        assert_within_limits(&p);
        let blocks = p["blocks"].as_array().expect("blocks");
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], "🔴 [FIRING:1] Down");
        let fields = blocks[1]["fields"].as_array().expect("fields");
        assert_eq!(fields[0]["text"], "*Severity*\ncritical (P0)");
        assert_eq!(fields[1]["text"], "*Service*\napi");
        // The default display zone is UTC.
        assert!(fields[2]["text"].as_str().expect("t").ends_with(" UTC"));
        assert_eq!(fields[3]["text"], "*Environment*\nproduction");
        assert_eq!(blocks[2]["text"]["text"], "api is down");
        let listing = blocks[3]["text"]["text"].as_str().expect("listing");
        assert!(listing.contains("🔥 *Down* `h1`"), "{listing}");
        assert!(!listing.contains("api is down"), "shown once: {listing}");
        assert!(listing.contains("✅ *Down* `h2`"), "{listing}");
        let actions = blocks
            .iter()
            .find(|b| b["type"] == "actions")
            .expect("button");
        assert_eq!(
            actions["elements"][0]["url"],
            "https://runbooks.example/down"
        );
        assert_eq!(blocks.last().expect("context")["type"], "context");
    }

    #[test]
    fn oversized_notifications_stay_within_limits() {
        for n in [1, 3, 60, 500] {
            let p = Slack.payload(&oversized(n), &RenderContext::default());
            assert_within_limits(&p);
            let header = p["blocks"][0]["text"]["text"].as_str().expect("header");
            assert!(header.ends_with('…'), "{header}");
            if n == 500 {
                let blocks = p["blocks"].as_array().expect("blocks");
                let more = blocks
                    .iter()
                    .filter_map(|b| b["text"]["text"].as_str())
                    .any(|t| t.starts_with("…and ") && t.ends_with(" more"));
                assert!(more, "the cut is announced");
            }
        }
    }

    /// Every text of a payload, for "shown somewhere" checks.
    fn texts(payload: &Value) -> String {
        serde_json::to_string(payload).expect("json")
    }

    #[test]
    fn the_weekly_report_renders_as_blocks_with_fields_and_links() {
        use crate::receivers::report::tests::{weekly_body, weekly_notification};
        let n = weekly_notification(
            &weekly_body(),
            "week to 2026-11-23: objectives 3 met / 2 missed",
        );
        let p = Slack.payload(&n, &RenderContext::default());
        assert_within_limits(&p);
        let blocks = p["blocks"].as_array().expect("blocks");
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(
            blocks[0]["text"]["text"],
            "📊 Weekly report · 2026-11-16 → 2026-11-23"
        );
        assert_eq!(
            blocks[1]["text"]["text"],
            "week to 2026-11-23: objectives 3 met / 2 missed"
        );
        // Figures are fields, not a JSON string.
        let fields: Vec<&str> = blocks
            .iter()
            .filter_map(|b| b["fields"].as_array())
            .flatten()
            .map(|f| f["text"].as_str().expect("field"))
            .collect();
        assert!(
            fields.contains(&"*steps availability*\n95.2 % of 42 (objective 99.90 %) ❌ missed"),
            "{fields:?}"
        );
        assert!(fields.contains(&"*heartbeat p95 latency*\n130 ms (objective 500 ms) ✅ met"));
        assert!(fields.contains(&"*MTTA*\n4 min"));
        assert!(fields.contains(&"*Spent*\n$105.50 of $186.67 (56.5 %)"));
        let all = texts(&p);
        assert!(!all.contains("\\\"periodStart\\\""), "no raw JSON: {all}");
        assert!(!all.contains("successRate"), "no raw JSON keys");
        let actions = blocks
            .iter()
            .find(|b| b["type"] == "actions")
            .expect("buttons");
        assert_eq!(
            actions["elements"][0]["url"],
            "https://runbooks.example/opsloop/runbook.md#weekly-report"
        );
        let context = blocks.last().expect("context");
        assert_eq!(
            context["elements"][0]["text"],
            "Full figures: `opsloop report weekly --week-of 2026-11-16`"
        );
        assert!(
            p["text"]
                .as_str()
                .expect("text")
                .starts_with("📊 Weekly report")
        );
    }

    #[test]
    fn an_oversized_report_is_cut_visibly_within_limits() {
        use crate::receivers::report::tests::{oversized_weekly_body, weekly_notification};
        let n = weekly_notification(&oversized_weekly_body(), &"h".repeat(10_000));
        let p = Slack.payload(&n, &RenderContext::default());
        assert_within_limits(&p);
        let blocks = p["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), MAX_BLOCKS, "filled, not over");
        assert!(
            blocks[1]["text"]["text"]
                .as_str()
                .expect("headline")
                .ends_with('…')
        );
        assert!(
            texts(&p).contains("more blocks not shown; the full report is in `opsloop report`"),
            "the cut is announced"
        );
        assert_eq!(
            blocks.last().expect("footer")["type"],
            "context",
            "the footer survives"
        );
    }

    #[test]
    fn the_daily_summary_renders_its_counts_as_fields() {
        let p = Slack.payload(
            &crate::receivers::report::tests::daily_notification(),
            &RenderContext::default(),
        );
        assert_within_limits(&p);
        assert_eq!(
            p["blocks"][0]["text"]["text"],
            "📋 Daily summary · since 2026-11-22 06:00 UTC"
        );
        let all = texts(&p);
        assert!(all.contains("*Proposals (5)*"), "{all}");
        assert!(all.contains("*approved*\\n4"), "{all}");
        assert!(all.contains("57 events recorded"));
        assert!(all.contains("`opsloop summary --period daily`"));
    }
}
