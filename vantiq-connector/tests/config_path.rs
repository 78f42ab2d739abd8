//! Where `from_default_config` finds `server.config`: the environment variable
//! `VANTIQ_SERVER_CONFIG` first, and errors that read as sentences naming the file. The
//! environment is passed in as a lookup function, so no test touches the process's own.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::ffi::OsString;
use std::path::PathBuf;

use vantiq_connector::{ConnectorError, SERVER_CONFIG_ENV, load_default_config};

/// A scratch directory with `serverConfig/server.config` (source `default`) and
/// `elsewhere.config` (source `named`).
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("vantiq-config-path-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("serverConfig")).unwrap();
    std::fs::write(
        dir.join("serverConfig/server.config"),
        "targetServer=https://v\nauthToken=t\nsources=default\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("elsewhere.config"),
        "targetServer=https://v\nauthToken=t\nsources=named\n",
    )
    .unwrap();
    dir
}

fn env(value: Option<&str>) -> impl Fn(&str) -> Option<OsString> {
    let value = value.map(OsString::from);
    move |k| {
        assert_eq!(k, "VANTIQ_SERVER_CONFIG");
        value.clone()
    }
}

#[test]
fn the_variable_names_the_file_before_the_search_paths() {
    assert_eq!(SERVER_CONFIG_ENV, "VANTIQ_SERVER_CONFIG");
    let dir = scratch("env");
    let absolute = dir.join("elsewhere.config");
    let config = load_default_config(&dir, env(absolute.to_str())).unwrap();
    assert_eq!(config.sources(), ["named"]);
    assert_eq!(config.origin(), absolute.display().to_string());
    // Relative to the directory searched.
    let config = load_default_config(&dir, env(Some("elsewhere.config"))).unwrap();
    assert_eq!(config.sources(), ["named"]);
    // Unset or empty: the search paths.
    let config = load_default_config(&dir, env(None)).unwrap();
    assert_eq!(config.sources(), ["default"]);
    let config = load_default_config(&dir, env(Some(""))).unwrap();
    assert_eq!(config.sources(), ["default"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_variable_naming_a_missing_file_is_an_error_naming_both() {
    let dir = scratch("missing");
    let missing = dir.join("nope.config");
    let err = load_default_config(&dir, env(missing.to_str())).unwrap_err();
    assert!(
        matches!(
            err,
            ConnectorError::ConfigEnvRead {
                var: "VANTIQ_SERVER_CONFIG",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "could not read {}, named by the environment variable VANTIQ_SERVER_CONFIG: ",
            missing.display()
        )),
        "{text}"
    );
    // Not silently replaced by the file in the search paths.
    assert!(!text.contains("serverConfig"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn debug_output_is_the_sentence_not_a_struct() {
    let dir = scratch("debug");
    std::fs::write(
        dir.join("bad.config"),
        "targetServer=ftp://x\nsources=a\nauthToken=t\n",
    )
    .unwrap();
    let bad = dir.join("bad.config");
    let err = load_default_config(&dir, env(bad.to_str())).unwrap_err();
    let debug = format!("{err:?}");
    // What `main() -> Result<(), ConnectorError>` prints after `Error: `.
    assert_eq!(debug, err.to_string());
    assert!(
        debug.starts_with(&format!("{}: key `targetServer`", bad.display())),
        "{debug}"
    );
    assert!(
        !debug.contains("Config(") && !debug.contains('{'),
        "{debug}"
    );

    let missing = dir.join("nope.config");
    let err = load_default_config(&dir, env(missing.to_str())).unwrap_err();
    let debug = format!("{err:?}");
    assert_eq!(debug, err.to_string());
    assert!(!debug.contains("ConfigEnvRead"), "{debug}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn debug_output_lists_the_causes() {
    let err = ConnectorError::from(std::io::Error::other(Wrapped));
    assert_eq!(format!("{err:?}"), "outer\n  caused by: inner");
}

/// An error with a cause, for the chain in `Debug`.
#[derive(Debug)]
struct Wrapped;

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outer")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&Inner)
    }
}

#[derive(Debug)]
struct Inner;

impl std::fmt::Display for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("inner")
    }
}

impl std::error::Error for Inner {}
