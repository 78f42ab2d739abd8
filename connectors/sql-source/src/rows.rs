//! Row encoding, as the Java connector's `createMapFromResults`: a row is a JSON object keyed
//! by column name, NULL columns are left out, numbers stay numbers, and dates and times take
//! the Java connector's formats in the connector's local time zone (`TZ`; UTC in most
//! containers):
//!
//! | SQL type | JSON |
//! |---|---|
//! | integers, `REAL`/`FLOAT`/`DOUBLE` | number (`NaN` and infinities as strings) |
//! | `NUMERIC`/`DECIMAL` | number, every digit kept (`NaN` as a string) |
//! | `BOOLEAN` | `true`/`false` (SQLite stores integers: a number) |
//! | `DATE` | `"yyyy-MM-dd"` |
//! | `TIME`, `TIMETZ` | `"HH:mm:ss.SSSZ"`, e.g. `"10:33:36.000+0000"` |
//! | `TIMESTAMP`, `TIMESTAMPTZ` (SQLite: columns declared `DATETIME`/`TIMESTAMP`) | `"yyyy-MM-dd'T'HH:mm:ss.SSSZ"`, e.g. `"2024-05-01T10:33:36.000+0000"` |
//! | `BYTEA`, `BLOB` | base64 string (Jackson's form for `byte[]`) |
//! | `JSON`, `JSONB` | the JSON value itself |
//! | anything else (text, `UUID`, `INTERVAL`, arrays, enums, …) | the database's text form |
//!
//! SQLite values are typed by how they are stored; a column declared `DATE`, `TIME`,
//! `DATETIME` or `TIMESTAMP` holding ISO-8601 text or epoch milliseconds (the JDBC driver's
//! default) is formatted as a date or time, other text is passed through as it is.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{
    DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, NaiveTime, Offset as _, TimeZone,
};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::sqlite::SqliteRow;
use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

/// One column value.
#[derive(Debug, Clone)]
pub enum Cell {
    /// SQL NULL: the column is left out of the row.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A finite floating-point number.
    Float(f64),
    /// A number kept as its exact decimal text (NUMERIC), or a JSON document: written as is.
    Raw(Box<RawValue>),
    /// Text.
    Text(String),
}

impl PartialEq for Cell {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Cell::Null, Cell::Null) => true,
            (Cell::Bool(a), Cell::Bool(b)) => a == b,
            (Cell::Int(a), Cell::Int(b)) => a == b,
            (Cell::Float(a), Cell::Float(b)) => a == b,
            (Cell::Raw(a), Cell::Raw(b)) => a.get() == b.get(),
            (Cell::Text(a), Cell::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl Cell {
    /// Whether this is SQL NULL.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Null => s.serialize_unit(),
            Cell::Bool(b) => s.serialize_bool(*b),
            Cell::Int(i) => s.serialize_i64(*i),
            Cell::Float(f) => s.serialize_f64(*f),
            Cell::Raw(r) => r.serialize(s),
            Cell::Text(t) => s.serialize_str(t),
        }
    }
}

/// One row: the column names (shared by every row of a result) and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    cells: Vec<Cell>,
}

impl Row {
    /// The row as (column, value) pairs, NULLs included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Cell)> {
        self.columns
            .iter()
            .map(String::as_str)
            .zip(self.cells.iter())
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let present = self.cells.iter().filter(|c| !c.is_null()).count();
        let mut map = s.serialize_map(Some(present))?;
        for (name, cell) in self.iter() {
            if !cell.is_null() {
                map.serialize_entry(name, cell)?;
            }
        }
        map.end()
    }
}

/// A column that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}` ({sql_type}) could not be read: {reason}")]
pub struct DecodeError {
    /// The column's name.
    pub column: String,
    /// Its SQL type.
    pub sql_type: String,
    /// What went wrong.
    pub reason: String,
}

/// Turns database rows into [`Row`]s, sharing the column names between rows.
#[derive(Debug, Default)]
pub struct Encoder {
    columns: Option<Arc<[String]>>,
}

impl Encoder {
    /// A fresh encoder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn columns<'c, I>(&mut self, names: I, len: usize) -> Arc<[String]>
    where
        I: Iterator<Item = &'c str> + Clone,
    {
        if let Some(cols) = &self.columns
            && cols.len() == len
            && cols.iter().map(String::as_str).eq(names.clone())
        {
            return cols.clone();
        }
        let cols: Arc<[String]> = names.map(str::to_owned).collect();
        self.columns = Some(cols.clone());
        cols
    }

    /// Encodes a SQLite row.
    ///
    /// # Errors
    /// A value could not be read.
    pub fn sqlite(&mut self, row: &SqliteRow) -> Result<Row, DecodeError> {
        let cols = row.columns();
        let names = self.columns(cols.iter().map(|c| c.name()), cols.len());
        let mut cells = Vec::with_capacity(cols.len());
        for (i, col) in cols.iter().enumerate() {
            cells.push(
                sqlite_cell(row, i, col.type_info().name()).map_err(|reason| DecodeError {
                    column: col.name().to_owned(),
                    sql_type: col.type_info().name().to_owned(),
                    reason,
                })?,
            );
        }
        Ok(Row {
            columns: names,
            cells,
        })
    }

    /// Encodes a PostgreSQL row (values in text format, as the simple query protocol sends
    /// them).
    ///
    /// # Errors
    /// A value could not be read.
    pub fn postgres(&mut self, row: &PgRow) -> Result<Row, DecodeError> {
        let cols = row.columns();
        let names = self.columns(cols.iter().map(|c| c.name()), cols.len());
        let mut cells = Vec::with_capacity(cols.len());
        for (i, col) in cols.iter().enumerate() {
            cells.push(pg_cell(row, i).map_err(|reason| DecodeError {
                column: col.name().to_owned(),
                sql_type: col.type_info().name().to_owned(),
                reason,
            })?);
        }
        Ok(Row {
            columns: names,
            cells,
        })
    }
}

// -------------------------------------------------------------------------------------------
// SQLite
// -------------------------------------------------------------------------------------------

fn sqlite_cell(row: &SqliteRow, i: usize, declared: &str) -> Result<Cell, String> {
    let value = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if value.is_null() {
        return Ok(Cell::Null);
    }
    let storage = value.type_info().name().to_owned();
    drop(value);
    let temporal = match declared {
        "DATE" => Some(Temporal::Date),
        "TIME" => Some(Temporal::Time),
        "DATETIME" => Some(Temporal::Timestamp),
        _ => None,
    };
    match storage.as_str() {
        "INTEGER" => {
            let n: i64 = row.try_get_unchecked(i).map_err(|e| e.to_string())?;
            Ok(match temporal.and_then(|t| from_epoch_millis(t, n)) {
                Some(text) => Cell::Text(text),
                None => Cell::Int(n),
            })
        }
        "REAL" => {
            let f: f64 = row.try_get_unchecked(i).map_err(|e| e.to_string())?;
            Ok(float(f))
        }
        "BLOB" => {
            let b: &[u8] = row.try_get_unchecked(i).map_err(|e| e.to_string())?;
            Ok(Cell::Text(
                base64::engine::general_purpose::STANDARD.encode(b),
            ))
        }
        _ => {
            let s: &str = row.try_get_unchecked(i).map_err(|e| e.to_string())?;
            Ok(Cell::Text(
                temporal
                    .and_then(|t| reformat_text(t, s))
                    .unwrap_or_else(|| s.to_owned()),
            ))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Temporal {
    Date,
    Time,
    Timestamp,
}

fn from_epoch_millis(t: Temporal, ms: i64) -> Option<String> {
    let utc = DateTime::from_timestamp_millis(ms)?;
    let local = utc.with_timezone(&Local);
    Some(match t {
        Temporal::Date => local.format(DATE).to_string(),
        Temporal::Time => local.format(TIME).to_string(),
        Temporal::Timestamp => local.format(TIMESTAMP).to_string(),
    })
}

/// ISO-8601 text of a SQLite date/time column in the Java connector's format.
fn reformat_text(t: Temporal, s: &str) -> Option<String> {
    let s = s.trim();
    match t {
        Temporal::Date => {
            let head = s.get(..10)?;
            let d = NaiveDate::parse_from_str(head, "%Y-%m-%d").ok()?;
            Some(d.format(DATE).to_string())
        }
        Temporal::Time => java_time(s),
        Temporal::Timestamp => java_timestamp(s),
    }
}

// -------------------------------------------------------------------------------------------
// PostgreSQL
// -------------------------------------------------------------------------------------------

fn pg_cell(row: &PgRow, i: usize) -> Result<Cell, String> {
    let value = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if value.is_null() {
        return Ok(Cell::Null);
    }
    if value.format() == PgValueFormat::Binary {
        // The simple query protocol sends text; stay total if that ever changes.
        let bytes = value.as_bytes().map_err(|e| e.to_string())?;
        return Ok(Cell::Text(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ));
    }
    let type_name = value.type_info().name().to_owned();
    let text = value.as_str().map_err(|e| e.to_string())?;
    Ok(pg_text(&type_name, text))
}

/// A PostgreSQL value from its text form and type name.
pub(crate) fn pg_text(type_name: &str, text: &str) -> Cell {
    match type_name {
        "BOOL" => match text {
            "t" => Cell::Bool(true),
            "f" => Cell::Bool(false),
            other => Cell::Text(other.to_owned()),
        },
        "INT2" | "INT4" | "INT8" | "OID" => text
            .parse::<i64>()
            .map_or_else(|_| Cell::Text(text.to_owned()), Cell::Int),
        "FLOAT4" | "FLOAT8" => text
            .parse::<f64>()
            .map_or_else(|_| Cell::Text(text.to_owned()), float),
        "NUMERIC" => exact_number(text).unwrap_or_else(|| Cell::Text(text.to_owned())),
        "DATE" => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(d) => Cell::Text(d.format(DATE).to_string()),
            Err(_) => Cell::Text(text.to_owned()), // infinity, BC dates
        },
        "TIME" | "TIMETZ" => Cell::Text(java_time(text).unwrap_or_else(|| text.to_owned())),
        "TIMESTAMP" | "TIMESTAMPTZ" => {
            Cell::Text(java_timestamp(text).unwrap_or_else(|| text.to_owned()))
        }
        "JSON" | "JSONB" => RawValue::from_string(text.to_owned())
            .map_or_else(|_| Cell::Text(text.to_owned()), Cell::Raw),
        "BYTEA" => match text.strip_prefix("\\x").and_then(unhex) {
            Some(bytes) => Cell::Text(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => Cell::Text(text.to_owned()),
        },
        _ => Cell::Text(text.to_owned()),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|pair| {
            let hi = (*pair.first()? as char).to_digit(16)?;
            let lo = (*pair.get(1)? as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// A decimal text (`-12.340`) as an exact JSON number.
fn exact_number(text: &str) -> Option<Cell> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    let ok = !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|c| c.is_ascii_digit())
        && frac.bytes().all(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    RawValue::from_string(text.to_owned()).ok().map(Cell::Raw)
}

fn float(f: f64) -> Cell {
    if f.is_finite() {
        Cell::Float(f)
    } else if f.is_nan() {
        Cell::Text("NaN".to_owned())
    } else if f > 0.0 {
        Cell::Text("Infinity".to_owned())
    } else {
        Cell::Text("-Infinity".to_owned())
    }
}

// -------------------------------------------------------------------------------------------
// Dates and times, Java's SimpleDateFormat patterns
// -------------------------------------------------------------------------------------------

/// `yyyy-MM-dd`.
const DATE: &str = "%Y-%m-%d";
/// `HH:mm:ss.SSSZ`.
const TIME: &str = "%H:%M:%S%.3f%z";
/// `yyyy-MM-dd'T'HH:mm:ss.SSSZ`.
const TIMESTAMP: &str = "%Y-%m-%dT%H:%M:%S%.3f%z";

/// A timestamp text (`2024-05-01 10:33:36.123456`, with or without `T`, with or without an
/// offset) in the local zone, `yyyy-MM-dd'T'HH:mm:ss.SSSZ`.
fn java_timestamp(text: &str) -> Option<String> {
    let t = text.trim().replacen('T', " ", 1);
    let t = t.strip_suffix('Z').map_or(t.clone(), |s| format!("{s}+00"));
    for pattern in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(&t, pattern) {
            return Some(dt.with_timezone(&Local).format(TIMESTAMP).to_string());
        }
    }
    for pattern in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&t, pattern) {
            // A wall-clock time, read in the local zone as the JDBC driver does.
            let local = Local.from_local_datetime(&naive).earliest()?;
            return Some(local.format(TIMESTAMP).to_string());
        }
    }
    None
}

/// A time text (`10:33:36.5`, optionally with an offset `+02`/`-05:30`) in the local zone,
/// `HH:mm:ss.SSSZ` (the offset the local zone had on 1970-01-01, as `java.sql.Time`).
fn java_time(text: &str) -> Option<String> {
    let text = text.trim();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let (clock, offset) = match text.rfind(['+', '-']) {
        Some(i) => (text.get(..i)?, Some(text.get(i..)?)),
        None => (text, None),
    };
    let time = NaiveTime::parse_from_str(clock, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(clock, "%H:%M"))
        .ok()?;
    let at = epoch.and_time(time);
    let local = match offset {
        Some(o) => {
            let o = parse_offset(o)?;
            o.from_local_datetime(&at).single()?.with_timezone(&Local)
        }
        None => Local.from_local_datetime(&at).earliest()?,
    };
    let fixed: FixedOffset = local.offset().fix();
    Some(local.with_timezone(&fixed).format(TIME).to_string())
}

fn parse_offset(o: &str) -> Option<FixedOffset> {
    let (sign, rest) = match o.as_bytes().first()? {
        b'+' => (1, o.get(1..)?),
        b'-' => (-1, o.get(1..)?),
        _ => return None,
    };
    let mut parts = rest.split(':');
    let h: i32 = parts.next()?.parse().ok()?;
    let m: i32 = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    let s: i32 = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    FixedOffset::east_opt(sign * (h * 3600 + m * 60 + s))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc_zone() -> bool {
        Local::now().offset().fix().local_minus_utc() == 0
    }

    #[test]
    fn pg_scalars() {
        assert_eq!(pg_text("BOOL", "t"), Cell::Bool(true));
        assert_eq!(pg_text("INT8", "-9223372036854775808"), Cell::Int(i64::MIN));
        assert_eq!(pg_text("FLOAT8", "1.5"), Cell::Float(1.5));
        assert_eq!(pg_text("FLOAT8", "NaN"), Cell::Text("NaN".into()));
        assert_eq!(
            pg_text("FLOAT4", "-Infinity"),
            Cell::Text("-Infinity".into())
        );
        let n = pg_text("NUMERIC", "-12345678901234567890.123450");
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            "-12345678901234567890.123450"
        );
        assert_eq!(pg_text("NUMERIC", "NaN"), Cell::Text("NaN".into()));
        assert_eq!(pg_text("BYTEA", "\\x48690a"), Cell::Text("SGkK".into()));
        assert_eq!(
            serde_json::to_string(&pg_text("JSONB", r#"{"a": [1]}"#)).unwrap(),
            r#"{"a": [1]}"#
        );
        assert_eq!(pg_text("UUID", "x-y"), Cell::Text("x-y".into()));
        assert_eq!(
            pg_text("DATE", "2024-02-29"),
            Cell::Text("2024-02-29".into())
        );
        assert_eq!(pg_text("DATE", "infinity"), Cell::Text("infinity".into()));
    }

    #[test]
    fn java_formats() {
        if !utc_zone() {
            return; // the expected strings below are for TZ=UTC
        }
        assert_eq!(
            java_timestamp("2024-05-01 10:33:36.5").unwrap(),
            "2024-05-01T10:33:36.500+0000"
        );
        assert_eq!(
            java_timestamp("2024-05-01 10:33:36.123456+02").unwrap(),
            "2024-05-01T08:33:36.123+0000"
        );
        assert_eq!(
            java_timestamp("2024-05-01T10:33:36Z").unwrap(),
            "2024-05-01T10:33:36.000+0000"
        );
        assert_eq!(java_time("10:33:36").unwrap(), "10:33:36.000+0000");
        assert_eq!(java_time("10:33:36.25-05:30").unwrap(), "16:03:36.250+0000");
        assert_eq!(
            from_epoch_millis(Temporal::Timestamp, 1_714_559_616_000).unwrap(),
            "2024-05-01T10:33:36.000+0000"
        );
        assert_eq!(java_timestamp("not a date"), None);
    }

    #[test]
    fn nulls_are_left_out() {
        let row = Row {
            columns: vec!["a".to_owned(), "b".to_owned(), "c".to_owned()].into(),
            cells: vec![Cell::Int(1), Cell::Null, Cell::Text("x".into())],
        };
        assert_eq!(serde_json::to_string(&row).unwrap(), r#"{"a":1,"c":"x"}"#);
    }
}
