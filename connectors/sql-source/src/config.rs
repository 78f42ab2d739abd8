//! The source configuration (`configureExtension`'s `config` document) and its validation,
//! as Vantiq's Java JDBC source reads it.
//!
//! ```json
//! { "vantiq": { "packageRows": "true" },
//!   "jdbcConfig": { "general": {
//!       "username": "sa", "password": "secret", "dbURL": "jdbc:sqlite:/data/db.sqlite",
//!       "asynchronousProcessing": true, "maxActiveTasks": 5, "maxQueuedTasks": 10,
//!       "pollTime": 3000, "pollQuery": "SELECT * FROM events" } } }
//! ```
//!
//! The rules are the Java connector's: `config`, `config.vantiq`, `config.jdbcConfig` and
//! `jdbcConfig.general` must be objects; `packageRows` must be the *string* `"true"` (any
//! case); `username`, `password` and `dbURL` must be strings; `asynchronousProcessing` counts
//! only when it is the boolean `true`; `maxActiveTasks` and `maxQueuedTasks` count only when
//! they are integers above 0 (else 5 and 10); polling happens only when `pollTime` is an
//! integer above 0 *and* `pollQuery` is a string (anything else is logged and polling stays
//! off, the source itself stays usable).

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::url::{DbTarget, UrlError};

/// Default rows per reply (`bundleFactor`) of a query.
pub const DEFAULT_BUNDLE_FACTOR: usize = 500;
/// Default `maxActiveTasks` (asynchronous processing).
pub const DEFAULT_MAX_ACTIVE_TASKS: usize = 5;
/// Default `maxQueuedTasks` (asynchronous processing).
pub const DEFAULT_MAX_QUEUED_TASKS: usize = 10;

/// A configuration that passed validation.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// The database to connect to (from `dbURL`, `username`, `password`).
    pub target: DbTarget,
    /// How queries and publishes are run.
    pub processing: Processing,
    /// The poll, when `pollTime` and `pollQuery` are both valid.
    pub poll: Option<Poll>,
    /// Problems that did not make the configuration invalid (each is logged).
    pub warnings: Vec<String>,
}

impl fmt::Debug for SourceConfig {
    // `target` redacts the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("target", &self.target)
            .field("processing", &self.processing)
            .field("poll", &self.poll)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// How work is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processing {
    /// One operation at a time, in arrival order (queries and publishes share the line).
    Synchronous,
    /// Up to `max_active` queries (and, separately, publishes) at once, `max_queued` more
    /// waiting; beyond that a query is refused at once.
    Asynchronous {
        /// `maxActiveTasks`.
        max_active: usize,
        /// `maxQueuedTasks`.
        max_queued: usize,
    },
}

impl Processing {
    /// The database pool size: twice `maxActiveTasks` as the Java connector (one share for
    /// queries, one for publishes), and two connections in synchronous mode (the work and
    /// the poll).
    #[must_use]
    pub fn pool_size(&self) -> u32 {
        match self {
            Processing::Synchronous => 2,
            Processing::Asynchronous { max_active, .. } => {
                u32::try_from(max_active.saturating_mul(2)).unwrap_or(u32::MAX)
            }
        }
    }
}

/// The poll: `pollQuery` every `pollTime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// `pollTime`.
    pub every: Duration,
    /// `pollQuery`.
    pub query: String,
}

/// Why a configuration was refused. The text names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `config` is missing or not an object.
    #[error("the source configuration has no `config` object suitable for a JDBC source")]
    NoConfig,
    /// `config.jdbcConfig` or `config.vantiq` is missing or not an object.
    #[error("the configuration must contain the objects `jdbcConfig` and `vantiq`")]
    MissingSections,
    /// `config.jdbcConfig.general` is missing or not an object.
    #[error("`jdbcConfig.general` is missing or not an object: no general options specified")]
    NoGeneral,
    /// `vantiq.packageRows` is not the string `"true"`.
    #[error("`vantiq.packageRows` must be the string \"true\"")]
    PackageRows,
    /// A required string is missing or not a string.
    #[error("`jdbcConfig.general.{0}` is missing or not a string")]
    MissingString(&'static str),
    /// `dbURL` cannot be used.
    #[error("`jdbcConfig.general.dbURL`: {0}")]
    Url(#[from] UrlError),
}

/// Reads and validates the `config` document.
///
/// # Errors
/// [`ConfigError`] naming what is wrong.
pub fn parse(config: &Value) -> Result<SourceConfig, ConfigError> {
    let config = config.as_object().ok_or(ConfigError::NoConfig)?;
    let (Some(jdbc), Some(vantiq)) = (
        config.get("jdbcConfig").and_then(Value::as_object),
        config.get("vantiq").and_then(Value::as_object),
    ) else {
        return Err(ConfigError::MissingSections);
    };
    let general = jdbc
        .get("general")
        .and_then(Value::as_object)
        .ok_or(ConfigError::NoGeneral)?;
    match vantiq.get("packageRows").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("true") => {}
        _ => return Err(ConfigError::PackageRows),
    }
    let username = required_str(general, "username")?;
    let password = required_str(general, "password")?;
    let url = required_str(general, "dbURL")?;
    let target = DbTarget::parse(url, username, password)?;

    let mut warnings = Vec::new();
    let processing = if general.get("asynchronousProcessing") == Some(&Value::Bool(true)) {
        Processing::Asynchronous {
            max_active: positive_int(general, "maxActiveTasks", &mut warnings)
                .unwrap_or(DEFAULT_MAX_ACTIVE_TASKS),
            max_queued: positive_int(general, "maxQueuedTasks", &mut warnings)
                .unwrap_or(DEFAULT_MAX_QUEUED_TASKS),
        }
    } else {
        Processing::Synchronous
    };
    let poll = parse_poll(general, &mut warnings);
    Ok(SourceConfig {
        target,
        processing,
        poll,
        warnings,
    })
}

fn required_str<'a>(
    general: &'a Map<String, Value>,
    key: &'static str,
) -> Result<&'a str, ConfigError> {
    general
        .get(key)
        .and_then(Value::as_str)
        .ok_or(ConfigError::MissingString(key))
}

/// A Java `Integer` (a JSON integer within `i32`) above 0.
fn positive_int(
    general: &Map<String, Value>,
    key: &str,
    warnings: &mut Vec<String>,
) -> Option<usize> {
    let value = general.get(key)?;
    match java_int(value) {
        Some(n) if n > 0 => usize::try_from(n).ok(),
        _ => {
            warnings.push(format!(
                "`jdbcConfig.general.{key}` is {value}, not an integer above 0: the default is used"
            ));
            None
        }
    }
}

/// The value as a Java `Integer` would be read: a JSON integer that fits in 32 bits.
pub(crate) fn java_int(value: &Value) -> Option<i32> {
    value.as_i64().and_then(|n| i32::try_from(n).ok())
}

fn parse_poll(general: &Map<String, Value>, warnings: &mut Vec<String>) -> Option<Poll> {
    let time = general.get("pollTime");
    let query = general.get("pollQuery");
    match (time, query) {
        (None, None) => None,
        (Some(t), q) => {
            let Some(ms) = java_int(t) else {
                warnings.push(format!(
                    "`jdbcConfig.general.pollTime` is {t}, not an integer: polling is off"
                ));
                return None;
            };
            let Some(query) = q.and_then(Value::as_str) else {
                warnings.push(
                    "a `pollQuery` (a string) must be given along with `pollTime`: polling is off"
                        .to_owned(),
                );
                return None;
            };
            let Ok(ms) = u64::try_from(ms) else {
                warnings.push("`pollTime` must be greater than 0: polling is off".to_owned());
                return None;
            };
            if ms == 0 {
                warnings.push("`pollTime` must be greater than 0: polling is off".to_owned());
                return None;
            }
            Some(Poll {
                every: Duration::from_millis(ms),
                query: query.to_owned(),
            })
        }
        (None, Some(_)) => {
            warnings.push(
                "`pollQuery` is set without `pollTime`: polling is off (both are needed)"
                    .to_owned(),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"vantiq": {"packageRows": "TRUE"}, "jdbcConfig": {"general": {
            "username": "u", "password": "p", "dbURL": "jdbc:sqlite:/tmp/x.db"}}})
    }

    fn with(key: &str, v: Value) -> Value {
        let mut c = base();
        c["jdbcConfig"]["general"][key] = v;
        c
    }

    #[test]
    fn defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.processing, Processing::Synchronous);
        assert_eq!(c.poll, None);
        assert!(c.warnings.is_empty());
        let c = parse(&with("asynchronousProcessing", json!(true))).unwrap();
        assert_eq!(
            c.processing,
            Processing::Asynchronous {
                max_active: 5,
                max_queued: 10
            }
        );
        assert_eq!(c.processing.pool_size(), 10);
        // Only the boolean counts, as Java's `instanceof Boolean`.
        let c = parse(&with("asynchronousProcessing", json!("true"))).unwrap();
        assert_eq!(c.processing, Processing::Synchronous);
    }

    #[test]
    fn task_limits_java_integers_only() {
        let mut c = with("asynchronousProcessing", json!(true));
        c["jdbcConfig"]["general"]["maxActiveTasks"] = json!(2);
        c["jdbcConfig"]["general"]["maxQueuedTasks"] = json!(0);
        let p = parse(&c).unwrap();
        assert_eq!(
            p.processing,
            Processing::Asynchronous {
                max_active: 2,
                max_queued: 10
            }
        );
        assert_eq!(p.warnings.len(), 1);
        c["jdbcConfig"]["general"]["maxActiveTasks"] = json!(2.5);
        c["jdbcConfig"]["general"]["maxQueuedTasks"] = json!(1u64 << 40);
        let p = parse(&c).unwrap();
        assert_eq!(
            p.processing,
            Processing::Asynchronous {
                max_active: 5,
                max_queued: 10
            }
        );
    }

    #[test]
    fn refusals_name_the_key() {
        assert_eq!(parse(&json!([])), Err(ConfigError::NoConfig));
        assert_eq!(
            parse(&json!({"vantiq": {"packageRows": "true"}})),
            Err(ConfigError::MissingSections)
        );
        assert_eq!(
            parse(&json!({"vantiq": {"packageRows": "true"}, "jdbcConfig": {}})),
            Err(ConfigError::NoGeneral)
        );
        let mut c = base();
        c["vantiq"]["packageRows"] = json!(true); // a boolean is not the string "true"
        assert_eq!(parse(&c), Err(ConfigError::PackageRows));
        for key in ["username", "password", "dbURL"] {
            let mut c = base();
            c["jdbcConfig"]["general"][key] = json!(1);
            let e = parse(&c).unwrap_err();
            assert_eq!(e, ConfigError::MissingString(key));
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = parse(&with("dbURL", json!("jdbc:oracle:thin:@x"))).unwrap_err();
        assert!(e.to_string().contains("dbURL"), "{e}");
    }

    #[test]
    fn poll_needs_both() {
        let mut c = with("pollTime", json!(250));
        assert_eq!(parse(&c).unwrap().poll, None);
        c["jdbcConfig"]["general"]["pollQuery"] = json!("SELECT 1");
        assert_eq!(
            parse(&c).unwrap().poll,
            Some(Poll {
                every: Duration::from_millis(250),
                query: "SELECT 1".into()
            })
        );
        c["jdbcConfig"]["general"]["pollTime"] = json!(0);
        let p = parse(&c).unwrap();
        assert_eq!(p.poll, None);
        assert!(p.warnings[0].contains("greater than 0"));
        let p = parse(&with("pollQuery", json!("SELECT 1"))).unwrap();
        assert_eq!(p.poll, None);
        assert_eq!(p.warnings.len(), 1);
    }
}
