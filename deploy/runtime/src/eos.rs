//! An exactly-once consume → process → produce loop over Kafka transactions.
//!
//! Mechanism only; what a message means is the [`Processor`]'s business. One thread polls the
//! input topic in a consumer group. One transaction commits, atomically, everything the
//! processor wrote since the last one plus the input offsets it covers
//! (`send_offsets_to_transaction`, as Kafka Streams' `exactly_once_v2`). It commits as soon as
//! the input is drained (a poll finds nothing more fetched), or once the batch is
//! `commit_interval` old or `max_batch_events` long while input keeps coming, and before
//! partitions are revoked and at shutdown. So a quiet pipeline's outputs are readable one commit
//! round trip after their input, and under load batches grow by themselves: input that arrives
//! during a commit is the next batch. Newly assigned partitions are paused inside the rebalance
//! callback and resumed once the processor has restored their state, which happens on a thread
//! of its own while the loop goes on polling and committing the other partitions (a long
//! restore neither starves the consumer's poll nor holds a transaction open).
//!
//! Broker faults are ridden out. A transactional call that fails with a retriable error is
//! retried; one that needs an abort (or any failure of the batch's writes) aborts the
//! transaction and *rewinds* the batch's partitions: they are paused, sought back to the first
//! offset of the batch, their in-memory state is dropped and restored from what is committed,
//! and they resume. Nothing of an aborted batch is visible to `read_committed` readers, so the
//! batch is simply done again. Only fatal errors (a fenced producer: another instance with the
//! same `transactional_id` took over) and failures that persist past [`RETRY_LIMIT`] end the
//! loop, with one clear error. A restarted instance with the same `transactional_id` fences its
//! predecessor at once.
//!
//! The transaction timeout ([`TRANSACTION_TIMEOUT`], 10 s as in Kafka Streams) stays below the
//! group's session timeout, so the open transaction of a member that died is aborted by the
//! broker before its partitions' next owner restores them, and never hides committed changelog
//! writes from that restore.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaConfig;
use crate::ops::Health;

/// What the loop drives. All methods but `restore` run on the loop's thread; `restore` runs on
/// a thread of its own while `process` goes on for other partitions.
pub trait Processor: Send + Sync + 'static {
    /// Handles one input message inside the open transaction, writing outputs to `out`.
    fn process(&self, message: &BorrowedMessage<'_>, out: &Outbox<'_>) -> anyhow::Result<()>;
    /// Writes the batch's coalesced outputs (e.g. changed state) just before it commits.
    fn before_commit(&self, out: &Outbox<'_>) -> anyhow::Result<()>;
    /// Rebuilds the state of newly assigned (or rewound) input partitions from what is
    /// committed. May block; runs outside callbacks, on its own thread; retried on failure.
    fn restore(&self, partitions: &[i32]) -> anyhow::Result<()>;
    /// Drops the state of revoked partitions (after their last commit), or of partitions whose
    /// batch was aborted (before they are restored again).
    fn revoke(&self, partitions: &[i32]);
    /// After each committed transaction.
    fn committed(&self, _duration: Duration) {}
    /// Age of the oldest uncommitted input (0 when all is committed), after each poll.
    fn uncommitted_age(&self, _seconds: f64) {}
    /// Consumer lag of an input partition, from librdkafka's statistics.
    fn lag(&self, _partition: i32, _lag: i64) {}
    /// After a transaction was aborted and its partitions rewound (`reason` says why).
    fn aborted(&self, _reason: &str) {}
    /// Whether the processor has outputs to commit with no input (asked while no transaction is
    /// open): the loop then opens one, and `before_commit` writes them after the commit interval.
    fn wants_commit(&self) -> bool {
        false
    }
}

/// The loop's own metrics, the same in every service that runs one (`abm_<service>_...`).
#[derive(Debug, Clone)]
pub struct LoopMetrics {
    producers_replaced: prometheus::IntCounter,
    stalled_seconds: prometheus::Gauge,
    heals: prometheus::IntCounter,
}

impl LoopMetrics {
    pub fn register(registry: &prometheus::Registry, service: &str) -> prometheus::Result<LoopMetrics> {
        let metrics = LoopMetrics {
            producers_replaced: prometheus::IntCounter::new(
                format!("abm_{service}_producers_replaced_total"),
                "Transactional producers replaced after failing fatally (e.g. a transaction the coordinator timed out during a broker outage) or after a transactional call did not come back; the batch was done again.",
            )?,
            stalled_seconds: prometheus::Gauge::new(
                format!("abm_{service}_loop_stalled_seconds"),
                format!(
                    "Seconds the processing loop has had input waiting without making progress (0 while it progresses or has nothing to do); /readyz is 503 from half of {service}.stall_after_ms."
                ),
            )?,
            heals: prometheus::IntCounter::new(
                format!("abm_{service}_loop_heals_total"),
                format!(
                    "Times the processing loop stalled with input waiting for {service}.stall_after_ms and healed by replacing its Kafka consumer."
                ),
            )?,
        };
        registry.register(Box::new(metrics.producers_replaced.clone()))?;
        registry.register(Box::new(metrics.stalled_seconds.clone()))?;
        registry.register(Box::new(metrics.heals.clone()))?;
        Ok(metrics)
    }
}

/// Counter increments for work done inside the open transaction, applied to their counters only
/// when it commits and dropped when it aborts: the work of an aborted batch is done again, and
/// conservation counters (`engaged = applied + duplicates`, `crossings = alerts + suppressed`)
/// must count it once. A processor adds here in `process`/`before_commit`, and calls
/// [`StagedCounters::commit`] from `committed` and [`StagedCounters::discard`] from `aborted`.
#[derive(Debug, Default)]
pub struct StagedCounters {
    staged: Mutex<Vec<(prometheus::IntCounter, u64)>>,
}

impl StagedCounters {
    pub fn add(&self, counter: &prometheus::IntCounter, amount: u64) {
        lock(&self.staged).push((counter.clone(), amount));
    }

    /// Applies every staged increment (the transaction committed).
    pub fn commit(&self) {
        for (counter, amount) in std::mem::take(&mut *lock(&self.staged)) {
            counter.inc_by(amount);
        }
    }

    /// Drops every staged increment (the transaction was aborted).
    pub fn discard(&self) {
        lock(&self.staged).clear();
    }
}

/// Writes records inside the open transaction.
pub struct Outbox<'a> {
    producer: &'a ThreadedProducer<DefaultProducerContext>,
}

type TxProducer = ThreadedProducer<DefaultProducerContext>;

impl std::fmt::Debug for Outbox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

impl Outbox<'_> {
    /// Queues a record (to `partition` if given, else by key), waiting while the queue is full.
    pub fn send(&self, topic: &str, key: &str, payload: &[u8], partition: Option<i32>) -> anyhow::Result<()> {
        self.write(topic, key, Some(payload), partition)
    }

    /// Queues a record with `value`, or a tombstone (`None`: deletes `key` from a compacted
    /// topic), waiting while the queue is full. A single-object `value` for a topic written in
    /// Confluent framing is sent with the topic's registry header
    /// (`abm_schemas::registry::frame_for`).
    pub fn write(&self, topic: &str, key: &str, value: Option<&[u8]>, partition: Option<i32>) -> anyhow::Result<()> {
        let framed = value.map(|value| abm_schemas::registry::frame_for(topic, value)).transpose()?;
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key);
        if let Some(value) = framed.as_deref() {
            record = record.payload(value);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => {
                    let what = if value.is_some() { "" } else { "a tombstone " };
                    return Err(anyhow!("producing {what}to {topic}: {error}"));
                }
            }
        }
    }
    /// Keeps an input record the processor cannot use: writes it to `rejected_topic` as a
    /// `RejectedEvent` (original bytes, topic/partition/offset, reason, message) inside the
    /// open transaction, so it is kept exactly once with the offsets that skip it.
    pub fn reject(
        &self,
        rejected_topic: &str,
        message: &BorrowedMessage<'_>,
        reason: abm_schemas::RejectReason,
        text: String,
        event_id: Option<String>,
    ) -> anyhow::Result<()> {
        tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %text, "rejected input");
        let received_at = crate::clock::now_ms();
        let rejected = abm_schemas::RejectedEvent {
            reason,
            message: text,
            source: abm_schemas::RejectSource {
                transport: abm_schemas::Transport::Kafka,
                write_key: None,
                batch_index: None,
                topic: Some(message.topic().to_owned()),
                partition: Some(message.partition()),
                offset: Some(message.offset()),
            },
            event_id,
            received_at,
            original: message.payload().unwrap_or_default().to_vec(),
        };
        let key = format!("kafka:{}", message.topic());
        self.send(rejected_topic, &key, &abm_schemas::encode(&rejected)?, None)
    }
}

/// Settings of one loop.
#[derive(Debug, Clone)]
pub struct EosSettings {
    /// Kafka client id prefix.
    pub client_id: String,
    pub group_id: String,
    /// Stable per instance: fences a restarted instance's predecessor.
    pub transactional_id: String,
    pub input_topic: String,
    pub commit_interval: Duration,
    pub max_batch_events: usize,
    /// How long the loop may have input waiting without making progress before it heals (its
    /// consumer is replaced); a loop thread that does not come back from a call for twice this
    /// (plus the Kafka timeout, twice) ends the process.
    pub stall_after: Duration,
    /// The transactional producer's `compression.type` when the service sets one (it wins over
    /// `kafka.librdkafka`); the Kafka defaults' `lz4` otherwise.
    pub compression: Option<String>,
    pub metrics: LoopMetrics,
}

/// [`EosSettings::stall_after`] unless configured.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(20);

/// Test-only fault injection: after this many messages the first consumer pauses all its
/// partitions and never resumes them (a consumer that stops fetching), so tests can show the
/// watchdog heals it. Unset in production.
const FAULT_STALL_ENV: &str = "ABMTEST_FAULT_STALL_AFTER_MESSAGES";

/// Test-only fault injection: the transaction this many commits after the start never gets its
/// `send_offsets_to_transaction` back (as librdkafka's can hang after a broker restart), so
/// tests can show the loop abandons that producer and goes on. Unset in production.
const FAULT_WEDGE_ENV: &str = "ABMTEST_FAULT_WEDGE_AFTER_COMMITS";

/// How long past the Kafka timeout a transactional call may take before its producer is judged
/// wedged and replaced (see `Shared::bounded`).
const WEDGE_GRACE: Duration = Duration::from_secs(5);

/// The transactional producer's `transaction.timeout.ms` unless the passthrough sets one; it
/// must stay below the consumer's `session.timeout.ms` (librdkafka's default: 45 s).
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failing transactional call (or restore) is retried before the loop gives up and
/// ends the process: a broker that is down for this long is not a blip.
pub const RETRY_LIMIT: Duration = Duration::from_secs(180);

/// Transactions aborted in a row (no commit in between) before the loop gives up: a batch that
/// fails every time for the same reason is not a broker fault.
const ABORTS_IN_A_ROW_LIMIT: u32 = 10;

/// Readiness waits under this name while assigned partitions are not restored yet.
const RESTORING: &str = "restoring";

#[derive(Debug, Default)]
struct Batch {
    open: bool,
    started: Option<Instant>,
    events: usize,
    /// Next offset to consume, per input partition.
    offsets: BTreeMap<i32, i64>,
    /// Offset of the batch's first message, per input partition: where a rewind goes back to.
    first_offsets: BTreeMap<i32, i64>,
}

/// Why a transaction did not commit.
#[derive(Debug)]
enum Failure {
    /// The batch must be aborted and done again.
    Abort(String),
    /// The producer failed fatally (librdkafka's word: fenced, an invalid transactional state,
    /// e.g. after the coordinator timed the transaction out during an outage): it is replaced
    /// and the batch done again.
    Producer(String),
    /// The loop cannot go on (a fault that outlasted [`RETRY_LIMIT`]).
    Fatal(String),
}

/// How to react to a failed transactional call.
fn classify(error: &KafkaError) -> Reaction {
    match error {
        KafkaError::Transaction(error) if error.is_fatal() => Reaction::ReplaceProducer,
        KafkaError::Transaction(error) if error.txn_requires_abort() => Reaction::Abort,
        KafkaError::Transaction(error) if error.is_retriable() => Reaction::Retry,
        _ => Reaction::Abort,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reaction {
    Retry,
    Abort,
    ReplaceProducer,
}

/// A restore running on its own thread.
struct RestoreJob {
    partitions: Vec<i32>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

/// Partitions that are assigned but not processed yet, because their state is being restored.
#[derive(Debug, Default)]
struct Restores {
    /// Assigned (or rewound) partitions, paused, waiting for their restore to start.
    queued: Vec<i32>,
    /// Partitions whose restore is running now.
    running: Vec<i32>,
    /// Partitions revoked while their restore was running: what it installs is dropped.
    revoked_while_running: BTreeSet<i32>,
    /// Where a partition resumes: the first offset of its aborted batch, or the first message
    /// that arrived while it waited (the consumer's position moved past it). Sought just before
    /// the partition resumes, so no fetch that raced the pause can move it.
    resume_from: BTreeMap<i32, i64>,
}

impl Restores {
    fn queue(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            if !self.queued.contains(&partition) {
                self.queued.push(partition);
            }
        }
    }

    /// Resume `partition` from `offset` unless an earlier offset is already noted.
    fn resume_from(&mut self, partition: i32, offset: i64) {
        let at = self.resume_from.entry(partition).or_insert(offset);
        *at = (*at).min(offset);
    }

    fn revoke(&mut self, revoked: &[i32]) {
        self.queued.retain(|p| !revoked.contains(p));
        self.resume_from.retain(|p, _| !revoked.contains(p));
        let running = &self.running;
        self.revoked_while_running.extend(revoked.iter().filter(|p| running.contains(p)));
    }

    fn pending(&self) -> Vec<i32> {
        self.queued.iter().chain(&self.running).copied().collect()
    }
}

/// What the watchdog knows of a loop's progress. Times are milliseconds since `started`.
#[derive(Debug)]
struct Watch {
    started: Instant,
    /// The last progress: a message handled, a transaction committed, a restore finished, or
    /// a check that found nothing waiting.
    progress_ms: std::sync::atomic::AtomicU64,
    /// The last replacement of the consumer (`u64::MAX`: none yet). It does not count as
    /// progress (the stalled-seconds gauge goes on rising through heals that do not help), but
    /// the replacement gets its own `stall_after` before the next heal.
    replaced_ms: std::sync::atomic::AtomicU64,
    /// The loop thread's last round (or retry): a thread stuck in a call stops beating.
    heartbeat_ms: std::sync::atomic::AtomicU64,
    /// The fetch position (`next_offset`) and locally queued messages of each input partition,
    /// from librdkafka's statistics, and when they were reported.
    fetch: Mutex<(u64, FetchPositions)>,
}

/// Per input partition: librdkafka's fetch position (`next_offset`) and messages queued locally.
type FetchPositions = BTreeMap<i32, (i64, i64)>;

impl Watch {
    fn new() -> Watch {
        Watch {
            started: Instant::now(),
            progress_ms: std::sync::atomic::AtomicU64::new(0),
            replaced_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(0),
            fetch: Mutex::new((0, BTreeMap::new())),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn progressed(&self) {
        self.progress_ms.store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    fn replaced(&self) {
        self.replaced_ms.store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A replaced consumer is still within its first `stall_after`.
    fn rejoining(&self, stall_after: Duration) -> bool {
        let at = self.replaced_ms.load(std::sync::atomic::Ordering::Relaxed);
        at != u64::MAX && self.since(&self.replaced_ms) < stall_after
    }

    /// What fetch reports must be newer than to be judged on: the last progress or replacement.
    fn judged_from_ms(&self) -> u64 {
        let replaced = self.replaced_ms.load(std::sync::atomic::Ordering::Relaxed);
        let progress = self.progress_ms.load(std::sync::atomic::Ordering::Relaxed);
        if replaced == u64::MAX { progress } else { progress.max(replaced) }
    }

    fn beat(&self) {
        self.heartbeat_ms.store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    fn since(&self, at: &std::sync::atomic::AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(at.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

struct Shared<P> {
    processor: Arc<P>,
    /// Replaced when it fails fatally (see [`Failure::Producer`]); only the loop's thread
    /// replaces it, so it is cloned out of the lock for each use.
    producer: std::sync::RwLock<Arc<TxProducer>>,
    /// What a replacement producer is made from.
    producer_config: rdkafka::ClientConfig,
    /// When producers were replaced (the last 10 minutes).
    producers_replaced: Mutex<Vec<Instant>>,
    input_topic: String,
    batch: Mutex<Batch>,
    restores: Mutex<Restores>,
    /// Whether `restores` has a partition queued or running: read per message without a lock.
    restores_pending: std::sync::atomic::AtomicBool,
    /// Whether the current consumer has had its first assignment (readiness waits until then).
    assigned: std::sync::atomic::AtomicBool,
    fatal: Mutex<Option<String>>,
    /// Aborts since the last commit.
    aborts_in_a_row: Mutex<u32>,
    /// Transactions left before the test-only wedge fault ([`FAULT_WEDGE_ENV`]).
    wedge_after: Mutex<Option<u64>>,
    timeout: Duration,
    health: Health,
    watch: Arc<Watch>,
    metrics: LoopMetrics,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn partition_ids(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|element| element.partition()).collect()
}

impl<P: Processor> Shared<P> {
    fn fail(&self, error: String) {
        tracing::error!(%error, "transactional loop failure");
        lock(&self.fatal).get_or_insert(error);
    }

    fn producer(&self) -> Arc<TxProducer> {
        self.producer.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn partition_list(&self, partitions: impl IntoIterator<Item = i32>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(&self.input_topic, partition);
        }
        list
    }

    /// Readiness waits while any assigned partition is not restored. Called after every change
    /// to `restores`.
    fn update_readiness(&self) {
        let pending = lock(&self.restores).pending();
        self.restores_pending.store(!pending.is_empty(), std::sync::atomic::Ordering::Release);
        if !self.assigned.load(std::sync::atomic::Ordering::Acquire) {
            self.health.wait_for(RESTORING, format!("joining the consumer group of {}", self.input_topic));
        } else if pending.is_empty() {
            self.health.done_waiting(RESTORING);
        } else {
            self.health.wait_for(RESTORING, format!("partitions {pending:?} of {}", self.input_topic));
        }
    }

    fn handle(&self, message: &BorrowedMessage<'_>) -> Result<(), Failure> {
        let partition = message.partition();
        if self.restores_pending.load(std::sync::atomic::Ordering::Acquire) {
            let mut restores = lock(&self.restores);
            if restores.pending().contains(&partition) {
                // Fetched before the pause took effect: not processed before its state is
                // restored; read again once the partition resumes.
                restores.resume_from(partition, message.offset());
                return Ok(());
            }
        }
        let producer = self.producer();
        let mut batch = lock(&self.batch);
        if let Err(failure) = Self::begin(&producer, &mut batch) {
            // This message is not processed: its partition is rewound to it with the (empty)
            // batch, or the consumer's position would already be past it.
            batch.first_offsets.entry(partition).or_insert(message.offset());
            return Err(failure);
        }
        batch.first_offsets.entry(partition).or_insert(message.offset());
        batch.offsets.insert(partition, message.offset() + 1);
        batch.events += 1;
        drop(batch);
        let out = Outbox { producer: &producer };
        self.processor.process(message, &out).map_err(|error| Failure::Abort(format!("{error:#}")))
    }

    /// Commits the open batch as one transaction (no-op when none is open). A batch that cannot
    /// commit is aborted and its partitions rewound; only a fatal failure is an error.
    fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> anyhow::Result<()> {
        let mut batch = lock(&self.batch);
        if !batch.open {
            return Ok(());
        }
        let started = Instant::now();
        match self.try_commit(&batch, consumer) {
            Ok(()) => {
                tracing::debug!(events = batch.events, took = ?started.elapsed(), "transaction committed");
                *batch = Batch::default();
                *lock(&self.aborts_in_a_row) = 0;
                self.watch.progressed();
                self.processor.committed(started.elapsed());
                Ok(())
            }
            Err(Failure::Fatal(error)) => Err(anyhow!(error)),
            Err(Failure::Abort(reason)) => {
                let aborted = std::mem::take(&mut *batch);
                drop(batch);
                self.abort_and_rewind(consumer, aborted, &reason)
            }
            Err(Failure::Producer(reason)) => {
                let aborted = std::mem::take(&mut *batch);
                drop(batch);
                self.replace_producer(&reason)?;
                self.abort_and_rewind(consumer, aborted, &reason)
            }
        }
    }

    /// Opens the batch's transaction unless it is open.
    fn begin(producer: &TxProducer, batch: &mut Batch) -> Result<(), Failure> {
        if batch.open {
            return Ok(());
        }
        producer.begin_transaction().map_err(|error| match classify(&error) {
            Reaction::ReplaceProducer => Failure::Producer(format!("beginning a transaction: {error}")),
            _ => Failure::Abort(format!("beginning a transaction: {error}")),
        })?;
        batch.open = true;
        batch.started = Some(Instant::now());
        Ok(())
    }

    /// Opens a transaction with no input, for a processor that [wants](Processor::wants_commit)
    /// to commit anyway.
    fn open_without_input(&self) -> Result<(), Failure> {
        let producer = self.producer();
        Self::begin(&producer, &mut lock(&self.batch))
    }

    /// Goes on after a failed batch: aborted and rewound (the producer replaced first when it
    /// failed); a fatal failure ends the loop.
    fn recover<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, failure: Failure) -> anyhow::Result<()> {
        let reason = match failure {
            Failure::Fatal(error) => return Err(anyhow!(error)),
            Failure::Abort(reason) => reason,
            Failure::Producer(reason) => {
                self.replace_producer(&reason)?;
                reason
            }
        };
        let aborted = std::mem::take(&mut *lock(&self.batch));
        self.abort_and_rewind(consumer, aborted, &reason)
    }

    fn try_commit<C: ConsumerContext>(&self, batch: &Batch, consumer: &BaseConsumer<C>) -> Result<(), Failure> {
        let producer = self.producer();
        self.processor
            .before_commit(&Outbox { producer: &producer })
            .map_err(|error| Failure::Abort(format!("writing the batch's outputs: {error:#}")))?;
        let (timeout, wedge) = (self.timeout, self.wedge_fault());
        // A transaction without input (`wants_commit`) has no offsets to add.
        if !batch.offsets.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (partition, offset) in &batch.offsets {
                offsets
                    .add_partition_offset(&self.input_topic, *partition, Offset::Offset(*offset))
                    .map_err(|error| Failure::Abort(format!("input offsets: {error}")))?;
            }
            let group = Arc::new(Mutex::new(
                consumer.group_metadata().ok_or_else(|| Failure::Abort("the consumer has no group metadata".into()))?,
            ));
            self.retry(&producer, "adding input offsets to the transaction", move |producer| {
                if wedge {
                    tracing::warn!("{FAULT_WEDGE_ENV}: this send_offsets_to_transaction does not come back");
                    std::thread::sleep(Duration::from_secs(3600));
                }
                producer.send_offsets_to_transaction(&offsets, &lock(&group), timeout)
            })?;
        }
        self.await_deliveries(&producer);
        self.retry(&producer, "committing the transaction", move |producer| producer.commit_transaction(timeout))
    }

    /// Calls `call` until it succeeds, retrying retriable errors for at most [`RETRY_LIMIT`].
    /// Each attempt is [`bounded`](Self::bounded): one that does not come back fails the producer.
    fn retry(
        &self,
        producer: &Arc<TxProducer>,
        what: &str,
        call: impl Fn(&TxProducer) -> Result<(), KafkaError> + Send + Sync + 'static,
    ) -> Result<(), Failure> {
        let deadline = Instant::now() + RETRY_LIMIT;
        let mut warned = false;
        let call = Arc::new(call);
        loop {
            self.watch.beat();
            let attempt = call.clone();
            let outcome = self.bounded(producer, what, move |producer| attempt(producer)).map_err(Failure::Producer)?;
            let Err(error) = outcome else { return Ok(()) };
            match classify(&error) {
                Reaction::ReplaceProducer => return Err(Failure::Producer(format!("{what}: {error}"))),
                Reaction::Abort => return Err(Failure::Abort(format!("{what}: {error}"))),
                Reaction::Retry if Instant::now() >= deadline => {
                    return Err(Failure::Fatal(format!("{what}: still failing after {RETRY_LIMIT:?}: {error}")));
                }
                Reaction::Retry => {
                    if !warned {
                        tracing::warn!(%error, "{what}: retrying until the broker answers");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Aborts the transaction of `aborted` and rewinds its partitions: paused, sought back to
    /// the batch's first offsets, state dropped, queued for a restore from what is committed.
    fn abort_and_rewind<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        aborted: Batch,
        reason: &str,
    ) -> anyhow::Result<()> {
        let in_a_row = {
            let mut count = lock(&self.aborts_in_a_row);
            *count += 1;
            *count
        };
        tracing::warn!(
            reason,
            events = aborted.events,
            partitions = ?aborted.first_offsets.keys().collect::<Vec<_>>(),
            in_a_row,
            "transaction aborted; rewinding its partitions to the last commit"
        );
        self.abort_transaction(reason)?;
        let partitions: Vec<i32> = aborted.first_offsets.keys().copied().collect();
        if !partitions.is_empty() {
            let list = self.partition_list(partitions.iter().copied());
            consumer.pause(&list).with_context(|| format!("pausing rewound partitions {partitions:?}"))?;
            self.processor.revoke(&partitions);
            let mut restores = lock(&self.restores);
            for (partition, offset) in &aborted.first_offsets {
                restores.resume_from(*partition, *offset);
            }
            restores.queue(partitions);
        }
        self.processor.aborted(reason);
        self.update_readiness();
        if in_a_row >= ABORTS_IN_A_ROW_LIMIT {
            return Err(anyhow!("{in_a_row} transactions aborted in a row; the last because {reason}"));
        }
        // A pause that grows with each abort in a row, so a persisting fault is not hammered.
        std::thread::sleep(Duration::from_millis(100 << in_a_row.min(6)));
        Ok(())
    }

    /// Runs one transactional call of `producer` on a thread of its own and waits at most the
    /// Kafka timeout plus [`WEDGE_GRACE`] for it, beating the watch meanwhile. librdkafka does
    /// not always honour a call's timeout: `send_offsets_to_transaction` can wait for a group
    /// coordinator forever after a broker restart (confluentinc/librdkafka#5456, #5511), and
    /// only a new producer gets the loop going again. So a call that does not come back is
    /// left running with its own reference to the old producer, and `Err` tells the caller to
    /// replace the producer: the new one's `init_transactions` fences the old one and aborts its
    /// transaction, so nothing the abandoned call might still do can commit.
    fn bounded(
        &self,
        producer: &Arc<TxProducer>,
        what: &str,
        call: impl FnOnce(&TxProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<Result<(), KafkaError>, String> {
        let (sender, outcome) = std::sync::mpsc::sync_channel(1);
        let producer = producer.clone();
        std::thread::Builder::new()
            .name("txn-call".into())
            .spawn(move || {
                let _ = sender.send(call(&producer));
            })
            .map_err(|error| format!("{what}: starting its thread: {error}"))?;
        let limit = self.timeout + WEDGE_GRACE;
        let started = Instant::now();
        loop {
            self.watch.beat();
            match outcome.recv_timeout(Duration::from_millis(250)) {
                Ok(outcome) => return Ok(outcome),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("{what}: the call panicked"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if started.elapsed() >= limit => {
                    tracing::error!(
                        "{what}: librdkafka did not come back within {limit:?} (its timeout is {:?}); abandoning the \
                         producer",
                        self.timeout
                    );
                    return Err(format!("{what}: did not come back within {limit:?}"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Whether the test-only wedge fault hits this transaction (see [`FAULT_WEDGE_ENV`]).
    fn wedge_fault(&self) -> bool {
        let mut left = lock(&self.wedge_after);
        match left.as_mut() {
            Some(1) => {
                *left = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    /// Aborts the open transaction, retrying while the broker is away (at most [`RETRY_LIMIT`]).
    /// A producer that fails fatally meanwhile (or whose call does not come back) is replaced,
    /// which aborts the transaction too.
    fn abort_transaction(&self, reason: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + RETRY_LIMIT;
        let timeout = self.timeout;
        loop {
            self.watch.beat();
            let outcome = match self.bounded(&self.producer(), "aborting the transaction", move |producer| {
                producer.abort_transaction(timeout)
            }) {
                Ok(outcome) => outcome,
                Err(wedged) => return self.replace_producer(&format!("aborting the transaction ({reason}): {wedged}")),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(error) if classify(&error) == Reaction::ReplaceProducer => {
                    return self.replace_producer(&format!("aborting the transaction ({reason}): {error}"));
                }
                // Nothing to abort: the transaction was never begun on the broker's side.
                Err(KafkaError::Transaction(error)) if error.code() == RDKafkaErrorCode::State => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(anyhow!(
                        "aborting the transaction ({reason}): still failing after {RETRY_LIMIT:?}: {error}"
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Replaces a producer that failed fatally with a new one of the same `transactional.id`:
    /// its `init_transactions` aborts whatever the old one left open (and fences it). The
    /// caller rewinds the open batch's partitions as for an abort. librdkafka reports a
    /// transaction the coordinator timed out during an outage as fatal (invalid state, or
    /// fenced by the coordinator's epoch bump), which is why this is healed and not the end;
    /// more than [`PRODUCER_REPLACEMENTS_LIMIT`] replacements in 10 minutes end the loop (two
    /// instances sharing one `instance_id`, each fencing the other, look like this).
    fn replace_producer(&self, reason: &str) -> anyhow::Result<()> {
        let replaced = {
            let mut replaced = lock(&self.producers_replaced);
            replaced.retain(|at| at.elapsed() < Duration::from_secs(600));
            replaced.push(Instant::now());
            replaced.len()
        };
        anyhow::ensure!(
            replaced <= PRODUCER_REPLACEMENTS_LIMIT,
            "the transactional producer failed {replaced} times in 10 minutes (is another instance running with the \
             same instance_id?); the last: {reason}"
        );
        tracing::warn!(reason, "the transactional producer failed fatally; replacing it");
        let producer: Arc<TxProducer> =
            Arc::new(self.producer_config.create().context("creating a replacement transactional producer")?);
        let deadline = Instant::now() + RETRY_LIMIT;
        let timeout = self.timeout;
        loop {
            self.watch.beat();
            let outcome = self
                .bounded(&producer, "initialising the replacement producer's transactions", move |producer| {
                    producer.init_transactions(timeout)
                })
                .map_err(|wedged| anyhow!(wedged))?;
            match outcome {
                Ok(()) => break,
                Err(error) if Instant::now() < deadline && classify(&error) != Reaction::ReplaceProducer => {
                    tracing::warn!(%error, "initialising the replacement producer's transactions; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(error) => return Err(anyhow!("initialising the replacement producer's transactions: {error}")),
            }
        }
        *self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = producer;
        self.metrics.producers_replaced.inc();
        Ok(())
    }

    /// Before the consumer is replaced: aborts the open batch and forgets its partitions' state
    /// and every pending restore (the new consumer's assignment restores them again).
    fn forget_consumer_work(&self, reason: &str) -> anyhow::Result<()> {
        let aborted = std::mem::take(&mut *lock(&self.batch));
        if aborted.open {
            self.abort_transaction(reason)?;
            let partitions: Vec<i32> = aborted.first_offsets.keys().copied().collect();
            self.processor.revoke(&partitions);
            self.processor.aborted(reason);
        }
        {
            let mut restores = lock(&self.restores);
            let pending = restores.pending();
            restores.revoke(&pending);
        }
        // The new consumer joins the group again: not ready until its assignment is restored.
        self.assigned.store(false, std::sync::atomic::Ordering::Release);
        self.update_readiness();
        Ok(())
    }

    /// Waits (in 1 ms steps, at most the Kafka timeout) until every record of the transaction is
    /// acknowledged. `commit_transaction` flushes by itself, but rdkafka's flush waits for
    /// delivery reports in polls of up to 100 ms, and with a threaded producer its polling thread
    /// takes those reports first: every commit would then last at least 100 ms.
    fn await_deliveries(&self, producer: &TxProducer) {
        let deadline = Instant::now() + self.timeout;
        while producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Readiness waits under this name while a loop has input but makes no progress.
const STALLED: &str = "stalled";

impl<P: Processor> Shared<P> {
    /// The assigned partitions (not being restored) that have committed input the consumer has
    /// not fetched or the loop has not taken: the last stable offset (asked of the broker) is
    /// past the fetch position librdkafka reported after the last progress, or messages wait in
    /// the local queue. A loop is never judged on stale knowledge (no report since the last
    /// progress), nor while the broker does not answer.
    fn input_waiting<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Judgement {
        let (reported_ms, fetch) = lock(&self.watch.fetch).clone();
        if reported_ms <= self.watch.judged_from_ms() {
            return Judgement::Stale;
        }
        match self.partitions_waiting(consumer, &fetch) {
            Some(waiting) if waiting.is_empty() => Judgement::Idle,
            Some(waiting) => Judgement::Waiting(waiting),
            None => Judgement::BrokerAway,
        }
    }

    fn partitions_waiting<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        fetch: &FetchPositions,
    ) -> Option<Vec<i32>> {
        let assignment = consumer.assignment().ok()?;
        let pending = lock(&self.restores).pending();
        let mut waiting = Vec::new();
        for partition in partition_ids(&assignment) {
            if pending.contains(&partition) {
                continue;
            }
            // Each query may take its whole timeout: the thread is alive meanwhile.
            self.watch.beat();
            let (low, stable) = consumer.fetch_watermarks(&self.input_topic, partition, Duration::from_secs(2)).ok()?;
            let fetched_to = match fetch.get(&partition) {
                Some((_, queued)) if *queued > 0 => {
                    waiting.push(partition);
                    continue;
                }
                Some((next, _)) if *next >= 0 => *next,
                // Not fetched yet: from the committed offset (or the start of the partition).
                _ => {
                    let committed =
                        consumer.committed_offsets(self.partition_list([partition]), Duration::from_secs(2)).ok()?;
                    committed
                        .elements()
                        .first()
                        .and_then(|element| element.offset().to_raw())
                        .filter(|offset| *offset >= 0)
                        .unwrap_or(low)
                }
            };
            if stable > fetched_to {
                waiting.push(partition);
            }
        }
        Some(waiting)
    }

    /// The group's committed offsets of `partitions` (those it has), asked of the broker; empty
    /// when it does not answer (the caller falls back on what it noted).
    fn committed_offsets<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partitions: impl IntoIterator<Item = i32>,
    ) -> BTreeMap<i32, i64> {
        let list = self.partition_list(partitions);
        if list.count() == 0 {
            return BTreeMap::new();
        }
        match consumer.committed_offsets(list, self.timeout) {
            Ok(committed) => committed
                .elements()
                .iter()
                .filter_map(|e| Some((e.partition(), e.offset().to_raw().filter(|offset| *offset >= 0)?)))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "committed offsets unknown; resuming from the noted positions");
                BTreeMap::new()
            }
        }
    }

    /// Starts restoring the partitions waiting for it, on a thread of its own; retries until
    /// [`RETRY_LIMIT`] (the broker may be down).
    fn start_restore(&self, shutdown: &CancellationToken) -> anyhow::Result<Option<RestoreJob>> {
        let partitions = {
            let mut restores = lock(&self.restores);
            restores.running = std::mem::take(&mut restores.queued);
            restores.running.clone()
        };
        if partitions.is_empty() {
            return Ok(None);
        }
        let (processor, job_partitions, shutdown) = (self.processor.clone(), partitions.clone(), shutdown.clone());
        let thread = std::thread::Builder::new().name("restore".into()).spawn(move || {
            let deadline = Instant::now() + RETRY_LIMIT;
            loop {
                match processor.restore(&job_partitions) {
                    Ok(()) => return Ok(()),
                    Err(error) if Instant::now() < deadline && !shutdown.is_cancelled() => {
                        tracing::warn!(error = format!("{error:#}"), partitions = ?job_partitions, "restore failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(error) => return Err(error),
                }
            }
        })?;
        Ok(Some(RestoreJob { partitions, thread }))
    }

    /// Ends a finished restore: drops what it installed for partitions revoked meanwhile and
    /// resumes the others (unless they were queued for another restore).
    fn finish_restore<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, job: RestoreJob) -> anyhow::Result<()> {
        let outcome = job.thread.join().map_err(|_| anyhow!("restoring partitions {:?} panicked", job.partitions))?;
        outcome.with_context(|| format!("restoring partitions {:?}", job.partitions))?;
        let (revoked, queued, resume_from) = {
            let mut restores = lock(&self.restores);
            restores.running.clear();
            let revoked = std::mem::take(&mut restores.revoked_while_running);
            let queued = restores.queued.clone();
            let ready = job.partitions.iter().filter(|p| !revoked.contains(p) && !queued.contains(p));
            let resume_from: BTreeMap<i32, i64> =
                ready.filter_map(|p| restores.resume_from.remove(p).map(|offset| (*p, offset))).collect();
            (revoked, queued, resume_from)
        };
        let stale: Vec<i32> = job.partitions.iter().copied().filter(|p| revoked.contains(p)).collect();
        if !stale.is_empty() {
            self.processor.revoke(&stale);
        }
        let ready: Vec<i32> =
            job.partitions.iter().copied().filter(|p| !revoked.contains(p) && !queued.contains(p)).collect();
        if !ready.is_empty() {
            consumer
                .resume(&self.partition_list(ready.iter().copied()))
                .with_context(|| format!("resuming partitions {ready:?}"))?;
        }
        self.watch.progressed();
        // Sought once resumed (a seek of a paused partition may not reach its fetcher); whatever
        // was fetched from the old position is discarded by the seek. Where the group has a
        // committed offset, that is where the restored state stands (both were committed in one
        // transaction, and the restore read every decided one), so that is where the partition
        // resumes; this holds even when a commit whose outcome was unknown did happen.
        let committed = self.committed_offsets(consumer, resume_from.keys().copied());
        for (partition, noted) in resume_from {
            let offset = committed.get(&partition).copied().unwrap_or(noted);
            consumer
                .seek(&self.input_topic, partition, Offset::Offset(offset), self.timeout)
                .with_context(|| format!("rewinding partition {partition} to offset {offset}"))?;
        }
        self.update_readiness();
        Ok(())
    }
}

struct LoopContext<P> {
    shared: Arc<Shared<P>>,
}

impl<P: Processor> ClientContext for LoopContext<P> {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.shared.input_topic) {
            let mut fetch = BTreeMap::new();
            for (id, partition) in &topic.partitions {
                if *id >= 0 && partition.consumer_lag >= 0 {
                    self.shared.processor.lag(*id, partition.consumer_lag);
                }
                if *id >= 0 {
                    fetch.insert(*id, (partition.next_offset, partition.fetchq_cnt));
                }
            }
            *lock(&self.shared.watch.fetch) = (self.shared.watch.now_ms(), fetch);
        }
    }
}

impl<P: Processor> ConsumerContext for LoopContext<P> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else { return };
        let revoked = partition_ids(partitions);
        let shared = &self.shared;
        if consumer.assignment_lost() {
            // Someone else may own them already: the open batch must not commit.
            let aborted = std::mem::take(&mut *lock(&shared.batch));
            if aborted.open
                && let Err(error) = shared.abort_and_rewind(consumer, aborted, "the partition assignment was lost")
            {
                shared.fail(format!("{error:#}"));
            }
        } else if let Err(error) = shared.commit(consumer) {
            shared.fail(format!("commit before revoking {revoked:?}: {error:#}"));
        }
        shared.processor.revoke(&revoked);
        lock(&shared.restores).revoke(&revoked);
        shared.update_readiness();
        tracing::info!(?revoked, lost = consumer.assignment_lost(), "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else { return };
        self.shared.assigned.store(true, std::sync::atomic::Ordering::Release);
        let assigned = partition_ids(partitions);
        if assigned.is_empty() {
            // Joined with nothing (yet) to restore.
            self.shared.update_readiness();
            return;
        }
        // Nothing is processed for a partition before its state is restored by the loop.
        if let Err(error) = consumer.pause(partitions) {
            self.shared.fail(format!("pausing assigned partitions: {error}"));
        }
        tracing::info!(?assigned, "partitions assigned; restoring their state");
        lock(&self.shared.restores).queue(assigned);
        self.shared.update_readiness();
    }
}

/// Runs the loop on the calling thread until `shutdown`; commits the last batch first.
/// Readiness (`health`) waits while assigned partitions are being restored.
pub fn run<P: Processor>(
    kafka: &KafkaConfig,
    settings: &EosSettings,
    processor: Arc<P>,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut producer_config = kafka.producer_config(&settings.client_id);
    producer_config.set("transactional.id", &settings.transactional_id);
    // A transaction begun right after a commit is refused (`CONCURRENT_TRANSACTIONS`) until the
    // coordinator has written the last one's markers, a few ms: librdkafka's 100 ms before
    // asking again was most of the end-to-end latency (benches/README.md). The passthrough wins.
    if !kafka.passthrough().any(|(key, _)| key == "retry.backoff.ms") {
        producer_config.set("retry.backoff.ms", "5");
    }
    if let Some(codec) = &settings.compression {
        producer_config.set("compression.type", codec);
    }
    let mut consumer_config = kafka.consumer_config(&settings.client_id, &settings.group_id);
    // A fetch the broker holds for want of committed data returns within 10 ms (librdkafka
    // waits up to 500): input of a transactional stage is readable when its producer commits.
    if !kafka.passthrough().any(|(key, _)| key == "fetch.wait.max.ms") {
        consumer_config.set("fetch.wait.max.ms", "10");
    }
    if producer_config.get("transaction.timeout.ms").is_none() {
        // 10 s, or less when the session timeout is set shorter: always below it.
        let session = consumer_config.get("session.timeout.ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(45_000);
        let transaction = (TRANSACTION_TIMEOUT.as_millis() as u64).min(session.saturating_sub(1000)).max(1000);
        producer_config.set("transaction.timeout.ms", transaction.to_string());
    }
    check_timeouts(&producer_config, &consumer_config)?;
    let producer: TxProducer = producer_config.create().context("creating the transactional producer")?;
    let timeout = kafka.timeout();
    producer.init_transactions(timeout).context("initialising transactions (fences older instances)")?;
    let shared = Arc::new(Shared {
        processor,
        producer: std::sync::RwLock::new(Arc::new(producer)),
        producer_config,
        producers_replaced: Mutex::new(Vec::new()),
        input_topic: settings.input_topic.clone(),
        batch: Mutex::new(Batch::default()),
        restores: Mutex::new(Restores::default()),
        restores_pending: std::sync::atomic::AtomicBool::new(false),
        assigned: std::sync::atomic::AtomicBool::new(false),
        fatal: Mutex::new(None),
        aborts_in_a_row: Mutex::new(0),
        wedge_after: Mutex::new(crate::watch::fault_after(FAULT_WEDGE_ENV)),
        timeout,
        health: health.clone(),
        watch: Arc::new(Watch::new()),
        metrics: settings.metrics.clone(),
    });
    shared.update_readiness();
    // Static membership (KIP-345): a restarted instance takes its old place in the group at
    // once instead of waiting for the dead member's session to time out.
    consumer_config
        .set("enable.auto.commit", "false")
        // Often enough that the watchdog judges on fresh fetch positions (4 reports per bound).
        .set("statistics.interval.ms", (settings.stall_after.as_millis() as u64 / 4).clamp(250, 5000).to_string())
        .set("group.instance.id", &settings.transactional_id);
    let _watchdog = Watchdog::start(
        shared.watch.clone(),
        settings.stall_after * 2 + timeout * 2,
        format!("{} loop on {}", settings.client_id, settings.input_topic),
    )?;
    let mut restore = None;
    let mut replaced = Vec::<Instant>::new();
    shared.watch.progressed();
    loop {
        let consumer: BaseConsumer<LoopContext<P>> = consumer_config
            .create_with_context(LoopContext { shared: shared.clone() })
            .context("creating the Kafka consumer")?;
        consumer
            .subscribe(&[&settings.input_topic])
            .with_context(|| format!("subscribing to {}", settings.input_topic))?;
        // The fault (tests only) hits the first consumer; its replacement works.
        let fault = if replaced.is_empty() { crate::watch::fault_after(FAULT_STALL_ENV) } else { None };
        let why = match poll_loop(&shared, &consumer, settings, &mut restore, shutdown, fault) {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::ConsumerFailed(why)) => why,
            Err(error) => {
                // Leave without committing anything of the failed batch.
                let _ = shared.producer().abort_transaction(timeout);
                return Err(error);
            }
        };
        // A consumer that failed fatally (e.g. fenced as a static member after its session
        // timed out during a broker outage) is replaced; one that keeps failing ends the loop.
        replaced.retain(|at| at.elapsed() < Duration::from_secs(600));
        replaced.push(Instant::now());
        if replaced.len() > CONSUMER_REPLACEMENTS_LIMIT {
            let _ = shared.producer().abort_transaction(timeout);
            return Err(anyhow!("the Kafka consumer failed {} times in 10 minutes; the last: {why}", replaced.len()));
        }
        tracing::warn!(reason = %why, "replacing the Kafka consumer");
        shared.watch.replaced();
        shared.watch.beat();
        drop(consumer);
        shared.watch.beat();
        shared.forget_consumer_work(&why)?;
    }
}

/// Ends the process when the loop thread stops beating for `limit`: it is stuck inside a call
/// that does not return (a transactional call past its timeout, say), and only a restart by
/// the platform heals that. Stops with the loop (dropped when `run` returns).
struct Watchdog {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    fn start(watch: Arc<Watch>, limit: Duration, what: String) -> anyhow::Result<Watchdog> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        watch.beat();
        std::thread::Builder::new().name("watchdog".into()).spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let silent = watch.since(&watch.heartbeat_ms);
                if silent > limit && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!(
                        "the {what} has not come back from a Kafka call for {:.0} s (limit {:.0} s); exiting so that the platform restarts it",
                        silent.as_secs_f64(),
                        limit.as_secs_f64()
                    );
                    std::process::exit(1);
                }
            }
        })?;
        Ok(Watchdog { stop })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Consumers replaced within 10 minutes before the loop gives up.
const CONSUMER_REPLACEMENTS_LIMIT: usize = 5;

/// Producers replaced within 10 minutes before the loop gives up.
const PRODUCER_REPLACEMENTS_LIMIT: usize = 5;

/// Why [`poll_loop`] returned.
enum Ended {
    Shutdown,
    /// The consumer cannot go on; a new one must replace it.
    ConsumerFailed(String),
}

/// The transaction timeout must stay below the session timeout: otherwise a dead member's open
/// transaction can outlive its membership and hide committed writes from the next owner.
fn check_timeouts(producer: &rdkafka::ClientConfig, consumer: &rdkafka::ClientConfig) -> anyhow::Result<()> {
    let millis = |config: &rdkafka::ClientConfig, key: &str, default: u64| -> anyhow::Result<u64> {
        config.get(key).map_or(Ok(default), |value| {
            value.parse().map_err(|_| anyhow!("kafka.librdkafka.{key} = {value:?} is not a number of milliseconds"))
        })
    };
    let transaction = millis(producer, "transaction.timeout.ms", TRANSACTION_TIMEOUT.as_millis() as u64)?;
    let session = millis(consumer, "session.timeout.ms", 45_000)?;
    anyhow::ensure!(
        transaction < session,
        "kafka.librdkafka: transaction.timeout.ms ({transaction}) must be below session.timeout.ms ({session}), \
         or a dead instance's open transaction can hide committed state from the next owner of its partitions"
    );
    Ok(())
}

/// Judges the loop's progress (about once a second): publishes the stalled seconds, turns
/// readiness 503 while input waits without progress for half of `stall_after`, and returns why
/// the consumer must be replaced once that lasts `stall_after`.
fn check_progress<P: Processor, C: ConsumerContext>(
    shared: &Shared<P>,
    consumer: &BaseConsumer<C>,
    stall_after: Duration,
) -> Option<String> {
    let since = shared.watch.since(&shared.watch.progress_ms);
    if since < stall_after / 2 {
        shared.metrics.stalled_seconds.set(0.0);
        shared.health.done_waiting(STALLED);
        return None;
    }
    let rejoining = shared.watch.rejoining(stall_after);
    match shared.input_waiting(consumer) {
        // A replacement still joining its group has no partitions yet: that is no progress.
        Judgement::Idle if rejoining => None,
        // Nothing to do is not a stall; nor is a broker that does not answer: the clock starts
        // again when it does (an outage is ridden out, not healed).
        Judgement::Idle | Judgement::BrokerAway => {
            shared.watch.progressed();
            shared.metrics.stalled_seconds.set(0.0);
            shared.health.done_waiting(STALLED);
            None
        }
        Judgement::Waiting(waiting) => {
            shared.metrics.stalled_seconds.set(since.as_secs_f64());
            let why = format!(
                "stalled: partitions {waiting:?} of {} have input but nothing was processed for {:.0} s",
                shared.input_topic,
                since.as_secs_f64()
            );
            shared.health.wait_for(STALLED, why.clone());
            // The replacement of a heal gets its own `stall_after` to get going.
            if since < stall_after || rejoining {
                return None;
            }
            shared.metrics.heals.inc();
            Some(format!("{why}; healing by replacing the consumer"))
        }
        Judgement::Stale => None,
    }
}

/// What a progress check found.
enum Judgement {
    /// Assigned partitions with input the loop has not taken.
    Waiting(Vec<i32>),
    /// Nothing waiting.
    Idle,
    /// No fetch report since the last progress: nothing can be said yet.
    Stale,
    /// The broker did not answer.
    BrokerAway,
}

fn poll_loop<P: Processor>(
    shared: &Arc<Shared<P>>,
    consumer: &BaseConsumer<LoopContext<P>>,
    settings: &EosSettings,
    restore: &mut Option<RestoreJob>,
    shutdown: &CancellationToken,
    fault: Option<u64>,
) -> anyhow::Result<Ended> {
    let mut last_consumer_warning: Option<Instant> = None;
    let mut last_check = Instant::now();
    let mut fault = fault;
    loop {
        shared.watch.beat();
        if let Some(error) = lock(&shared.fatal).take() {
            return Err(anyhow!(error));
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            if let Some(why) = check_progress(shared, consumer, settings.stall_after) {
                return Ok(Ended::ConsumerFailed(why));
            }
        }
        if restore.as_ref().is_some_and(|job| job.thread.is_finished())
            && let Some(job) = restore.take()
        {
            shared.finish_restore(consumer, job)?;
        }
        if restore.is_none() {
            *restore = shared.start_restore(shutdown)?;
        }
        if shutdown.is_cancelled() {
            shared.commit(consumer).context("final commit")?;
            consumer.unsubscribe();
            return Ok(Ended::Shutdown);
        }
        // With input in the open batch, only what is already fetched is taken: an empty poll
        // means the input is drained, and the batch commits now rather than on the timer.
        let holding_input = {
            let batch = lock(&shared.batch);
            batch.open && batch.events > 0
        };
        let mut drained = false;
        match consumer.poll(if holding_input { Duration::ZERO } else { Duration::from_millis(20) }) {
            Some(Ok(message)) => match shared.handle(&message) {
                Ok(()) => {
                    shared.watch.progressed();
                    if let Some(left) = fault.as_mut() {
                        *left = left.saturating_sub(1);
                        if *left == 0 {
                            fault = None;
                            tracing::warn!(
                                "{FAULT_STALL_ENV}: pausing every assigned partition (a consumer that stops fetching)"
                            );
                            if let Ok(assignment) = consumer.assignment() {
                                let _ = consumer.pause(&assignment);
                            }
                        }
                    }
                }
                Err(failure) => {
                    drop(message);
                    shared.recover(consumer, failure)?;
                    continue;
                }
            },
            Some(Err(error)) => {
                // A fatal error (e.g. fenced as a static member) may surface as any error, or
                // only through the client's state: asked after every error.
                if let Some((_, text)) = consumer.client().fatal_error() {
                    return Ok(Ended::ConsumerFailed(format!("fatal consumer error: {text}")));
                }
                if let KafkaError::MessageConsumptionFatal(code) = error {
                    return Ok(Ended::ConsumerFailed(format!("fatal consumer error: {code}")));
                }
                // While the broker is away this repeats every poll: one line every 10 s.
                if last_consumer_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(%error, "consumer error");
                    last_consumer_warning = Some(Instant::now());
                }
            }
            None => {
                if let Some((_, text)) = consumer.client().fatal_error() {
                    return Ok(Ended::ConsumerFailed(format!("fatal consumer error: {text}")));
                }
                drained = holding_input;
            }
        }
        if !lock(&shared.batch).open
            && shared.processor.wants_commit()
            && let Err(failure) = shared.open_without_input()
        {
            shared.recover(consumer, failure)?;
            continue;
        }
        // One clock read per message for both the commit decision and the age gauge.
        let (due, age) = {
            let batch = lock(&shared.batch);
            let age = batch.started.map(|started| started.elapsed());
            // A transaction opened without input (`wants_commit`) waits for the interval, so a
            // processor that keeps wanting one is not served empty transactions back to back.
            let due = batch.open
                && ((drained && batch.events > 0)
                    || batch.events >= settings.max_batch_events
                    || age.is_some_and(|age| age >= settings.commit_interval));
            (due, age)
        };
        if due {
            shared.commit(consumer)?;
            shared.processor.uncommitted_age(0.0);
        } else {
            shared.processor.uncommitted_age(age.map_or(0.0, |age| age.as_secs_f64()));
        }
    }
}

/// Cancels the token when dropped: whatever ends the loop's thread, a panic included, stops
/// the rest of the service too instead of leaving it up with nothing processing.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// [`run`] on a thread of its own, awaited without blocking the async runtime. Whatever ends
/// the loop (shutdown, failure or a panic) cancels `shutdown`, so the rest of the service
/// stops too and the process exits (non-zero unless it was asked to stop).
pub async fn run_on_thread<P: Processor>(
    kafka: KafkaConfig,
    settings: EosSettings,
    processor: Arc<P>,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Not ready before the consumer joined its group and restored what it was assigned.
    health.wait_for(RESTORING, format!("joining the consumer group of {}", settings.input_topic));
    let name = format!("{}-loop", settings.client_id);
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let _cancel = CancelOnDrop(shutdown.clone());
        run(&kafka, &settings, processor, &health, &shutdown)
    })?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("joining the processing loop")?
        .map_err(|_| anyhow!("the processing loop panicked"))?
}
