//! `docs/reference/` is generated from the types that parse what operators
//! write (policy values, trigger conditions and actions, reaction patterns,
//! resources, probes), through their JSON Schemas: the Markdown pages and
//! the schemas shipped for editors. This test fails when a file differs from
//! what the types give; `OPSLOOP_BLESS_REFERENCE=1` rewrites them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use opsloop_core::domain::PolicyKey;
use opsloop_core::domain::governance::{Price, Pricing, ResourceLimits, Resources};
use opsloop_core::domain::policy::{
    AutoApprove, CostBudget, EmergencyStop, InsightPromotion, OpsHealth, ReactionMatrix, StepGates,
    Toggle, WorkerPolicy,
};
use opsloop_core::domain::rule_spec::{ConditionSpec, ProposalTemplate, ReactionPatternSpec};
use opsloop_heartbeat_worker::probe_config::{MaintenanceSpec, ProbeSpec};
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::Value;

const BLESS: &str = "OPSLOOP_BLESS_REFERENCE";

fn schema<T: JsonSchema>() -> Value {
    SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Every named policy key, in the order of the reference; a toggle stands
/// for every `*_autopost` key.
fn policy_keys() -> Vec<PolicyKey> {
    [
        "auto_approve",
        "step_gates",
        "x_autopost",
        "worker_policy",
        "reaction_matrix",
        "ops_health",
        "cost_budget",
        "insight_promotion",
        "emergency_stop",
        "resources",
        "pricing",
    ]
    .iter()
    .map(|k| PolicyKey::parse(k).expect("known key"))
    .collect()
}

/// The schema of a key's value: an exhaustive match, so a new key does not
/// compile until it is documented here.
fn policy_schema(key: &PolicyKey) -> Value {
    match key {
        PolicyKey::AutoApprove => schema::<AutoApprove>(),
        PolicyKey::StepGates => schema::<StepGates>(),
        PolicyKey::WorkerPolicy => schema::<WorkerPolicy>(),
        PolicyKey::ReactionMatrix => schema::<ReactionMatrix>(),
        PolicyKey::OpsHealth => schema::<OpsHealth>(),
        PolicyKey::CostBudget => schema::<CostBudget>(),
        PolicyKey::InsightPromotion => schema::<InsightPromotion>(),
        PolicyKey::EmergencyStop => schema::<EmergencyStop>(),
        PolicyKey::Resources => schema::<Resources>(),
        PolicyKey::Pricing => schema::<Pricing>(),
        PolicyKey::Toggle(_) => schema::<Toggle>(),
    }
}

fn key_title(key: &PolicyKey) -> String {
    match key {
        PolicyKey::Toggle(_) => "*_autopost (toggles)".into(),
        other => other.as_str().to_owned(),
    }
}

fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => Some(c),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

/// A description on one table line: rustdoc links (`` [`X`] ``) become
/// plain code, pipes are escaped.
fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .replace("[`", "`")
        .replace("`]", "`")
        .replace('|', "\\|")
}

/// A compact type description, linking `$defs` to their sections.
fn type_of(schema: &Value, root_title: &str) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        if reference == "#" {
            // The root itself (nested conditions): its section is the page's first.
            return root_title.to_owned();
        }
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("[{name}](#{})", anchor(name));
    }
    if let Some(value) = schema.get("const") {
        return format!("`{value}`");
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let listed: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
        return format!("one of {}", listed.join(", "));
    }
    for combinator in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
            let listed: Vec<String> = options.iter().map(|o| type_of(o, root_title)).collect();
            return listed.join(" or ");
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return "any JSON value".into(),
    };
    let named: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "integer" => match schema.get("minimum").and_then(Value::as_i64) {
                Some(0) => "integer ≥ 0".to_owned(),
                _ => "integer".to_owned(),
            },
            "array" => match schema.get("items") {
                Some(items) => format!("array of {}", type_of(items, root_title)),
                None => "array".to_owned(),
            },
            "object" => match schema
                .get("patternProperties")
                .and_then(Value::as_object)
                .and_then(|p| p.iter().next())
            {
                Some((pattern, values)) => format!(
                    "map of name matching `{pattern}` → {}",
                    type_of(values, root_title)
                ),
                None => object_type(schema, root_title),
            },

            "string" => match schema.get("pattern").and_then(Value::as_str) {
                Some(pattern) => format!("string matching `{pattern}`"),
                None => "string".to_owned(),
            },
            other => other.to_owned(),
        })
        .collect();
    named.join(" or ")
}

fn object_type(schema: &Value, root_title: &str) -> String {
    match schema.get("additionalProperties") {
        Some(Value::Bool(true)) | None => "object".to_owned(),
        Some(Value::Bool(false)) => "object (no other keys)".to_owned(),
        Some(values) => format!("map of name → {}", type_of(values, root_title)),
    }
}

/// The field table of an object schema: required fields first.
fn field_table(out: &mut String, object: &Value, root_title: &str) {
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: BTreeSet<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut names: Vec<&String> = properties.keys().collect();
    names.sort_by_key(|name| {
        (
            name.as_str() != "type",
            !required.contains(name.as_str()),
            name.as_str(),
        )
    });
    out.push_str("| field | type | required | default | meaning |\n|---|---|---|---|---|\n");
    for name in names {
        let field = &properties[name];
        let default = field
            .get("default")
            .map(|d| format!("`{d}`"))
            .unwrap_or_default();
        let description = field
            .get("description")
            .and_then(Value::as_str)
            .map(one_line)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {} | {description} |",
            type_of(field, root_title).replace('|', "\\|"),
            if required.contains(name.as_str()) {
                "yes"
            } else {
                "no"
            },
            default.replace('|', "\\|"),
        );
    }
    out.push('\n');
}

fn description(out: &mut String, schema: &Value) {
    if let Some(text) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&one_line(text));
        out.push_str("\n\n");
    }
}

/// The body of one schema: its description, then a table, a list of
/// values, a map's value type, or one subsection per tagged variant.
fn body(out: &mut String, schema: &Value, title: &str, level: &str) {
    description(out, schema);
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        for variant in variants {
            let tag = variant
                .pointer("/properties/type/const")
                .and_then(Value::as_str);
            match (tag, variant.get("const")) {
                (Some(tag), _) => {
                    let _ = writeln!(out, "{level} type = \"{tag}\"\n");
                    description(out, variant);
                    field_table(out, variant, title);
                }
                (None, Some(value)) => {
                    let text = variant
                        .get("description")
                        .and_then(Value::as_str)
                        .map(one_line)
                        .unwrap_or_default();
                    let _ = writeln!(out, "- `{value}`: {text}");
                }
                (None, None) => {}
            }
        }
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
        return;
    }
    if schema.get("properties").is_some() {
        field_table(out, schema, title);
    } else if let Some(values) = schema.get("additionalProperties")
        && values.is_object()
    {
        let _ = writeln!(
            out,
            "An object: name → {}.\n",
            type_of(values, title).replace('|', "\\|")
        );
    }
}

/// One generated page: sections, then every type they refer to, once.
struct Page {
    title: &'static str,
    intro: &'static str,
    text: String,
    defs: BTreeMap<String, Value>,
}

impl Page {
    fn new(title: &'static str, intro: &'static str) -> Self {
        Self {
            title,
            intro,
            text: String::new(),
            defs: BTreeMap::new(),
        }
    }

    fn section(&mut self, heading: &str, lead: Option<&str>, schema: &Value) {
        let root_name = schema
            .get("title")
            .and_then(Value::as_str)
            .map(|t| t.trim_end_matches("Spec").to_lowercase())
            .unwrap_or_else(|| "value".to_owned());
        let root_link = format!("[{root_name}](#{})", anchor(heading));
        let _ = writeln!(self.text, "## {heading}\n");
        let mut schema = schema.clone();
        if let Some(lead) = lead {
            let _ = writeln!(self.text, "{}.\n", capitalised(lead));
            // A type doc that only names its key adds nothing to the lead.
            let names_key_only = schema
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.starts_with('`') && d.ends_with("`."));
            if names_key_only && let Some(object) = schema.as_object_mut() {
                object.remove("description");
            }
        }
        body(&mut self.text, &schema, &root_link, "###");
        if let Some(defs) = schema.get("$defs").and_then(Value::as_object) {
            for (name, def) in defs {
                self.defs.insert(name.clone(), def.clone());
            }
        }
    }

    fn render(self) -> String {
        let mut out = format!(
            "<!-- Generated by tests/reference.rs from the types; do not edit. \
             Regenerate: OPSLOOP_BLESS_REFERENCE=1 cargo nextest run -p opsloop-e2e --test reference -->\n\n\
             # {}\n\n{}\n\n{}",
            self.title, self.intro, self.text
        );
        if !self.defs.is_empty() {
            out.push_str("## Types used above\n\n");
            for (name, def) in &self.defs {
                let _ = writeln!(out, "### {name}\n");
                body(&mut out, def, name, "####");
            }
        }
        while out.ends_with("\n\n") {
            out.pop();
        }
        out
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn pretty(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("schema serialises");
    text.push('\n');
    text
}

/// Every file of `docs/reference/`, by path relative to it.
fn generate() -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();

    let mut policy = Page::new(
        "Policy values",
        "Each key of `opsloop policy get|set` (and the console's policy page) holds one JSON value of the \
         shape below. `SetPolicy` parses the new value into these types before anything is written: an \
         unknown field, a wrong type or an out-of-range number is refused with the path of the field \
         (`value_json.FIELD`). Every change is versioned and audited (`opsloop policy history KEY`).",
    );
    for key in policy_keys() {
        let schema = policy_schema(&key);
        let lead = key.description();
        policy.section(&format!("`{}`", key_title(&key)), Some(lead), &schema);
        let name = match &key {
            PolicyKey::Toggle(_) => "toggle".to_owned(),
            other => other.as_str().to_owned(),
        };
        files.insert(
            PathBuf::from(format!("schemas/policy.{name}.schema.json")),
            pretty(&schema),
        );
    }
    files.insert(PathBuf::from("policy.md"), policy.render());

    let mut triggers = Page::new(
        "Trigger rules",
        "A trigger rule (`opsloop trigger add|update`, `CreateTrigger`) has a condition, `condition_json`, \
         and an action, `action_json`: the proposal it submits through the single entry point when the \
         condition holds, at most once per fact window and cooldown. Both are parsed into the types below \
         when the rule is stored and again by the heartbeat; an error names the path \
         (`condition_json.conditions[1].window_seconds`).",
    );
    let condition = schema::<ConditionSpec>();
    triggers.section("Conditions (`condition_json`)", None, &condition);
    let template = schema::<ProposalTemplate>();
    triggers.section("Actions (`action_json`)", None, &template);
    files.insert(PathBuf::from("triggers.md"), triggers.render());
    files.insert(
        PathBuf::from("schemas/trigger-condition.schema.json"),
        pretty(&condition),
    );
    files.insert(
        PathBuf::from("schemas/proposal-template.schema.json"),
        pretty(&template),
    );

    let mut reactions = Page::new(
        "Reaction patterns",
        "The `reaction_matrix` policy's `patterns`: each event the heartbeat reads is matched against every \
         pattern; a match may cause a proposal for the pattern's target (probability decided from the event \
         and pattern ids, cooldown per pattern and target). `SetPolicy` refuses a matrix with a bad pattern, \
         naming `value_json.patterns[i].FIELD`.",
    );
    let pattern = schema::<ReactionPatternSpec>();
    reactions.section("Pattern", None, &pattern);
    files.insert(PathBuf::from("reactions.md"), reactions.render());
    files.insert(
        PathBuf::from("schemas/reaction-pattern.schema.json"),
        pretty(&pattern),
    );

    let mut resources = Page::new(
        "Upstream resources and pricing",
        "The `resources` and `pricing` policies: per upstream resource, its rate limits, the AIMD \
         controller, the guards and what a trip does; and the price of a call. Resource names follow the \
         step-kind rule.",
    );
    resources.section(
        "Resource (`resources.NAME`)",
        None,
        &schema::<ResourceLimits>(),
    );
    resources.section("Price (`pricing.NAME`)", None, &schema::<Price>());
    files.insert(PathBuf::from("resources.md"), resources.render());

    let mut probes = Page::new(
        "Uptime probes and maintenance windows",
        "`[[heartbeat.probes]]` and `[[heartbeat.maintenance]]` entries of the configuration file (also \
         `opsloop probe add`, which takes the same fields). Every probe field has a default but `name` \
         and `kind`; an unknown field or a bad value stops the heartbeat at start with \
         `heartbeat.probes[NAME].FIELD` (`opsloop config check --daemon heartbeat-worker` says it first).",
    );
    let probe = schema::<ProbeSpec>();
    probes.section("Probe (`[[heartbeat.probes]]`)", None, &probe);
    let maintenance = schema::<MaintenanceSpec>();
    probes.section(
        "Maintenance window (`[[heartbeat.maintenance]]`)",
        None,
        &maintenance,
    );
    files.insert(PathBuf::from("probes.md"), probes.render());
    files.insert(PathBuf::from("schemas/probe.schema.json"), pretty(&probe));
    files.insert(
        PathBuf::from("schemas/maintenance.schema.json"),
        pretty(&maintenance),
    );

    let mut index = String::from(
        "<!-- Generated by tests/reference.rs; do not edit. \
         Regenerate: OPSLOOP_BLESS_REFERENCE=1 cargo nextest run -p opsloop-e2e --test reference -->\n\n\
         # Reference\n\n\
         What operators write, generated from the Rust types that parse it (so it cannot drift from what \
         is accepted):\n\n\
         - [Policy values](policy.md): every key of `opsloop policy set`.\n\
         - [Trigger rules](triggers.md): conditions and actions.\n\
         - [Reaction patterns](reactions.md): the `reaction_matrix` policy.\n\
         - [Upstream resources and pricing](resources.md).\n\
         - [Uptime probes and maintenance windows](probes.md).\n\n\
         ## JSON Schemas for editors\n\n\
         `schemas/` holds one JSON Schema (draft 2020-12) per shape:\n\n",
    );
    for path in files.keys().filter(|p| p.starts_with("schemas")) {
        let _ = writeln!(index, "- [`{0}`]({0})", path.display());
    }
    index.push_str(
        "\nPoint an editor at them, e.g. VS Code's `json.schemas` setting with `fileMatch` on your policy \
         files, or validate a value before `opsloop policy set` with any JSON Schema validator. The complete \
         annotated configuration file is `deploy/opsloop.example.toml`.\n",
    );
    files.insert(PathBuf::from("README.md"), index);
    files
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference")
}

#[test]
fn reference_docs_are_generated_from_the_types() {
    let files = generate();
    let dir = reference_dir();
    let on_disk: BTreeSet<PathBuf> = ["", "schemas"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.path().strip_prefix(&dir).ok().map(Path::to_path_buf))
        .collect();
    if std::env::var_os(BLESS).is_some() {
        for stale in on_disk.iter().filter(|p| !files.contains_key(*p)) {
            std::fs::remove_file(dir.join(stale)).expect("remove stale file");
        }
        for (path, text) in &files {
            let target = dir.join(path);
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::write(&target, text).expect("write reference file");
        }
        return;
    }
    let mut problems = Vec::new();
    for (path, text) in &files {
        match std::fs::read_to_string(dir.join(path)) {
            Ok(current) if &current == text => {}
            Ok(_) => problems.push(format!("{} differs", path.display())),
            Err(_) => problems.push(format!("{} is missing", path.display())),
        }
    }
    for stale in on_disk.iter().filter(|p| !files.contains_key(*p)) {
        problems.push(format!("{} is not generated", stale.display()));
    }
    assert!(
        problems.is_empty(),
        "docs/reference is out of date with the types ({}); run this test with {BLESS}=1 to rewrite it",
        problems.join(", ")
    );
}

#[test]
fn every_seeded_policy_key_is_documented() {
    let documented: BTreeSet<String> = policy_keys()
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    for (key, _) in opsloop_core::store::seed_policies() {
        let parsed = PolicyKey::parse(key).expect("seeded key parses");
        let name = match parsed {
            PolicyKey::Toggle(_) => "x_autopost".to_owned(),
            other => other.as_str().to_owned(),
        };
        assert!(documented.contains(&name), "{key} has no reference section");
    }
}

/// The shipped schemas accept what the parsers accept: every seeded policy
/// value and starter trigger rule is valid against its schema's required
/// fields and property names (a light structural check; the parsers are the
/// authority and their own tests cover ranges).
#[test]
fn seeded_values_fit_their_schemas() {
    fn check(schema: &Value, value: &Value, path: &str, root: &Value) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some("#") => root,
            Some(reference) => root
                .pointer(&reference.replace("#/", "/"))
                .unwrap_or_else(|| panic!("{path}: dangling {reference}")),
            None => schema,
        };
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
            let tag = value.get("type");
            if let Some(variant) = variants
                .iter()
                .find(|v| v.pointer("/properties/type/const") == tag)
            {
                check(variant, value, path, root);
            }
            return;
        }
        let (Some(properties), Some(object)) = (
            schema.get("properties").and_then(Value::as_object),
            value.as_object(),
        ) else {
            return;
        };
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            assert!(object.contains_key(required), "{path}: missing {required}");
        }
        for (name, inner) in object {
            let field = properties
                .get(name)
                .unwrap_or_else(|| panic!("{path}: {name} is not in the schema"));
            check(field, inner, &format!("{path}.{name}"), root);
        }
    }
    for (key, value) in opsloop_core::store::seed_policies() {
        let parsed = PolicyKey::parse(key).expect("known key");
        let schema = policy_schema(&parsed);
        check(&schema, &value, key, &schema);
    }
    let condition = schema::<ConditionSpec>();
    let template = schema::<ProposalTemplate>();
    for (name, rule_condition, action, _) in opsloop_core::store::starter_trigger_rules() {
        check(&condition, &rule_condition, name, &condition);
        check(&template, &action, name, &template);
    }
}
