//! Webhook delivery of sales alerts: generic JSON or Slack incoming-webhook payloads.
//!
//! Each configured endpoint has its own task and its own consumer group on `abm.sales-alerts`
//! (read_committed), so a slow or dead endpoint never blocks the Kafka path or another
//! endpoint. A delivery is retried with exponential backoff and jitter (`backon`); an endpoint
//! that keeps failing opens its circuit (alerts are parked at once, without waiting) until a
//! trial delivery succeeds. Alerts that could not be delivered are written to the parked topic
//! (key = endpoint name) before their offset is stored: nothing is dropped, and
//! `alerter replay-parked --endpoint NAME` delivers them later, each once (the replay's own
//! consumer group remembers what was replayed). Delivery is at-least-once: receivers
//! deduplicate by `alert_id`, which is deterministic.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abm_schemas::{CrossingKind, SalesAlert};
use backon::{ExponentialBuilder, Retryable};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Payload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The `SalesAlert` as JSON, with `"type": "sales_alert"`.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` + `blocks`).
    Slack,
}

/// Where new endpoints start reading alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// Only alerts published after the endpoint was added (default).
    #[default]
    Latest,
    /// Every alert still in the topic.
    Earliest,
}

/// One `[[alerter.webhooks]]` entry. Its `Debug` leaves out the URL and the header values.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name (metrics label, parked-topic key, consumer group suffix).
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub format: Format,
    /// Per-request timeout (default 5000 ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after the first attempt (default 4).
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// First backoff delay; doubles with jitter up to 10 s (default 200 ms).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Consecutive failed deliveries that open the circuit (default 3).
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit parks alerts without trying (default 30000 ms).
    #[serde(default = "default_circuit_open_ms")]
    pub circuit_open_ms: u64,
    /// Extra request headers (e.g. an `Authorization` token).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub start_from: StartFrom,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &abm::service::REDACTED)
            .field("format", &self.format)
            .field("timeout_ms", &self.timeout_ms)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retries() -> usize {
    4
}
fn default_backoff_ms() -> u64 {
    200
}
fn default_circuit_failures() -> u32 {
    3
}
fn default_circuit_open_ms() -> u64 {
    30_000
}

/// The body posted for `alert` in `format`.
pub fn payload(format: Format, alert: &SalesAlert) -> serde_json::Value {
    match format {
        Format::Json => {
            let mut value = serde_json::to_value(alert).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert("type".into(), json!("sales_alert"));
            }
            value
        }
        Format::Slack => {
            let headline = match alert.kind {
                CrossingKind::HandRaiser => format!(":raising_hand: *{}* asked for a demo", alert.account_name),
                CrossingKind::Threshold => {
                    format!(
                        ":chart_with_upwards_trend: *{}* crossed {:.0} (score {:.0})",
                        alert.account_name, alert.threshold, alert.score
                    )
                }
            };
            let rules: Vec<String> = alert.top_rules.iter().map(|r| format!("{} {:+.1}", r.rule, r.points)).collect();
            let contacts: Vec<String> =
                alert.contacts.iter().map(|c| format!("{} ({})", c.contact_id, c.persona)).collect();
            let committee = alert.coverage.as_ref().map_or_else(
                || "-".to_owned(),
                |c| {
                    let missing = if c.missing.is_empty() {
                        String::new()
                    } else {
                        format!(" (missing: {})", c.missing.join(", "))
                    };
                    format!("{}/{} personas engaged{missing}", c.covered.len(), c.required.len())
                },
            );
            let detail = format!(
                "Tier: {} · Owner: {}\nWhy: {}\nContacts: {}\nCommittee: {committee}\nNext: {}",
                alert.tier.as_str(),
                alert.owner,
                if rules.is_empty() { "-".into() } else { rules.join(", ") },
                if contacts.is_empty() { "-".into() } else { contacts.join(", ") },
                alert.next_step
            );
            json!({
                "text": format!("{headline} ({})", alert.alert_id),
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": detail}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("alert {}", alert.alert_id)}]}
                ]
            })
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

#[derive(Debug, Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
}

/// A webhook endpoint with its client and circuit.
#[derive(Debug)]
pub struct Endpoint {
    pub config: WebhookConfig,
    client: reqwest::Client,
    circuit: Mutex<Circuit>,
    metrics: Metrics,
}

impl Endpoint {
    pub fn new(config: WebhookConfig, metrics: Metrics) -> anyhow::Result<Endpoint> {
        let client = reqwest::Client::builder().timeout(Duration::from_millis(config.timeout_ms)).build()?;
        metrics.init_webhook(&config.name);
        Ok(Endpoint { config, client, circuit: Mutex::new(Circuit::default()), metrics })
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn attempt(&self, body: &serde_json::Value) -> Result<(), AttemptError> {
        let mut request = self.client.post(&self.config.url).json(body);
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) if response.status().is_server_error() || response.status().as_u16() == 429 => {
                Err(AttemptError::Retryable(format!("HTTP {}", response.status())))
            }
            Ok(response) => Err(AttemptError::Permanent(format!("HTTP {}", response.status()))),
            Err(error) if error.is_timeout() => Err(AttemptError::Retryable("timed out".into())),
            // Without the URL: a webhook URL is a secret (Slack's carry their token), and this
            // text goes to logs and into parked alerts' headers.
            Err(error) => Err(AttemptError::Retryable(error.without_url().to_string())),
        }
    }

    /// Delivers with retries; `respect_circuit` is false for replays.
    pub async fn deliver(&self, alert: &SalesAlert, respect_circuit: bool) -> Result<(), String> {
        let name = self.config.name.as_str();
        if respect_circuit && self.circuit().open_until.is_some_and(|until| Instant::now() < until) {
            self.metrics.webhook.with_label_values(&[name, "circuit_open"]).inc();
            return Err("circuit open".into());
        }
        let body = payload(self.config.format, alert);
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.config.backoff_ms))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.config.max_retries)
            .with_jitter();
        let result = (|| self.attempt(&body))
            .retry(backoff)
            .when(|error| matches!(error, AttemptError::Retryable(_)))
            .notify(|error, wait| {
                self.metrics.webhook.with_label_values(&[name, "retry"]).inc();
                tracing::debug!(endpoint = name, %error, ?wait, "webhook attempt failed; retrying");
            })
            .await;
        let mut circuit = self.circuit();
        match result {
            Ok(()) => {
                *circuit = Circuit::default();
                self.metrics.webhook.with_label_values(&[name, "delivered"]).inc();
                self.metrics.webhook_latency.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(error) => {
                circuit.failures += 1;
                if circuit.failures >= self.config.circuit_failures {
                    circuit.open_until = Some(Instant::now() + Duration::from_millis(self.config.circuit_open_ms));
                    tracing::warn!(endpoint = name, failures = circuit.failures, "webhook circuit open");
                }
                self.metrics.webhook.with_label_values(&[name, "failed"]).inc();
                Err(error.to_string())
            }
        }
    }
}

/// Delivers every new alert to `endpoint` until `shutdown`, parking what it cannot deliver,
/// reading with consumers made by `subscribe`. The task is watched: a consumer that stops
/// handing out alerts while its partitions have some is replaced (see [`abm::watch`]); the
/// task fails when that happens too often or a consumer cannot be made.
pub async fn run_endpoint(
    endpoint: std::sync::Arc<Endpoint>,
    subscribe: impl Fn() -> anyhow::Result<StreamConsumer> + Send,
    mut watch: abm::watch::StreamWatch,
    parker: FutureProducer,
    parked_topic: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = endpoint.config.name.clone();
    let mut consumer = subscribe()?;
    let mut fault = abm::watch::fault_after(WEBHOOK_FAULT_ENV);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let mut heal = None;
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                heal = tokio::task::block_in_place(|| watch.check(&consumer, false));
                None
            }
            received = consumer.recv() => match received {
                Ok(message) => Some(message.detach()),
                Err(error) => {
                    tracing::warn!(endpoint = %name, %error, "webhook consumer error");
                    None
                }
            },
        };
        if let Some(why) = heal {
            watch.replacing(&why)?;
            // Every handled alert's offset is stored: commit them, then read on from there.
            // Blocking calls (a commit, leaving and joining the group): off the runtime.
            let old = consumer;
            consumer = tokio::task::block_in_place(|| {
                watch.commit_starts(&old);
                if let Err(error) = old.commit_consumer_state(CommitMode::Sync) {
                    tracing::warn!(endpoint = %name, %error, "committing webhook offsets before replacing the consumer");
                }
                drop(old);
                subscribe()
            })?;
            continue;
        }
        let Some(message) = received else { continue };
        watch.progressed();
        abm::watch::inject_fault(&mut fault, &consumer);
        let payload = message.payload().unwrap_or_default();
        let decoded = tokio::task::block_in_place(|| {
            abm_schemas::decode_patiently::<SalesAlert>(payload, abm_schemas::REGISTRY_PATIENCE)
        });
        let handled = match decoded {
            Ok(alert) => match endpoint.deliver(&alert, true).await {
                Ok(()) => true,
                Err(reason) => park_until_done(&parker, &parked_topic, payload, &reason, &endpoint, &shutdown).await,
            },
            Err(error) if error.is_retryable() => {
                // The offset is not stored: the alert is delivered after the restart.
                tracing::error!(endpoint = %name, %error, "the schema registry does not answer; the webhook task stops");
                return Err(anyhow::anyhow!("webhook {name}: {error}"));
            }
            Err(error) => {
                tracing::warn!(endpoint = %name, %error, "undecodable alert skipped by the webhook");
                true
            }
        };
        if !handled {
            // Not delivered and not parked before shutdown: the offset is not stored, so the
            // alert is delivered after the restart.
            break;
        }
        watch.progressed();
        if let Err(error) = consumer.store_offset(message.topic(), message.partition(), message.offset()) {
            tracing::warn!(endpoint = %name, %error, "cannot store webhook offset");
        }
    }
    let _ = tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync));
    Ok(())
}

/// Test-only fault injection: after this many alerts the endpoint's first consumer pauses its
/// partitions for good (a consumer that stops fetching), which the watch must heal.
const WEBHOOK_FAULT_ENV: &str = "ABMTEST_FAULT_WEBHOOK_STALL_AFTER_MESSAGES";

/// Parks an undelivered alert, retrying while Kafka does not take it (a broker outage) until it
/// does or `shutdown`; false when it was not parked.
async fn park_until_done(
    parker: &FutureProducer,
    topic: &str,
    payload: &[u8],
    reason: &str,
    endpoint: &Endpoint,
    shutdown: &CancellationToken,
) -> bool {
    let mut pause = Duration::from_millis(500);
    loop {
        if park(parker, topic, &endpoint.config.name, payload, reason, &endpoint.metrics).await {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

async fn park(
    parker: &FutureProducer,
    topic: &str,
    endpoint: &str,
    payload: &[u8],
    reason: &str,
    metrics: &Metrics,
) -> bool {
    let headers =
        rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header { key: "reason", value: Some(reason) });
    let record = FutureRecord::to(topic).key(endpoint).payload(payload).headers(headers);
    match parker.send(record, Duration::from_secs(30)).await {
        Ok(_) => {
            metrics.webhook.with_label_values(&[endpoint, "parked"]).inc();
            tracing::warn!(endpoint, reason, "alert parked for replay");
            true
        }
        Err((error, _)) => {
            tracing::error!(endpoint, %error, "parking failed");
            false
        }
    }
}

/// Delivers the parked alerts of `endpoint` that no earlier replay delivered. Stops at the
/// first alert that still cannot be delivered (it stays parked, with everything after it).
pub async fn replay_parked(endpoint: &Endpoint, consumer: StreamConsumer) -> anyhow::Result<(usize, usize)> {
    let name = endpoint.config.name.as_str();
    let mut at_end = std::collections::BTreeSet::new();
    let (mut delivered, mut skipped) = (0, 0);
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(message)) => {
                at_end.remove(&message.partition());
                if message.key() == Some(name.as_bytes()) {
                    let alert: SalesAlert = abm_schemas::decode(message.payload().unwrap_or_default())?;
                    endpoint.deliver(&alert, false).await.map_err(|reason| {
                        anyhow::anyhow!("alert {} still cannot be delivered to {name}: {reason}", alert.alert_id)
                    })?;
                    delivered += 1;
                } else {
                    skipped += 1;
                }
                consumer.store_offset_from_message(&message)?;
                consumer.commit_consumer_state(CommitMode::Sync)?;
            }
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Ok(Err(error)) => tracing::warn!(%error, "replay consumer error"),
            Err(_) => {}
        }
        let assigned = consumer.assignment()?.count();
        if assigned > 0 && at_end.len() >= assigned {
            return Ok((delivered, skipped));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the replay did not reach the end of the parked topic"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abm_schemas::{EngagedContact, RuleContribution, Tier};

    fn alert() -> SalesAlert {
        SalesAlert {
            alert_id: "acme:hand_raiser:2".into(),
            crossing_id: "acme:hand_raiser:2".into(),
            account_id: "acme".into(),
            account_name: "Acme".into(),
            tier: Tier::Tier1,
            owner: "jo@v.example".into(),
            kind: CrossingKind::HandRaiser,
            score: 120.0,
            threshold: 50.0,
            as_of: 0,
            top_rules: vec![RuleContribution { rule: "demo_request".into(), points: 75.0 }],
            contacts: vec![EngagedContact {
                contact_id: "c1".into(),
                persona: "champion".into(),
                title: None,
                last_engaged_at: 0,
            }],
            recent_events: vec![],
            next_step: "Call within the hour".into(),
            coverage: Some(abm_schemas::CommitteeCoverage {
                required: vec!["economic_buyer".into(), "champion".into()],
                covered: vec!["champion".into()],
                missing: vec!["economic_buyer".into()],
                ratio: 0.5,
            }),
            model_version: Some("0123456789abcdef".into()),
        }
    }

    #[test]
    fn json_and_slack_payloads_carry_the_alert() {
        let json = payload(Format::Json, &alert());
        assert_eq!(json["type"], "sales_alert");
        assert_eq!(json["alert_id"], "acme:hand_raiser:2");
        assert_eq!(json["owner"], "jo@v.example");
        assert_eq!(json["top_rules"][0]["rule"], "demo_request");
        let slack = payload(Format::Slack, &alert());
        let text = slack["text"].as_str().expect("text");
        assert!(text.contains("*Acme* asked for a demo") && text.contains("acme:hand_raiser:2"), "{text}");
        let detail = slack["blocks"][1]["text"]["text"].as_str().expect("detail block");
        assert_eq!(json["coverage"]["missing"][0], "economic_buyer");
        for needle in [
            "tier_1",
            "jo@v.example",
            "demo_request +75.0",
            "c1 (champion)",
            "Committee: 1/2 personas engaged (missing: economic_buyer)",
            "Call within the hour",
        ] {
            assert!(detail.contains(needle), "{needle} in {detail}");
        }
    }
}
