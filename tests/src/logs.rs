//! Captures what the SDK logs, so tests can assert that a fault produced a clear log line.
//!
//! [`capture`] installs (once per test process) a global `tracing` subscriber that keeps
//! every formatted line (`INFO` and above, no colours, no timestamps) in memory; with
//! `RUST_LOG` set it also copies them to stderr. Lines carry the driver's span, so a test
//! picks its own source's lines by name (`source{name=…}`), even with other tests logging
//! at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use event_listener::Event;
use tracing_subscriber::fmt::MakeWriter;

/// The captured lines.
pub struct Logs {
    lines: Mutex<Vec<String>>,
    added: Event,
    echo: bool,
}

static LOGS: OnceLock<Logs> = OnceLock::new();

/// Starts capturing (idempotent) and returns the capture. If another global subscriber was
/// installed first, nothing is captured and waits fail: call this before anything logs.
pub fn capture() -> &'static Logs {
    let mut fresh = false;
    let logs = LOGS.get_or_init(|| {
        fresh = true;
        Logs {
            lines: Mutex::new(Vec::new()),
            added: Event::new(),
            echo: std::env::var_os("RUST_LOG").is_some(),
        }
    });
    if fresh {
        let filter = tracing_subscriber::EnvFilter::new("info");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .with_writer(Writer)
            .try_init();
    }
    logs
}

impl Logs {
    /// The number of lines so far (a position for [`Logs::wait_for`]).
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Every line after position `from`.
    pub fn since(&self, from: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    /// Waits for the first line after position `from` that satisfies `pred`; returns it
    /// and the position after it. Wrap in a timeout ([`crate::Kit::within`]).
    pub async fn wait_for(&self, from: usize, pred: impl Fn(&str) -> bool) -> (String, usize) {
        let mut at = from;
        loop {
            let listener = self.added.listen();
            {
                let lines = self.lines.lock().unwrap();
                while let Some(line) = lines.get(at) {
                    at += 1;
                    if pred(line) {
                        return (line.clone(), at);
                    }
                }
            }
            listener.await;
        }
    }

    fn push(&self, line: String) {
        if self.echo {
            eprint!("{line}");
        }
        self.lines.lock().unwrap().push(line);
        self.added.notify(usize::MAX);
    }
}

/// Hands each formatted event to the capture as one line.
struct Writer;

/// The buffer of one event.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty()
            && let Some(logs) = LOGS.get()
        {
            logs.push(String::from_utf8_lossy(&self.0).into_owned());
        }
    }
}

impl<'a> MakeWriter<'a> for Writer {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}
