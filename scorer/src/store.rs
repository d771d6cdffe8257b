//! Sharded in-memory account state, grouped by input partition.
//!
//! Each partition of `abm.engagement` owns the accounts whose events it carries, so a
//! partition's accounts are restored, flushed or dropped together when the partition is
//! assigned to or revoked from this instance. Within a partition, accounts live in a
//! `DashMap`, so the query API reads while the processor writes. Guards are never held across
//! an `.await` or while touching another map.

use std::sync::Arc;

use dashmap::DashMap;

use crate::engine::AccountScoreState;

/// The accounts of one input partition. Keys are boxed strings and states are boxed, so the
/// table's slots stay small (24 bytes) and its unused slots cost little.
pub type PartitionAccounts = DashMap<Box<str>, Box<AccountScoreState>>;

#[derive(Debug, Default, Clone)]
pub struct Store {
    partitions: Arc<DashMap<i32, Arc<PartitionAccounts>>>,
}

impl Store {
    /// The accounts of `partition`, created empty if the partition is new here.
    pub fn partition(&self, partition: i32) -> Arc<PartitionAccounts> {
        self.partitions.entry(partition).or_default().clone()
    }

    /// Installs restored accounts for `partition`, replacing whatever was there.
    pub fn install(&self, partition: i32, accounts: PartitionAccounts) {
        self.partitions.insert(partition, Arc::new(accounts));
    }

    /// Drops a revoked partition's accounts.
    pub fn drop_partition(&self, partition: i32) {
        self.partitions.remove(&partition);
    }

    pub fn clear(&self) {
        self.partitions.clear();
    }

    pub fn partitions(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.partitions.iter().map(|entry| *entry.key()).collect();
        ids.sort_unstable();
        ids
    }

    /// A copy of one account's state, wherever it lives.
    pub fn get(&self, account_id: &str) -> Option<AccountScoreState> {
        let shards: Vec<Arc<PartitionAccounts>> = self.partitions.iter().map(|entry| entry.value().clone()).collect();
        shards.iter().find_map(|accounts| accounts.get(account_id).map(|state| state.as_ref().clone()))
    }

    /// Calls `visit` for every account (copying nothing); used by the leaderboard.
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
