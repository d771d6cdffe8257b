//! The scorer's directory: which instance holds which `abm.engagement` partition, and where its
//! HTTP API answers.
//!
//! Every instance writes one record to the compacted topic `abm.scorer-members` (key = its
//! `instance_id`, value = a [`Member`] in JSON) whenever the partitions it holds change, and
//! every second besides; on a clean shutdown it writes a tombstone. Every instance reads the
//! topic whole and keeps following it. A record older than `scorer.member_ttl_ms` (by its
//! `published_at`) is a member that died without a word: it is left out.
//!
//! The directory only routes. What decides an answer is the instance that holds the account's
//! partition ([`Ownership`], kept by the processing loop as it restores and drops partitions):
//! it answers only for a partition it holds *and* has restored, and a forwarded request is never
//! forwarded again. A stale directory therefore costs a `503`, never a wrong answer.
//!
//! An account's partition is the one `abm.engagement`'s producers put its events in:
//! librdkafka's default `consistent_random` partitioner, CRC-32 (IEEE) of the key modulo the
//! partition count ([`partition_of`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use abm::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The partition of `abm.engagement` that carries `account_id`'s events: CRC-32 of the id's
/// bytes modulo `partitions`, as librdkafka's default partitioner (`consistent_random`) puts a
/// non-empty key.
pub fn partition_of(account_id: &str, partitions: i32) -> i32 {
    let count = u32::try_from(partitions.max(1)).unwrap_or(1);
    // Below 2^31: the count is an i32.
    i32::try_from(crc32fast::hash(account_id.as_bytes()) % count).unwrap_or(0)
}

/// Whether this instance can answer for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Assigned and restored: its accounts are here.
    Ready,
    /// Assigned, its state still being read from the changelog.
    Restoring,
    /// Not assigned here.
    No,
}

#[derive(Debug, Default)]
struct Held {
    ready: BTreeSet<i32>,
    restoring: BTreeSet<i32>,
}

/// The partitions this instance holds, as the processing loop restores and drops them.
#[derive(Debug, Default)]
pub struct Ownership {
    held: RwLock<Held>,
    version: AtomicU64,
}

impl Ownership {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `partitions` were assigned: their state is being restored.
    pub fn restoring(&self, partitions: &[i32]) {
        let mut held = self.write();
        for partition in partitions {
            held.ready.remove(partition);
            held.restoring.insert(*partition);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// `partitions` are restored: this instance answers for their accounts. Only those still
    /// being restored: one revoked while its restore ran stays released.
    pub fn ready(&self, partitions: &[i32]) {
        let mut held = self.write();
        for partition in partitions {
            if held.restoring.remove(partition) {
                held.ready.insert(*partition);
            }
        }
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// `partitions` were revoked (or their batch aborted, to be restored again).
    pub fn released(&self, partitions: &[i32]) {
        let mut held = self.write();
        for partition in partitions {
            held.restoring.remove(partition);
            held.ready.remove(partition);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn holding(&self, partition: i32) -> Holding {
        let held = self.read();
        if held.ready.contains(&partition) {
            Holding::Ready
        } else if held.restoring.contains(&partition) {
            Holding::Restoring
        } else {
            Holding::No
        }
    }

    /// (ready, restoring), sorted.
    pub fn snapshot(&self) -> (Vec<i32>, Vec<i32>) {
        let held = self.read();
        (held.ready.iter().copied().collect(), held.restoring.iter().copied().collect())
    }

    /// Changes with every change of the partitions held.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}

/// One instance's record in `abm.scorer-members` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub instance_id: String,
    /// Base URL of its HTTP API (`scorer.advertised_url`).
    pub url: String,
    /// `abm.engagement`'s partition count as this instance knows it.
    pub partitions: i32,
    /// Partitions assigned and restored.
    pub ready: Vec<i32>,
    /// Partitions assigned and being restored.
    pub restoring: Vec<i32>,
    /// When it was written (epoch ms, the writer's clock).
    pub published_at: i64,
}

/// Where a query for one partition goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This instance holds it, restored.
    Here,
    /// Another instance holds it, restored: its base URL.
    There { instance_id: String, url: String },
    /// Nobody can answer now (being restored or moved, or its holder is gone): the reason.
    Unavailable(String),
}

/// Every instance's record, as read from `abm.scorer-members`.
#[derive(Debug)]
pub struct Directory {
    me: String,
    partitions: i32,
    ttl_ms: i64,
    ownership: Arc<Ownership>,
    /// Each member's latest record and when it was read here.
    members: RwLock<HashMap<String, (Member, std::time::Instant)>>,
}

/// How far a writer's clock may be behind the reader's before its records look too old.
pub const MAX_CLOCK_SKEW_MS: i64 = 60_000;

impl Directory {
    pub fn new(me: &str, partitions: i32, ttl: Duration, ownership: Arc<Ownership>) -> Directory {
        Directory {
            me: me.to_owned(),
            partitions: partitions.max(1),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            ownership,
            members: RwLock::default(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// `abm.engagement`'s partition count.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// A record read from the topic (`None`: a tombstone). Records that do not parse are left
    /// out (and said once each, by the caller).
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key = String::from_utf8_lossy(key).into_owned();
        let mut members = self.members.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            None => {
                members.remove(&key);
                Ok(())
            }
            Some(bytes) => {
                let member: Member = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
                if member.instance_id != key {
                    return Err(format!("the record's instance_id {:?} is not its key", member.instance_id));
                }
                // One partition: an instance's records arrive in the order it wrote them.
                members.insert(key, (member, std::time::Instant::now()));
                Ok(())
            }
        }
    }

    /// The other instances that wrote within the TTL: their latest record was read here within
    /// the TTL (this machine's clock), and was written not longer ago than the TTL plus
    /// [`MAX_CLOCK_SKEW_MS`] by `now` (so that the records of long-gone instances, read again
    /// at start-up, do not count; a writer's clock may be somewhat behind).
    pub fn live_peers(&self, now: i64) -> Vec<Member> {
        let members = self.members.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ttl = Duration::from_millis(u64::try_from(self.ttl_ms).unwrap_or(u64::MAX));
        let mut live: Vec<Member> = members
            .values()
            .filter(|(member, read_at)| {
                member.instance_id != self.me
                    && read_at.elapsed() <= ttl
                    && now - member.published_at <= self.ttl_ms.saturating_add(MAX_CLOCK_SKEW_MS)
            })
            .map(|(member, _)| member.clone())
            .collect();
        live.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        live
    }

    /// Where a query for `partition` goes at `now`. `forwarded`: the query came from another
    /// instance, which must not be answered by a second hop.
    pub fn route(&self, partition: i32, now: i64, forwarded: bool) -> Route {
        match self.ownership.holding(partition) {
            Holding::Ready => return Route::Here,
            Holding::Restoring => {
                return Route::Unavailable(format!("partition {partition} is being restored on this instance"));
            }
            Holding::No if forwarded => {
                return Route::Unavailable(format!(
                    "partition {partition} is not held by this instance (it moved since the query was routed)"
                ));
            }
            Holding::No => {}
        }
        let peers = self.live_peers(now);
        if let Some(other) = peers.iter().find(|member| member.partitions != self.partitions) {
            return Route::Unavailable(format!(
                "instance {} counts {} partitions of abm.engagement, this one {}: restart the instances that started before the topic changed",
                other.instance_id, other.partitions, self.partitions
            ));
        }
        if let Some(restoring) = peers.iter().find(|member| member.restoring.contains(&partition)) {
            return Route::Unavailable(format!(
                "partition {partition} is being restored on instance {}",
                restoring.instance_id
            ));
        }
        // Two claims happen while a partition moves: the latest record is the likelier holder
        // (the other answers 503 if asked).
        match peers.iter().filter(|member| member.ready.contains(&partition)).max_by_key(|member| member.published_at) {
            Some(owner) => Route::There { instance_id: owner.instance_id.clone(), url: owner.url.clone() },
            None => Route::Unavailable(format!("no live instance holds partition {partition} (it is being moved)")),
        }
    }

    /// This instance's record as of now.
    pub fn own_record(&self, url: &str, now: i64) -> Member {
        let (ready, restoring) = self.ownership.snapshot();
        Member {
            instance_id: self.me.clone(),
            url: url.to_owned(),
            partitions: self.partitions,
            ready,
            restoring,
            published_at: now,
        }
    }
}

/// How often an instance writes its record when nothing changed.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Writes this instance's record on every change of its partitions and every [`HEARTBEAT`],
/// on a thread of its own, until `shutdown`; then a tombstone. Failures to write are logged and
/// tried again at the next beat (the record's TTL covers a short outage).
pub fn publish(
    kafka: &KafkaConfig,
    topic: &str,
    directory: Arc<Directory>,
    url: String,
    held: prometheus::IntGaugeVec,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = kafka.producer_config("abm-scorer-directory").create()?;
    let topic = topic.to_owned();
    let thread = std::thread::Builder::new().name("abm-directory".into()).spawn(move || {
        let mut written: Option<(u64, std::time::Instant)> = None;
        let send = |value: Option<&[u8]>| {
            let mut record = BaseRecord::<[u8], [u8]>::to(&topic).key(directory.me().as_bytes());
            if let Some(value) = value {
                record = record.payload(value);
            }
            if let Err((error, _)) = producer.send(record) {
                tracing::warn!(%error, topic, "cannot write this instance's directory record; trying again");
            }
        };
        while !shutdown.is_cancelled() {
            let version = directory.ownership().version();
            let due = written.is_none_or(|(seen, at)| seen != version || at.elapsed() >= HEARTBEAT);
            if due {
                let record = directory.own_record(&url, abm::clock::now_ms());
                held.with_label_values(&["ready"]).set(record.ready.len() as i64);
                held.with_label_values(&["restoring"]).set(record.restoring.len() as i64);
                match serde_json::to_vec(&record) {
                    Ok(bytes) => send(Some(&bytes)),
                    Err(error) => tracing::error!(%error, "cannot encode the directory record"),
                }
                written = Some((version, std::time::Instant::now()));
            }
            producer.poll(Duration::from_millis(50));
        }
        send(None);
        if let Err(error) = producer.flush(Duration::from_secs(2)) {
            tracing::warn!(%error, "the directory's tombstone was not written: peers forget this instance after its TTL");
        }
    })?;
    Ok(thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, ready: &[i32], restoring: &[i32], published_at: i64) -> Vec<u8> {
        serde_json::to_vec(&Member {
            instance_id: id.into(),
            url: format!("http://{id}:8081"),
            partitions: 6,
            ready: ready.to_vec(),
            restoring: restoring.to_vec(),
            published_at,
        })
        .expect("encodes")
    }

    #[test]
    fn the_partition_is_crc32_of_the_key_modulo_the_count() {
        // CRC-32 (IEEE) of "123456789" is 0xCBF43926, the standard check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(partition_of("123456789", 6), (0xCBF4_3926_u32 % 6) as i32);
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0, "a count below 1 is taken as 1");
    }

    #[test]
    fn a_query_goes_to_the_restored_holder_and_never_to_a_stale_one() {
        let ownership = Arc::new(Ownership::default());
        let directory = Directory::new("a", 6, Duration::from_secs(10), ownership.clone());
        ownership.restoring(&[0, 1]);
        ownership.ready(&[0]);
        directory.apply(b"b", Some(&member("b", &[2, 3], &[4], 1_000))).expect("applies");
        directory.apply(b"c", Some(&member("c", &[5], &[], 1_000))).expect("applies");
        let now = 5_000;
        assert_eq!(directory.route(0, now, false), Route::Here);
        assert!(
            matches!(directory.route(1, now, false), Route::Unavailable(reason) if reason.contains("restored on this"))
        );
        assert_eq!(
            directory.route(2, now, false),
            Route::There { instance_id: "b".into(), url: "http://b:8081".into() }
        );
        assert!(matches!(directory.route(4, now, false), Route::Unavailable(reason) if reason.contains("instance b")));
        // A forwarded query is answered here or not at all.
        assert!(matches!(directory.route(2, now, true), Route::Unavailable(_)));
        assert_eq!(directory.route(0, now, true), Route::Here);
        // c's record was written long before: its partition has no live holder (the record was
        // read just now, as at start-up, but its writer's time is older than TTL + skew).
        let late = 1_000 + 10_000 + MAX_CLOCK_SKEW_MS + 1;
        assert!(matches!(directory.route(5, late, false), Route::Unavailable(reason) if reason.contains("no live")));
        // Two claims while a partition moves: the latest record wins.
        directory.apply(b"c", Some(&member("c", &[5, 2], &[], 2_000))).expect("applies");
        let c = Route::There { instance_id: "c".into(), url: "http://c:8081".into() };
        assert_eq!(directory.route(2, now, false), c);
        // A member counting another number of partitions makes every remote route a 503.
        let mut odd: Member = serde_json::from_slice(&member("e", &[], &[], 2_000)).expect("json");
        odd.partitions = 12;
        directory.apply(b"e", Some(&serde_json::to_vec(&odd).expect("json"))).expect("applies");
        assert!(
            matches!(directory.route(2, now, false), Route::Unavailable(reason) if reason.contains("12 partitions"))
        );
        directory.apply(b"e", None).expect("applies");
        // A tombstone removes the member.
        directory.apply(b"b", None).expect("applies");
        assert!(matches!(directory.route(3, now, false), Route::Unavailable(_)));
        // Released partitions are no longer answered here; one released while it was being
        // restored is not made ready by its restore's end.
        ownership.released(&[0]);
        assert!(matches!(directory.route(0, now, true), Route::Unavailable(_)));
        ownership.released(&[1]);
        ownership.ready(&[1]);
        assert_eq!(ownership.holding(1), Holding::No);
        // A record whose key is not its instance is refused.
        assert!(directory.apply(b"x", Some(&member("y", &[], &[], 1))).is_err());
        assert!(directory.apply(b"x", Some(b"not json")).is_err());
    }
}
