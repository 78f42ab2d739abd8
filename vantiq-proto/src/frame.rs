//! Typed models of every frame of the extension-source protocol, in both directions.
//!
//! Decoding is total and lenient: any byte string gives a frame or a [`FrameError`], never a
//! panic; unknown fields are skipped, `status` may be any JSON number (or a numeric string), and
//! the server's bookkeeping fields (`address`, `isSystemResource`, `skipMonitoring`, …) are
//! ignored whatever their type. Payloads stay JSON text ([`Json`]), so decoding never builds a
//! tree. Encoding produces the compact form with only the keys the peer needs.
//!
//! ```
//! use vantiq_proto::frame::{ClientFrame, ServerFrame};
//!
//! let f = ServerFrame::decode(br#"{"op":"publish","resourceName":"sources",
//!     "resourceId":"S","object":{"hello":"world"},"isSystemResource":null}"#).unwrap();
//! match f {
//!     ServerFrame::Publish { object, .. } => assert_eq!(object.as_str(), r#"{"hello":"world"}"#),
//!     other => panic!("{other:?}"),
//! }
//!
//! let out = ClientFrame::Validate { token: Some("t0k".into()) }.encode();
//! assert_eq!(out, r#"{"op":"validate","resourceName":"system.credentials","object":"t0k"}"#);
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::{Json, push_json_string};

/// `resourceName` of every source operation.
pub const RESOURCE_SOURCES: &str = "sources";
/// `resourceName` of the authentication operations.
pub const RESOURCE_CREDENTIALS: &str = "system.credentials";
/// Key of the reply address inside a query's `messageHeaders`.
pub const REPLY_ADDR_HEADER: &str = "REPLY_ADDR_HEADER";
/// Key of the reply address inside a query reply's `headers`.
pub const X_REPLY_ADDRESS: &str = "X-Reply-Address";

/// An HTTP-style status as carried by op-less frames.
///
/// Any JSON number is accepted on input (`200`, `200.0`, `"200"`); the value is truncated to an
/// integer. 100–199 means "more to come", 200–299 success, anything else an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub i64);

impl Status {
    /// 100: a partial query reply, more follow.
    pub const PARTIAL: Status = Status(100);
    /// 200: success (a final query reply with data).
    pub const OK: Status = Status(200);
    /// 204: success without data (a final, empty query reply).
    pub const NO_CONTENT: Status = Status(204);
    /// 400: the status of a query error reply.
    pub const BAD_REQUEST: Status = Status(400);
    /// 401: the status the server uses for a rejected token.
    pub const UNAUTHORIZED: Status = Status(401);

    /// 100–199.
    #[must_use]
    pub fn is_partial(self) -> bool {
        (100..200).contains(&self.0)
    }

    /// 200–299.
    #[must_use]
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }

    /// Anything that is neither partial nor success (≥ 300, and nonsense below 100).
    #[must_use]
    pub fn is_error(self) -> bool {
        !self.is_partial() && !self.is_success()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a frame could not be used. The frame is dropped; the session goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The bytes are not one valid JSON value.
    #[error("frame is not valid JSON: {message}")]
    InvalidJson {
        /// serde_json's description, with line and column.
        message: String,
    },
    /// The JSON is valid but not an object.
    #[error("frame is JSON but not an object (found {found})")]
    NotAnObject {
        /// The kind of JSON value found.
        found: &'static str,
    },
    /// `op` is present but is not a string.
    #[error("frame field `op` is not a string")]
    OpNotString,
    /// The frame has no `op` and no usable `status`.
    #[error("frame has neither `op` nor a numeric `status`")]
    NoOpNoStatus,
    /// A field the operation needs is missing or of the wrong type.
    #[error("`{op}` frame lacks `{field}`")]
    MissingField {
        /// The operation (or `status reply`).
        op: &'static str,
        /// The path of the missing field.
        field: &'static str,
    },
    /// An operation this SDK does not know (test-only ops such as `testRequestsClientClose`
    /// included).
    #[error("unknown op `{op}`")]
    UnknownOp {
        /// The op as received.
        op: String,
    },
    /// A known frame that makes no sense in the connection's current state.
    #[error("unexpected {frame} frame while {state}")]
    Unexpected {
        /// What kind of frame arrived.
        frame: &'static str,
        /// The connection state it arrived in.
        state: &'static str,
    },
    /// A frame addressed to another source than the one this connection serves.
    #[error("frame for source `{got}` arrived on the connection of source `{expected}`")]
    WrongSource {
        /// This connection's source.
        expected: String,
        /// The `resourceId` of the frame.
        got: String,
    },
    /// The connection has no open socket, so no frame can arrive.
    #[error("frame received while no socket is open")]
    NoSocket,
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// An op-less frame: an acknowledgement, an authentication or connect reply, or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFrame {
    /// The status.
    pub status: Status,
    /// The body, if any (errors carry a list of `{code, message, params}`).
    pub body: Option<Json>,
}

impl StatusFrame {
    /// The first error's `code` and `message` of a Vantiq error list body
    /// (`[{"code": …, "message": …}]`), if the body has that shape.
    #[must_use]
    pub fn error_summary(&self) -> (Option<String>, Option<String>) {
        let Some(body) = &self.body else {
            return (None, None);
        };
        // A body with no tree form (nested too deep) has no summary either.
        let Ok(value) = body.to_value() else {
            return (None, None);
        };
        let first = match &value {
            serde_json::Value::Array(items) => items.first(),
            obj @ serde_json::Value::Object(_) => Some(obj),
            _ => None,
        };
        let text = |key: &str| {
            first
                .and_then(|v| v.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let message = text("message").or_else(|| match &value {
            serde_json::Value::String(s) => Some(s.clone()),
            _ => None,
        });
        (text("code"), message)
    }
}

/// A frame sent by the Vantiq server to a connector.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// An op-less status frame (auth reply, connect reply, acknowledgement, error).
    Status(StatusFrame),
    /// `configureExtension`: the source's configuration document (`object.config`).
    ConfigureExtension {
        /// `resourceId`, the source name (the Python test server omits it).
        resource_id: Option<String>,
        /// `object.config`.
        config: Json,
    },
    /// `publish`: data published to the source.
    Publish {
        /// `resourceId`.
        resource_id: Option<String>,
        /// `object`.
        object: Json,
    },
    /// `query`: a `SELECT … FROM SOURCE` awaiting replies.
    Query {
        /// `resourceId`.
        resource_id: Option<String>,
        /// `messageHeaders.REPLY_ADDR_HEADER`.
        reply_address: String,
        /// `object`: the WITH parameters (`{}` when absent).
        object: Json,
    },
    /// `reconnectRequired`: start again at `connectExtension` (configuration changed).
    ReconnectRequired {
        /// `resourceId`.
        resource_id: Option<String>,
    },
    /// Any other op.
    Unknown {
        /// The op as received.
        op: String,
    },
}

/// A query reply (`status` + `headers.X-Reply-Address` + optional `body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryReply {
    /// 100 partial, 200 complete, 204 empty, 400 error.
    pub status: Status,
    /// The query's reply address.
    pub reply_address: String,
    /// Rows (object or array of objects), or the error object; none for 204.
    pub body: Option<Json>,
}

/// A frame sent by a connector to the Vantiq server.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientFrame {
    /// `validate`: authenticate with an access token.
    Validate {
        /// The token (`null` on the wire when absent, as the Python SDK sends).
        token: Option<String>,
    },
    /// `authenticate`: authenticate with a user name and password.
    Authenticate {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `connectExtension`: attach this socket to a source.
    ConnectExtension {
        /// The source name (`resourceId`).
        source: String,
        /// `parameters.reconnectSecret`.
        reconnect_secret: Option<String>,
    },
    /// `notification`: an event for `/sources/<source>`.
    Notification {
        /// The source name (`resourceId`).
        source: String,
        /// The event (a JSON object).
        object: Json,
    },
    /// A reply to a query.
    QueryReply(QueryReply),
    /// Any other op.
    Unknown {
        /// The op as received.
        op: String,
    },
}

impl fmt::Debug for ClientFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFrame::Validate { token } => f
                .debug_struct("Validate")
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .finish(),
            ClientFrame::Authenticate { username, .. } => f
                .debug_struct("Authenticate")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            ClientFrame::ConnectExtension {
                source,
                reconnect_secret,
            } => f
                .debug_struct("ConnectExtension")
                .field("source", source)
                .field("reconnect_secret", reconnect_secret)
                .finish(),
            ClientFrame::Notification { source, object } => f
                .debug_struct("Notification")
                .field("source", source)
                .field("object", object)
                .finish(),
            ClientFrame::QueryReply(r) => f.debug_tuple("QueryReply").field(r).finish(),
            ClientFrame::Unknown { op } => f.debug_struct("Unknown").field("op", op).finish(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// A field as found: absent, usable, or present with a type we cannot use.
#[derive(Default)]
enum Found<T> {
    #[default]
    Absent,
    Value(T),
    WrongType,
}

impl<T> Found<T> {
    fn ok(self) -> Option<T> {
        match self {
            Found::Value(v) => Some(v),
            _ => None,
        }
    }
}

// Every part of a frame is read by one visitor, `Lenient`: a value comes back as a `Node`
// (its text or number, or only its kind), and the keys of an object go to a `Fields` table,
// which reads the values it needs and skips the others. Nothing is rejected for its type
// unless the table refuses a value that is not an object (the frame itself), and then the
// table records what was found: the outcome never depends on serde_json's message text.

/// What one JSON value was.
enum Node<'de> {
    /// A string, borrowed from the input unless it contains escapes.
    Str(Cow<'de, str>),
    /// An integer (one above `i64::MAX` saturates).
    Int(i64),
    /// A number with a fraction or an exponent.
    Float(f64),
    /// An object, whose keys went to the [`Fields`] table.
    Object,
    /// `true`, `false`, `null` or an array (skipped).
    Other,
}

impl<'de> Node<'de> {
    /// The text, if the value is a string.
    fn text(self) -> Found<Cow<'de, str>> {
        match self {
            Node::Str(s) => Found::Value(s),
            _ => Found::WrongType,
        }
    }

    /// A status: any JSON number (truncated), or a string holding one.
    fn status(self) -> Found<Status> {
        match self {
            Node::Int(n) => Found::Value(Status(n)),
            Node::Float(f) => float_status(f),
            Node::Str(s) => {
                let t = s.trim();
                if let Ok(n) = t.parse::<i64>() {
                    return Found::Value(Status(n));
                }
                t.parse::<f64>().map_or(Found::WrongType, float_status)
            }
            Node::Object | Node::Other => Found::WrongType,
        }
    }
}

fn float_status(f: f64) -> Found<Status> {
    if f.is_finite() {
        // `as` saturates for out-of-range floats, which is what we want here.
        #[allow(clippy::cast_possible_truncation)]
        Found::Value(Status(f.trunc() as i64))
    } else {
        Found::WrongType
    }
}

/// The keys of one JSON object that a frame needs.
trait Fields<'de> {
    /// Whether the keys are looked at; when false, objects are skipped whole.
    const READS_KEYS: bool = true;

    /// Reads the value of `key` (`map.next_value…`), or skips it.
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;

    /// Told what a value that is not an object is (`"a string"`, `"an array"`, …): `false`
    /// stops the parse there with an error. By default such a value is taken as it is.
    fn accept(&mut self, _found: &'static str) -> bool {
        true
    }
}

/// Reads no key: objects where text or a number belongs.
struct Skip;

impl<'de> Fields<'de> for Skip {
    const READS_KEYS: bool = false;

    fn field<A: MapAccess<'de>>(&mut self, _key: &str, map: &mut A) -> Result<(), A::Error> {
        map.next_value::<IgnoredAny>()?;
        Ok(())
    }
}

/// One key of an object, read as a `T` (the last occurrence wins).
struct Pick<T> {
    key: &'static str,
    found: Option<T>,
}

impl<T> Pick<T> {
    fn new(key: &'static str) -> Self {
        Pick { key, found: None }
    }
}

impl<'de, T: de::Deserialize<'de>> Fields<'de> for Pick<T> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == self.key {
            self.found = Some(map.next_value()?);
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// The visitor: reads any value into a [`Node`], an object's keys into the table `F`.
struct Lenient<'f, F>(&'f mut F);

impl<'de, F: Fields<'de>> Lenient<'_, F> {
    fn other<E: de::Error>(self, node: Node<'de>, found: &'static str) -> Result<Node<'de>, E> {
        if self.0.accept(found) {
            Ok(node)
        } else {
            Err(E::custom(format_args!(
                "expected a JSON object, found {found}"
            )))
        }
    }
}

impl<'de, F: Fields<'de>> DeserializeSeed<'de> for Lenient<'_, F> {
    type Value = Node<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Fields<'de>> Visitor<'de> for Lenient<'_, F> {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
        self.other(Node::Str(Cow::Borrowed(v)), STRING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
        self.other(Node::Str(Cow::Owned(v.to_owned())), STRING)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node<'de>, E> {
        self.other(Node::Str(Cow::Owned(v)), STRING)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node<'de>, E> {
        self.other(Node::Other, "a boolean")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<'de>, E> {
        self.other(Node::Int(v), NUMBER)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<'de>, E> {
        self.other(Node::Int(i64::try_from(v).unwrap_or(i64::MAX)), NUMBER)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
        self.other(Node::Float(v), NUMBER)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
        self.other(Node::Other, "null")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        // Refused before its elements are read: an array frame is "not an object" even when
        // it is truncated or nested too deep.
        let node = self.other(Node::Other, "an array")?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(node)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        if F::READS_KEYS {
            while let Some(Text(key)) = map.next_key()? {
                match key {
                    Some(key) => self.0.field(&key, &mut map)?,
                    // JSON keys are strings; this is for other deserializers.
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
        } else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        }
        Ok(Node::Object)
    }
}

const STRING: &str = "a string";
const NUMBER: &str = "a number";

impl<'de> de::Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Lenient(&mut Skip).deserialize(d)
    }
}

/// The string under `key` in the object that is the map's next value: `None` when that value
/// is not an object, or the key is absent or not a string.
#[inline]
fn pick_text<'de, A: MapAccess<'de>>(
    map: &mut A,
    key: &'static str,
) -> Result<Option<Cow<'de, str>>, A::Error> {
    let mut pick = Pick::<Text<'de>>::new(key);
    map.next_value_seed(Lenient(&mut pick))?;
    Ok(pick.found.and_then(|t| t.0))
}

/// A string value; any other value is read and gives `None`.
struct Text<'de>(Option<Cow<'de, str>>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Node::deserialize(d).map(|n| Text(n.text().ok()))
    }
}

/// Every field of either direction, borrowed from the input where possible.
#[derive(Default)]
struct Wire<'a> {
    op: Found<Cow<'a, str>>,
    resource_id: Option<Cow<'a, str>>,
    object: Option<&'a RawValue>,
    status: Found<Status>,
    message_headers_reply: Option<Cow<'a, str>>,
    headers_reply: Option<Cow<'a, str>>,
    body: Option<&'a RawValue>,
    reconnect_secret: Option<Cow<'a, str>>,
    /// What the frame was instead of an object (the parse stopped there).
    not_an_object: Option<&'static str>,
}

impl<'de> Fields<'de> for Wire<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "op" => self.op = map.next_value::<Node<'de>>()?.text(),
            "resourceId" => self.resource_id = map.next_value::<Node<'de>>()?.text().ok(),
            "object" => self.object = Some(map.next_value()?),
            "status" => self.status = map.next_value::<Node<'de>>()?.status(),
            "messageHeaders" => self.message_headers_reply = pick_text(map, REPLY_ADDR_HEADER)?,
            "headers" => self.headers_reply = pick_text(map, X_REPLY_ADDRESS)?,
            "body" => self.body = Some(map.next_value()?),
            "parameters" => self.reconnect_secret = pick_text(map, "reconnectSecret")?,
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn accept(&mut self, found: &'static str) -> bool {
        self.not_an_object = Some(found);
        false
    }
}

fn parse_wire(bytes: &[u8]) -> Result<Wire<'_>, FrameError> {
    // Valid UTF-8 (every text frame is) is checked once, in one pass, rather than string by
    // string as the parser meets them; anything else is left to the parser to report.
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_wire_from(serde_json::Deserializer::from_str(text)),
        Err(_) => parse_wire_from(serde_json::Deserializer::from_slice(bytes)),
    }
}

fn parse_wire_from<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<Wire<'de>, FrameError> {
    let mut wire = Wire::default();
    if let Err(e) = Lenient(&mut wire).deserialize(&mut de) {
        return Err(match wire.not_an_object {
            Some(found) => FrameError::NotAnObject { found },
            None => FrameError::InvalidJson {
                message: e.to_string(),
            },
        });
    }
    de.end().map_err(|e| FrameError::InvalidJson {
        message: e.to_string(),
    })?;
    Ok(wire)
}

fn cow_string(c: Cow<'_, str>) -> String {
    c.into_owned()
}

/// `object.config` out of a configureExtension's `object`.
fn extract_config(object: &RawValue) -> Option<Json> {
    let mut pick = Pick::<&RawValue>::new("config");
    let mut de = serde_json::Deserializer::from_str(object.get());
    match Lenient(&mut pick).deserialize(&mut de) {
        Ok(Node::Object) => pick
            .found
            .filter(|raw| raw.get() != "null")
            .map(Json::from_raw),
        _ => None,
    }
}

impl ServerFrame {
    /// Decodes a frame the server sent, from text or binary frame payload.
    ///
    /// # Errors
    /// See [`FrameError`]: invalid JSON, not an object, `op` not a string, neither `op` nor
    /// `status`, or an operation missing a field it cannot do without.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let mut w = parse_wire(bytes)?;
        let resource_id = w.resource_id.take().map(cow_string);
        Self::from_wire(w, resource_id)
    }

    /// Decodes a frame for the connection of source `expected`. A matching `resourceId` is
    /// checked in place, not copied (`resource_id` is then `None`); one naming another source
    /// is given back beside the frame, for the connection to warn about (neither Vantiq SDK
    /// checks it, and dropping a query would leave its caller waiting for a timeout).
    pub(crate) fn decode_for(
        bytes: &[u8],
        expected: &str,
    ) -> Result<(Self, Option<String>), FrameError> {
        let mut w = parse_wire(bytes)?;
        let got = w.resource_id.take();
        let frame = Self::from_wire(w, None)?;
        let other = got.filter(|got| {
            !matches!(frame, ServerFrame::Status(_) | ServerFrame::Unknown { .. })
                && got != expected
        });
        Ok((frame, other.map(cow_string)))
    }

    fn from_wire(w: Wire<'_>, resource_id: Option<String>) -> Result<Self, FrameError> {
        match w.op {
            Found::WrongType => Err(FrameError::OpNotString),
            Found::Absent => match w.status {
                Found::Value(status) => Ok(ServerFrame::Status(StatusFrame {
                    status,
                    body: w.body.filter(|b| b.get() != "null").map(Json::from_raw),
                })),
                _ => Err(FrameError::NoOpNoStatus),
            },
            Found::Value(op) => match &*op {
                "configureExtension" => {
                    let config =
                        w.object
                            .and_then(extract_config)
                            .ok_or(FrameError::MissingField {
                                op: "configureExtension",
                                field: "object.config",
                            })?;
                    Ok(ServerFrame::ConfigureExtension {
                        resource_id,
                        config,
                    })
                }
                "publish" => {
                    // Both Vantiq SDKs hand the handler a null when `object` is missing.
                    let object = w.object.map_or_else(Json::null, Json::from_raw);
                    Ok(ServerFrame::Publish {
                        resource_id,
                        object,
                    })
                }
                "query" => {
                    let reply_address = w.message_headers_reply.map(cow_string).ok_or(
                        FrameError::MissingField {
                            op: "query",
                            field: "messageHeaders.REPLY_ADDR_HEADER",
                        },
                    )?;
                    let object = w
                        .object
                        .filter(|o| o.get() != "null")
                        .map_or_else(Json::empty_object, Json::from_raw);
                    Ok(ServerFrame::Query {
                        resource_id,
                        reply_address,
                        object,
                    })
                }
                "reconnectRequired" => Ok(ServerFrame::ReconnectRequired { resource_id }),
                _ => Ok(ServerFrame::Unknown { op: cow_string(op) }),
            },
        }
    }

    /// Encodes the frame in compact form (as the embedded test server sends it).
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(128);
        match self {
            ServerFrame::Status(s) => {
                out.push_str("{\"status\":");
                push_i64(&mut out, s.status.0);
                if let Some(body) = &s.body {
                    out.push_str(",\"body\":");
                    out.push_str(body.as_str());
                }
                out.push('}');
            }
            ServerFrame::ConfigureExtension {
                resource_id,
                config,
            } => {
                push_op_head(&mut out, "configureExtension", resource_id.as_deref());
                out.push_str(",\"object\":{\"config\":");
                out.push_str(config.as_str());
                out.push_str("}}");
            }
            ServerFrame::Publish {
                resource_id,
                object,
            } => {
                push_op_head(&mut out, "publish", resource_id.as_deref());
                out.push_str(",\"object\":");
                out.push_str(object.as_str());
                out.push('}');
            }
            ServerFrame::Query {
                resource_id,
                reply_address,
                object,
            } => {
                push_op_head(&mut out, "query", resource_id.as_deref());
                out.push_str(",\"messageHeaders\":{\"REPLY_ADDR_HEADER\":");
                push_json_string(&mut out, reply_address);
                out.push_str("},\"object\":");
                out.push_str(object.as_str());
                out.push('}');
            }
            ServerFrame::ReconnectRequired { resource_id } => {
                push_op_head(&mut out, "reconnectRequired", resource_id.as_deref());
                out.push('}');
            }
            ServerFrame::Unknown { op } => {
                out.push_str("{\"op\":");
                push_json_string(&mut out, op);
                out.push('}');
            }
        }
        out
    }
}

impl ClientFrame {
    /// Decodes a frame a connector sent (the server side of the protocol: the test kit).
    ///
    /// # Errors
    /// See [`FrameError`]; an op-less frame must carry `headers.X-Reply-Address`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let w = parse_wire(bytes)?;
        match w.op {
            Found::WrongType => Err(FrameError::OpNotString),
            Found::Absent => {
                let Found::Value(status) = w.status else {
                    return Err(FrameError::NoOpNoStatus);
                };
                let reply_address =
                    w.headers_reply
                        .map(cow_string)
                        .ok_or(FrameError::MissingField {
                            op: "query reply",
                            field: "headers.X-Reply-Address",
                        })?;
                Ok(ClientFrame::QueryReply(QueryReply {
                    status,
                    reply_address,
                    body: w.body.filter(|b| b.get() != "null").map(Json::from_raw),
                }))
            }
            Found::Value(op) => match &*op {
                "validate" => {
                    let token =
                        match w.object {
                            None => None,
                            Some(raw) => serde_json::from_str::<Option<String>>(raw.get())
                                .map_err(|_| FrameError::MissingField {
                                    op: "validate",
                                    field: "object (a string)",
                                })?,
                        };
                    Ok(ClientFrame::Validate { token })
                }
                "authenticate" => {
                    #[derive(serde::Deserialize)]
                    struct Creds {
                        username: String,
                        password: String,
                    }
                    let creds = w
                        .object
                        .and_then(|raw| serde_json::from_str::<Creds>(raw.get()).ok())
                        .ok_or(FrameError::MissingField {
                            op: "authenticate",
                            field: "object.username/object.password",
                        })?;
                    Ok(ClientFrame::Authenticate {
                        username: creds.username,
                        password: creds.password,
                    })
                }
                "connectExtension" => {
                    let source = w
                        .resource_id
                        .map(cow_string)
                        .ok_or(FrameError::MissingField {
                            op: "connectExtension",
                            field: "resourceId",
                        })?;
                    Ok(ClientFrame::ConnectExtension {
                        source,
                        reconnect_secret: w.reconnect_secret.map(cow_string),
                    })
                }
                "notification" => {
                    let source = w
                        .resource_id
                        .map(cow_string)
                        .ok_or(FrameError::MissingField {
                            op: "notification",
                            field: "resourceId",
                        })?;
                    let object = w
                        .object
                        .map(Json::from_raw)
                        .ok_or(FrameError::MissingField {
                            op: "notification",
                            field: "object",
                        })?;
                    Ok(ClientFrame::Notification { source, object })
                }
                _ => Ok(ClientFrame::Unknown { op: cow_string(op) }),
            },
        }
    }

    /// Encodes the frame in compact form: only the keys the server needs.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(128);
        match self {
            ClientFrame::Validate { token } => {
                out.push_str(
                    "{\"op\":\"validate\",\"resourceName\":\"system.credentials\",\"object\":",
                );
                match token {
                    Some(t) => push_json_string(&mut out, t),
                    None => out.push_str("null"),
                }
                out.push('}');
            }
            ClientFrame::Authenticate { username, password } => {
                out.push_str(
                    "{\"op\":\"authenticate\",\"resourceName\":\"system.credentials\",\"object\":{\"username\":",
                );
                push_json_string(&mut out, username);
                out.push_str(",\"password\":");
                push_json_string(&mut out, password);
                out.push_str("}}");
            }
            ClientFrame::ConnectExtension {
                source,
                reconnect_secret,
            } => {
                push_op_head(&mut out, "connectExtension", Some(source));
                if let Some(secret) = reconnect_secret {
                    out.push_str(",\"parameters\":{\"reconnectSecret\":");
                    push_json_string(&mut out, secret);
                    out.push('}');
                }
                out.push('}');
            }
            ClientFrame::Notification { source, object } => {
                let prefix = notification_prefix(source);
                out.reserve(prefix.len() + object.len() + 1);
                out.push_str(&prefix);
                out.push_str(object.as_str());
                out.push('}');
            }
            ClientFrame::QueryReply(r) => {
                let prefix = reply_prefix(&r.reply_address);
                push_reply(
                    &mut out,
                    &prefix,
                    r.status,
                    r.body.as_ref().map(Json::as_str),
                );
            }
            ClientFrame::Unknown { op } => {
                out.push_str("{\"op\":");
                push_json_string(&mut out, op);
                out.push('}');
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers (also the connection's fast path)
// ---------------------------------------------------------------------------------------------

fn push_op_head(out: &mut String, op: &str, resource_id: Option<&str>) {
    out.push_str("{\"op\":\"");
    out.push_str(op);
    out.push_str("\",\"resourceName\":\"sources\"");
    if let Some(id) = resource_id {
        out.push_str(",\"resourceId\":");
        push_json_string(out, id);
    }
}

/// `{"op":"notification","resourceName":"sources","resourceId":"<source>","object":`
pub(crate) fn notification_prefix(source: &str) -> String {
    let mut out = String::with_capacity(72 + source.len());
    push_op_head(&mut out, "notification", Some(source));
    out.push_str(",\"object\":");
    out
}

/// `,"headers":{"X-Reply-Address":"<addr>"}`: the part of a query reply after the status.
pub(crate) fn reply_prefix(reply_address: &str) -> String {
    let mut out = String::with_capacity(40 + reply_address.len());
    out.push_str(",\"headers\":{\"X-Reply-Address\":");
    push_json_string(&mut out, reply_address);
    out.push('}');
    out
}

/// `{"status":N<reply_prefix>[,"body":<body>]}`
pub(crate) fn push_reply(out: &mut String, prefix: &str, status: Status, body: Option<&str>) {
    // Exact for 3-digit statuses: a frame whose capacity equals its length becomes the
    // WebSocket message's buffer without another allocation.
    out.reserve(reply_len(prefix, status, body.map(str::len)));
    push_reply_head(out, prefix, status, body.is_some());
    if let Some(body) = body {
        out.push_str(body);
    }
    out.push('}');
}

/// The length of a reply with a body of `body` bytes (a bound when the status has more than
/// three digits).
pub(crate) fn reply_len(prefix: &str, status: Status, body: Option<usize>) -> usize {
    let digits = if (100..1000).contains(&status.0) {
        3
    } else {
        20
    };
    // `{"status":` N prefix [`,"body":` body] `}`
    10 + digits + prefix.len() + body.map_or(0, |b| 8 + b) + 1
}

/// `{"status":N<reply_prefix>` and `,"body":` if a body follows.
pub(crate) fn push_reply_head(out: &mut String, prefix: &str, status: Status, body: bool) {
    out.push_str("{\"status\":");
    push_status(out, status.0);
    out.push_str(prefix);
    if body {
        out.push_str(",\"body\":");
    }
}

fn push_status(out: &mut String, n: i64) {
    if let Ok(n @ 100..=999) = u16::try_from(n) {
        // The common case, without the formatting machinery.
        for d in [n / 100, n / 10 % 10, n % 10] {
            out.push(char::from_digit(u32::from(d), 10).unwrap_or('0'));
        }
    } else {
        push_i64(out, n);
    }
}

fn push_i64(out: &mut String, n: i64) {
    use std::fmt::Write as _;
    let _ = write!(out, "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert!(Status(100).is_partial());
        assert!(Status(204).is_success());
        assert!(Status(300).is_error());
        assert!(Status(0).is_error());
        assert!(!Status(299).is_error());
    }
}
