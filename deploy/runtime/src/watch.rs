//! Progress watch for the loops that read Kafka with a `StreamConsumer` outside a transaction:
//! ingest's raw-topic normaliser and each webhook delivery task. (The transactional loops of
//! the scorer and the alerter have their own, in [`crate::eos`].)
//!
//! A loop tells its [`StreamWatch`] when it makes progress (a message taken, a write done) and
//! asks it about once a second, when nothing of its own is in flight, whether its consumer is
//! wedged. The consumer is judged wedged when, for `stall_after`, the loop made no progress
//! while an assigned partition has input past the loop's position (the high watermark, asked
//! of the broker, is past the offset of the next message the consumer would hand out). Then
//! the loop replaces its consumer, and again every `stall_after` while no progress follows; one
//! that needs replacing more than [`REPLACEMENTS_LIMIT`] times in 10 minutes ends the loop with
//! an error, so the platform restarts the process. A broker that does not answer is not a
//! stall: the clock starts again when it does. While input waits without progress for half of
//! `stall_after`, readiness is 503 and the stalled-seconds gauge says for how long: the time
//! since the last real progress, which a replacement does not reset (a loop that heals and
//! still does not move shows a gauge that keeps rising).

use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, ConsumerContext};

use crate::ops::Health;

/// Consumer replacements within 10 minutes before the loop gives up.
pub const REPLACEMENTS_LIMIT: usize = 5;

/// How long one broker query of a check may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A test-only fault from the environment variable `env`: a positive number of messages.
pub fn fault_after(env: &str) -> Option<u64> {
    std::env::var(env).ok().and_then(|value| value.parse().ok()).filter(|n| *n > 0)
}

/// Counts a message against `fault`; at zero, pauses every assigned partition of `consumer`
/// for good (it stops fetching, as the consumers reported against librdkafka after broker
/// restarts did) and disarms the fault, so the replacement consumer works.
pub fn inject_fault<C: ConsumerContext, K: Consumer<C>>(fault: &mut Option<u64>, consumer: &K) {
    let Some(left) = fault.as_mut() else { return };
    *left -= 1;
    if *left == 0 {
        *fault = None;
        if let Ok(assignment) = consumer.assignment() {
            tracing::warn!("test fault: pausing every assigned partition for good");
            let _ = consumer.pause(&assignment);
        }
    }
}

/// The watch of one loop.
#[derive(Debug)]
pub struct StreamWatch {
    /// Names the loop in logs and in `/readyz` (`"webhook slack"`, `"raw-topic normaliser"`).
    what: String,
    stall_after: Duration,
    /// Where a partition the group has no offset for starts: the earliest offset (true) or the
    /// latest (false: such a partition has nothing waiting for this consumer).
    from_earliest: bool,
    last_progress: Instant,
    /// The last consumer replacement: the next one is due `stall_after` after it.
    last_replaced: Option<Instant>,
    last_check: Instant,
    /// For a partition read from the latest offset with nothing handed out and nothing
    /// committed yet: its high watermark when first seen so (where the consumer starts).
    latest_start: std::collections::HashMap<(String, i32), i64>,
    stalled_seconds: prometheus::Gauge,
    heals: prometheus::IntCounter,
    health: Health,
    replaced: Vec<Instant>,
}

impl StreamWatch {
    pub fn new(
        what: impl Into<String>,
        stall_after: Duration,
        from_earliest: bool,
        stalled_seconds: prometheus::Gauge,
        heals: prometheus::IntCounter,
        health: Health,
    ) -> StreamWatch {
        let now = Instant::now();
        StreamWatch {
            what: what.into(),
            stall_after,
            from_earliest,
            last_progress: now,
            last_replaced: None,
            last_check: now,
            latest_start: std::collections::HashMap::new(),
            stalled_seconds,
            heals,
            health,
            replaced: Vec::new(),
        }
    }

    /// The loop took a message or finished one.
    pub fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    fn health_key(&self) -> String {
        format!("{} stalled", self.what)
    }

    fn clear(&self) {
        self.stalled_seconds.set(0.0);
        self.health.done_waiting(&self.health_key());
    }

    /// Called often (each round of the loop; it checks at most once a second). `busy`: the loop
    /// has work of its own in flight (writes being retried), so a pause is not the consumer's.
    /// Returns why the consumer must be replaced, once input waited `stall_after` without
    /// progress. Queries the broker (at most 2 s per query) on the calling thread: call it from
    /// a blocking-capable context ([`tokio::task::block_in_place`] in async code).
    pub fn check<C: ConsumerContext, K: Consumer<C>>(&mut self, consumer: &K, busy: bool) -> Option<String> {
        // (Not quite a second: a loop that calls this on a one-second tick checks each tick.)
        if self.last_check.elapsed() < Duration::from_millis(900) {
            return None;
        }
        self.last_check = Instant::now();
        let since = self.last_progress.elapsed();
        if busy || since < self.stall_after / 2 {
            self.clear();
            return None;
        }
        let rejoining = self.last_replaced.is_some_and(|at| at.elapsed() < self.stall_after);
        let waiting = match partitions_waiting(consumer, self.from_earliest, &mut self.latest_start) {
            Some(waiting) if !waiting.is_empty() => waiting,
            // A replacement still joining its group has no partitions yet: that is no progress.
            Some(_) if rejoining && consumer.assignment().map_or(true, |a| a.count() == 0) => return None,
            // Nothing to do is not a stall; nor is a broker that does not answer (the clock
            // starts again when it does: an outage is ridden out, not healed).
            _ => {
                self.progressed();
                self.clear();
                return None;
            }
        };
        self.stalled_seconds.set(since.as_secs_f64());
        let why = format!(
            "stalled: partitions {} have input but nothing was taken for {:.0} s",
            waiting.join(", "),
            since.as_secs_f64()
        );
        self.health.wait_for(self.health_key(), why.clone());
        if since < self.stall_after {
            return None;
        }
        if rejoining {
            // Give the replacement its own `stall_after` to get going.
            return None;
        }
        self.heals.inc();
        Some(format!("{why}; healing by replacing the consumer"))
    }

    /// Records a replacement of the consumer; an error when it was replaced too often (the
    /// caller ends the loop with it).
    pub fn replacing(&mut self, why: &str) -> anyhow::Result<()> {
        self.replaced.retain(|at| at.elapsed() < Duration::from_secs(600));
        self.replaced.push(Instant::now());
        self.last_replaced = Some(Instant::now());
        anyhow::ensure!(
            self.replaced.len() <= REPLACEMENTS_LIMIT,
            "the {}'s Kafka consumer had to be replaced {} times in 10 minutes; the last time: {why}",
            self.what,
            self.replaced.len()
        );
        tracing::warn!(loop_name = %self.what, reason = %why, "replacing the Kafka consumer");
        Ok(())
    }
}

impl StreamWatch {
    /// Before the consumer is replaced: a partition read from the latest offset that has handed
    /// nothing out and has nothing committed gets where it started committed, so that its
    /// replacement does not start at a later end and skip what waited (the stall itself).
    /// Blocks (a synchronous commit).
    pub fn commit_starts<C: ConsumerContext, K: Consumer<C>>(&mut self, consumer: &K) {
        let starts = std::mem::take(&mut self.latest_start);
        if starts.is_empty() {
            return;
        }
        let positions = consumer.position().ok();
        let mut list = rdkafka::TopicPartitionList::new();
        for ((topic, partition), start) in starts {
            let handed_out = positions
                .as_ref()
                .and_then(|positions| positions.find_partition(&topic, partition))
                .is_some_and(|position| matches!(position.offset(), Offset::Offset(_)));
            if !handed_out {
                let _ = list.add_partition_offset(&topic, partition, Offset::Offset(start));
            }
        }
        if list.count() > 0
            && let Err(error) = consumer.commit(&list, rdkafka::consumer::CommitMode::Sync)
        {
            tracing::warn!(loop_name = %self.what, %error, "committing where the stalled consumer started");
        }
    }
}

/// `topic[partition]` of the assigned partitions with input past the consumer's position;
/// `None` when the broker does not answer.
fn partitions_waiting<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    from_earliest: bool,
    latest_start: &mut std::collections::HashMap<(String, i32), i64>,
) -> Option<Vec<String>> {
    let assignment = consumer.assignment().ok()?;
    let positions = consumer.position().ok()?;
    let mut waiting = Vec::new();
    for element in assignment.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, QUERY_TIMEOUT).ok()?;
        let position = positions.find_partition(topic, partition).and_then(|p| match p.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        });
        let position = match position {
            Some(offset) => offset,
            // Nothing handed out yet: from the group's committed offset, else the reset policy.
            None => {
                let mut list = rdkafka::TopicPartitionList::new();
                list.add_partition(topic, partition);
                let committed = consumer.committed_offsets(list, QUERY_TIMEOUT).ok()?;
                match committed.elements().first().map(rdkafka::topic_partition_list::TopicPartitionListElem::offset) {
                    Some(Offset::Offset(offset)) => offset,
                    _ if from_earliest => low,
                    // It starts at the end it found: what was written since waits for it.
                    _ => *latest_start.entry((topic.to_owned(), partition)).or_insert(high),
                }
            }
        };
        if high > position {
            waiting.push(format!("{topic}[{partition}]"));
        }
    }
    Some(waiting)
}
