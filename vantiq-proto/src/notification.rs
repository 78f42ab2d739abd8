//! Notifications encoded once, straight into their frame.
//!
//! A notification's frame is a fixed prefix (it names the source), the object, and a closing
//! brace. [`NotificationEncoder`] serializes a value right after the prefix, so that the text
//! a connector produces is the frame that goes out: no intermediate [`Json`], no second
//! buffer. [`Connection::notify_encoded`](crate::Connection::notify_encoded) queues it;
//! [`Connection::notify`](crate::Connection::notify) takes a [`Json`] and frames it itself.
//!
//! ```
//! use vantiq_proto::NotificationEncoder;
//!
//! let encoder = NotificationEncoder::new("pumps");
//! let n = encoder.encode(&serde_json::json!({"rpm": 1200})).unwrap();
//! assert_eq!(n.object(), r#"{"rpm":1200}"#);
//! assert!(n.is_object());
//! assert_eq!(
//!     n.frame(),
//!     r#"{"op":"notification","resourceName":"sources","resourceId":"pumps","object":{"rpm":1200}}"#
//! );
//! ```

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::frame;
use crate::json::Json;

/// Room for the object that the first frame starts with.
const OBJECT_HINT: usize = 128;
/// The largest room a frame starts with, whatever came before it.
const MAX_HINT: usize = 64 * 1024;
/// Unused room a notification may keep: past it (and past an eighth of its length) the
/// buffer is shrunk to fit, so that what a queue holds is about what it weighs.
const MAX_SLACK: usize = 128;

/// Encodes notifications for one source into their frames. Cheap to clone; one per source.
///
/// A frame starts with room for an object the size of the last one encoded (notifications of
/// one source tend to be alike), so that it is written once, into a buffer of about its size.
pub struct NotificationEncoder {
    prefix: String,
    /// Bytes of the last object encoded.
    hint: AtomicUsize,
}

impl Clone for NotificationEncoder {
    fn clone(&self) -> Self {
        NotificationEncoder {
            prefix: self.prefix.clone(),
            hint: AtomicUsize::new(self.hint.load(Ordering::Relaxed)),
        }
    }
}

impl NotificationEncoder {
    /// An encoder for the source named `source`.
    #[must_use]
    pub fn new(source: &str) -> Self {
        NotificationEncoder {
            prefix: frame::notification_prefix(source),
            hint: AtomicUsize::new(OBJECT_HINT),
        }
    }

    /// Serializes `value` into its notification frame. Whether it is an object (which a
    /// connection requires) is for the caller to check: [`Notification::is_object`].
    ///
    /// # Errors
    /// Whatever `serde_json` reports for a value it cannot serialize (a map with non-string
    /// keys, a failing `Serialize` implementation).
    pub fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<Notification, serde_json::Error> {
        // A little more than the last object: a number with one digit more still fits.
        let hint = self.hint.load(Ordering::Relaxed).min(MAX_HINT);
        let mut buf = Vec::with_capacity(self.prefix.len() + hint + hint / 16 + 8);
        buf.extend_from_slice(self.prefix.as_bytes());
        serde_json::to_writer(&mut buf, value)?;
        buf.push(b'}');
        let frame = String::from_utf8(buf).map_err(|_| {
            <serde_json::Error as serde::ser::Error>::custom("the serializer wrote invalid UTF-8")
        })?;
        let n = Notification::new(frame, self.prefix.len());
        self.hint.store(n.len(), Ordering::Relaxed);
        Ok(n)
    }

    /// Frames JSON text you already have (one copy of it).
    #[must_use]
    pub fn encode_json(&self, object: &Json) -> Notification {
        self.frame(object.as_str())
    }

    /// A frame of this encoder's source around `object`, in a buffer of its exact size.
    fn frame(&self, object: &str) -> Notification {
        let mut frame = String::with_capacity(self.prefix.len() + object.len() + 1);
        frame.push_str(&self.prefix);
        frame.push_str(object);
        frame.push('}');
        Notification {
            frame,
            start: self.prefix.len(),
        }
    }

    /// Whether `n` was framed by an encoder for this encoder's source.
    pub(crate) fn framed(&self, n: &Notification) -> bool {
        n.start == self.prefix.len() && n.frame.starts_with(&self.prefix)
    }

    /// `n` framed for this encoder's source.
    pub(crate) fn reframe(&self, n: Notification) -> Notification {
        if self.framed(&n) {
            return n;
        }
        self.frame(n.object())
    }
}

impl fmt::Debug for NotificationEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationEncoder")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A notification in its frame, from [`NotificationEncoder`]. [`Notification::len`] is its
/// object's length, as for a [`Json`]; the connection's byte budgets count what it holds
/// ([`Notification::held`]), the frame and its buffer's spare room.
#[derive(Clone, PartialEq, Eq)]
pub struct Notification {
    /// Prefix, object, `}`.
    frame: String,
    /// Where the object starts.
    start: usize,
}

impl Notification {
    fn new(mut frame: String, start: usize) -> Self {
        // A large object can leave much of the buffer unused; a queued notification should
        // hold about what it weighs.
        let len = frame.len();
        if frame.capacity() - len > MAX_SLACK && frame.capacity() > len + len / 8 {
            frame.shrink_to_fit();
        }
        Notification { frame, start }
    }

    /// The object's JSON text.
    #[must_use]
    pub fn object(&self) -> &str {
        let end = self.frame.len().saturating_sub(1);
        self.frame.get(self.start..end).unwrap_or_default()
    }

    /// The whole frame, as it goes out.
    #[must_use]
    pub fn frame(&self) -> &str {
        &self.frame
    }

    /// Length of the object's JSON text in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.object().len()
    }

    /// Bytes this notification holds: its frame's buffer, spare room included. This is what
    /// a connection's byte budgets count.
    #[must_use]
    pub fn held(&self) -> usize {
        self.frame.capacity()
    }

    /// Never true: valid JSON text is at least one byte long. Present for API symmetry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.object().is_empty()
    }

    /// True when the object is a JSON object (`{...}`), as a notification must be.
    #[must_use]
    pub fn is_object(&self) -> bool {
        self.object()
            .bytes()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            == Some(b'{')
    }

    /// The object as a [`Json`] (a copy).
    #[must_use]
    pub fn to_json(&self) -> Json {
        // The text came from a serializer or from a `Json`: it parses. Total all the same.
        Json::from_string(self.object().to_owned()).unwrap_or_else(|_| Json::null())
    }

    /// The frame's text, for the socket.
    pub(crate) fn into_frame(self) -> String {
        self.frame
    }
}

impl fmt::Debug for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Notification").field(&self.object()).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn encode_and_encode_json_make_the_same_frame() {
        let e = NotificationEncoder::new("s\"1");
        let a = e.encode(&serde_json::json!({"a": [1, 2]})).unwrap();
        let b = e.encode_json(&Json::from_string(r#"{"a":[1,2]}"#.to_owned()).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.len(), 11);
        assert_eq!(
            a.frame(),
            r#"{"op":"notification","resourceName":"sources","resourceId":"s\"1","object":{"a":[1,2]}}"#
        );
        assert_eq!(a.to_json().as_str(), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn non_objects_are_encoded_and_told_apart() {
        let e = NotificationEncoder::new("s");
        assert!(!e.encode(&[1]).unwrap().is_object());
        assert!(!e.encode("x").unwrap().is_object());
        assert!(e.encode(&serde_json::json!({})).unwrap().is_object());
    }

    #[test]
    fn a_serializer_error_is_reported() {
        let mut m = std::collections::HashMap::new();
        m.insert(vec![1u8], 1);
        let err = NotificationEncoder::new("s").encode(&m).unwrap_err();
        assert!(err.to_string().contains("key must be a string"), "{err}");
    }

    #[test]
    fn reframing_moves_a_notification_to_another_source() {
        let a = NotificationEncoder::new("a");
        let long = NotificationEncoder::new("a-longer-name");
        let n = a.encode(&serde_json::json!({"x": 1})).unwrap();
        assert!(a.framed(&n));
        assert!(!long.framed(&n));
        let moved = long.reframe(n.clone());
        assert!(long.framed(&moved));
        assert_eq!(moved.object(), n.object());
        assert_eq!(moved, long.encode_json(&n.to_json()));
    }

    #[test]
    fn a_large_object_does_not_keep_a_doubled_buffer() {
        let big = "x".repeat(100_000);
        let n = NotificationEncoder::new("s")
            .encode(&serde_json::json!({ "big": big }))
            .unwrap();
        assert!(n.frame.capacity() <= n.frame.len() + n.frame.len() / 8);
        assert_eq!(n.held(), n.frame.capacity());
    }

    /// What a queued notification holds stays close to its frame: alike notifications get a
    /// buffer of about their size, and a small one after a large one does not keep the large
    /// one's room.
    #[test]
    fn a_notification_holds_about_its_frame() {
        let e = NotificationEncoder::new("s");
        let close = |n: &Notification| {
            let len = n.frame().len();
            assert!(n.held() >= len);
            assert!(
                n.held() <= len + MAX_SLACK,
                "{} held for a frame of {len}",
                n.held()
            );
        };
        for i in 0..100u32 {
            close(
                &e.encode(&serde_json::json!({ "seq": i, "v": "x".repeat(300) }))
                    .unwrap(),
            );
        }
        close(
            &e.encode(&serde_json::json!({ "big": "y".repeat(200_000) }))
                .unwrap(),
        );
        close(&e.encode(&serde_json::json!({})).unwrap());
        close(&e.clone().encode(&serde_json::json!({ "a": 1 })).unwrap());
    }
}
