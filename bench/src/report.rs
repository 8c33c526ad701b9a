//! The result table (target, baseline, opsloop, ratio) and the JSON report.

use serde::Serialize;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub scenario: String,
    pub metric: String,
    pub target: String,
    pub baseline: Option<f64>,
    pub opsloop: Option<f64>,
    pub unit: String,
    /// opsloop / baseline.
    pub ratio: Option<f64>,
    /// Whether the target is met; `None` when it has no target or no figure.
    pub met: Option<bool>,
    pub note: String,
}

impl Row {
    pub(crate) fn new(scenario: &str, metric: &str, unit: &str) -> Self {
        Self {
            scenario: scenario.into(),
            metric: metric.into(),
            target: "-".into(),
            baseline: None,
            opsloop: None,
            unit: unit.into(),
            ratio: None,
            met: None,
            note: String::new(),
        }
    }

    pub(crate) fn target(mut self, target: &str) -> Self {
        self.target = target.into();
        self
    }

    pub(crate) fn opsloop(mut self, value: f64) -> Self {
        self.opsloop = Some(value);
        self
    }

    pub(crate) fn baseline(mut self, value: Option<f64>) -> Self {
        self.baseline = value;
        if let (Some(b), Some(o)) = (value, self.opsloop)
            && b > 0.0
        {
            self.ratio = Some(o / b);
        }
        self
    }

    pub(crate) fn met(mut self, met: Option<bool>) -> Self {
        self.met = met;
        self
    }

    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

fn cell(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// A Markdown table, pasteable into bench/README.md.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | metric | target | baseline | opsloop | unit | ratio | met | note |\n\
         |---|---|---|---:|---:|---|---:|---|---|\n",
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.metric,
            r.target,
            cell(r.baseline),
            cell(r.opsloop),
            r.unit,
            r.ratio
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            met,
            r.note
        ));
    }
    out
}
