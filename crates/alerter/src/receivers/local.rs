//! The console receiver of `opsloop dev`: one readable line per alert on
//! stdout, and the notification (webhook v4 JSON) appended as one line to a
//! JSON-lines file such as `var/alerts.jsonl`.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::{Receiver, ReceiverKind, RenderContext, describe, title};
use crate::group::Notification;

pub struct Console;

impl Receiver for Console {
    fn kind(&self) -> ReceiverKind {
        ReceiverKind::Console
    }

    fn payload(&self, n: &Notification, ctx: &RenderContext) -> Value {
        super::webhook::v4(n, ctx)
    }
}

/// The lines printed for a notification.
pub fn console_lines(n: &Notification) -> Vec<String> {
    let mut lines = vec![format!("ALERT {} ({})", title(n), n.receiver)];
    for (mark, a) in n
        .firing
        .iter()
        .map(|a| ("firing", a))
        .chain(n.resolved.iter().map(|a| ("resolved", a)))
    {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(format!(
            "  {mark} {{{}}} {}",
            labels.join(", "),
            describe(a)
        ));
    }
    lines
}

/// Appends `payload` as one JSON line to `path`, creating its directory.
pub fn append_json_line(path: &Path, payload: &Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(payload).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::tests::small;

    #[test]
    fn prints_and_appends_json_lines() {
        let n = small();
        let lines = console_lines(&n);
        assert_eq!(lines[0], "ALERT [FIRING:1] Down (r)");
        assert!(
            lines[1].starts_with("  firing {alertname=Down"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("  resolved"), "{}", lines[2]);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("var/alerts.jsonl");
        let payload = Console.payload(&n, &RenderContext::default());
        append_json_line(&path, &payload).expect("append");
        append_json_line(&path, &payload).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        let rows: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["version"], "4");
    }
}
