//! The handler runner: the events waiting for the application (bounded by count and bytes)
//! and the one handler that runs at a time, inside the source's task.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::future::CatchUnwind;
use vantiq_proto::{Event, QueryId};

use crate::command::{Command, QueryLink};
use crate::handler::{DynHandler, HandlerResult};
use crate::lane::Bounds;
use crate::query::{Query, dropped_error, handler_failed_error};
use crate::runtime::BoxFuture;
use crate::source::Source;

/// A handler in progress.
struct Running {
    future: CatchUnwind<AssertUnwindSafe<BoxFuture<'static, HandlerResult>>>,
    kind: &'static str,
    /// For a query handler: the query, to answer it if the handler drops it unfinished.
    query: Option<(QueryId, Arc<QueryLink>)>,
}

/// Events for the handlers, run one at a time in the order they came.
pub(super) struct Runner {
    handler: Arc<dyn DynHandler>,
    source: Source,
    queue: VecDeque<Event>,
    queued_bytes: usize,
    bounds: Bounds,
    running: Option<Running>,
}

/// Bytes an event holds.
fn event_bytes(e: &Event) -> usize {
    match e {
        Event::Configured { config } => config.len(),
        Event::Publish { object } => object.len(),
        Event::Query {
            params,
            reply_address,
            ..
        } => params.len() + reply_address.len(),
        Event::Disconnected { .. } | Event::Closed { .. } => 0,
    }
}

impl Runner {
    pub(super) fn new(handler: Arc<dyn DynHandler>, source: Source, bounds: Bounds) -> Self {
        Runner {
            handler,
            source,
            queue: VecDeque::new(),
            queued_bytes: 0,
            bounds,
            running: None,
        }
    }

    /// Queues an event for its handler.
    pub(super) fn push(&mut self, e: Event) {
        self.queued_bytes += event_bytes(&e);
        self.queue.push_back(e);
    }

    /// Whether the waiting events reached their bounds: stop reading the socket.
    pub(super) fn is_full(&self) -> bool {
        self.queue.len() >= self.bounds.count || self.queued_bytes >= self.bounds.bytes
    }

    /// No handler runs and no event waits.
    pub(super) fn is_idle(&self) -> bool {
        self.running.is_none() && self.queue.is_empty()
    }

    /// Runs handlers until one waits, no event is left, or `max` have finished. Returns
    /// whether anything happened and how many finished.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, max: usize) -> (bool, usize) {
        let mut progress = false;
        let mut finished = 0;
        loop {
            if let Some(running) = self.running.as_mut() {
                let Poll::Ready(result) = Pin::new(&mut running.future).poll(cx) else {
                    return (progress, finished);
                };
                progress = true;
                finished += 1;
                if let Some(done) = self.running.take() {
                    self.finish(done, result);
                }
            }
            if finished >= max {
                return (progress, finished);
            }
            let Some(e) = self.queue.pop_front() else {
                return (progress, finished);
            };
            progress = true;
            self.queued_bytes -= event_bytes(&e);
            self.running = self.start(e);
        }
    }

    /// Gives up the handler in progress and the events not started (the connector is gone
    /// and the handler did not finish in time).
    pub(super) fn cancel(&mut self) {
        if let Some(running) = self.running.take() {
            tracing::warn!(
                handler = running.kind,
                "a handler did not finish within the close timeout after the connection closed; cancelled"
            );
        }
        self.queue.clear();
        self.queued_bytes = 0;
    }

    fn start(&mut self, e: Event) -> Option<Running> {
        let source = self.source.clone();
        let handler = self.handler.clone();
        let (future, kind, query) = match e {
            Event::Configured { config } => (handler.dyn_connect(source, config), "connect", None),
            Event::Publish { object } => (handler.dyn_publish(source, object), "publish", None),
            Event::Query {
                id,
                params,
                reply_address,
            } => {
                let link = Arc::new(QueryLink::new(id, params, reply_address));
                let query = Query::new(source.clone(), link.clone());
                (handler.dyn_query(source, query), "query", Some((id, link)))
            }
            Event::Disconnected { reason } => (handler.dyn_close(source, reason), "close", None),
            Event::Closed { .. } => return None,
        };
        Some(Running {
            future: AssertUnwindSafe(future).catch_unwind(),
            kind,
            query,
        })
    }

    fn finish(&mut self, running: Running, result: std::thread::Result<HandlerResult>) {
        let Running {
            future,
            kind,
            query,
        } = running;
        // Whatever the finished future still holds (a query among it) goes first.
        drop(future);
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                Some(format!("handler panicked: {text}"))
            }
        };
        if let Some(message) = &failure {
            tracing::warn!(handler = kind, error = %message, "handler failed");
        }
        let Some((id, link)) = query else {
            return;
        };
        if link.handler_done() {
            // The query was dropped unfinished inside the handler: answer it, after every
            // reply it sent (they are ahead in the same queue).
            let name = self.source.name();
            let error = match &failure {
                Some(message) => handler_failed_error(name, message),
                None => dropped_error(name),
            };
            let _ = self
                .source
                .0
                .commands
                .push_unbounded(Command::Abandon { id, error });
        }
    }
}
