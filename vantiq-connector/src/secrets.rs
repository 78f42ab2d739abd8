//! Keeping the connector's secrets to itself: the reconnect secret from the operating
//! system's randomness, a warning for a configuration file with credentials that others can
//! read, and the log directive that keeps the WebSocket library's frame dumps out of logs.

use std::path::Path;

use vantiq_proto::{ConnectionConfig, ServerConfig, keys};

/// The log filter directive that keeps the token out of logs: `tungstenite=info`.
///
/// The SDK never logs the token, the password or the reconnect secret, at any level. Its
/// WebSocket library, `tungstenite`, logs every frame it sends or receives, payload included
/// (as text and in hex), at `trace` level through the `log` crate: the `validate` frame with
/// the token, `connectExtension` with the reconnect secret, and the server's replies, which
/// may carry access tokens and your sources' configuration. An application that passes `log`
/// records on (tracing-subscriber with its default features, env_logger) prints them when
/// `tungstenite` is at `trace`, as a plain `RUST_LOG=trace` sets it. Add this directive after
/// your own to cap `tungstenite` at `info`. It logs nothing at `info` (only a few lines at
/// `debug`, and its payloads at `trace`), so the directive can be added whatever the rest of
/// the filter says: it never turns a line on.
///
/// ```
/// use tracing_subscriber::EnvFilter;
/// use vantiq_connector::SECRET_SAFE_LOG_DIRECTIVE;
///
/// // As `RUST_LOG=trace,tungstenite=info` would.
/// let filter = EnvFilter::new("trace").add_directive(SECRET_SAFE_LOG_DIRECTIVE.parse().unwrap());
/// # let _ = filter;
/// ```
///
/// With env_logger: `env_logger::Builder::from_default_env().parse_filters(SECRET_SAFE_LOG_DIRECTIVE)`.
/// A later directive for the same target replaces an earlier one in both, so this one wins
/// over a `tungstenite=trace` in `RUST_LOG`.
pub const SECRET_SAFE_LOG_DIRECTIVE: &str = "tungstenite=info";

/// Gives `cfg` a reconnect secret `<source>_<random>` whose random part comes from the
/// operating system, unless `server.config` configures one (`reconnectSecret`). The core
/// draws its default from a generator seeded with 64 bits, which is fine for back-off jitter
/// but not for a secret.
pub(crate) fn use_os_reconnect_secret(cfg: &mut ConnectionConfig, server: &ServerConfig) {
    if server.reconnect_secret().is_some() {
        return;
    }
    match random_uuid() {
        Ok(id) => cfg.reconnect_secret = format!("{}_{id}", cfg.source),
        Err(e) => tracing::warn!(
            source = %cfg.source,
            error = %e,
            "the operating system gave no random bytes; the reconnect secret comes from a \
             seeded generator instead"
        ),
    }
}

/// 128 random bits in the layout of a version-4 UUID (`8-4-4-4-12` hex digits).
fn random_uuid() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    let n = u128::from_be_bytes(b);
    // Version 4 in bits 76..80, variant `10` in bits 62..64.
    let n = (n & !(0xF << 76)) | (0x4 << 76);
    let n = (n & !(0x3 << 62)) | (0x2 << 62);
    Ok(format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        n >> 96,
        (n >> 80) & 0xFFFF,
        (n >> 64) & 0xFFFF,
        (n >> 48) & 0xFFFF,
        n & 0xFFFF_FFFF_FFFF
    ))
}

/// Adds a warning to `config` when the file at `path` holds credentials (`authToken`, or
/// `password`) and its permissions let the group or others read it. Only on Unix; the mode
/// is read after the file was, so the warning is advice, not a guarantee.
pub(crate) fn check_config_file_mode(path: &Path, config: &mut ServerConfig) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;

        let holds = [keys::AUTH_TOKEN, keys::PASSWORD]
            .into_iter()
            .find(|k| config.get(k).is_some_and(|v| !v.trim().is_empty()));
        let Some(key) = holds else {
            return;
        };
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            let shown = path.display();
            config.add_warning(format!(
                "{shown} holds `{key}` and is readable by {} (mode {mode:03o}): restrict it, \
                 e.g. `chmod 600 {shown}`, or take the token from the environment variable {}",
                match (mode & 0o040 != 0, mode & 0o004 != 0) {
                    (true, true) => "its group and others",
                    (true, false) => "its group",
                    _ => "others",
                },
                vantiq_proto::TOKEN_ENV,
            ));
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` with `mode` and returns the warnings the check adds, with `env_token` as
    /// the value of `CONNECTOR_AUTH_TOKEN`.
    #[cfg(unix)]
    fn mode_warnings(name: &str, text: &str, mode: u32, env_token: Option<&str>) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt as _;

        let path = std::env::temp_dir().join(format!(
            "vantiq-connector-mode-{}-{name}.config",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let env = |k: &str| (k == vantiq_proto::TOKEN_ENV).then(|| env_token.map(str::to_owned))?;
        let mut config = ServerConfig::parse(text, "f", env).unwrap();
        check_config_file_mode(&path, &mut config);
        let _ = std::fs::remove_file(&path);
        config
            .warnings()
            .iter()
            .map(|w| w.replace(&path.display().to_string(), "<file>"))
            .collect()
    }

    #[cfg(unix)]
    #[test]
    fn readable_credentials_file_warns() {
        let token = "targetServer=https://h\nsources=a\nauthToken=t\n";
        let advice = "restrict it, e.g. `chmod 600 <file>`, or take the token from the \
                      environment variable CONNECTOR_AUTH_TOKEN";
        assert_eq!(
            mode_warnings("644", token, 0o644, None),
            [format!(
                "<file> holds `authToken` and is readable by its group and others (mode 644): \
                 {advice}"
            )]
        );
        assert_eq!(
            mode_warnings("640", token, 0o640, None),
            [format!(
                "<file> holds `authToken` and is readable by its group (mode 640): {advice}"
            )]
        );
        assert_eq!(
            mode_warnings("604", token, 0o604, None),
            [format!(
                "<file> holds `authToken` and is readable by others (mode 604): {advice}"
            )]
        );
        let password = "targetServer=https://h\nsources=a\nusername=u\npassword=p\n";
        assert_eq!(
            mode_warnings("pw", password, 0o660, None),
            [format!(
                "<file> holds `password` and is readable by its group (mode 660): {advice}"
            )]
        );
        // Owner-only files, and files without credentials, say nothing.
        for mode in [0o600, 0o400, 0o700, 0o622] {
            assert!(mode_warnings(&format!("{mode:o}"), token, mode, None).is_empty());
        }
        let no_secret = "targetServer=https://h\nsources=a\nauthToken=\n";
        assert!(mode_warnings("env", no_secret, 0o644, Some("from-env")).is_empty());
    }

    #[test]
    fn uuid_layout_and_uniqueness() {
        let a = random_uuid().unwrap();
        let b = random_uuid().unwrap();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let parts: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(
                matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "{id}"
            );
        }
    }
}
