//! What the scorer writes to its changelog (`abm.scorer.state`) for a changed account, and how a
//! restore reads it back.
//!
//! A typical account is one `AccountState` record under its id, rewritten whole when it
//! changes. A hot account (more than [`SPLIT_ABOVE`] entries in its window, cap counters and
//! seen ids together) is written *split*: a head record under its id (everything else, and the
//! list of its chunks) and `AccountStateChunk` records, each a run of about 32 entries named
//! by the hash of its content ([`AccountScoreState::chunk_refs`]). A commit writes the head,
//! the chunks that are new since the account's last write, and a tombstone for each chunk no
//! longer listed: an event appended to a hot account rewrites its head and one small chunk,
//! not its whole state. A split account is written whole again once it is below
//! [`UNSPLIT_BELOW`] entries (its chunks deleted).
//!
//! A chunk's content never changes under its key, and the head and its chunks are written in
//! one transaction, so any committed prefix of the changelog (compacted or not) holds every
//! chunk its latest heads list.

pub mod wire;

use std::collections::{HashMap, HashSet};

use abm_schemas::{AccountState, AccountStateChunk, StateStructure};

pub use wire::{ChunkRef, join_chunk};

use crate::engine::{AccountScoreState, Engine};
use crate::store::PartitionAccounts;

/// A state with more entries than this (window + cap counters + seen ids) is written split.
pub const SPLIT_ABOVE: usize = 256;
/// A split state is written whole again once it has fewer entries than this.
pub const UNSPLIT_BELOW: usize = 128;

/// The key of a chunk: a NUL byte, the account id, a NUL byte, the structure's initial and the
/// id in 16 hex digits. No account id starts with a NUL byte (ingest and the scorer refuse
/// control characters in ids), so chunk keys never meet account keys.
pub fn chunk_key(account_id: &str, structure: StateStructure, id: u64) -> String {
    let initial = match structure {
        StateStructure::WindowEvents => 'w',
        StateStructure::CapCounts => 'c',
        StateStructure::SeenEvents => 's',
        StateStructure::Unknown => 'u',
    };
    format!("\0{account_id}\0{initial}{id:016x}")
}

/// Whether a changelog key is a chunk's.
pub fn is_chunk_key(key: &[u8]) -> bool {
    key.first() == Some(&0)
}

/// What one account's write amounted to, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub records: u64,
    pub bytes: u64,
    pub tombstones: u64,
}

/// The chunks last written for each split account, per input partition: what the next write
/// of the account need not repeat, and what it must delete.
#[derive(Debug, Default)]
pub struct SplitStates {
    written: HashMap<i32, SplitChunks>,
    /// Encoding buffer for heads and chunks.
    scratch: Vec<u8>,
}

/// The chunks (structure, id) each split account of one partition was last written with.
pub type SplitChunks = HashMap<String, Vec<(StateStructure, u64)>>;

/// What a restore of one partition gives.
#[derive(Debug)]
pub struct Restored {
    pub accounts: PartitionAccounts,
    pub split: SplitChunks,
    /// Records that did not decode, and chunks missing from the changelog.
    pub skipped: u64,
    /// The model of the last state record read (`None`: no record; `Some(None)`: one written
    /// before models had versions). A switch of models rewrites every state of the partition
    /// in one transaction, so the last record's model is the partition's.
    pub model_version: Option<Option<String>>,
}

impl SplitStates {
    /// Writes `state` of `account_id` through `emit(key, value)` (`None`: a tombstone). `full`
    /// is its whole encoding (`encode_record_into`), already within `scoring.max_state_bytes`.
    pub fn write(
        &mut self,
        partition: i32,
        account_id: &str,
        state: &AccountScoreState,
        engine: &Engine,
        full: &[u8],
        mut emit: impl FnMut(&str, Option<&[u8]>) -> anyhow::Result<()>,
    ) -> anyhow::Result<Written> {
        let mut written = Written::default();
        let scratch = &mut self.scratch;
        let previous = self.written.get(&partition).and_then(|accounts| accounts.get(account_id));
        let entries = state.split_entries();
        let split = entries > SPLIT_ABOVE || (previous.is_some() && entries >= UNSPLIT_BELOW);
        if !split {
            emit(account_id, Some(full))?;
            written.records += 1;
            written.bytes += full.len() as u64;
            let previous = self.written.get_mut(&partition).and_then(|accounts| accounts.remove(account_id));
            for (structure, id) in previous.unwrap_or_default() {
                emit(&chunk_key(account_id, structure, id), None)?;
                written.tombstones += 1;
            }
            return Ok(written);
        }
        let chunks = state.chunk_refs(engine);
        let before: HashSet<(StateStructure, u64)> = previous.into_iter().flatten().copied().collect();
        let mut now = HashSet::with_capacity(chunks.len());
        for chunk in &chunks {
            if now.insert((chunk.structure, chunk.id)) && !before.contains(&(chunk.structure, chunk.id)) {
                scratch.clear();
                state.encode_chunk_into(account_id, engine, chunk, scratch);
                emit(&chunk_key(account_id, chunk.structure, chunk.id), Some(scratch))?;
                written.records += 1;
                written.bytes += scratch.len() as u64;
            }
        }
        scratch.clear();
        state.encode_head_into(account_id, engine, &chunks, scratch);
        emit(account_id, Some(scratch))?;
        written.records += 1;
        written.bytes += scratch.len() as u64;
        for (structure, id) in before.difference(&now) {
            emit(&chunk_key(account_id, *structure, *id), None)?;
            written.tombstones += 1;
        }
        self.written
            .entry(partition)
            .or_default()
            .insert(account_id.to_owned(), chunks.iter().map(|c: &ChunkRef| (c.structure, c.id)).collect());
        Ok(written)
    }

    /// Forgets what was written for `partition` (revoked, or rewound: its restore says again).
    pub fn forget(&mut self, partition: i32) {
        self.written.remove(&partition);
    }

    /// Takes what a restore found for `partition`.
    pub fn restored(&mut self, partition: i32, split: SplitChunks) {
        if split.is_empty() {
            self.written.remove(&partition);
        } else {
            self.written.insert(partition, split);
        }
    }

    /// Split accounts known, over all partitions.
    pub fn len(&self) -> usize {
        self.written.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records handed to a decoding thread at a time (fewer channel hand-offs than one by one).
const RESTORE_BATCH: usize = 512;

/// One changelog record, owned: partition, key and value (`None`: a tombstone).
type OwnedRecord = (i32, Vec<u8>, Option<Vec<u8>>);

/// Reads `partitions` of the changelog `topic` to its end (committed data only) and rebuilds
/// each with the model `engine_of` gives it. One thread reads; the records are decoded and
/// rebuilt on up to as many threads as there are cores (decoding is most of a restore's work),
/// each partition's records in offset order on one of them.
pub fn restore_partitions(
    kafka: &abm::kafka::KafkaConfig,
    client_id: &str,
    topic: &str,
    partitions: &[i32],
    engine_of: impl Fn(i32) -> std::sync::Arc<Engine>,
) -> anyhow::Result<std::collections::BTreeMap<i32, Restored>> {
    use std::sync::mpsc;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let workers = cores.min(partitions.len()).max(1);
    let worker_of: HashMap<i32, usize> = partitions.iter().enumerate().map(|(i, p)| (*p, i % workers)).collect();
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for worker in 0..workers {
            // A few batches in flight per thread: the reader runs ahead, memory stays bounded.
            let (sender, receiver) = mpsc::sync_channel::<Vec<OwnedRecord>>(4);
            senders.push(sender);
            let mine: Vec<(i32, std::sync::Arc<Engine>)> =
                partitions.iter().filter(|p| worker_of[*p] == worker).map(|p| (*p, engine_of(*p))).collect();
            threads.push(scope.spawn(move || {
                let mut restorers: HashMap<i32, (Restorer, std::sync::Arc<Engine>)> =
                    mine.into_iter().map(|(p, engine)| (p, (Restorer::default(), engine))).collect();
                for batch in receiver {
                    for (partition, key, value) in batch {
                        if let Some((restorer, engine)) = restorers.get_mut(&partition) {
                            restorer.record(&key, value.as_deref(), engine);
                        }
                    }
                }
                restorers
                    .into_iter()
                    .map(|(partition, (restorer, engine))| (partition, restorer.finish(&engine)))
                    .collect::<Vec<_>>()
            }));
        }
        let mut batches: Vec<Vec<OwnedRecord>> = (0..workers).map(|_| Vec::with_capacity(RESTORE_BATCH)).collect();
        let read = abm::kafka::read_to_end(kafka, client_id, topic, partitions, |partition, key, value| {
            let Some(&worker) = worker_of.get(&partition) else { return Ok(()) };
            let batch = &mut batches[worker];
            batch.push((partition, key.to_vec(), value.map(<[u8]>::to_vec)));
            if batch.len() >= RESTORE_BATCH {
                let full = std::mem::replace(batch, Vec::with_capacity(RESTORE_BATCH));
                senders[worker].send(full).map_err(|_| anyhow::anyhow!("a restore thread ended early"))?;
            }
            Ok(())
        });
        for (sender, batch) in senders.iter().zip(batches) {
            if !batch.is_empty() {
                // A thread that ended early is reported by its join below.
                let _ = sender.send(batch);
            }
        }
        drop(senders);
        // Every thread joined; a panic goes on as the panic it was (as it would have without
        // the threads), after the others are done.
        let mut restored = std::collections::BTreeMap::new();
        let mut panicked = None;
        for thread in threads {
            match thread.join() {
                Ok(done) => restored.extend(done),
                Err(payload) => panicked = panicked.or(Some(payload)),
            }
        }
        if let Some(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
        read?;
        Ok(restored)
    })
}

/// Rebuilds one partition's accounts from its changelog records, read in offset order.
#[derive(Debug, Default)]
pub struct Restorer {
    accounts: PartitionAccounts,
    /// Heads of split accounts, joined with their chunks at the end.
    heads: HashMap<String, AccountState>,
    /// Chunks by key.
    chunks: HashMap<Vec<u8>, AccountStateChunk>,
    /// Records that did not decode, or heads missing a chunk.
    pub skipped: u64,
    /// The model of the last state record read.
    model_version: Option<Option<String>>,
}

impl Restorer {
    /// One changelog record (`None`: a tombstone). An undecodable one is counted and skipped.
    pub fn record(&mut self, key: &[u8], value: Option<&[u8]>, engine: &Engine) {
        if is_chunk_key(key) {
            match value.map(abm_schemas::decode::<AccountStateChunk>) {
                None => {
                    self.chunks.remove(key);
                }
                Some(Ok(chunk)) => {
                    self.chunks.insert(key.to_vec(), chunk);
                }
                Some(Err(error)) => {
                    self.skipped += 1;
                    tracing::error!(key = %String::from_utf8_lossy(key).escape_debug(), %error, "undecodable AccountStateChunk in the changelog; skipped");
                }
            }
            return;
        }
        let Ok(account_id) = std::str::from_utf8(key) else {
            self.skipped += 1;
            tracing::error!(key = ?key, "changelog key is not UTF-8; skipped");
            return;
        };
        match value.map(abm_schemas::decode::<AccountState>) {
            None => {
                self.accounts.remove(account_id);
                self.heads.remove(account_id);
            }
            Some(Ok(mut record)) if record.chunks.is_empty() => {
                self.model_version = Some(record.model_version.take());
                self.heads.remove(account_id);
                self.accounts.insert(account_id.into(), Box::new(AccountScoreState::from_record(&record, engine)));
            }
            Some(Ok(mut record)) => {
                self.model_version = Some(record.model_version.take());
                self.accounts.remove(account_id);
                self.heads.insert(account_id.to_owned(), record);
            }
            // Counted and skipped: one bad record must not crash-loop the scorer.
            Some(Err(error)) => {
                self.skipped += 1;
                tracing::error!(account = account_id, %error, "undecodable AccountState in the changelog; skipped");
            }
        }
    }

    /// The restored accounts, and the chunks each split account was found with.
    pub fn finish(mut self, engine: &Engine) -> Restored {
        let mut split = HashMap::with_capacity(self.heads.len());
        for (account_id, mut head) in std::mem::take(&mut self.heads) {
            let refs = std::mem::take(&mut head.chunks);
            for chunk in &refs {
                let key = chunk_key(&account_id, chunk.structure, chunk.id as u64);
                match self.chunks.get(key.as_bytes()) {
                    Some(found) => join_chunk(&mut head, found),
                    None => {
                        self.skipped += 1;
                        tracing::error!(account = %account_id, ?chunk, "a chunk of a split account state is missing from the changelog; the account is restored without it");
                    }
                }
            }
            self.accounts.insert(account_id.as_str().into(), Box::new(AccountScoreState::from_record(&head, engine)));
            split.insert(account_id, refs.iter().map(|c| (c.structure, c.id as u64)).collect());
        }
        Restored { accounts: self.accounts, split, skipped: self.skipped, model_version: self.model_version }
    }
}
