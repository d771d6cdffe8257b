//! The scorer's metrics (names `abm_scorer_*`; labels are bounded sets).

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub events_applied: IntCounterVec,
    pub duplicates: IntCounter,
    pub rejected: IntCounterVec,
    pub accounts: IntGauge,
    pub crossings: IntCounterVec,
    pub journey_transitions: IntCounterVec,
    pub commit_duration: Histogram,
    pub snapshot_age: Gauge,
    pub transactions: IntCounter,
    pub transactions_aborted: IntCounter,
    pub restore_skipped: IntCounter,
    pub state_records: IntCounter,
    pub state_bytes: IntCounter,
    pub state_trimmed: IntCounterVec,
    pub state_oversized: IntCounter,
    pub split_accounts: IntGauge,
    pub restore_duration: Histogram,
    pub restored_accounts: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub apply_latency: Histogram,
    pub tal_accounts: IntGauge,
    pub tal_decode_errors: IntCounter,
    /// Records of abm.account-program and abm.sales-alerts that did not decode, by topic role.
    pub program_decode_errors: IntCounterVec,
    pub leaderboard_examined: Histogram,
    /// Queries sent to other instances, by outcome (answered, unavailable, unanswered).
    pub queries_forwarded: IntCounterVec,
    /// Events whose key is not in the partition `directory::partition_of` gives it.
    pub misplaced_events: IntCounter,
    /// Partitions held here, by state (ready, restoring).
    pub partitions_held: IntGaugeVec,
    /// Partitions held here that are being re-scored under the configured model.
    pub rescore_partitions: IntGauge,
    /// Events the re-scores applied, and offsets they are still behind the live loop.
    pub rescore_events: IntCounter,
    pub rescore_behind: IntGauge,
    /// Partitions switched to the configured model, and the re-scores' crossings by outcome.
    pub rescore_switches: IntCounter,
    pub rescore_crossings: IntCounterVec,
    /// 1 for the configured model's version.
    pub model: IntGaugeVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let metrics = Metrics {
            events_applied: IntCounterVec::new(
                Opts::new("abm_scorer_events_applied_total", "Engagement events applied to account state, by kind."),
                &["kind"],
            )?,
            duplicates: IntCounter::new(
                "abm_scorer_duplicates_total",
                "Engagement events ignored because their event_id was already applied to the account.",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "abm_scorer_rejected_total",
                    "Input records the scorer could not apply (kept in abm.rejected), by reason.",
                ),
                &["reason"],
            )?,
            accounts: IntGauge::new("abm_scorer_accounts", "Accounts held in memory by this instance.")?,
            crossings: IntCounterVec::new(
                Opts::new("abm_scorer_crossings_total", "Crossings emitted, by kind and tier."),
                &["kind", "tier"],
            )?,
            journey_transitions: IntCounterVec::new(
                Opts::new(
                    "abm_scorer_journey_transitions_total",
                    "Journey transitions written to abm.journey, by the stage entered and tier.",
                ),
                &["to", "tier"],
            )?,
            commit_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "abm_scorer_snapshot_duration_seconds",
                    "Time to commit one transaction: changed account states, scores, crossings and input offsets.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            snapshot_age: Gauge::new(
                "abm_scorer_snapshot_age_seconds",
                "Age of the oldest state change not yet committed (snapshotted); 0 when everything is durable.",
            )?,
            transactions: IntCounter::new("abm_scorer_transactions_total", "Transactions committed.")?,
            transactions_aborted: IntCounter::new(
                "abm_scorer_transactions_aborted_total",
                "Transactions aborted (a broker fault, a lost assignment), their partitions rewound to the last commit and done again.",
            )?,
            restore_skipped: IntCounter::new(
                "abm_scorer_restore_skipped_total",
                "abm.scorer.state records that did not decode during a restore, skipped (the account restarts from its next good record, or empty).",
            )?,
            state_records: IntCounter::new(
                "abm_scorer_state_records_total",
                "Account states written to the changelog.",
            )?,
            state_bytes: IntCounter::new(
                "abm_scorer_state_bytes_total",
                "Bytes of account states written to the changelog (record values).",
            )?,
            state_trimmed: IntCounterVec::new(
                Opts::new(
                    "abm_scorer_state_trimmed_total",
                    "Entries an account's state bounds dropped (not what aged out of a window), by structure: contacts, window_events, cap_counters, seen_ids, recent_events.",
                ),
                &["structure"],
            )?,
            split_accounts: IntGauge::new(
                "abm_scorer_split_accounts",
                "Accounts whose state is written split into a head and content-addressed chunks (hot accounts: more than 256 window, cap and seen entries).",
            )?,
            state_oversized: IntCounter::new(
                "abm_scorer_state_oversized_total",
                "Account states over scoring.max_state_bytes even after shedding detail: not written to the changelog, kept in abm.rejected (reason oversized).",
            )?,
            restore_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "abm_scorer_restore_duration_seconds",
                    "Time to restore one assigned partition from the changelog.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            )?,
            restored_accounts: IntCounter::new(
                "abm_scorer_restored_accounts_total",
                "Accounts restored from the changelog.",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "abm_scorer_consumer_lag",
                    "Messages behind the end of each assigned abm.engagement partition.",
                ),
                &["partition"],
            )?,
            apply_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "abm_scorer_apply_latency_seconds",
                    "From ingest's receipt of an event (received_at) to its application to the score.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0]),
            )?,
            tal_accounts: IntGauge::new("abm_scorer_tal_accounts", "Accounts on the TAL as read from abm.accounts.")?,
            tal_decode_errors: IntCounter::new(
                "abm_scorer_tal_decode_errors_total",
                "abm.accounts records that did not decode.",
            )?,
            program_decode_errors: IntCounterVec::new(
                Opts::new(
                    "abm_scorer_program_decode_errors_total",
                    "Records of abm.account-program (topic=\"account_program\") and abm.sales-alerts (topic=\"sales_alerts\") that did not decode: left out of the program metrics.",
                ),
                &["topic"],
            )?,
            leaderboard_examined: Histogram::with_opts(
                HistogramOpts::new(
                    "abm_scorer_leaderboard_examined_accounts",
                    "Accounts a leaderboard request looked at (it walks the ranking from the top until no account below can enter).",
                )
                .buckets(vec![1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 100000.0, 1000000.0]),
            )?,
            queries_forwarded: IntCounterVec::new(
                Opts::new(
                    "abm_scorer_queries_forwarded_total",
                    "Queries this instance sent to another (an account held there, a leaderboard's part), by outcome: answered (200, 400, 401, 404), unavailable (the other said 503), unanswered (no answer in scorer.forward_timeout_ms, or not one)."
                ),
                &["outcome"],
            )?,
            misplaced_events: IntCounter::new(
                "abm_scorer_misplaced_events_total",
                "Engagement events found in another partition than CRC-32(account_id) mod partitions (librdkafka's default partitioner): a producer with another partitioner writes to abm.engagement, and queries for those accounts are routed to the wrong instance. Should stay 0.",
            )?,
            partitions_held: IntGaugeVec::new(
                Opts::new("abm_scorer_partitions_held", "abm.engagement partitions held by this instance, by state: ready (restored, answered here) or restoring."),
                &["state"],
            )?,
            rescore_partitions: IntGauge::new(
                "abm_scorer_rescore_partitions",
                "Partitions held here whose state was built by another model than the configured one: served by that model while they are re-scored from abm.engagement under the configured one (README, \"Changing the model\").",
            )?,
            rescore_events: IntCounter::new(
                "abm_scorer_rescore_events_total",
                "Events of abm.engagement applied by the re-scores (each once per re-score).",
            )?,
            rescore_behind: IntGauge::new(
                "abm_scorer_rescore_behind_offsets",
                "Offsets of abm.engagement the re-scores still have to apply before they catch up with the live loop, over the partitions re-scored here.",
            )?,
            rescore_switches: IntCounter::new(
                "abm_scorer_rescore_switches_total",
                "Partitions switched to the configured model (their re-scored states written in one transaction).",
            )?,
            rescore_crossings: IntCounterVec::new(
                Opts::new(
                    "abm_scorer_rescore_crossings_total",
                    "Crossings the re-scores found, by outcome: sent (to abm.score-crossings, marked replayed, at the switch: within scorer.replay_window_hours of now) or recorded (older: counted in the state's sequences only).",
                ),
                &["outcome"],
            )?,
            model: IntGaugeVec::new(
                Opts::new("abm_scorer_model_info", "The configured scoring model's version (the value is 1)."),
                &["version"],
            )?,
        };
        for outcome in ["sent", "recorded"] {
            metrics.rescore_crossings.with_label_values(&[outcome]);
        }
        for outcome in ["answered", "unavailable", "unanswered"] {
            metrics.queries_forwarded.with_label_values(&[outcome]);
        }
        for state in ["ready", "restoring"] {
            metrics.partitions_held.with_label_values(&[state]);
        }
        // Every bounded label value starts at 0, so rates and alert rules see the series at once.
        for reason in ["undecodable", "missing_field"] {
            metrics.rejected.with_label_values(&[reason]);
        }
        for structure in crate::engine::Trimmed::default().by_structure().map(|(name, _)| name) {
            metrics.state_trimmed.with_label_values(&[structure]);
        }
        for stage in abm_schemas::JourneyStage::ALL.into_iter().skip(1) {
            for tier in abm_schemas::Tier::ALL {
                metrics.journey_transitions.with_label_values(&[stage.as_str(), tier.as_str()]);
            }
        }
        for kind in ["threshold", "hand_raiser"] {
            for tier in ["tier_1", "tier_2", "tier_3", "untiered"] {
                metrics.crossings.with_label_values(&[kind, tier]);
            }
        }
        registry.register(Box::new(metrics.events_applied.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.accounts.clone()))?;
        registry.register(Box::new(metrics.crossings.clone()))?;
        registry.register(Box::new(metrics.journey_transitions.clone()))?;
        registry.register(Box::new(metrics.commit_duration.clone()))?;
        registry.register(Box::new(metrics.snapshot_age.clone()))?;
        registry.register(Box::new(metrics.transactions.clone()))?;
        registry.register(Box::new(metrics.transactions_aborted.clone()))?;
        registry.register(Box::new(metrics.restore_skipped.clone()))?;
        registry.register(Box::new(metrics.state_records.clone()))?;
        registry.register(Box::new(metrics.state_bytes.clone()))?;
        registry.register(Box::new(metrics.state_trimmed.clone()))?;
        registry.register(Box::new(metrics.state_oversized.clone()))?;
        registry.register(Box::new(metrics.split_accounts.clone()))?;
        registry.register(Box::new(metrics.restore_duration.clone()))?;
        registry.register(Box::new(metrics.restored_accounts.clone()))?;
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        registry.register(Box::new(metrics.apply_latency.clone()))?;
        registry.register(Box::new(metrics.tal_accounts.clone()))?;
        registry.register(Box::new(metrics.tal_decode_errors.clone()))?;
        registry.register(Box::new(metrics.program_decode_errors.clone()))?;
        registry.register(Box::new(metrics.leaderboard_examined.clone()))?;
        registry.register(Box::new(metrics.queries_forwarded.clone()))?;
        registry.register(Box::new(metrics.misplaced_events.clone()))?;
        registry.register(Box::new(metrics.partitions_held.clone()))?;
        registry.register(Box::new(metrics.rescore_partitions.clone()))?;
        registry.register(Box::new(metrics.rescore_events.clone()))?;
        registry.register(Box::new(metrics.rescore_behind.clone()))?;
        registry.register(Box::new(metrics.rescore_switches.clone()))?;
        registry.register(Box::new(metrics.rescore_crossings.clone()))?;
        registry.register(Box::new(metrics.model.clone()))?;
        Ok(metrics)
    }
}
