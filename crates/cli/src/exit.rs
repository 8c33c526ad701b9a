//! The process exit code of every `opsloop` command, by outcome: one table,
//! mapped once from the gRPC status code, so scripts branch on `$?` instead
//! of parsing stderr.

use std::fmt;

use tonic::Code;

/// Success.
pub const SUCCESS: u8 = 0;
/// Any failure the other codes do not name (internal, unknown, data loss,
/// unimplemented, a local I/O error).
pub const OTHER: u8 = 1;
/// Usage: a bad command line (unknown flag or subcommand, a missing or
/// malformed argument), or a configuration that does not load.
pub const USAGE: u8 = 2;
/// The server refused an argument (INVALID_ARGUMENT, OUT_OF_RANGE).
pub const INVALID_ARGUMENT: u8 = 3;
/// The named thing does not exist (NOT_FOUND).
pub const NOT_FOUND: u8 = 4;
/// No token, a bad token, or a role that may not make the call
/// (UNAUTHENTICATED, PERMISSION_DENIED).
pub const PERMISSION_DENIED: u8 = 5;
/// The daemon or its database cannot be reached, or it sheds load; retrying
/// later may succeed (UNAVAILABLE, RESOURCE_EXHAUSTED).
pub const UNAVAILABLE: u8 = 6;
/// The current state does not allow the change (FAILED_PRECONDITION,
/// ALREADY_EXISTS, ABORTED).
pub const FAILED_PRECONDITION: u8 = 7;
/// The call did not finish in time or was cancelled (DEADLINE_EXCEEDED,
/// CANCELLED).
pub const TIMEOUT: u8 = 8;

/// The table printed at the end of `opsloop --help`.
pub const TABLE: &str = "\
Exit status:
  0  success
  1  other failure (internal, unknown, unimplemented, local I/O)
  2  usage: bad command line or a configuration that does not load
  3  invalid argument (INVALID_ARGUMENT, OUT_OF_RANGE)
  4  not found (NOT_FOUND)
  5  permission denied or unauthenticated (PERMISSION_DENIED, UNAUTHENTICATED)
  6  unavailable: daemon or database unreachable, or shedding load (UNAVAILABLE, RESOURCE_EXHAUSTED)
  7  failed precondition: the current state forbids it (FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED)
  8  timeout (DEADLINE_EXCEEDED, CANCELLED)";

/// The exit code for a gRPC status code: the one place this mapping lives.
pub fn for_code(code: Code) -> u8 {
    match code {
        Code::Ok => SUCCESS,
        Code::InvalidArgument | Code::OutOfRange => INVALID_ARGUMENT,
        Code::NotFound => NOT_FOUND,
        Code::PermissionDenied | Code::Unauthenticated => PERMISSION_DENIED,
        Code::Unavailable | Code::ResourceExhausted => UNAVAILABLE,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => FAILED_PRECONDITION,
        Code::DeadlineExceeded | Code::Cancelled => TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss | Code::Unimplemented => OTHER,
    }
}

/// A failed call with its status code, already turned into the line the user
/// sees; the code decides the exit status.
#[derive(Debug)]
pub struct StatusError {
    /// The gRPC status code of the outcome.
    pub code: Code,
    /// The one-line message (`CODE: message — what to do`).
    pub line: String,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for StatusError {}

/// A usage error found after parsing (a flag value the CLI itself rejects,
/// a configuration that does not load): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An [`anyhow::Error`] carrying exit code 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// An [`anyhow::Error`] carrying `code`'s exit status and `line`.
pub fn status(code: Code, line: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(StatusError {
        code,
        line: line.into(),
    })
}

/// The exit code for an error a command returned: the status code it
/// carries ([`StatusError`], [`UsageError`] anywhere in its chain), else the
/// status code its message starts with (`NOT_FOUND: …`, as every remote
/// failure line does), else [`OTHER`].
pub fn for_error(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<StatusError>() {
            return for_code(status.code);
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return for_code(status.code());
        }
    }
    let message = error.to_string();
    leading_code(&message).map_or(OTHER, for_code)
}

/// The status code named at the start of a line like `NOT_FOUND: …`.
fn leading_code(line: &str) -> Option<Code> {
    let (name, _) = line.split_once(':')?;
    ALL_CODES
        .iter()
        .copied()
        .find(|code| crate::client::code_name(*code) == name)
}

const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_documented_exit_status() {
        for code in ALL_CODES {
            let exit = for_code(code);
            let row = format!("\n  {exit}  ");
            assert!(
                TABLE.contains(&row),
                "{code:?} → {exit} is not in the table"
            );
            if !matches!(
                code,
                Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss | Code::Unimplemented
            ) {
                assert!(
                    TABLE.contains(crate::client::code_name(code)),
                    "{code:?} is not named in the table"
                );
            }
        }
    }

    #[test]
    fn the_named_outcomes_are_distinct() {
        let named = [
            SUCCESS,
            OTHER,
            USAGE,
            INVALID_ARGUMENT,
            NOT_FOUND,
            PERMISSION_DENIED,
            UNAVAILABLE,
            FAILED_PRECONDITION,
            TIMEOUT,
        ];
        let mut sorted = named.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), named.len());
    }

    #[test]
    fn errors_map_by_carried_code_then_by_leading_name() {
        let carried = status(Code::NotFound, "NOT_FOUND: proposal p-1").context("show");
        assert_eq!(for_error(&carried), NOT_FOUND);
        assert_eq!(for_error(&usage("--since: not a time")), USAGE);
        assert_eq!(
            for_error(&anyhow::anyhow!("UNAVAILABLE: cannot reach api")),
            UNAVAILABLE
        );
        assert_eq!(
            for_error(&anyhow::anyhow!("PERMISSION_DENIED: needs admin")),
            PERMISSION_DENIED
        );
        assert_eq!(for_error(&anyhow::anyhow!("disk full: x")), OTHER);
        assert_eq!(
            for_error(&anyhow::Error::new(tonic::Status::deadline_exceeded(
                "slow"
            ))),
            TIMEOUT
        );
    }
}
