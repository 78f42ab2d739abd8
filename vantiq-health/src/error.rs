//! Errors of the health probes.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// Which of the two probes an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// The TCP probe (`tcpProbePort`): a connect succeeds while the connector is healthy.
    Tcp,
    /// The HTTP probe (`healthProbePort`): `GET /healthz` and `GET /readyz`.
    Http,
}

impl Probe {
    /// `"TCP"` or `"HTTP"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Tcp => "TCP",
            Probe::Http => "HTTP",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a probe could not be opened or closed.
///
/// Every message names the probe and its port, e.g. `cannot open the TCP health probe on
/// port 8000 (0.0.0.0:8000): Address already in use (os error 98)`. The error is cheap to
/// clone (the I/O error inside is shared), so [`Health::last_error`](crate::Health::last_error)
/// can hand out copies.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The listening socket could not be bound (typically: the port is in use, or a port
    /// below 1024 without the privilege). The health state is unchanged.
    #[error("cannot open the {probe} health probe on port {} ({addr}): {source}", addr.port())]
    Bind {
        /// The probe.
        probe: Probe,
        /// The address it tried to bind.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The thread that serves the probe could not be started. The health state is unchanged.
    #[error("cannot start the thread of the {probe} health probe on port {port}: {source}")]
    Spawn {
        /// The probe.
        probe: Probe,
        /// The port it was bound to.
        port: u16,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The thread blocked in `accept` could not be woken (a loopback connect to the probe
    /// failed), so the probe is still open. The health state is unchanged; calling again
    /// retries.
    #[error(
        "cannot close the {probe} health probe on port {port}: waking its thread failed: {source}"
    )]
    Stop {
        /// The probe.
        probe: Probe,
        /// The port it listens on.
        port: u16,
        /// The error of the wake-up connect.
        #[source]
        source: Arc<io::Error>,
    },
}

impl HealthError {
    /// The probe the error concerns.
    pub fn probe(&self) -> Probe {
        match self {
            HealthError::Bind { probe, .. }
            | HealthError::Spawn { probe, .. }
            | HealthError::Stop { probe, .. } => *probe,
        }
    }

    /// The port the error concerns (for [`HealthError::Bind`], the configured one, which is
    /// `0` when a free port was asked for).
    pub fn port(&self) -> u16 {
        match self {
            HealthError::Bind { addr, .. } => addr.port(),
            HealthError::Spawn { port, .. } | HealthError::Stop { port, .. } => *port,
        }
    }

    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        match self {
            HealthError::Bind { source, .. }
            | HealthError::Spawn { source, .. }
            | HealthError::Stop { source, .. } => source,
        }
    }
}
