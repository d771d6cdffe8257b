//! The alerter: turns score crossings into explained, deduplicated sales alerts.
//!
//! Today (issue #2) the service is the runnable shell the alert policy will live in: it joins
//! its consumer group on `abm.score-crossings` (read_committed), decodes every crossing with
//! the shared Avro codec, counts it by kind, and serves its HTTP port. Alerts, cooldowns and
//! webhooks come with issue #5.

use abm::kafka::KafkaConfig;
use abm::ops::HttpConfig;
use abm::service::{ConsumingService, Context, ServiceConfig, prepare_kafka};
use abm::telemetry::LogConfig;
use abm::topics::{TopicOverrides, TopicRole, Topics};
use abm_schemas::ScoreCrossing;
use prometheus::{IntCounterVec, Opts};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

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
    pub alerter: Settings,
}

/// `[alerter]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Consumer group of the alerter instances (default `abm-alerter`).
    pub group_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { group_id: "abm-alerter".into() }
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// Runs the alerter until `context.shutdown` is cancelled.
pub async fn run(config: Config, context: Context) -> anyhow::Result<()> {
    let topics = Topics::resolve(&config.topics);
    prepare_kafka(&config.kafka, &topics, "abm-alerter").await?;
    let crossings_in = IntCounterVec::new(
        Opts::new("abm_alerter_crossings_consumed_total", "Score crossings read and decoded, by kind."),
        &["kind"],
    )?;
    let decode_errors = IntCounterVec::new(
        Opts::new("abm_alerter_decode_errors_total", "Input records that are not a decodable ScoreCrossing, by topic."),
        &["topic"],
    )?;
    context.registry.register(Box::new(crossings_in.clone()))?;
    context.registry.register(Box::new(decode_errors.clone()))?;

    let crossings = topics.name(TopicRole::ScoreCrossings);
    let service = ConsumingService {
        name: "abm-alerter",
        kafka: &config.kafka,
        http: &config.http,
        group_id: &config.alerter.group_id,
        inputs: &[crossings],
        routes: axum::Router::new(),
    };
    service
        .run(&context, |message| match message.payload().map(abm_schemas::decode::<ScoreCrossing>) {
            Some(Ok(crossing)) => crossings_in.with_label_values(&[crossing.kind.as_str()]).inc(),
            Some(Err(error)) => {
                decode_errors.with_label_values(&[message.topic()]).inc();
                tracing::warn!(%error, topic = message.topic(), offset = message.offset(), "undecodable input");
            }
            None => decode_errors.with_label_values(&[message.topic()]).inc(),
        })
        .await
}
