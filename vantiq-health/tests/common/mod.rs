//! Helpers shared by the integration tests: real sockets on loopback.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a failed expectation is a failed test

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use vantiq_health::HealthConfig;

/// Guards every blocking read in the tests, so that a bug fails a test instead of hanging it.
pub const GUARD: Duration = Duration::from_secs(10);

/// A configuration on loopback with free ports for both probes.
pub fn local_cfg() -> HealthConfig {
    HealthConfig {
        tcp_port: 0,
        bind: Ipv4Addr::LOCALHOST.into(),
        http_port: Some(0),
        ..HealthConfig::default()
    }
}

/// Connects to `port` on loopback.
pub fn connect(port: u16) -> io::Result<TcpStream> {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port))
}

/// Asserts that a connect to `port` succeeds and that the probe closes it at once.
pub fn assert_open(port: u16) {
    let mut s = connect(port).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut buf = [0u8; 8];
    // The TCP probe sends nothing and closes the connection: end of stream (or a reset).
    match s.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "the TCP probe sent data"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Asserts that a connect to `port` is refused.
pub fn assert_refused(port: u16) {
    match connect(port) {
        Ok(_) => panic!("connect to {port} succeeded; expected refused"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
    }
}

/// A port that was free a moment ago (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw bytes to the HTTP probe, half-closes, reads the whole answer.
pub fn http_raw(port: u16, request: &[u8]) -> Answer {
    let mut s = connect(port).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(request).unwrap();
    read_answer(&mut s)
}

/// Reads an answer until the server closes.
pub fn read_answer(s: &mut TcpStream) -> Answer {
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {raw:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let answer = Answer {
        code,
        head: head.to_owned(),
        body: body.to_owned(),
    };
    // HEAD answers announce the length of a body they do not send.
    let len: usize = answer.header("Content-Length").unwrap().parse().unwrap();
    assert!(len == answer.body.len() || answer.body.is_empty());
    answer
}

/// `GET path` on the HTTP probe.
pub fn get(port: u16, path: &str) -> Answer {
    http_raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kube-probe/1.33\r\n\r\n")
            .as_bytes(),
    )
}

/// Half-closes our side of `s`.
pub fn half_close(s: &TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
}
