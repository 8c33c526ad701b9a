//! The telemetry pieces every daemon shares, through the crate's public
//! API: histogram buckets per metric, `opsloop_build_info`, and the JSON log
//! lines (trace and span ids inside a span; fields never replace the
//! formatter's own keys).

use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opsloop_core::config::LogFormat;
use opsloop_core::telemetry::{
    DEFAULT_BUCKETS, REVISION, VERSION, log_dispatch, prometheus, render_metrics,
};
use serde_json::{Map, Value};
use tracing_subscriber::EnvFilter;

#[test]
fn histograms_have_buckets_fit_for_their_values() {
    let _ = prometheus();
    metrics::histogram!("opsloop_backup_duration_seconds", "target" => "bucket-test")
        .record(5000.0);
    metrics::histogram!("opsloop_alerter_delivery_seconds", "receiver" => "bucket-test")
        .record(400.0);
    metrics::histogram!("opsloop_grpc_request_duration_seconds", "service" => "bucket-test", "method" => "m")
        .record(0.2);
    let text = render_metrics();
    let les = |family: &str, label: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}_bucket{{")) && l.contains(label))
            .filter_map(|l| {
                l.split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    };
    let backup = les("opsloop_backup_duration_seconds", "bucket-test");
    assert!(backup.contains(&"14400".to_owned()), "{backup:?}");
    assert!(!backup.contains(&"0.001".to_owned()), "{backup:?}");
    // 5000 s lands below the 7200 s bound, not in +Inf only.
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("opsloop_backup_duration_seconds_bucket{")
                && l.contains("bucket-test")
                && l.contains("le=\"7200\"")
        })
        .expect("7200 s bucket");
    assert!(line.ends_with(" 1"), "{line}");
    let delivery = les("opsloop_alerter_delivery_seconds", "bucket-test");
    assert!(delivery.contains(&"600".to_owned()), "{delivery:?}");
    let grpc = les("opsloop_grpc_request_duration_seconds", "bucket-test");
    assert_eq!(grpc.len(), DEFAULT_BUCKETS.len() + 1, "{grpc:?}");
}

/// A `MakeWriter` collecting every line in memory.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut out) = self.0.lock() {
            out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Lines {
    type Writer = Lines;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

impl Lines {
    fn json(&self) -> Vec<Map<String, Value>> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(Value::Object(map)) => map,
                other => panic!("not a JSON object line: {l} ({other:?})"),
            })
            .collect()
    }
}

fn json_dispatch(lines: &Lines) -> tracing::Dispatch {
    // As `init` without an OTLP endpoint: the provider handle is
    // dropped, the tracer keeps working.
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .build()
        .tracer("test");
    log_dispatch(
        "test-service",
        "test",
        LogFormat::Json,
        EnvFilter::new("info"),
        tracer,
        lines.clone(),
    )
}

#[test]
fn json_lines_carry_trace_and_span_ids_inside_a_span() {
    let lines = Lines::default();
    tracing::dispatcher::with_default(&json_dispatch(&lines), || {
        tracing::info!("outside");
        let outer = tracing::info_span!("request", method = "Submit");
        let _outer = outer.enter();
        tracing::info!("in the outer span");
        let inner = tracing::info_span!("query");
        let _inner = inner.enter();
        tracing::info!(rows = 3, "in the inner span");
    });
    let out = lines.json();
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(!out[0].contains_key("trace_id"), "{:?}", out[0]);
    assert!(!out[0].contains_key("span_id"), "{:?}", out[0]);
    let hex = |v: &Value, len: usize| {
        let s = v.as_str().unwrap_or_default();
        s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit()) && s.chars().any(|c| c != '0')
    };
    for line in &out[1..] {
        assert!(hex(&line["trace_id"], 32), "{line:?}");
        assert!(hex(&line["span_id"], 16), "{line:?}");
    }
    // One trace; each line names its innermost span.
    assert_eq!(out[1]["trace_id"], out[2]["trace_id"]);
    assert_ne!(out[1]["span_id"], out[2]["span_id"]);
    assert_eq!(out[2]["method"], "Submit");
    assert_eq!(out[2]["rows"], 3);
    assert_eq!(out[2]["message"], "in the inner span");
}

#[test]
fn fields_never_overwrite_reserved_keys() {
    let lines = Lines::default();
    tracing::dispatcher::with_default(&json_dispatch(&lines), || {
        let span = tracing::info_span!("backup", service = "span-says", level = "span-level");
        let _span = span.enter();
        tracing::warn!(
            target: "opsloop_backup_agent::agent",
            { target = "s3-main", timestamp = "yesterday", trace_id = "forged" },
            "backup failed"
        );
    });
    let out = lines.json();
    assert_eq!(out.len(), 1, "{out:?}");
    let line = &out[0];
    assert_eq!(line["target"], "opsloop_backup_agent::agent", "{line:?}");
    assert_eq!(line["field_target"], "s3-main", "{line:?}");
    assert_eq!(line["service"], "test-service", "{line:?}");
    assert_eq!(line["field_service"], "span-says", "{line:?}");
    assert_eq!(line["level"], "WARN", "{line:?}");
    assert_eq!(line["field_level"], "span-level", "{line:?}");
    assert_eq!(line["field_timestamp"], "yesterday", "{line:?}");
    assert_ne!(line["timestamp"], "yesterday", "{line:?}");
    assert_eq!(line["field_trace_id"], "forged", "{line:?}");
    assert_ne!(line["trace_id"], "forged", "{line:?}");
    assert_eq!(line["message"], "backup failed", "{line:?}");
}

#[test]
fn build_info_names_version_and_revision() {
    let _ = prometheus();
    let text = render_metrics();
    let line = text
        .lines()
        .find(|l| l.starts_with("opsloop_build_info{"))
        .expect("build info");
    assert!(line.contains(&format!("version=\"{VERSION}\"")), "{line}");
    assert!(line.contains(&format!("revision=\"{REVISION}\"")), "{line}");
    assert!(line.ends_with("} 1"), "{line}");
    assert!(!REVISION.is_empty());
    assert!(text.contains("# TYPE opsloop_build_info gauge"), "{text}");
    assert!(text.contains("# HELP opsloop_build_info "), "{text}");
}
