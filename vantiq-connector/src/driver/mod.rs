//! The driver: one task per source owns its [`Connection`] and performs what it asks.
//!
//! It is made of parts with one job each:
//!
//! * [`link`]: socket I/O (the connect in progress, the open WebSocket, an old socket
//!   finishing its close handshake);
//! * [`runner`]: the handlers, run one at a time from a queue of events bounded in count and
//!   bytes;
//! * [`observer`]: the source's state, published to its handle and to health;
//! * this module: the loop that feeds the connection what happens (commands from the
//!   source's handles, frames, socket ends, time) and hands on what it asks for;
//! * [`Desk`]: the connection, which the handlers this loop polls reach directly (what they
//!   send is applied on the spot, in order with the command queue, with its verdict at once).
//!
//! Written once over [`Runtime`], as a hand-rolled `poll` so that nothing waits on anything
//! else: reading, writing, the timer, the command queue and the handler in progress all
//! make progress in the same turn. Every instant comes from [`Runtime::now`], so a runtime
//! with a virtual clock drives every deadline.
//!
//! Back-pressure, in bytes as well as counts: when the events waiting for the handlers reach
//! their bounds, the socket is not read (TCP pushes back on the server); when the
//! connection's outbox reaches its bound, notifications are not taken from the command queue
//! (their senders wait); frames are taken from the connection only when the socket can take
//! them, so nothing sits between the connection and the transport.

mod link;
mod observer;
mod runner;
mod waker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::Receiver;
use async_tungstenite::tungstenite::Message;
use futures_util::Stream;
use vantiq_health::Health;
use vantiq_proto::{Connection, Event, FatalError, Reply, SocketEnd, Transmit};

use crate::command::Command;
use crate::desk::Desk;
use crate::handler::DynHandler;
use crate::lane::Bounds;
use crate::runtime::{Runtime, Timer};
use crate::source::Source;
pub(crate) use link::LinkSettings;
use link::{Incoming, Link};
use observer::Observer;
use runner::Runner;
use waker::SelfWake;

/// Frames read in one turn before other work gets a chance.
const READ_BATCH: usize = 256;
/// Commands taken in one turn before other work gets a chance.
const COMMAND_BATCH: usize = 1024;
/// Handlers run per turn, so that their replies go out while later events are handled.
const HANDLER_BATCH: usize = 32;
/// Turns of the loop before yielding to the executor.
const TURNS: usize = 32;
/// Deadlines acted on in one turn (each moves every deadline that was due).
const DEADLINE_ROUNDS: usize = 4;

/// Everything a driver needs; built by the connector set.
pub(crate) struct DriverParts<R: Runtime> {
    pub(crate) runtime: R,
    pub(crate) conn: Connection,
    pub(crate) source: Source,
    pub(crate) handler: Arc<dyn DynHandler>,
    pub(crate) events: Bounds,
    pub(crate) shutdown: Receiver<()>,
    pub(crate) link: LinkSettings,
    pub(crate) health: Health,
}

/// The timer, armed at the earliest deadline (lazily: a later deadline leaves it armed
/// earlier, and it is moved when it fires).
struct Clock<R: Runtime> {
    timer: R::Timer,
    armed: Option<Instant>,
}

/// How the driver ends: the connection's outcome, then the handlers' grace.
#[derive(Default)]
struct Ending {
    /// The connection closed: `Some(None)` gracefully, `Some(Some(e))` for a fatal error.
    outcome: Option<Option<FatalError>>,
    /// Handlers still running after the connection closed are cancelled then.
    handlers_deadline: Option<Instant>,
    /// Shutdown was asked for.
    shutting_down: bool,
}

pub(crate) struct Driver<R: Runtime> {
    runtime: R,
    /// The connection, on the desk through which the handlers reach it directly.
    desk: Desk,
    source: Source,
    link: Link<R>,
    runner: Runner,
    observer: Observer,
    shutdown: Pin<Box<Receiver<()>>>,
    clock: Clock<R>,
    ending: Ending,
    wake: SelfWake,
    /// The socket had nothing to read in this poll (its waker is registered): reading it
    /// again before the next poll would only cost a system call on some runtimes.
    read_idle: bool,
}

/// However the driver ends (its task dropped, too), nothing that was accepted vanishes
/// without a word: replies waiting for a verdict get `Closed`, notifications are counted.
impl<R: Runtime> Drop for Driver<R> {
    fn drop(&mut self) {
        if self.desk.conn().state().is_ended() {
            return; // closed: `on_closed` already accounted for everything
        }
        self.source.0.commands.close();
        let left =
            self.drain_commands_after_close() + self.desk.conn().queued_notifications() as u64;
        if left > 0 {
            self.source.add_undelivered(left);
            tracing::warn!(
                undelivered = left,
                "the connector was cancelled with notifications it had accepted and never delivered"
            );
        }
        self.observer.abandoned();
    }
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(parts: DriverParts<R>) -> Self {
        let now = parts.runtime.now();
        let timer = parts.runtime.timer(now + Duration::from_secs(86_400));
        let mut d = Driver {
            link: Link::new(parts.link),
            runner: Runner::new(parts.handler, parts.source.clone(), parts.events),
            observer: Observer::new(parts.source.clone(), parts.health),
            desk: Desk::new(&parts.source, parts.conn),
            source: parts.source,
            shutdown: Box::pin(parts.shutdown),
            clock: Clock { timer, armed: None },
            ending: Ending::default(),
            wake: SelfWake::new(),
            read_idle: false,
            runtime: parts.runtime,
        };
        d.after_input(now);
        d
    }

    /// Runs until the connection has closed and every handler has finished. The future
    /// owns the driver once (an `async fn` taking `self` would store it twice).
    pub(crate) fn run(mut self) -> impl Future<Output = Option<FatalError>> + Send {
        std::future::poll_fn(move |cx| self.poll(cx))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<FatalError>> {
        if R::ABSORB_SELF_WAKES {
            let wake = std::mem::replace(&mut self.wake, SelfWake::new());
            let r = wake.poll(cx, |cx| self.poll_turns(cx));
            self.wake = wake;
            r
        } else {
            self.poll_turns(cx)
        }
    }

    fn poll_turns(&mut self, cx: &mut Context<'_>) -> Poll<Option<FatalError>> {
        self.read_idle = false;
        for _ in 0..TURNS {
            let now = self.runtime.now();
            let mut progress = self.poll_shutdown(cx, now);
            if self.poll_connecting(cx, now) {
                progress = true;
                self.read_idle = false; // perhaps a new socket
            }
            progress |= self.poll_commands(cx, now);
            progress |= self.poll_write(cx, now);
            progress |= self.poll_read(cx, now);
            progress |= self.poll_handlers(cx, now);
            progress |= self.link.poll_closing(cx, now);
            progress |= self.poll_deadlines(cx);
            if let Some(outcome) = self.finished() {
                return Poll::Ready(outcome);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Runs up to [`HANDLER_BATCH`] handlers. What they send reaches the connection at
    /// once: directly while the driver polls them (see `desk`), else through the command
    /// queue, which is taken between handlers, so a handler that waits for the verdict on
    /// its reply can finish (and the next event start) in the same turn.
    fn poll_handlers(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        let mut left = HANDLER_BATCH;
        while left > 0 {
            let ((ran, finished), direct) = self.desk.open(|| self.runner.poll(cx, left));
            if direct {
                self.after_input(now);
            }
            let took = self.poll_commands(cx, now);
            progress |= ran | direct | took;
            if !took {
                break;
            }
            left = left.saturating_sub(finished.max(1));
        }
        progress
    }

    /// The outcome, once the connection closed, every handler finished (or was given up)
    /// and the last socket finished closing.
    fn finished(&mut self) -> Option<Option<FatalError>> {
        if self.ending.outcome.is_none() || !self.runner.is_idle() || !self.link.is_idle() {
            return None;
        }
        self.ending.outcome.take()
    }

    // ---- feeding the connection ------------------------------------------------------------

    /// After every input: hands the connection's events on and publishes its state; true if
    /// there were any. (Transmits are performed by `poll_write`, which runs every turn.)
    fn after_input(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(e) = self.desk.conn().poll_event() {
            any = true;
            match e {
                Event::Configured { config } => {
                    tracing::info!(session = self.desk.conn().session(), "source configured");
                    self.observer
                        .publish(self.desk.conn(), Some(config.clone()));
                    self.runner.push(Event::Configured { config });
                }
                Event::Disconnected { reason } => {
                    tracing::info!(?reason, "session ended");
                    // Queries of the ended session are refused from now on.
                    self.observer.publish(self.desk.conn(), None);
                    self.runner.push(Event::Disconnected { reason });
                }
                Event::Closed { error, undelivered } => self.on_closed(now, error, undelivered),
                e @ (Event::Publish { .. } | Event::Query { .. }) => self.runner.push(e),
            }
        }
        self.observer.publish(self.desk.conn(), None);
        any
    }

    fn on_closed(&mut self, now: Instant, error: Option<FatalError>, undelivered: usize) {
        match &error {
            Some(e) => tracing::error!(error = %e, "connection ended"),
            None => tracing::info!("connection closed"),
        }
        // Nothing more is taken; what the handles queued and the connection never got is
        // counted with what it could not deliver.
        self.source.0.commands.close();
        let left = self.drain_commands_after_close();
        let undelivered = undelivered as u64 + left;
        if undelivered > 0 {
            self.source.add_undelivered(undelivered);
            tracing::warn!(
                undelivered,
                "notifications accepted for this source were never delivered: the connector stopped before the server could take them"
            );
        }
        self.observer.publish(self.desk.conn(), None);
        let grace = self.desk.conn().config().close_timeout;
        self.ending.handlers_deadline = Some(now + grace);
        self.ending.outcome = Some(error);
    }

    /// Empties the closed command queue: replies waiting for a verdict get `Closed`; returns
    /// the number of notifications that were never handed to the connection.
    fn drain_commands_after_close(&mut self) -> u64 {
        let mut notifications = 0;
        while let Some(cmd) = self.source.0.commands.try_recv() {
            match cmd {
                Command::Notify(_) => notifications += 1,
                Command::Reply { link, seq, .. } => {
                    link.set_verdict(seq, Err(vantiq_proto::ReplyError::Closed));
                }
                Command::Abandon { .. } => {}
            }
        }
        notifications
    }

    /// Hands one command to the connection.
    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Notify(n) => {
                if self.desk.conn().notify_encoded(n).is_err() {
                    // Closed: counted with the rest when the connection reports its end.
                    self.source.add_undelivered(1);
                }
            }
            Command::Reply {
                id,
                reply,
                link,
                seq,
            } => {
                let verdict = self.desk.conn().respond(id, reply);
                link.set_verdict(seq, verdict);
            }
            Command::Abandon { id, error } => {
                if self.desk.conn().respond(id, Reply::Error(error)).is_ok() {
                    tracing::debug!(
                        query = id.seq(),
                        "query answered with an error for the application"
                    );
                }
            }
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        if self.ending.shutting_down || self.ending.outcome.is_some() {
            return false;
        }
        if self.shutdown.as_mut().poll_next(cx).is_pending() {
            return false;
        }
        self.ending.shutting_down = true;
        tracing::info!("shutting down");
        // The handles' last commands are taken whatever the bounds (the queue bounds them),
        // and the close timeout bounds how long they may take.
        self.source.0.commands.close();
        self.desk.conn().close(now);
        while let Some(cmd) = self.source.0.commands.try_recv() {
            self.apply(cmd);
        }
        self.after_input(now);
        true
    }

    fn poll_connecting(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Poll::Ready(result) = self.link.poll_connected(cx) else {
            return false;
        };
        match result {
            Ok(()) => self.desk.conn().handle_open(now),
            // Logged by the connection, once per failed attempt, with the back-off.
            Err(e) => self
                .desk
                .conn()
                .handle_closed(now, SocketEnd::ConnectFailed(e)),
        }
        self.after_input(now);
        true
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        for _ in 0..COMMAND_BATCH {
            // Notifications and replies are taken only while the outbox has room in bytes;
            // the command queue behind them then fills and their senders wait.
            let (notify, reply) = (self.desk.conn().can_notify(), self.desk.conn().can_reply());
            let next = self.source.0.commands.poll_recv_if(cx, |c| match c {
                Command::Notify(_) => notify,
                Command::Reply { .. } => reply,
                Command::Abandon { .. } => true,
            });
            let Poll::Ready(Some(cmd)) = next else {
                break;
            };
            progress = true;
            self.apply(cmd);
        }
        if progress {
            self.after_input(now);
        }
        progress
    }

    // ---- the socket --------------------------------------------------------------------------

    /// Performs what the connection asks, taking frames only while the socket takes them,
    /// then flushes (one write for the frames of a turn) and reports how the write side is
    /// doing.
    fn poll_write(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        loop {
            let writable = match self.link.poll_writable(cx) {
                Ok(w) => w,
                Err(e) => {
                    self.socket_failed(now, SocketEnd::Error(e));
                    return true;
                }
            };
            let Some(t) = self.desk.conn().poll_transmit(writable) else {
                break;
            };
            progress = true;
            if let Err(e) = self.perform(now, t) {
                self.socket_failed(now, SocketEnd::Error(e));
                return true;
            }
        }
        if let Err(e) = self.link.poll_flush(cx) {
            self.socket_failed(now, SocketEnd::Error(e));
            return true;
        }
        // A write stall that starts here gets its deadline armed by `poll_deadlines`, later
        // in the same turn.
        if self.link.is_open() {
            let (waiting, progressed) = self.link.write_report();
            self.desk
                .conn()
                .handle_write_status(now, waiting, progressed);
        }
        // Taking transmits can end a graceful close: its events come out too.
        progress | self.after_input(now)
    }

    fn perform(&mut self, now: Instant, t: Transmit) -> Result<(), String> {
        match t {
            Transmit::Connect { url } => {
                self.link.start_connect(self.runtime.clone(), url);
                Ok(())
            }
            Transmit::Frame(text) => self.link.send(Message::text(text)),
            Transmit::Ping { payload } => self.link.send(Message::Ping(payload.to_vec().into())),
            Transmit::Close { code, reason } => {
                self.link.close(now, code, reason);
                Ok(())
            }
            Transmit::Abort => {
                self.link.abort();
                Ok(())
            }
        }
    }

    fn socket_failed(&mut self, now: Instant, end: SocketEnd) {
        self.link.abort();
        if let SocketEnd::Error(e) = &end {
            tracing::warn!(error = %e, "socket error");
        }
        self.desk.conn().handle_closed(now, end);
        self.after_input(now);
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let paused = self.runner.is_full();
        self.desk.conn().set_reading_paused(paused);
        if paused {
            return false;
        }
        let mut progress = false;
        for _ in 0..READ_BATCH {
            if self.runner.is_full() || self.read_idle {
                break;
            }
            let Poll::Ready(incoming) = self.link.poll_read(cx) else {
                self.read_idle = true;
                break;
            };
            progress = true;
            match incoming {
                Incoming::Frame(msg) => {
                    let data = msg.into_data();
                    if let Err(e) = self.desk.conn().handle_frame(now, &data) {
                        tracing::warn!(error = %e, bytes = data.len(), "dropped a frame from the server");
                        tracing::trace!(frame = %String::from_utf8_lossy(&data), "the dropped frame");
                    }
                }
                Incoming::Pong(payload) => self.desk.conn().handle_pong(now, &payload),
                Incoming::Closed { code, reason } => {
                    // The session is over now; the socket finishes its handshake on its own.
                    self.link.peer_closed(now);
                    self.desk
                        .conn()
                        .handle_closed(now, SocketEnd::Closed { code, reason });
                }
                Incoming::Ended => {
                    self.link.abort();
                    let end = SocketEnd::Closed {
                        code: None,
                        reason: "the connection ended".to_owned(),
                    };
                    self.desk.conn().handle_closed(now, end);
                }
                Incoming::Failed(e) => {
                    self.socket_failed(now, SocketEnd::Error(e));
                    continue;
                }
            }
            self.after_input(now);
        }
        progress
    }

    // ---- time ---------------------------------------------------------------------------------

    /// The earliest instant something must happen.
    fn next_deadline(&mut self) -> Option<Instant> {
        [
            self.desk.conn().poll_timeout(),
            self.link.closing_deadline(),
            self.ending.handlers_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        for _ in 0..DEADLINE_ROUNDS {
            let Some(next) = self.next_deadline() else {
                return progress;
            };
            let now = self.runtime.now();
            if next <= now {
                progress = true;
                self.on_deadline(cx, now);
                continue;
            }
            if self.clock.armed.is_none_or(|armed| next < armed) {
                self.clock.timer.reset(next);
                self.clock.armed = Some(next);
            }
            if self.clock.timer.poll_fired(cx).is_pending() {
                return progress;
            }
            // Fired (maybe early, for a deadline that moved): look again.
            self.clock.armed = None;
        }
        true
    }

    fn on_deadline(&mut self, cx: &mut Context<'_>, now: Instant) {
        if self.desk.conn().poll_timeout().is_some_and(|d| d <= now) {
            self.desk.conn().handle_timeout(now);
            self.after_input(now);
        }
        self.link.poll_closing(cx, now);
        if self.ending.handlers_deadline.is_some_and(|d| d <= now) {
            self.ending.handlers_deadline = None;
            self.runner.cancel();
        }
    }
}
