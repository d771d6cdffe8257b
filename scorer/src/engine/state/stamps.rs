//! The fixed-size entries of an account's state: cap counters and event stamps.

use abm_schemas::EventKind;

/// Events of (contact, rule) on one UTC day, for caps. The contact is kept as the FNV-1a 64
/// hash of its key (no string per entry); in the Avro form that is `#` and 16 hex digits.
/// 16 bytes: the count saturates at `u16::MAX`, above any allowed cap
/// ([`crate::engine::config::MAX_CAP_PER_DAY`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CapEntry {
    pub(crate) contact: i64,
    pub(crate) day: i32,
    pub(crate) rule: u16,
    pub(crate) count: u16,
}

/// An applied event's time and kind in 8 bytes: `t * 16 + kind` (so at most 16 kinds: checked
/// at compile time below). Times within ±2^59 ms
/// (18 million years) are kept exactly; beyond that they are clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(pub(crate) i64);

impl Stamp {
    const LIMIT: i64 = 1 << 59;

    pub(crate) fn new(t: i64, kind: EventKind) -> Stamp {
        Stamp(t.clamp(-Self::LIMIT, Self::LIMIT - 1) * 16 + kind as i64)
    }

    pub(crate) fn t(self) -> i64 {
        self.0 >> 4
    }

    pub(crate) fn kind(self) -> EventKind {
        kind_from_index((self.0 & 15) as usize)
    }
}

/// The kind whose schema symbol index is `index` (`kind as usize` the other way).
pub(crate) fn kind_from_index(index: usize) -> EventKind {
    EventKind::ALL.get(index).copied().unwrap_or(EventKind::Unknown)
}

// A stamp keeps the kind in 4 bits.
const _: () =
    assert!(EventKind::ALL.len() <= 16, "Stamp keeps an event kind in 4 bits: widen it before adding a 17th kind");

#[cfg(test)]
mod tests {
    use abm_schemas::EventKind;

    use super::{CapEntry, Stamp, kind_from_index};
    use crate::engine::AccountScoreState;

    #[test]
    fn stamps_keep_time_and_kind() {
        for kind in EventKind::ALL {
            assert_eq!(kind_from_index(kind as usize), kind);
            for t in [0, 1, -1, 1_700_000_000_123, -86_400_001, (1 << 59) - 1, -(1 << 59)] {
                let stamp = Stamp::new(t, kind);
                assert_eq!((stamp.t(), stamp.kind()), (t, kind));
            }
            assert_eq!(Stamp::new(i64::MAX, kind).t(), (1 << 59) - 1, "clamped");
            assert_eq!(Stamp::new(i64::MIN, kind).kind(), kind);
        }
        assert_eq!(std::mem::size_of::<Stamp>(), 8);
        assert_eq!(std::mem::size_of::<CapEntry>(), 16);
        // 224 bytes with the opportunities and the stage entries (one pointer each; the
        // crossing counts are u32 to make room): the allocator's 224-byte class. Growing past
        // 224 costs every account 32 bytes more.
        assert!(std::mem::size_of::<AccountScoreState>() <= 224, "{}", std::mem::size_of::<AccountScoreState>());
    }
}
