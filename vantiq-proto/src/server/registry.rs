//! [`Registry`]: the state every socket of a server shares.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::backoff::Rng;
use crate::frame::QueryReply;
use crate::json::Json;

use super::{
    ConnectOutcome, ConnectionId, QueryResult, RegistryEvent, ServerConnection, ServerOptions,
};

/// The connection holding a source.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The connection.
    pub connection: ConnectionId,
    /// The `reconnectSecret` it attached with.
    pub secret: Option<String>,
    /// Whether it was sent the current configuration (false while a `reconnectRequired`
    /// waits for its `connectExtension`).
    pub configured: bool,
}

#[derive(Debug)]
struct SourceEntry {
    config: Json,
    holder: Option<Holder>,
    refuse: u32,
    flapping: bool,
}

#[derive(Debug)]
struct PendingQuery {
    deadline: Instant,
    result: QueryResult,
}

/// The server-wide state: sources, which connection holds each, queries in flight.
///
/// See the [module documentation](super) for the calling contract.
#[derive(Debug)]
pub struct Registry {
    options: ServerOptions,
    sources: HashMap<String, SourceEntry>,
    queries: HashMap<String, PendingQuery>,
    rng: Rng,
    next_connection: u64,
    events: VecDeque<RegistryEvent>,
}

impl Registry {
    /// A registry with no sources.
    #[must_use]
    pub fn new(options: ServerOptions) -> Self {
        Registry {
            rng: Rng::new(options.seed ^ 0x0005_E2FE_2000_0001),
            options,
            sources: HashMap::new(),
            queries: HashMap::new(),
            next_connection: 0,
            events: VecDeque::new(),
        }
    }

    /// The options every connection follows.
    #[must_use]
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Changes the options; connections follow the change from their next input.
    pub fn options_mut(&mut self) -> &mut ServerOptions {
        &mut self.options
    }

    /// A new connection for a socket just accepted.
    pub fn accept(&mut self) -> ServerConnection {
        self.next_connection += 1;
        ServerConnection::new(ConnectionId(self.next_connection))
    }

    /// A fresh random UUID-shaped identifier (reply addresses, `address` fields).
    pub fn new_id(&mut self) -> String {
        crate::random_id(&mut self.rng)
    }

    // ---- sources ----------------------------------------------------------------------------

    /// Defines a source and the configuration its `configureExtension` carries; for an
    /// existing source, replaces the configuration (sent from the next `connectExtension`).
    pub fn define_source(&mut self, name: impl Into<String>, config: Json) {
        match self.sources.entry(name.into()) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().config = config,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(SourceEntry {
                    config,
                    holder: None,
                    refuse: 0,
                    flapping: false,
                });
            }
        }
    }

    /// Whether the source is defined.
    #[must_use]
    pub fn has_source(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    /// Every source name, sorted.
    #[must_use]
    pub fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sources.keys().cloned().collect();
        names.sort();
        names
    }

    /// The configuration the next `configureExtension` for `name` carries.
    #[must_use]
    pub fn config(&self, name: &str) -> Option<&Json> {
        self.sources.get(name).map(|s| &s.config)
    }

    /// Replaces the configuration of a defined source. Returns whether it is defined.
    pub fn set_config(&mut self, name: &str, config: Json) -> bool {
        match self.sources.get_mut(name) {
            Some(s) => {
                s.config = config;
                true
            }
            None => false,
        }
    }

    /// The connection that holds the source, if any.
    #[must_use]
    pub fn holder(&self, name: &str) -> Option<&Holder> {
        self.sources.get(name).and_then(|s| s.holder.as_ref())
    }

    /// Answers the next `n` `connectExtension`s for `name` with the error the real server
    /// gives while a source restarts (status 400, "… does not have an associated stream").
    /// Replaces any refusals still pending. Returns whether the source is defined.
    pub fn refuse_connects(&mut self, name: &str, n: u32) -> bool {
        self.sources.get_mut(name).map(|s| s.refuse = n).is_some()
    }

    /// When on, every accepted connection for `name` is dropped right after its
    /// `configureExtension`: a flapping server. Returns whether the source is defined.
    pub fn set_flapping(&mut self, name: &str, on: bool) -> bool {
        self.sources
            .get_mut(name)
            .map(|s| s.flapping = on)
            .is_some()
    }

    // ---- queries ----------------------------------------------------------------------------

    /// Queries without a terminal reply.
    #[must_use]
    pub fn queries_in_flight(&self) -> usize {
        self.queries.len()
    }

    /// Forgets a query; gives what it got so far. Later replies for it are anomalies.
    pub fn cancel_query(&mut self, reply_address: &str) -> Option<QueryResult> {
        self.queries.remove(reply_address).map(|q| q.result)
    }

    /// Forgets every query in flight (the server shuts down).
    pub fn cancel_all_queries(&mut self) {
        self.queries.clear();
    }

    // ---- outputs ----------------------------------------------------------------------------

    /// The next server-wide event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RegistryEvent> {
        self.events.pop_front()
    }

    /// The earliest query deadline, when [`Registry::handle_timeout`] is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queries.values().map(|q| q.deadline).min()
    }

    /// Time has passed: every query past its deadline ends with
    /// [`RegistryEvent::QueryTimedOut`] (oldest deadline first).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due: Vec<(Instant, String)> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(a, q)| (q.deadline, a.clone()))
            .collect();
        due.sort();
        for (_, address) in due {
            if let Some(q) = self.queries.remove(&address) {
                self.events
                    .push_back(RegistryEvent::QueryTimedOut(q.result));
            }
        }
    }

    // ---- used by the connections ------------------------------------------------------------

    /// Decides a `connectExtension` of `conn` for `source`; on success the connection holds
    /// the source, configured, and the configuration to send comes back.
    pub(super) fn attach(
        &mut self,
        conn: ConnectionId,
        source: &str,
        secret: Option<&str>,
    ) -> (ConnectOutcome, Option<(Json, bool)>) {
        let Some(entry) = self.sources.get_mut(source) else {
            return (ConnectOutcome::UnknownSource, None);
        };
        if entry.refuse > 0 {
            entry.refuse -= 1;
            return (ConnectOutcome::RefusedNoStream, None);
        }
        let outcome = match &entry.holder {
            None => ConnectOutcome::Accepted,
            Some(h) if h.connection == conn => ConnectOutcome::Accepted,
            Some(h) if secret.is_some() && h.secret.as_deref() == secret => {
                ConnectOutcome::TookOver
            }
            Some(_) => return (ConnectOutcome::RefusedAlreadyConnected, None),
        };
        let old = entry.holder.replace(Holder {
            connection: conn,
            secret: secret.map(str::to_owned),
            configured: true,
        });
        if let Some(old) = old
            && old.connection != conn
        {
            self.events.push_back(RegistryEvent::Displaced {
                connection: old.connection,
                source: source.to_owned(),
                by: conn,
            });
        }
        (outcome, Some((entry.config.clone(), entry.flapping)))
    }

    /// Lets go of `source` if `conn` holds it. Returns whether it did.
    pub(super) fn release(&mut self, conn: ConnectionId, source: &str) -> bool {
        match self.sources.get_mut(source) {
            Some(entry) if entry.holder.as_ref().is_some_and(|h| h.connection == conn) => {
                entry.holder = None;
                true
            }
            _ => false,
        }
    }

    /// Whether `conn` holds `source` (configured or not).
    pub(super) fn holds(&self, conn: ConnectionId, source: &str) -> bool {
        self.holder(source).is_some_and(|h| h.connection == conn)
    }

    /// Marks the source unconfigured (a `reconnectRequired` was sent), with a new
    /// configuration if given.
    pub(super) fn unconfigure(&mut self, source: &str, config: Option<Json>) {
        if let Some(entry) = self.sources.get_mut(source) {
            if let Some(config) = config {
                entry.config = config;
            }
            if let Some(h) = &mut entry.holder {
                h.configured = false;
            }
        }
    }

    /// Registers a query; returns its reply address.
    pub(super) fn start_query(&mut self, source: &str, deadline: Instant) -> String {
        let address = self.new_id();
        self.queries.insert(
            address.clone(),
            PendingQuery {
                deadline,
                result: QueryResult::new(source.to_owned(), address.clone()),
            },
        );
        address
    }

    /// Records a reply against its query. Gives it back when no query has that address.
    pub(super) fn route_reply(&mut self, reply: QueryReply) -> Result<(), QueryReply> {
        let Some(q) = self.queries.get_mut(&reply.reply_address) else {
            return Err(reply);
        };
        let address = reply.reply_address.clone();
        if q.result.add(reply)
            && let Some(q) = self.queries.remove(&address)
        {
            self.events
                .push_back(RegistryEvent::QueryFinished(q.result));
        }
        Ok(())
    }
}
