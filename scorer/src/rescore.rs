//! Re-scoring a partition under the configured model while another one serves it (README,
//! "Changing the model").
//!
//! A partition whose restored state was built by another model is served by that model (the
//! live loop applies its events with it, its crossings alert as before) while a [`Shadow`]
//! applies the partition's retained history, from the beginning of `abm.engagement`, to fresh
//! states under the configured model, on a thread of its own. The shadow never applies an event
//! the live loop has not applied yet (`live_last`): it waits for it. Once it has applied every
//! event the live loop has (`applied_through >= live_last`), the loop switches the partition in
//! its next transaction (`ScorerProcessor::before_commit`): the shadow's states replace the
//! live ones, written whole, and the shadow's recent crossings go out marked `replayed`.
//!
//! Nothing of a shadow is durable: a shadow that is stopped (the partition revoked, a batch
//! aborted, the process killed) starts again from the beginning when the partition is
//! restored, and the switch is one transaction, so a re-score is done exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use abm::kafka::KafkaConfig;
use abm_schemas::{EngagementEvent, ScoreCrossing};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::{AccountScoreState, Applied, Engine};
use crate::metrics::Metrics;
use crate::processor::{Tal, account_of};

/// How a re-score runs (`[scorer]`).
#[derive(Debug, Clone)]
pub struct RescoreSettings {
    /// The live loop's consumer group: its committed offsets say what the live state holds.
    pub group_id: String,
    pub topic: String,
    /// Crossings found within this long of now are sent at the switch (marked replayed).
    pub window_ms: i64,
    /// Events per second a re-score applies at most (0: as fast as it can).
    pub max_events_per_second: u64,
}

/// What a shadow has built so far.
#[derive(Debug, Default)]
pub struct ShadowState {
    pub accounts: HashMap<Box<str>, AccountScoreState>,
    /// Crossings within the window of now when found (the rest are counted in `recorded`).
    pub crossings: Vec<ScoreCrossing>,
    pub recorded: u64,
    /// Every committed event of the partition up to this offset is applied (-1: none yet).
    pub applied_through: i64,
    pub events: u64,
}

/// One partition's re-score.
#[derive(Debug)]
pub struct Shadow {
    pub partition: i32,
    /// The model it re-scores under.
    pub engine: Arc<Engine>,
    state: Mutex<ShadowState>,
    /// The offset of the last event the live loop applied (or, at first, the last before its
    /// committed offset): the shadow applies nothing beyond it.
    live_last: AtomicI64,
    /// Set once `live_last` holds the live loop's committed position: never caught up before.
    ready: AtomicBool,
    stop: AtomicBool,
    started: Instant,
}

impl Shadow {
    pub fn lock(&self) -> MutexGuard<'_, ShadowState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live loop applied the event at `offset`.
    pub fn live_applied(&self, offset: i64) {
        self.live_last.fetch_max(offset, Ordering::AcqRel);
    }

    pub fn live_last(&self) -> i64 {
        self.live_last.load(Ordering::Acquire)
    }

    /// Whether it holds every event the live state holds (and knows what that is).
    pub fn caught_up(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.lock().applied_through >= self.live_last()
    }

    /// Offsets it still has to apply before it catches up.
    pub fn behind(&self) -> i64 {
        (self.live_last() - self.lock().applied_through).max(0)
    }

    /// Stops its thread (it checks between events).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts re-scoring `partition` under `engine` on a thread of its own.
    pub fn start(
        partition: i32,
        engine: Arc<Engine>,
        kafka: KafkaConfig,
        settings: RescoreSettings,
        tal: Arc<Tal>,
        metrics: Metrics,
    ) -> Arc<Shadow> {
        let shadow = Arc::new(Shadow {
            partition,
            engine,
            state: Mutex::new(ShadowState { applied_through: -1, ..ShadowState::default() }),
            live_last: AtomicI64::new(-1),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            started: Instant::now(),
        });
        let running = shadow.clone();
        let spawned = std::thread::Builder::new().name(format!("rescore-{partition}")).spawn(move || {
            while !running.stopped() {
                match running.run(&kafka, &settings, &tal, &metrics) {
                    Ok(()) => return,
                    Err(error) => {
                        // Its state is kept: it goes on from where it was once a reader is back.
                        tracing::warn!(partition, %error, "re-score: reading abm.engagement failed; trying again in 5 s");
                        std::thread::sleep(Duration::from_secs(5));
                    }
                }
            }
        });
        if let Err(error) = spawned {
            tracing::error!(partition, %error, "re-score: cannot start its thread; the partition stays on its model");
        }
        shadow
    }

    fn run(&self, kafka: &KafkaConfig, settings: &RescoreSettings, tal: &Tal, metrics: &Metrics) -> anyhow::Result<()> {
        let topic = settings.topic.as_str();
        let partition = self.partition;
        // What the live state holds: every event before the group's committed offset.
        let probe: BaseConsumer = kafka
            .client_config("abm-scorer-rescore")
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| anyhow::anyhow!("creating a reader for {topic}: {e}"))?;
        let mut asked = TopicPartitionList::new();
        asked.add_partition(topic, partition);
        let committed = probe
            .committed_offsets(asked, kafka.timeout())
            .map_err(|e| anyhow::anyhow!("committed offset of {topic} [{partition}]: {e}"))?;
        if let Some(Offset::Offset(offset)) = committed.find_partition(topic, partition).map(|e| e.offset()) {
            self.live_applied(offset - 1);
        }
        drop(probe);
        self.ready.store(true, Ordering::Release);
        let reader: BaseConsumer = kafka
            .client_config("abm-scorer-rescore")
            .set("group.id", format!("{}-rescore", settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("queued.max.messages.kbytes", "16384")
            .set("max.partition.fetch.bytes", "8388608")
            .set("fetch.queue.backoff.ms", "20")
            .create()
            .map_err(|e| anyhow::anyhow!("creating a reader for {topic}: {e}"))?;
        let from = match self.lock().applied_through {
            -1 => Offset::Beginning,
            through => Offset::Offset(through + 1),
        };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, from).map_err(|e| anyhow::anyhow!("{e}"))?;
        reader.assign(&list).map_err(|e| anyhow::anyhow!("assigning {topic} [{partition}]: {e}"))?;
        let mut pending: Option<OwnedMessage> = None;
        let mut second = (Instant::now(), 0u64);
        while !self.stopped() {
            if let Some(message) = pending.take() {
                if message.offset() > self.live_last() {
                    // Not applied by the live loop yet: wait for it (the reader fetches ahead
                    // meanwhile, up to its queue's bound).
                    pending = Some(message);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                self.apply(message.key(), message.payload(), message.offset(), settings.window_ms, tal, metrics);
            }
            if settings.max_events_per_second > 0 {
                if second.0.elapsed() >= Duration::from_secs(1) {
                    second = (Instant::now(), 0);
                } else if second.1 >= settings.max_events_per_second {
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(second.0.elapsed()));
                    continue;
                }
            }
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    second.1 += 1;
                    if message.offset() > self.live_last() {
                        let mut state = self.lock();
                        state.applied_through = state.applied_through.max(message.offset() - 1);
                        drop(state);
                        pending = Some(message.detach());
                    } else {
                        self.apply(
                            message.key(),
                            message.payload(),
                            message.offset(),
                            settings.window_ms,
                            tal,
                            metrics,
                        );
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                    // At the end: every committed event before the reader's position is applied
                    // (before the last stable offset when nothing was read: a history all
                    // aged out; the read_committed reader's high watermark is that offset).
                    let position = reader
                        .position()
                        .ok()
                        .and_then(|list| {
                            list.find_partition(topic, partition).and_then(|e| match e.offset() {
                                Offset::Offset(offset) => Some(offset),
                                _ => None,
                            })
                        })
                        .or_else(|| {
                            reader.fetch_watermarks(topic, partition, kafka.timeout()).ok().map(|(_, high)| high)
                        });
                    if let Some(position) = position {
                        let mut state = self.lock();
                        state.applied_through = state.applied_through.max(position - 1);
                    }
                }
                Some(Err(error)) => tracing::warn!(partition, %error, "re-score: reader error"),
                None => {}
            }
        }
        Ok(())
    }

    /// Applies one record of the partition (an event the scorer would reject is skipped, as the
    /// live loop rejected it).
    fn apply(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        offset: i64,
        window_ms: i64,
        tal: &Tal,
        metrics: &Metrics,
    ) {
        let payload = payload.unwrap_or_default();
        let event = loop {
            match abm_schemas::decode::<EngagementEvent>(payload) {
                Ok(event) => break Some(event),
                // The registry did not answer: wait for it, as the live loop does.
                Err(error) if error.is_retryable() && !self.stopped() => std::thread::sleep(Duration::from_secs(1)),
                Err(_) => break None,
            }
        };
        let now = abm::clock::now_ms();
        let mut state = self.lock();
        if let Some(mut event) = event
            && let Ok(account_id) = account_of(&mut event, key)
        {
            let entry = tal.get(&account_id);
            let membership = entry.as_ref().map(|entry| entry.membership()).unwrap_or_default();
            let ShadowState { accounts, crossings, recorded, .. } = &mut *state;
            let account = match accounts.get_mut(account_id.as_str()) {
                Some(account) => account,
                None => accounts.entry(account_id.as_str().into()).or_default(),
            };
            if let Applied::Scored { crossings: found, .. } =
                self.engine.apply(&account_id, account, &event, membership)
            {
                for crossing in found {
                    if crossing.as_of >= now - window_ms {
                        crossings.push(crossing);
                    } else {
                        *recorded += 1;
                    }
                }
            }
        }
        state.applied_through = state.applied_through.max(offset);
        state.events += 1;
        metrics.rescore_events.inc();
    }
}
