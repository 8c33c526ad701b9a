//! The `opsloop` CLI as a library: the gRPC client side of every command
//! (one module per command group), output formatting, and the worker loop
//! that `opsloop worker` and `opsloop dev --demo` share.

/// `println!` that ends the process quietly (exit 0) when stdout is closed,
/// e.g. `opsloop event list | head`, instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(::std::format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(::std::format_args!($($arg)*), true)
    };
}

/// `print!` with [`outln!`]'s handling of a closed stdout.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(::std::format_args!($($arg)*), false)
    };
}

pub mod alerts;
pub mod backup;
pub mod client;
pub mod config_check;
pub mod event;
pub mod exit;
pub mod http;
pub mod incident;
pub mod mission;
pub mod ops;
pub mod output;
pub mod parse;
pub mod policy;
pub mod probe;
pub mod progress;
pub mod proposal;
pub mod repair;
pub mod rollout;
pub mod status;
pub mod token;
pub mod trigger;
pub mod worker;
pub mod worker_cmd;
