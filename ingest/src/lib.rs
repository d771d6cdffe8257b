//! Ingest: the front door for trackers and integrations.
//!
//! - [`validate`] — one JSON event to a validated `EngagementEvent`, or a reason code (pure).
//! - [`resolve`] — account resolution against the TAL's domains.
//! - [`pipeline`] — a body or raw record to the records to write and a result per event.
//! - [`sink`] — writing to Kafka and waiting for the acknowledgements.
//! - [`http`] — `POST /v1/events`, the tracker collector, and the Segment-compatible API.
//! - [`segment`] — Segment and RudderStack messages in the native event format (pure).
//! - [`stitch`] — identity stitching: a visitor's events wait for its identity (exactly once).
//! - [`keys`] — server and browser write keys, a browser key's scope and rate limits.
//! - [`raw`] — the raw-topic normaliser.
//! - [`tal_import`] — the `import-tal` command's CSV parser.
//! - [`metrics`] — `abm_ingest_*`, with the conservation counters.

pub mod http;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod raw;
pub mod resolve;
pub mod segment;
mod segment_http;
pub mod sink;
pub mod stitch;
pub mod tal_import;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use abm::kafka::KafkaConfig;
use abm::ops::{self, HttpConfig};
use abm::registry::{Output, RegistryConfig};
use abm::service::{Context, ServiceConfig, prepare_kafka};
use abm::tal::TalChange;
use abm::telemetry::LogConfig;
use abm::topics::{TopicOverrides, TopicRole, Topics};
use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::resolve::TalIndex;
use crate::sink::{OutputTopics, Sink};
use crate::validate::ValidationConfig;

/// Ingest's HTTP port unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";

/// The raw topics ingest normalises (`abm::topics::RAW_TOPICS`).
pub fn raw_topics() -> Vec<TopicRole> {
    abm::topics::RAW_TOPICS.iter().map(|(role, _)| *role).collect()
}

/// Ingest's configuration (see the README's configuration reference).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub topics: TopicOverrides,
    pub registry: RegistryConfig,
    pub ingest: Settings,
}

/// `[ingest]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Consumer group of the raw-topic normaliser (default `abm-ingest`).
    pub group_id: String,
    /// Server write keys for `POST /v1/events` (trusted sources, the whole event format):
    /// name = secret. The name is recorded as the source. With no browser keys either (the
    /// default), every request is refused with 401.
    pub write_keys: BTreeMap<String, String>,
    /// Browser write keys (public: they ship in web pages), each with its scope and limits.
    pub browser_keys: BTreeMap<String, keys::BrowserKeyConfig>,
    /// A header that carries the client's address when ingest runs behind a proxy or load
    /// balancer it trusts (for example `x-forwarded-for`: only the last entry of the last such
    /// header is used, the one the proxy added; if it is not an address, the peer's is).
    /// Empty (the default): the connection's peer address. Per-client rate limits count an
    /// IPv6 client by its /64.
    pub client_address_header: String,
    /// Largest request body, after gzip decompression (default 1048576).
    pub max_body_bytes: usize,
    /// Most events in one batch (default 5000); a larger batch is answered 413 and kept.
    pub max_batch_events: usize,
    /// Most rejected events an answer describes one by one (default 50; the rest are counted).
    pub max_reported_problems: usize,
    /// How long Kafka may take to acknowledge a write before the batch is answered 503
    /// (default 5000 ms; librdkafka's `message.timeout.ms`).
    pub produce_timeout_ms: u64,
    /// Normalise the raw topics (default true).
    pub raw_topics: bool,
    /// How long the raw-topic normaliser may have input waiting without taking any before its
    /// Kafka consumer is replaced (default 20000 ms, at least 2000); `/readyz` is 503 from half
    /// of it.
    pub stall_after_ms: u64,
    pub validation: ValidationConfig,
    /// The Segment-compatible endpoints and their mapping (`[ingest.segment]`).
    pub segment: segment::SegmentConfig,
    /// Identity stitching (`[ingest.stitch]`).
    pub stitch: stitch::StitchConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            group_id: "abm-ingest".into(),
            write_keys: BTreeMap::new(),
            browser_keys: BTreeMap::new(),
            client_address_header: String::new(),
            max_body_bytes: 1024 * 1024,
            max_batch_events: 5_000,
            max_reported_problems: 50,
            produce_timeout_ms: 5_000,
            raw_topics: true,
            stall_after_ms: 20_000,
            validation: ValidationConfig::default(),
            segment: segment::SegmentConfig::default(),
            stitch: stitch::StitchConfig::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// Loads the TAL into `index` and keeps following it; returns once it was read to the end.
pub async fn follow_tal(
    kafka: &KafkaConfig,
    topics: &Topics,
    index: Arc<TalIndex>,
    metrics: Metrics,
    shutdown: abm::CancellationToken,
) -> anyhow::Result<()> {
    let tal_metrics = abm::tal::TalMetrics {
        accounts: metrics.tal_accounts.clone(),
        decode_errors: metrics.tal_decode_errors.clone(),
    };
    abm::tal::follow(kafka, topics, "abm-ingest-tal", shutdown, tal_metrics, move |change| {
        match change {
            TalChange::Upsert(account) => index.upsert(&account),
            TalChange::Remove(account_id) => index.remove(&account_id),
        }
        metrics.tal_domains.set(index.domains() as i64);
        index.accounts()
    })
    .await
}

/// Runs ingest until `context.shutdown` is cancelled.
pub async fn run(config: Config, context: Context) -> anyhow::Result<()> {
    let topics = Topics::resolve(&config.topics);
    let settings = &config.ingest;
    let keys =
        keys::Keys::new(settings.write_keys.clone(), settings.browser_keys.clone()).map_err(anyhow::Error::msg)?;
    prepare_kafka(&config.kafka, &topics, "abm-ingest").await?;
    settings.segment.check().map_err(anyhow::Error::msg)?;
    settings.stitch.check().map_err(anyhow::Error::msg)?;
    let outputs = [
        TopicRole::Engagement,
        TopicRole::Unresolved,
        TopicRole::Rejected,
        TopicRole::Identity,
        TopicRole::IdentityGraph,
    ]
    .map(|role| Output::of(&topics, role));
    let inputs =
        [TopicRole::Accounts, TopicRole::Identity, TopicRole::IdentityGraph].map(|role| Output::of(&topics, role));
    abm::registry::prepare(&config.registry, &outputs, &inputs).await?;
    let metrics = Metrics::register(&context.registry).context("registering metrics")?;
    if keys.is_empty() {
        tracing::warn!(
            "no ingest.write_keys or ingest.browser_keys configured: POST /v1/events answers 401 to everyone"
        );
    }

    let tal = Arc::new(TalIndex::new(&settings.validation.free_mail_domains));
    follow_tal(&config.kafka, &topics, tal.clone(), metrics.clone(), context.shutdown.clone()).await?;
    tracing::info!(accounts = tal.accounts(), domains = tal.domains(), "TAL loaded");

    let mut producer_config = config.kafka.producer_config("abm-ingest");
    producer_config.set("message.timeout.ms", settings.produce_timeout_ms.to_string());
    let producer: FutureProducer = producer_config.create().context("creating the Kafka producer")?;
    let sink = Sink::new(
        producer,
        OutputTopics {
            engagement: topics.name(TopicRole::Engagement).to_owned(),
            unresolved: topics.name(TopicRole::Unresolved).to_owned(),
            rejected: topics.name(TopicRole::Rejected).to_owned(),
            identity: topics.name(TopicRole::Identity).to_owned(),
        },
        metrics.produce_latency.clone(),
    );

    let collector = Arc::new(http::Collector {
        keys,
        client_address_header: settings.client_address_header.to_ascii_lowercase(),
        max_body_bytes: settings.max_body_bytes,
        max_batch_events: settings.max_batch_events.max(1),
        max_reported_problems: settings.max_reported_problems,
        body_read_timeout: config.http.body_read_timeout(),
        validation: settings.validation.clone(),
        segment: settings.segment.clone(),
        tal: tal.clone(),
        sink: sink.clone(),
        metrics: metrics.clone(),
    });
    let listener = ops::bind(config.http.listen).await?;
    tracing::info!(address = %listener.local_addr()?, "ingest listening");
    // /v1/events has its own keys (write keys), not the API tokens.
    let app = ops::router(context.registry.clone(), context.health.clone(), http::routes(collector), &config.http);
    let server = tokio::spawn(ops::serve(
        listener,
        app,
        config.http.clone(),
        context.registry.clone(),
        context.shutdown.clone(),
    ));

    let normaliser = if settings.raw_topics {
        let consumer_config = config.kafka.consumer_config("abm-ingest", &settings.group_id);
        let inputs: Vec<String> = raw_topics().iter().map(|role| topics.name(*role).to_owned()).collect();
        let subscribe = move || -> anyhow::Result<StreamConsumer> {
            let consumer: StreamConsumer = consumer_config.create().context("creating the raw-topic consumer")?;
            let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
            consumer.subscribe(&names).with_context(|| format!("subscribing to {inputs:?}"))?;
            Ok(consumer)
        };
        let watch = abm::watch::StreamWatch::new(
            "raw-topic normaliser",
            Duration::from_millis(settings.stall_after_ms.max(2000)),
            true,
            metrics.raw_stalled_seconds.clone(),
            metrics.raw_heals.clone(),
            context.health.clone(),
        );
        let normaliser = Arc::new(raw::Normaliser {
            validation: settings.validation.clone(),
            tal: tal.clone(),
            sink: sink.clone(),
            metrics,
            kinds: raw::Normaliser::kinds_for(&topics, &raw_topics()),
        });
        let task = tokio::spawn(normaliser.run(subscribe, watch, context.shutdown.clone()));
        Some(supervise_normaliser(task, context.shutdown.clone()))
    } else {
        None
    };
    let stitcher = if settings.stitch.enabled {
        let stitch_topics = stitch::StitchTopics {
            identity: topics.name(TopicRole::Identity).to_owned(),
            graph: topics.name(TopicRole::IdentityGraph).to_owned(),
            engagement: topics.name(TopicRole::Engagement).to_owned(),
            unresolved: topics.name(TopicRole::Unresolved).to_owned(),
            rejected: topics.name(TopicRole::Rejected).to_owned(),
        };
        let eos = abm::eos::EosSettings {
            client_id: "abm-stitch".into(),
            group_id: settings.stitch.group_id.clone(),
            transactional_id: settings.stitch.instance_id.clone(),
            input_topic: stitch_topics.identity.clone(),
            commit_interval: Duration::from_millis(settings.stitch.commit_interval_ms),
            max_batch_events: 10_000,
            stall_after: Duration::from_millis(settings.stitch.stall_after_ms.max(2000)),
            compression: None,
            metrics: abm::eos::LoopMetrics::register(&context.registry, "ingest_stitch")
                .context("registering metrics")?,
        };
        let stitch_metrics = stitch::StitchMetrics::register(&context.registry).context("registering metrics")?;
        let processor = Arc::new(stitch::StitchProcessor::new(
            settings.stitch.clone(),
            tal,
            stitch_topics,
            config.kafka.clone(),
            stitch_metrics,
        ));
        config
            .kafka
            .check_changelog_partitions("abm-stitch-check", &eos.input_topic, topics.name(TopicRole::IdentityGraph))
            .await?;
        // A health of its own: the collector takes events while the stitcher restores or
        // rebalances (its loop still ends the process when it fails).
        let (kafka, shutdown) = (config.kafka.clone(), context.shutdown.clone());
        Some(tokio::spawn(abm::eos::run_on_thread(kafka, eos, processor, abm::ops::Health::default(), shutdown)))
    } else {
        None
    };
    context.health.set_ready();

    server.await.context("HTTP server task")?.context("HTTP server")?;
    if let Some(stitcher) = stitcher {
        stitcher.await.context("identity stitcher task")?.context("identity stitcher")?;
    }
    sink.flush(Duration::from_millis(settings.produce_timeout_ms));
    if let Some(normaliser) = normaliser {
        normaliser.await.context("raw-topic normaliser task")??;
    }
    Ok(())
}

/// Watches the raw-topic normaliser: one that fails or ends before shutdown (a panic) is never
/// silent; it stops ingest (non-zero) so the platform restarts it, and the raw records are
/// read again from the group's committed offsets.
fn supervise_normaliser(
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    shutdown: abm::CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let failure = match task.await {
            Ok(Ok(())) if shutdown.is_cancelled() => return Ok(()),
            Ok(Ok(())) => anyhow::anyhow!("the raw-topic normaliser ended unexpectedly"),
            Ok(Err(error)) => error.context("raw-topic normaliser"),
            Err(error) if error.is_panic() => anyhow::anyhow!("the raw-topic normaliser panicked"),
            Err(error) => anyhow::anyhow!("the raw-topic normaliser: {error}"),
        };
        tracing::error!("{failure:#}; stopping ingest");
        shutdown.cancel();
        Err(failure)
    })
}

/// `ingest import-tal`: validates the CSV, then writes every account and waits for Kafka.
pub async fn import_tal(config: Config, path: &std::path::Path, dry_run: bool) -> anyhow::Result<usize> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let now = abm::clock::now_ms();
    let accounts = match tal_import::parse(&text, now) {
        Ok(accounts) => accounts,
        Err(errors) => {
            for error in &errors {
                eprintln!("{}:{error}", path.display());
            }
            anyhow::bail!("{} bad row(s) in {}; nothing was imported", errors.len(), path.display());
        }
    };
    if dry_run {
        return Ok(accounts.len());
    }
    let topics = Topics::resolve(&config.topics);
    prepare_kafka(&config.kafka, &topics, "abm-ingest-import").await?;
    let producer: FutureProducer = config.kafka.producer_config("abm-ingest-import").create()?;
    let topic = topics.name(TopicRole::Accounts);
    abm::registry::prepare(&config.registry, &[Output::of(&topics, TopicRole::Accounts)], &[]).await?;
    let payloads = accounts
        .iter()
        .map(|account| Ok(abm_schemas::registry::frame_for(topic, &abm_schemas::encode(account)?)?.into_owned()))
        .collect::<Result<Vec<_>, abm_schemas::EncodeError>>()?;
    let mut deliveries = Vec::with_capacity(accounts.len());
    for (account, payload) in accounts.iter().zip(&payloads) {
        let record = rdkafka::producer::FutureRecord::to(topic).key(&account.account_id).payload(payload);
        deliveries.push(producer.send(record, Duration::from_secs(30)));
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery.map_err(|(error, _)| anyhow::anyhow!("writing to {topic}: {error}"))?;
    }
    Ok(accounts.len())
}
