//! The driver: one task per source owns its [`Connection`] and socket, feeds the connection
//! everything that happens, performs what it asks, and runs the handlers.
//!
//! Written once over [`Runtime`], as a hand-rolled `poll` so that nothing waits on anything
//! else: reading, writing, the timer, the application's channels and the handler in progress
//! all make progress in the same turn. Back-pressure: when 64 events wait for the handler,
//! the socket is not read (TCP pushes back on the server); when 256 frames wait to be
//! written, the application's channels are not read (their senders wait).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_channel::Receiver;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::protocol::frame::CloseFrame;
use futures_util::future::CatchUnwind;
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt as _, Sink, Stream};
use rustls::ClientConfig;
use vantiq_health::{Health, SourceState};
use vantiq_proto::{
    Connection, ConnectionState, Event, FatalError, Json, QueryId, SocketEnd, Transmit,
};

use crate::handler::{DynHandler, HandlerResult};
use crate::query::{Query, dropped_error, handler_failed_error};
use crate::runtime::{BoxFuture, Runtime, Timer};
use crate::source::{Abandon, Source, SourceChannels};
use crate::transport::{self, Ws};

/// Events waiting for the handler before the socket stops being read.
const MAX_PENDING_EVENTS: usize = 64;
/// Frames waiting to be written before the application's channels stop being read.
const MAX_OUTBOX: usize = 256;
/// Messages read in one turn before other work gets a chance.
const READ_BATCH: usize = 256;
/// Turns of the loop before yielding to the executor.
const TURNS: usize = 32;
/// Time a gracefully closing socket gets to finish its close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Everything a driver needs; built by the connector set.
pub(crate) struct DriverParts<R: Runtime> {
    pub(crate) runtime: R,
    pub(crate) conn: Connection,
    pub(crate) source: Source,
    pub(crate) channels: SourceChannels,
    pub(crate) handler: Arc<dyn DynHandler>,
    pub(crate) shutdown: Receiver<()>,
    pub(crate) tls: Arc<ClientConfig>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) health: Health,
}

struct Running {
    future: CatchUnwind<AssertUnwindSafe<BoxFuture<'static, HandlerResult>>>,
    kind: &'static str,
    query: Option<QueryId>,
}

struct Closing<R: Runtime> {
    ws: Ws<R>,
    outbox: VecDeque<Message>,
    deadline: Instant,
    flushed: bool,
}

impl<R: Runtime> Closing<R> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.outbox.is_empty() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let Some(m) = self.outbox.pop_front() else {
                        break;
                    };
                    if Pin::new(&mut self.ws).start_send(m).is_err() {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.flushed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flushed = true,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Wait for the server's close frame (or the end of the stream).
        loop {
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The waker the driver polls everything with when [`Runtime::ABSORB_SELF_WAKES`] is set.
/// A handler runs inside the driver's task, so when it sends a reply or a notification the
/// channel wakes that very task; on tokio's multi-threaded runtime a task woken while it
/// runs is queued again and a parked worker is woken for it: a futex call, a cross-CPU
/// wake-up and a spurious poll per message. While the driver polls, wakes are only noted
/// (the driver runs another round of turns instead of returning `Pending`); otherwise they
/// go to the task's waker.
#[derive(Default)]
struct TaskWaker {
    polling: AtomicBool,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// Rounds of turns one poll may run when woken during its own poll, before it yields.
const ROUNDS: usize = 4;

pub(crate) struct Driver<R: Runtime> {
    runtime: R,
    conn: Connection,
    source: Source,
    abandon_rx: Pin<Box<Receiver<Abandon>>>,
    shutdown_rx: Pin<Box<Receiver<()>>>,
    shutting_down: bool,
    handler: Arc<dyn DynHandler>,
    tls: Arc<ClientConfig>,
    ws_config: WebSocketConfig,
    connecting: Option<BoxFuture<'static, Result<Ws<R>, String>>>,
    ws: Option<Ws<R>>,
    outbox: VecDeque<Message>,
    need_flush: bool,
    peer_close: Option<(Option<u16>, String)>,
    closing: Option<Closing<R>>,
    events: VecDeque<Event>,
    running: Option<Running>,
    handler_errors: HashMap<QueryId, String>,
    timer: R::Timer,
    timer_at: Option<Instant>,
    last_state: Option<ConnectionState>,
    outcome: Option<Option<FatalError>>,
    health: Health,
    reading_paused: bool,
    wake: Arc<TaskWaker>,
    own_waker: Waker,
}

fn snippet(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data.get(..200).unwrap_or(data));
    if data.len() > 200 {
        format!("{text}… ({} bytes)", data.len())
    } else {
        text.into_owned()
    }
}

/// However the driver ends (its task dropped, too), handles waiting to send learn that
/// nothing will take their values.
impl<R: Runtime> Drop for Driver<R> {
    fn drop(&mut self) {
        self.source.0.notifications.close();
        self.source.0.replies.close();
    }
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(parts: DriverParts<R>) -> Self {
        let far = Instant::now() + Duration::from_secs(86_400);
        let timer = parts.runtime.timer(far);
        let wake = Arc::new(TaskWaker::default());
        let own_waker = Waker::from(wake.clone());
        let mut d = Driver {
            conn: parts.conn,
            source: parts.source,
            abandon_rx: Box::pin(parts.channels.abandon_rx),
            shutdown_rx: Box::pin(parts.shutdown),
            shutting_down: false,
            handler: parts.handler,
            tls: parts.tls,
            ws_config: parts.ws_config,
            connecting: None,
            ws: None,
            outbox: VecDeque::new(),
            need_flush: false,
            peer_close: None,
            closing: None,
            events: VecDeque::new(),
            running: None,
            handler_errors: HashMap::new(),
            timer,
            timer_at: None,
            last_state: None,
            outcome: None,
            health: parts.health,
            reading_paused: false,
            wake,
            own_waker,
            runtime: parts.runtime,
        };
        d.flush_conn(Instant::now());
        d
    }

    /// Runs until the connection has closed and every handler has finished. The future
    /// owns the driver once (an `async fn` taking `self` would store it twice).
    pub(crate) fn run(mut self) -> impl Future<Output = Option<FatalError>> + Send {
        std::future::poll_fn(move |cx| self.poll(cx))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<FatalError>> {
        if !R::ABSORB_SELF_WAKES {
            return self.poll_turns(cx);
        }
        self.wake.task.register(cx.waker());
        let waker = self.own_waker.clone();
        let mut own = Context::from_waker(&waker);
        for _ in 0..ROUNDS {
            self.wake.polling.store(true, Ordering::SeqCst);
            self.wake.woken.store(false, Ordering::SeqCst);
            let r = self.poll_turns(&mut own);
            self.wake.polling.store(false, Ordering::SeqCst);
            match r {
                Poll::Pending if self.wake.woken.swap(false, Ordering::SeqCst) => {}
                r => return r,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_turns(&mut self, cx: &mut Context<'_>) -> Poll<Option<FatalError>> {
        for _ in 0..TURNS {
            let now = Instant::now();
            let mut progress = self.poll_shutdown(cx, now);
            progress |= self.poll_connecting(cx);
            progress |= self.poll_commands(cx);
            progress |= self.poll_write(cx);
            progress |= self.poll_read(cx);
            progress |= self.poll_handlers(cx);
            progress |= self.poll_closing(cx, now);
            progress |= self.poll_timer(cx, now);
            if self.outcome.is_some()
                && self.events.is_empty()
                && self.running.is_none()
                && self.closing.is_none()
            {
                return Poll::Ready(self.outcome.take().flatten());
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Performs everything the connection asks for, in order (the calling contract).
    fn flush_conn(&mut self, now: Instant) {
        while let Some(t) = self.conn.poll_transmit() {
            match t {
                Transmit::Connect { url } => {
                    let fut = transport::connect(
                        self.runtime.clone(),
                        url,
                        self.tls.clone(),
                        self.ws_config,
                    );
                    self.connecting = Some(Box::pin(fut));
                }
                Transmit::Frame(text) => {
                    if self.ws.is_some() {
                        self.outbox.push_back(Message::text(text));
                    }
                }
                Transmit::Ping => {
                    if self.ws.is_some() {
                        self.outbox.push_back(Message::Ping(Default::default()));
                    }
                }
                Transmit::Close { code, reason } => {
                    self.connecting = None;
                    if let Some(ws) = self.ws.take() {
                        let mut outbox = std::mem::take(&mut self.outbox);
                        outbox.push_back(Message::Close(Some(CloseFrame {
                            code: code.into(),
                            reason: reason.into(),
                        })));
                        self.closing = Some(Closing {
                            ws,
                            outbox,
                            deadline: now + CLOSE_GRACE,
                            flushed: false,
                        });
                    }
                    self.need_flush = false;
                }
                Transmit::Abort => {
                    self.connecting = None;
                    self.ws = None;
                    self.need_flush = false;
                    let unsent = self.take_unsent();
                    self.conn.requeue_unsent(unsent);
                }
                other => tracing::warn!(?other, "unknown transmit ignored"),
            }
        }
        while let Some(e) = self.conn.poll_event() {
            self.on_event(e);
        }
        let state = self.conn.state();
        if self.last_state != Some(state) {
            self.publish_state(state, None);
        }
    }

    /// Makes a state change visible: to health first, so that whoever wakes on the
    /// source's state sees health up to date, then to the source handle.
    fn publish_state(&mut self, state: ConnectionState, config: Option<Json>) {
        self.last_state = Some(state);
        let health_state = match state {
            ConnectionState::Configured => SourceState::Configured,
            ConnectionState::Closed => {
                if matches!(self.outcome, Some(Some(_))) {
                    SourceState::Failed
                } else {
                    SourceState::Closed
                }
            }
            ConnectionState::WaitingToReconnect => SourceState::Disconnected,
            _ if self.conn.stats().sessions > 0 => SourceState::Disconnected,
            _ => SourceState::Connecting,
        };
        self.health
            .set_source_state(self.source.name(), health_state);
        let session = if state == ConnectionState::Configured {
            self.conn.session()
        } else {
            0
        };
        self.source.set_state(state, session, config);
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Configured { config } => {
                tracing::info!(session = self.conn.session(), "source configured");
                self.publish_state(ConnectionState::Configured, Some(config.clone()));
                self.events.push_back(Event::Configured { config });
            }
            Event::Disconnected { reason } => {
                tracing::info!(?reason, "session ended");
                self.handler_errors.clear();
                // Queries of the ended session are refused from now on.
                self.publish_state(self.conn.state(), None);
                self.events.push_back(Event::Disconnected { reason });
            }
            Event::Closed { error, undelivered } => {
                match &error {
                    Some(e) => tracing::error!(error = %e, "connection ended"),
                    None => tracing::info!("connection closed"),
                }
                if undelivered > 0 {
                    tracing::warn!(
                        undelivered,
                        "queued notifications could not be delivered before the close deadline"
                    );
                }
                self.source.0.notifications.close();
                self.source.0.replies.close();
                self.outcome = Some(error);
            }
            other => self.events.push_back(other),
        }
    }

    fn input_frame(&mut self, now: Instant, data: &[u8]) {
        if let Err(e) = self.conn.handle_frame(now, data) {
            tracing::warn!(error = %e, frame = %snippet(data), "dropped a frame from the server");
        }
        self.flush_conn(now);
    }

    /// The frames queued for the socket and never handed to it, oldest first.
    fn take_unsent(&mut self) -> Vec<String> {
        self.outbox
            .drain(..)
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    fn socket_failed(&mut self, end: SocketEnd) {
        let now = Instant::now();
        self.ws = None;
        self.need_flush = false;
        // Notifications still waiting for this socket go out with the next session.
        let unsent = self.take_unsent();
        self.conn.requeue_unsent(unsent);
        if let SocketEnd::Error(e) = &end {
            tracing::warn!(error = %e, "socket error");
        }
        self.conn.handle_closed(now, end);
        self.flush_conn(now);
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        if self.shutting_down || self.outcome.is_some() {
            return false;
        }
        match self.shutdown_rx.as_mut().poll_next(cx) {
            Poll::Ready(_) => {
                self.shutting_down = true;
                // Notifications already handed over go first.
                while self.conn.can_notify() {
                    match self.source.0.notifications.try_recv() {
                        Some(json) => {
                            let _ = self.conn.notify(json);
                        }
                        None => break,
                    }
                }
                tracing::info!("shutting down");
                self.conn.close(now);
                self.flush_conn(now);
                true
            }
            Poll::Pending => false,
        }
    }

    fn poll_connecting(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(fut) = self.connecting.as_mut() else {
            return false;
        };
        let Poll::Ready(result) = fut.as_mut().poll(cx) else {
            return false;
        };
        self.connecting = None;
        let now = Instant::now();
        match result {
            Ok(ws) => {
                self.ws = Some(ws);
                self.peer_close = None;
                self.conn.handle_open(now);
            }
            Err(e) => {
                tracing::info!(error = %e, "connect failed");
                self.conn.handle_closed(now, SocketEnd::ConnectFailed(e));
            }
        }
        self.flush_conn(now);
        true
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let now = Instant::now();
        while let Poll::Ready(Some(a)) = self.abandon_rx.as_mut().poll_next(cx) {
            progress = true;
            let error = match self.handler_errors.remove(&a.id) {
                Some(message) => handler_failed_error(self.source.name(), &message),
                None => dropped_error(self.source.name()),
            };
            self.conn.abandon(a.id, a.parts, error);
            self.flush_conn(now);
        }
        while self.outbox.len() < MAX_OUTBOX {
            match self.source.0.replies.poll_recv(cx) {
                Poll::Ready(Some(cmd)) => {
                    progress = true;
                    if let Err(e) = self.conn.respond(cmd.id, cmd.reply) {
                        tracing::debug!(error = %e, "query reply not sent");
                    }
                    self.flush_conn(now);
                }
                _ => break,
            }
        }
        while self.outbox.len() < MAX_OUTBOX && self.conn.can_notify() {
            match self.source.0.notifications.poll_recv(cx) {
                Poll::Ready(Some(json)) => {
                    progress = true;
                    if let Err(e) = self.conn.notify(json) {
                        tracing::warn!(error = %e, "notification not accepted");
                    }
                    self.flush_conn(now);
                }
                _ => break,
            }
        }
        progress
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        let mut sent = false;
        let mut failure = None;
        while !self.outbox.is_empty() {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let Some(m) = self.outbox.pop_front() else {
                        break;
                    };
                    if let Err(e) = Pin::new(&mut *ws).start_send(m) {
                        failure = Some(e.to_string());
                        break;
                    }
                    sent = true;
                }
                Poll::Ready(Err(e)) => {
                    failure = Some(e.to_string());
                    break;
                }
                Poll::Pending => break,
            }
        }
        if failure.is_none() && (sent || self.need_flush) {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => failure = Some(e.to_string()),
                Poll::Pending => self.need_flush = true,
            }
        }
        if let Some(e) = failure {
            self.socket_failed(SocketEnd::Error(e));
            return true;
        }
        sent
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        // No keep-alive deadline while handlers are behind, unless the socket takes no writes
        // either (the queue of frames to write is full): then a peer that does not answer a
        // ping is gone.
        let paused = self.events.len() >= MAX_PENDING_EVENTS && self.outbox.len() < MAX_OUTBOX;
        if paused != self.reading_paused {
            self.reading_paused = paused;
            self.conn.set_reading_paused(paused);
            if paused {
                tracing::debug!("handlers are behind: reading paused");
            }
        }
        let now = Instant::now();
        for _ in 0..READ_BATCH {
            if self.events.len() >= MAX_PENDING_EVENTS {
                break;
            }
            let Some(ws) = self.ws.as_mut() else { break };
            match Pin::new(ws).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(msg))) => {
                    progress = true;
                    match msg {
                        Message::Text(t) => self.input_frame(now, t.as_bytes()),
                        Message::Binary(b) => self.input_frame(now, &b),
                        Message::Pong(_) => {
                            self.conn.handle_pong(now);
                            self.flush_conn(now);
                        }
                        Message::Ping(_) => {
                            // tungstenite queued the pong; it goes out with the next flush.
                            self.need_flush = true;
                            self.conn.handle_pong(now);
                        }
                        Message::Close(frame) => {
                            self.peer_close = Some(match frame {
                                Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                                None => (None, String::new()),
                            });
                            self.need_flush = true;
                        }
                        Message::Frame(_) => {}
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    progress = true;
                    self.socket_failed(SocketEnd::Error(e.to_string()));
                }
                Poll::Ready(None) => {
                    progress = true;
                    let (code, reason) = self
                        .peer_close
                        .take()
                        .unwrap_or((None, "the connection ended".to_owned()));
                    self.socket_failed(SocketEnd::Closed { code, reason });
                }
            }
        }
        progress
    }

    fn start(&mut self, e: Event) -> Option<Running> {
        let source = self.source.clone();
        let handler = self.handler.clone();
        let (future, kind, query): (BoxFuture<'static, HandlerResult>, &'static str, _) = match e {
            Event::Configured { config } => (handler.dyn_connect(source, config), "connect", None),
            Event::Publish { object } => (handler.dyn_publish(source, object), "publish", None),
            Event::Query {
                id,
                params,
                reply_address,
            } => {
                let query = Query::new(id, params, reply_address, source.clone());
                (handler.dyn_query(source, query), "query", Some(id))
            }
            Event::Disconnected { reason } => (handler.dyn_close(source, reason), "close", None),
            _ => return None,
        };
        Some(Running {
            future: AssertUnwindSafe(future).catch_unwind(),
            kind,
            query,
        })
    }

    fn finish(&mut self, running: &Running, result: std::thread::Result<HandlerResult>) {
        let message = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                format!("handler panicked: {text}")
            }
        };
        tracing::warn!(handler = running.kind, error = %message, "handler failed");
        if let Some(id) = running.query {
            self.handler_errors.insert(id, message);
        }
    }

    fn poll_handlers(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            if let Some(running) = self.running.as_mut() {
                let Poll::Ready(result) = Pin::new(&mut running.future).poll(cx) else {
                    return progress;
                };
                progress = true;
                if let Some(done) = self.running.take() {
                    self.finish(&done, result);
                }
            }
            let Some(e) = self.events.pop_front() else {
                return progress;
            };
            progress = true;
            self.running = self.start(e);
        }
    }

    fn poll_closing(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Some(closing) = self.closing.as_mut() else {
            return false;
        };
        if now >= closing.deadline || closing.poll(cx).is_ready() {
            self.closing = None;
            return true;
        }
        false
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut deadline = self.conn.poll_timeout();
        if let Some(c) = &self.closing {
            deadline = Some(deadline.map_or(c.deadline, |d| d.min(c.deadline)));
        }
        let Some(deadline) = deadline else {
            self.timer_at = None;
            return false;
        };
        if self.timer_at != Some(deadline) {
            self.timer.reset(deadline);
            self.timer_at = Some(deadline);
        }
        if deadline <= now || self.timer.poll_fired(cx).is_ready() {
            self.timer_at = None;
            let now = Instant::now();
            self.conn.handle_timeout(now);
            self.flush_conn(now);
            return true;
        }
        false
    }
}
