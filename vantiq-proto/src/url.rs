//! The WebSocket URL derived from `targetServer`.
//!
//! Rules: the scheme is case-insensitive; `http` becomes `ws`, `https` becomes `wss`,
//! `ws`/`wss` are kept and a missing scheme means `wss`. Host and port are kept as written.
//! The path becomes `/api/v1/wsock/websocket` unless it already is
//! `/api/v<digits>/wsock/websocket` (a trailing slash is tolerated and dropped). A query is
//! kept; a fragment is dropped (it never reaches the server). Anything that does not give a
//! host is an error naming `targetServer`. The reasons, and how the Java and Python SDKs
//! differ, are in the repository's `docs/design.md#d3-target-url`.
//!
//! ```
//! use vantiq_proto::TargetUrl;
//!
//! let u = TargetUrl::parse("HTTPS://dev.vantiq.com/ui?x=1").unwrap();
//! assert_eq!(u.as_str(), "wss://dev.vantiq.com/api/v1/wsock/websocket?x=1");
//! assert_eq!((u.host(), u.port(), u.is_secure()), ("dev.vantiq.com", 443, true));
//! ```

use std::fmt;

/// The path every connector socket uses unless `targetServer` names another API version.
pub const WEBSOCKET_PATH: &str = "/api/v1/wsock/websocket";

/// A normalised connector WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetUrl {
    url: String,
    secure: bool,
    host: String,
    port: u16,
}

/// Why `targetServer` could not be turned into a WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("targetServer `{input}` is not a usable URL: {reason}")]
pub struct UrlError {
    /// The value as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn is_api_path(path: &str) -> bool {
    let p = path.strip_suffix('/').unwrap_or(path);
    let Some(rest) = p.strip_prefix("/api/v") else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest.get(digits..) == Some("/wsock/websocket")
}

impl TargetUrl {
    /// Normalises `targetServer` into the connector's WebSocket URL.
    ///
    /// # Errors
    /// An unknown scheme, no host, a bad port, or whitespace or control characters inside.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        let err = |reason| UrlError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("it contains whitespace or control characters"));
        }
        // A scheme is `[A-Za-z][A-Za-z0-9+.-]*://`; without `://` the whole text is host[:port][/path].
        let (scheme, rest) = match s.find("://") {
            Some(i) => {
                let scheme = s.get(..i).unwrap_or_default();
                let valid = scheme
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic())
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
                if !valid {
                    return Err(err("the scheme is malformed"));
                }
                (
                    scheme.to_ascii_lowercase(),
                    s.get(i + 3..).unwrap_or_default(),
                )
            }
            None => ("wss".to_owned(), s),
        };
        let secure = match scheme.as_str() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            _ => return Err(err("the scheme must be http, https, ws or wss")),
        };
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = rest.get(..auth_end).unwrap_or_default();
        let tail = rest.get(auth_end..).unwrap_or_default();
        if authority.contains('@') {
            return Err(err("user information in the URL is not supported"));
        }
        let (host, port_text) = if let Some(v6) = authority.strip_prefix('[') {
            let close = v6.find(']').ok_or_else(|| err("an IPv6 host lacks `]`"))?;
            let host = authority.get(..close + 2).unwrap_or_default();
            let after = v6.get(close + 1..).unwrap_or_default();
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| err("junk after the IPv6 host"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(err("it has no host"));
        }
        if host.contains(':') && !host.starts_with('[') {
            return Err(err("the host contains `:`"));
        }
        let port = match port_text {
            None | Some("") => {
                if secure {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err("the port is not a number from 1 to 65535"))?,
        };
        let tail = tail.split('#').next().unwrap_or_default();
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let path = if is_api_path(path) {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            WEBSOCKET_PATH
        };
        let mut url = String::with_capacity(s.len() + WEBSOCKET_PATH.len() + 8);
        url.push_str(if secure { "wss://" } else { "ws://" });
        url.push_str(authority);
        url.push_str(path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        Ok(TargetUrl {
            url,
            secure,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }

    /// The full URL, e.g. `wss://dev.vantiq.com/api/v1/wsock/websocket`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// `wss` (TLS) or `ws`.
    #[must_use]
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The host to connect to (IPv6 without brackets), also the TLS server name.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (443/80 when not written).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the host is this machine: `localhost` (any case, with or without the final
    /// dot), an address in `127.0.0.0/8`, or `::1` (also as `::ffff:127.x.y.z`). Traffic to
    /// it never leaves the machine, so a plain `ws://` there exposes nothing on a network.
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        let host = self.host.strip_suffix('.').unwrap_or(&self.host);
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(std::net::IpAddr::V6(ip)) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Err(_) => false,
        }
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl std::str::FromStr for TargetUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TargetUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LocalHost",
            "localhost.",
            "127.0.0.1",
            "127.255.0.9",
            "[::1]",
            "[::ffff:127.0.0.1]",
        ] {
            let u = TargetUrl::parse(&format!("http://{host}:8080")).unwrap();
            assert!(u.is_loopback(), "{host}");
        }
        for host in [
            "dev.vantiq.com",
            "localhost.example.com",
            "mylocalhost",
            "128.0.0.1",
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "[::2]",
            "[::ffff:10.0.0.1]",
            "127.0.0.1.nip.io",
        ] {
            let u = TargetUrl::parse(&format!("http://{host}:8080")).unwrap();
            assert!(!u.is_loopback(), "{host}");
        }
    }

    /// The inputs the Java and Python SDKs were checked with (each mangles some of them; see
    /// docs/design.md#url-examples), plus our own edge cases, with the result we choose.
    #[test]
    fn normalisation_table() {
        let rows: &[(&str, &str)] = &[
            // The inputs the peer SDKs were checked with.
            (
                "https://dev.vantiq.com",
                "wss://dev.vantiq.com/api/v1/wsock/websocket",
            ),
            (
                "https://dev.vantiq.com/",
                "wss://dev.vantiq.com/api/v1/wsock/websocket",
            ),
            (
                "http://localhost:9090",
                "ws://localhost:9090/api/v1/wsock/websocket",
            ),
            ("ws://host:8080", "ws://host:8080/api/v1/wsock/websocket"),
            (
                "https://prod/api/v47/wsock/websocket",
                "wss://prod/api/v47/wsock/websocket",
            ),
            (
                "http://prod/api/v/wsock/websocket",
                "ws://prod/api/v1/wsock/websocket",
            ),
            ("https://host/foo", "wss://host/api/v1/wsock/websocket"),
            (
                "https://host/api/v1/wsock/websocket/",
                "wss://host/api/v1/wsock/websocket",
            ),
            (
                "dev.vantiq.com",
                "wss://dev.vantiq.com/api/v1/wsock/websocket",
            ),
            (
                "localhost:8080",
                "wss://localhost:8080/api/v1/wsock/websocket",
            ),
            ("HTTPS://Host.com", "wss://Host.com/api/v1/wsock/websocket"),
            ("https://h/x?y=1", "wss://h/api/v1/wsock/websocket?y=1"),
            // ours
            ("wss://h", "wss://h/api/v1/wsock/websocket"),
            (
                "WS://h:1/api/v2/wsock/websocket",
                "ws://h:1/api/v2/wsock/websocket",
            ),
            ("  https://h  ", "wss://h/api/v1/wsock/websocket"),
            ("https://h/#frag", "wss://h/api/v1/wsock/websocket"),
            ("https://h?", "wss://h/api/v1/wsock/websocket"),
            (
                "http://[::1]:8080/x",
                "ws://[::1]:8080/api/v1/wsock/websocket",
            ),
            (
                "http://127.0.0.1:8080",
                "ws://127.0.0.1:8080/api/v1/wsock/websocket",
            ),
            (
                "https://h/api/v1/wsock/websocketx",
                "wss://h/api/v1/wsock/websocket",
            ),
        ];
        for (input, want) in rows {
            let got = TargetUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.as_str(), *want, "input {input}");
        }
    }

    #[test]
    fn host_port_and_security() {
        let u = TargetUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!((u.host(), u.port(), u.is_secure()), ("::1", 8080, false));
        let u = TargetUrl::parse("dev.vantiq.com").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.is_secure()),
            ("dev.vantiq.com", 443, true)
        );
        let u = TargetUrl::parse("http://h").unwrap();
        assert_eq!(u.port(), 80);
    }

    #[test]
    fn errors_name_target_server_and_reason() {
        for (input, reason) in [
            ("", "it is empty"),
            ("ftp://h", "the scheme must be http, https, ws or wss"),
            ("https://", "it has no host"),
            ("https://:80", "it has no host"),
            (
                "https://h:99999",
                "the port is not a number from 1 to 65535",
            ),
            ("https://h:0", "the port is not a number from 1 to 65535"),
            ("https://h:x", "the port is not a number from 1 to 65535"),
            (
                "https://u:p@h",
                "user information in the URL is not supported",
            ),
            (
                "https://h o",
                "it contains whitespace or control characters",
            ),
            ("1x://h", "the scheme is malformed"),
            ("http://[::1", "an IPv6 host lacks `]`"),
        ] {
            let e = TargetUrl::parse(input).unwrap_err();
            assert_eq!(e.reason, reason, "input {input:?}");
            assert!(e.to_string().starts_with("targetServer `"), "{e}");
        }
    }
}
