//! systemd's notification protocol (`Type=notify`): READY, WATCHDOG and STATUS datagrams to
//! `$NOTIFY_SOCKET`. Without that variable (a plain foreground run) every call does nothing.

use std::{os::unix::net::UnixDatagram, time::Duration};

/// The notification socket, if systemd gave one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let address = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, address))
        });
        Self { socket }
    }

    /// Sends one `KEY=VALUE` notification.
    pub fn send(&self, state: &str) {
        if let Some((socket, address)) = &self.socket
            && let Err(e) = socket.send_to_addr(state.as_bytes(), address)
        {
            tracing::warn!(error = %e, "Cannot notify systemd.");
        }
    }

    /// Half of `$WATCHDOG_USEC`, the interval to send `WATCHDOG=1` at, when systemd asks for it.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        Some(Duration::from_micros(usec / 2))
    }
}
