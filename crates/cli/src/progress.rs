//! Progress of a long backup-agent call (`opsloop backup now|verify|restore`)
//! on a terminal: while the call runs, `BackupService.GetProgress` is polled
//! every 250 ms and one line on stderr is redrawn (`backup opsloop: dump
//! 12.3 MiB, 4.1 s`), then cleared before the result is printed. Nothing is
//! drawn when stderr is not a terminal or the output is JSON, so pipes and
//! scripts see only the result.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use opsloop_core::proto::v1::{GetProgressRequest, GetProgressResponse};

use crate::client::Connection;
use crate::output::OutputFormat;

/// How often the agent is asked.
const POLL: Duration = Duration::from_millis(250);

/// What to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// The backup being taken of a target (any when `None`), then whatever
    /// runs on that backup (its verification).
    NewBackup(Option<String>),
    /// Whatever runs on this backup.
    Backup(String),
}

/// Whether to draw: on a terminal, for human output.
pub fn wanted(output: OutputFormat) -> bool {
    output == OutputFormat::Table && std::io::stderr().is_terminal()
}

/// The line drawn for one answer.
pub fn line(p: &GetProgressResponse) -> String {
    let mut text = format!("{} {}: {}", p.operation, p.target, p.stage);
    if p.bytes > 0 {
        text.push(' ');
        text.push_str(&crate::backup::size(p.bytes));
    }
    text.push_str(&format!(", {:.1} s", p.elapsed_ms as f64 / 1000.0));
    text
}

/// The request that follows `watch`.
fn request(watch: &Watch) -> GetProgressRequest {
    match watch {
        Watch::NewBackup(target) => GetProgressRequest {
            backup_id: String::new(),
            target: target.clone().unwrap_or_default(),
        },
        Watch::Backup(id) => GetProgressRequest {
            backup_id: id.clone(),
            target: String::new(),
        },
    }
}

/// Runs `call`, drawing its progress on stderr when `draw`.
pub async fn while_running<F: Future>(
    conn: &Connection,
    mut watch: Watch,
    draw: bool,
    call: F,
) -> F::Output {
    if !draw {
        return call.await;
    }
    let mut call = std::pin::pin!(call);
    let mut ticks = tokio::time::interval(POLL);
    let mut drawn = false;
    loop {
        tokio::select! {
            out = &mut call => {
                if drawn {
                    eprint!("\r\x1b[2K");
                    let _ = std::io::stderr().flush();
                }
                return out;
            }
            _ = ticks.tick() => {
                // Not found: nothing runs yet (or any more); draw nothing.
                if let Ok(answer) = conn.backups().get_progress(request(&watch)).await {
                    let p = answer.into_inner();
                    if let Watch::NewBackup(_) = watch {
                        watch = Watch::Backup(p.backup_id.clone());
                    }
                    eprint!("\r\x1b[2K{}", line(&p));
                    let _ = std::io::stderr().flush();
                    drawn = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_what_runs_how_far_and_for_how_long() {
        let mut p = GetProgressResponse {
            backup_id: "b".into(),
            operation: "backup".into(),
            target: "opsloop".into(),
            stage: "dump".into(),
            bytes: 12 * 1024 * 1024 + 300 * 1024,
            elapsed_ms: 4100,
        };
        assert_eq!(line(&p), "backup opsloop: dump 12.3 MiB, 4.1 s");
        p.operation = "verify".into();
        p.stage = "restore".into();
        p.bytes = 0;
        assert_eq!(line(&p), "verify opsloop: restore, 4.1 s");
    }

    #[test]
    fn json_output_never_draws_and_requests_follow_the_watch() {
        assert!(!wanted(OutputFormat::Json));
        assert_eq!(
            request(&Watch::NewBackup(Some("files".into()))).target,
            "files"
        );
        let by_id = request(&Watch::Backup("0193".into()));
        assert_eq!(
            (by_id.backup_id.as_str(), by_id.target.as_str()),
            ("0193", "")
        );
    }
}
