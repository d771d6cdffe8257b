//! The raw-topic normaliser: JSON records from `abm.raw.*` through the same validation and
//! resolution as HTTP. A record's offset is stored only after all its outputs are
//! acknowledged; offsets are stored in arrival order, so a commit never skips an unwritten
//! record. A write that fails is retried with exponential backoff until it succeeds or the
//! service stops (then the record is read again after restart): nothing is dropped. The loop
//! is watched ([`abm::watch`]): a consumer that stops handing out records while its partitions
//! have input is replaced (its stored offsets committed first; the new one resumes there).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use abm::topics::TopicRole;
use abm_schemas::{EventKind, RejectSource, Transport};
use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use abm::watch::StreamWatch;

use crate::metrics::Metrics;
use crate::pipeline::{prepare, split};
use crate::resolve::TalIndex;
use crate::sink::Sink;
use crate::validate::{Arrival, ValidationConfig};

/// Records being written at once; reading pauses when this many are pending.
const MAX_IN_FLIGHT: usize = 2048;

#[derive(Debug)]
pub struct Normaliser {
    pub validation: ValidationConfig,
    pub tal: Arc<TalIndex>,
    pub sink: Sink,
    pub metrics: Metrics,
    /// Raw topic name → the kind its records default to.
    pub kinds: HashMap<String, Option<EventKind>>,
}

use abm::clock::now_ms;

impl Normaliser {
    pub fn kinds_for(topics: &abm::topics::Topics, roles: &[TopicRole]) -> HashMap<String, Option<EventKind>> {
        roles.iter().map(|role| (topics.name(*role).to_owned(), role.raw_kind())).collect()
    }

    /// Processes one raw record: validate, resolve, write (retrying), count.
    async fn process(
        &self,
        topic: String,
        partition: i32,
        offset: i64,
        payload: Vec<u8>,
        shutdown: &CancellationToken,
    ) -> bool {
        let source_name = format!("kafka:{topic}");
        let arrival = Arrival {
            source: &source_name,
            received_at: now_ms(),
            default_kind: self.kinds.get(&topic).copied().flatten(),
            // The raw topics are written by trusted producers (ACLs decide who).
            scope: crate::keys::Scope::Server,
        };
        let source = RejectSource {
            transport: Transport::Kafka,
            write_key: None,
            batch_index: None,
            topic: Some(topic.clone()),
            partition: Some(partition),
            offset: Some(offset),
        };
        let items = split(&payload);
        let items = if items.is_empty() {
            // An empty record is kept too: as malformed JSON.
            vec![crate::pipeline::Item {
                framing_error: Some("empty record".into()),
                ..crate::pipeline::Item::of(&payload)
            }]
        } else {
            items
        };
        self.metrics.batch_size.observe(items.len() as f64);
        let prepared = match prepare(&items, &arrival, &source, &self.validation, &self.tal) {
            Ok(prepared) => prepared,
            Err(error) => {
                tracing::error!(%error, topic, partition, offset, "cannot encode outputs; record not stored");
                return false;
            }
        };
        let write = || async { self.sink.write_all(&prepared.records).await };
        let written = tokio::select! {
            result = write
                .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(100)).with_max_delay(Duration::from_secs(10)).with_jitter().without_max_times())
                .notify(|error, wait| tracing::warn!(%error, ?wait, topic, partition, offset, "write failed; retrying")) => result.is_ok(),
            () = shutdown.cancelled() => false,
        };
        if written {
            self.metrics.count_written("kafka", &prepared);
        }
        written
    }

    /// Runs until `shutdown` on consumers made by `subscribe` (subscribed to the raw topics);
    /// commits the stored offsets before returning. Fails when a consumer cannot be made, or
    /// when consumers had to be replaced too often (see [`StreamWatch::replacing`]).
    pub async fn run(
        self: Arc<Self>,
        subscribe: impl Fn() -> anyhow::Result<StreamConsumer> + Send,
        mut watch: StreamWatch,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut consumer = subscribe()?;
        let mut pending: FuturesOrdered<BoxFuture<'static, (String, i32, i64, bool)>> = FuturesOrdered::new();
        // After a record that could not be written, no later offset may be stored.
        let mut stalled = false;
        let mut fault = abm::watch::fault_after(RAW_FAULT_ENV);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut heal = None;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some((topic, partition, offset, written)) = pending.next(), if !pending.is_empty() => {
                    watch.progressed();
                    stalled |= !written;
                    if !stalled && let Err(error) = consumer.store_offset(&topic, partition, offset) {
                        tracing::warn!(%error, topic, partition, offset, "cannot store offset");
                    }
                }
                _ = tick.tick() => {
                    let busy = !pending.is_empty();
                    heal = tokio::task::block_in_place(|| watch.check(&consumer, busy));
                }
                received = consumer.recv(), if pending.len() < MAX_IN_FLIGHT => match received {
                    Ok(message) => {
                        watch.progressed();
                        abm::watch::inject_fault(&mut fault, &consumer);
                        let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
                        let payload = message.payload().unwrap_or_default().to_vec();
                        let this = self.clone();
                        let stop = shutdown.clone();
                        pending.push_back(
                            async move {
                                let written = this.process(topic.clone(), partition, offset, payload, &stop).await;
                                (topic, partition, offset, written)
                            }
                            .boxed(),
                        );
                    }
                    Err(error) => tracing::warn!(%error, "raw topic consumer error"),
                },
            }
            if let Some(why) = heal {
                // Nothing is in flight (a check while writes are pending never heals): every
                // offset that may be stored is stored, and committed before the swap.
                watch.replacing(&why)?;
                // Blocking calls (a commit, leaving and joining the group): off the runtime.
                let old = consumer;
                consumer = tokio::task::block_in_place(|| {
                    watch.commit_starts(&old);
                    if let Err(error) = old.commit_consumer_state(CommitMode::Sync) {
                        tracing::warn!(%error, "committing the raw-topic offsets before replacing the consumer");
                    }
                    drop(old);
                    subscribe()
                })?;
            }
        }
        // Finish what was read (each write is bounded by the producer's message timeout).
        while let Some((topic, partition, offset, written)) = pending.next().await {
            stalled |= !written;
            if !stalled {
                let _ = consumer.store_offset(&topic, partition, offset);
            }
        }
        if let Err(error) = tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync)) {
            tracing::debug!(%error, "final offset commit");
        }
        Ok(())
    }
}

/// Test-only fault injection: after this many records the first consumer pauses its partitions
/// for good (a consumer that stops fetching), which the watch must heal.
const RAW_FAULT_ENV: &str = "ABMTEST_FAULT_RAW_STALL_AFTER_MESSAGES";
