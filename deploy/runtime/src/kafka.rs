//! Kafka client construction, a start-up reachability check, and topic creation.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::topics::TopicSpec;

/// `[kafka]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (default `127.0.0.1:9092`, the local broker).
    pub bootstrap_servers: String,
    /// How long start-up waits for the cluster to answer before failing (default 10000 ms).
    pub connect_timeout_ms: u64,
    /// Create missing topics from the declared list at start-up (default true).
    pub create_topics: bool,
    /// Replication factor of topics this service creates (default 1, the local broker).
    pub replication_factor: i32,
    /// Any librdkafka setting, passed through as is: `"security.protocol" = "SASL_SSL"`,
    /// `"sasl.mechanisms" = "PLAIN"`, `"ssl.ca.location" = "/etc/ssl/ca.pem"`, ...
    /// From the environment, write dots as underscores:
    /// `ABM_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL=SASL_SSL`. Applied last, so it wins.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            connect_timeout_ms: 10_000,
            create_topics: true,
            replication_factor: 1,
            librdkafka: BTreeMap::new(),
        }
    }
}

/// What went wrong talking to Kafka at start-up. Messages name the bootstrap servers.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error(
        "cannot reach Kafka at {servers} within {timeout_ms} ms ({detail}); is the broker running? (kafka.bootstrap_servers)"
    )]
    Unreachable { servers: String, timeout_ms: u64, detail: String },
    #[error("Kafka at {servers} refused the login: {detail} (check kafka.librdkafka {settings})")]
    Authentication { servers: String, detail: String, settings: &'static str },
    #[error(
        "TLS handshake with Kafka at {servers} failed: {detail} (check kafka.librdkafka ssl.ca.location, and the client certificate for mTLS)"
    )]
    Tls { servers: String, detail: String },
    #[error("invalid Kafka client setting: {0}")]
    Client(String),
    #[error("cannot create topic {topic}: {detail}")]
    CreateTopic { topic: String, detail: String },
}

impl KafkaConfig {
    /// librdkafka settings for a client named `client_id`: bootstrap servers, then the
    /// passthrough settings (which win). Callers add their role's settings before creating.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        self.layer(ClientConfig::new(), client_id)
    }

    /// The passthrough settings with environment-style keys (`security_protocol`) turned into
    /// librdkafka's (`security.protocol`). Keys that already contain a dot are kept as given.
    pub fn passthrough(&self) -> impl Iterator<Item = (String, &str)> {
        self.librdkafka.iter().map(|(key, value)| {
            let key = if key.contains('.') { key.clone() } else { key.replace('_', ".") };
            (key, value.as_str())
        })
    }

    /// A consumer in `group_id` that stores offsets only when told to (after its outputs are
    /// acknowledged), starts from the earliest offset when the group is new, and reads only
    /// committed transactional data.
    pub fn consumer_config(&self, client_id: &str, group_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("group.id", group_id)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // librdkafka's defaults starve a busy consumer: 1 MiB per partition per fetch, and a
            // 1 s pause before fetching a partition again once its queue is over a threshold.
            // Measured with the scorer bench: 177k -> 280k events/s.
            .set("max.partition.fetch.bytes", "8388608")
            .set("fetch.queue.backoff.ms", "20");
        self.layer(config, client_id)
    }

    /// An idempotent producer (`acks=all`, no duplicates on retry, order kept per partition).
    pub fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        self.layer(config, client_id)
    }

    /// `role_defaults` overlaid with the connection settings and then the passthrough. Set
    /// directly, never copied out of another `ClientConfig`: its `config_map` hides secrets
    /// (`sasl.password` reads "[sanitized for safety]"), so a copy would carry a wrong password.
    fn layer(&self, mut role_defaults: ClientConfig, client_id: &str) -> ClientConfig {
        // librdkafka backs off reconnecting up to 10 s: a client can lie idle that long after a
        // broker came back. 1 s, as Kafka's Java client does.
        role_defaults.set("reconnect.backoff.max.ms", "1000");
        // librdkafka leaves Nagle's algorithm on: a small request sent while another is
        // unacknowledged waits for the broker's delayed ACK (up to 40 ms), several times per
        // transaction. Off, as in Kafka's Java client.
        role_defaults.set("socket.nagle.disable", "true");
        role_defaults.set("bootstrap.servers", &self.bootstrap_servers);
        role_defaults.set("client.id", client_id);
        for (key, value) in self.passthrough() {
            role_defaults.set(key, value);
        }
        role_defaults
    }

    /// Fails unless `changelog` has at least as many partitions as `input`: a loop keeps the
    /// state of input partition p in changelog partition p (the scorer's accounts, the
    /// stitcher's visitors), so a changelog with fewer partitions could not hold it. Returns
    /// `input`'s partition count.
    pub async fn check_changelog_partitions(
        &self,
        client_id: &str,
        input: &str,
        changelog: &str,
    ) -> anyhow::Result<usize> {
        use rdkafka::consumer::Consumer as _;
        let client: BaseConsumer = self.client_config(client_id).create()?;
        let timeout = self.timeout();
        let (input, changelog) = (input.to_owned(), changelog.to_owned());
        let (names, counts) = (format!("{changelog} and {input}"), (input.clone(), changelog.clone()));
        let (inputs, changelogs) = tokio::task::spawn_blocking(move || -> anyhow::Result<(usize, usize)> {
            let count = |topic: &str| -> anyhow::Result<usize> {
                let metadata = client.fetch_metadata(Some(topic), timeout)?;
                Ok(metadata.topics().first().map_or(0, |t| t.partitions().len()))
            };
            Ok((count(&counts.0)?, count(&counts.1)?))
        })
        .await
        .map_err(|error| anyhow::anyhow!("counting the partitions of {names}: {error}"))??;
        anyhow::ensure!(
            inputs > 0 && changelogs >= inputs,
            "{changelog} has {changelogs} partitions but {input} has {inputs}: the changelog needs at least as many"
        );
        Ok(inputs)
    }

    /// librdkafka (2.12) aborts the process on a failed assertion when creating a client fails
    /// after its OIDC token thread has started, as with a TLS file it cannot load. With
    /// `sasl.oauthbearer.method = oidc`, the same settings are first tried on a client without
    /// OIDC and without brokers (it connects nowhere), which fails with librdkafka's message.
    fn preflight_oidc(&self, client_id: &str) -> Result<(), KafkaSetupError> {
        let oidc = self
            .passthrough()
            .any(|(key, value)| key == "sasl.oauthbearer.method" && value.eq_ignore_ascii_case("oidc"));
        if !oidc {
            return Ok(());
        }
        let mut config = ClientConfig::new();
        for (key, value) in self.passthrough().filter(|(key, _)| !key.starts_with("sasl.")) {
            config.set(key, value);
        }
        config
            .set("client.id", client_id)
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", "preflight")
            .set("sasl.password", "preflight");
        config.create::<rdkafka::producer::BaseProducer>().map(drop).map_err(|e| self.creation_error(&e))
    }

    /// A client that could not be created; a file setting librdkafka names (`ssl.ca.location
    /// failed: ...`) is said with its value, which librdkafka leaves out. librdkafka's text of a
    /// refused setting ends with the setting's value: a secret's is blanked out.
    fn creation_error(&self, error: &dyn std::fmt::Display) -> KafkaSetupError {
        let mut text = error.to_string();
        // The longest first: a secret that starts another must not leave the other's tail.
        let mut secrets: Vec<&str> = self
            .passthrough()
            .filter(|(key, value)| {
                !value.is_empty()
                    && !key.ends_with(".location")
                    && (crate::service::is_secret_key(key) || key.contains("key"))
            })
            .map(|(_, value)| value)
            .collect();
        secrets.sort_by_key(|value| std::cmp::Reverse(value.len()));
        for value in secrets {
            text = text.replace(value, crate::service::REDACTED);
        }
        let files: Vec<String> = self
            .passthrough()
            .filter(|(key, _)| key.ends_with(".location") && text.contains(key.as_str()))
            .map(|(key, value)| format!("kafka.librdkafka {key} = {value}"))
            .collect();
        if !files.is_empty() {
            text = format!("{text} ({})", files.join(", "));
        }
        KafkaSetupError::Client(text)
    }

    /// The settings that make up the login, for an error that says what to check.
    fn login_settings(&self) -> &'static str {
        let oauth = self
            .passthrough()
            .any(|(key, value)| key.starts_with("sasl.mechanism") && value.trim().eq_ignore_ascii_case("OAUTHBEARER"));
        if oauth {
            "sasl.oauthbearer.method, sasl.oauthbearer.client.id, sasl.oauthbearer.client.secret and sasl.oauthbearer.token.endpoint.url"
        } else {
            "sasl.mechanisms, sasl.username and sasl.password"
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Fails unless the cluster answers a metadata request within `connect_timeout_ms`. A
    /// refused login (wrong SASL credentials) or a failed TLS handshake (an untrusted broker
    /// certificate, a client certificate the broker refuses) fails at once, saying which.
    pub async fn check_reachable(&self, client_id: &str) -> Result<(), KafkaSetupError> {
        self.preflight_oidc(client_id)?;
        let context = StartupContext::default();
        // A group id (never joined) routes librdkafka's log and error events to the consumer's
        // queue, which the poll below serves; without one they wait on a queue nobody reads.
        let consumer: BaseConsumer<StartupContext> = self
            .client_config(client_id)
            .set("group.id", format!("{client_id}-startup-check"))
            .create_with_context(context)
            .map_err(|e| self.creation_error(&e))?;
        let timeout = self.timeout();
        let servers = self.bootstrap_servers.clone();
        let timeout_ms = self.connect_timeout_ms;
        let login_settings = self.login_settings();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let result = consumer.fetch_metadata(None, Duration::from_millis(250));
                if result.is_ok() {
                    return Ok(());
                }
                // Serves librdkafka's error events, which come out of a poll (their reason text
                // was logged a moment before, and the context kept it).
                if let Some(Err(error)) = consumer.poll(Duration::from_millis(50)) {
                    rdkafka::ClientContext::error(consumer.context().as_ref(), error, "");
                }
                if let Some(refusal) = consumer.context().refusal() {
                    return Err(refusal.into_error(&servers, login_settings));
                }
                if std::time::Instant::now() >= deadline {
                    let detail = consumer
                        .context()
                        .last_error()
                        .or_else(|| result.err().map(|e| e.to_string()))
                        .unwrap_or_default();
                    return Err(KafkaSetupError::Unreachable { servers, timeout_ms, detail });
                }
            }
        })
        .await
        .map_err(|e| KafkaSetupError::Client(e.to_string()))?
    }

    /// Creates the topics in `specs` that do not exist yet; returns the names it created.
    pub async fn ensure_topics(&self, client_id: &str, specs: &[TopicSpec]) -> Result<Vec<String>, KafkaSetupError> {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config(client_id).create().map_err(|e| self.creation_error(&e))?;
        let retention: Vec<Option<String>> = specs.iter().map(|s| s.retention_ms.map(|ms| ms.to_string())).collect();
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&retention)
            .map(|(spec, retention)| {
                let topic =
                    NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(self.replication_factor));
                let topic = if spec.compacted { topic.set("cleanup.policy", "compact") } else { topic };
                match retention {
                    Some(ms) => topic.set("retention.ms", ms),
                    None => topic,
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.timeout())).request_timeout(Some(self.timeout()));
        let results = admin.create_topics(&new_topics, &options).await.map_err(|e| KafkaSetupError::CreateTopic {
            topic: specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            detail: e.to_string(),
        })?;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaSetupError::CreateTopic { topic, detail: code.to_string() });
                }
            }
        }
        Ok(created)
    }
}

/// Why the cluster turned a client away at start-up.
#[derive(Debug, Clone)]
enum Refusal {
    Authentication(String),
    Tls(String),
}

impl Refusal {
    fn into_error(self, servers: &str, login_settings: &'static str) -> KafkaSetupError {
        let servers = servers.to_owned();
        match self {
            Refusal::Authentication(detail) => {
                KafkaSetupError::Authentication { servers, detail, settings: login_settings }
            }
            Refusal::Tls(detail) => KafkaSetupError::Tls { servers, detail },
        }
    }
}

/// Context of the start-up check: keeps librdkafka's errors (instead of logging each retry)
/// so the check ends with one line that says what is wrong.
#[derive(Debug, Default)]
struct StartupContext {
    refusal: std::sync::Mutex<Option<Refusal>>,
    last_error: std::sync::Mutex<Option<String>>,
}

impl StartupContext {
    fn refusal(&self) -> Option<Refusal> {
        self.refusal.lock().ok().and_then(|refusal| refusal.clone())
    }
    fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|error| error.clone())
    }
}

impl rdkafka::ClientContext for StartupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        // Kept, not logged: the check ends with one line that says what went wrong.
        tracing::debug!(?level, fac, log_message, "librdkafka (start-up check)");
        if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Error as i32)
            && let Ok(mut slot) = self.last_error.lock()
        {
            // "127.0.0.1:9094/bootstrap: SASL authentication error: ..." without the broker prefix.
            let text = log_message.split_once(": ").map_or(log_message, |(_, rest)| rest);
            *slot = Some(text.to_owned());
            drop(slot);
            // A client certificate refused under TLS 1.3 arrives after the handshake, as a
            // failed receive that carries the TLS alert, and only as this log line.
            if is_tls_alert(text)
                && let Ok(mut refusal) = self.refusal.lock()
            {
                refusal.get_or_insert(Refusal::Tls(text.to_owned()));
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // "All brokers are down" follows every connection failure and says less than its cause.
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        let reason =
            if reason.is_empty() { self.last_error().unwrap_or_else(|| error.to_string()) } else { reason.to_owned() };
        let refusal = match code {
            Some(RDKafkaErrorCode::Authentication) => Some(Refusal::Authentication(reason.clone())),
            Some(RDKafkaErrorCode::SSL) => Some(Refusal::Tls(reason.clone())),
            _ if is_tls_alert(&reason) => Some(Refusal::Tls(reason.clone())),
            _ => None,
        };
        if let Some(refusal) = refusal
            && let Ok(mut slot) = self.refusal.lock()
        {
            slot.get_or_insert(refusal);
        }
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for StartupContext {}

/// Whether librdkafka's text reports a TLS failure (OpenSSL's error strings).
fn is_tls_alert(text: &str) -> bool {
    text.contains("SSL alert") || text.contains("SSL routines") || text.contains("SSL handshake failed")
}

/// Client context for readers that ask for end-of-partition events: librdkafka also reports
/// them as errors, which the default context would log at ERROR level.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndOfPartitionContext;

impl rdkafka::ClientContext for EndOfPartitionContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError;
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || matches!(error, KafkaError::Global(code) if code == RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartitionContext {}

/// Reads `partitions` of `topic` from the beginning to their current end (committed data only),
/// handing each record's partition, key and value (`None` for a tombstone) to `on_record`.
/// Used to rebuild state from a changelog or an output topic. Blocking.
pub fn read_to_end<F>(
    kafka: &KafkaConfig,
    client_id: &str,
    topic: &str,
    partitions: &[i32],
    mut on_record: F,
) -> anyhow::Result<()>
where
    F: FnMut(i32, &[u8], Option<&[u8]>) -> anyhow::Result<()>,
{
    use rdkafka::Message;
    let settings = ReadToEnd { partitions: Some(partitions), ..ReadToEnd::default() };
    read_messages_to_end(kafka, client_id, topic, &settings, |message| {
        on_record(message.partition(), message.key().unwrap_or_default(), message.payload())
            .map_err(|e| e.context(format!("{topic} partition {} offset {}", message.partition(), message.offset())))
    })
}

/// How [`read_messages_to_end`] reads.
#[derive(Debug, Clone)]
pub struct ReadToEnd<'a> {
    /// The partitions to read; `None`: all of the topic's.
    pub partitions: Option<&'a [i32]>,
    /// Give up (an error) after this long.
    pub deadline: Duration,
    /// Start each partition at its first record with a timestamp at or after this (ms since
    /// the epoch) instead of its beginning; a partition without one is at its end already.
    pub since: Option<i64>,
}

impl Default for ReadToEnd<'_> {
    fn default() -> Self {
        ReadToEnd { partitions: None, deadline: Duration::from_secs(600), since: None }
    }
}

/// The one "read a topic to its end" of the pipeline: waits until every transaction written to
/// the partitions so far is decided, then reads them from the beginning with `read_committed`
/// until each has reported its end once, handing every message to `on_message`. Blocking. ([`read_to_end`] is the restore's form; [`follow_table`] keeps
/// reading after the end, on the same reader set-up.)
pub fn read_messages_to_end<F>(
    kafka: &KafkaConfig,
    client_id: &str,
    topic: &str,
    settings: &ReadToEnd<'_>,
    mut on_message: F,
) -> anyhow::Result<()>
where
    F: FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>,
{
    // An empty partition's end is only seen when a fetch returns, and the broker holds a
    // fetch that finds nothing for fetch.wait.max.ms (500 ms by default): keep it short.
    let (reader, partitions) = from_beginning_reader(kafka, client_id, "reader", topic, settings.partitions, 10)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = std::time::Instant::now() + settings.deadline;
    let minutes = settings.deadline.as_secs_f64() / 60.0;
    // Every transaction written so far decided first, and before the assignment: a reader that
    // starts fetching earlier can see a partition's end at a last stable offset that an
    // undecided transaction still holds back.
    await_decided_transactions(kafka, client_id, &reader, topic, &partitions, deadline)?;
    match settings.since {
        None => assign_from_beginning(&reader, topic, &partitions)?,
        Some(since) => assign_from_time(&reader, topic, &partitions, since, kafka.timeout())?,
    }
    let mut unfinished: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    while !unfinished.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading {topic} {partitions:?} took more than {minutes} minutes"
        );
        if let Some(message) = poll_toward_end(&reader, &mut unfinished, topic) {
            on_message(&message)?;
        }
    }
    Ok(())
}

/// A `read_committed` consumer for `partitions` of `topic` (all of them when `None`), once each
/// has a leader, that reports each partition's end and never commits; not assigned yet (see
/// [`assign_from_beginning`]).
fn from_beginning_reader(
    kafka: &KafkaConfig,
    client_id: &str,
    role: &str,
    topic: &str,
    partitions: Option<&[i32]>,
    fetch_wait_ms: u32,
) -> Result<(BaseConsumer<EndOfPartitionContext>, Vec<i32>), KafkaSetupError> {
    let reader: BaseConsumer<EndOfPartitionContext> = kafka
        .client_config(client_id)
        .set("group.id", format!("{client_id}-{role}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        // As the loop's consumer (`consumer_config`): librdkafka's defaults (1 MiB per partition
        // per fetch, a 1 s pause once a partition's queue is full) leave a reader that keeps up
        // waiting most of the time. Measured with the backtest bench: 142k -> see benches/README.
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.queue.backoff.ms", "20")
        .create_with_context(EndOfPartitionContext)
        .map_err(|e| KafkaSetupError::Client(format!("creating a reader for {topic}: {e}")))?;
    // Know the partitions' leaders before assigning: librdkafka otherwise waits for a timed
    // retry (500 ms) before it looks up where each partition starts.
    let all = partitions_with_leaders(&reader, topic, kafka.timeout())?;
    Ok((reader, partitions.map_or(all, <[i32]>::to_vec)))
}

/// Assigns `partitions` of `topic` to `reader` from their beginning: it starts fetching now.
fn assign_from_beginning(
    reader: &BaseConsumer<EndOfPartitionContext>,
    topic: &str,
    partitions: &[i32],
) -> Result<(), KafkaSetupError> {
    use rdkafka::{Offset, TopicPartitionList};
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(|e| KafkaSetupError::Client(e.to_string()))?;
    }
    reader.assign(&list).map_err(|e| KafkaSetupError::Client(e.to_string()))
}

/// Assigns `partitions` of `topic` to `reader` from their first record with a timestamp at or
/// after `since` (the broker's `ListOffsets` by time; its end when there is none).
fn assign_from_time(
    reader: &BaseConsumer<EndOfPartitionContext>,
    topic: &str,
    partitions: &[i32],
    since: i64,
    timeout: Duration,
) -> Result<(), KafkaSetupError> {
    use rdkafka::{Offset, TopicPartitionList};
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition_offset(topic, *partition, Offset::Offset(since))
            .map_err(|e| KafkaSetupError::Client(e.to_string()))?;
    }
    let mut found = reader
        .offsets_for_times(list, timeout)
        .map_err(|e| KafkaSetupError::Client(format!("offsets of {topic} by time: {e}")))?;
    for element in found.elements() {
        if let Some(error) = element.error().err() {
            return Err(KafkaSetupError::Client(format!(
                "offset of {topic} [{}] by time: {error}",
                element.partition()
            )));
        }
    }
    // A partition with no record that recent answers "no offset" (-1): read from its end.
    for partition in partitions {
        let none =
            found.find_partition(topic, *partition).is_none_or(|e| !matches!(e.offset(), Offset::Offset(o) if o >= 0));
        if none {
            found
                .set_partition_offset(topic, *partition, Offset::End)
                .map_err(|e| KafkaSetupError::Client(e.to_string()))?;
        }
    }
    reader.assign(&found).map_err(|e| KafkaSetupError::Client(e.to_string()))
}

/// One poll of a reader going to the partitions' ends: a message, or `None` (nothing yet, an
/// error logged, or a partition's end, which takes it out of `unfinished`).
fn poll_toward_end<'a>(
    reader: &'a BaseConsumer<EndOfPartitionContext>,
    unfinished: &mut std::collections::BTreeSet<i32>,
    topic: &str,
) -> Option<rdkafka::message::BorrowedMessage<'a>> {
    match reader.poll(Duration::from_millis(100)) {
        Some(Ok(message)) => Some(message),
        Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
            unfinished.remove(&partition);
            None
        }
        Some(Err(error)) => {
            tracing::warn!(%error, topic, "reader error");
            None
        }
        None => None,
    }
}

/// Waits until every transaction that has written to `partitions` of `topic` so far is
/// decided: until each partition's last stable offset (LSO, what `read_committed` readers may
/// read up to) reaches the high watermark it had when this was called.
///
/// A `read_committed` reader's end of partition is the LSO, and a transaction's commit only
/// moves the LSO once the coordinator has written its markers, *after* `commit_transaction`
/// returned (asynchronously; it can take seconds after a broker restart). Reading "to the end"
/// before that misses a committed transaction whose input offsets are committed too: a restore
/// would return the state before it while its input is never read again (its events lost from
/// the state, and later copies of them taken for new events). Waiting for the high watermark
/// to become stable closes that gap; an open transaction of a dead writer is decided within
/// its transaction timeout.
fn await_decided_transactions<C: rdkafka::consumer::ConsumerContext>(
    kafka: &KafkaConfig,
    client_id: &str,
    reader: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    deadline: std::time::Instant,
) -> anyhow::Result<()> {
    // ListOffsets answers with the isolation level of the client that asks: the high watermark
    // for a read_uncommitted one, the LSO for the read_committed reader.
    let probe: BaseConsumer<EndOfPartitionContext> = kafka
        .client_config(&format!("{client_id}-probe"))
        .set("isolation.level", "read_uncommitted")
        .create_with_context(EndOfPartitionContext)
        .map_err(|e| anyhow::anyhow!("creating a reader for {topic}: {e}"))?;
    let timeout = kafka.timeout();
    let started = std::time::Instant::now();
    let mut waited = false;
    for partition in partitions {
        let (_, high) = probe
            .fetch_watermarks(topic, *partition, timeout)
            .map_err(|e| anyhow::anyhow!("high watermark of {topic} [{partition}]: {e}"))?;
        loop {
            let (_, stable) = reader
                .fetch_watermarks(topic, *partition, timeout)
                .map_err(|e| anyhow::anyhow!("last stable offset of {topic} [{partition}]: {e}"))?;
            if stable >= high {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{topic} [{partition}]: transactions still open after 10 minutes (last stable offset {stable}, high watermark {high})"
            );
            if !waited {
                tracing::info!(
                    topic,
                    partition,
                    stable,
                    high,
                    "waiting for open transactions to be decided before reading"
                );
                waited = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if waited {
        tracing::info!(topic, ?partitions, seconds = started.elapsed().as_secs_f64(), "open transactions decided");
    }
    Ok(())
}

/// The partitions of `topic` once the cluster's metadata knows the topic and a leader for each
/// of them. A topic created a moment ago may not be in every broker's metadata yet: asked
/// again every 100 ms until `timeout`.
fn partitions_with_leaders<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaSetupError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| KafkaSetupError::Client(format!("metadata of {topic}: {e}")))?;
        let found = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none());
        if let Some(found) = found
            && !found.partitions().is_empty()
            && found.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
        {
            return Ok(found.partitions().iter().map(|p| p.id()).collect());
        }
        if std::time::Instant::now() >= deadline {
            return Err(KafkaSetupError::Client(format!(
                "topic {topic} does not exist or has partitions without a leader after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads every partition of `topic` from the beginning (e.g. a compacted table such as the
/// TAL), hands each record's key and value (`None` for a tombstone) to `on_record`, and keeps
/// following it until `shutdown`. Returns once every partition has been read to its end, so
/// the caller starts with the whole table; later updates arrive on a background thread.
pub async fn follow_table<F>(
    kafka: &KafkaConfig,
    client_id: &str,
    topic: &str,
    shutdown: CancellationToken,
    mut on_record: F,
) -> Result<(), KafkaSetupError>
where
    F: FnMut(&[u8], Option<&[u8]>) + Send + 'static,
{
    use rdkafka::Message;
    // Reaching the end of an empty partition waits for a fetch that finds nothing: shorter
    // than the default 500 ms, so a service starts sooner; updates arrive as fast either way.
    let (consumer, partitions) = from_beginning_reader(kafka, client_id, "table-reader", topic, None, 100)?;
    assign_from_beginning(&consumer, topic, &partitions)?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let topic_name = topic.to_owned();
    std::thread::Builder::new()
        .name(format!("table-{topic}"))
        .spawn(move || {
            let mut pending: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
            let mut ready = Some(ready_tx);
            while !shutdown.is_cancelled() {
                if let Some(message) = poll_toward_end(&consumer, &mut pending, &topic_name) {
                    on_record(message.key().unwrap_or_default(), message.payload());
                }
                if pending.is_empty()
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
            }
        })
        .map_err(|e| KafkaSetupError::Client(e.to_string()))?;
    ready_rx
        .await
        .map_err(|_| KafkaSetupError::Client(format!("table reader of {topic} stopped before reading to the end")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_setting_s_error_never_shows_a_secret() {
        let mut config = KafkaConfig::default();
        config.librdkafka.insert("sasl.oauthbearer.client.secret".into(), "pipeline-secret".into());
        config.librdkafka.insert("ssl.ca.location".into(), "/etc/ca.pem".into());
        let librdkafka = "Client config error: Configuration property \"sasl.oauthbearer.client.secret\" not \
                          supported in this build sasl.oauthbearer.client.secret pipeline-secret";
        let text = config.creation_error(&librdkafka).to_string();
        assert!(!text.contains("pipeline-secret"), "{text}");
        assert!(text.contains(&format!("sasl.oauthbearer.client.secret {}", crate::service::REDACTED)), "{text}");
        // Java-client settings pasted in carry passwords too; a secret that starts another
        // leaves nothing of the other.
        config.librdkafka.insert(
            "sasl.jaas.config".into(),
            "org.apache.kafka.common.security.scram.ScramLoginModule required password=\"hunter22\";".into(),
        );
        config.librdkafka.insert("sasl.password".into(), "abc".into());
        config.librdkafka.insert("ssl.key.password".into(), "abcdef".into());
        let refused = "No such configuration property: sasl.jaas.config org.apache.kafka.common.security.scram.\
                       ScramLoginModule required password=\"hunter22\"; ssl.key.password abcdef";
        let text = config.creation_error(&refused).to_string();
        for secret in ["hunter22", "abc", "def"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let text = config.creation_error(&"ssl.ca.location failed: no such file").to_string();
        assert!(text.contains("kafka.librdkafka ssl.ca.location = /etc/ca.pem"), "{text}");
    }

    #[test]
    fn passthrough_settings_win_and_env_keys_get_dots() {
        let mut config = KafkaConfig::default();
        config.librdkafka.insert("security_protocol".into(), "SASL_SSL".into());
        config.librdkafka.insert("sasl.mechanisms".into(), "PLAIN".into());
        config.librdkafka.insert("client.id".into(), "override".into());
        let client = config.client_config("svc");
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(client.get("client.id"), Some("override"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn secrets_reach_every_role_s_client_config() {
        let mut config = KafkaConfig::default();
        config.librdkafka.insert("sasl_password".into(), "s3cret".into());
        for client in [config.client_config("a"), config.consumer_config("b", "g"), config.producer_config("c")] {
            assert_eq!(client.get("sasl.password"), Some("s3cret"));
        }
    }
}
