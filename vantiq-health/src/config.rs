//! Configuration of the probes.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Default port of the TCP probe (`tcpProbePort`), the same as both Vantiq SDKs.
pub const DEFAULT_TCP_PROBE_PORT: u16 = 8000;

/// Default time an HTTP probe client gets to send its request, and again to take the answer.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// How the probes are set up; maps one to one onto the `server.config` keys.
///
/// | field | `server.config` key | default |
/// |---|---|---|
/// | [`tcp_port`](Self::tcp_port) | `tcpProbePort` | `8000` (`0` picks a free port) |
/// | [`http_port`](Self::http_port) | `healthProbePort` | none (no HTTP probe) |
/// | [`auto`](Self::auto) | `autoHealth` | `false` |
/// | [`bind`](Self::bind) | — | `0.0.0.0` (all IPv4 interfaces) |
/// | [`http_timeout`](Self::http_timeout) | — | 2 s |
///
/// ```
/// use vantiq_health::HealthConfig;
///
/// let cfg = HealthConfig { http_port: Some(8080), auto: true, ..HealthConfig::default() };
/// assert_eq!(cfg.tcp_port, 8000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Port of the TCP probe, opened by [`Health::declare_healthy`](crate::Health::declare_healthy)
    /// and closed by [`Health::declare_unhealthy`](crate::Health::declare_unhealthy). `0` lets
    /// the system pick a free port; [`Health::tcp_probe_port`](crate::Health::tcp_probe_port)
    /// reports it.
    pub tcp_port: u16,
    /// Address both probes listen on. The default, `0.0.0.0`, listens on every IPv4 interface
    /// as the Vantiq SDKs do; use `::` on an IPv6 (or dual-stack) pod network, or a loopback
    /// address in tests.
    pub bind: IpAddr,
    /// Port of the HTTP probe (`GET /healthz`, `GET /readyz`), started by
    /// [`Health::start_http`](crate::Health::start_http); `None` turns it off. `Some(0)` lets
    /// the system pick a free port.
    pub http_port: Option<u16>,
    /// Automatic mode: readiness follows the sources. After each
    /// [`Health::set_source_state`](crate::Health::set_source_state) (and
    /// [`Health::register_source`](crate::Health::register_source)) the connector is declared
    /// healthy when every registered source is [configured](crate::ConnectionState::Configured)
    /// and unhealthy when one no longer is.
    pub auto: bool,
    /// Time an HTTP client gets to send its request head (and, separately, to accept the
    /// answer); a client that is slower gets `408` and is disconnected.
    pub http_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            tcp_port: DEFAULT_TCP_PROBE_PORT,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_port: None,
            auto: false,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
        }
    }
}
