//! Ingest's metrics (`abm_ingest_*`). Conservation, per transport (`http`, `kafka`):
//! `received = accepted + rejected` and `accepted = engaged + unresolved`. Events of an HTTP
//! batch answered 429/503 were not received (nothing of it is acknowledged; the sender
//! retries): they count in `abm_ingest_events_deferred_total`.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::pipeline::{Destination, Prepared};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub received: IntCounterVec,
    pub accepted: IntCounterVec,
    pub rejected: IntCounterVec,
    pub deferred: IntCounterVec,
    pub batch_size: Histogram,
    pub produce_latency: Histogram,
    pub queue_depth: IntGauge,
    pub tal_accounts: IntGauge,
    pub tal_domains: IntGauge,
    pub tal_decode_errors: prometheus::IntCounter,
    pub rate_limited: IntCounterVec,
    pub raw_stalled_seconds: prometheus::Gauge,
    pub raw_heals: prometheus::IntCounter,
    pub segment_messages: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let metrics = Metrics {
            requests: IntCounterVec::new(
                Opts::new("abm_ingest_requests_total", "HTTP requests to /v1/events, by HTTP status code."),
                &["code"],
            )?,
            received: IntCounterVec::new(
                Opts::new("abm_ingest_events_received_total", "Events received and answered for, by transport."),
                &["transport"],
            )?,
            accepted: IntCounterVec::new(
                Opts::new(
                    "abm_ingest_events_accepted_total",
                    "Valid events written to Kafka, by transport and destination: engaged (abm.engagement), unresolved (abm.unresolved), pending (abm.identity: a Segment visitor's event waiting for its identity).",
                ),
                &["transport", "destination"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "abm_ingest_events_rejected_total",
                    "Events refused and kept in abm.rejected, by transport and reason.",
                ),
                &["transport", "reason"],
            )?,
            deferred: IntCounterVec::new(
                Opts::new(
                    "abm_ingest_events_deferred_total",
                    "Events of batches answered 429/503 (nothing acknowledged; the sender retries), by transport.",
                ),
                &["transport"],
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("abm_ingest_batch_events", "Events per HTTP batch or raw record.")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
            )?,
            produce_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "abm_ingest_produce_latency_seconds",
                    "From producing a batch's records to the last acknowledgement.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            queue_depth: IntGauge::new(
                "abm_ingest_kafka_queue_depth",
                "Messages queued or in flight in the Kafka producer.",
            )?,
            tal_accounts: IntGauge::new("abm_ingest_tal_accounts", "Accounts on the TAL as read from abm.accounts.")?,
            tal_domains: IntGauge::new("abm_ingest_tal_domains", "Domains that resolve to a TAL account.")?,
            tal_decode_errors: prometheus::IntCounter::new(
                "abm_ingest_tal_decode_errors_total",
                "abm.accounts records that did not decode.",
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "abm_ingest_rate_limited_total",
                    "Requests of a browser key answered 429 (its rate limit per key or per client address), by key name.",
                ),
                &["key"],
            )?,
            raw_stalled_seconds: prometheus::Gauge::new(
                "abm_ingest_raw_loop_stalled_seconds",
                "Seconds the raw-topic normaliser has had input waiting without taking any (0 while it progresses or has nothing to do); /readyz is 503 from half of ingest.stall_after_ms.",
            )?,
            raw_heals: prometheus::IntCounter::new(
                "abm_ingest_raw_loop_heals_total",
                "Times the raw-topic normaliser's input waited ingest.stall_after_ms untaken and its Kafka consumer was replaced.",
            )?,
            segment_messages: IntCounterVec::new(
                Opts::new(
                    "abm_ingest_segment_messages_total",
                    "Segment/RudderStack messages received, by type (track, page, screen, identify, group, alias, other) and what they became: event (counted again in abm_ingest_events_*), identity (to abm.identity), ignored (a track name mapped to no kind), invalid (kept in abm.rejected).",
                ),
                &["type", "outcome"],
            )?,
        };
        // Every bounded label value starts at 0, so rates and alert rules see the series at once.
        for transport in ["http", "kafka"] {
            metrics.received.with_label_values(&[transport]);
            metrics.deferred.with_label_values(&[transport]);
            for destination in ["engaged", "unresolved", "pending"] {
                metrics.accepted.with_label_values(&[transport, destination]);
            }
            for reason in crate::validate::REASONS {
                metrics.rejected.with_label_values(&[transport, crate::validate::reason_code(reason)]);
            }
        }
        for code in ["200", "400", "401", "413", "429", "503"] {
            metrics.requests.with_label_values(&[code]);
        }
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.received.clone()))?;
        registry.register(Box::new(metrics.accepted.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.deferred.clone()))?;
        registry.register(Box::new(metrics.batch_size.clone()))?;
        registry.register(Box::new(metrics.produce_latency.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.tal_accounts.clone()))?;
        registry.register(Box::new(metrics.tal_domains.clone()))?;
        registry.register(Box::new(metrics.rate_limited.clone()))?;
        registry.register(Box::new(metrics.raw_stalled_seconds.clone()))?;
        registry.register(Box::new(metrics.raw_heals.clone()))?;
        registry.register(Box::new(metrics.tal_decode_errors.clone()))?;
        registry.register(Box::new(metrics.segment_messages.clone()))?;
        Ok(metrics)
    }

    /// Counts a batch whose records are all durable.
    pub fn count_written(&self, transport: &str, prepared: &Prepared) {
        self.received.with_label_values(&[transport]).inc_by(prepared.results.len() as u64);
        for destination in [Destination::Engaged, Destination::Unresolved, Destination::Pending] {
            let n = prepared.count(destination) as u64;
            if n > 0 {
                self.accepted.with_label_values(&[transport, destination.as_str()]).inc_by(n);
            }
        }
        for reason in prepared.rejected() {
            self.rejected.with_label_values(&[transport, reason]).inc();
        }
    }
}
