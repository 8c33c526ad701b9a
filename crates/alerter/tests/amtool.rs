//! Alertmanager's own CLI against the alerter: `amtool alert add` (which
//! posts Go's zero time for `startsAt`/`endsAt`), `alert query` (matchers,
//! `-r` receiver, `-s`/`-a`/`-i` states before and after a silence), and
//! `silence add/query/expire`. amtool comes from Debian's
//! `prometheus-alertmanager` package (scripts/test.sh installs it); the test
//! fails, never skips, without it.

mod common;

use std::process::Command;

use common::{spawn_app, stop};
use opsloop_core::config::BusSettings;
use opsloop_core::store::testing::fresh_sqlite;

fn amtool_binary() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("amtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "amtool is not installed: apt-get install -y --no-install-recommends \
             prometheus-alertmanager (scripts/test.sh does this)"
        )
    })
}

/// Runs amtool against `url`; returns stdout, failing with its stderr.
fn amtool(url: &str, args: &[&str]) -> String {
    let output = Command::new(amtool_binary())
        .arg(format!("--alertmanager.url={url}"))
        .args(args)
        .output()
        .expect("amtool runs");
    assert!(
        output.status.success(),
        "amtool {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("amtool printed no JSON ({e}): {text}"))
}

#[tokio::test]
async fn amtool_round_trip_alerts_and_silences() {
    let db = fresh_sqlite().await;
    let out = tempfile::tempdir().expect("tempdir");
    let receivers = format!(
        r#"
[[alerter.receivers]]
name = "slack"
kind = "console"
path = "{}"
"#,
        out.path().join("alerts.jsonl").display()
    );
    let app = spawn_app(&db, BusSettings::default(), &receivers, Vec::new()).await;
    let url = app.http.clone();

    let added = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            amtool(
                &url,
                &[
                    "alert",
                    "add",
                    "AmtoolRoundTrip",
                    "service=api",
                    "--annotation=summary=added by amtool",
                ],
            )
        }
    })
    .await
    .expect("amtool alert add");
    drop(added);

    let url2 = url.clone();
    let (alerts, silence_id, silences, expired, queries) = tokio::task::spawn_blocking(move || {
        let url = url2;
        let alerts = json(&amtool(&url, &["alert", "query", "-o", "json"]));
        let count = |args: &[&str]| {
            let mut all = vec!["alert", "query", "-o", "json"];
            all.extend_from_slice(args);
            json(&amtool(&url, &all))
                .as_array()
                .map(Vec::len)
                .unwrap_or_default()
        };
        // Matchers (the bare first word is the alertname) and receivers.
        let mut queries = vec![
            ("AmtoolRoundTrip", count(&["AmtoolRoundTrip"])),
            ("service=api", count(&["service=api"])),
            ("service=~a.i", count(&["service=~a.i"])),
            ("service=web", count(&["service=web"])),
            ("-r sl.ck", count(&["-r", "sl.ck"])),
            ("-r pager", count(&["-r", "pager"])),
        ];
        let silence_id = amtool(
            &url,
            &[
                "silence",
                "add",
                "alertname=AmtoolRoundTrip",
                "--comment=maintenance",
                "--author=ops",
                "--duration=1h",
            ],
        )
        .trim()
        .to_owned();
        let silences = json(&amtool(&url, &["silence", "query", "-o", "json"]));
        // Silenced: gone from the default (active) query, shown by -s.
        queries.push(("silenced: default", count(&[])));
        queries.push(("silenced: -s", count(&["-s"])));
        queries.push(("silenced: -a -i", count(&["-a", "-i"])));
        amtool(&url, &["silence", "expire", &silence_id]);
        queries.push(("expired: default", count(&[])));
        let expired = json(&amtool(
            &url,
            &["silence", "query", "--expired", "-o", "json"],
        ));
        (alerts, silence_id, silences, expired, queries)
    })
    .await
    .expect("amtool round trip");

    // The alert amtool added (zero startsAt/endsAt) is active, not gone.
    let alerts = alerts.as_array().expect("alert list");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["alertname"], "AmtoolRoundTrip");
    assert_eq!(alerts[0]["labels"]["service"], "api");
    assert_eq!(alerts[0]["annotations"]["summary"], "added by amtool");
    assert_eq!(alerts[0]["status"]["state"], "active");

    assert_eq!(
        queries,
        vec![
            ("AmtoolRoundTrip", 1),
            ("service=api", 1),
            ("service=~a.i", 1),
            ("service=web", 0),
            ("-r sl.ck", 1),
            ("-r pager", 0),
            ("silenced: default", 0),
            ("silenced: -s", 1),
            ("silenced: -a -i", 0),
            ("expired: default", 1),
        ]
    );

    let silences = silences.as_array().expect("silence list");
    assert_eq!(silences.len(), 1, "{silences:?}");
    assert_eq!(silences[0]["id"], silence_id.as_str());
    assert_eq!(silences[0]["createdBy"], "ops");
    assert_eq!(silences[0]["status"]["state"], "active");
    let expired = expired.as_array().expect("expired list");
    assert!(
        expired
            .iter()
            .any(|s| s["id"] == silence_id.as_str() && s["status"]["state"] == "expired"),
        "{expired:?}"
    );
    stop(app).await;
    db.cleanup().await;
}
