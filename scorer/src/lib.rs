//! The scorer: keeps a rolling engagement score per account and publishes crossings.
//!
//! Today (issue #2) the service is the runnable shell the scoring engine will live in: it
//! joins its consumer group on `abm.engagement`, decodes every event with the shared Avro
//! codec, counts it by kind, and serves its HTTP port. The engine, state, snapshots and query
//! API come with issue #3.

pub mod engine;

use abm::kafka::KafkaConfig;
use abm::ops::HttpConfig;
use abm::service::{ConsumingService, Context, ServiceConfig, prepare_kafka};
use abm::telemetry::LogConfig;
use abm::topics::{TopicOverrides, TopicRole, Topics};
use abm_schemas::EngagementEvent;
use anyhow::Context as _;
use prometheus::{IntCounterVec, Opts};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

/// The scorer's HTTP port unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8081";

/// The scorer's configuration (see the README's configuration reference).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub topics: TopicOverrides,
    pub scorer: Settings,
}

/// `[scorer]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Consumer group of the scorer instances (default `abm-scorer`).
    pub group_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            group_id: "abm-scorer".into(),
        }
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

struct Metrics {
    events: IntCounterVec,
    decode_errors: IntCounterVec,
}

impl Metrics {
    fn register(registry: &prometheus::Registry) -> anyhow::Result<Metrics> {
        let events = IntCounterVec::new(
            Opts::new(
                "abm_scorer_events_consumed_total",
                "Engagement events read and decoded, by kind.",
            ),
            &["kind"],
        )?;
        let decode_errors = IntCounterVec::new(
            Opts::new(
                "abm_scorer_decode_errors_total",
                "Input records that are not a decodable EngagementEvent, by topic.",
            ),
            &["topic"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(decode_errors.clone()))?;
        Ok(Metrics {
            events,
            decode_errors,
        })
    }
}

/// Runs the scorer until `context.shutdown` is cancelled.
pub async fn run(config: Config, context: Context) -> anyhow::Result<()> {
    let topics = Topics::resolve(&config.topics);
    prepare_kafka(&config.kafka, &topics, "abm-scorer").await?;
    let metrics = Metrics::register(&context.registry).context("registering metrics")?;

    let engagement = topics.name(TopicRole::Engagement);
    let service = ConsumingService {
        name: "abm-scorer",
        kafka: &config.kafka,
        http: &config.http,
        group_id: &config.scorer.group_id,
        inputs: &[engagement],
        routes: axum::Router::new(),
    };
    service.run(&context, |message| {
        match message.payload().map(abm_schemas::decode::<EngagementEvent>) {
            Some(Ok(event)) => metrics.events.with_label_values(&[event.kind.as_str()]).inc(),
            Some(Err(error)) => {
                metrics.decode_errors.with_label_values(&[message.topic()]).inc();
                tracing::warn!(%error, topic = message.topic(), offset = message.offset(), "undecodable input");
            }
            None => metrics.decode_errors.with_label_values(&[message.topic()]).inc(),
        }
    })
    .await
}
