//! The status page's outputs from a [`Snapshot`]: the HTML page (CSS
//! inlined, no script, no external request, readable on a phone), the Atom
//! feed of incidents and the Shields-style SVG badges.

use std::fmt::Write;

use super::model::{
    Component, ComponentState, DayBar, Group, Incident, Overall, Snapshot, percent,
};

/// Escapes text for HTML and XML bodies and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

/// The bar's colour class by its day's ratio.
fn bar_class(bar: &DayBar) -> &'static str {
    match bar.ratio() {
        None => "none",
        Some(r) if r >= 0.999 => "good",
        Some(r) if r >= 0.99 => "fair",
        Some(r) if r >= 0.95 => "poor",
        Some(_) => "bad",
    }
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;background:#f6f8fa}\
main{max-width:56rem;margin:0 auto;padding:1rem}\
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.25rem;margin:1.5rem 0 .5rem}h3{font-size:1rem;margin:0}\
.overall{padding:1rem;border-radius:.5rem;color:#fff;font-weight:600;font-size:1.1rem}\
.overall.all_operational{background:#1a7f37}.overall.maintenance{background:#0550ae}.overall.outage{background:#b91c1c}\
.card{background:#fff;border:1px solid #d0d7de;border-radius:.5rem;padding:.75rem 1rem;margin:.5rem 0}\
.row{display:flex;flex-wrap:wrap;justify-content:space-between;gap:.25rem 1rem;align-items:baseline}\
.state{font-weight:600}.state.operational{color:#1a7f37}.state.down{color:#b91c1c}\
.state.maintenance{color:#0550ae}.state.unknown{color:#57606a}\
.detail,.meta{color:#57606a;font-size:.875rem}\
.bars{display:flex;gap:1px;list-style:none;margin:.5rem 0 0;padding:0;height:2rem}\
.bars li{flex:1;position:relative;border-radius:1px;min-width:1px}\
.bars li.good{background:#2da44e}.bars li.fair{background:#bf8700}.bars li.poor{background:#d1560d}\
.bars li.bad{background:#b91c1c}.bars li.none{background:#d0d7de}\
.bars li:focus{outline:2px solid #0969da;outline-offset:1px}\
.bars .tip{display:none;position:absolute;bottom:2.4rem;left:50%;transform:translateX(-50%);\
white-space:nowrap;background:#1f2328;color:#fff;font-size:.8rem;padding:.2rem .45rem;border-radius:.25rem;z-index:1}\
.bars li:hover .tip,.bars li:focus .tip{display:block}\
.bars li:first-child .tip{left:0;transform:none}.bars li:last-child .tip{left:auto;right:0;transform:none}\
.legend{display:flex;justify-content:space-between;color:#57606a;font-size:.8rem}\
.level{display:inline-block;font-weight:700;padding:0 .4rem;border-radius:.25rem;background:#b91c1c;color:#fff}\
.level.P2,.level.P3{background:#9a6700}\
ol.updates{margin:.5rem 0 0;padding-left:1.2rem}ul.plain{list-style:none;margin:0;padding:0}\
footer{margin:2rem 0 1rem;color:#57606a;font-size:.875rem}\
@media (max-width:30rem){main{padding:.5rem}.bars{height:1.6rem}h1{font-size:1.3rem}}";

fn component_html(out: &mut String, c: &Component) {
    let name = escape(&c.name);
    let _ = write!(
        out,
        "<li class=\"card component\" id=\"component-{id}\" data-component=\"{id}\" data-state=\"{state}\">\
         <div class=\"row\"><h3>{name}</h3><span class=\"state {state}\">{label}</span></div>",
        id = escape(&c.id),
        state = c.state.as_str(),
        label = c.state.label(),
    );
    if let Some(detail) = &c.detail {
        let _ = write!(out, "<p class=\"detail\">{}</p>", escape(detail));
    }
    let _ = write!(
        out,
        "<ol class=\"bars\" aria-label=\"Uptime of {name}, one bar per day for {} days\">",
        c.days.len()
    );
    for bar in &c.days {
        let text = escape(&bar.describe());
        let _ = write!(
            out,
            "<li class=\"{}\" tabindex=\"0\" title=\"{text}\" aria-label=\"{text}\"><span class=\"tip\" aria-hidden=\"true\">{text}</span></li>",
            bar_class(bar)
        );
    }
    out.push_str("</ol><div class=\"legend\"><span>90 days ago</span>");
    let _ = write!(
        out,
        "<span>{}</span><span>today</span></div></li>",
        match c.uptime.d90 {
            Some(r) => format!("{} uptime", percent(r)),
            None => "no data yet".to_owned(),
        }
    );
}

fn incident_html(out: &mut String, i: &Incident) {
    let _ = write!(
        out,
        "<li class=\"card incident\" data-incident=\"{}\"><div class=\"row\"><h3><span class=\"level {level}\">{level}</span> {}</h3>\
         <span class=\"meta\">{} · opened {}</span></div>",
        i.id,
        escape(&i.title),
        escape(&i.state),
        time(i.opened_at),
        level = escape(&i.level),
    );
    if !i.updates.is_empty() {
        out.push_str("<ol class=\"updates\" aria-label=\"Updates, newest first\">");
        for u in &i.updates {
            let _ = write!(out, "<li>{} — {}</li>", time(u.at), escape(&u.text));
        }
        out.push_str("</ol>");
    }
    out.push_str("</li>");
}

/// The HTML page.
pub fn html(s: &Snapshot) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = escape(&s.title);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light\">\
         <title>{title}</title><link rel=\"icon\" href=\"data:,\"><link rel=\"alternate\" type=\"application/atom+xml\" title=\"Incidents\" href=\"/status/feed.atom\">\
         <style>{STYLE}</style></head><body><main>\
         <h1>{title}</h1><p class=\"overall {}\" role=\"status\">{}</p>",
        overall_class(s.overall),
        s.overall.label(),
    );
    let open: Vec<&Incident> = s.incidents.iter().filter(|i| i.is_open()).collect();
    out.push_str("<section aria-labelledby=\"incidents\"><h2 id=\"incidents\">Open incidents</h2>");
    if open.is_empty() {
        out.push_str("<p>No open incidents.</p>");
    } else {
        out.push_str("<ul class=\"plain\">");
        for i in open {
            incident_html(&mut out, i);
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    if !s.maintenance.is_empty() {
        out.push_str("<section aria-labelledby=\"maintenance\"><h2 id=\"maintenance\">Scheduled maintenance</h2><ul class=\"plain\">");
        for m in &s.maintenance {
            let what = if m.probes.is_empty() {
                "every probe".to_owned()
            } else {
                m.probes.join(", ")
            };
            let _ = write!(
                out,
                "<li class=\"card\"><div class=\"row\"><h3>{}</h3><span class=\"meta\">{}</span></div><p class=\"detail\">{} to {}{}</p></li>",
                escape(if m.reason.is_empty() {
                    "Maintenance"
                } else {
                    m.reason.as_str()
                }),
                escape(&what),
                time(m.start),
                time(m.end),
                if m.active(s.generated_at) {
                    " (in progress)"
                } else {
                    ""
                },
            );
        }
        out.push_str("</ul></section>");
    }
    for (group, heading) in [(Group::Opsloop, "opsloop"), (Group::Probes, "Probes")] {
        let members: Vec<&Component> = s.components.iter().filter(|c| c.group == group).collect();
        if members.is_empty() {
            continue;
        }
        let id = format!("group-{}", heading.to_ascii_lowercase());
        let _ = write!(
            out,
            "<section aria-labelledby=\"{id}\"><h2 id=\"{id}\">{heading}</h2><ul class=\"plain\">"
        );
        for c in members {
            component_html(&mut out, c);
        }
        out.push_str("</ul></section>");
    }
    let resolved: Vec<&Incident> = s.incidents.iter().filter(|i| !i.is_open()).collect();
    if !resolved.is_empty() {
        out.push_str("<section aria-labelledby=\"resolved\"><h2 id=\"resolved\">Recently resolved</h2><ul class=\"plain\">");
        for i in resolved {
            incident_html(&mut out, i);
        }
        out.push_str("</ul></section>");
    }
    let _ = write!(
        out,
        "<footer><p>Generated {}. Days are UTC. Machine-readable: <a href=\"/status.json\">status.json</a>, \
         <a href=\"/status/feed.atom\">incident feed</a>.</p></footer></main></body></html>",
        time(s.generated_at)
    );
    out
}

fn overall_class(overall: Overall) -> &'static str {
    match overall {
        Overall::AllOperational => "all_operational",
        Overall::Maintenance => "maintenance",
        Overall::Outage => "outage",
    }
}

/// The Atom feed of the snapshot's incidents (open and recently resolved).
pub fn atom(s: &Snapshot) -> String {
    let updated = s
        .incidents
        .iter()
        .map(|i| i.updated_at)
        .max()
        .unwrap_or(s.generated_at);
    let mut out = String::new();
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\
         <id>urn:opsloop:status:incidents</id><title>{} — incidents</title><updated>{}</updated>\
         <link rel=\"alternate\" type=\"text/html\" href=\"/status\"/><link rel=\"self\" href=\"/status/feed.atom\"/>\
         <author><name>opsloop</name></author>",
        escape(&s.title),
        updated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    for i in &s.incidents {
        let mut content = format!("{} · {}", i.level, i.state);
        for u in &i.updates {
            let _ = write!(
                content,
                "\n{} — {}",
                u.at.format("%Y-%m-%d %H:%M UTC"),
                u.text
            );
        }
        let _ = write!(
            out,
            "<entry><id>urn:uuid:{}</id><title>[{}] {} ({})</title><published>{}</published><updated>{}</updated>\
             <link rel=\"alternate\" type=\"text/html\" href=\"/status\"/><content type=\"text\">{}</content></entry>",
            i.id,
            escape(&i.level),
            escape(&i.title),
            escape(&i.state),
            i.opened_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            i.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            escape(&content)
        );
    }
    out.push_str("</feed>\n");
    out
}

/// Approximate width of `text` in Verdana 11 px (Shields' font).
fn text_width(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            'i' | 'l' | 'j' | '.' | ',' | ':' | '\'' | '|' | '!' => 4,
            'f' | 't' | 'r' | ' ' | '-' | '(' | ')' => 5,
            'm' | 'w' | 'M' | 'W' => 10,
            c if c.is_ascii_uppercase() => 8,
            _ => 7,
        })
        .sum()
}

/// A Shields-style badge: the component's name on grey, its state on the
/// state's colour.
pub fn badge(label: &str, state: ComponentState) -> String {
    let value = state.label().to_ascii_lowercase();
    let color = match state {
        ComponentState::Operational => "#2da44e",
        ComponentState::Down => "#b91c1c",
        ComponentState::Maintenance => "#0550ae",
        ComponentState::Unknown => "#6e7781",
    };
    let lw = text_width(label) + 10;
    let vw = text_width(&value) + 10;
    let w = lw + vw;
    let label = escape(label);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"20\" role=\"img\" aria-label=\"{label}: {value}\">\
         <title>{label}: {value}</title>\
         <linearGradient id=\"s\" x2=\"0\" y2=\"100%\"><stop offset=\"0\" stop-color=\"#bbb\" stop-opacity=\".1\"/><stop offset=\"1\" stop-opacity=\".1\"/></linearGradient>\
         <clipPath id=\"r\"><rect width=\"{w}\" height=\"20\" rx=\"3\" fill=\"#fff\"/></clipPath>\
         <g clip-path=\"url(#r)\"><rect width=\"{lw}\" height=\"20\" fill=\"#555\"/><rect x=\"{lw}\" width=\"{vw}\" height=\"20\" fill=\"{color}\"/>\
         <rect width=\"{w}\" height=\"20\" fill=\"url(#s)\"/></g>\
         <g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,sans-serif\" font-size=\"11\">\
         <text x=\"{lx}\" y=\"14\">{label}</text><text x=\"{vx}\" y=\"14\">{value}</text></g></svg>",
        lx = lw / 2,
        vx = lw + vw / 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn page_lists_maintenance_and_escapes_names() {
        use super::super::model::{Maintenance, Uptime, bars};
        let now: chrono::DateTime<chrono::Utc> = "2026-12-07T12:00:00Z".parse().expect("time");
        let component = Component {
            id: "probe-web".into(),
            name: "web <prod>".into(),
            group: Group::Probes,
            state: ComponentState::Maintenance,
            detail: None,
            since: None,
            uptime: Uptime::default(),
            days: bars(now.date_naive(), &[]),
        };
        let snapshot = Snapshot {
            title: "status".into(),
            generated_at: now,
            overall: Overall::of(std::slice::from_ref(&component)),
            components: vec![component],
            incidents: Vec::new(),
            maintenance: vec![Maintenance {
                start: now - chrono::Duration::hours(1),
                end: now + chrono::Duration::hours(1),
                reason: "database upgrade".into(),
                probes: vec!["web".into()],
            }],
        };
        let page = html(&snapshot);
        assert!(page.contains("Maintenance in progress"), "{page}");
        assert!(
            page.contains("<h2 id=\"maintenance\">Scheduled maintenance</h2>"),
            "{page}"
        );
        assert!(page.contains("database upgrade"), "{page}");
        assert!(page.contains(" (in progress)"), "{page}");
        assert!(
            page.contains("web &lt;prod&gt;") && !page.contains("web <prod>"),
            "{page}"
        );
        assert!(page.contains("No open incidents."), "{page}");
        assert_eq!(page.matches("tabindex=\"0\"").count(), 90);
    }

    #[test]
    fn badge_names_component_and_state() {
        let svg = badge("api", ComponentState::Down);
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.contains("aria-label=\"api: down\""), "{svg}");
        assert!(svg.contains("#b91c1c"), "{svg}");
    }
}
