//! The README's configuration reference stays true to the code: every key of
//! every section (common and per daemon), with its default, is listed there.
//! Run with `--nocapture` to print the rows a missing key needs.

use serde_json::Value;

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

fn section<T: serde::Serialize>(name: &str, settings: &T) -> Value {
    let mut root = serde_json::Map::new();
    root.insert(
        name.to_owned(),
        serde_json::to_value(settings).expect("settings serialize"),
    );
    Value::Object(root)
}

#[test]
fn readme_lists_every_config_key() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let sections = [
        serde_json::to_value(opsloop_core::config::Settings::default()).expect("serialize"),
        section("api", &opsloop_api::ApiSettings::default()),
        section(
            "heartbeat",
            &opsloop_heartbeat_worker::HeartbeatSettings::default(),
        ),
        section("alerter", &opsloop_alerter::AlerterSettings::default()),
        section("backup", &opsloop_backup_agent::BackupSettings::default()),
    ];
    let mut keys = Vec::new();
    for s in &sections {
        flatten("", s, &mut keys);
    }
    let missing: Vec<_> = keys
        .iter()
        .filter(|(key, _)| !readme.contains(&format!("`{key}`")))
        .collect();
    for (key, default) in &missing {
        let env = format!("OPSLOOP__{}", key.to_ascii_uppercase().replace('.', "__"));
        println!("| `{key}` | `{default}` | `{env}` |");
    }
    assert!(
        missing.is_empty(),
        "{} config keys are missing from README.md (rows printed above)",
        missing.len()
    );
}
