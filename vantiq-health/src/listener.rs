//! A listening socket served by one plain thread, which can be stopped promptly.
//!
//! The thread blocks in `accept()`. To stop it, the owner raises a [`StopSignal`] and makes
//! one loopback connection to the listener, which ends the blocked `accept()`; the thread
//! sees the flag, drops the listener and exits, and the owner joins it. No busy polling, no
//! runtime, nothing outside `std`. When `stop` returns, the listening socket is closed, so
//! a new connection is refused.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::state::ThreadCount;
use crate::sync::StopSignal;

/// How long one wake-up connect may take (a loopback connect takes microseconds; this only
/// bounds pathological cases such as a flooded accept queue).
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause after an `accept` error that is not about one connection (e.g. out of file
/// descriptors), so that the thread does not spin; a stop ends it at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A running listener thread.
#[derive(Debug)]
pub(crate) struct AcceptLoop {
    local: SocketAddr,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptLoop {
    /// Starts a thread named `name` running `body(listener, stop)`; `body` should serve
    /// connections with [`accept_until_stopped`] and return once the signal is raised.
    pub(crate) fn spawn<F>(
        listener: TcpListener,
        name: &str,
        threads: &Arc<ThreadCount>,
        body: F,
    ) -> io::Result<Self>
    where
        F: FnOnce(TcpListener, &StopSignal) + Send + 'static,
    {
        let local = listener.local_addr()?;
        let stop = Arc::new(StopSignal::default());
        let thread = spawn_counted(name, threads, {
            let stop = Arc::clone(&stop);
            move || body(listener, &stop)
        })?;
        Ok(AcceptLoop {
            local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the listener is bound to (with the actual port).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the thread and waits for it; the listener is closed when this returns `Ok`.
    ///
    /// On error (the wake-up connect failed) the thread is still running and the listener
    /// open; calling again retries.
    pub(crate) fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.stop();
        if let Err(e) = wake(self.local) {
            // The thread may have exited anyway (another connection arrived after the flag).
            if !thread.is_finished() {
                self.thread = Some(thread);
                return Err(e);
            }
        }
        if thread.join().is_err() {
            tracing::warn!(addr = %self.local, "a health probe thread panicked");
        }
        Ok(())
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            // Detach: the thread exits on the next connection it accepts.
            tracing::warn!(addr = %self.local, error = %e, "cannot wake a health probe thread; leaving it to exit on its next connection");
        }
    }
}

/// Spawns a named thread that is counted in `threads` while it runs.
pub(crate) fn spawn_counted<F>(
    name: &str,
    threads: &Arc<ThreadCount>,
    f: F,
) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let token = threads.token();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _token = token;
            f();
        })
}

/// Accepts connections and hands each to `on_conn` until `stop` is raised; the connection
/// that woke the thread for the stop is dropped.
pub(crate) fn accept_until_stopped(
    listener: &TcpListener,
    stop: &StopSignal,
    mut on_conn: impl FnMut(TcpStream),
) {
    loop {
        let accepted = listener.accept();
        if stop.is_stopped() {
            return;
        }
        match accepted {
            Ok((stream, _peer)) => on_conn(stream),
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                tracing::debug!(error = %e, "health probe accept failed; pausing");
                if stop.wait(ACCEPT_ERROR_PAUSE) {
                    return;
                }
            }
        }
    }
}

/// Errors of `accept` that concern one connection only: retry at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Connects to the listener at `local` so that its blocked `accept()` returns.
fn wake(local: SocketAddr) -> io::Result<()> {
    let port = local.port();
    let candidates: Vec<SocketAddr> = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => vec![(Ipv4Addr::LOCALHOST, port).into()],
        IpAddr::V6(ip) if ip.is_unspecified() => vec![
            (Ipv6Addr::LOCALHOST, port).into(),
            (Ipv4Addr::LOCALHOST, port).into(),
        ],
        _ => vec![local],
    };
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to connect to");
    for addr in candidates {
        match TcpStream::connect_timeout(&addr, WAKE_TIMEOUT) {
            Ok(_stream) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_closes_the_listener_and_joins() {
        let threads = Arc::new(ThreadCount::default());
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut l = AcceptLoop::spawn(listener, "test-accept", &threads, move |l, stop| {
            accept_until_stopped(&l, stop, |_s| tx.send(()).unwrap());
        })
        .unwrap();
        let addr = l.local_addr();
        assert_eq!(threads.get(), 1);
        TcpStream::connect(addr).unwrap();
        TcpStream::connect(addr).unwrap();
        // Both connections reach the callback (not the wake-up connection below).
        rx.recv().unwrap();
        rx.recv().unwrap();
        l.stop().unwrap();
        assert_eq!(threads.get(), 0);
        assert!(
            rx.recv().is_err(),
            "the thread ended without another callback"
        );
        let err = TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        // Stopping twice is harmless.
        l.stop().unwrap();
    }

    #[test]
    fn drop_stops_the_thread() {
        let threads = Arc::new(ThreadCount::default());
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let l = AcceptLoop::spawn(listener, "test-accept", &threads, |l, stop| {
            accept_until_stopped(&l, stop, drop)
        })
        .unwrap();
        let addr = l.local_addr();
        drop(l);
        assert_eq!(threads.get(), 0);
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn wake_fails_without_a_listener() {
        let addr = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap()
        };
        assert!(wake(addr).is_err());
    }

    #[test]
    fn per_connection_errors() {
        assert!(is_per_connection(&io::ErrorKind::ConnectionAborted.into()));
        assert!(!is_per_connection(&io::ErrorKind::OutOfMemory.into()));
    }
}
