//! The alerter's metrics (`abm_alerter_*`; labels are bounded: kinds, tiers, reasons and
//! configured webhook names).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub crossings: IntCounterVec,
    pub alerts: IntCounterVec,
    pub suppressed: IntCounterVec,
    pub webhook: IntCounterVec,
    pub webhook_latency: HistogramVec,
    pub webhook_stalled_seconds: prometheus::GaugeVec,
    pub webhook_heals: IntCounterVec,
    pub transactions: IntCounter,
    pub transactions_aborted: IntCounter,
    pub history_skipped: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub tal_accounts: IntGauge,
    pub tal_decode_errors: IntCounter,
}

impl Metrics {
    /// Starts the delivery counters of a configured webhook at 0.
    pub fn init_webhook(&self, endpoint: &str) {
        for outcome in ["delivered", "retry", "failed", "circuit_open", "parked"] {
            self.webhook.with_label_values(&[endpoint, outcome]);
        }
        self.webhook_stalled_seconds.with_label_values(&[endpoint]);
        self.webhook_heals.with_label_values(&[endpoint]);
    }

    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let metrics = Metrics {
            crossings: IntCounterVec::new(
                Opts::new("abm_alerter_crossings_total", "Score crossings read, by kind."),
                &["kind"],
            )?,
            alerts: IntCounterVec::new(
                Opts::new("abm_alerter_alerts_total", "Sales alerts published, by kind and tier."),
                &["kind", "tier"],
            )?,
            suppressed: IntCounterVec::new(
                Opts::new(
                    "abm_alerter_suppressed_total",
                    "Crossings that gave no alert, by reason (cooldown, duplicate, replayed: found by a re-score and older than the cooldown, undecodable).",
                ),
                &["reason"],
            )?,
            webhook: IntCounterVec::new(
                Opts::new(
                    "abm_alerter_webhook_deliveries_total",
                    "Webhook delivery events by endpoint and outcome (delivered, retry, failed, circuit_open, parked).",
                ),
                &["endpoint", "outcome"],
            )?,
            webhook_latency: HistogramVec::new(
                HistogramOpts::new(
                    "abm_alerter_webhook_latency_seconds",
                    "Time to deliver an alert to a webhook, retries included.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["endpoint"],
            )?,
            webhook_stalled_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "abm_alerter_webhook_stalled_seconds",
                    "Seconds a webhook delivery task has had alerts waiting without taking any (0 while it progresses or has nothing to do); /readyz is 503 from half of alerter.stall_after_ms.",
                ),
                &["endpoint"],
            )?,
            webhook_heals: IntCounterVec::new(
                Opts::new(
                    "abm_alerter_webhook_heals_total",
                    "Times a webhook delivery task's alerts waited alerter.stall_after_ms untaken and its Kafka consumer was replaced.",
                ),
                &["endpoint"],
            )?,
            transactions: IntCounter::new("abm_alerter_transactions_total", "Transactions committed.")?,
            transactions_aborted: IntCounter::new(
                "abm_alerter_transactions_aborted_total",
                "Transactions aborted (a broker fault, a lost assignment), their partitions rewound to the last commit and done again.",
            )?,
            history_skipped: IntCounter::new(
                "abm_alerter_history_skipped_total",
                "abm.sales-alerts records that did not decode while rebuilding the alert history, skipped.",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new("abm_alerter_consumer_lag", "Messages behind the end of each assigned crossings partition."),
                &["partition"],
            )?,
            tal_accounts: IntGauge::new("abm_alerter_tal_accounts", "Accounts on the TAL as read from abm.accounts.")?,
            tal_decode_errors: IntCounter::new(
                "abm_alerter_tal_decode_errors_total",
                "abm.accounts records that did not decode.",
            )?,
        };
        // Every bounded label value starts at 0, so rates and alert rules see the series at once.
        for kind in ["threshold", "hand_raiser"] {
            metrics.crossings.with_label_values(&[kind]);
            for tier in ["tier_1", "tier_2", "tier_3", "untiered"] {
                metrics.alerts.with_label_values(&[kind, tier]);
            }
        }
        for reason in ["cooldown", "duplicate", "replayed", "undecodable"] {
            metrics.suppressed.with_label_values(&[reason]);
        }
        registry.register(Box::new(metrics.crossings.clone()))?;
        registry.register(Box::new(metrics.alerts.clone()))?;
        registry.register(Box::new(metrics.suppressed.clone()))?;
        registry.register(Box::new(metrics.webhook.clone()))?;
        registry.register(Box::new(metrics.webhook_latency.clone()))?;
        registry.register(Box::new(metrics.webhook_stalled_seconds.clone()))?;
        registry.register(Box::new(metrics.webhook_heals.clone()))?;
        registry.register(Box::new(metrics.transactions.clone()))?;
        registry.register(Box::new(metrics.transactions_aborted.clone()))?;
        registry.register(Box::new(metrics.history_skipped.clone()))?;
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        registry.register(Box::new(metrics.tal_accounts.clone()))?;
        registry.register(Box::new(metrics.tal_decode_errors.clone()))?;
        Ok(metrics)
    }
}
