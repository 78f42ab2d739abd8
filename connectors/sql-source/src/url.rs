//! `dbURL`: the JDBC URLs Vantiq users already have in their sources, and the usual Rust
//! (sqlx / libpq) forms.
//!
//! | `dbURL` | database |
//! |---|---|
//! | `jdbc:sqlite:/data/db.sqlite`, `jdbc:sqlite:relative.db`, `jdbc:sqlite::memory:` | SQLite file (created when missing, as the JDBC driver does) or in-memory |
//! | `sqlite:///data/db.sqlite`, `sqlite://db.sqlite?mode=ro`, `sqlite::memory:` | the same, sqlx's form |
//! | `jdbc:postgresql://host:5432/db?sslmode=require`, `jdbc:postgresql:db` | PostgreSQL |
//! | `postgres://user:pw@host:5432/db`, `postgresql://…` | the same, libpq's form |
//!
//! `username` and `password` from the configuration are used for PostgreSQL unless the URL
//! carries its own; SQLite ignores them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

/// Why `dbURL` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A database this connector does not speak.
    #[error(
        "`{0}` names a database this connector does not support (SQLite and PostgreSQL are: \
         jdbc:sqlite:/path, jdbc:postgresql://host:5432/db, sqlite://…, postgres://…)"
    )]
    Unsupported(String),
    /// The URL could not be parsed.
    #[error("`{url}` is not a valid {kind} URL: {reason}")]
    Invalid {
        /// The URL (without its password).
        url: String,
        /// `SQLite` or `PostgreSQL`.
        kind: &'static str,
        /// What the parser said.
        reason: String,
    },
}

/// A database to connect to.
#[derive(Clone)]
pub enum DbTarget {
    /// A SQLite database.
    Sqlite {
        /// The options sqlx connects with.
        options: SqliteConnectOptions,
        /// The database file (`None` in memory).
        file: Option<PathBuf>,
        /// Create the file when it is missing at configuration time (the JDBC driver's
        /// behaviour; not with `mode=ro`).
        create: bool,
        /// The URL as given (SQLite URLs carry no secret).
        url: String,
    },
    /// A PostgreSQL server.
    Postgres {
        /// The options sqlx connects with (the password inside is never printed).
        options: PgConnectOptions,
        /// The URL with any password replaced by `***`.
        redacted: String,
    },
}

impl PartialEq for DbTarget {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for DbTarget {}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbTarget::Sqlite { url, .. } => write!(f, "{url}"),
            DbTarget::Postgres { redacted, .. } => write!(f, "{redacted}"),
        }
    }
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbTarget({self})")
    }
}

impl DbTarget {
    /// Reads `dbURL` with the configuration's `username` and `password`.
    ///
    /// # Errors
    /// An unsupported database or an unparsable URL.
    pub fn parse(url: &str, username: &str, password: &str) -> Result<Self, UrlError> {
        let trimmed = url.trim();
        let lower = trimmed.to_ascii_lowercase();
        if let Some(rest) = strip_prefix_ci(trimmed, &lower, "jdbc:sqlite:") {
            return Self::sqlite_jdbc(trimmed, rest);
        }
        if lower.starts_with("sqlite:") {
            return Self::sqlite_native(trimmed);
        }
        if let Some(rest) = strip_prefix_ci(trimmed, &lower, "jdbc:postgresql:") {
            let native = if let Some(hostpart) = rest.strip_prefix("//") {
                format!("postgres://{hostpart}")
            } else {
                // `jdbc:postgresql:db` and `jdbc:postgresql:/` (localhost:5432).
                format!("postgres://localhost/{}", rest.trim_start_matches('/'))
            };
            return Self::postgres(trimmed, &native, username, password);
        }
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Self::postgres(trimmed, trimmed, username, password);
        }
        Err(UrlError::Unsupported(redact(trimmed)))
    }

    fn sqlite_jdbc(url: &str, rest: &str) -> Result<Self, UrlError> {
        if rest.is_empty() || rest == ":memory:" || rest.starts_with(":memory:?") {
            return Ok(DbTarget::Sqlite {
                options: SqliteConnectOptions::new()
                    .in_memory(true)
                    .shared_cache(true),
                file: None,
                create: false,
                url: url.to_owned(),
            });
        }
        if rest.contains('?') {
            // Options after `?` (mode=ro, …): sqlx reads them from its own form.
            return Self::sqlite_native(&format!("sqlite:{rest}")).map(|t| match t {
                DbTarget::Sqlite {
                    options,
                    file,
                    create,
                    ..
                } => DbTarget::Sqlite {
                    options,
                    file,
                    create,
                    url: url.to_owned(),
                },
                other => other,
            });
        }
        let path = PathBuf::from(rest);
        Ok(DbTarget::Sqlite {
            options: SqliteConnectOptions::new().filename(&path),
            file: Some(path),
            create: true,
            url: url.to_owned(),
        })
    }

    fn sqlite_native(url: &str) -> Result<Self, UrlError> {
        let options = SqliteConnectOptions::from_str(url).map_err(|e| UrlError::Invalid {
            url: url.to_owned(),
            kind: "SQLite",
            reason: e.to_string(),
        })?;
        let in_memory = url.contains(":memory:");
        let file = (!in_memory).then(|| options.get_filename().to_path_buf());
        Ok(DbTarget::Sqlite {
            options,
            file,
            // As the JDBC driver: a missing database file is created.
            create: !in_memory && !url.contains("mode=ro"),
            url: url.to_owned(),
        })
    }

    fn postgres(
        given: &str,
        native: &str,
        username: &str,
        password: &str,
    ) -> Result<Self, UrlError> {
        let redacted = redact(given);
        let mut options = PgConnectOptions::from_str(native).map_err(|e| UrlError::Invalid {
            url: redacted.clone(),
            kind: "PostgreSQL",
            reason: e.to_string(),
        })?;
        let url_has_user = native
            .split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .is_some_and(|authority| authority.contains('@'));
        if !url_has_user && !username.is_empty() {
            options = options.username(username);
            if !password.is_empty() {
                options = options.password(password);
            }
        }
        Ok(DbTarget::Postgres { options, redacted })
    }

    /// `SQLite` or `PostgreSQL`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            DbTarget::Sqlite { .. } => "SQLite",
            DbTarget::Postgres { .. } => "PostgreSQL",
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, lower: &str, prefix: &str) -> Option<&'a str> {
    if lower.starts_with(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// The URL with the password of `scheme://user:password@host` and of `password=` replaced.
pub(crate) fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out
            .get(auth_start..)
            .and_then(|rest| rest.find(['/', '?']))
            .map_or(out.len(), |i| auth_start + i);
        if let Some(authority) = out.get(auth_start..auth_end)
            && let Some(at) = authority.rfind('@')
            && let Some(colon) = authority.get(..at).and_then(|u| u.find(':'))
        {
            out.replace_range(auth_start + colon + 1..auth_start + at, "***");
        }
    }
    if let Some(i) = out.to_ascii_lowercase().find("password=") {
        let start = i + "password=".len();
        let end = out
            .get(start..)
            .and_then(|r| r.find('&'))
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn sqlite_forms() {
        for (url, file) in [
            ("jdbc:sqlite:/data/db.sqlite", Some("/data/db.sqlite")),
            ("JDBC:SQLITE:rel.db", Some("rel.db")),
            ("jdbc:sqlite::memory:", None),
            ("jdbc:sqlite:", None),
            ("sqlite:///data/db.sqlite", Some("/data/db.sqlite")),
            ("sqlite://rel.db?mode=rwc", Some("rel.db")),
            ("sqlite::memory:", None),
        ] {
            match DbTarget::parse(url, "u", "p").unwrap() {
                DbTarget::Sqlite { file: f, .. } => {
                    assert_eq!(f.as_deref(), file.map(std::path::Path::new), "{url}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn postgres_forms() {
        for (url, host, port, db, user) in [
            (
                "jdbc:postgresql://db.example:6543/sales",
                "db.example",
                6543,
                "sales",
                "cfg",
            ),
            ("jdbc:postgresql:sales", "localhost", 5432, "sales", "cfg"),
            ("postgres://me:pw@h/sales", "h", 5432, "sales", "me"),
            (
                "postgresql://h:1/sales?sslmode=disable",
                "h",
                1,
                "sales",
                "cfg",
            ),
        ] {
            let target = DbTarget::parse(url, "cfg", "secret").unwrap();
            assert!(!format!("{target:?} {target}").contains("secret"));
            match target {
                DbTarget::Postgres { options, redacted } => {
                    assert_eq!(options.get_host(), host, "{url}");
                    assert_eq!(options.get_port(), port, "{url}");
                    assert_eq!(options.get_database(), Some(db), "{url}");
                    assert_eq!(options.get_username(), user, "{url}");
                    assert!(!redacted.contains("pw"), "{redacted}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn refusals_and_redaction() {
        let e = DbTarget::parse("jdbc:mysql://u:hunter2@h/db", "u", "p").unwrap_err();
        assert!(matches!(e, UrlError::Unsupported(_)));
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(
            redact("postgres://u:hunter2@h/db?password=x&a=b"),
            "postgres://u:***@h/db?password=***&a=b"
        );
        assert!(DbTarget::parse("postgres://h:notaport/db", "u", "p").is_err());
    }
}
