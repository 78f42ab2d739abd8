//! Handlers: what a connector does when its source is configured, receives a publish or a
//! query, or loses its session. Implement [`Handler`] for larger connectors, or give the
//! connector set closures (`on_connect`, `on_publish`, …) for small ones.

use std::future::Future;
use std::sync::Arc;

use vantiq_proto::{DisconnectReason, Json};

use crate::query::Query;
use crate::runtime::BoxFuture;
use crate::source::Source;

/// Any error a handler returns; it is logged (and, for a query, sent as the error reply).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What every handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// A connector's behaviour for its sources.
///
/// Every method has a default: configuration, publishes and session ends are ignored, and a
/// query is answered with the error `io.vantiq.connector.noQueryHandler`. Handlers of one
/// source run one at a time, in the order the server sent the messages; a slow handler never
/// stalls keep-alive or other sources (reading from that source's socket pauses once 64
/// messages wait). To answer a query later or concurrently, move the [`Query`] into a task of
/// your own.
///
/// ```
/// use vantiq_connector::{Handler, HandlerResult, Json, Query, Source};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
///         source.notify_json(message).await?;
///         Ok(())
///     }
///
///     async fn on_query(&self, _source: &Source, query: Query) -> HandlerResult {
///         query.complete(&serde_json::json!([{"answer": 42}])).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The source was configured (at start, after a reconnect, after `reconnectRequired`):
    /// `config` is the source's configuration document (`object.config`).
    fn on_connect(
        &self,
        source: &Source,
        config: Json,
    ) -> impl Future<Output = HandlerResult> + Send {
        let _ = (source, config);
        async { Ok(()) }
    }

    /// Data was published to the source.
    fn on_publish(
        &self,
        source: &Source,
        message: Json,
    ) -> impl Future<Output = HandlerResult> + Send {
        let _ = (source, message);
        async { Ok(()) }
    }

    /// A query arrived. Answer it through `query`; a query dropped unanswered (or whose
    /// handler fails) is answered with an error automatically.
    fn on_query(
        &self,
        source: &Source,
        query: Query,
    ) -> impl Future<Output = HandlerResult> + Send {
        let name = source.name().to_owned();
        async move {
            query.error(crate::query::no_handler_error(&name)).await?;
            Ok(())
        }
    }

    /// The session ended (connection lost, `reconnectRequired`, or shutdown). Undo what
    /// `on_connect` set up; the next `on_connect` follows when a new session begins.
    fn on_close(
        &self,
        source: &Source,
        reason: &DisconnectReason,
    ) -> impl Future<Output = HandlerResult> + Send {
        let _ = (source, reason);
        async { Ok(()) }
    }
}

/// The object-safe form the driver calls.
pub(crate) trait DynHandler: Send + Sync + 'static {
    fn dyn_connect(
        self: Arc<Self>,
        source: Source,
        config: Json,
    ) -> BoxFuture<'static, HandlerResult>;
    fn dyn_publish(
        self: Arc<Self>,
        source: Source,
        message: Json,
    ) -> BoxFuture<'static, HandlerResult>;
    fn dyn_query(
        self: Arc<Self>,
        source: Source,
        query: Query,
    ) -> BoxFuture<'static, HandlerResult>;
    fn dyn_close(
        self: Arc<Self>,
        source: Source,
        reason: DisconnectReason,
    ) -> BoxFuture<'static, HandlerResult>;
}

impl<H: Handler> DynHandler for H {
    fn dyn_connect(
        self: Arc<Self>,
        source: Source,
        config: Json,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move { Handler::on_connect(&*self, &source, config).await })
    }

    fn dyn_publish(
        self: Arc<Self>,
        source: Source,
        message: Json,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move { Handler::on_publish(&*self, &source, message).await })
    }

    fn dyn_query(
        self: Arc<Self>,
        source: Source,
        query: Query,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move { Handler::on_query(&*self, &source, query).await })
    }

    fn dyn_close(
        self: Arc<Self>,
        source: Source,
        reason: DisconnectReason,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move { Handler::on_close(&*self, &source, &reason).await })
    }
}

type ConnectFn = dyn Fn(Source, Json) -> BoxFuture<'static, HandlerResult> + Send + Sync;
type QueryFn = dyn Fn(Source, Query) -> BoxFuture<'static, HandlerResult> + Send + Sync;
type CloseFn = dyn Fn(Source, DisconnectReason) -> BoxFuture<'static, HandlerResult> + Send + Sync;

/// Handlers made of closures (the `on_*` methods of the connector set).
#[derive(Clone, Default)]
pub(crate) struct FnHandlers {
    pub(crate) connect: Option<Arc<ConnectFn>>,
    pub(crate) publish: Option<Arc<ConnectFn>>,
    pub(crate) query: Option<Arc<QueryFn>>,
    pub(crate) close: Option<Arc<CloseFn>>,
}

impl FnHandlers {
    pub(crate) fn is_empty(&self) -> bool {
        self.connect.is_none()
            && self.publish.is_none()
            && self.query.is_none()
            && self.close.is_none()
    }

    pub(crate) fn set_connect<F, Fut>(&mut self, f: F)
    where
        F: Fn(Source, Json) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.connect = Some(Arc::new(move |s, j| Box::pin(f(s, j))));
    }

    pub(crate) fn set_publish<F, Fut>(&mut self, f: F)
    where
        F: Fn(Source, Json) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.publish = Some(Arc::new(move |s, j| Box::pin(f(s, j))));
    }

    pub(crate) fn set_query<F, Fut>(&mut self, f: F)
    where
        F: Fn(Source, Query) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.query = Some(Arc::new(move |s, q| Box::pin(f(s, q))));
    }

    pub(crate) fn set_close<F, Fut>(&mut self, f: F)
    where
        F: Fn(Source, DisconnectReason) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.close = Some(Arc::new(move |s, r| Box::pin(f(s, r))));
    }
}

impl DynHandler for FnHandlers {
    fn dyn_connect(
        self: Arc<Self>,
        source: Source,
        config: Json,
    ) -> BoxFuture<'static, HandlerResult> {
        match &self.connect {
            Some(f) => f(source, config),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn dyn_publish(
        self: Arc<Self>,
        source: Source,
        message: Json,
    ) -> BoxFuture<'static, HandlerResult> {
        match &self.publish {
            Some(f) => f(source, message),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn dyn_query(
        self: Arc<Self>,
        source: Source,
        query: Query,
    ) -> BoxFuture<'static, HandlerResult> {
        match &self.query {
            Some(f) => f(source, query),
            None => {
                let error = crate::query::no_handler_error(source.name());
                Box::pin(async move {
                    query.error(error).await?;
                    Ok(())
                })
            }
        }
    }

    fn dyn_close(
        self: Arc<Self>,
        source: Source,
        reason: DisconnectReason,
    ) -> BoxFuture<'static, HandlerResult> {
        match &self.close {
            Some(f) => f(source, reason),
            None => Box::pin(async { Ok(()) }),
        }
    }
}
