//! How results are printed: aligned tables and `key: value` blocks for people
//! (`--output table`), stable JSON for scripts (`--output json`), plus the
//! small conversions both need (timestamps, enum names, embedded JSON).

use chrono::{DateTime, SecondsFormat, Utc};
use clap::ValueEnum;
use prost_types::Timestamp;
use serde_json::Value;

/// `--output`: how results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// JSON documents (one per line for streams) with stable field names.
    Json,
}

/// Widest a table cell gets before it is cut with an ellipsis.
const MAX_CELL: usize = 60;

/// A table of rows under headers, printed with aligned columns.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    max_cell: usize,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
            max_cell: MAX_CELL,
        }
    }

    /// Cuts cells at `max` characters instead of 60 (for columns people must
    /// read whole, such as retention reasons).
    pub fn max_cell(mut self, max: usize) -> Self {
        self.max_cell = max;
        self
    }

    /// Appends a row; cells are flattened to one line and cut at 60
    /// characters (see [`Table::max_cell`]).
    pub fn row(&mut self, cells: Vec<String>) {
        let max = self.max_cell;
        self.rows.push(
            cells
                .into_iter()
                .map(|c| truncate(&one_line(&c), max))
                .collect(),
        );
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, columns separated by two spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(cell.chars().count());
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table, or `empty` when it has no rows.
    pub fn print_or(&self, empty: &str) {
        if self.is_empty() {
            outln!("{empty}");
        } else {
            out!("{}", self.render());
        }
    }
}

/// A `key: value` block with aligned values, for `show` commands. Multi-line
/// values (pretty JSON) are indented under their key.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        out.push_str(format!("{key:<width$}  {first}").trim_end());
        out.push('\n');
        for line in lines {
            out.push_str(&format!("{:width$}  {line}\n", ""));
        }
    }
    out
}

/// Writes to stdout (plus a newline when `newline`); a closed stdout (the
/// reader went away, as with `| head`) ends the process quietly with exit 0,
/// any other write error with exit 1.
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("opsloop: cannot write to stdout: {error}");
            std::process::exit(1);
        }
    }
}

/// Prints one JSON document, pretty.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints one JSON document on one line (streams: JSON lines).
pub fn print_json_line(value: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// A protobuf timestamp as a UTC instant.
pub fn to_datetime(ts: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// A UTC instant as a protobuf timestamp.
pub fn to_timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A timestamp for a table: `2026-11-23 10:14:06Z`, or `-` when absent.
pub fn ts(ts: Option<&Timestamp>) -> String {
    ts.and_then(to_datetime)
        .map(|at| at.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// A timestamp for JSON: RFC 3339 with milliseconds, or `null` when absent.
pub fn ts_json(ts: Option<&Timestamp>) -> Value {
    ts.and_then(to_datetime)
        .map(|at| Value::String(at.to_rfc3339_opts(SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// An embedded JSON document (`*_json` fields) as JSON; text that does not
/// parse is kept as a string, an empty one is `null`.
pub fn json_doc(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// An embedded JSON document re-indented for a `show` block.
pub fn pretty_doc(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| text.to_owned()),
        Err(_) => text.to_owned(),
    }
}

/// An enum's proto name without its prefix, lowercase:
/// `("PROPOSAL_STATUS_APPROVED", "PROPOSAL_STATUS_")` → `approved`.
pub fn enum_label(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
}

/// An optional string for a table (`-` when absent).
pub fn opt(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// An optional string for JSON (`null` when absent).
pub fn opt_json(value: Option<&str>) -> Value {
    value
        .map(|v| Value::String(v.to_owned()))
        .unwrap_or(Value::Null)
}

/// A cost for a table: `$0.0300`, or `-` when absent.
pub fn usd(value: Option<f64>) -> String {
    value
        .map(|v| format!("${v:.4}"))
        .unwrap_or_else(|| "-".to_owned())
}

/// Text flattened to one line: line breaks and tabs become spaces.
pub fn one_line(text: &str) -> String {
    text.split(['\n', '\r', '\t'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text cut to `max` characters, ending in `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A short id for tables: the first 8 characters of a UUID.
pub fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_cut_long_cells() {
        let mut table = Table::new(&["ID", "STATUS"]);
        table.row(vec!["a".into(), "approved".into()]);
        table.row(vec!["longer-id".into(), "x\ny".into()]);
        assert_eq!(
            table.render(),
            "ID         STATUS\na          approved\nlonger-id  x y\n"
        );
        assert_eq!(truncate(&"z".repeat(70), 10), format!("{}…", "z".repeat(9)));
    }

    #[test]
    fn conversions() {
        assert_eq!(
            enum_label("PROPOSAL_STATUS_APPROVED", "PROPOSAL_STATUS_"),
            "approved"
        );
        let at = Timestamp {
            seconds: 1_795_000_000,
            nanos: 5_000_000,
        };
        assert_eq!(ts(Some(&at)), "2026-11-18 11:06:40Z");
        assert_eq!(
            ts_json(Some(&at)),
            Value::String("2026-11-18T11:06:40.005Z".into())
        );
        assert_eq!(json_doc("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(json_doc("nope"), Value::String("nope".into()));
        assert_eq!(
            fields(&[("id", "1".into()), ("value", "{\n  \"a\": 1\n}".into())]),
            "id     1\nvalue  {\n         \"a\": 1\n       }\n"
        );
    }
}
