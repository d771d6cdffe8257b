//! An exactly-once consume → process → produce loop over Kafka transactions.
//!
//! Mechanism only; what a message means is the [`Processor`]'s business. One thread polls the
//! input topic in a consumer group. Every `commit_interval` (and before partitions are revoked,
//! and at shutdown) one transaction commits, atomically, everything the processor wrote since
//! the last one plus the input offsets it covers (`send_offsets_to_transaction`, as Kafka
//! Streams' `exactly_once_v2`). Newly assigned partitions are paused inside the rebalance
//! callback and resumed once the processor has restored their state, outside it.
//!
//! A failed transaction ends the loop with an error: the processor's in-memory state may hold
//! effects of the aborted batch, so the process stops and restarts from the last commit. A
//! restarted instance with the same `transactional_id` fences its predecessor at once.

use std::collections::BTreeMap;
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

/// What the loop drives. All methods run on the loop's thread.
pub trait Processor: Send + Sync + 'static {
    /// Handles one input message inside the open transaction, writing outputs to `out`.
    fn process(&self, message: &BorrowedMessage<'_>, out: &Outbox<'_>) -> anyhow::Result<()>;
    /// Writes the batch's coalesced outputs (e.g. changed state) just before it commits.
    fn before_commit(&self, out: &Outbox<'_>) -> anyhow::Result<()>;
    /// Rebuilds the state of newly assigned input partitions. May block; runs outside callbacks.
    fn restore(&self, partitions: &[i32]) -> anyhow::Result<()>;
    /// Drops the state of revoked partitions (after their last commit).
    fn revoke(&self, partitions: &[i32]);
    /// After each committed transaction.
    fn committed(&self, _duration: Duration) {}
    /// Age of the oldest uncommitted input (0 when all is committed), after each poll.
    fn uncommitted_age(&self, _seconds: f64) {}
    /// Consumer lag of an input partition, from librdkafka's statistics.
    fn lag(&self, _partition: i32, _lag: i64) {}
}

/// Writes records inside the open transaction.
pub struct Outbox<'a> {
    producer: &'a ThreadedProducer<DefaultProducerContext>,
}

impl std::fmt::Debug for Outbox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

impl Outbox<'_> {
    /// Queues a record (to `partition` if given, else by key), waiting while the queue is full.
    pub fn send(&self, topic: &str, key: &str, payload: &[u8], partition: Option<i32>) -> anyhow::Result<()> {
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
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
                Err((error, _)) => return Err(anyhow!("producing to {topic}: {error}")),
            }
        }
    }
}

impl Outbox<'_> {
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
        let received_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
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
}

#[derive(Debug, Default)]
struct Batch {
    open: bool,
    started: Option<Instant>,
    events: usize,
    /// Next offset to consume, per input partition.
    offsets: BTreeMap<i32, i64>,
}

struct Shared<P> {
    processor: Arc<P>,
    producer: ThreadedProducer<DefaultProducerContext>,
    input_topic: String,
    batch: Mutex<Batch>,
    to_restore: Mutex<Vec<i32>>,
    fatal: Mutex<Option<String>>,
    timeout: Duration,
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

    fn outbox(&self) -> Outbox<'_> {
        Outbox { producer: &self.producer }
    }

    fn handle(&self, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let mut batch = lock(&self.batch);
        if !batch.open {
            self.producer.begin_transaction().context("beginning a transaction")?;
            batch.open = true;
            batch.started = Some(Instant::now());
        }
        batch.offsets.insert(message.partition(), message.offset() + 1);
        batch.events += 1;
        drop(batch);
        self.processor.process(message, &self.outbox())
    }

    /// Commits the open batch as one transaction; no-op when none is open.
    fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> anyhow::Result<()> {
        let mut batch = lock(&self.batch);
        if !batch.open {
            return Ok(());
        }
        let started = Instant::now();
        self.processor.before_commit(&self.outbox())?;
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in &batch.offsets {
            offsets.add_partition_offset(&self.input_topic, *partition, Offset::Offset(*offset))?;
        }
        let group = consumer.group_metadata().ok_or_else(|| anyhow!("the consumer has no group metadata"))?;
        self.producer
            .send_offsets_to_transaction(&offsets, &group, self.timeout)
            .context("adding input offsets to the transaction")?;
        self.await_deliveries();
        self.producer.commit_transaction(self.timeout).context("committing the transaction")?;
        tracing::debug!(events = batch.events, took = ?started.elapsed(), "transaction committed");
        *batch = Batch::default();
        self.processor.committed(started.elapsed());
        Ok(())
    }

    /// Waits (in 1 ms steps, at most the Kafka timeout) until every record of the transaction is
    /// acknowledged. `commit_transaction` flushes by itself, but rdkafka's flush waits for
    /// delivery reports in polls of up to 100 ms, and with a threaded producer its polling thread
    /// takes those reports first: every commit would then last at least 100 ms.
    fn await_deliveries(&self) {
        let deadline = Instant::now() + self.timeout;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn restore_pending<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> anyhow::Result<()> {
        let pending: Vec<i32> = std::mem::take(&mut *lock(&self.to_restore));
        if pending.is_empty() {
            return Ok(());
        }
        self.processor.restore(&pending)?;
        let mut list = TopicPartitionList::new();
        for partition in &pending {
            list.add_partition(&self.input_topic, *partition);
        }
        consumer.resume(&list).with_context(|| format!("resuming partitions {pending:?}"))?;
        Ok(())
    }
}

struct LoopContext<P> {
    shared: Arc<Shared<P>>,
}

impl<P: Processor> ClientContext for LoopContext<P> {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.shared.input_topic) {
            for (id, partition) in &topic.partitions {
                if *id >= 0 && partition.consumer_lag >= 0 {
                    self.shared.processor.lag(*id, partition.consumer_lag);
                }
            }
        }
    }
}

impl<P: Processor> ConsumerContext for LoopContext<P> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else { return };
        let revoked = partition_ids(partitions);
        if consumer.assignment_lost() {
            // Someone else owns them already: the open batch must not commit.
            self.shared.fail("partition assignment lost".into());
        } else if let Err(error) = self.shared.commit(consumer) {
            self.shared.fail(format!("commit before revoking {revoked:?}: {error:#}"));
        }
        self.shared.processor.revoke(&revoked);
        lock(&self.shared.to_restore).retain(|p| !revoked.contains(p));
        tracing::info!(?revoked, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else { return };
        let assigned = partition_ids(partitions);
        if assigned.is_empty() {
            return;
        }
        // Nothing is processed for a partition before its state is restored by the loop.
        if let Err(error) = consumer.pause(partitions) {
            self.shared.fail(format!("pausing assigned partitions: {error}"));
        }
        tracing::info!(?assigned, "partitions assigned; restoring their state");
        lock(&self.shared.to_restore).extend(assigned);
    }
}

/// Runs the loop on the calling thread until `shutdown`; commits the last batch first.
pub fn run<P: Processor>(
    kafka: &KafkaConfig,
    settings: &EosSettings,
    processor: Arc<P>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut producer_config = kafka.producer_config(&settings.client_id);
    producer_config.set("transactional.id", &settings.transactional_id).set("transaction.timeout.ms", "60000");
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config.create().context("creating the transactional producer")?;
    let timeout = kafka.timeout();
    producer.init_transactions(timeout).context("initialising transactions (fences older instances)")?;
    let shared = Arc::new(Shared {
        processor,
        producer,
        input_topic: settings.input_topic.clone(),
        batch: Mutex::new(Batch::default()),
        to_restore: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        timeout,
    });
    let mut consumer_config = kafka.consumer_config(&settings.client_id, &settings.group_id);
    // Static membership (KIP-345): a restarted instance takes its old place in the group at
    // once instead of waiting for the dead member's session to time out.
    consumer_config
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "5000")
        .set("group.instance.id", &settings.transactional_id);
    let consumer: BaseConsumer<LoopContext<P>> = consumer_config
        .create_with_context(LoopContext { shared: shared.clone() })
        .context("creating the Kafka consumer")?;
    consumer.subscribe(&[&settings.input_topic]).with_context(|| format!("subscribing to {}", settings.input_topic))?;

    let result = poll_loop(&shared, &consumer, settings, shutdown);
    if result.is_err() {
        // Leave without committing anything of the failed batch.
        let _ = shared.producer.abort_transaction(timeout);
    }
    result
}

fn poll_loop<P: Processor>(
    shared: &Arc<Shared<P>>,
    consumer: &BaseConsumer<LoopContext<P>>,
    settings: &EosSettings,
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
        // One clock read per message for both the commit decision and the age gauge.
        let (due, age) = {
            let batch = lock(&shared.batch);
            let age = batch.started.map(|started| started.elapsed());
            let due = batch.open
                && (batch.events >= settings.max_batch_events
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

/// [`run`] on a thread of its own, awaited without blocking the async runtime. Whatever ends
/// the loop (shutdown or failure) cancels `shutdown`, so the rest of the service stops too.
pub async fn run_on_thread<P: Processor>(
    kafka: KafkaConfig,
    settings: EosSettings,
    processor: Arc<P>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = format!("{}-loop", settings.client_id);
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let result = run(&kafka, &settings, processor, &shutdown);
        shutdown.cancel();
        result
    })?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("joining the processing loop")?
        .map_err(|_| anyhow!("the processing loop panicked"))?
}
