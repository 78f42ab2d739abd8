//! The server's shared state: the sans-IO [`Registry`] and one [`ServerConnection`] per
//! socket, plus what the test kit records about each source. Everything here is synchronous
//! and does no I/O: the socket tasks feed it what they read and write what it hands them,
//! and the handles drive it with commands.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use vantiq_proto::Json;
use vantiq_proto::frame::ClientFrame;
use vantiq_proto::server::{
    ConnectionId, RawFrame, Registry, RegistryEvent, ServerConnection, ServerError, ServerEvent,
    ServerOptions, ServerTransmit,
};

use crate::error::{Result, TestkitError};
use crate::records::{Anomaly, ConnectAttempt, FrameRecord, QueryResult, Ring, SourceInfo};
use crate::util::lock;

/// The test kit's own options (the protocol's are in [`ServerOptions`]).
#[derive(Debug, Clone)]
pub(crate) struct KitOptions {
    pub(crate) record: bool,
    pub(crate) record_limit: usize,
    pub(crate) print_frames: bool,
    pub(crate) query_timeout: Duration,
}

/// How a query ended, for its waiter.
#[derive(Debug)]
pub(crate) enum QueryOutcome {
    Finished(QueryResult),
    TimedOut(QueryResult),
}

/// What the kit records about one source.
pub(crate) struct SourceRecord {
    pub(crate) changed: Arc<Notify>,
    pub(crate) connect_attempts: u64,
    pub(crate) connections: u64,
    pub(crate) disconnects: u64,
    pub(crate) reconnect_secret: Option<String>,
    pub(crate) notifications: Ring<Json>,
    pub(crate) notification_count: u64,
    pub(crate) cursor: usize,
    pub(crate) frames: Ring<Arc<FrameRecord>>,
    pub(crate) connect_log: Vec<ConnectAttempt>,
    pub(crate) close_frames: Vec<(Option<u16>, String)>,
}

impl SourceRecord {
    fn new(limit: usize) -> Self {
        SourceRecord {
            changed: Arc::new(Notify::new()),
            connect_attempts: 0,
            connections: 0,
            disconnects: 0,
            reconnect_secret: None,
            notifications: Ring::new(limit),
            notification_count: 0,
            cursor: 0,
            frames: Ring::new(limit),
            connect_log: Vec::new(),
            close_frames: Vec::new(),
        }
    }
}

/// One source as a waiter sees it: the kit's record and the registry's view.
pub(crate) struct SourceView<'a> {
    pub(crate) rec: &'a mut SourceRecord,
    pub(crate) connected: bool,
    pub(crate) configured: bool,
    pub(crate) config: Option<&'a Json>,
}

struct Conn {
    conn: ServerConnection,
    writer: mpsc::UnboundedSender<ServerTransmit>,
}

/// Everything behind the hub's lock.
pub(crate) struct Inner {
    pub(crate) registry: Registry,
    conns: HashMap<ConnectionId, Conn>,
    pub(crate) sources: HashMap<String, SourceRecord>,
    pub(crate) frames: Ring<Arc<FrameRecord>>,
    pub(crate) anomalies: Ring<Anomaly>,
    waiters: HashMap<String, oneshot::Sender<QueryOutcome>>,
    /// Sources whose waiters must be woken once the lock is released.
    touched: Vec<Arc<Notify>>,
    log_touched: bool,
    auth_attempts: u64,
}

/// The state shared by the server's tasks and handles.
pub(crate) struct Hub {
    pub(crate) opts: KitOptions,
    inner: std::sync::Mutex<Inner>,
    /// Woken when the server-wide logs or counters change.
    pub(crate) log_changed: Notify,
    pub(crate) sockets_opened: AtomicU64,
    shutdown: watch::Sender<bool>,
    shut_down: AtomicBool,
    tasks: AtomicUsize,
    tasks_done: Notify,
}

impl Hub {
    pub(crate) fn new(
        opts: KitOptions,
        server: ServerOptions,
        sources: Vec<(String, Json)>,
    ) -> Self {
        let mut registry = Registry::new(server);
        let mut records = HashMap::new();
        for (name, config) in sources {
            registry.define_source(name.clone(), config);
            records
                .entry(name)
                .or_insert_with(|| SourceRecord::new(opts.record_limit));
        }
        let (shutdown, _) = watch::channel(false);
        Hub {
            inner: std::sync::Mutex::new(Inner {
                registry,
                conns: HashMap::new(),
                sources: records,
                frames: Ring::new(opts.record_limit),
                anomalies: Ring::new(opts.record_limit),
                waiters: HashMap::new(),
                touched: Vec::new(),
                log_touched: false,
                auth_attempts: 0,
            }),
            opts,
            log_changed: Notify::new(),
            sockets_opened: AtomicU64::new(0),
            shutdown,
            shut_down: AtomicBool::new(false),
            tasks: AtomicUsize::new(0),
            tasks_done: Notify::new(),
        }
    }

    /// Runs `f` under the lock, then wakes whoever waits on what changed.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let (value, touched, log) = {
            let mut inner = lock(&self.inner);
            let value = f(&mut inner);
            let touched = std::mem::take(&mut inner.touched);
            let log = std::mem::take(&mut inner.log_touched);
            (value, touched, log)
        };
        for n in touched {
            n.notify_waiters();
        }
        if log {
            self.log_changed.notify_waiters();
        }
        value
    }

    // ---- lifecycle ----------------------------------------------------------------------------

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    pub(crate) fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn task_started(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(Arc::clone(self))
    }

    /// Waits until every socket task ended, at most `limit`.
    pub(crate) async fn wait_tasks(&self, limit: Duration) {
        let deadline = crate::util::deadline_after(limit);
        loop {
            let done = self.tasks_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.tasks.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return;
            }
        }
    }

    /// Stops everything: every socket is dropped abruptly (as a crashed server's), every
    /// source released, queries in flight fail with [`TestkitError::ServerGone`].
    pub(crate) fn shut_down(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.with(|inner| {
            let ids: Vec<ConnectionId> = inner.conns.keys().copied().collect();
            for id in ids {
                if let Some(c) = inner.conns.get_mut(&id) {
                    c.conn.abort(&mut inner.registry);
                }
                inner.pump(id, &self.opts);
            }
            inner.registry.cancel_all_queries();
            inner.waiters.clear();
            inner.log_touched = true;
            for rec in inner.sources.values() {
                inner.touched.push(Arc::clone(&rec.changed));
            }
        });
        self.shutdown.send_replace(true);
    }

    /// Closes every connection cleanly with `code` (1001: the server is going away);
    /// the server goes on accepting. Returns how many connections were closed.
    pub(crate) fn close_all(&self, code: u16, reason: &str) -> usize {
        self.with(|inner| {
            let ids: Vec<ConnectionId> = inner.conns.keys().copied().collect();
            let mut n = 0;
            for id in ids {
                if let Some(c) = inner.conns.get_mut(&id)
                    && c.conn.is_open()
                {
                    c.conn.close(&mut inner.registry, code, reason);
                    n += 1;
                }
                inner.pump(id, &self.opts);
            }
            n
        })
    }

    /// Open sockets.
    pub(crate) fn connection_count(&self) -> usize {
        self.with(|inner| inner.conns.len())
    }

    // ---- socket inputs --------------------------------------------------------------------------

    /// A socket was accepted: its connection id and the channel of what to write on it.
    pub(crate) fn register(&self) -> (ConnectionId, mpsc::UnboundedReceiver<ServerTransmit>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.with(|inner| {
            let conn = inner.registry.accept();
            let id = conn.id();
            inner.conns.insert(id, Conn { conn, writer: tx });
            inner.log_touched = true;
            id
        });
        self.sockets_opened.fetch_add(1, Ordering::Relaxed);
        (id, rx)
    }

    pub(crate) fn on_frame(&self, id: ConnectionId, data: &[u8]) {
        self.with(|inner| {
            if let Some(c) = inner.conns.get_mut(&id) {
                // An undecodable frame is reported as an anomaly event too.
                let _ = c
                    .conn
                    .handle_frame(Instant::now(), &mut inner.registry, data);
            }
            inner.pump(id, &self.opts);
        });
    }

    pub(crate) fn on_close_frame(&self, id: ConnectionId, code: Option<u16>, reason: &str) {
        self.with(|inner| {
            if let Some(c) = inner.conns.get_mut(&id) {
                c.conn
                    .handle_close_frame(Instant::now(), &mut inner.registry, code, reason);
            }
            inner.pump(id, &self.opts);
        });
    }

    /// The socket ended: the connection is forgotten.
    pub(crate) fn on_closed(&self, id: ConnectionId) {
        self.with(|inner| {
            if let Some(c) = inner.conns.get_mut(&id) {
                c.conn.handle_closed(Instant::now(), &mut inner.registry);
            }
            inner.pump(id, &self.opts);
            inner.conns.remove(&id);
            inner.log_touched = true;
        });
    }

    // ---- commands on a source -------------------------------------------------------------------

    /// Runs `f` on the connection holding `name` (configured, when `configured` is set).
    fn on_holder<T>(
        &self,
        name: &str,
        configured: bool,
        f: impl FnOnce(&mut Inner, ConnectionId) -> std::result::Result<T, ServerError>,
    ) -> Result<T> {
        let not_connected = || TestkitError::NotConnected {
            source_name: name.to_owned(),
        };
        self.with(|inner| {
            if !inner.registry.has_source(name) {
                return Err(TestkitError::UnknownSource {
                    name: name.to_owned(),
                });
            }
            let holder = inner
                .registry
                .holder(name)
                .filter(|h| h.configured || !configured)
                .map(|h| h.connection)
                .filter(|id| inner.conns.contains_key(id))
                .ok_or_else(not_connected)?;
            let value = f(inner, holder).map_err(|_| not_connected())?;
            inner.pump(holder, &self.opts);
            Ok(value)
        })
    }

    pub(crate) fn publish(&self, name: &str, object: Json) -> Result<()> {
        self.on_holder(name, true, |inner, id| {
            let (conn, reg) = inner.conn(id)?;
            conn.publish(reg, object)
        })
    }

    /// Sends a query; its outcome arrives on the receiver.
    pub(crate) fn start_query(
        &self,
        name: &str,
        params: Json,
        now: Instant,
        timeout: Duration,
    ) -> Result<(String, oneshot::Receiver<QueryOutcome>)> {
        let (tx, rx) = oneshot::channel();
        let address = self.on_holder(name, true, |inner, id| {
            let (conn, reg) = inner.conn(id)?;
            let address = conn.query(now, reg, params, timeout)?;
            inner.waiters.insert(address.clone(), tx);
            Ok(address)
        })?;
        Ok((address, rx))
    }

    /// Ends every query whose deadline has passed.
    pub(crate) fn expire_queries(&self, now: Instant) {
        self.with(|inner| {
            inner.registry.handle_timeout(now);
            inner.pump_registry(&self.opts);
        });
    }

    pub(crate) fn reconnect_required(&self, name: &str, config: Option<Json>) -> Result<()> {
        let mut config = config;
        let r = self.on_holder(name, false, |inner, id| {
            let (conn, reg) = inner.conn(id)?;
            conn.reconnect_required(reg, config.take())
        });
        if let (Err(TestkitError::NotConnected { .. }), Some(config)) = (&r, config) {
            self.with(|inner| inner.registry.set_config(name, config));
        }
        r
    }

    pub(crate) fn drop_connection(&self, name: &str) -> Result<()> {
        self.on_holder(name, false, |inner, id| {
            let (conn, reg) = inner.conn(id)?;
            conn.abort(reg);
            Ok(())
        })
    }

    pub(crate) fn close_source(&self, name: &str, code: u16, reason: &str) -> Result<()> {
        self.on_holder(name, false, |inner, id| {
            let (conn, reg) = inner.conn(id)?;
            conn.close(reg, code, reason);
            Ok(())
        })
    }

    pub(crate) fn send_raw(&self, name: &str, frame: RawFrame) -> Result<()> {
        self.on_holder(name, false, |inner, id| inner.conn(id)?.0.send_raw(frame))
    }

    // ---- sources ------------------------------------------------------------------------------

    /// Defines a source, or replaces its configuration.
    pub(crate) fn define_source(&self, name: &str, config: Json) {
        self.with(|inner| {
            inner.registry.define_source(name, config);
            inner
                .sources
                .entry(name.to_owned())
                .or_insert_with(|| SourceRecord::new(self.opts.record_limit));
        });
    }

    /// Runs `f` on one source's view; `None` for an unknown source.
    pub(crate) fn view<T>(&self, name: &str, f: impl FnOnce(SourceView<'_>) -> T) -> Option<T> {
        self.with(|inner| {
            let holder = inner.registry.holder(name).cloned();
            let config = inner.registry.config(name);
            let rec = inner.sources.get_mut(name)?;
            Some(f(SourceView {
                rec,
                connected: holder.is_some(),
                configured: holder.is_some_and(|h| h.configured),
                config,
            }))
        })
    }

    pub(crate) fn info(&self, name: &str) -> Option<SourceInfo> {
        self.view(name, |v| SourceInfo {
            name: name.to_owned(),
            connected: v.connected,
            configured: v.configured,
            reconnect_secret: v.rec.reconnect_secret.clone(),
            connections: v.rec.connections,
            connect_attempts: v.rec.connect_attempts,
            notifications: v.rec.notification_count,
        })
    }

    /// Every source's summary, sorted by name.
    pub(crate) fn infos(&self) -> Vec<SourceInfo> {
        let names = self.with(|inner| inner.registry.source_names());
        names.iter().filter_map(|n| self.info(n)).collect()
    }

    pub(crate) fn changed(&self, name: &str) -> Option<Arc<Notify>> {
        self.with(|inner| inner.sources.get(name).map(|r| Arc::clone(&r.changed)))
    }

    pub(crate) fn set_refusals(&self, name: &str, n: u32) {
        self.with(|inner| inner.registry.refuse_connects(name, n));
    }

    pub(crate) fn set_flapping(&self, name: &str, on: bool) {
        self.with(|inner| inner.registry.set_flapping(name, on));
    }

    pub(crate) fn auth_attempts(&self) -> u64 {
        self.with(|inner| inner.auth_attempts)
    }

    pub(crate) fn cancel_query(&self, address: &str) -> Option<QueryResult> {
        self.with(|inner| {
            inner.waiters.remove(address);
            inner.registry.cancel_query(address)
        })
    }
}

impl Inner {
    /// A connection and the registry, borrowed together.
    fn conn(
        &mut self,
        id: ConnectionId,
    ) -> std::result::Result<(&mut ServerConnection, &mut Registry), ServerError> {
        match self.conns.get_mut(&id) {
            Some(c) => Ok((&mut c.conn, &mut self.registry)),
            None => Err(ServerError::Closed { connection: id }),
        }
    }

    /// Moves the output of connection `id` and of the registry where it belongs.
    fn pump(&mut self, id: ConnectionId, opts: &KitOptions) {
        let mut queue = vec![id];
        while let Some(id) = queue.pop() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            while let Some(t) = c.conn.poll_transmit() {
                if opts.print_frames {
                    print_transmit(id, &t);
                }
                // The socket task may be gone already; nothing to do then.
                let _ = c.writer.send(t);
            }
            let mut events = Vec::new();
            while let Some(e) = c.conn.poll_event() {
                events.push(e);
            }
            let held = c.conn.source(&self.registry);
            for e in events {
                self.record(id, held.as_deref(), e, opts);
            }
            while let Some(e) = self.registry.poll_event() {
                if let RegistryEvent::Displaced {
                    connection, source, ..
                } = &e
                {
                    if let Some(rec) = self.sources.get_mut(source) {
                        rec.disconnects += 1;
                        self.touched.push(Arc::clone(&rec.changed));
                    }
                    if let Some(old) = self.conns.get_mut(connection) {
                        old.conn.abort(&mut self.registry);
                        queue.push(*connection);
                    }
                }
                self.on_registry_event(e);
            }
        }
    }

    fn pump_registry(&mut self, opts: &KitOptions) {
        while let Some(e) = self.registry.poll_event() {
            if let RegistryEvent::Displaced { connection, .. } = &e {
                let connection = *connection;
                self.on_registry_event(e);
                self.pump(connection, opts);
            } else {
                self.on_registry_event(e);
            }
        }
    }

    fn on_registry_event(&mut self, e: RegistryEvent) {
        match e {
            RegistryEvent::QueryFinished(result) => {
                if let Some(w) = self.waiters.remove(&result.reply_address) {
                    let _ = w.send(QueryOutcome::Finished(result));
                }
            }
            RegistryEvent::QueryTimedOut(result) => {
                if let Some(w) = self.waiters.remove(&result.reply_address) {
                    let _ = w.send(QueryOutcome::TimedOut(result));
                }
            }
            _ => {}
        }
    }

    /// Records one connection event.
    fn record(&mut self, id: ConnectionId, held: Option<&str>, e: ServerEvent, opts: &KitOptions) {
        match e {
            ServerEvent::Frame { frame, source } => {
                if !opts.record {
                    return;
                }
                let record = Arc::new(FrameRecord {
                    connection: id.0,
                    at: Instant::now(),
                    frame,
                });
                if let Some(rec) = source.and_then(|s| self.sources.get_mut(&s)) {
                    // Notifications are recorded with the notification itself, in order.
                    rec.frames.push(Arc::clone(&record));
                }
                self.frames.push(record);
            }
            ServerEvent::Auth { .. } => {
                self.auth_attempts += 1;
                self.log_touched = true;
            }
            ServerEvent::ConnectAttempt {
                source,
                reconnect_secret,
                outcome,
            } => {
                let Some(rec) = self.sources.get_mut(&source) else {
                    return;
                };
                rec.connect_attempts += 1;
                if outcome.is_accepted() {
                    rec.connections += 1;
                    rec.reconnect_secret.clone_from(&reconnect_secret);
                }
                rec.connect_log.push(ConnectAttempt {
                    at: Instant::now(),
                    connection: id.0,
                    reconnect_secret,
                    outcome,
                });
                self.touched.push(Arc::clone(&rec.changed));
            }
            ServerEvent::Notification { source, object } => {
                if let Some(rec) = self.sources.get_mut(&source) {
                    rec.notification_count += 1;
                    if opts.record {
                        rec.notifications.push(object);
                    }
                    self.touched.push(Arc::clone(&rec.changed));
                }
            }
            ServerEvent::Detached { source } => {
                if let Some(rec) = self.sources.get_mut(&source) {
                    rec.disconnects += 1;
                    self.touched.push(Arc::clone(&rec.changed));
                }
            }
            ServerEvent::PeerClosed {
                code,
                reason,
                source,
            } => {
                if let Some(rec) = source.and_then(|s| self.sources.get_mut(&s)) {
                    rec.close_frames.push((code, reason));
                    self.touched.push(Arc::clone(&rec.changed));
                }
            }
            ServerEvent::Anomaly(kind) => {
                tracing::warn!(
                    connection = id.0,
                    ?kind,
                    "testkit: unexpected input from a connector"
                );
                if opts.print_frames {
                    print_line(format_args!("!! [conn {}] anomaly: {kind:?}", id.0));
                }
                self.anomalies.push(Anomaly {
                    connection: id.0,
                    source: held.map(str::to_owned),
                    kind,
                });
                self.log_touched = true;
            }
            ServerEvent::Closed if opts.print_frames => {
                print_line(format_args!("-- [conn {}] ended", id.0));
            }
            _ => {}
        }
    }
}

/// Counts a running socket task; the count drops when the guard does.
pub(crate) struct TaskGuard(Arc<Hub>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.tasks_done.notify_waiters();
        }
    }
}

fn print_transmit(id: ConnectionId, t: &ServerTransmit) {
    match t {
        ServerTransmit::Text(text) => print_line(format_args!("-> [conn {}] {text}", id.0)),
        ServerTransmit::Binary(b) => print_line(format_args!(
            "-> [conn {}] (binary) {}",
            id.0,
            String::from_utf8_lossy(b)
        )),
        other => print_line(format_args!("-> [conn {}] {other:?}", id.0)),
    }
}

/// Prints a frame received, tokens and passwords redacted.
pub(crate) fn print_received(id: ConnectionId, data: &[u8], binary: bool) {
    match ClientFrame::decode(data) {
        Ok(f @ (ClientFrame::Validate { .. } | ClientFrame::Authenticate { .. })) => {
            print_line(format_args!("<- [conn {}] {f:?}", id.0));
        }
        _ => print_line(format_args!(
            "<- [conn {}] {}{}",
            id.0,
            if binary { "(binary) " } else { "" },
            String::from_utf8_lossy(data)
        )),
    }
}

pub(crate) fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
