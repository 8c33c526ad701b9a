//! Lifecycle: one shutdown path (a `CancellationToken` cancelled by SIGTERM or
//! SIGINT) and the systemd notify protocol (`READY=1`, `WATCHDOG=1`,
//! `STOPPING=1`) when `NOTIFY_SOCKET` is set.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT. SIGHUP never stops a
/// daemon: it reloads what can be reloaded (the TLS certificate, see
/// [`crate::tls::ServerTls::spawn_reloader`]) and is otherwise logged.
pub fn cancel_on_signals(token: CancellationToken) {
    {
        let token = token.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    received = hangup.recv() => {
                        if received.is_none() {
                            break;
                        }
                        tracing::info!("SIGHUP received: reloading what can be reloaded (TLS certificate)");
                    }
                }
            }
        });
    }
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutdown requested, draining");
        token.cancel();
    });
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// The systemd notify protocol. Every call is a no-op without `NOTIFY_SOCKET`.
pub mod systemd {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// Sends one notify message (e.g. `"READY=1"`); errors are logged, never fatal.
    pub fn notify(state: &str) {
        if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
            notify_to(&path, state);
        }
    }

    /// Sends one notify message to the socket at `path` (`@name` = abstract).
    pub fn notify_to(path: &std::ffi::OsStr, state: &str) {
        let result = (|| -> std::io::Result<()> {
            let socket = UnixDatagram::unbound()?;
            let bytes = path.as_encoded_bytes();
            if let Some(name) = bytes.strip_prefix(b"@") {
                // Abstract socket namespace (Linux).
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?;
            } else {
                socket.send_to(state.as_bytes(), path)?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(%error, state, "systemd notify failed");
        }
    }

    pub fn ready() {
        notify("READY=1");
    }

    pub fn stopping() {
        notify("STOPPING=1");
    }

    /// Half of `WATCHDOG_USEC`, when systemd asked for watchdog pings.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

/// Sends `WATCHDOG=1` at half the watchdog period for as long as the runtime
/// is responsive and `token` is not cancelled.
pub fn spawn_watchdog(token: CancellationToken) {
    let Some(interval) = systemd::watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = ticker.tick() => systemd::notify("WATCHDOG=1"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        systemd::notify_to(path.as_os_str(), "READY=1");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
