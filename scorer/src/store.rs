//! Sharded in-memory account state, grouped by input partition.
//!
//! Each partition of `abm.engagement` owns the accounts whose events it carries, so a
//! partition's accounts are restored, flushed or dropped together when the partition is
//! assigned to or revoked from this instance. Within a partition, accounts live in a
//! `DashMap`, so the query API reads while the processor writes. Guards are never held across
//! an `.await` or while touching another map.
//!
//! The leaderboard does not scan the accounts: the store keeps them ranked per tier (see
//! [`Ranking`]), updated as batches are written, and a request visits the top of the ranking
//! until no account further down can beat what it has.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use abm_schemas::Tier;
use dashmap::DashMap;

use crate::engine::{AccountScoreState, Engine};

/// The accounts of one input partition. Keys hold typical ids inline and states are boxed, so
/// the table's slots stay small (32 bytes), its unused slots cost little, and a typical
/// account costs one allocation besides its state's collections.
pub type PartitionAccounts = DashMap<AccountKey, Box<AccountScoreState>>;

/// Ids up to this many bytes are kept inside the key.
const INLINE: usize = 22;

/// An account id as a map key: up to 22 bytes inline (ids such as `acc-000123`, CRM ids,
/// domains), longer ones in a box of their own. 24 bytes either way; hashes and compares as
/// its `str`, so the maps are looked up by `&str`.
#[derive(Clone)]
pub enum AccountKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<str>),
}

impl AccountKey {
    pub fn as_str(&self) -> &str {
        match self {
            AccountKey::Inline { len, bytes } => {
                std::str::from_utf8(bytes.get(..usize::from(*len)).unwrap_or_default()).unwrap_or_default()
            }
            AccountKey::Boxed(text) => text,
        }
    }
}

impl From<&str> for AccountKey {
    fn from(id: &str) -> AccountKey {
        if id.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            AccountKey::Inline { len: id.len() as u8, bytes }
        } else {
            AccountKey::Boxed(id.into())
        }
    }
}

impl std::ops::Deref for AccountKey {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for AccountKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for AccountKey {
    fn eq(&self, other: &AccountKey) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for AccountKey {}

impl std::hash::Hash for AccountKey {
    /// Exactly `str`'s hash: `Borrow<str>` lookups depend on it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for AccountKey {
    fn partial_cmp(&self, other: &AccountKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AccountKey {
    fn cmp(&self, other: &AccountKey) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    partitions: Arc<DashMap<i32, Arc<PartitionAccounts>>>,
    ranking: Arc<Mutex<Ranking>>,
    /// The configured model.
    engine: Arc<Engine>,
    /// The partitions served by another model (their state built by it) while they are
    /// re-scored under the configured one, and how many there are (read per event).
    serving: Arc<DashMap<i32, Arc<Engine>>>,
    served_otherwise: Arc<std::sync::atomic::AtomicUsize>,
    /// Held while `serving` and its count change (the restore's thread and the loop's both
    /// change them).
    serving_change: Arc<Mutex<()>>,
}

/// Where an account ranks: `log2(S) + T / H`, S its score at its as-of time T (see
/// [`Engine::score`]), H the half-life. Its score at any time `t` is at most `2^(key - t / H)`:
/// at `t >= T` the decay is `2^(-(t - T) / H)` and the breadth B(t) can only have fallen since T
/// (contacts leave the window; none enter without an event, which moves T), so `m(B(t)) <=
/// m(B(T))` as `m` does not decrease; at `t < T` the score shown is S, and `2^((T - t) / H) >= 1`.
/// The order of the keys does not change with time: the ranking needs updating only when an
/// account does. Accounts with no positive score rank last (`-inf`), by id.
fn rank_key(engine: &Engine, state: &AccountScoreState) -> f64 {
    key_of(engine, engine.score(state), state.as_of)
}

/// [`rank_key`] from the score S at as-of time T.
fn key_of(engine: &Engine, score: f64, as_of: Option<i64>) -> f64 {
    match as_of {
        Some(as_of) if score > 0.0 => score.log2() + as_of as f64 / engine.half_life_ms(),
        _ => f64::NEG_INFINITY,
    }
}

/// Where an account ranks: its tier and [`rank_key`].
pub type Rank = (Tier, f64);

/// The rank of an account whose score at its as-of time is `score` (as the scorer has already
/// computed it: no second pass over the contacts).
pub fn rank_of(engine: &Engine, state: &AccountScoreState, score: f64) -> Rank {
    (state.tier, key_of(engine, score, state.as_of))
}

/// One account in the ranking of its tier: by key descending, then id ascending (the
/// leaderboard's order for equal scores), then partition (an id whose events were keyed to two
/// partitions has a state in each, and the leaderboard shows both, as a full scan would).
#[derive(Debug, Clone)]
struct Ranked {
    key: f64,
    id: AccountKey,
    partition: i32,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Ranked) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Ranked) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Ranked) -> Ordering {
        other
            .key
            .total_cmp(&self.key)
            .then_with(|| self.id.cmp(&other.id))
            .then_with(|| self.partition.cmp(&other.partition))
    }
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Tier1 => 0,
        Tier::Tier2 => 1,
        Tier::Tier3 => 2,
        Tier::Untiered => 3,
    }
}

/// Every account of the store, ranked per tier.
#[derive(Debug, Default)]
struct Ranking {
    tiers: [BTreeSet<Ranked>; 4],
    /// Each ranked (account, partition): its tier and key.
    placed: HashMap<(AccountKey, i32), (Tier, f64)>,
}

impl Ranking {
    fn place(&mut self, partition: i32, id: &str, tier: Tier, key: f64) {
        let id = AccountKey::from(id);
        let slot = (id, partition);
        if let Some((old_tier, old_key)) = self.placed.get_mut(&slot) {
            if *old_tier == tier && old_key.total_cmp(&key) == Ordering::Equal {
                return;
            }
            let old = Ranked { key: *old_key, id: slot.0.clone(), partition };
            self.tiers[tier_index(*old_tier)].remove(&old);
            (*old_tier, *old_key) = (tier, key);
            self.tiers[tier_index(tier)].insert(Ranked { key, id: old.id, partition });
            return;
        }
        self.tiers[tier_index(tier)].insert(Ranked { key, id: slot.0.clone(), partition });
        self.placed.insert(slot, (tier, key));
    }

    fn remove(&mut self, partition: i32, id: &str) {
        let id = AccountKey::from(id);
        let slot = (id, partition);
        if let Some((tier, key)) = self.placed.remove(&slot) {
            self.tiers[tier_index(tier)].remove(&Ranked { key, id: slot.0, partition });
        }
    }
}

/// What a leaderboard request visited: the top accounts, and how many it looked at.
#[derive(Debug)]
pub struct Top<T> {
    pub entries: Vec<T>,
    pub examined: usize,
    /// The walk gave up after [`WALK_BUDGET`] accounts and scanned them all instead.
    pub scanned: bool,
}

/// Accounts a leaderboard request may examine in ranking order (holding the ranking's lock)
/// before it lets the lock go and scans every account instead (an `at` long before the
/// accounts' as-of times makes the bound loose; the writer must not wait on such a request).
pub const WALK_BUDGET: usize = 20_000;

/// Accounts installed (ranked) per hold of the ranking's lock.
const INSTALL_CHUNK: usize = 4096;

/// The best `n` so far, worst first: (score, id, partition, entry), in the leaderboard's order.
struct Best<T> {
    n: usize,
    entries: Vec<(f64, String, i32, T)>,
}

impl<T> Best<T> {
    /// Whether (score, id, partition) would enter.
    fn admits(&self, score: f64, id: &str, partition: i32) -> bool {
        self.entries.len() < self.n || self.entries.first().is_some_and(|worst| beats(score, id, partition, worst))
    }

    fn insert(&mut self, score: f64, id: &str, partition: i32, entry: T) {
        let at = self.entries.partition_point(|other| beats(score, id, partition, other));
        self.entries.insert(at, (score, id.to_owned(), partition, entry));
        if self.entries.len() > self.n {
            self.entries.remove(0);
        }
    }

    fn into_entries(self) -> Vec<T> {
        self.entries.into_iter().rev().map(|(_, _, _, entry)| entry).collect()
    }
}

/// (score, id, partition) comes before `other` in the leaderboard's order.
fn beats<T>(score: f64, id: &str, partition: i32, other: &(f64, String, i32, T)) -> bool {
    score.total_cmp(&other.0).then_with(|| other.1.as_str().cmp(id)).then_with(|| other.2.cmp(&partition))
        == Ordering::Greater
}

impl Store {
    pub fn new(engine: Arc<Engine>) -> Store {
        Store {
            partitions: Arc::default(),
            ranking: Arc::default(),
            engine,
            serving: Arc::default(),
            served_otherwise: Arc::default(),
            serving_change: Arc::default(),
        }
    }

    /// The configured model.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Serves `partition` with `engine` (`None`: the configured model again).
    pub fn serve_with(&self, partition: i32, engine: Option<Arc<Engine>>) {
        let _changing = self.serving_change.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match engine {
            Some(engine) => {
                self.serving.insert(partition, engine);
            }
            None => {
                self.serving.remove(&partition);
            }
        }
        self.served_otherwise.store(self.serving.len(), std::sync::atomic::Ordering::Release);
    }

    /// Whether some partition is served by another model than the configured one.
    pub fn mixed(&self) -> bool {
        self.served_otherwise.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// The model `partition` is served with.
    pub fn engine_of(&self, partition: i32) -> Arc<Engine> {
        if !self.mixed() {
            return self.engine.clone();
        }
        self.serving.get(&partition).map_or_else(|| self.engine.clone(), |entry| entry.value().clone())
    }

    /// The model the partition holding `account_id` is served with (the configured one when
    /// no partition here holds it).
    pub fn engine_of_account(&self, account_id: &str) -> Arc<Engine> {
        if !self.mixed() {
            return self.engine.clone();
        }
        let holder =
            self.partitions.iter().find(|entry| entry.value().contains_key(account_id)).map(|entry| *entry.key());
        holder.map_or_else(|| self.engine.clone(), |partition| self.engine_of(partition))
    }

    fn ranking(&self) -> std::sync::MutexGuard<'_, Ranking> {
        self.ranking.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The accounts of `partition`, created empty if the partition is new here.
    pub fn partition(&self, partition: i32) -> Arc<PartitionAccounts> {
        self.partitions.entry(partition).or_default().clone()
    }

    /// Ranks `account_id` of `partition` where [`rank_of`] put it (the scorer calls it for each
    /// account a batch changed, as it writes the batch, with the score it writes).
    pub fn place(&self, partition: i32, account_id: &str, (tier, key): Rank) {
        self.ranking().place(partition, account_id, tier, key);
    }

    /// Ranks `account_id` of `partition` as its state now stands (after a change made outside
    /// the scorer's loop: tests, benchmarks).
    pub fn rank(&self, partition: i32, account_id: &str) {
        let Some(accounts) = self.partitions.get(&partition).map(|entry| entry.value().clone()) else { return };
        let engine = self.engine_of(partition);
        let placed = accounts.get(account_id).map(|state| (state.tier, rank_key(&engine, &state)));
        let mut ranking = self.ranking();
        match placed {
            Some((tier, key)) => ranking.place(partition, account_id, tier, key),
            None => ranking.remove(partition, account_id),
        }
    }

    /// Installs restored accounts for `partition`, replacing whatever was there, and ranks them
    /// (the lock taken per chunk of accounts: requests and batches go on meanwhile).
    pub fn install(&self, partition: i32, accounts: PartitionAccounts) {
        let engine = self.engine_of(partition);
        let ranked: Vec<(String, Tier, f64)> = accounts
            .iter()
            .map(|entry| (entry.key().to_string(), entry.value().tier, rank_key(&engine, entry.value())))
            .collect();
        let old = self.partitions.insert(partition, Arc::new(accounts));
        if let Some(old) = old {
            let ids: Vec<String> = old.iter().map(|entry| entry.key().to_string()).collect();
            for chunk in ids.chunks(INSTALL_CHUNK) {
                let mut ranking = self.ranking();
                for id in chunk {
                    ranking.remove(partition, id);
                }
            }
        }
        for chunk in ranked.chunks(INSTALL_CHUNK) {
            let mut ranking = self.ranking();
            for (id, tier, key) in chunk {
                ranking.place(partition, id, *tier, *key);
            }
        }
    }

    /// Drops a revoked partition's accounts.
    pub fn drop_partition(&self, partition: i32) {
        if let Some((_, old)) = self.partitions.remove(&partition) {
            let ids: Vec<String> = old.iter().map(|entry| entry.key().to_string()).collect();
            for chunk in ids.chunks(INSTALL_CHUNK) {
                let mut ranking = self.ranking();
                for id in chunk {
                    ranking.remove(partition, id);
                }
            }
        }
    }

    pub fn clear(&self) {
        self.partitions.clear();
        *self.ranking() = Ranking::default();
    }

    /// The `n` accounts (of `tier`, or all) with the highest score at `at` (ties by id), each
    /// made into a `T` by `entry(id, state, score at at)`. Visits the ranking from the top and
    /// stops at the first account whose bound cannot beat the n-th best found: the cost follows
    /// `n` and how many accounts come close to the top, not how many there are. A walk that
    /// would examine more than [`WALK_BUDGET`] accounts lets the ranking go and scans instead.
    pub fn top<T>(
        &self,
        tier: Option<Tier>,
        at: i64,
        n: usize,
        mut entry: impl FnMut(&str, &AccountScoreState, f64) -> T,
    ) -> Top<T> {
        if n == 0 {
            return Top { entries: Vec::new(), examined: 0, scanned: false };
        }
        // Partitions under two models (a re-score): their keys are not on one scale.
        if self.mixed() {
            return self.top_matching(at, n, |_, state| tier.is_none_or(|tier| tier == state.tier), entry);
        }
        let shift = at as f64 / self.engine.half_life_ms();
        let mut best = Best { n, entries: Vec::with_capacity(n + 1) };
        let mut examined = 0;
        {
            let ranking = self.ranking();
            let mut cursors: Vec<std::collections::btree_set::Iter<'_, Ranked>> = match tier {
                Some(tier) => vec![ranking.tiers[tier_index(tier)].iter()],
                None => ranking.tiers.iter().map(BTreeSet::iter).collect(),
            };
            let mut heads: Vec<Option<&Ranked>> = cursors.iter_mut().map(Iterator::next).collect();
            let mut shards: HashMap<i32, Arc<PartitionAccounts>> = HashMap::new();
            loop {
                // The next account in ranking order over the tiers' cursors.
                let Some(index) = (0..heads.len()).filter(|i| heads[*i].is_some()).min_by_key(|i| heads[*i]) else {
                    return Top { entries: best.into_entries(), examined, scanned: false };
                };
                let Some(next) = heads[index] else { break };
                heads[index] = cursors[index].next();
                if let Some(worst) = best.entries.first().filter(|_| best.entries.len() == n) {
                    let can_enter = if next.key == f64::NEG_INFINITY {
                        // No positive score: 0, and the rest come by id.
                        worst.0 == 0.0 && (next.id.as_str(), next.partition) < (worst.1.as_str(), worst.2)
                    } else if worst.0 < f64::MIN_POSITIVE {
                        // Scores decayed to 0 (or near it) tie by id: no bound helps.
                        true
                    } else {
                        // The bound, a little above the key's for rounding (keys near T / H).
                        let slack = 1e-9 + 8.0 * f64::EPSILON * (next.key.abs() + shift.abs());
                        (next.key - shift + slack).exp2() >= worst.0
                    };
                    if !can_enter {
                        return Top { entries: best.into_entries(), examined, scanned: false };
                    }
                }
                if examined >= WALK_BUDGET {
                    break;
                }
                let accounts = shards.entry(next.partition).or_insert_with(|| {
                    self.partitions.get(&next.partition).map(|entry| entry.value().clone()).unwrap_or_default()
                });
                let Some(state) = accounts.get(next.id.as_str()) else { continue };
                examined += 1;
                let score = self.engine.score_at(&state, at);
                if best.admits(score, next.id.as_str(), next.partition) {
                    let made = entry(next.id.as_str(), &state, score);
                    best.insert(score, next.id.as_str(), next.partition, made);
                }
            }
        }
        // Over budget: every account, without the ranking's lock.
        let scan = self.top_matching(at, n, |_, state| tier.is_none_or(|tier| tier == state.tier), entry);
        Top { examined: examined + scan.examined, ..scan }
    }

    /// [`top`](Self::top) over the accounts `matches` admits, by a scan of every account (a
    /// filter the ranking cannot follow: journey stage, a search; or a walk over budget).
    /// `examined` counts the accounts admitted.
    pub fn top_matching<T>(
        &self,
        at: i64,
        n: usize,
        mut matches: impl FnMut(&str, &AccountScoreState) -> bool,
        mut entry: impl FnMut(&str, &AccountScoreState, f64) -> T,
    ) -> Top<T> {
        let mut best = Best { n, entries: Vec::with_capacity(n + 1) };
        let mut examined = 0;
        let shards: Vec<(i32, Arc<PartitionAccounts>)> =
            self.partitions.iter().map(|entry| (*entry.key(), entry.value().clone())).collect();
        for (partition, accounts) in shards {
            let engine = self.engine_of(partition);
            for account in accounts.iter() {
                if n == 0 || !matches(account.key(), account.value()) {
                    continue;
                }
                examined += 1;
                let score = engine.score_at(account.value(), at);
                if best.admits(score, account.key(), partition) {
                    let made = entry(account.key(), account.value(), score);
                    best.insert(score, account.key(), partition, made);
                }
            }
        }
        Top { entries: best.into_entries(), examined, scanned: true }
    }

    pub fn partitions(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.partitions.iter().map(|entry| *entry.key()).collect();
        ids.sort_unstable();
        ids
    }

    /// A copy of one account's state in `partition`'s accounts.
    pub fn get_in(&self, partition: i32, account_id: &str) -> Option<AccountScoreState> {
        let accounts = self.partitions.get(&partition).map(|entry| entry.value().clone())?;
        accounts.get(account_id).map(|state| state.as_ref().clone())
    }

    /// A copy of one account's state, wherever it lives.
    pub fn get(&self, account_id: &str) -> Option<AccountScoreState> {
        let shards: Vec<Arc<PartitionAccounts>> = self.partitions.iter().map(|entry| entry.value().clone()).collect();
        shards.iter().find_map(|accounts| accounts.get(account_id).map(|state| state.as_ref().clone()))
    }

    /// Calls `visit` for every account (copying nothing).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &AccountScoreState)) {
        let shards: Vec<Arc<PartitionAccounts>> = self.partitions.iter().map(|entry| entry.value().clone()).collect();
        for accounts in shards {
            for entry in accounts.iter() {
                visit(entry.key(), entry.value());
            }
        }
    }

    pub fn account_count(&self) -> usize {
        self.partitions.iter().map(|entry| entry.value().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::{AccountKey, PartitionAccounts};

    #[test]
    fn keys_of_any_length_are_found_by_str() {
        assert_eq!(std::mem::size_of::<AccountKey>(), 24);
        let accounts = PartitionAccounts::default();
        let ids = ["", "acc-1", "exactly-twenty-two-byt", "twenty-three-bytes-long", "é-ünïcode-ключ-with-more-bytes"];
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(ids[2].len(), 22);
            let key = AccountKey::from(*id);
            assert_eq!(key.as_str(), *id);
            assert_eq!(matches!(key, AccountKey::Inline { .. }), id.len() <= 22, "{id}");
            let mut state = Box::<crate::engine::AccountScoreState>::default();
            state.events_applied = n as u64;
            accounts.insert(key, state);
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(accounts.get(*id).map(|s| s.events_applied), Some(n as u64), "{id}");
        }
        assert!(accounts.get("acc-2").is_none());
    }
}
