//! Health state: the tri-state, the sources, and the JSON the HTTP probe answers with.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vantiq_proto::ConnectionState;
use vantiq_proto::json::push_json_string;

use crate::HealthError;
use crate::sync::lock;

/// The connector's readiness: the set-wide tri-state (`docs/design.md#d17-health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// Neither `declare_healthy` nor `declare_unhealthy` has succeeded yet.
    NeverDeclared,
    /// Declared healthy: the TCP probe is open and `/readyz` answers 200.
    Ready,
    /// Declared unhealthy: the TCP probe is closed and `/readyz` answers 503.
    NotReady,
}

impl Readiness {
    /// From [`Health::is_healthy`](crate::Health::is_healthy)'s tri-state.
    pub fn from_healthy(healthy: Option<bool>) -> Self {
        match healthy {
            None => Readiness::NeverDeclared,
            Some(true) => Readiness::Ready,
            Some(false) => Readiness::NotReady,
        }
    }

    /// `"never declared"`, `"ready"` or `"not ready"` (the `status` of `/readyz`).
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::NeverDeclared => "never declared",
            Readiness::Ready => "ready",
            Readiness::NotReady => "not ready",
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the health state, from [`Health::report`](crate::Health::report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The tri-state: `None` never declared, `Some(true)` healthy, `Some(false)` unhealthy.
    pub healthy: Option<bool>,
    /// Whether the connector's loop runs (what `/healthz` reports).
    pub alive: bool,
    /// Every registered source and its state, sorted by name.
    pub sources: Vec<(String, ConnectionState)>,
    /// The port the TCP probe listens on, while it is open.
    pub tcp_probe_port: Option<u16>,
    /// The port the HTTP probe listens on, while it runs.
    pub http_probe_port: Option<u16>,
}

impl HealthReport {
    /// The readiness the tri-state stands for.
    pub fn readiness(&self) -> Readiness {
        Readiness::from_healthy(self.healthy)
    }

    /// The body of `GET /readyz`, e.g.
    /// `{"status":"ready","sources":{"a":"configured","b":"configured"}}`; `status` is one of
    /// `ready`, `not ready`, `never declared`.
    pub fn readyz_json(&self) -> String {
        let mut out = String::with_capacity(48 + 32 * self.sources.len());
        out.push_str("{\"status\":");
        push_json_string(&mut out, self.readiness().as_str());
        out.push_str(",\"sources\":{");
        for (i, (name, state)) in self.sources.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, name);
            out.push(':');
            push_json_string(&mut out, state.as_str());
        }
        out.push_str("}}");
        out
    }

    /// The body of `GET /healthz`: `{"status":"alive"}` or `{"status":"not alive"}`.
    pub fn healthz_json(&self) -> String {
        let status = if self.alive { "alive" } else { "not alive" };
        format!("{{\"status\":\"{status}\"}}")
    }
}

/// The mutable health state, shared with the HTTP probe's threads.
#[derive(Debug)]
pub(crate) struct Data {
    pub(crate) healthy: Option<bool>,
    pub(crate) alive: bool,
    pub(crate) sources: BTreeMap<String, ConnectionState>,
    pub(crate) tcp_port: Option<u16>,
    pub(crate) http_port: Option<u16>,
    pub(crate) last_error: Option<HealthError>,
}

impl Data {
    pub(crate) fn snapshot(&self) -> HealthReport {
        HealthReport {
            healthy: self.healthy,
            alive: self.alive,
            sources: self
                .sources
                .iter()
                .map(|(name, state)| (name.clone(), *state))
                .collect(),
            tcp_probe_port: self.tcp_port,
            http_probe_port: self.http_port,
        }
    }

    /// Automatic mode's rule: at least one source, and every source configured.
    pub(crate) fn all_configured(&self) -> bool {
        !self.sources.is_empty()
            && self
                .sources
                .values()
                .all(|s| *s == ConnectionState::Configured)
    }
}

/// Counts the probe threads that are running.
#[derive(Debug, Default)]
pub(crate) struct ThreadCount(AtomicUsize);

impl ThreadCount {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts one more thread until the token is dropped.
    pub(crate) fn token(self: &Arc<Self>) -> ThreadToken {
        self.0.fetch_add(1, Ordering::SeqCst);
        ThreadToken(Arc::clone(self))
    }
}

/// Held by a running probe thread; uncounts it when dropped.
#[derive(Debug)]
pub(crate) struct ThreadToken(Arc<ThreadCount>);

impl Drop for ThreadToken {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the probe threads share with [`Health`](crate::Health) (never the `Health` itself, so
/// that dropping the last `Health` stops them).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) data: Mutex<Data>,
    pub(crate) threads: Arc<ThreadCount>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            data: Mutex::new(Data {
                healthy: None,
                alive: true,
                sources: BTreeMap::new(),
                tcp_port: None,
                http_port: None,
                last_error: None,
            }),
            threads: Arc::new(ThreadCount::default()),
        }
    }

    pub(crate) fn snapshot(&self) -> HealthReport {
        lock(&self.data).snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(healthy: Option<bool>, sources: &[(&str, ConnectionState)]) -> HealthReport {
        HealthReport {
            healthy,
            alive: true,
            sources: sources.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            tcp_probe_port: None,
            http_probe_port: None,
        }
    }

    #[test]
    fn source_state_names() {
        let all = [
            (ConnectionState::Connecting, "connecting"),
            (ConnectionState::Configured, "configured"),
            (ConnectionState::WaitingToReconnect, "waiting to reconnect"),
            (ConnectionState::Refused, "refused by the server"),
            (ConnectionState::Closed, "closed"),
            (ConnectionState::Failed, "failed"),
        ];
        for (state, name) in all {
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
        }
    }

    #[test]
    fn readiness_from_tri_state() {
        assert_eq!(Readiness::from_healthy(None), Readiness::NeverDeclared);
        assert_eq!(Readiness::from_healthy(Some(true)), Readiness::Ready);
        assert_eq!(Readiness::from_healthy(Some(false)), Readiness::NotReady);
        assert_eq!(Readiness::NeverDeclared.to_string(), "never declared");
        assert_eq!(Readiness::NotReady.to_string(), "not ready");
    }

    #[test]
    fn readyz_json_bodies() {
        assert_eq!(
            status(None, &[]).readyz_json(),
            r#"{"status":"never declared","sources":{}}"#
        );
        assert_eq!(
            status(
                Some(true),
                &[
                    ("a", ConnectionState::Configured),
                    ("b", ConnectionState::Configured)
                ]
            )
            .readyz_json(),
            r#"{"status":"ready","sources":{"a":"configured","b":"configured"}}"#
        );
        assert_eq!(
            status(Some(false), &[("a", ConnectionState::WaitingToReconnect)]).readyz_json(),
            r#"{"status":"not ready","sources":{"a":"waiting to reconnect"}}"#
        );
    }

    #[test]
    fn healthz_json_bodies() {
        let mut s = status(None, &[]);
        assert_eq!(s.healthz_json(), r#"{"status":"alive"}"#);
        s.alive = false;
        assert_eq!(s.healthz_json(), r#"{"status":"not alive"}"#);
    }

    #[test]
    fn source_names_are_escaped_in_readyz() {
        // The core's escaper, as serde_json escapes: DEL and non-ASCII stay as they are.
        let name = "a\"b\\c\nd\u{1}e\u{7f}é";
        assert_eq!(
            status(Some(true), &[(name, ConnectionState::Configured)]).readyz_json(),
            "{\"status\":\"ready\",\"sources\":{\"a\\\"b\\\\c\\nd\\u0001e\u{7f}é\":\"configured\"}}"
        );
    }

    #[test]
    fn all_configured_needs_a_source() {
        let shared = Shared::new();
        let mut d = lock(&shared.data);
        assert!(!d.all_configured());
        d.sources.insert("a".into(), ConnectionState::Configured);
        assert!(d.all_configured());
        d.sources.insert("b".into(), ConnectionState::Connecting);
        assert!(!d.all_configured());
    }

    #[test]
    fn thread_tokens_count() {
        let count = Arc::new(ThreadCount::default());
        let a = count.token();
        let b = count.token();
        assert_eq!(count.get(), 2);
        drop(a);
        assert_eq!(count.get(), 1);
        drop(b);
        assert_eq!(count.get(), 0);
    }
}
