//! JSON text as the SDK carries it: [`Json`], a validated JSON text that travels through the
//! SDK without being re-parsed, and [`push_json_string`], the one JSON string escaper of the
//! workspace (frames, query replies and the health probe's bodies all use it).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A piece of valid, compact-or-not JSON text, kept as text.
///
/// Payloads (a publish's object, a query's parameters, a configuration document, rows of a
/// query reply, a notification) cross the SDK as `Json`: decoding a frame copies the payload's
/// text once and never builds a tree, and encoding a frame splices the text in as it is. Turn it
/// into your own type with [`Json::parse`], or into a [`serde_json::Value`] with
/// [`Json::to_value`].
///
/// ```
/// use vantiq_proto::Json;
///
/// let j = Json::from_serialize(&serde_json::json!({"temp": 21.5})).unwrap();
/// assert_eq!(j.as_str(), r#"{"temp":21.5}"#);
/// assert!(j.is_object());
///
/// #[derive(serde::Deserialize)]
/// struct Reading { temp: f64 }
/// assert_eq!(j.parse::<Reading>().unwrap().temp, 21.5);
/// ```
#[derive(Clone)]
pub struct Json(Box<RawValue>);

impl Json {
    /// Serializes `value` to compact JSON text.
    ///
    /// # Errors
    /// Whatever `serde_json` reports for a value it cannot serialize (a map with non-string
    /// keys, a failing `Serialize` implementation).
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Json)
    }

    /// Takes JSON text, checking that it is one valid JSON value.
    ///
    /// # Errors
    /// The text is not one valid JSON value.
    pub fn from_string(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Json)
    }

    /// Copies a borrowed raw value.
    pub(crate) fn from_raw(raw: &RawValue) -> Self {
        Json(raw.to_owned())
    }

    /// The JSON `null`.
    #[must_use]
    pub fn null() -> Self {
        Json(RawValue::NULL.to_owned())
    }

    /// The empty JSON object `{}`.
    #[must_use]
    pub fn empty_object() -> Self {
        // `{}` is valid JSON; from_string cannot fail on it, but stay total anyway.
        RawValue::from_string("{}".to_owned()).map_or_else(|_| Self::null(), Json)
    }

    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Consumes the value, giving back its text.
    #[must_use]
    pub fn into_string(self) -> String {
        let boxed: Box<str> = self.0.into();
        boxed.into_string()
    }

    /// Length of the JSON text in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Never true: valid JSON text is at least one byte long. Present for API symmetry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }

    fn first_byte(&self) -> Option<u8> {
        self.0
            .get()
            .bytes()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    }

    /// True when the value is a JSON object.
    #[must_use]
    pub fn is_object(&self) -> bool {
        self.first_byte() == Some(b'{')
    }

    /// True when the value is a JSON array.
    #[must_use]
    pub fn is_array(&self) -> bool {
        self.first_byte() == Some(b'[')
    }

    /// True when the value is JSON `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        self.first_byte() == Some(b'n')
    }

    /// Deserializes the text into `T`.
    ///
    /// # Errors
    /// The JSON does not have the shape `T` expects.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// Parses the text into a [`serde_json::Value`] tree.
    ///
    /// # Errors
    /// [`JsonTreeError`] when the text has no `Value` form: it is nested deeper than
    /// `serde_json`'s recursion limit (128 levels), or holds a number out of `f64`'s range. A
    /// `Json` can hold such text (a frame carries its payload as text without building a
    /// tree), so a payload from the server can make this fail: handle the error rather than
    /// assume a tree.
    ///
    /// ```
    /// use vantiq_proto::Json;
    ///
    /// let shallow = Json::from_string(r#"{"rows": 3}"#.to_owned()).unwrap();
    /// assert_eq!(shallow.to_value().unwrap()["rows"], 3);
    ///
    /// let deep = Json::from_string(format!("{}{}", "[".repeat(200), "]".repeat(200))).unwrap();
    /// let err = deep.to_value().unwrap_err();
    /// assert_eq!(err.text_len(), 400);
    /// ```
    pub fn to_value(&self) -> Result<serde_json::Value, JsonTreeError> {
        serde_json::from_str(self.0.get()).map_err(|source| JsonTreeError {
            len: self.len(),
            source,
        })
    }

    /// The underlying raw value.
    #[must_use]
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

/// Why [`Json::to_value`] could not build a [`serde_json::Value`] tree out of valid JSON text.
///
/// The text is kept valid and unchanged in the [`Json`]; only the tree is impossible: the
/// value is nested deeper than `serde_json`'s recursion limit (128 levels), or a number is
/// out of `f64`'s range. The [source](std::error::Error::source) is `serde_json`'s error,
/// with the line and column.
#[derive(Debug, thiserror::Error)]
#[error("JSON text of {len} bytes has no serde_json::Value form: {source}")]
pub struct JsonTreeError {
    len: usize,
    #[source]
    source: serde_json::Error,
}

impl JsonTreeError {
    /// The length in bytes of the JSON text that could not be turned into a tree.
    #[must_use]
    pub fn text_len(&self) -> usize {
        self.len
    }

    /// The line (1-based) of the text at which the tree could not be built.
    #[must_use]
    pub fn line(&self) -> usize {
        self.source.line()
    }

    /// The column (1-based) of the text at which the tree could not be built.
    #[must_use]
    pub fn column(&self) -> usize {
        self.source.column()
    }
}

/// Appends `s` to `out` as a JSON string literal, quotes included.
///
/// The escaping is `serde_json`'s: `"` and `\` are escaped, control characters below
/// U+0020 become `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`, and everything else (DEL and
/// non-ASCII characters included) is copied as it is. It writes straight into `out`, without
/// the formatting machinery or a temporary string.
///
/// ```
/// let mut out = String::from("{\"name\":");
/// vantiq_proto::json::push_json_string(&mut out, "a\"b\n\u{1}é");
/// out.push('}');
/// assert_eq!(out, r#"{"name":"a\"b\n\u0001é"}"#);
/// ```
pub fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(s.get(start..i).unwrap_or_default());
        match esc {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from(
                    HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
                ));
                out.push(char::from(
                    HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0'),
                ));
            }
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

impl From<serde_json::Value> for Json {
    fn from(value: serde_json::Value) -> Self {
        Json::from_serialize(&value).unwrap_or_else(|_| Json::null())
    }
}

impl From<&serde_json::Value> for Json {
    fn from(value: &serde_json::Value) -> Self {
        Json::from_serialize(value).unwrap_or_else(|_| Json::null())
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Json {}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn deep_value_is_an_error_not_null() {
        // 127 levels is the deepest tree serde_json builds; a `Json` holds deeper text.
        let ok = Json::from_string(nested(127)).unwrap();
        assert!(ok.to_value().unwrap().is_array());
        let deep = Json::from_string(nested(129)).unwrap();
        let err = deep.to_value().unwrap_err();
        assert_eq!(err.text_len(), 258);
        assert_eq!((err.line(), err.column()), (1, 128));
        assert!(
            err.to_string()
                .starts_with("JSON text of 258 bytes has no serde_json::Value form: "),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let deep = Json::from_string(nested(10_000)).unwrap();
        assert_eq!(deep.to_value().unwrap_err().text_len(), 20_000);
    }

    #[test]
    fn out_of_range_number_is_an_error() {
        let j = Json::from_string("[1e400]".to_owned()).unwrap();
        let err = j.to_value().unwrap_err();
        assert_eq!((err.text_len(), err.line()), (7, 1));
    }

    #[test]
    fn to_value_builds_the_tree() {
        let j = Json::from_string(r#"{"a":[1,{"b":null}]}"#.to_owned()).unwrap();
        assert_eq!(
            j.to_value().unwrap(),
            serde_json::json!({"a": [1, {"b": null}]})
        );
        assert_eq!(Json::null().to_value().unwrap(), serde_json::Value::Null);
    }

    #[test]
    fn json_string_escaping_matches_serde_json() {
        for s in [
            "",
            "plain",
            "quote\"back\\slash",
            "ctl\u{1}\u{1f}\n\t\r\u{8}\u{c}",
            "del\u{7f}",
            "ünï😀",
        ] {
            let mut out = String::from("x");
            push_json_string(&mut out, s);
            assert_eq!(out, format!("x{}", serde_json::to_string(s).unwrap()));
            let back: String = serde_json::from_str(out.get(1..).unwrap()).unwrap();
            assert_eq!(back, s);
        }
    }
}
