//! An account's last few events, packed in one allocation ([`RecentLog`]).

use abm_schemas::EventKind;

use super::bytes::{Cursor, optional_str_len, str_len, write_optional_str, write_str};
use super::packed::PackedIter;
use super::stamps::kind_from_index;

/// One of the last few events, for explanations, as read from a [`RecentLog`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recent<'a> {
    pub event_id: &'a str,
    pub contact_id: Option<&'a str>,
    pub detail: &'a str,
    pub kind: EventKind,
    pub rule: Option<u16>,
    pub occurred_at: i64,
    pub points: f64,
}

/// Bytes of an entry before its strings: time, points, rule, kind.
const RECENT_FIXED: usize = 8 + 8 + 2 + 1;

impl Recent<'_> {
    fn encoded_len(&self) -> usize {
        RECENT_FIXED + str_len(self.event_id) + optional_str_len(self.contact_id) + str_len(self.detail)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.occurred_at.to_le_bytes());
        out.extend_from_slice(&self.points.to_bits().to_le_bytes());
        out.extend_from_slice(&self.rule.unwrap_or(u16::MAX).to_le_bytes());
        out.push(self.kind as u8);
        write_str(out, self.event_id);
        write_optional_str(out, self.contact_id);
        write_str(out, self.detail);
    }

    /// Steps over one entry without checking its strings; returns its time.
    fn skip(cursor: &mut Cursor<'_>) -> Option<i64> {
        let time = i64::from_le_bytes(cursor.array()?);
        cursor.bytes(RECENT_FIXED - 8)?;
        cursor.skip_str(0)?;
        cursor.skip_str(1)?;
        cursor.skip_str(0)?;
        Some(time)
    }

    fn read<'a>(cursor: &mut Cursor<'a>) -> Option<Recent<'a>> {
        let occurred_at = i64::from_le_bytes(cursor.array()?);
        let points = f64::from_bits(u64::from_le_bytes(cursor.array()?));
        let rule = u16::from_le_bytes(cursor.array()?);
        let [kind] = cursor.array()?;
        Some(Recent {
            event_id: cursor.str()?,
            contact_id: cursor.optional_str()?,
            detail: cursor.str()?,
            kind: kind_from_index(usize::from(kind)),
            rule: (rule != u16::MAX).then_some(rule),
            occurred_at,
            points,
        })
    }
}

/// The last few events, newest first, packed in one allocation: five events as five structs
/// with a string block each cost about twice the bytes. An entry is the event time (8 bytes,
/// little-endian), its points (the f64's 8 bytes), the rule index (2 bytes, `u16::MAX` for
/// none), the kind (1 byte), then the event id, contact id and detail, each as a LEB128 length
/// and the UTF-8 bytes (the contact's length is stored plus one; 0 means no contact). Only
/// [`RecentLog::insert`] and [`RecentLog::from_entries`] write it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct RecentLog {
    bytes: Box<[u8]>,
}

impl RecentLog {
    pub(crate) fn from_entries<'a>(entries: impl Iterator<Item = Recent<'a>>) -> RecentLog {
        let mut bytes = Vec::new();
        for entry in entries {
            entry.write(&mut bytes);
        }
        RecentLog { bytes: bytes.into_boxed_slice() }
    }

    pub(crate) fn iter(&self) -> PackedIter<'_, Recent<'_>> {
        PackedIter::new(&self.bytes, Recent::read, Recent::skip)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Inserts `recent` by event time (newest first; among equal times, the later applied
    /// first) and keeps at most `max` entries; an event older than all of `max` kept is left out.
    pub(crate) fn insert(&mut self, recent: &Recent<'_>, max: usize) {
        // Where the new entry goes and where the kept entries end, from the entries' times
        // alone; then the block is edited in place (it is reallocated only when it grows).
        let total = self.bytes.len();
        let mut cursor = Cursor { rest: &self.bytes };
        let (mut position, mut kept_end, mut count) = (None, 0, 0);
        while count < max {
            let start = total - cursor.rest.len();
            let Some(time) = Recent::skip(&mut cursor) else { break };
            if position.is_none() && time <= recent.occurred_at {
                position = Some(start);
                count += 1;
                if count == max {
                    break;
                }
            }
            kept_end = total - cursor.rest.len();
            count += 1;
        }
        if position.is_none() && count < max {
            position = Some(kept_end);
        }
        let Some(position) = position else {
            // Left out; a smaller `max` than before still drops the entries past it.
            if kept_end < total {
                self.bytes = self.bytes.get(..kept_end).unwrap_or_default().into();
            }
            return;
        };
        let mut bytes = std::mem::take(&mut self.bytes).into_vec();
        bytes.truncate(kept_end);
        let len = recent.encoded_len();
        bytes.reserve_exact(len);
        recent.write(&mut bytes);
        if let Some(tail) = bytes.get_mut(position..) {
            tail.rotate_right(len);
        }
        self.bytes = bytes.into_boxed_slice();
    }

    /// The entries' times, newest first, without reading their strings.
    pub(crate) fn times(&self) -> impl Iterator<Item = i64> + '_ {
        let mut cursor = Cursor { rest: &self.bytes };
        std::iter::from_fn(move || Recent::skip(&mut cursor))
    }
}

#[cfg(test)]
mod tests {
    use abm_schemas::EventKind;
    use proptest::prelude::*;

    /// An owned recent event, for the model below.
    #[derive(Debug, Clone, PartialEq)]
    struct Owned {
        id: String,
        contact: Option<String>,
        detail: String,
        kind: EventKind,
        rule: Option<u16>,
        t: i64,
        points: f64,
    }

    impl Owned {
        fn borrow(&self) -> super::Recent<'_> {
            super::Recent {
                event_id: &self.id,
                contact_id: self.contact.as_deref(),
                detail: &self.detail,
                kind: self.kind,
                rule: self.rule,
                occurred_at: self.t,
                points: self.points,
            }
        }
    }

    fn owned(r: super::Recent<'_>) -> Owned {
        Owned {
            id: r.event_id.into(),
            contact: r.contact_id.map(Into::into),
            detail: r.detail.into(),
            kind: r.kind,
            rule: r.rule,
            t: r.occurred_at,
            points: r.points,
        }
    }

    fn recent_strategy() -> impl Strategy<Value = Owned> {
        (
            ".{0,3}|[a-z0-9-]{120,200}",
            proptest::option::of("\\PC{0,12}"),
            "\\PC{0,20}",
            0..EventKind::ALL.len(),
            proptest::option::of(0u16..u16::MAX),
            -3i64..3,
            proptest::num::f64::ANY,
        )
            .prop_map(|(id, contact, detail, kind, rule, t, points)| Owned {
                id,
                contact,
                detail,
                kind: EventKind::ALL[kind],
                rule,
                t: 1_700_000_000_000 + t * 1000,
                points,
            })
    }

    proptest! {
        /// The packed log keeps exactly what a plain list would: newest first, among equal
        /// times the later applied first, at most `max`, every field (points bit for bit).
        #[test]
        fn recent_log_matches_a_plain_list(events in proptest::collection::vec(recent_strategy(), 0..20), max in 1usize..7) {
            let mut log = super::RecentLog::default();
            let mut model: Vec<Owned> = Vec::new();
            for event in &events {
                let position = model.iter().position(|r| r.t <= event.t).unwrap_or(model.len());
                if position < max {
                    model.insert(position, event.clone());
                    model.truncate(max);
                }
                log.insert(&event.borrow(), max);
                let got: Vec<Owned> = log.iter().map(owned).collect();
                prop_assert_eq!(got.len(), model.len());
                prop_assert_eq!(log.iter().len(), model.len());
                for (got, want) in got.iter().zip(&model) {
                    prop_assert_eq!(got.points.to_bits(), want.points.to_bits());
                    prop_assert_eq!((&got.id, &got.contact, &got.detail, got.kind, got.rule, got.t),
                        (&want.id, &want.contact, &want.detail, want.kind, want.rule, want.t));
                }
            }
            let rebuilt = super::RecentLog::from_entries(log.iter());
            prop_assert_eq!(rebuilt, log);
        }
    }

    #[test]
    fn a_smaller_max_truncates_even_when_the_event_is_left_out() {
        let make = |t: i64| Owned {
            id: format!("e{t}"),
            contact: None,
            detail: String::new(),
            kind: EventKind::Email,
            rule: None,
            t,
            points: 1.0,
        };
        let mut log = super::RecentLog::default();
        for t in 10..15 {
            log.insert(&make(t).borrow(), 5);
        }
        assert_eq!(log.iter().map(|r| r.occurred_at).collect::<Vec<_>>(), [14, 13, 12, 11, 10]);
        log.insert(&make(1).borrow(), 3);
        assert_eq!(log.iter().map(|r| r.occurred_at).collect::<Vec<_>>(), [14, 13, 12]);
        log.insert(&make(13).borrow(), 3);
        let ids: Vec<String> = log.iter().map(|r| r.event_id.to_owned()).collect();
        assert_eq!(ids, ["e14", "e13", "e13"]);
    }
}
