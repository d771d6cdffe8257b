//! The schema registry: Confluent's wire format for the topics configured for it.
//!
//! `[registry]` names a Confluent-compatible registry (Confluent Schema Registry, Apicurio's
//! `ccompat` API, Karapace, Redpanda's) and the framing of each Avro topic a service writes:
//! `single_object` (Avro's own, the default) or `confluent` (`00 | schema id | datum`, what
//! Kafka Connect, ksqlDB, Flink's `avro-confluent` and every registry-aware client read).
//!
//! At start-up, [`prepare`] registers the record's schema under `<topic>-value` for each topic
//! written in Confluent framing (TopicNameStrategy; the registry's compatibility rule decides,
//! and a refusal stops the start with the registry's reason), learns the versions already
//! registered for the topics the service reads, and installs an HTTP lookup so that every
//! reader resolves an id it has not seen (once per id). Readers accept both framings whatever
//! the config says, so a topic can be moved from one to the other while it is being read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abm_schemas::registry::{LookupError, SchemaSource};
use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::topics::{TopicRole, Topics};

/// How a topic's Avro records are framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Avro single-object encoding: `C3 01 | CRC-64-AVRO fingerprint | datum`; no registry.
    #[default]
    SingleObject,
    /// Confluent's wire format: `00 | 4-byte schema id | datum`, the schema in the registry.
    Confluent,
}

/// `[registry]` section.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the registry's Confluent-compatible API (default empty: no registry), e.g.
    /// `http://schema-registry:8081`, or Apicurio's `http://apicurio:8080/apis/ccompat/v7`.
    pub url: String,
    /// `user:password` for HTTP Basic auth (Confluent's `basic.auth.user.info`; default none).
    pub basic_auth_user_info: String,
    /// PEM file of a CA to trust for an `https` registry, beside the system's roots (default none).
    pub ca_location: String,
    /// PEM file holding a client certificate and its private key, for a registry that requires
    /// mutual TLS (default none).
    pub client_certificate_location: String,
    /// Timeout of one registry call, and how long start-up waits for the registry (default 10000 ms).
    pub timeout_ms: u64,
    /// Framing of every Avro topic this service writes (default `single_object`).
    pub framing: Framing,
    /// Framing per topic role, over `framing`: `[registry.topics] sales_alerts = "confluent"`.
    pub topics: BTreeMap<TopicRole, Framing>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: String::new(),
            basic_auth_user_info: String::new(),
            ca_location: String::new(),
            client_certificate_location: String::new(),
            timeout_ms: 10_000,
            framing: Framing::SingleObject,
            topics: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |value: &str| if value.is_empty() { "" } else { crate::service::REDACTED };
        f.debug_struct("RegistryConfig")
            .field("url", &redacted_url(&self.url))
            .field("basic_auth_user_info", &secret(&self.basic_auth_user_info))
            .field("ca_location", &self.ca_location)
            .field("client_certificate_location", &self.client_certificate_location)
            .field("timeout_ms", &self.timeout_ms)
            .field("framing", &self.framing)
            .field("topics", &self.topics)
            .finish()
    }
}

/// `url` without credentials written into it (`https://user:pass@host` → `https://<redacted>@host`).
fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/').map_or(rest, |(authority, _)| authority).rsplit_once('@') {
            Some((_, host)) => {
                let path = rest.split_once('/').map_or(String::new(), |(_, path)| format!("/{path}"));
                format!("{scheme}://{}@{host}{path}", crate::service::REDACTED)
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl RegistryConfig {
    /// The framing of topics of `role`, checked: only topics whose value is one Avro record
    /// can be Confluent-framed.
    pub fn framing_of(&self, role: TopicRole) -> Framing {
        match role.value_schema() {
            Some(_) => self.topics.get(&role).copied().unwrap_or(self.framing),
            None => Framing::SingleObject,
        }
    }

    /// Whether anything is configured to need the registry.
    fn confluent_anywhere(&self) -> bool {
        self.framing == Framing::Confluent || self.topics.values().any(|framing| *framing == Framing::Confluent)
    }

    /// What is wrong with the section, as one line naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (role, framing) in &self.topics {
            if *framing == Framing::Confluent && role.value_schema().is_none() {
                bail!(
                    "registry.topics.{} = \"confluent\": that topic's records are not one Avro record per topic \
                     (raw JSON, the JSON alerts, the scorer's changelog and the parked alerts keep their format)",
                    role.key()
                );
            }
        }
        if self.url.is_empty() {
            if self.confluent_anywhere() {
                bail!("registry.framing or registry.topics asks for Confluent framing, but registry.url is empty");
            }
            return Ok(());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            bail!("registry.url = {:?} must start with http:// or https://", redacted_url(&self.url));
        }
        if self.timeout_ms == 0 {
            bail!("registry.timeout_ms must be at least 1");
        }
        if !self.basic_auth_user_info.is_empty() && !self.basic_auth_user_info.contains(':') {
            bail!("registry.basic_auth_user_info must be user:password");
        }
        Ok(())
    }
}

/// A topic a service writes Avro records to, and the role that decides its framing and schema
/// (the alerter's per-tier alert topics have the alerts' role under their own names).
#[derive(Debug, Clone)]
pub struct Output {
    pub role: TopicRole,
    pub topic: String,
}

impl Output {
    pub fn of(topics: &Topics, role: TopicRole) -> Output {
        Output { role, topic: topics.name(role).to_owned() }
    }
}

/// The Confluent API of one registry.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    user_info: Option<(String, String)>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("registry::Client").field("url", &redacted_url(&self.base)).finish_non_exhaustive()
    }
}

/// A registry answer that is not a success: the status and the registry's message.
#[derive(Debug)]
struct Refused {
    status: u16,
    message: String,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl Client {
    pub fn new(config: &RegistryConfig) -> anyhow::Result<Client> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Lookups run on short-lived runtimes of their own (see `HttpSource`): no pooled
            // connection may outlive the runtime that opened it.
            .pool_max_idle_per_host(0);
        if !config.ca_location.is_empty() {
            let pem = std::fs::read(&config.ca_location)
                .with_context(|| format!("registry.ca_location: cannot read {}", config.ca_location))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("registry.ca_location: {} holds no PEM certificate", config.ca_location))?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if !config.client_certificate_location.is_empty() {
            let pem = std::fs::read(&config.client_certificate_location).with_context(|| {
                format!("registry.client_certificate_location: cannot read {}", config.client_certificate_location)
            })?;
            let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "registry.client_certificate_location: {} must hold a PEM certificate and its private key",
                    config.client_certificate_location
                )
            })?;
            builder = builder.identity(identity);
        }
        let user_info =
            config.basic_auth_user_info.split_once(':').map(|(user, password)| (user.to_owned(), password.to_owned()));
        let http = builder.build().context("building the schema registry's HTTP client")?;
        Ok(Client { http, base: config.url.trim_end_matches('/').to_owned(), user_info, timeout })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base)).header("Accept", CONTENT_TYPE);
        match &self.user_info {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// Sends and reads a JSON answer; `Ok(Err(..))` is the registry refusing, `Err` not reaching it.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Result<serde_json::Value, Refused>, String> {
        let response = request.send().await.map_err(describe)?;
        let status = response.status();
        let body = response.bytes().await.map_err(describe)?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            return Ok(Ok(json));
        }
        let message = json["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        Ok(Err(Refused { status: status.as_u16(), message }))
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id. A schema
    /// the subject's compatibility rule refuses is an error with the registry's reason.
    pub async fn register(&self, subject: &str, schema: &str) -> anyhow::Result<u32> {
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
        let path = format!("/subjects/{}/versions", encode_path(subject));
        let deadline = Instant::now() + self.timeout;
        loop {
            let request = self.request(reqwest::Method::POST, &path).header("Content-Type", CONTENT_TYPE).json(&body);
            match self.call(request).await {
                Ok(Ok(answer)) => {
                    return id_of(&answer)
                        .ok_or_else(|| anyhow!("the schema registry answered {answer} without an id"));
                }
                Ok(Err(Refused { status: 409, message })) => bail!(
                    "the schema registry refused the schema for subject {subject} as incompatible with the versions \
                     registered there (HTTP 409): {message}. Records written with it could not be read by the \
                     subject's readers; change the schema compatibly, or change the subject's compatibility level"
                ),
                Ok(Err(Refused { status: 401 | 403, message })) => bail!(
                    "the schema registry refused access to subject {subject}: {message} (check registry.basic_auth_user_info)"
                ),
                Ok(Err(Refused { status, message })) if status >= 500 && Instant::now() < deadline => {
                    tracing::warn!(status, %message, subject, "schema registry error; retrying");
                }
                Ok(Err(Refused { status, message })) => {
                    bail!("the schema registry refused the schema for subject {subject} (HTTP {status}): {message}")
                }
                Err(detail) if Instant::now() < deadline => {
                    tracing::warn!(%detail, "schema registry not reachable yet; retrying");
                }
                Err(detail) => bail!(
                    "cannot reach the schema registry at {} within {} ms: {detail} (registry.url)",
                    redacted_url(&self.base),
                    self.timeout.as_millis()
                ),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The schema text registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, LookupError> {
        match self.call(self.request(reqwest::Method::GET, &format!("/schemas/ids/{id}"))).await {
            Ok(Ok(answer)) => answer["schema"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| LookupError::Unavailable(format!("the answer for schema id {id} has no schema"))),
            Ok(Err(Refused { status: 404, .. })) => Err(LookupError::NotFound(id)),
            Ok(Err(Refused { status, message })) => Err(LookupError::Unavailable(format!("HTTP {status}: {message}"))),
            Err(detail) => Err(LookupError::Unavailable(detail)),
        }
    }

    /// Every `(id, schema)` registered under `subject`, oldest first; none when the subject
    /// does not exist. At most 100 versions (the newest).
    pub async fn versions(&self, subject: &str) -> anyhow::Result<Vec<(u32, String)>> {
        let subject_path = format!("/subjects/{}/versions", encode_path(subject));
        let versions = match self.call(self.request(reqwest::Method::GET, &subject_path)).await {
            Ok(Ok(answer)) => answer.as_array().cloned().unwrap_or_default(),
            Ok(Err(Refused { status: 404, .. })) => return Ok(Vec::new()),
            Ok(Err(Refused { status, message })) => bail!("listing subject {subject}: HTTP {status}: {message}"),
            Err(detail) => bail!("listing subject {subject}: {detail}"),
        };
        let mut schemas = Vec::new();
        for version in versions.iter().rev().take(100).rev().filter_map(serde_json::Value::as_u64) {
            let path = format!("{subject_path}/{version}");
            match self.call(self.request(reqwest::Method::GET, &path)).await {
                Ok(Ok(answer)) => {
                    if let (Some(id), Some(schema)) = (id_of(&answer), answer["schema"].as_str()) {
                        schemas.push((id, schema.to_owned()));
                    }
                }
                Ok(Err(Refused { status: 404, .. })) => {}
                Ok(Err(Refused { status, message })) => {
                    bail!("reading {subject} version {version}: HTTP {status}: {message}")
                }
                Err(detail) => bail!("reading {subject} version {version}: {detail}"),
            }
        }
        Ok(schemas)
    }
}

fn id_of(answer: &serde_json::Value) -> Option<u32> {
    answer["id"].as_u64().and_then(|id| u32::try_from(id).ok())
}

/// A subject in a URL path (topic names are `[a-zA-Z0-9._-]`; anything else is escaped).
fn encode_path(subject: &str) -> String {
    crate::ops::percent_encode(subject)
}

/// reqwest's error with its causes (the bare text is often just "error sending request").
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The lookup the codec calls from any thread, async runtime or not: each call runs on a
/// thread of its own with a small runtime, bounded by the client's timeout.
#[derive(Debug)]
struct HttpSource {
    client: Client,
}

impl SchemaSource for HttpSource {
    fn schema_text(&self, id: u32) -> Result<String, LookupError> {
        let client = self.client.clone();
        let lookup = std::thread::Builder::new().name("abm-registry-lookup".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| LookupError::Unavailable(format!("no runtime for the lookup: {error}")))?;
            runtime.block_on(client.schema_by_id(id))
        });
        match lookup {
            Ok(thread) => {
                thread.join().unwrap_or_else(|_| Err(LookupError::Unavailable("the registry lookup panicked".into())))
            }
            Err(error) => Err(LookupError::Unavailable(format!("cannot start the registry lookup: {error}"))),
        }
    }
}

/// What [`prepare`] did, for the start-up log and the tests.
#[derive(Debug, Default)]
pub struct Prepared {
    /// `(topic, schema id)` of each output written in Confluent framing.
    pub confluent: Vec<(String, u32)>,
    /// How many registered schemas of the inputs were learned ahead of the first message.
    pub learned: usize,
}

/// Connects the process to the registry of `config` (nothing to do without one): registers
/// each Confluent-framed output's schema under `<topic>-value`, learns what is registered for
/// `inputs`, and installs the lookup every reader uses for ids it has not seen.
pub async fn prepare(config: &RegistryConfig, outputs: &[Output], inputs: &[Output]) -> anyhow::Result<Prepared> {
    config.validate()?;
    let mut prepared = Prepared::default();
    if config.url.is_empty() {
        return Ok(prepared);
    }
    let client = Client::new(config)?;
    abm_schemas::registry::install(Arc::new(HttpSource { client: client.clone() }));
    for output in outputs {
        if config.framing_of(output.role) != Framing::Confluent {
            continue;
        }
        let schema = output.role.value_schema().ok_or_else(|| anyhow!("{} has no Avro schema", output.topic))?;
        let subject = format!("{}-value", output.topic);
        let id = client.register(&subject, schema).await?;
        let known = abm_schemas::registry::learn(id, schema).map_err(|detail| anyhow!(detail))?;
        abm_schemas::registry::write_confluent(&output.topic, id, known.fingerprint);
        prepared.confluent.push((output.topic.clone(), id));
    }
    for input in inputs.iter().filter(|input| input.role.value_schema().is_some()) {
        let subject = format!("{}-value", input.topic);
        match client.versions(&subject).await {
            Ok(versions) => {
                for (id, schema) in versions {
                    match abm_schemas::registry::learn(id, &schema) {
                        Ok(_) => prepared.learned += 1,
                        Err(detail) => tracing::warn!(subject, id, %detail, "registered schema not learned"),
                    }
                }
            }
            // Not fatal: an id not learned now is looked up when a message carries it.
            Err(error) => tracing::warn!(subject, error = %format!("{error:#}"), "cannot list the registered schemas"),
        }
    }
    tracing::info!(
        registry = %redacted_url(&config.url),
        confluent = ?prepared.confluent,
        learned = prepared.learned,
        "schema registry ready"
    );
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_when_shown() {
        assert_eq!(redacted_url("https://u:p@reg.example:8081/apis"), "https://<redacted>@reg.example:8081/apis");
        assert_eq!(redacted_url("http://reg:8081"), "http://reg:8081");
        let config = RegistryConfig {
            url: "https://u:hunter2@reg".into(),
            basic_auth_user_info: "abm:hunter3".into(),
            ..RegistryConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
    }

    #[test]
    fn the_section_is_checked_key_by_key() {
        let confluent = RegistryConfig { framing: Framing::Confluent, ..RegistryConfig::default() };
        let error = confluent.validate().expect_err("no url").to_string();
        assert!(error.contains("registry.url is empty"), "{error}");
        let ok = RegistryConfig { url: "http://127.0.0.1:1".into(), ..confluent.clone() };
        ok.validate().expect("valid");
        // Framing `confluent` for all leaves the topics that are not one Avro record alone.
        assert_eq!(ok.framing_of(TopicRole::SalesAlerts), Framing::Confluent);
        assert_eq!(ok.framing_of(TopicRole::ScorerState), Framing::SingleObject);
        assert_eq!(ok.framing_of(TopicRole::RawWebVisits), Framing::SingleObject);
        let mut state = ok.clone();
        state.topics.insert(TopicRole::ScorerState, Framing::Confluent);
        let error = state.validate().expect_err("changelog").to_string();
        assert!(error.contains("registry.topics.scorer_state"), "{error}");
        let mut one = RegistryConfig { url: "http://r".into(), ..RegistryConfig::default() };
        one.topics.insert(TopicRole::AccountScores, Framing::Confluent);
        assert_eq!(one.framing_of(TopicRole::AccountScores), Framing::Confluent);
        assert_eq!(one.framing_of(TopicRole::SalesAlerts), Framing::SingleObject);
        let bad = RegistryConfig { url: "registry:8081".into(), ..RegistryConfig::default() };
        assert!(bad.validate().expect_err("scheme").to_string().contains("http://"));
        assert_eq!(encode_path("abm.sales-alerts-value"), "abm.sales-alerts-value");
        assert_eq!(encode_path("a/b c"), "a%2Fb%20c");
    }

    /// A one-shot HTTP server: answers each connection with `status` and `body` and hands
    /// back the request's head.
    fn answering(status: &'static str, body: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (heads, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(1) {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !String::from_utf8_lossy(&request).contains("\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&request).into_owned());
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (url, received)
    }

    #[tokio::test]
    async fn basic_auth_is_sent_and_a_refusal_names_the_setting() {
        let (url, heads) = answering("200 OK", r#"{"id":7}"#);
        let config = RegistryConfig { url, basic_auth_user_info: "abm:s3cret".into(), ..RegistryConfig::default() };
        let client = Client::new(&config).expect("client");
        assert_eq!(client.register("t-value", "\"string\"").await.expect("registered"), 7);
        let head = heads.recv().expect("a request").to_ascii_lowercase();
        assert!(head.starts_with("post /subjects/t-value/versions "), "{head}");
        // base64("abm:s3cret")
        assert!(head.contains("authorization: basic YWJtOnMzY3JldA==".to_ascii_lowercase().as_str()), "{head}");

        let (url, _) = answering("401 Unauthorized", r#"{"error_code":401,"message":"Unauthorized"}"#);
        let config = RegistryConfig { url, basic_auth_user_info: "abm:wrong".into(), ..RegistryConfig::default() };
        let error = Client::new(&config).expect("client").register("t-value", "\"string\"").await.expect_err("401");
        let text = error.to_string();
        assert!(text.contains("refused access") && text.contains("registry.basic_auth_user_info"), "{text}");
        assert!(!text.contains("wrong"), "the password is not shown: {text}");
    }
}
