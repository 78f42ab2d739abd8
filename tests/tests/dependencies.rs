//! What the published crates ask of their dependencies: version floors above releases with
//! known advisories, and the smol crate without the `smol` umbrella. (Licences, duplicate
//! versions and banned crates are `cargo deny check`'s, in `.ci/run`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn manifest(relative: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(relative)).unwrap()
}

/// The lines of one `[table]` of a manifest.
fn table<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("[{name}]");
    text.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The version requirement of `krate` in `[workspace.dependencies]`.
fn floor(text: &str, krate: &str) -> Vec<u64> {
    let line = table(text, "workspace.dependencies")
        .into_iter()
        .find(|l| l.split(['=', ' ']).next() == Some(krate))
        .unwrap_or_else(|| panic!("{krate} is not in [workspace.dependencies]"));
    let quoted = line
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("no version in `{line}`"));
    quoted
        .trim_start_matches(['^', '='])
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Releases below these versions have advisories (RustSec ids); a floor below would let a
/// user's resolver keep one.
const FIRST_SAFE: &[(&str, &str, &[u64])] = &[
    ("event-listener", "RUSTSEC-2026-0221", &[5, 4, 2]),
    ("tracing-subscriber", "RUSTSEC-2025-0055", &[0, 3, 20]),
    ("tokio", "RUSTSEC-2025-0023", &[1, 44, 2]),
    ("rustls", "RUSTSEC-2024-0336", &[0, 23, 5]),
    ("tungstenite", "RUSTSEC-2023-0065", &[0, 20, 1]),
];

#[test]
fn version_floors_exclude_releases_with_advisories() {
    let text = manifest("Cargo.toml");
    for (krate, advisory, safe) in FIRST_SAFE {
        let mut have = floor(&text, krate);
        have.resize(3, 0);
        assert!(
            have.as_slice() >= *safe,
            "{krate}'s floor {have:?} admits releases covered by {advisory} (fixed in {safe:?})"
        );
    }
}

#[test]
fn smol_crate_uses_the_parts_of_smol_not_the_umbrella() {
    let text = manifest("vantiq-connector-smol/Cargo.toml");
    let deps = table(&text, "dependencies");
    let names: Vec<&str> = deps
        .iter()
        .filter_map(|l| l.split(['=', '.', ' ']).next())
        .collect();
    assert!(!names.contains(&"smol"), "{names:?}");
    for part in ["async-io", "async-net", "async-executor"] {
        assert!(names.contains(&part), "{part} missing from {names:?}");
    }
}

#[test]
fn tracing_without_its_default_features() {
    let text = manifest("Cargo.toml");
    let line = table(&text, "workspace.dependencies")
        .into_iter()
        .find(|l| l.starts_with("tracing ") || l.starts_with("tracing="))
        .unwrap();
    assert!(line.contains("default-features = false"), "{line}");
}
