//! A parser for Java `.properties` text, the format of `server.config`.
//!
//! Semantics follow `java.util.Properties.load`: natural lines end at `\n`, `\r` or `\r\n`;
//! leading whitespace (space, tab, form feed) is skipped; lines whose first non-blank character
//! is `#` or `!` are comments; a line ending in an odd number of backslashes continues on the
//! next line (whose leading whitespace is dropped); the key ends at the first unescaped `=`,
//! `:` or whitespace, after which whitespace and one `=` or `:` are skipped; the value keeps its
//! trailing spaces; `\t \n \r \f \uXXXX` are escapes and a backslash before any other character
//! stands for that character. A later duplicate key replaces an earlier one.
//!
//! ```
//! use vantiq_proto::Properties;
//!
//! let p = Properties::parse("# comment\nsources = a, \\\n   b\nauthToken:x\\u0041y\n").unwrap();
//! assert_eq!(p.get("sources"), Some("a, b"));
//! assert_eq!(p.get("authToken"), Some("xAy"));
//! ```

use std::collections::BTreeMap;

/// One parse error, with the 1-based line where the logical line started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct PropertiesError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parsed properties: key → value, with the line each came from.
///
/// `Debug` redacts the value of every key whose name mentions a token, password or secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties {
    entries: BTreeMap<String, (String, usize)>,
}

/// True for keys whose values must never be shown.
pub(crate) fn is_sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["token", "password", "secret"]
        .iter()
        .any(|w| k.contains(w))
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, (v, _)) in &self.entries {
            if is_sensitive_key(k) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{c}')
}

/// Splits text into natural lines, each with its 1-based number.
fn natural_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut line = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        line += 1;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let current = rest.get(..end).unwrap_or_default();
        let after = rest.get(end..).unwrap_or_default();
        rest = if let Some(r) = after.strip_prefix("\r\n") {
            r
        } else {
            after.get(1..).unwrap_or_default()
        };
        Some((line, current))
    })
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 1
}

fn unescape(raw: &str, line: usize) -> Result<String, PropertiesError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => {}
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = (hex.len() == 4)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| PropertiesError {
                        line,
                        message: format!("malformed \\uXXXX escape `\\u{hex}`"),
                    })?;
                // Java strings are UTF-16: a surrogate pair arrives as two escapes.
                if (0xD800..0xDC00).contains(&code) {
                    let mut look = chars.clone();
                    let low = (look.next() == Some('\\') && look.next() == Some('u'))
                        .then(|| {
                            let h: String = look.by_ref().take(4).collect();
                            u32::from_str_radix(&h, 16).ok()
                        })
                        .flatten()
                        .filter(|l| (0xDC00..0xE000).contains(l));
                    if let Some(low) = low {
                        chars = look;
                        let combined = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        out.push(char::from_u32(combined).unwrap_or('\u{FFFD}'));
                        continue;
                    }
                }
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            Some(other) => out.push(other),
        }
    }
    Ok(out)
}

impl Properties {
    /// Parses properties text.
    ///
    /// # Errors
    /// A malformed `\uXXXX` escape, reported with its line.
    pub fn parse(text: &str) -> Result<Self, PropertiesError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut props = Properties::default();
        let mut logical = String::new();
        let mut start_line = 0usize;
        let mut continuing = false;
        for (line_no, natural) in natural_lines(text) {
            let trimmed = natural.trim_start_matches(is_blank);
            if !continuing {
                if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
                    continue;
                }
                start_line = line_no;
                logical.clear();
            }
            if ends_with_odd_backslashes(trimmed) {
                logical.push_str(trimmed.get(..trimmed.len() - 1).unwrap_or_default());
                continuing = true;
                continue;
            }
            logical.push_str(trimmed);
            continuing = false;
            props.add_logical(&logical, start_line)?;
        }
        if continuing {
            props.add_logical(&logical, start_line)?;
        }
        Ok(props)
    }

    /// Parses bytes: UTF-8 when valid (a byte-order mark is skipped), ISO-8859-1 otherwise
    /// (what `java.util.Properties.load(InputStream)` assumes).
    ///
    /// # Errors
    /// As [`Properties::parse`].
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, PropertiesError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text),
            Err(_) => {
                let text: String = bytes.iter().map(|b| char::from(*b)).collect();
                Self::parse(&text)
            }
        }
    }

    fn add_logical(&mut self, logical: &str, line: usize) -> Result<(), PropertiesError> {
        let mut key_end = logical.len();
        let mut value_start = logical.len();
        let mut escaped = false;
        for (i, c) in logical.char_indices() {
            if escaped {
                escaped = false;
                continue;
            }
            if c == '\\' {
                escaped = true;
            } else if c == '=' || c == ':' {
                key_end = i;
                value_start = i + 1;
                break;
            } else if is_blank(c) {
                key_end = i;
                let rest = logical.get(i..).unwrap_or_default();
                let rest_trim = rest.trim_start_matches(is_blank);
                let mut vs = logical.len() - rest_trim.len();
                if rest_trim.starts_with('=') || rest_trim.starts_with(':') {
                    vs += 1;
                }
                value_start = vs;
                break;
            }
        }
        let raw_key = logical.get(..key_end).unwrap_or_default();
        let raw_value = logical
            .get(value_start..)
            .unwrap_or_default()
            .trim_start_matches(is_blank);
        let key = unescape(raw_key, line)?;
        let value = unescape(raw_value, line)?;
        self.entries.insert(key, (value, line));
        Ok(())
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|(v, _)| v.as_str())
    }

    /// The line `key` was defined on.
    #[must_use]
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.entries.get(key).map(|(_, l)| *l)
    }

    /// Sets `key` (for configuration built in code).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.insert(key.into(), (value.into(), 0));
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key).map(|(v, _)| v)
    }

    /// All keys and values, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(k, (v, _))| (k.as_str(), v.as_str()))
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, String)> {
        Properties::parse(text)
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn separators_and_whitespace() {
        assert_eq!(
            parse("a=1\nb:2\nc 3\nd\t=\t4\ne  :  5 \nf\ng=\n  h = x=y:z  "),
            kv(&[
                ("a", "1"),
                ("b", "2"),
                ("c", "3"),
                ("d", "4"),
                ("e", "5 "),
                ("f", ""),
                ("g", ""),
                ("h", "x=y:z  ")
            ])
        );
    }

    #[test]
    fn comments_blank_lines_and_line_endings() {
        assert_eq!(
            parse("# c1\n  ! c2\r\n\r\na=1\rb=2\r\n\n  \t\n#c=3"),
            kv(&[("a", "1"), ("b", "2")])
        );
    }

    #[test]
    fn continuation_lines() {
        assert_eq!(
            parse("a=one, \\\n    two, \\\n\tthree\nb=x\\\\\nc=y"),
            kv(&[("a", "one, two, three"), ("b", "x\\"), ("c", "y")])
        );
        // A comment line is never continued; a continued line starting with # is data.
        assert_eq!(
            parse("# comment \\\na=1\nb=2\\\n#notcomment"),
            kv(&[("a", "1"), ("b", "2#notcomment")])
        );
        // Continuation at end of input.
        assert_eq!(parse("a=1\\"), kv(&[("a", "1")]));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            parse("k\\=ey\\ x=v\\tv\\nv\\u00e9\\q\\\\\nu=\\uD83D\\uDE00"),
            kv(&[("k=ey x", "v\tv\nvéq\\"), ("u", "😀")])
        );
        let e = Properties::parse("a=1\nb=\\u12G4").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("\\uXXXX"), "{e}");
        assert!(Properties::parse("x=\\u12").is_err());
    }

    #[test]
    fn duplicates_last_wins_and_lines_are_kept() {
        let p = Properties::parse("a=1\n\nb=2\na=3").unwrap();
        assert_eq!(p.get("a"), Some("3"));
        assert_eq!(p.line_of("a"), Some(4));
        assert_eq!(p.line_of("b"), Some(3));
    }

    #[test]
    fn debug_redacts_secrets() {
        let p =
            Properties::parse("authToken=T1\npassword=P1\nreconnectSecret=S1\nsources=a").unwrap();
        let dbg = format!("{p:?}");
        for secret in ["T1", "P1", "S1"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("\"sources\": \"a\""), "{dbg}");
    }

    #[test]
    fn latin1_and_bom() {
        let p = Properties::parse_bytes(b"k=caf\xe9").unwrap();
        assert_eq!(p.get("k"), Some("café"));
        let p = Properties::parse_bytes("\u{feff}k=v".as_bytes()).unwrap();
        assert_eq!(p.get("k"), Some("v"));
    }
}
