//! Opening the WebSocket: TCP from the runtime, TLS with rustls, the upgrade with
//! async-tungstenite; all over `futures-io`, so it is shared by every runtime.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use vantiq_proto::TargetUrl;

use crate::runtime::Runtime;

/// Socket settings of a connector.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportOptions {
    /// Largest incoming message in bytes; `None` for no limit (default 64 MiB).
    pub max_message_size: Option<usize>,
    /// Bytes eagerly allocated per socket for reading (default 8 KiB). Larger values help
    /// sources that receive many large frames; smaller values save memory per idle source.
    pub read_buffer_size: usize,
    /// Bytes gathered before a write reaches the socket (default 16 KiB); every batch of
    /// frames is flushed at once anyway.
    pub write_buffer_size: usize,
    /// Accept any server certificate (`disableSslVerification`). Development only.
    pub disable_tls_verification: bool,
    /// Certificate authorities to trust besides the built-in (or native) roots: for servers
    /// behind a private CA.
    pub extra_root_certificates: Vec<CertificateDer<'static>>,
    /// Time a socket gets to finish its close handshake, ours or the server's, before it is
    /// dropped (default 2 s). The session is over as soon as a close frame is sent or
    /// received (the connector reconnects at once); this only bounds how long the old socket
    /// lingers.
    pub close_handshake_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_message_size: Some(64 << 20),
            read_buffer_size: 8 * 1024,
            write_buffer_size: 16 * 1024,
            disable_tls_verification: false,
            extra_root_certificates: Vec::new(),
            close_handshake_timeout: Duration::from_secs(2),
        }
    }
}

impl TransportOptions {
    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_message_size(self.max_message_size)
            .max_frame_size(self.max_message_size)
    }
}

/// A TCP stream, with or without TLS, counting the bytes the socket takes so that the driver
/// can tell a socket that writes slowly from one that takes nothing.
pub(crate) struct Stream<S> {
    io: Io<S>,
    written: u64,
}

enum Io<S> {
    /// `ws://`.
    Plain(S),
    /// `wss://`.
    Tls(Box<TlsStream<S>>),
}

impl<S> Stream<S> {
    fn new(io: Io<S>) -> Self {
        Stream { io, written: 0 }
    }

    /// Bytes the socket has taken so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }
}

impl<S> fmt::Debug for Stream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.io {
            Io::Plain(_) => "Stream::Plain",
            Io::Tls(_) => "Stream::Tls",
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = r {
            this.written += n as u64;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = r {
            this.written += n as u64;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_close(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// The WebSocket a driver works with.
pub(crate) type Ws<R> = WebSocketStream<Stream<<R as Runtime>::Tcp>>;

/// Accepts every certificate: what `disableSslVerification` asks for.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn root_store() -> RootCertStore {
    #[allow(unused_mut)]
    let mut roots = RootCertStore::empty();
    #[cfg(feature = "webpki-roots")]
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    #[cfg(feature = "native-roots")]
    {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "could not load some native root certificates");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "native root certificates loaded");
    }
    roots
}

/// Builds the rustls client configuration (once per connector set).
///
/// # Errors
/// The crypto provider rejects the default protocol versions (not expected with `ring`), or
/// an extra root certificate cannot be parsed.
pub(crate) fn tls_config(options: &TransportOptions) -> Result<Arc<ClientConfig>, rustls::Error> {
    let disable_verification = options.disable_tls_verification;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if disable_verification {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = root_store();
        for cert in &options.extra_root_certificates {
            roots.add(cert.clone())?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Opens the WebSocket to `url`: TCP, TLS for `wss`, then the upgrade.
pub(crate) async fn connect<R: Runtime>(
    runtime: R,
    url: TargetUrl,
    tls: Arc<ClientConfig>,
    ws_config: WebSocketConfig,
) -> Result<Ws<R>, String> {
    let tcp = runtime
        .connect_tcp(url.host().to_owned(), url.port())
        .await
        .map_err(|e| format!("TCP connect to {}:{}: {e}", url.host(), url.port()))?;
    let stream = if url.is_secure() {
        let name = ServerName::try_from(url.host().to_owned())
            .map_err(|e| format!("`{}` is not a valid TLS server name: {e}", url.host()))?;
        let tls = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", url.host()))?;
        Stream::new(Io::Tls(Box::new(tls)))
    } else {
        Stream::new(Io::Plain(tcp))
    };
    let (ws, _response) =
        async_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config))
            .await
            .map_err(|e| format!("WebSocket upgrade at {url}: {e}"))?;
    Ok(ws)
}
