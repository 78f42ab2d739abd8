//! What a query or a publish asks for: `{"query": "<SQL>", "bundleFactor": N}` or
//! `{"query": ["<SQL>", …]}`.

use serde_json::Value;
use vantiq_connector_tokio::QueryError;

use crate::config::{DEFAULT_BUNDLE_FACTOR, java_int};
use crate::errors;

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A `SELECT`: its rows stream back, `bundle_factor` per reply (0: all in one).
    Select {
        /// The statement.
        sql: String,
        /// Rows per reply.
        bundle_factor: usize,
    },
    /// Any other statement, run as an update.
    Update(String),
    /// Statements run as one batch.
    Batch(Vec<String>),
}

impl Request {
    /// The statement(s), for error messages and logs.
    #[must_use]
    pub fn text(&self) -> String {
        match self {
            Request::Select { sql, .. } | Request::Update(sql) => sql.clone(),
            Request::Batch(list) => format!("[{}]", list.join(", ")),
        }
    }
}

/// Whether the Java connector treats `sql` as a query: it starts with `select`, ignoring
/// leading white space and case.
#[must_use]
pub fn is_select(sql: &str) -> bool {
    sql.trim_start()
        .get(..6)
        .is_some_and(|head| head.eq_ignore_ascii_case("select"))
}

/// Reads a query's `WITH` parameters.
///
/// # Errors
/// The Java connector's errors: [`errors::INVALID_QUERY_REQUEST`] (not an object),
/// [`errors::QUERY_NOT_STRING`], [`errors::INVALID_BATCH_ELEMENT`].
pub fn parse_query(params: &Value) -> Result<Request, QueryError> {
    let params = params
        .as_object()
        .ok_or_else(errors::invalid_query_request)?;
    match params.get("query") {
        Some(Value::String(sql)) => {
            if is_select(sql) {
                let bundle_factor = params
                    .get("bundleFactor")
                    .and_then(java_int)
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(DEFAULT_BUNDLE_FACTOR);
                Ok(Request::Select {
                    sql: sql.clone(),
                    bundle_factor,
                })
            } else {
                Ok(Request::Update(sql.clone()))
            }
        }
        Some(Value::Array(items)) => {
            let mut batch = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(sql) if !is_select(sql) => batch.push(sql.clone()),
                    _ => return Err(errors::invalid_batch_element()),
                }
            }
            Ok(Request::Batch(batch))
        }
        _ => Err(errors::query_not_string()),
    }
}

/// Reads a publish's object: a string runs as an update, a list as a batch.
///
/// # Errors
/// A text saying what is wrong (publishes have no reply; it is logged).
pub fn parse_publish(object: &Value) -> Result<Request, String> {
    let Some(map) = object.as_object() else {
        return Err(format!("the published message is not an object: {object}"));
    };
    match map.get("query") {
        Some(Value::String(sql)) => Ok(Request::Update(sql.clone())),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("the batch element {i} is not a string"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Request::Batch),
        Some(other) => Err(format!(
            "`query` must be a string or a list of strings, not {other}"
        )),
        None => Err("the published message has no `query`".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_and_updates() {
        assert!(is_select("  \n SeLeCt 1"));
        assert!(!is_select("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(!is_select("sel"));
        assert_eq!(
            parse_query(&json!({"query": " select 1"})).unwrap(),
            Request::Select {
                sql: " select 1".into(),
                bundle_factor: 500
            }
        );
        for (bf, want) in [
            (json!(0), 0),
            (json!(7), 7),
            (json!(-1), 500),
            (json!("7"), 500),
            (json!(7.5), 500),
        ] {
            let r = parse_query(&json!({"query": "SELECT 1", "bundleFactor": bf})).unwrap();
            assert_eq!(
                r,
                Request::Select {
                    sql: "SELECT 1".into(),
                    bundle_factor: want
                }
            );
        }
        assert_eq!(
            parse_query(&json!({"query": "DELETE FROM t"})).unwrap(),
            Request::Update("DELETE FROM t".into())
        );
    }

    #[test]
    fn errors_have_the_java_codes() {
        let code = |v: Value| parse_query(&v).unwrap_err().code;
        assert_eq!(code(json!([1])), errors::INVALID_QUERY_REQUEST);
        assert_eq!(code(json!({})), errors::QUERY_NOT_STRING);
        assert_eq!(code(json!({"query": 3})), errors::QUERY_NOT_STRING);
        assert_eq!(
            code(json!({"query": ["INSERT 1", "select 2"]})),
            errors::INVALID_BATCH_ELEMENT
        );
        assert_eq!(
            code(json!({"query": ["INSERT 1", 2]})),
            errors::INVALID_BATCH_ELEMENT
        );
        assert_eq!(
            parse_query(&json!({"query": ["a", "b"]})).unwrap(),
            Request::Batch(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn publishes() {
        assert_eq!(
            parse_publish(&json!({"query": "INSERT"})).unwrap(),
            Request::Update("INSERT".into())
        );
        assert_eq!(
            parse_publish(&json!({"query": ["a"]})).unwrap(),
            Request::Batch(vec!["a".into()])
        );
        assert!(parse_publish(&json!({"query": [1]})).is_err());
        assert!(parse_publish(&json!({})).is_err());
        assert!(parse_publish(&json!("x")).is_err());
    }
}
