//! The alerter: explained, deduplicated sales alerts for SDR tooling.
//!
//! - [`policy`] — the pure alert policy: duplicates, cooldowns, the alert and its next step.
//! - [`processor`] — crossings to alerts in the exactly-once loop ([`abm::eos`]).
//! - [`webhook`] — optional JSON and Slack webhooks with retries, circuit and parking.
//! - [`metrics`] — `abm_alerter_*`.

pub mod metrics;
pub mod policy;
pub mod processor;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use abm::eos::EosSettings;
use abm::kafka::KafkaConfig;
use abm::ops::{self, HttpConfig};
use abm::registry::{Output, RegistryConfig};
use abm::service::{Context, ServiceConfig, prepare_kafka};
use abm::tal::TalChange;
use abm::telemetry::LogConfig;
use abm::topics::{TopicOverrides, TopicRole, TopicSpec, Topics};
use abm_schemas::Tier;
use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::policy::PolicyConfig;
use crate::processor::{AlertProcessor, AlertTopics, Tal};
use crate::webhook::{Endpoint, StartFrom, WebhookConfig};

/// The alerter's HTTP port unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8082";

/// The alerter's configuration (see the README's configuration reference).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub topics: TopicOverrides,
    pub registry: RegistryConfig,
    pub alerter: Settings,
}

/// `[alerter]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Consumer group of the alerter instances (default `abm-alerter`).
    pub group_id: String,
    /// Stable id of this instance: its Kafka `transactional.id` (default `abm-alerter-<hostname>`).
    pub instance_id: String,
    /// Longest a transaction stays open while input keeps coming (default 250 ms); it commits
    /// as soon as the fetched input is drained.
    pub commit_interval_ms: u64,
    /// The loop and each webhook task heal (replace their Kafka consumer) when input waits for
    /// them but they made no progress for this long (default 20000 ms, at least 2000).
    pub stall_after_ms: u64,
    #[serde(flatten)]
    pub policy: PolicyConfig,
    /// Optional topic per tier that also receives that tier's alerts, e.g. `tier_1 = "abm.sales-alerts.tier-1"`.
    pub tier_topics: BTreeMap<Tier, String>,
    /// Each alert also as a plain JSON object to `abm.sales-alerts.json` (topic role
    /// `sales_alerts_json`), in the same transaction, for tools without Avro (default false).
    pub json_alerts: bool,
    /// `compression.type` of everything the alerter writes (alerts, tier topics, JSON alerts):
    /// `lz4` (default), `gzip`, `snappy`, `zstd` or `none`. Consumers without lz4 (n8n,
    /// kafkajs) need `gzip` or `none`.
    pub compression: String,
    /// Webhook endpoints (`[[alerter.webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            group_id: "abm-alerter".into(),
            instance_id: format!("abm-alerter-{}", abm::service::hostname()),
            commit_interval_ms: 250,
            stall_after_ms: 20_000,
            policy: PolicyConfig::default(),
            tier_topics: BTreeMap::new(),
            json_alerts: false,
            compression: "lz4".into(),
            webhooks: Vec::new(),
        }
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

fn webhook_consumer(
    kafka: &KafkaConfig,
    group: &str,
    start_from: StartFrom,
    eof: bool,
) -> anyhow::Result<StreamConsumer> {
    let mut config = kafka.consumer_config("abm-alerter-webhook", group);
    config.set("auto.offset.reset", if start_from == StartFrom::Earliest { "earliest" } else { "latest" });
    if eof {
        config.set("enable.partition.eof", "true");
    }
    Ok(config.create()?)
}

/// The values of `alerter.compression` (librdkafka's `compression.type`).
pub const COMPRESSIONS: [&str; 5] = ["lz4", "gzip", "snappy", "zstd", "none"];

/// Runs the alerter until `context.shutdown` is cancelled.
pub async fn run(config: Config, context: Context) -> anyhow::Result<()> {
    let settings = &config.alerter;
    settings.policy.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        COMPRESSIONS.contains(&settings.compression.as_str()),
        "alerter.compression = {:?}: use one of {}",
        settings.compression,
        COMPRESSIONS.join(", ")
    );
    let mut names = std::collections::BTreeSet::new();
    for hook in &settings.webhooks {
        anyhow::ensure!(names.insert(hook.name.as_str()), "alerter.webhooks: the name {:?} is used twice", hook.name);
    }
    let topics = Topics::resolve(&config.topics);
    prepare_kafka(&config.kafka, &topics, "abm-alerter").await?;
    if config.kafka.create_topics && !settings.tier_topics.is_empty() {
        let partitions = topics.spec(TopicRole::SalesAlerts).map_or(6, |s| s.partitions);
        let specs: Vec<TopicSpec> = settings
            .tier_topics
            .values()
            .map(|name| TopicSpec {
                role: TopicRole::SalesAlerts,
                name: name.clone(),
                partitions,
                compacted: false,
                retention_ms: topics.spec(TopicRole::SalesAlerts).and_then(|s| s.retention_ms),
                doc: String::new(),
            })
            .collect();
        config.kafka.ensure_topics("abm-alerter", &specs).await?;
    }
    let mut outputs = vec![Output::of(&topics, TopicRole::SalesAlerts), Output::of(&topics, TopicRole::Rejected)];
    outputs.extend(
        settings.tier_topics.values().map(|topic| Output { role: TopicRole::SalesAlerts, topic: topic.clone() }),
    );
    let inputs =
        [TopicRole::ScoreCrossings, TopicRole::Accounts, TopicRole::SalesAlerts].map(|role| Output::of(&topics, role));
    abm::registry::prepare(&config.registry, &outputs, &inputs).await?;
    let metrics = Metrics::register(&context.registry).context("registering metrics")?;

    let tal: Arc<Tal> = Arc::new(Tal::default());
    {
        let table = tal.clone();
        let tal_metrics = abm::tal::TalMetrics {
            accounts: metrics.tal_accounts.clone(),
            decode_errors: metrics.tal_decode_errors.clone(),
        };
        abm::tal::follow(
            &config.kafka,
            &topics,
            "abm-alerter-tal",
            context.shutdown.clone(),
            tal_metrics,
            move |change| {
                match change {
                    TalChange::Upsert(account) => {
                        table.insert(account.account_id.clone(), account);
                    }
                    TalChange::Remove(account_id) => {
                        table.remove(&account_id);
                    }
                }
                table.len()
            },
        )
        .await?;
    }

    let listener = ops::bind(config.http.listen).await?;
    tracing::info!(address = %listener.local_addr()?, webhooks = settings.webhooks.len(), "alerter listening");
    let app = ops::router(context.registry.clone(), context.health.clone(), axum::Router::new(), &config.http);
    let server = tokio::spawn(ops::serve(
        listener,
        app,
        config.http.clone(),
        context.registry.clone(),
        context.shutdown.clone(),
    ));

    // Webhooks: one task and consumer group per endpoint, off the Kafka path.
    let alerts_topic = topics.name(TopicRole::SalesAlerts).to_owned();
    let parked_topic = topics.name(TopicRole::ParkedAlerts).to_owned();
    let parker: FutureProducer = config.kafka.producer_config("abm-alerter-parker").create()?;
    let mut webhook_tasks = Vec::new();
    for hook in &settings.webhooks {
        let endpoint = Arc::new(Endpoint::new(hook.clone(), metrics.clone())?);
        let group = format!("{}-webhook-{}", settings.group_id, hook.name);
        let (kafka, topic, start_from) = (config.kafka.clone(), alerts_topic.clone(), hook.start_from);
        let subscribe = move || -> anyhow::Result<rdkafka::consumer::StreamConsumer> {
            let consumer = webhook_consumer(&kafka, &group, start_from, false)?;
            consumer.subscribe(&[&topic]).with_context(|| format!("subscribing to {topic}"))?;
            Ok(consumer)
        };
        let watch = abm::watch::StreamWatch::new(
            format!("webhook {}", hook.name),
            Duration::from_millis(settings.stall_after_ms.max(2000)),
            hook.start_from == StartFrom::Earliest,
            metrics.webhook_stalled_seconds.with_label_values(&[&hook.name]),
            metrics.webhook_heals.with_label_values(&[&hook.name]),
            context.health.clone(),
        );
        let task = tokio::spawn(webhook::run_endpoint(
            endpoint,
            subscribe,
            watch,
            parker.clone(),
            parked_topic.clone(),
            context.shutdown.clone(),
        ));
        webhook_tasks.push(supervise(hook.name.clone(), task, context.shutdown.clone()));
    }

    let alert_topics = AlertTopics {
        crossings: topics.name(TopicRole::ScoreCrossings).to_owned(),
        alerts: alerts_topic,
        rejected: topics.name(TopicRole::Rejected).to_owned(),
        by_tier: settings.tier_topics.clone(),
        json: settings.json_alerts.then(|| topics.name(TopicRole::SalesAlertsJson).to_owned()),
    };
    let eos = EosSettings {
        client_id: "abm-alerter".into(),
        group_id: settings.group_id.clone(),
        transactional_id: settings.instance_id.clone(),
        input_topic: alert_topics.crossings.clone(),
        commit_interval: Duration::from_millis(settings.commit_interval_ms),
        max_batch_events: 10_000,
        stall_after: Duration::from_millis(settings.stall_after_ms.max(2000)),
        compression: Some(settings.compression.clone()),
        metrics: abm::eos::LoopMetrics::register(&context.registry, "alerter").context("registering metrics")?,
    };
    let processor =
        Arc::new(AlertProcessor::new(settings.policy.clone(), tal, alert_topics, metrics, config.kafka.clone()));
    context.health.set_ready();
    let loop_result =
        abm::eos::run_on_thread(config.kafka.clone(), eos, processor, context.health.clone(), context.shutdown.clone())
            .await;
    context.health.set_stopping();
    let mut webhook_failure = None;
    for task in webhook_tasks {
        if let Ok(Some(failure)) = task.await {
            webhook_failure.get_or_insert(failure);
        }
    }
    server.await.context("HTTP server task")?.context("HTTP server")?;
    loop_result?;
    webhook_failure.map_or(Ok(()), |failure| Err(anyhow::anyhow!(failure)))
}

/// Watches a webhook delivery task: one that ends before shutdown (a panic) is never silent;
/// it ends the process (non-zero) so the platform restarts it, and its alerts are delivered
/// from the endpoint's committed offset.
fn supervise(
    endpoint: String,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    shutdown: abm::CancellationToken,
) -> tokio::task::JoinHandle<Option<String>> {
    tokio::spawn(async move {
        let outcome = task.await;
        if shutdown.is_cancelled() && matches!(outcome, Ok(Ok(()))) {
            return None;
        }
        let why = match outcome {
            Err(error) if error.is_panic() => "panicked".to_owned(),
            Err(error) => error.to_string(),
            Ok(Err(error)) => format!("{error:#}"),
            Ok(Ok(())) => "returned".to_owned(),
        };
        let failure = format!("the webhook delivery task of endpoint {endpoint:?} ended unexpectedly ({why})");
        tracing::error!("{failure}; stopping the alerter");
        shutdown.cancel();
        Some(failure)
    })
}

/// `alerter replay-parked --endpoint NAME`: delivers that endpoint's parked alerts once.
pub async fn replay_parked(config: Config, endpoint_name: &str) -> anyhow::Result<(usize, usize)> {
    let hook = config
        .alerter
        .webhooks
        .iter()
        .find(|hook| hook.name == endpoint_name)
        .ok_or_else(|| anyhow::anyhow!("no webhook named {endpoint_name:?} in alerter.webhooks"))?;
    let topics = Topics::resolve(&config.topics);
    config.kafka.check_reachable("abm-alerter-replay").await?;
    let metrics = Metrics::register(&prometheus::Registry::new())?;
    let endpoint = Endpoint::new(hook.clone(), metrics)?;
    let group = format!("{}-replay-{}", config.alerter.group_id, hook.name);
    let consumer = webhook_consumer(&config.kafka, &group, StartFrom::Earliest, true)?;
    consumer.subscribe(&[topics.name(TopicRole::ParkedAlerts)])?;
    webhook::replay_parked(&endpoint, consumer).await
}

/// `alerter tail`: prints alerts as they are published, one line each, until Ctrl-C.
pub async fn tail(config: Config, from_beginning: bool, shutdown: abm::CancellationToken) -> anyhow::Result<()> {
    use rdkafka::Message;
    let topics = Topics::resolve(&config.topics);
    config.kafka.check_reachable("abm-alerter-tail").await?;
    let group = format!("abm-alerter-tail-{}", std::process::id());
    let start = if from_beginning { StartFrom::Earliest } else { StartFrom::Latest };
    let consumer = webhook_consumer(&config.kafka, &group, start, false)?;
    consumer.subscribe(&[topics.name(TopicRole::SalesAlerts)])?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            received = consumer.recv() => match received {
                Ok(message) => match abm_schemas::decode::<abm_schemas::SalesAlert>(message.payload().unwrap_or_default()) {
                    Ok(alert) => println!("{}", policy::one_line(&alert)),
                    Err(error) => eprintln!("alerter: undecodable alert at offset {}: {error}", message.offset()),
                },
                Err(error) => tracing::warn!(%error, "tail consumer error"),
            },
        }
    }
}
