//! Layered configuration: built-in defaults < TOML file < environment.
//!
//! - Defaults are the `Default` impls of the config structs (each documented field says its
//!   default), plus per-service overrides such as the HTTP port.
//! - The TOML file is the one given with `--config`; a missing file is an error.
//! - Environment variables prefixed `ABM_`, with `__` between levels, override both:
//!   `ABM_KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets `kafka.bootstrap_servers`.
//!
//! Every config struct denies unknown fields, so a typo is an error, not a silently ignored key.
//! That includes the environment: an `ABM_...` variable that names no key fails the start.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Prefix of the environment variables that override configuration.
pub const ENV_PREFIX: &str = "ABM";
/// Separator between levels in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// A configuration that could not be loaded. Its message is meant to be shown as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads configuration from the process environment. See [`load_from`].
pub fn load<T: DeserializeOwned>(file: Option<&Path>, service_defaults: &[(&str, &str)]) -> Result<T, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().filter(|(key, _)| key.starts_with("ABM_")).collect();
    load_from(file, service_defaults, env)
}

/// Loads `T` from, in increasing priority: its `Default`s and `service_defaults` (key path,
/// value), the TOML `file` if given, and the `ABM_` variables in `env`.
pub fn load_from<T: DeserializeOwned>(
    file: Option<&Path>,
    service_defaults: &[(&str, &str)],
    env: HashMap<String, String>,
) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    for (key, value) in service_defaults {
        builder = builder.set_default(*key, *value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File { path: path.display().to_string(), detail: e.to_string() })?;
        // Parse once with `toml` for a precise syntax error (line and column) before layering.
        toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            detail: e.message().to_owned() + &location(&text, e.span()),
        })?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(Some(env)),
    );
    let layered = builder.build().map_err(|e| ConfigError::Invalid(e.to_string()))?;
    layered.try_deserialize::<T>().map_err(|e| ConfigError::Invalid(e.to_string()))
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" (line {line}, column {column})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        port: u16,
        name: String,
    }
    impl Default for Inner {
        fn default() -> Self {
            Inner { port: 1, name: "default".into() }
        }
    }
    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Outer {
        inner: Inner,
        flag: bool,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// Minimal temp file helper (no extra crate): removed on drop.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("abm-config-test-{}-{n}.toml", std::process::id()));
                std::fs::write(&path, text).expect("write temp config");
                TempPath(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let loaded: Outer = load_from(None, &[], env(&[])).expect("defaults");
        assert_eq!(loaded, Outer::default());

        let loaded: Outer = load_from(None, &[("inner.port", "7")], env(&[])).expect("service default");
        assert_eq!(loaded.inner.port, 7);

        let toml = file("flag = true\n[inner]\nport = 8\n");
        let loaded: Outer = load_from(Some(&toml.0), &[("inner.port", "7")], env(&[])).expect("file");
        assert_eq!((loaded.inner.port, loaded.flag, loaded.inner.name.as_str()), (8, true, "default"));

        let loaded: Outer = load_from(
            Some(&toml.0),
            &[("inner.port", "7")],
            env(&[("ABM_INNER__PORT", "9"), ("ABM_INNER__NAME", "x")]),
        )
        .expect("env");
        assert_eq!((loaded.inner.port, loaded.inner.name.as_str()), (9, "x"));
    }

    #[test]
    fn unknown_keys_are_errors_in_file_and_env() {
        let toml = file("[inner]\nprot = 8\n");
        let error = load_from::<Outer>(Some(&toml.0), &[], env(&[])).expect_err("typo in file");
        assert!(error.to_string().contains("prot"), "{error}");

        let error = load_from::<Outer>(None, &[], env(&[("ABM_INNER__PROT", "8")])).expect_err("typo in env");
        assert!(error.to_string().contains("prot"), "{error}");
    }

    #[test]
    fn wrong_types_and_bad_files_are_errors() {
        let toml = file("[inner]\nport = \"eighty\"\n");
        let error = load_from::<Outer>(Some(&toml.0), &[], env(&[])).expect_err("wrong type");
        assert!(error.to_string().contains("port"), "{error}");

        let toml = file("[inner\nport = 1\n");
        let error = load_from::<Outer>(Some(&toml.0), &[], env(&[])).expect_err("syntax");
        assert!(error.to_string().contains("line 1"), "{error}");

        let error = load_from::<Outer>(Some(Path::new("/nonexistent/abm.toml")), &[], env(&[])).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/abm.toml"), "{error}");
    }
}
