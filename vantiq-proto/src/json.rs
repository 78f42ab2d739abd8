//! [`Json`]: a validated JSON text that travels through the SDK without being re-parsed.

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
/// [`Json::try_to_value`].
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
    /// The value is nested deeper than `serde_json`'s recursion limit (128 levels). A `Json`
    /// can hold such a value (a frame carries its payload as text without building a tree),
    /// so a payload from the server can make this fail: handle the error rather than assume
    /// a tree.
    ///
    /// ```
    /// use vantiq_proto::Json;
    ///
    /// let shallow = Json::from_string(r#"{"rows": 3}"#.to_owned()).unwrap();
    /// assert_eq!(shallow.try_to_value().unwrap()["rows"], 3);
    ///
    /// let deep = Json::from_string(format!("{}{}", "[".repeat(200), "]".repeat(200))).unwrap();
    /// assert!(deep.try_to_value().is_err());
    /// ```
    pub fn try_to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// Transitional: [`Json::try_to_value`], with `Null` in place of the error, which it also
    /// logs as a warning. Kept until the last callers move to [`Json::try_to_value`]; new
    /// code should not use it.
    #[must_use]
    pub fn to_value(&self) -> serde_json::Value {
        self.try_to_value().unwrap_or_else(|e| {
            tracing::warn!(
                bytes = self.len(),
                error = %e,
                "a JSON value could not be turned into a tree; using null"
            );
            serde_json::Value::Null
        })
    }

    /// The underlying raw value.
    #[must_use]
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
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
        assert!(ok.try_to_value().unwrap().is_array());
        let deep = Json::from_string(nested(129)).unwrap();
        let err = deep.try_to_value().unwrap_err();
        assert!(
            err.to_string().contains("recursion limit exceeded"),
            "{err}"
        );
        let deep = Json::from_string(nested(10_000)).unwrap();
        assert!(deep.try_to_value().is_err());
    }

    #[test]
    fn transitional_to_value_agrees_when_the_tree_fits() {
        let j = Json::from_string(r#"{"a":[1,{"b":null}]}"#.to_owned()).unwrap();
        assert_eq!(j.to_value(), j.try_to_value().unwrap());
        assert_eq!(j.to_value(), serde_json::json!({"a": [1, {"b": null}]}));
    }
}
