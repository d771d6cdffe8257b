//! The common `main` of every service: arguments, config, logging, runtime, signals, errors.
//!
//! A service's `main.rs` parses its own arguments (which embed [`CommonArgs`]) and hands its
//! `run(config, context)` to [`main`]. Errors end the process with one line on stderr
//! (`scorer: error: ...`) and a non-zero exit code: 2 for bad configuration, 1 for failures
//! while running.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use prometheus::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaConfig;
use crate::ops::Health;
use crate::telemetry::LogConfig;
use crate::topics::Topics;

/// Arguments every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// TOML config file; values in it override the built-in defaults, and `ABM_...`
    /// environment variables (e.g. `ABM_KAFKA__BOOTSTRAP_SERVERS`) override the file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file and environment merged) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// What `main` needs to know of a service's config.
pub trait ServiceConfig: DeserializeOwned + Serialize {
    fn log(&self) -> &LogConfig;
}

/// Handed to a service's `run`: the process's metrics registry, its health, and the token
/// that is cancelled when the service must stop (signal, or a test).
#[derive(Debug, Clone)]
pub struct Context {
    pub registry: Registry,
    pub health: Health,
    pub shutdown: CancellationToken,
}

impl Context {
    pub fn new(service: &str) -> Context {
        Context {
            registry: crate::ops::new_registry(service),
            health: Health::default(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// Runs a service to completion and turns the outcome into an exit code.
///
/// `service_defaults` are config defaults specific to the service, such as its HTTP port.
pub fn main<C, F, Fut>(service: &'static str, args: &CommonArgs, service_defaults: &[(&str, &str)], run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Context) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = match crate::config::load(args.config.as_deref(), service_defaults) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{service}: error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        let printable = toml::Value::try_from(&config).map(|mut value| {
            redact_secrets(&mut value);
            value
        });
        return match printable.and_then(|value| toml::to_string_pretty(&value)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{service}: error: cannot print config: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(error) = crate::telemetry::init(config.log()) {
        eprintln!("{service}: error: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{service}: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let context = Context::new(service);
    let outcome = runtime.block_on(async {
        crate::shutdown::watch_signals(context.shutdown.clone(), context.health.clone());
        run(config, context).await
    });
    match outcome {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(error) => {
            // `{:#}` joins the context chain on one line: "what failed: why".
            eprintln!("{service}: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The value printed in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// Whether a config key names a secret: passwords, passphrases, secrets, tokens, credentials,
/// JAAS configs, webhook URLs and headers (a word of the key, between dots or underscores), a
/// field named `key` (a browser key), private keys in PEM, OAUTHBEARER configs, basic-auth user
/// info and write keys. A scoring rule's `url_patterns` (paths to match, not addresses) is not.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('_', ".");
    if key == "key" {
        return true;
    }
    if key == "url.patterns" {
        return false;
    }
    let words = ["password", "passphrase", "secret", "token", "tokens", "credentials", "jaas", "url", "headers"];
    let phrases = ["key.pem", "oauthbearer.config", "write.keys", "user.info"];
    key.split('.').any(|word| words.contains(&word)) || phrases.iter().any(|phrase| key.contains(phrase))
}

/// Replaces every secret in a config tree (see [`is_secret_key`]) by [`REDACTED`], so that
/// `--print-config` can be pasted into a ticket.
pub fn redact_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                if is_secret_key(key) {
                    redact_all(value);
                } else {
                    redact_secrets(value);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

fn redact_all(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, value)| redact_all(value)),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_all),
        other => *other = toml::Value::String(REDACTED.into()),
    }
}

/// Start-up steps every Kafka-facing service takes: check that the cluster answers, then
/// create the declared topics that are missing (unless `kafka.create_topics = false`).
pub async fn prepare_kafka(kafka: &KafkaConfig, topics: &Topics, client_id: &str) -> anyhow::Result<()> {
    kafka.check_reachable(client_id).await?;
    if kafka.create_topics {
        let created = kafka.ensure_topics(client_id, topics.specs()).await?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created missing topics");
        }
    }
    Ok(())
}

/// This machine's name (`HOSTNAME`, else `/etc/hostname`, else `local`): the default instance id.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "local".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_config_hides_every_secret() {
        let mut value: toml::Value = toml::from_str(
            r#"
            [kafka.librdkafka]
            "sasl.password" = "hunter2"
            sasl_password = "hunter2"
            "ssl.key.pem" = "-----BEGIN"
            "sasl.username" = "abm"
            [ingest.write_keys]
            site = "wk_live_1"
            [[alerter.webhooks]]
            name = "slack"
            token = "xoxb"
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        redact_secrets(&mut value);
        let text = toml::to_string(&value).unwrap_or_default();
        for secret in ["hunter2", "-----BEGIN", "wk_live_1", "xoxb"] {
            assert!(!text.contains(secret), "{secret} printed in {text}");
        }
        assert!(text.contains("abm") && text.contains("slack"), "non-secrets kept: {text}");
    }

    #[test]
    fn secret_keys_are_recognised_and_plain_ones_are_not() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl_keystore_password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.jaas.config",
            "ssl.key.passphrase",
            "credentials",
            "basic.auth.user.info",
            "api_tokens",
            "write_keys",
            "headers",
            "url",
            "key",
        ] {
            assert!(is_secret_key(key), "{key} is a secret");
        }
        for key in [
            "bootstrap_servers",
            "security.protocol",
            "sasl.mechanism",
            "ssl.ca.location",
            "keys",
            "listen",
            "url_patterns",
        ] {
            assert!(!is_secret_key(key), "{key} is not a secret");
        }
    }
}
