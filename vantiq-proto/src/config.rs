//! `server.config`: the connector's settings, read the way both Vantiq SDKs read them.
//!
//! The core does no IO: the caller reads the file (see [`SEARCH_PATHS`]) and hands the text
//! and the environment to [`ServerConfig::parse`]. Every error names the file and the key.
//!
//! ```
//! use vantiq_proto::ServerConfig;
//!
//! let text = "targetServer = https://dev.vantiq.com\nsources = a, b\n";
//! let env = |k: &str| (k == "CONNECTOR_AUTH_TOKEN").then(|| "s3cret".to_owned());
//! let cfg = ServerConfig::parse(text, "server.config", env).unwrap();
//! assert_eq!(cfg.target().as_str(), "wss://dev.vantiq.com/api/v1/wsock/websocket");
//! assert_eq!(cfg.sources(), ["a", "b"]);
//! assert!(!format!("{cfg:?}").contains("s3cret"));
//! ```

use std::fmt;
use std::time::Duration;

use crate::properties::{Properties, PropertiesError};
use crate::url::TargetUrl;

/// Where `server.config` is looked for, relative to the working directory, in order.
pub const SEARCH_PATHS: [&str; 2] = ["serverConfig/server.config", "server.config"];

/// The environment variable that supplies the token when `authToken` is absent.
pub const TOKEN_ENV: &str = "CONNECTOR_AUTH_TOKEN";

/// Keys of `server.config` this SDK reads.
pub mod keys {
    /// The Vantiq server (URL, normalised as [`TargetUrl`](crate::TargetUrl) describes).
    pub const TARGET_SERVER: &str = "targetServer";
    /// The access token.
    pub const AUTH_TOKEN: &str = "authToken";
    /// User name for `authenticate` (used only when no token is configured).
    pub const USERNAME: &str = "username";
    /// Password for `authenticate`.
    pub const PASSWORD: &str = "password";
    /// Comma-separated source names (or a JSON list of strings).
    pub const SOURCES: &str = "sources";
    /// `true`/`false`: WebSocket keep-alive pings (default `true`).
    pub const SEND_PINGS: &str = "sendPings";
    /// TCP health probe port (default 8000; `0` picks a free port). Read by the SDK layer,
    /// like the three keys below and `queryChunkBytes`: the core does not read them.
    pub const TCP_PROBE_PORT: &str = "tcpProbePort";
    /// HTTP health probe port (`/healthz`, `/readyz`); off when absent.
    pub const HEALTH_PROBE_PORT: &str = "healthProbePort";
    /// Address the health probes listen on (default `0.0.0.0`; `::` for IPv6 pod networks).
    pub const HEALTH_PROBE_BIND: &str = "healthProbeBind";
    /// `true`: readiness follows the sources (healthy while every source is configured).
    pub const AUTO_HEALTH: &str = "autoHealth";
    /// `true`: the first connection failure ends the connector.
    pub const FAIL_ON_CONNECTION_ERROR: &str = "failOnConnectionError";
    /// Fixed suffix of each source's reconnect secret (stable across restarts).
    pub const RECONNECT_SECRET: &str = "reconnectSecret";
    /// JSON object of connection options (Python SDK compatible): the core reads the time
    /// limits and pings ([`ConnectOptions`](super::ConnectOptions)), the SDK layer the
    /// transport's (`max_size`, `disableSslVerification`).
    pub const CONNECT_KW_ARGS: &str = "connectKWArgs";
    /// Notifications held per source while disconnected (default 10000).
    pub const NOTIFICATION_QUEUE_SIZE: &str = "notificationQueueSize";
    /// Byte budget of one query reply frame when streaming rows (default 262144).
    pub const QUERY_CHUNK_BYTES: &str = "queryChunkBytes";
    /// First reconnect delay ceiling in seconds (default 0.5).
    pub const RECONNECT_INITIAL_DELAY: &str = "reconnectInitialDelay";
    /// Largest reconnect delay in seconds (default 30).
    pub const RECONNECT_MAX_DELAY: &str = "reconnectMaxDelay";

    /// Every key above.
    pub const ALL: [&str; 17] = [
        TARGET_SERVER,
        AUTH_TOKEN,
        USERNAME,
        PASSWORD,
        SOURCES,
        SEND_PINGS,
        TCP_PROBE_PORT,
        HEALTH_PROBE_PORT,
        HEALTH_PROBE_BIND,
        AUTO_HEALTH,
        FAIL_ON_CONNECTION_ERROR,
        RECONNECT_SECRET,
        CONNECT_KW_ARGS,
        NOTIFICATION_QUEUE_SIZE,
        QUERY_CHUNK_BYTES,
        RECONNECT_INITIAL_DELAY,
        RECONNECT_MAX_DELAY,
    ];
}

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for putting on the wire.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a connector proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An access token (`validate`).
    Token(Secret),
    /// A user name and password (`authenticate`).
    UserPassword {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
}

/// An error in the configuration, naming the file and (when there is one) the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The file (or `<programmatic>`).
    pub origin: String,
    /// The key at fault, if any.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The options of `connectKWArgs` that concern the connection (time limits and pings). The
/// others (such as the transport's `max_size` and `disableSslVerification`) are read by the
/// layer they concern, from [`ServerConfig::connect_kw_args`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// `open_timeout` (seconds): time allowed from opening the socket to being configured.
    pub open_timeout: Option<Duration>,
    /// `ping_interval` (seconds); `Some(None)` (JSON null) turns pings off.
    pub ping_interval: Option<Option<Duration>>,
    /// `ping_timeout` (seconds): how long a pong may take.
    pub ping_timeout: Option<Duration>,
    /// `close_timeout` (seconds): how long a graceful close may take.
    pub close_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// The `connectKWArgs` options read here.
    pub const KEYS: [&'static str; 4] = [
        "open_timeout",
        "ping_interval",
        "ping_timeout",
        "close_timeout",
    ];
}

/// The parsed `server.config`.
#[derive(Clone)]
pub struct ServerConfig {
    origin: String,
    target_server: String,
    target: TargetUrl,
    credentials: Credentials,
    sources: Vec<String>,
    send_pings: bool,
    fail_on_connection_error: bool,
    reconnect_secret: Option<String>,
    connect: ConnectOptions,
    connect_kw_args: serde_json::Map<String, serde_json::Value>,
    notification_queue_size: usize,
    reconnect_initial_delay: Duration,
    reconnect_max_delay: Duration,
    properties: Properties,
    warnings: Vec<String>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("origin", &self.origin)
            .field("target", &self.target.as_str())
            .field("credentials", &self.credentials)
            .field("sources", &self.sources)
            .field("send_pings", &self.send_pings)
            .field("fail_on_connection_error", &self.fail_on_connection_error)
            .field(
                "reconnect_secret",
                &self.reconnect_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("connect", &self.connect)
            .finish_non_exhaustive()
    }
}

struct Reader<'a> {
    origin: &'a str,
    props: &'a Properties,
    warnings: Vec<String>,
}

impl Reader<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self
            .props
            .line_of(key)
            .filter(|l| *l > 0)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        ConfigError {
            origin: self.origin.to_owned(),
            key: Some(key.to_owned()),
            message: format!("{}{line}", message.into()),
        }
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.props.get(key)
    }

    fn non_blank(&self, key: &str) -> Option<&str> {
        self.text(key).map(str::trim).filter(|v| !v.is_empty())
    }

    fn boolean(&mut self, key: &str, default: bool) -> Result<bool, ConfigError> {
        let Some(raw) = self.text(key) else {
            return Ok(default);
        };
        match parse_bool(raw) {
            Some(b) => Ok(b),
            None if raw.trim().is_empty() => {
                self.warnings
                    .push(format!("{key} is empty; using the default ({default})"));
                Ok(default)
            }
            None => Err(self.err(
                key,
                format!("expected true or false, found `{}`", raw.trim()),
            )),
        }
    }

    fn count(&self, key: &str, default: usize, min: usize) -> Result<usize, ConfigError> {
        match self.non_blank(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| {
                    self.err(key, format!("expected a whole number ≥ {min}, found `{v}`"))
                }),
        }
    }

    fn seconds(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.non_blank(key) {
            None => Ok(default),
            Some(v) => parse_seconds(v)
                .ok_or_else(|| self.err(key, format!("expected a number of seconds, found `{v}`"))),
        }
    }
}

/// The warning for a `targetServer` that is neither TLS nor on this machine.
fn plain_text_warning(target_server: &str) -> String {
    format!(
        "{}: `{target_server}` is not encrypted: the credentials (token or password) and every \
         message cross the network in plain text; use https:// (or wss://)",
        keys::TARGET_SERVER
    )
}

/// `true/false`, `yes/no`, `on/off`, `1/0`, case-insensitive.
fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn parse_seconds(v: &str) -> Option<Duration> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
}

fn parse_sources(r: &Reader<'_>) -> Result<Vec<String>, ConfigError> {
    let key = keys::SOURCES;
    let raw = r
        .text(key)
        .ok_or_else(|| ConfigError {
            origin: r.origin.to_owned(),
            key: Some(key.to_owned()),
            message: "is missing: list the source names, separated by commas".to_owned(),
        })?
        .trim();
    let names: Vec<String> = if raw.starts_with('[') {
        serde_json::from_str::<Vec<String>>(raw)
            .map_err(|e| {
                r.err(
                    key,
                    format!("looks like a JSON list but is not one of strings: {e}"),
                )
            })?
            .into_iter()
            .map(|s| s.trim().to_owned())
            .collect()
    } else {
        raw.split(',').map(|s| s.trim().to_owned()).collect()
    };
    if names.is_empty() {
        return Err(r.err(key, "lists no source: name at least one"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(r.err(key, format!("source name number {} is empty", i + 1)));
        }
        if !seen.insert(name.as_str()) {
            return Err(r.err(key, format!("source `{name}` is listed twice")));
        }
    }
    Ok(names)
}

fn parse_connect_kw_args(
    r: &Reader<'_>,
) -> Result<(ConnectOptions, serde_json::Map<String, serde_json::Value>), ConfigError> {
    let key = keys::CONNECT_KW_ARGS;
    let mut opts = ConnectOptions::default();
    let Some(raw) = r.non_blank(key).map(str::to_owned) else {
        return Ok((opts, serde_json::Map::new()));
    };
    let value: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| r.err(key, format!("is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(r.err(key, "must be a JSON object"));
    };
    let secs =
        |r: &Reader<'_>, name: &str, v: &serde_json::Value| -> Result<Duration, ConfigError> {
            v.as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| r.err(key, format!("`{name}` must be a number of seconds")))
        };
    for (name, v) in &map {
        match name.as_str() {
            "open_timeout" => opts.open_timeout = Some(secs(r, name, v)?),
            "ping_interval" => {
                opts.ping_interval = Some(match v {
                    serde_json::Value::Null => None,
                    other => Some(secs(r, name, other)?).filter(|d| !d.is_zero()),
                });
            }
            "ping_timeout" => opts.ping_timeout = Some(secs(r, name, v)?),
            "close_timeout" => opts.close_timeout = Some(secs(r, name, v)?),
            _ => {}
        }
    }
    Ok((opts, map))
}

impl ServerConfig {
    /// Parses `server.config` text. `origin` names the file in errors; `env` looks up
    /// environment variables (only `CONNECTOR_AUTH_TOKEN` is consulted).
    ///
    /// # Errors
    /// Malformed properties, a missing or invalid key; the error names `origin` and the key.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let props = Properties::parse(text).map_err(|e| syntax_error(origin, &e))?;
        Self::from_properties(props, origin, env)
    }

    /// Like [`ServerConfig::parse`] for raw file bytes (UTF-8, or ISO-8859-1 as Java reads).
    ///
    /// # Errors
    /// As [`ServerConfig::parse`].
    pub fn parse_bytes(
        bytes: &[u8],
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let props = Properties::parse_bytes(bytes).map_err(|e| syntax_error(origin, &e))?;
        Self::from_properties(props, origin, env)
    }

    /// Builds the configuration from already parsed (or programmatically built) properties.
    ///
    /// # Errors
    /// A missing or invalid key, named in the error with `origin`.
    pub fn from_properties(
        props: Properties,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut r = Reader {
            origin,
            props: &props,
            warnings: Vec::new(),
        };
        let target_server = r
            .non_blank(keys::TARGET_SERVER)
            .ok_or_else(|| ConfigError {
                origin: origin.to_owned(),
                key: Some(keys::TARGET_SERVER.to_owned()),
                message: "is missing: set it to your Vantiq server's URL".to_owned(),
            })?
            .to_owned();
        let target = TargetUrl::parse(&target_server)
            .map_err(|e| r.err(keys::TARGET_SERVER, e.to_string()))?;
        if !target.is_secure() && !target.is_loopback() {
            r.warnings.push(plain_text_warning(&target_server));
        }
        let credentials = if let Some(token) = r.non_blank(keys::AUTH_TOKEN) {
            Credentials::Token(Secret::new(token))
        } else if let Some(token) = env(TOKEN_ENV).filter(|t| !t.trim().is_empty()) {
            Credentials::Token(Secret::new(token.trim()))
        } else if let (Some(u), Some(p)) = (r.non_blank(keys::USERNAME), r.text(keys::PASSWORD)) {
            Credentials::UserPassword {
                username: u.to_owned(),
                password: Secret::new(p),
            }
        } else {
            return Err(ConfigError {
                origin: origin.to_owned(),
                key: Some(keys::AUTH_TOKEN.to_owned()),
                message: format!(
                    "no credentials: set `authToken` here or the environment variable {TOKEN_ENV}"
                ),
            });
        };
        let sources = parse_sources(&r)?;
        let send_pings = r.boolean(keys::SEND_PINGS, true)?;
        let fail_on_connection_error = r.boolean(keys::FAIL_ON_CONNECTION_ERROR, false)?;
        let reconnect_secret = r.non_blank(keys::RECONNECT_SECRET).map(str::to_owned);
        let (connect, connect_kw_args) = parse_connect_kw_args(&r)?;
        let notification_queue_size = r.count(keys::NOTIFICATION_QUEUE_SIZE, 10_000, 1)?;
        let reconnect_initial_delay =
            r.seconds(keys::RECONNECT_INITIAL_DELAY, Duration::from_millis(500))?;
        let reconnect_max_delay = r.seconds(keys::RECONNECT_MAX_DELAY, Duration::from_secs(30))?;
        if reconnect_max_delay < reconnect_initial_delay {
            return Err(r.err(
                keys::RECONNECT_MAX_DELAY,
                format!(
                    "must not be below {} ({reconnect_initial_delay:?})",
                    keys::RECONNECT_INITIAL_DELAY
                ),
            ));
        }
        let warnings = r.warnings;
        Ok(ServerConfig {
            origin: origin.to_owned(),
            target_server,
            target,
            credentials,
            sources,
            send_pings,
            fail_on_connection_error,
            reconnect_secret,
            connect,
            connect_kw_args,
            notification_queue_size,
            reconnect_initial_delay,
            reconnect_max_delay,
            properties: props,
            warnings,
        })
    }

    /// Where this configuration came from (a path, or a name given by the caller).
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `targetServer` as written.
    #[must_use]
    pub fn target_server(&self) -> &str {
        &self.target_server
    }

    /// The normalised WebSocket URL.
    #[must_use]
    pub fn target(&self) -> &TargetUrl {
        &self.target
    }

    /// The credentials (`authToken`, `CONNECTOR_AUTH_TOKEN`, or `username`/`password`).
    #[must_use]
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The source names, in file order.
    #[must_use]
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Whether keep-alive pings are on (`sendPings`, default true).
    #[must_use]
    pub fn send_pings(&self) -> bool {
        self.send_pings
    }

    /// Whether the first connection failure is fatal (`failOnConnectionError`).
    #[must_use]
    pub fn fail_on_connection_error(&self) -> bool {
        self.fail_on_connection_error
    }

    /// The configured reconnect-secret suffix (`reconnectSecret`).
    #[must_use]
    pub fn reconnect_secret(&self) -> Option<&str> {
        self.reconnect_secret.as_deref()
    }

    /// The connection's options from `connectKWArgs`.
    #[must_use]
    pub fn connect_options(&self) -> &ConnectOptions {
        &self.connect
    }

    /// Every option of `connectKWArgs`, as JSON, for the layers that read the others (the
    /// transport's `max_size`, `disableSslVerification`).
    #[must_use]
    pub fn connect_kw_args(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.connect_kw_args
    }

    /// Notifications held per source while disconnected (`notificationQueueSize`).
    #[must_use]
    pub fn notification_queue_size(&self) -> usize {
        self.notification_queue_size
    }

    /// First reconnect delay ceiling (`reconnectInitialDelay`).
    #[must_use]
    pub fn reconnect_initial_delay(&self) -> Duration {
        self.reconnect_initial_delay
    }

    /// Largest reconnect delay (`reconnectMaxDelay`).
    #[must_use]
    pub fn reconnect_max_delay(&self) -> Duration {
        self.reconnect_max_delay
    }

    /// Every key of the file, including those this SDK does not read (for the connector's
    /// own settings).
    #[must_use]
    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// A raw value by key.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key)
    }

    /// A key parsed with [`FromStr`](std::str::FromStr), for the keys other layers (and
    /// connectors) read: `None` when absent or blank; an error naming the file, the key, its
    /// line and `expected` when it does not parse.
    ///
    /// ```
    /// # use vantiq_proto::ServerConfig;
    /// let cfg = ServerConfig::parse(
    ///     "targetServer=https://v\nauthToken=t\nsources=s\nport=80x\n",
    ///     "server.config",
    ///     |_| None,
    /// )
    /// .unwrap();
    /// let e = cfg.parsed::<u16>("port", "a port number").unwrap_err();
    /// assert_eq!(e.to_string(), "server.config: key `port`: expected a port number, found `80x` (line 4)");
    /// assert_eq!(cfg.parsed::<u16>("absent", "a port number").unwrap(), None);
    /// ```
    ///
    /// # Errors
    /// The value does not parse.
    pub fn parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        let r = self.reader();
        match r.non_blank(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| r.err(key, format!("expected {expected}, found `{v}`"))),
        }
    }

    /// A boolean key (`true/false`, `yes/no`, `on/off`, `1/0`), `default` when absent.
    ///
    /// # Errors
    /// Anything else, named with the file, the key and its line.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        self.reader().boolean(key, default)
    }

    /// An error about `key`, naming the file and the key's line, for the layers that validate
    /// their own keys.
    #[must_use]
    pub fn key_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.reader().err(key, message)
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            origin: &self.origin,
            props: &self.properties,
            warnings: Vec::new(),
        }
    }

    /// Things worth a warning in the log: empty values, a `targetServer` that sends the
    /// credentials in plain text (`http://` or `ws://` to a host other than this machine), and
    /// whatever the code that read the file added with [`ServerConfig::add_warning`] (such as
    /// a file holding the token that others can read). The layers that read other keys (the
    /// SDK's transport and health settings) warn about theirs. A connector set logs each once
    /// when it is built.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Adds a warning found outside the text, such as by the code that read the file (its
    /// permissions). It joins [`ServerConfig::warnings`].
    pub fn add_warning(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Replaces the source list (e.g. to run a subset), checking it like the file's.
    ///
    /// # Errors
    /// An empty or duplicate name.
    pub fn set_sources<I, S>(&mut self, sources: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let joined: Vec<String> = sources.into_iter().map(Into::into).collect();
        let mut props = Properties::default();
        props.set(
            keys::SOURCES,
            serde_json::to_string(&joined).unwrap_or_default(),
        );
        let r = Reader {
            origin: &self.origin,
            props: &props,
            warnings: Vec::new(),
        };
        self.sources = parse_sources(&r)?;
        Ok(())
    }
}

fn syntax_error(origin: &str, e: &PropertiesError) -> ConfigError {
    ConfigError {
        origin: origin.to_owned(),
        key: None,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn cfg(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(text, "test/server.config", no_env)
    }

    const BASE: &str = "targetServer=http://localhost:8080\nauthToken=tok\nsources=s1\n";

    #[test]
    fn defaults() {
        let c = cfg(BASE).unwrap();
        assert_eq!(
            c.target().as_str(),
            "ws://localhost:8080/api/v1/wsock/websocket"
        );
        assert_eq!(c.credentials(), &Credentials::Token(Secret::new("tok")));
        assert_eq!(c.sources(), ["s1"]);
        assert!(c.send_pings());
        assert!(!c.fail_on_connection_error());
        assert_eq!(c.reconnect_secret(), None);
        assert_eq!(c.connect_options(), &ConnectOptions::default());
        assert_eq!(c.notification_queue_size(), 10_000);
        assert_eq!(c.reconnect_initial_delay(), Duration::from_millis(500));
        assert_eq!(c.reconnect_max_delay(), Duration::from_secs(30));
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn every_key() {
        let c = cfg(&format!(
            "{BASE}sendPings=FALSE\ntcpProbePort=0\nhealthProbePort=8081\nautoHealth=yes\n\
             failOnConnectionError=true\nreconnectSecret=abc\nnotificationQueueSize=5\n\
             queryChunkBytes=1024\nreconnectInitialDelay=0.25\nreconnectMaxDelay=4\n\
             myOwnKey=mine\n\
             connectKWArgs={{\"disableSslVerification\": true, \"max_size\": null, \
             \"open_timeout\": 3, \"ping_interval\": 5, \"ping_timeout\": 2.5, \
             \"close_timeout\": 1, \"max_queue\": 16}}\nhealthProbeBind=::1\n"
        ))
        .unwrap();
        assert!(!c.send_pings());
        assert!(c.fail_on_connection_error());
        assert_eq!(c.reconnect_secret(), Some("abc"));
        assert_eq!(c.notification_queue_size(), 5);
        assert_eq!(c.reconnect_initial_delay(), Duration::from_millis(250));
        assert_eq!(c.reconnect_max_delay(), Duration::from_secs(4));
        assert_eq!(c.get("myOwnKey"), Some("mine"));
        let o = c.connect_options();
        assert_eq!(o.open_timeout, Some(Duration::from_secs(3)));
        assert_eq!(o.ping_interval, Some(Some(Duration::from_secs(5))));
        assert_eq!(o.ping_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(o.close_timeout, Some(Duration::from_secs(1)));
        // The other options are left to the layers that read them.
        assert_eq!(c.connect_kw_args().len(), 7);
        assert_eq!(c.connect_kw_args()["max_queue"], 16);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        // Keys of other layers are read through the typed accessors.
        assert_eq!(
            c.parsed::<u16>("healthProbePort", "a port").unwrap(),
            Some(8081)
        );
        assert!(c.flag("autoHealth", false).unwrap());
        assert_eq!(
            c.parsed::<std::net::IpAddr>("healthProbeBind", "an IP address")
                .unwrap(),
            Some("::1".parse().unwrap())
        );
    }

    #[test]
    fn reconnect_secret_never_in_debug() {
        let c = cfg(&format!("{BASE}reconnectSecret=RSECRET42")).unwrap();
        assert_eq!(c.reconnect_secret(), Some("RSECRET42"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("RSECRET42"), "{dbg}");
        assert!(
            dbg.contains("reconnect_secret: Some(\"<redacted>\")"),
            "{dbg}"
        );
        let dbg = format!("{:?}", cfg(BASE).unwrap());
        assert!(dbg.contains("reconnect_secret: None"), "{dbg}");
    }

    #[test]
    fn plain_text_target_warns_unless_loopback() {
        for target in [
            "http://dev.vantiq.com",
            "ws://10.1.2.3:8080",
            "HTTP://[2001:db8::1]",
        ] {
            let c = cfg(&format!("targetServer={target}\nauthToken=t\nsources=a")).unwrap();
            assert_eq!(
                c.warnings(),
                [format!(
                    "targetServer: `{target}` is not encrypted: the credentials (token or \
                     password) and every message cross the network in plain text; use https:// \
                     (or wss://)"
                )],
                "{target}"
            );
        }
        // Username and password are credentials too.
        let c =
            cfg("targetServer=http://vantiq.internal\nusername=u\npassword=p\nsources=a").unwrap();
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
        for target in [
            "https://dev.vantiq.com",
            "wss://dev.vantiq.com",
            "dev.vantiq.com",
            "http://localhost:8080",
            "ws://127.0.0.1:8080",
            "http://127.8.9.10",
            "ws://[::1]:8080",
        ] {
            let c = cfg(&format!("targetServer={target}\nauthToken=t\nsources=a")).unwrap();
            assert!(c.warnings().is_empty(), "{target}: {:?}", c.warnings());
        }
    }

    #[test]
    fn added_warnings_join_the_list() {
        let mut c = cfg(&format!("{BASE}sendPings=")).unwrap();
        c.add_warning("the file is readable by others");
        assert_eq!(
            c.warnings(),
            [
                "sendPings is empty; using the default (true)",
                "the file is readable by others"
            ]
        );
    }

    #[test]
    fn token_sources_and_precedence() {
        let env = |k: &str| (k == TOKEN_ENV).then(|| " envtok ".to_owned());
        let c = ServerConfig::parse("targetServer=h\nsources=a", "f", env).unwrap();
        assert_eq!(c.credentials(), &Credentials::Token(Secret::new("envtok")));
        let c = ServerConfig::parse("targetServer=h\nsources=a\nauthToken=file", "f", env).unwrap();
        assert_eq!(c.credentials(), &Credentials::Token(Secret::new("file")));
        // An empty authToken falls back to the environment.
        let c = ServerConfig::parse("targetServer=h\nsources=a\nauthToken=", "f", env).unwrap();
        assert_eq!(c.credentials(), &Credentials::Token(Secret::new("envtok")));
        let c = cfg("targetServer=h\nsources=a\nusername=u\npassword=p").unwrap();
        assert_eq!(
            c.credentials(),
            &Credentials::UserPassword {
                username: "u".into(),
                password: Secret::new("p")
            }
        );
    }

    #[test]
    fn sources_parsing() {
        let c = cfg("targetServer=h\nauthToken=t\nsources= a , b,c d ").unwrap();
        assert_eq!(c.sources(), ["a", "b", "c d"]);
        let c = cfg("targetServer=h\nauthToken=t\nsources=[\"x\", \"y\"]").unwrap();
        assert_eq!(c.sources(), ["x", "y"]);
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases: &[(&str, &str)] = &[
            (
                "authToken=t\nsources=a",
                "test/server.config: key `targetServer`: is missing: set it to your Vantiq server's URL",
            ),
            (
                "targetServer=h\nsources=a",
                "test/server.config: key `authToken`: no credentials: set `authToken` here or the environment variable CONNECTOR_AUTH_TOKEN",
            ),
            (
                "targetServer=h\nauthToken=t",
                "test/server.config: key `sources`: is missing: list the source names, separated by commas",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=a,,b",
                "test/server.config: key `sources`: source name number 2 is empty (line 3)",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=[]",
                "test/server.config: key `sources`: lists no source: name at least one (line 3)",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=a,b,a",
                "test/server.config: key `sources`: source `a` is listed twice (line 3)",
            ),
            (
                "targetServer=ftp://h\nauthToken=t\nsources=a",
                "test/server.config: key `targetServer`: targetServer `ftp://h` is not a usable URL: the scheme must be http, https, ws or wss (line 1)",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=a\nsendPings=maybe",
                "test/server.config: key `sendPings`: expected true or false, found `maybe` (line 4)",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=a\nconnectKWArgs={bad",
                "test/server.config: key `connectKWArgs`: is not valid JSON: key must be a string at line 1 column 2 (line 4)",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=a\nconnectKWArgs=[1]",
                "test/server.config: key `connectKWArgs`: must be a JSON object (line 4)",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=a\nnotificationQueueSize=0",
                "test/server.config: key `notificationQueueSize`: expected a whole number ≥ 1, found `0` (line 4)",
            ),
            (
                "targetServer=h\nauthToken=t\nsources=a\nreconnectMaxDelay=0.1",
                "test/server.config: key `reconnectMaxDelay`: must not be below reconnectInitialDelay (500ms) (line 4)",
            ),
            (
                "a=\\uZZZZ",
                "test/server.config: line 1: malformed \\uXXXX escape `\\uZZZZ`",
            ),
        ];
        for (text, want) in cases {
            let e = cfg(text).unwrap_err();
            assert_eq!(e.to_string(), *want, "for {text:?}");
        }
    }

    #[test]
    fn token_never_in_debug() {
        let c = cfg("targetServer=h\nauthToken=SUPERSECRET\nsources=a\npassword=PW\nusername=u")
            .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("SUPERSECRET"), "{dbg}");
        let c = cfg("targetServer=h\nsources=a\npassword=PW\nusername=u").unwrap();
        assert!(!format!("{c:?}").contains("PW"));
    }

    #[test]
    fn empty_boolean_warns_and_defaults() {
        let c = cfg(&format!("{BASE}sendPings=")).unwrap();
        assert!(c.send_pings());
        assert_eq!(
            c.warnings(),
            ["sendPings is empty; using the default (true)"]
        );
    }
}
