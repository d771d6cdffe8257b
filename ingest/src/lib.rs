//! Ingest: the front door for trackers and integrations.
//!
//! Today (issue #2) the service is the runnable shell the collector and normaliser will live
//! in: it joins its consumer group on the four raw topics, checks that each record is JSON,
//! counts records by topic and outcome, and serves its HTTP port. The HTTP collector,
//! validation, account resolution and the rejected topic come with issue #4.

use abm::kafka::KafkaConfig;
use abm::ops::HttpConfig;
use abm::service::{ConsumingService, Context, ServiceConfig, prepare_kafka};
use abm::telemetry::LogConfig;
use abm::topics::{TopicOverrides, TopicRole, Topics};
use prometheus::{IntCounterVec, Opts};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

/// Ingest's HTTP port unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";

/// The raw topics ingest normalises.
pub const RAW_TOPICS: [TopicRole; 4] =
    [TopicRole::RawWebVisits, TopicRole::RawAdClicks, TopicRole::RawEmailEvents, TopicRole::RawDemoRequests];

/// Ingest's configuration (see the README's configuration reference).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub topics: TopicOverrides,
    pub ingest: Settings,
}

/// `[ingest]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Consumer group of the raw-topic normaliser (default `abm-ingest`).
    pub group_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { group_id: "abm-ingest".into() }
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// Runs ingest until `context.shutdown` is cancelled.
pub async fn run(config: Config, context: Context) -> anyhow::Result<()> {
    let topics = Topics::resolve(&config.topics);
    prepare_kafka(&config.kafka, &topics, "abm-ingest").await?;
    let records = IntCounterVec::new(
        Opts::new(
            "abm_ingest_raw_records_total",
            "Raw-topic records read, by topic and outcome (json, malformed_json).",
        ),
        &["topic", "outcome"],
    )?;
    context.registry.register(Box::new(records.clone()))?;

    let inputs: Vec<&str> = RAW_TOPICS.iter().map(|role| topics.name(*role)).collect();
    let service = ConsumingService {
        name: "abm-ingest",
        kafka: &config.kafka,
        http: &config.http,
        group_id: &config.ingest.group_id,
        inputs: &inputs,
        routes: axum::Router::new(),
    };
    service
        .run(&context, |message| {
            let is_json =
                message.payload().is_some_and(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).is_ok());
            let outcome = if is_json { "json" } else { "malformed_json" };
            records.with_label_values(&[message.topic(), outcome]).inc();
        })
        .await
}
