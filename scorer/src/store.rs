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

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

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
