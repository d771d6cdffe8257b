//! The exactly-once processing loop.
//!
//! One thread polls `abm.engagement` in the scorer's consumer group and applies each event to
//! its account's state. Every `commit_interval_ms` (and before partitions are revoked, and at
//! shutdown) it commits one Kafka transaction holding, atomically:
//!
//! - the crossings emitted since the last commit (`abm.score-crossings`),
//! - the latest `AccountState` of every account changed since (`abm.scorer.state`, written to
//!   the same partition number as the input partition it belongs to),
//! - the latest `AccountScore` of those accounts (`abm.account-scores`; coalesced: at most one
//!   per account per commit),
//! - the input offsets the above covers (`send_offsets_to_transaction`, as Kafka Streams'
//!   `exactly_once_v2` does).
//!
//! After a crash the group resumes from the committed offsets and the new owner of a partition
//! restores its accounts from the committed changelog: no event is counted twice or lost, and
//! `read_committed` readers never see a crossing twice. A failed transaction is fatal for the
//! loop: the in-memory state may hold effects of the aborted batch, so the process stops and
//! restarts from the last commit (restart policy of the platform: systemd, Kubernetes).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use abm_schemas::{
    AccountScore, AccountState, EngagementEvent, RejectReason, RejectSource, RejectedEvent, Tier, Transport,
};
use anyhow::{Context as _, anyhow};
use dashmap::DashMap;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use abm::kafka::EndOfPartitionContext;

use crate::engine::{AccountScoreState, Applied, Engine};
use crate::metrics::Metrics;
use crate::store::{PartitionAccounts, Store};

/// Topic names the loop reads and writes.
#[derive(Debug, Clone)]
pub struct LoopTopics {
    pub engagement: String,
    pub state: String,
    pub scores: String,
    pub crossings: String,
    pub rejected: String,
}

/// Tiers from the TAL, kept current by the table reader.
pub type Tiers = DashMap<String, Tier>;

#[derive(Debug, Default)]
struct Batch {
    open: bool,
    started: Option<Instant>,
    events: usize,
    /// Next offset to consume, per input partition.
    offsets: BTreeMap<i32, i64>,
    /// (input partition, account) changed in this batch.
    dirty: BTreeSet<(i32, String)>,
}

/// What the loop and its rebalance callbacks share. Both run on the loop's thread (librdkafka
/// serves callbacks inside `poll`), so the mutexes are never contended; they exist for `Sync`.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub tiers: Arc<Tiers>,
    pub topics: LoopTopics,
    pub metrics: Metrics,
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    batch: Mutex<Batch>,
    /// Partitions assigned and paused, waiting to be restored.
    to_restore: Mutex<Vec<i32>>,
    /// An error raised inside a callback, surfaced by the loop.
    fatal: Mutex<Option<String>>,
    restore_config: rdkafka::ClientConfig,
    timeout: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("topics", &self.topics).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Consumer context: rebalance hooks and lag from librdkafka's statistics.
#[derive(Debug)]
pub struct LoopContext {
    shared: Arc<Shared>,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.shared.topics.engagement) {
            for (id, partition) in &topic.partitions {
                if *id >= 0 && partition.consumer_lag >= 0 {
                    self.shared.metrics.consumer_lag.with_label_values(&[&id.to_string()]).set(partition.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else { return };
        let revoked = partition_ids(partitions);
        if consumer.assignment_lost() {
            // Someone else owns them already: our open batch must not commit.
            tracing::warn!(?revoked, "partitions lost; aborting the open transaction");
            self.shared.fail("assignment lost".into());
        } else if let Err(error) = self.shared.commit(consumer) {
            self.shared.fail(format!("commit before revoking {revoked:?}: {error:#}"));
        }
        for partition in &revoked {
            self.shared.store.drop_partition(*partition);
            self.shared.metrics.consumer_lag.remove_label_values(&[&partition.to_string()]).ok();
        }
        lock(&self.shared.to_restore).retain(|p| !revoked.contains(p));
        self.shared.metrics.accounts.set(self.shared.store.account_count() as i64);
        tracing::info!(?revoked, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else { return };
        let assigned = partition_ids(partitions);
        if assigned.is_empty() {
            return;
        }
        // Nothing is processed for a partition before its accounts are restored (outside this
        // callback, by the loop).
        if let Err(error) = consumer.pause(partitions) {
            self.shared.fail(format!("pausing assigned partitions: {error}"));
        }
        tracing::info!(?assigned, "partitions assigned; restoring their state");
        lock(&self.shared.to_restore).extend(assigned);
    }
}

fn partition_ids(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|element| element.partition()).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What the loop works on, shared with the query API and metrics.
#[derive(Debug)]
pub struct LoopParts {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub tiers: Arc<Tiers>,
    pub topics: LoopTopics,
    pub metrics: Metrics,
}

/// Settings of the loop (from `[scorer]`).
#[derive(Debug, Clone)]
pub struct LoopSettings {
    pub group_id: String,
    pub transactional_id: String,
    pub commit_interval: Duration,
    pub max_batch_events: usize,
}

/// Builds the consumer and transactional producer, then runs the loop on the calling thread
/// until `shutdown`; commits the last batch before returning.
pub fn run(
    kafka: &abm::kafka::KafkaConfig,
    settings: &LoopSettings,
    parts: LoopParts,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut producer_config = kafka.producer_config("abm-scorer");
    producer_config.set("transactional.id", &settings.transactional_id).set("transaction.timeout.ms", "60000");
    let producer: ThreadedProducer<_> = producer_config.create().context("creating the transactional producer")?;
    let timeout = kafka.timeout();
    producer.init_transactions(timeout).context("initialising transactions (fences older instances)")?;

    let mut restore_config = kafka.client_config("abm-scorer-restore");
    restore_config
        .set("group.id", format!("{}-restore", settings.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");

    let LoopParts { engine, store, tiers, topics, metrics } = parts;
    let shared = Arc::new(Shared {
        engine,
        store,
        tiers,
        topics,
        metrics,
        producer,
        batch: Mutex::new(Batch::default()),
        to_restore: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        restore_config,
        timeout,
    });
    let mut consumer_config = kafka.consumer_config("abm-scorer", &settings.group_id);
    consumer_config.set("enable.auto.commit", "false").set("statistics.interval.ms", "5000");
    let consumer: BaseConsumer<LoopContext> = consumer_config
        .create_with_context(LoopContext { shared: shared.clone() })
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&shared.topics.engagement])
        .with_context(|| format!("subscribing to {}", shared.topics.engagement))?;

    let result = process(&shared, &consumer, settings, shutdown);
    if result.is_err() {
        // Leave the group without committing anything of the failed batch.
        let _ = shared.producer.abort_transaction(timeout);
    }
    result
}

fn process(
    shared: &Arc<Shared>,
    consumer: &BaseConsumer<LoopContext>,
    settings: &LoopSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        if let Some(error) = lock(&shared.fatal).take() {
            return Err(anyhow!(error));
        }
        shared.restore_pending(consumer)?;
        if shutdown.is_cancelled() {
            shared.commit(consumer).context("final commit")?;
            consumer.unsubscribe();
            return Ok(());
        }
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => shared.handle(&message)?,
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            None => {}
        }
        let due = {
            let batch = lock(&shared.batch);
            batch.open
                && (batch.events >= settings.max_batch_events
                    || batch.started.is_some_and(|started| started.elapsed() >= settings.commit_interval))
        };
        if due {
            shared.commit(consumer)?;
        }
        let pending_since = lock(&shared.batch).started;
        shared.metrics.snapshot_age.set(pending_since.map_or(0.0, |started| started.elapsed().as_secs_f64()));
    }
}

impl Shared {
    fn fail(&self, error: String) {
        tracing::error!(%error, "scorer loop failure");
        lock(&self.fatal).get_or_insert(error);
    }

    /// Sends one record inside the open transaction, waiting while the local queue is full.
    fn send(&self, record: BaseRecord<'_, str, [u8]>) -> anyhow::Result<()> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, returned)) => return Err(anyhow!("producing to {}: {error}", returned.topic)),
            }
        }
    }

    fn begin_if_needed(&self, batch: &mut Batch) -> anyhow::Result<()> {
        if !batch.open {
            self.producer.begin_transaction().context("beginning a transaction")?;
            batch.open = true;
            batch.started = Some(Instant::now());
        }
        Ok(())
    }

    fn handle(&self, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let partition = message.partition();
        let mut batch = lock(&self.batch);
        self.begin_if_needed(&mut batch)?;
        batch.offsets.insert(partition, message.offset() + 1);
        batch.events += 1;

        let payload = message.payload().unwrap_or_default();
        let event = match abm_schemas::decode::<EngagementEvent>(payload) {
            Ok(event) => event,
            Err(error) => {
                return self.reject(
                    message,
                    RejectReason::Other,
                    format!("undecodable EngagementEvent: {error}"),
                    None,
                );
            }
        };
        let key = message.key().and_then(|key| std::str::from_utf8(key).ok()).filter(|key| !key.is_empty());
        let Some(account_id) = event.account_id.clone().or_else(|| key.map(str::to_owned)) else {
            let id = Some(event.event_id.clone());
            return self.reject(message, RejectReason::MissingField, "engagement event without account_id".into(), id);
        };
        let tier = self.tiers.get(&account_id).map_or(Tier::Untiered, |tier| *tier);
        let accounts = self.store.partition(partition);
        let applied = {
            let mut state = accounts.entry(account_id.clone()).or_default();
            self.engine.apply(&account_id, &mut state, &event, tier)
        };
        match applied {
            Applied::Duplicate => self.metrics.duplicates.inc(),
            Applied::Scored { crossings, .. } => {
                self.metrics.events_applied.with_label_values(&[event.kind.as_str()]).inc();
                let latency_ms = (now_ms() - event.received_at).max(0);
                self.metrics.apply_latency.observe(latency_ms as f64 / 1000.0);
                for crossing in crossings {
                    self.metrics.crossings.with_label_values(&[crossing.kind.as_str(), crossing.tier.as_str()]).inc();
                    let payload = abm_schemas::encode(&crossing)?;
                    self.send(
                        BaseRecord::to(&self.topics.crossings).key(account_id.as_str()).payload(payload.as_slice()),
                    )?;
                }
                batch.dirty.insert((partition, account_id));
            }
        }
        Ok(())
    }

    fn reject(
        &self,
        message: &BorrowedMessage<'_>,
        reason: RejectReason,
        text: String,
        event_id: Option<String>,
    ) -> anyhow::Result<()> {
        tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %text, "rejected input");
        self.metrics.rejected.with_label_values(&[reason_label(reason)]).inc();
        let rejected = RejectedEvent {
            reason,
            message: text,
            source: RejectSource {
                transport: Transport::Kafka,
                write_key: None,
                batch_index: None,
                topic: Some(message.topic().to_owned()),
                partition: Some(message.partition()),
                offset: Some(message.offset()),
            },
            event_id,
            received_at: now_ms(),
            original: message.payload().unwrap_or_default().to_vec(),
        };
        let payload = abm_schemas::encode(&rejected)?;
        let key = format!("kafka:{}", message.topic());
        self.send(BaseRecord::to(&self.topics.rejected).key(key.as_str()).payload(payload.as_slice()))
    }

    /// Commits the open batch as one transaction. No-op when nothing is open.
    fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> anyhow::Result<()> {
        let mut batch = lock(&self.batch);
        if !batch.open {
            return Ok(());
        }
        let started = Instant::now();
        let dirty = std::mem::take(&mut batch.dirty);
        for (partition, account_id) in &dirty {
            let accounts = self.store.partition(*partition);
            let Some(state) = accounts.get(account_id).map(|state| state.clone()) else { continue };
            let record: AccountState = state.to_record(account_id, &self.engine);
            let payload = abm_schemas::encode(&record)?;
            self.send(
                BaseRecord::to(&self.topics.state)
                    .key(account_id.as_str())
                    .payload(payload.as_slice())
                    .partition(*partition),
            )?;
            let score = self.account_score(account_id, &state, record);
            let payload = abm_schemas::encode(&score)?;
            self.send(BaseRecord::to(&self.topics.scores).key(account_id.as_str()).payload(payload.as_slice()))?;
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in &batch.offsets {
            offsets.add_partition_offset(&self.topics.engagement, *partition, Offset::Offset(*offset))?;
        }
        let group = consumer.group_metadata().ok_or_else(|| anyhow!("consumer has no group metadata"))?;
        self.producer
            .send_offsets_to_transaction(&offsets, &group, self.timeout)
            .context("adding input offsets to the transaction")?;
        self.producer.commit_transaction(self.timeout).context("committing the transaction")?;
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.transactions.inc();
        self.metrics.state_records.inc_by(dirty.len() as u64);
        self.metrics.accounts.set(self.store.account_count() as i64);
        *batch = Batch::default();
        Ok(())
    }

    fn account_score(&self, account_id: &str, state: &AccountScoreState, record: AccountState) -> AccountScore {
        let view = self.engine.view(account_id, state, None);
        let mut top_rules = view.rule_points;
        top_rules.truncate(self.engine.config().top_rules);
        AccountScore {
            account_id: account_id.to_owned(),
            tier: record.tier,
            score: view.score,
            engagement: view.engagement,
            breadth: view.breadth as i32,
            multiplier: view.multiplier,
            threshold: view.threshold,
            armed: view.armed,
            as_of: view.as_of.unwrap_or(0),
            events_applied: record.events_applied,
            top_rules,
        }
    }

    /// Restores the accounts of newly assigned partitions from the changelog, then resumes them.
    fn restore_pending(&self, consumer: &BaseConsumer<LoopContext>) -> anyhow::Result<()> {
        let pending: Vec<i32> = std::mem::take(&mut *lock(&self.to_restore));
        if pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let restored = self.restore_partitions(&pending)?;
        let mut count = 0;
        let mut list = TopicPartitionList::new();
        for (partition, accounts) in restored {
            count += accounts.len();
            self.store.install(partition, accounts);
            list.add_partition(&self.topics.engagement, partition);
        }
        consumer.resume(&list).with_context(|| format!("resuming partitions {pending:?}"))?;
        self.metrics.restore_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.restored_accounts.inc_by(count as u64);
        self.metrics.accounts.set(self.store.account_count() as i64);
        tracing::info!(partitions = ?pending, accounts = count, seconds = started.elapsed().as_secs_f64(), "state restored");
        Ok(())
    }

    /// Reads the changelog partitions `partitions` from the beginning to their end.
    fn restore_partitions(&self, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, PartitionAccounts>> {
        let reader: BaseConsumer<EndOfPartitionContext> =
            self.restore_config.create_with_context(EndOfPartitionContext).context("creating the restore consumer")?;
        let mut list = TopicPartitionList::new();
        let mut restored = BTreeMap::new();
        for partition in partitions {
            list.add_partition_offset(&self.topics.state, *partition, Offset::Beginning)?;
            restored.insert(*partition, PartitionAccounts::default());
        }
        reader.assign(&list)?;
        let mut unfinished: BTreeSet<i32> = partitions.iter().copied().collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        while !unfinished.is_empty() {
            anyhow::ensure!(Instant::now() < deadline, "restoring partitions {partitions:?} took more than 10 minutes");
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let Some(accounts) = restored.get(&message.partition()) else { continue };
                    let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else { continue };
                    match message.payload() {
                        None => {
                            accounts.remove(key);
                        }
                        Some(payload) => {
                            let record: AccountState = abm_schemas::decode(payload).with_context(|| {
                                format!(
                                    "changelog {} partition {} offset {}",
                                    self.topics.state,
                                    message.partition(),
                                    message.offset()
                                )
                            })?;
                            accounts.insert(key.to_owned(), AccountScoreState::from_record(&record, &self.engine));
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    unfinished.remove(&partition);
                }
                Some(Err(error)) => tracing::warn!(%error, "restore consumer error"),
                None => {}
            }
        }
        Ok(restored)
    }
}

fn reason_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::MissingField => "missing_field",
        _ => "undecodable",
    }
}
