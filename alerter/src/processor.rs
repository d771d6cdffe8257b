//! The alerter's processor for the exactly-once loop ([`abm::eos`]).
//!
//! Reads `abm.score-crossings` (read_committed), decides with the [`crate::policy`], and writes
//! each alert to `abm.sales-alerts` in the same partition number as its crossing (and to its
//! tier's topic, and as plain JSON to `abm.sales-alerts.json`, when configured), in the same
//! transaction as the input offsets. The alert
//! history of a newly assigned partition is rebuilt from that partition of `abm.sales-alerts`
//! before any of its crossings is handled, so cooldowns and deduplication survive restarts and
//! rebalances, and after kill -9 no alert id is published twice or lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use abm::eos::{Outbox, Processor, StagedCounters};
use abm::kafka::KafkaConfig;
use abm_schemas::{Account, CrossingKind, RejectReason, SalesAlert, ScoreCrossing, Tier};
use dashmap::DashMap;
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use crate::metrics::Metrics;
use crate::policy::{Decision, History, PolicyConfig, decide, sequence_of};

/// Topic names the processor reads and writes.
#[derive(Debug, Clone)]
pub struct AlertTopics {
    pub crossings: String,
    pub alerts: String,
    pub rejected: String,
    /// Optional extra topic per tier.
    pub by_tier: BTreeMap<Tier, String>,
    /// The JSON copy of each alert (`alerter.json_alerts`).
    pub json: Option<String>,
}

/// The TAL as read from `abm.accounts`.
pub type Tal = DashMap<String, Account>;

/// Alert histories of the accounts of one input partition.
type PartitionHistory = HashMap<(String, CrossingKind), History>;

#[derive(Debug)]
pub struct AlertProcessor {
    pub policy: PolicyConfig,
    pub tal: Arc<Tal>,
    pub topics: AlertTopics,
    pub metrics: Metrics,
    pub kafka: KafkaConfig,
    histories: DashMap<i32, PartitionHistory>,
    /// Counts of the open transaction's work, applied when it commits.
    staged: StagedCounters,
}

impl AlertProcessor {
    pub fn new(
        policy: PolicyConfig,
        tal: Arc<Tal>,
        topics: AlertTopics,
        metrics: Metrics,
        kafka: KafkaConfig,
    ) -> AlertProcessor {
        AlertProcessor {
            policy,
            tal,
            topics,
            metrics,
            kafka,
            histories: DashMap::new(),
            staged: StagedCounters::default(),
        }
    }
}

impl Processor for AlertProcessor {
    fn process(&self, message: &BorrowedMessage<'_>, out: &Outbox<'_>) -> anyhow::Result<()> {
        let crossing = match abm_schemas::decode::<ScoreCrossing>(message.payload().unwrap_or_default()) {
            Ok(crossing) => crossing,
            // The schema registry did not answer: the batch is aborted and read again.
            Err(error) if error.is_retryable() => return Err(anyhow::anyhow!("decoding a ScoreCrossing: {error}")),
            Err(error) => {
                self.staged.add(&self.metrics.suppressed.with_label_values(&["undecodable"]), 1);
                let text = format!("undecodable ScoreCrossing: {error}");
                return out.reject(&self.topics.rejected, message, RejectReason::Other, text, None);
            }
        };
        self.staged.add(&self.metrics.crossings.with_label_values(&[crossing.kind.as_str()]), 1);
        let account = self.tal.get(&crossing.account_id).map(|a| a.clone());
        let decision = {
            let mut histories = self.histories.entry(message.partition()).or_default();
            let history = histories.entry((crossing.account_id.clone(), crossing.kind)).or_default();
            decide(&self.policy, &crossing, account.as_ref(), history, abm::clock::now_ms())
        };
        match decision {
            Decision::Duplicate => self.staged.add(&self.metrics.suppressed.with_label_values(&["duplicate"]), 1),
            Decision::Cooldown => self.staged.add(&self.metrics.suppressed.with_label_values(&["cooldown"]), 1),
            Decision::Replayed => self.staged.add(&self.metrics.suppressed.with_label_values(&["replayed"]), 1),
            Decision::Alert(alert) => {
                let payload = abm_schemas::encode(alert.as_ref())?;
                out.send(&self.topics.alerts, &alert.account_id, &payload, Some(message.partition()))?;
                if let Some(topic) = self.topics.by_tier.get(&alert.tier) {
                    out.send(topic, &alert.account_id, &payload, None)?;
                }
                if let Some(topic) = &self.topics.json {
                    let json = serde_json::to_vec(alert.as_ref())?;
                    out.send(topic, &alert.account_id, &json, Some(message.partition()))?;
                }
                self.staged.add(&self.metrics.alerts.with_label_values(&[alert.kind.as_str(), alert.tier.as_str()]), 1);
            }
        }
        Ok(())
    }

    fn before_commit(&self, _out: &Outbox<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn restore(&self, partitions: &[i32]) -> anyhow::Result<()> {
        let mut rebuilt: BTreeMap<i32, PartitionHistory> = partitions.iter().map(|p| (*p, HashMap::new())).collect();
        abm::kafka::read_to_end(
            &self.kafka,
            "abm-alerter-restore",
            &self.topics.alerts,
            partitions,
            |partition, _, value| {
                let (Some(histories), Some(payload)) = (rebuilt.get_mut(&partition), value) else { return Ok(()) };
                let alert: SalesAlert = match abm_schemas::decode_patiently(payload, abm_schemas::REGISTRY_PATIENCE) {
                    Ok(alert) => alert,
                    // The registry did not answer: the restore fails (and is tried again), it
                    // does not go on without this alert's cooldown.
                    Err(error) if error.is_retryable() => {
                        return Err(anyhow::anyhow!("rebuilding the alert history of partition {partition}: {error}"));
                    }
                    // Counted and skipped: one bad record must not crash-loop the alerter.
                    Err(error) => {
                        self.metrics.history_skipped.inc();
                        tracing::error!(partition, %error, "undecodable SalesAlert in the alert history; skipped");
                        return Ok(());
                    }
                };
                let history = histories.entry((alert.account_id.clone(), alert.kind)).or_default();
                history.last_sequence = history.last_sequence.max(sequence_of(&alert.crossing_id).unwrap_or(0));
                history.last_alert_as_of = Some(history.last_alert_as_of.map_or(alert.as_of, |t| t.max(alert.as_of)));
                Ok(())
            },
        )?;
        let mut count = 0;
        for (partition, histories) in rebuilt {
            // Until librdkafka's statistics report it, the partition's lag is known to be 0+.
            self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set(0);
            count += histories.len();
            self.histories.insert(partition, histories);
        }
        tracing::info!(?partitions, histories = count, "alert history restored");
        Ok(())
    }

    fn revoke(&self, partitions: &[i32]) {
        for partition in partitions {
            self.histories.remove(partition);
            let _ = self.metrics.consumer_lag.remove_label_values(&[&partition.to_string()]);
        }
    }

    fn committed(&self, _duration: Duration) {
        self.staged.commit();
        self.metrics.transactions.inc();
    }

    fn aborted(&self, _reason: &str) {
        self.staged.discard();
        self.metrics.transactions_aborted.inc();
    }

    fn lag(&self, partition: i32, lag: i64) {
        self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set(lag);
    }
}
