//! Reads the criterion results of `vantiq-proto/benches/frames.rs` and tabulates the SDK
//! against bare `serde_json`.
//!
//! The benchmarks are named `<decode|encode>_<frame>/<function>`: `sdk` (and `sdk_conn`, the
//! connection's fast path) against `serde_value` and `serde_struct`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// `group → function → median ns`.
pub type Medians = BTreeMap<String, BTreeMap<String, f64>>;

/// Collects the median estimate of every `<group>/<function>/new/estimates.json` under
/// `dir` (criterion's output directory) whose group starts with `decode_` or `encode_`.
#[must_use]
pub fn collect(dir: &Path) -> Medians {
    let mut out = Medians::new();
    let Ok(groups) = std::fs::read_dir(dir) else {
        return out;
    };
    for g in groups.flatten() {
        let group = g.file_name().to_string_lossy().into_owned();
        if !(group.starts_with("decode_") || group.starts_with("encode_")) {
            continue;
        }
        let Ok(funcs) = std::fs::read_dir(g.path()) else {
            continue;
        };
        for f in funcs.flatten() {
            let func = f.file_name().to_string_lossy().into_owned();
            let path = f.path().join("new").join("estimates.json");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if let Some(ns) = median_ns(&text) {
                out.entry(group.clone()).or_default().insert(func, ns);
            }
        }
    }
    out
}

/// `median.point_estimate` of a criterion `estimates.json`.
#[must_use]
pub fn median_ns(json: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("median")?.get("point_estimate")?.as_f64()
}

/// The markdown table: time per frame for each SDK path (`sdk`: `ServerFrame::decode` or
/// `ClientFrame::encode`; `sdk_conn`: the `Connection` path a connector really takes), and the
/// speed ratio `serde_json time ÷ SDK time` (≥ 1 means the SDK is faster).
#[must_use]
pub fn markdown(m: &Medians) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| frame | SDK path | SDK (ns) | serde_json Value (ns) | serde_json struct (ns) | speed vs Value | speed vs struct |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let ns = |x: Option<&f64>| x.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"));
    for (group, f) in m {
        let value = f.get("serde_value");
        let strukt = f.get("serde_struct");
        for path in ["sdk", "sdk_conn"] {
            let Some(sdk) = f.get(path) else { continue };
            let ratio = |base: Option<&f64>| {
                base.map_or_else(|| "—".to_owned(), |b| format!("{:.2}×", b / sdk))
            };
            let _ = writeln!(
                out,
                "| {group} | {path} | {sdk:.0} | {} | {} | {} | {} |",
                ns(value),
                ns(strukt),
                ratio(value),
                ratio(strukt)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_median() {
        let j = r#"{"mean":{"point_estimate":12.5},"median":{"point_estimate":11.25,"standard_error":0.1}}"#;
        assert_eq!(median_ns(j), Some(11.25));
        let mut m = Medians::new();
        m.entry("decode_publish".into())
            .or_default()
            .extend([("sdk".to_owned(), 100.0), ("serde_value".to_owned(), 150.0)]);
        assert!(markdown(&m).contains("| decode_publish | sdk | 100 | 150 | — | 1.50× | — |"));
    }
}
