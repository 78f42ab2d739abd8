//! Classifying what a connector sent, cheaply enough that the load server is never the
//! bottleneck.
//!
//! Every connector under test puts `op` (or `status`) first, so the fast path reads only the
//! first few bytes of a frame (and, for a query reply, finds the reply address). Anything the
//! fast path does not recognise goes through the SDK's lenient decoder
//! ([`vantiq_proto::frame::ClientFrame::decode`]), which accepts keys in any order.

use std::borrow::Cow;

use vantiq_proto::frame::ClientFrame;

/// A connector's frame, as far as the load server cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `op: notification`.
    Notification,
    /// An op-less query reply.
    Reply {
        /// The reply's status (100 partial, 200/204 final, 400 error).
        status: i64,
        /// `headers.X-Reply-Address`.
        address: Cow<'a, str>,
    },
    /// `op: validate` or `op: authenticate`.
    Auth,
    /// `op: connectExtension` (decode the frame for the source name).
    ConnectExtension,
    /// Anything else (including invalid JSON).
    Other,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(c) = b.get(i) {
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// Reads `"<key>"` then optional whitespace, `:` and whitespace at `i`; returns the index of
/// the value.
fn key_at(b: &[u8], i: usize, key: &[u8]) -> Option<usize> {
    let rest = b.get(i..)?;
    let after = rest
        .strip_prefix(b"\"")?
        .strip_prefix(key)?
        .strip_prefix(b"\"")?;
    let j = skip_ws(b, b.len() - after.len());
    if b.get(j) != Some(&b':') {
        return None;
    }
    Some(skip_ws(b, j + 1))
}

/// A string without escapes at `i` (the opening quote): its contents.
fn plain_str(b: &[u8], i: usize) -> Option<&str> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let rest = b.get(i + 1..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest.get(end) != Some(&b'"') {
        return None;
    }
    std::str::from_utf8(rest.get(..end)?).ok()
}

fn fast(b: &[u8]) -> Option<Inbound<'_>> {
    let i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let i = skip_ws(b, i + 1);
    if let Some(v) = key_at(b, i, b"op") {
        return match plain_str(b, v)? {
            "notification" => Some(Inbound::Notification),
            "validate" | "authenticate" => Some(Inbound::Auth),
            "connectExtension" => Some(Inbound::ConnectExtension),
            _ => None,
        };
    }
    let v = key_at(b, i, b"status")?;
    let digits = b
        .get(v..)?
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let status: i64 = std::str::from_utf8(b.get(v..v + digits)?)
        .ok()?
        .parse()
        .ok()?;
    let tail = b.get(v + digits..)?;
    let at = memchr::memmem::find(tail, b"\"X-Reply-Address\"")?;
    let start = v + digits + at;
    let value = key_at(b, start, b"X-Reply-Address")?;
    let address = plain_str(b, value)?;
    Some(Inbound::Reply {
        status,
        address: Cow::Borrowed(address),
    })
}

/// Classifies one frame.
#[must_use]
pub fn classify(frame: &[u8]) -> Inbound<'_> {
    if let Some(k) = fast(frame) {
        return k;
    }
    match ClientFrame::decode(frame) {
        Ok(ClientFrame::Notification { .. }) => Inbound::Notification,
        Ok(ClientFrame::QueryReply(r)) => Inbound::Reply {
            status: r.status.0,
            address: Cow::Owned(r.reply_address),
        },
        Ok(ClientFrame::Validate { .. } | ClientFrame::Authenticate { .. }) => Inbound::Auth,
        Ok(ClientFrame::ConnectExtension { .. }) => Inbound::ConnectExtension,
        _ => Inbound::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_and_slow_paths_agree() {
        let cases: &[(&str, Inbound<'static>)] = &[
            (
                r#"{"op":"notification","resourceName":"sources","resourceId":"s","object":{"seq":1}}"#,
                Inbound::Notification,
            ),
            (
                r#"{"op": "notification", "resourceName": "sources", "resourceId": "s", "object": {}}"#,
                Inbound::Notification,
            ),
            (
                r#"{"resourceId":"s","object":{},"op":"notification"}"#,
                Inbound::Notification,
            ),
            (
                r#"{"status":200,"headers":{"X-Reply-Address":"q17"},"body":[{"i":0}]}"#,
                Inbound::Reply {
                    status: 200,
                    address: Cow::Borrowed("q17"),
                },
            ),
            (
                r#"{"status": 204, "headers": {"X-Reply-Address": "q3"}}"#,
                Inbound::Reply {
                    status: 204,
                    address: Cow::Borrowed("q3"),
                },
            ),
            (
                r#"{"headers":{"X-Reply-Address":"q\u0031"},"status":100,"body":{}}"#,
                Inbound::Reply {
                    status: 100,
                    address: Cow::Borrowed("q1"),
                },
            ),
            (
                r#"{"op":"validate","resourceName":"system.credentials","object":"t"}"#,
                Inbound::Auth,
            ),
            (
                r#"{"op":"connectExtension","resourceName":"sources","resourceId":"s"}"#,
                Inbound::ConnectExtension,
            ),
            (r#"{"op":"nonsense"}"#, Inbound::Other),
            ("not json", Inbound::Other),
        ];
        for (text, want) in cases {
            assert_eq!(&classify(text.as_bytes()), want, "{text}");
        }
    }
}
