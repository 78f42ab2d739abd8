//! The `server.config` keys this layer reads: the health probes, the transport and the size of
//! streamed query replies. (The core reads the connection's own keys; a connector reads its
//! own with [`ServerConfig::parsed`] and [`ServerConfig::flag`].)

use std::net::IpAddr;

use vantiq_health::{DEFAULT_TCP_PROBE_PORT, HealthConfig};
use vantiq_proto::{ConfigError, ConnectOptions, ServerConfig, keys};

use crate::transport::TransportOptions;

/// Default byte budget of one streamed query reply frame.
const DEFAULT_QUERY_CHUNK_BYTES: usize = 256 * 1024;
/// Smallest byte budget of one streamed query reply frame.
const MIN_QUERY_CHUNK_BYTES: usize = 256;

/// `connectKWArgs` options read here.
const TRANSPORT_KW_ARGS: [&str; 2] = ["disableSslVerification", "max_size"];

/// The warning for `connectKWArgs` `{"max_size": null}`.
pub(crate) const UNLIMITED_SIZE_WARNING: &str = "connectKWArgs: `max_size` is null: incoming \
     messages have no size limit, so the server (or anything between it and the connector) can \
     make the connector hold a message of any size in memory; give a number of bytes instead";

/// What this layer takes from `server.config`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) health: HealthConfig,
    pub(crate) transport: TransportOptions,
    pub(crate) query_chunk_bytes: usize,
    /// Worth a warning in the log (once per set).
    pub(crate) warnings: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            health: HealthConfig::default(),
            transport: TransportOptions::default(),
            query_chunk_bytes: DEFAULT_QUERY_CHUNK_BYTES,
            warnings: Vec::new(),
        }
    }
}

/// Reads this layer's keys.
///
/// # Errors
/// A key that does not parse, named with the file and its line.
pub(crate) fn read(config: &ServerConfig) -> Result<Settings, ConfigError> {
    let mut s = Settings::default();
    let defaults = HealthConfig::default();
    s.health = HealthConfig {
        tcp_port: config
            .parsed::<u16>(keys::TCP_PROBE_PORT, "a port number from 0 to 65535")?
            .unwrap_or(DEFAULT_TCP_PROBE_PORT),
        http_port: config
            .parsed::<u16>(keys::HEALTH_PROBE_PORT, "a port number from 0 to 65535")?,
        bind: config
            .parsed::<IpAddr>(
                keys::HEALTH_PROBE_BIND,
                "an IP address such as 0.0.0.0 or ::",
            )?
            .unwrap_or(defaults.bind),
        auto: config.flag(keys::AUTO_HEALTH, false)?,
        ..defaults
    };
    if let Some(bytes) = config.parsed::<usize>(
        keys::QUERY_CHUNK_BYTES,
        &format!("a whole number ≥ {MIN_QUERY_CHUNK_BYTES}"),
    )? {
        if bytes < MIN_QUERY_CHUNK_BYTES {
            return Err(config.key_error(
                keys::QUERY_CHUNK_BYTES,
                format!("expected a whole number ≥ {MIN_QUERY_CHUNK_BYTES}, found `{bytes}`"),
            ));
        }
        s.query_chunk_bytes = bytes;
    }
    read_transport(config, &mut s)?;
    Ok(s)
}

/// `connectKWArgs` options of the transport, and a warning for the ones nobody reads.
fn read_transport(config: &ServerConfig, s: &mut Settings) -> Result<(), ConfigError> {
    let key = keys::CONNECT_KW_ARGS;
    for (name, v) in config.connect_kw_args() {
        match name.as_str() {
            "disableSslVerification" => {
                let on = match v {
                    serde_json::Value::Bool(b) => Some(*b),
                    serde_json::Value::String(text) => match text.trim() {
                        t if t.eq_ignore_ascii_case("true") => Some(true),
                        t if t.eq_ignore_ascii_case("false") => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                s.transport.disable_tls_verification = on.ok_or_else(|| {
                    config.key_error(key, "`disableSslVerification` must be true or false")
                })?;
            }
            "max_size" => {
                s.transport.max_message_size = match v {
                    serde_json::Value::Null => {
                        s.warnings.push(UNLIMITED_SIZE_WARNING.to_owned());
                        None
                    }
                    other => Some(
                        other
                            .as_u64()
                            .and_then(|n| usize::try_from(n).ok())
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                config.key_error(
                                    key,
                                    "`max_size` must be a positive number of bytes or null",
                                )
                            })?,
                    ),
                };
            }
            other if ConnectOptions::KEYS.contains(&other) => {}
            other => s.warnings.push(format!(
                "{key}: option `{other}` has no meaning for this SDK and is ignored"
            )),
        }
    }
    debug_assert!(
        TRANSPORT_KW_ARGS
            .iter()
            .all(|k| !ConnectOptions::KEYS.contains(k))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cfg(extra: &str) -> ServerConfig {
        ServerConfig::parse(
            &format!("targetServer=https://v\nauthToken=t\nsources=s\n{extra}"),
            "test/server.config",
            |_| None,
        )
        .unwrap()
    }

    #[test]
    fn defaults() {
        let s = read(&cfg("")).unwrap();
        assert_eq!(s.health.tcp_port, 8000);
        assert_eq!(s.health.http_port, None);
        assert!(!s.health.auto);
        assert_eq!(s.query_chunk_bytes, 262_144);
        assert_eq!(s.transport.max_message_size, Some(64 << 20));
        assert!(!s.transport.disable_tls_verification);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn every_key() {
        let s = read(&cfg(
            "tcpProbePort=0\nhealthProbePort=8081\nautoHealth=yes\nhealthProbeBind=::1\n\
             queryChunkBytes=1024\nconnectKWArgs={\"disableSslVerification\": true, \
             \"max_size\": 1048576, \"open_timeout\": 3, \"max_queue\": 16}\n",
        ))
        .unwrap();
        assert_eq!(s.health.tcp_port, 0);
        assert_eq!(s.health.http_port, Some(8081));
        assert_eq!(s.health.bind, "::1".parse::<IpAddr>().unwrap());
        assert!(s.health.auto);
        assert_eq!(s.query_chunk_bytes, 1024);
        assert!(s.transport.disable_tls_verification);
        assert_eq!(s.transport.max_message_size, Some(1 << 20));
        // `open_timeout` is the connection's; `max_queue` nobody's.
        assert_eq!(
            s.warnings,
            ["connectKWArgs: option `max_queue` has no meaning for this SDK and is ignored"]
        );
    }

    #[test]
    fn unlimited_message_size_warns() {
        let s = read(&cfg("connectKWArgs={\"max_size\": null}")).unwrap();
        assert_eq!(s.transport.max_message_size, None);
        assert_eq!(s.warnings, [UNLIMITED_SIZE_WARNING]);
        assert!(UNLIMITED_SIZE_WARNING.contains("no size limit"));
    }

    #[test]
    fn errors_name_file_key_and_line() {
        for (extra, want) in [
            (
                "tcpProbePort=70000",
                "test/server.config: key `tcpProbePort`: expected a port number from 0 to 65535, found `70000` (line 4)",
            ),
            (
                "healthProbeBind=everywhere",
                "test/server.config: key `healthProbeBind`: expected an IP address such as 0.0.0.0 or ::, found `everywhere` (line 4)",
            ),
            (
                "autoHealth=maybe",
                "test/server.config: key `autoHealth`: expected true or false, found `maybe` (line 4)",
            ),
            (
                "queryChunkBytes=100",
                "test/server.config: key `queryChunkBytes`: expected a whole number ≥ 256, found `100` (line 4)",
            ),
            (
                "connectKWArgs={\"max_size\": -1}",
                "test/server.config: key `connectKWArgs`: `max_size` must be a positive number of bytes or null (line 4)",
            ),
            (
                "connectKWArgs={\"disableSslVerification\": 3}",
                "test/server.config: key `connectKWArgs`: `disableSslVerification` must be true or false (line 4)",
            ),
        ] {
            assert_eq!(read(&cfg(extra)).unwrap_err().to_string(), want, "{extra}");
        }
    }
}
