//! Telemetry: JSON log lines (timestamp, level, message, service, environment,
//! span fields), OTLP trace export when an endpoint is configured, the
//! Prometheus recorder, process metrics, and W3C trace-context helpers for
//! carrying a trace across the bus.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.log_level: invalid filter directive: {0}")]
    Filter(String),
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Otlp { endpoint: String, reason: String },
    #[error("tracing subscriber already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts the trace exporter down when dropped.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: logs to stdout in the configured format,
/// plus OTLP export when `settings.otlp_endpoint` is set; and the metrics
/// recorder, so that nothing counted before the first scrape is lost.
pub fn init(
    service: &'static str,
    environment: &str,
    settings: &TelemetrySettings,
) -> Result<TelemetryGuard, TelemetryError> {
    prometheus();
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(directive),
        _ => EnvFilter::try_new(&settings.log_level),
    }
    .map_err(|e| TelemetryError::Filter(e.to_string()))?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let mut provider = None;
    let tracer_provider = match &settings.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Otlp {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build();
            let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_tracer_provider(tracer_provider.clone());
            provider = Some(tracer_provider.clone());
            tracer_provider
        }
        // No exporter: spans still get trace and span ids, so log lines
        // carry them and bus messages carry `traceparent`.
        None => opentelemetry_sdk::trace::SdkTracerProvider::builder().build(),
    };
    let dispatch = log_dispatch(
        service,
        environment,
        settings.log_format,
        filter,
        tracer_provider.tracer(service),
        std::io::stdout,
    );
    dispatch
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// The subscriber [`init`] installs, writing to `writer`: the filter, the
/// log layer (JSON lines or pretty), and the OpenTelemetry layer on
/// `tracer`. Tests install it for a scope with
/// `tracing::dispatcher::with_default`.
pub fn log_dispatch<W>(
    service: &'static str,
    environment: &str,
    format: LogFormat,
    filter: EnvFilter,
    tracer: opentelemetry_sdk::trace::Tracer,
    writer: W,
) -> tracing::Dispatch
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch_cell = Arc::new(OnceLock::new());
    let fmt_layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines {
                service,
                environment: environment.to_owned(),
                dispatch: dispatch_cell.clone(),
            })
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(writer)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    let dispatch = tracing::Dispatch::new(subscriber);
    let _ = dispatch_cell.set(dispatch.downgrade());
    dispatch
}

/// Keys the formatter writes itself; a span or event field of the same
/// name is written as `field_<name>` instead of replacing it (the event's
/// own `message` excepted: it is the message).
pub const RESERVED_LOG_KEYS: &[&str] = &[
    "timestamp",
    "level",
    "message",
    "service",
    "environment",
    "target",
    "spans",
    "trace_id",
    "span_id",
];

/// Adds span or event fields to a line without touching reserved keys.
fn merge_fields(line: &mut Map<String, Value>, fields: Map<String, Value>, event: bool) {
    for (key, value) in fields {
        if RESERVED_LOG_KEYS.contains(&key.as_str()) && !(event && key == "message") {
            line.insert(format!("field_{key}"), value);
        } else {
            line.insert(key, value);
        }
    }
}

/// One JSON object per line: `timestamp`, `level`, `message`, `service`,
/// `environment`, `target`, inside a span its `trace_id` and `span_id`
/// (W3C hex, the ids OTLP exports and `traceparent` carries) and `spans`,
/// the fields of every span in scope (innermost wins) and the event's
/// fields; a field named like a reserved key is written as `field_<name>`
/// ([`RESERVED_LOG_KEYS`]).
struct JsonLines {
    service: &'static str,
    environment: String,
    /// The subscriber this formatter belongs to, for the span contexts of
    /// the OpenTelemetry layer.
    dispatch: Arc<OnceLock<tracing::dispatcher::WeakDispatch>>,
}

impl JsonLines {
    /// `(trace_id, span_id)` of the span `id`, when it has a valid context.
    fn trace_ids(&self, id: &tracing::span::Id) -> Option<(String, String)> {
        use opentelemetry::trace::TraceContextExt;
        let dispatch = self.dispatch.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        })
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().as_str().to_owned()),
        );
        line.insert("service".into(), Value::String(self.service.to_owned()));
        line.insert(
            "environment".into(),
            Value::String(self.environment.clone()),
        );
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        let mut ids = None;
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            let mut innermost = None;
            for span in scope.from_root() {
                names.push(Value::String(span.name().to_owned()));
                innermost = Some(span.id());
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    merge_fields(&mut line, map, false);
                }
            }
            line.insert("spans".into(), Value::Array(names));
            // No span extensions are held here (get_otel_context locks them).
            ids = innermost.and_then(|id| self.trace_ids(&id));
        }
        let mut visitor = JsonVisitor(Map::new());
        event.record(&mut visitor);
        merge_fields(&mut line, visitor.0, true);
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".into(), Value::String(trace_id));
            line.insert("span_id".into(), Value::String(span_id));
        }
        line.entry("message")
            .or_insert(Value::String(String::new()));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of every histogram without its own set: requests and statements,
/// 1 ms … 10 s.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histograms whose values do not fit [`DEFAULT_BUCKETS`]: a backup runs for
/// minutes to hours, a delivery retries for up to the alerter's retry budget
/// (`max_total_ms`, 10 minutes by default), a heartbeat tick and its phases
/// run for up to their budgets (seconds to a minute). docs/monitoring.md
/// lists them; a test checks the rendered `le` values.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (
        "opsloop_backup_duration_seconds",
        &[
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
            14400.0, 28800.0,
        ],
    ),
    (
        "opsloop_alerter_delivery_seconds",
        &[
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ],
    ),
    (
        "opsloop_incident_time_to_acknowledge_seconds",
        &[
            30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
            86400.0, 172800.0,
        ],
    ),
    (
        "opsloop_incident_time_to_resolve_seconds",
        &[
            300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 604800.0,
        ],
    ),
    (
        "opsloop_heartbeat_tick_seconds",
        &[
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
        ],
    ),
    (
        "opsloop_heartbeat_phase_seconds",
        &[
            0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
        ],
    ),
    // A probe check: milliseconds when healthy, up to its timeout (10 s by
    // default, at most its interval) when not.
    (
        "opsloop_probe_duration_seconds",
        &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    ),
];

fn recorder_builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let mut builder = PrometheusBuilder::new().set_buckets(DEFAULT_BUCKETS)?;
    for (name, buckets) in HISTOGRAM_BUCKETS {
        builder = builder.set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full((*name).to_owned()),
            buckets,
        )?;
    }
    Ok(builder)
}

/// The process's Prometheus handle; the recorder is installed on first use
/// (one per process: `opsloop dev` runs every role on one recorder).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = recorder_builder()
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // A recorder may already be installed (tests running several apps);
        // then this handle renders only what reached it, which is harmless.
        let _ = metrics::set_global_recorder(recorder);
        describe_metrics();
        // `opsloop_build_info{version, revision} 1`, the join key for
        // "which build runs where" (`… * on (instance) group_left …`).
        metrics::gauge!(BUILD_INFO, "version" => VERSION, "revision" => REVISION).set(1.0);
        handle
    })
}

/// Renders every metric plus the process metrics, in Prometheus text format.
/// The database pool gauges are sampled first (scrape time is when they
/// matter).
pub fn render_metrics() -> String {
    crate::store::observe::sample_pools();
    let mut text = prometheus().render();
    text.push_str(&process_metrics());
    text
}

/// The version of the workspace these binaries were built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision the binaries were built from: `OPSLOOP_GIT_REVISION`
/// at build time, else `git rev-parse` of the source tree when it is a
/// checkout, else `unknown` (crates/core/build.rs).
pub const REVISION: &str = env!("OPSLOOP_GIT_REVISION");

/// The build-info metric every daemon serves.
pub const BUILD_INFO: &str = "opsloop_build_info";

/// Something that sets gauges from a live source right before a scrape is
/// rendered (the api's loop-state gauges: [`crate::loop_metrics`]).
/// Registered with [`register_scrape_sampler`]; each call is bounded by
/// [`SCRAPE_SAMPLE_BUDGET`], so a slow source delays a scrape by at most that
/// and leaves the previous values in place.
#[async_trait::async_trait]
pub trait ScrapeSampler: Send + Sync {
    async fn sample(&self);
}

/// The most one sampler may add to a scrape.
pub const SCRAPE_SAMPLE_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

type Samplers = std::sync::Mutex<Vec<std::sync::Weak<dyn ScrapeSampler>>>;
static SAMPLERS: Samplers = std::sync::Mutex::new(Vec::new());

/// Samples `sampler` at every scrape for as long as the caller keeps the
/// `Arc` (weakly held: a dropped daemon stops being sampled).
pub fn register_scrape_sampler(sampler: &std::sync::Arc<dyn ScrapeSampler>) {
    if let Ok(mut samplers) = SAMPLERS.lock() {
        samplers.retain(|s| s.strong_count() > 0);
        samplers.push(std::sync::Arc::downgrade(sampler));
    }
}

/// Runs every live sampler (concurrently, each within
/// [`SCRAPE_SAMPLE_BUDGET`]).
pub async fn sample_for_scrape() {
    let live: Vec<std::sync::Arc<dyn ScrapeSampler>> = match SAMPLERS.lock() {
        Ok(mut samplers) => {
            samplers.retain(|s| s.strong_count() > 0);
            samplers
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect()
        }
        Err(_) => return,
    };
    futures::future::join_all(live.iter().map(|sampler| async move {
        let _ = tokio::time::timeout(SCRAPE_SAMPLE_BUDGET, sampler.sample()).await;
    }))
    .await;
}

/// [`sample_for_scrape`] then [`render_metrics`]: what `/metrics` serves.
pub async fn scrape() -> String {
    sample_for_scrape().await;
    render_metrics()
}

/// `# HELP` text of every metric an opsloop daemon exports (the recorder
/// prints it only for metrics that have a value, so one list serves every
/// daemon). Kept in step with docs/monitoring.md; the e2e test
/// `promtool_metrics` runs `promtool check metrics` on each daemon's live
/// `/metrics`, which fails on a metric without HELP.
pub const METRIC_HELP: &[(&str, MetricKind, &str)] = {
    use MetricKind::{Counter as C, Gauge as G, Histogram as H};
    &[
        // api and the workflow (core)
        (
            "opsloop_grpc_requests_total",
            C,
            "gRPC calls handled, by service, method and status code.",
        ),
        (
            "opsloop_auth_failures_total",
            C,
            "Calls refused by the access check, by daemon and reason.",
        ),
        // alerter: incidents
        (
            "opsloop_incidents_opened_total",
            C,
            "Incidents opened, by level (P0..P3).",
        ),
        (
            "opsloop_incident_pages_total",
            C,
            "Escalation pages sent, by level and target (primary, secondary, everyone, a person).",
        ),
        (
            "opsloop_incident_time_to_acknowledge_seconds",
            H,
            "Time from an incident opening to its acknowledgement, by level.",
        ),
        (
            "opsloop_incident_response_breaches_total",
            C,
            "Incidents acknowledged after their level's response time, by level.",
        ),
        (
            "opsloop_incident_time_to_resolve_seconds",
            H,
            "Time from an incident opening to its resolution, by level.",
        ),
        (
            "opsloop_incident_links_refused_total",
            C,
            "Acknowledge/resolve links refused (forged, expired or reused), by reason.",
        ),
        (
            "opsloop_incident_mtta_seconds",
            G,
            "Mean time to acknowledge of the incidents opened in the last 7 days, by level (0 without any).",
        ),
        (
            "opsloop_incident_mttr_seconds",
            G,
            "Mean time to resolve of the incidents opened in the last 7 days, by level (0 without any).",
        ),
        (
            "opsloop_incident_response_breaches_week",
            G,
            "Incidents opened in the last 7 days whose first response came after their level's target (or has not come and is overdue), by level.",
        ),
        (
            "opsloop_incident_pages_week",
            G,
            "Escalation steps that paged a person in the last 7 days, by person (every rotation member has a series).",
        ),
        (
            "opsloop_step_claim_statements_total",
            C,
            "Claim statements an api process ran (each ClaimStep attempt; a long poll runs one, then one per wake-up).",
        ),
        (
            "opsloop_resource_cost_usd",
            G,
            "US dollars of upstream calls workers reported (priced by the pricing policy when they report no cost), by step kind and resource; only grows.",
        ),
        (
            "opsloop_resource_calls_total",
            C,
            "Upstream calls workers reported, by resource.",
        ),
        (
            "opsloop_step_claims_rate_limited_total",
            C,
            "Claims that handed out nothing because a resource the step calls had no token, by resource.",
        ),
        (
            "opsloop_resource_rate",
            G,
            "Current calls per second of each upstream resource's token bucket, as the heartbeat's AIMD controller set it.",
        ),
        (
            "opsloop_policy_cache_reloads_total",
            C,
            "Times an api process re-read the policy table (first use, or a write found its snapshot stale).",
        ),
        (
            "opsloop_alerter_posts_refused_total",
            C,
            "Alert posts refused for back-pressure (429/503 with Retry-After), by reason.",
        ),
        (
            "opsloop_grpc_request_duration_seconds",
            H,
            "Time from a gRPC call to its response headers, by service and method.",
        ),
        (
            "opsloop_tls_handshake_failures_total",
            C,
            "TLS handshakes refused or timed out on a listener (plaintext client, unknown CA, no client certificate), by listener.",
        ),
        (
            "opsloop_proposals_total",
            C,
            "Proposals created, by outcome (approved, pending, rejected, deduplicated) and gate.",
        ),
        ("opsloop_missions_total", C, "Missions finished, by status."),
        (
            "opsloop_steps_total",
            C,
            "Step transitions, by step kind and status (queued, running, succeeded, retrying, failed).",
        ),
        ("opsloop_events_total", C, "Events written, by kind."),
        (
            "opsloop_outbox_published_total",
            C,
            "Outbox rows published to the bus and confirmed by the broker.",
        ),
        (
            "opsloop_outbox_publish_failures_total",
            C,
            "Outbox publish attempts that failed (retried).",
        ),
        (
            "opsloop_outbox_lag_seconds",
            G,
            "Age of the oldest unpublished outbox row, in seconds.",
        ),
        (
            crate::telemetry::BUILD_INFO,
            G,
            "Version and git revision of the running binary (always 1).",
        ),
        // loop state (api, sampled at scrape: crate::loop_metrics)
        (
            crate::loop_metrics::PROPOSALS_PENDING,
            G,
            "Proposals waiting for a decision (counted up to 100000).",
        ),
        (
            crate::loop_metrics::STEPS_QUEUED,
            G,
            "Mission steps queued for a worker (counted up to 100000).",
        ),
        (
            crate::loop_metrics::STEPS_RUNNING,
            G,
            "Mission steps claimed by a worker and running (counted up to 100000).",
        ),
        (
            crate::loop_metrics::LEASES_EXPIRED,
            G,
            "Running steps whose worker lease has expired (counted up to 100000).",
        ),
        (
            crate::loop_metrics::OLDEST_QUEUED_AGE,
            G,
            "Age in seconds of the oldest queued step whose backoff has passed (0 when none): the processing delay.",
        ),
        (
            crate::loop_metrics::CONSECUTIVE_FAILURES,
            G,
            "Steps failed terminally since the last step that succeeded.",
        ),
        (
            crate::loop_metrics::EMERGENCY_STOP,
            G,
            "1 while the emergency stop is engaged, else 0.",
        ),
        (
            crate::loop_metrics::COST,
            G,
            "Cost in US dollars of events since the start of the day or month (cost_budget time zone), by period and event kind prefix.",
        ),
        (
            crate::loop_metrics::COST_BUDGET,
            G,
            "The cost_budget policy in US dollars, by period (day, month); 0 when unset.",
        ),
        (
            crate::loop_metrics::QUOTA_USED,
            G,
            "Steps of a capped kind counted against today's daily cap, by kind.",
        ),
        (
            crate::loop_metrics::QUOTA_LIMIT,
            G,
            "The daily cap of a step kind (step_gates policy), by kind.",
        ),
        (
            crate::loop_metrics::SAMPLE_FAILURES,
            C,
            "Scrapes whose loop-state sample failed or timed out (the previous values were served).",
        ),
        (
            crate::bus::CONNECTION_STATE,
            G,
            "1 for the bus connection's current state (connecting, connected, reconnecting, closed), 0 for the others.",
        ),
        // database (every daemon with a database)
        (
            crate::store::observe::QUERY_DURATION,
            H,
            "Time of each database statement, by operation (select, insert, update, delete, other).",
        ),
        (
            crate::store::observe::POOL_IN_USE,
            G,
            "Database pool connections checked out, sampled at scrape time.",
        ),
        (
            crate::store::observe::POOL_MAX,
            G,
            "Most connections the database pool opens (database.max_connections).",
        ),
        // heartbeat-worker
        (
            "opsloop_heartbeat_ticks_total",
            C,
            "Heartbeat ticks run by the leader, by status.",
        ),
        (
            "opsloop_heartbeat_ticks_skipped_total",
            C,
            "Heartbeat ticks skipped, by reason (e.g. not the leader).",
        ),
        (
            "opsloop_heartbeat_tick_seconds",
            H,
            "Duration of one heartbeat tick.",
        ),
        (
            "opsloop_heartbeat_phase_seconds",
            H,
            "Duration of one heartbeat phase, by phase.",
        ),
        (
            "opsloop_heartbeat_phase_failures_total",
            C,
            "Heartbeat phases that failed or ran over budget, by phase.",
        ),
        (
            "opsloop_heartbeat_trigger_firings_total",
            C,
            "Trigger rule evaluations that fired, by outcome.",
        ),
        (
            "opsloop_heartbeat_reactions_total",
            C,
            "Reactions processed from the reaction queue, by status.",
        ),
        ("opsloop_heartbeat_insights_total", C, "Insights promoted."),
        (
            "opsloop_heartbeat_alerts_total",
            C,
            "Alerts raised by the heartbeat, by alert name.",
        ),
        (
            "opsloop_heartbeat_events_quarantined_total",
            C,
            "Bus events the heartbeat could not process and dead-lettered, by consumer.",
        ),
        (
            "opsloop_probe_up",
            G,
            "1 while an uptime probe is up (or not yet down after its retries), 0 while down, by probe.",
        ),
        (
            "opsloop_probe_duration_seconds",
            H,
            "Duration of one uptime probe check (a timed-out check counts its timeout), by probe.",
        ),
        (
            "opsloop_tls_certificate_expiry_seconds",
            G,
            "Seconds until the certificate a TLS probe last saw expires (negative once expired), by probe.",
        ),
        (
            "opsloop_probe_paused_kinds",
            G,
            "Step kinds a down probe holds paused for claiming (depends_kinds), by probe; 0 once it is up.",
        ),
        // api (repairs)
        (
            "opsloop_dead_letters_retried_total",
            C,
            "Dead letters retried as a new proposal (opsloop deadletter retry), by step kind.",
        ),
        // api (status page)
        (
            "opsloop_probe_uptime_ratio",
            G,
            "Share of checks that passed over the window (1d, 7d, 30d, 90d), by probe or status page component (opsloop:<id>).",
        ),
        // alerter
        (
            "opsloop_alerter_alerts_received_total",
            C,
            "Alerts taken in, by source (bus, http, grpc).",
        ),
        ("opsloop_alerter_alerts_active", G, "Alerts firing now."),
        (
            "opsloop_alerter_alerts_silenced",
            G,
            "Alerts muted by a silence.",
        ),
        (
            "opsloop_alerter_alerts_inhibited",
            G,
            "Alerts muted by an inhibition rule.",
        ),
        (
            "opsloop_alerter_notifications_total",
            C,
            "Notifications delivered or given up, by receiver and outcome.",
        ),
        (
            "opsloop_alerter_delivery_seconds",
            H,
            "Time to deliver one notification, retries included, by receiver.",
        ),
        (
            "opsloop_alerter_dead_letters_total",
            C,
            "Notifications written to the dead-letter log, by receiver.",
        ),
        (
            "opsloop_alerter_delivery_queue_depth",
            G,
            "Notifications waiting for a delivery slot of their receiver, by receiver.",
        ),
        (
            "opsloop_alerter_deliveries_in_flight",
            G,
            "Deliveries holding a slot (on the wire or not yet logged), by receiver.",
        ),
        (
            "opsloop_alerter_leader",
            G,
            "1 on the alerter holding the delivery lease, 0 on a standby.",
        ),
        (
            "opsloop_alerter_messages_rejected_total",
            C,
            "Malformed alert bus messages dead-lettered.",
        ),
        // backup-agent
        (
            "opsloop_backups_total",
            C,
            "Backup runs, by target and outcome.",
        ),
        (
            "opsloop_backup_duration_seconds",
            H,
            "Duration of a backup run, by target.",
        ),
        (
            "opsloop_backup_size_bytes",
            G,
            "Size of the newest backup, by target.",
        ),
        (
            "opsloop_backup_last_success_timestamp_seconds",
            G,
            "Unix time the newest good backup finished, by target.",
        ),
        (
            "opsloop_backup_age_seconds",
            G,
            "Age of the newest good backup, by target.",
        ),
        (
            "opsloop_backup_verifications_total",
            C,
            "Restore verifications, by target and outcome (passed, failed).",
        ),
        (
            "opsloop_backup_verify_duration_seconds",
            G,
            "Duration of the last restore verification, by target.",
        ),
        (
            "opsloop_backup_verify_stage_duration_seconds",
            G,
            "Duration of each stage of the last restore verification, by target and stage.",
        ),
        (
            "opsloop_backup_objects_kept",
            G,
            "Backups kept by the retention policy, by target.",
        ),
    ]
};

/// The Prometheus type of a metric in [`METRIC_HELP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Registers the HELP text of [`METRIC_HELP`] with the global recorder.
fn describe_metrics() {
    for (name, kind, help) in METRIC_HELP {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(*name, *help),
            MetricKind::Gauge => metrics::describe_gauge!(*name, *help),
            MetricKind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

fn process_metrics() -> String {
    let Some(stats) = ProcessStats::read() else {
        return String::new();
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        stats.rss_bytes as f64,
    );
    gauge(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        stats.cpu_seconds,
    );
    gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        "gauge",
        stats.open_fds as f64,
    );
    gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        stats.start_time_seconds,
    );
    out
}

/// Resource figures of this process, read from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// `None` where `/proc` is not available.
    pub fn read() -> Option<Self> {
        Self::read_pid("self")
    }

    pub fn read_pid(pid: &str) -> Option<Self> {
        const TICKS_PER_SECOND: f64 = 100.0;
        const PAGE_SIZE: u64 = 4096;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is parenthesised and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let start_ticks: f64 = fields.get(19)?.parse().ok()?;
        let rss_pages: u64 = fields.get(21)?.parse().ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })?;
        let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Some(Self {
            rss_bytes: rss_pages * PAGE_SIZE,
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            open_fds,
            start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
        })
    }
}

struct HeaderInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct HeaderExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the current span's W3C `traceparent` (when it has one) into headers.
pub fn inject_trace_context(headers: &mut BTreeMap<String, String>) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the trace carried in `headers`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(context);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc() {
        let stats = ProcessStats::read().expect("linux /proc");
        assert!(stats.rss_bytes > 0);
        assert!(stats.open_fds > 0);
        assert!(stats.start_time_seconds > 1.0e9);
        let text = render_metrics();
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
