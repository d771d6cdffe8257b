//! One account's scoring state, kept compact in memory, and its Avro form (`AccountState`).

use std::collections::VecDeque;

use abm_schemas::{
    AccountState, AccountStateChunk, CapCount, EngagedContact, EventKind, RecentEvent, RuleContribution, SeenEvent,
    StateStructure, Tier, WindowEvent,
};

use super::config::ScoringConfig;
use super::{BREADTH_WINDOW_MS, COUNT_WINDOWS_DAYS, DAY_MS, Engine, KindCounts};

/// Reads the packed entries of [`ContactLog`] and [`RecentLog`]. Only their own writers
/// produce the bytes, so a read that runs short ends the iteration instead of failing.
#[derive(Debug, Clone, Copy)]
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    fn varint(&mut self) -> Option<usize> {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let [byte] = self.array::<1>()?;
            value |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
        }
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.varint()?;
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    /// Steps over a string written with [`write_str`] (or, with `offset` 1, one written with
    /// [`write_optional_str`]) without checking its bytes.
    fn skip_str(&mut self, offset: usize) -> Option<()> {
        let len = self.varint()?;
        self.bytes(len.saturating_sub(offset)).map(drop)
    }

    /// A string written with [`write_optional_str`].
    fn optional_str(&mut self) -> Option<Option<&'a str>> {
        match self.varint()? {
            0 => Some(None),
            n => Some(Some(std::str::from_utf8(self.bytes(n - 1)?).ok()?)),
        }
    }
}

fn varint_len(mut value: usize) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn str_len(text: &str) -> usize {
    varint_len(text.len()) + text.len()
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    write_varint(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn optional_str_len(text: Option<&str>) -> usize {
    text.map_or(1, |text| varint_len(text.len() + 1) + text.len())
}

/// The length plus one, then the bytes; a lone 0 for none.
fn write_optional_str(out: &mut Vec<u8>, text: Option<&str>) {
    write_varint(out, text.map_or(0, |text| text.len() + 1));
    out.extend_from_slice(text.unwrap_or_default().as_bytes());
}

/// A contact with a positive-scoring event (kept while inside the breadth window), as read
/// from a [`ContactLog`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contact<'a> {
    pub key: &'a str,
    pub persona: &'a str,
    pub title: Option<&'a str>,
    pub last_engaged_at: i64,
}

impl Contact<'_> {
    fn encoded_len(&self) -> usize {
        8 + str_len(self.key) + str_len(self.persona) + optional_str_len(self.title)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.last_engaged_at.to_le_bytes());
        write_str(out, self.key);
        write_str(out, self.persona);
        write_optional_str(out, self.title);
    }

    /// Steps over one entry without checking its strings; returns its last engagement time.
    fn skip(cursor: &mut Cursor<'_>) -> Option<i64> {
        let time = i64::from_le_bytes(cursor.array()?);
        cursor.skip_str(0)?;
        cursor.skip_str(0)?;
        cursor.skip_str(1)?;
        Some(time)
    }

    fn read<'a>(cursor: &mut Cursor<'a>) -> Option<Contact<'a>> {
        let last_engaged_at = i64::from_le_bytes(cursor.array()?);
        Some(Contact { last_engaged_at, key: cursor.str()?, persona: cursor.str()?, title: cursor.optional_str()? })
    }
}

/// An account's engaged contacts, in order of first engagement, packed in one allocation: a
/// contact as a struct with its own string block costs about three times its text. An entry
/// is the last engagement time (8 bytes, little-endian; updated in place), then the key and
/// persona (LEB128 length, UTF-8) and the title (length plus one; 0 for none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactLog {
    bytes: Box<[u8]>,
}

impl ContactLog {
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = Contact<'a>>) -> ContactLog {
        let mut bytes = Vec::new();
        for entry in entries {
            entry.write(&mut bytes);
        }
        ContactLog { bytes: bytes.into_boxed_slice() }
    }

    pub fn iter(&self) -> PackedIter<'_, Contact<'_>> {
        PackedIter::new(&self.bytes, Contact::read, Contact::skip)
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Every contact's last engagement time, without reading their strings (breadth is
    /// evaluated after every event).
    fn engagement_times(&self) -> impl Iterator<Item = i64> + '_ {
        let mut cursor = Cursor { rest: &self.bytes };
        std::iter::from_fn(move || Contact::skip(&mut cursor))
    }

    /// Records that `key` engaged at `t`: a new contact is appended; a known one moves its last
    /// engagement forward (never back) and takes the newer persona and title (a missing title
    /// keeps the old one).
    fn engage(&mut self, key: &str, persona: &str, title: Option<&str>, t: i64) {
        let mut cursor = Cursor { rest: &self.bytes };
        loop {
            let start = self.bytes.len() - cursor.rest.len();
            // Keys are compared as bytes; only the matching entry is read in full.
            let Some(found) = cursor.array::<8>().and_then(|_| {
                let len = cursor.varint()?;
                let matches = cursor.bytes(len)? == key.as_bytes();
                cursor.skip_str(0)?;
                cursor.skip_str(1)?;
                Some(matches)
            }) else {
                break;
            };
            if !found {
                continue;
            }
            let end = self.bytes.len() - cursor.rest.len();
            let Some(contact) = Contact::read(&mut Cursor { rest: &self.bytes[start..end] }) else { break };
            if t < contact.last_engaged_at {
                return;
            }
            let title = title.or(contact.title);
            if contact.persona == persona && contact.title == title {
                if let Some(time) = self.bytes.get_mut(start..start + 8) {
                    time.copy_from_slice(&t.to_le_bytes());
                }
                return;
            }
            let updated = Contact { key, persona, title, last_engaged_at: t };
            let mut out = Vec::with_capacity(self.bytes.len() - (end - start) + updated.encoded_len());
            out.extend_from_slice(&self.bytes[..start]);
            updated.write(&mut out);
            out.extend_from_slice(&self.bytes[end..]);
            self.bytes = out.into_boxed_slice();
            return;
        }
        let added = Contact { key, persona, title, last_engaged_at: t };
        let mut out = Vec::with_capacity(self.bytes.len() + added.encoded_len());
        out.extend_from_slice(&self.bytes);
        added.write(&mut out);
        self.bytes = out.into_boxed_slice();
    }

    /// Drops contacts last engaged at or before `oldest`, then keeps the `max` most recently
    /// engaged (ties: the smaller key). Returns how many the `max` bound dropped.
    fn prune(&mut self, oldest: i64, max: usize) -> u64 {
        let mut count = 0;
        let mut stale = false;
        for time in self.engagement_times() {
            count += 1;
            stale |= time <= oldest;
        }
        if !stale && count <= max {
            return 0;
        }
        let mut kept: Vec<Contact<'_>> = self.iter().filter(|c| c.last_engaged_at > oldest).collect();
        let mut dropped = 0;
        if kept.len() > max {
            kept.sort_by(|a, b| b.last_engaged_at.cmp(&a.last_engaged_at).then_with(|| a.key.cmp(b.key)));
            dropped = (kept.len() - max) as u64;
            kept.truncate(max);
        }
        *self = ContactLog::from_entries(kept);
        dropped
    }

    fn len(&self) -> usize {
        self.engagement_times().count()
    }
}

/// The entries of a packed log, in order. Counts them first, for the Avro writer's arrays.
#[derive(Debug)]
pub struct PackedIter<'a, T> {
    cursor: Cursor<'a>,
    read: fn(&mut Cursor<'a>) -> Option<T>,
    count: usize,
}

impl<'a, T> PackedIter<'a, T> {
    fn new(
        bytes: &'a [u8],
        read: fn(&mut Cursor<'a>) -> Option<T>,
        skip: fn(&mut Cursor<'_>) -> Option<i64>,
    ) -> PackedIter<'a, T> {
        let mut scan = Cursor { rest: bytes };
        let mut count = 0;
        while skip(&mut scan).is_some() {
            count += 1;
        }
        PackedIter { cursor: Cursor { rest: bytes }, read, count }
    }
}

impl<T> Iterator for PackedIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.count == 0 {
            return None;
        }
        let entry = (self.read)(&mut self.cursor)?;
        self.count -= 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.count, Some(self.count))
    }
}

impl<T> ExactSizeIterator for PackedIter<'_, T> {}

/// Events of (contact, rule) on one UTC day, for caps. The contact is kept as the FNV-1a 64
/// hash of its key (no string per entry); in the Avro form that is `#` and 16 hex digits.
/// 16 bytes: the count saturates at `u16::MAX`, above any allowed cap
/// ([`super::config::MAX_CAP_PER_DAY`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CapEntry {
    contact: i64,
    day: i32,
    rule: u16,
    count: u16,
}

/// An applied event's time and kind in 8 bytes: `t * 16 + kind`. Times within ±2^59 ms
/// (18 million years) are kept exactly; beyond that they are clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(i64);

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
fn kind_from_index(index: usize) -> EventKind {
    EventKind::ALL.get(index).copied().unwrap_or(EventKind::Unknown)
}

/// The Avro form of a cap entry's contact: `#` and the hash's 16 hex digits.
fn cap_contact_text(hash: i64) -> String {
    format!("#{:016x}", hash as u64)
}

/// Back from the Avro form; a contact key written in full (before hashing) is hashed now.
fn cap_contact_hash(text: &str) -> i64 {
    text.strip_prefix('#')
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map_or_else(|| super::event_id_hash(text), |hash| hash as i64)
}

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
    fn times(&self) -> impl Iterator<Item = i64> + '_ {
        let mut cursor = Cursor { rest: &self.bytes };
        std::iter::from_fn(move || Recent::skip(&mut cursor))
    }
}

/// Everything the engine keeps about one account. All collections are bounded by
/// [`ScoringConfig`]'s `max_*` settings and by the time windows.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountScoreState {
    pub tier: Tier,
    pub as_of: Option<i64>,
    /// `E` at `as_of`.
    pub engagement: f64,
    /// Decayed points per rule index at `as_of`.
    /// (A boxed slice, not a `Vec`: a rule is added rarely, and the state stays at 192 bytes,
    /// one allocator size class below 224.)
    pub rule_points: Box<[(u16, f64)]>,
    pub armed: bool,
    pub threshold_crossings: u64,
    pub hand_raiser_crossings: u64,
    pub contacts: ContactLog,
    /// Kind and time of applied events in the 90-day window.
    pub(crate) window: Vec<Stamp>,
    pub(crate) caps: Vec<CapEntry>,
    /// (event id hash, as-of when applied), in apply order.
    pub(crate) seen: VecDeque<(i64, i64)>,
    pub(crate) recent: RecentLog,
    pub events_applied: u64,
    pub duplicates: u64,
}

impl Default for AccountScoreState {
    fn default() -> Self {
        AccountScoreState {
            tier: Tier::Untiered,
            as_of: None,
            engagement: 0.0,
            rule_points: Box::default(),
            // Accounts start armed.
            armed: true,
            threshold_crossings: 0,
            hand_raiser_crossings: 0,
            contacts: ContactLog::default(),
            window: Vec::new(),
            caps: Vec::new(),
            seen: VecDeque::new(),
            recent: RecentLog::default(),
            events_applied: 0,
            duplicates: 0,
        }
    }
}

impl AccountScoreState {
    /// Counts one more event of (contact, rule) on `day` and returns the new count.
    pub(crate) fn count_for_cap(&mut self, contact_key: &str, rule: u16, day: i64) -> u32 {
        let contact = super::event_id_hash(contact_key);
        let day = day_number(day);
        if let Some(entry) = self.caps.iter_mut().find(|e| e.rule == rule && e.day == day && e.contact == contact) {
            entry.count = entry.count.saturating_add(1);
            return u32::from(entry.count);
        }
        grow_gently(&mut self.caps);
        self.caps.push(CapEntry { contact, rule, day, count: 1 });
        1
    }

    pub(crate) fn add_rule_points(&mut self, rule: u16, points: f64) {
        match self.rule_points.iter_mut().find(|(index, _)| *index == rule) {
            Some((_, total)) => *total += points,
            None => {
                let mut rules = std::mem::take(&mut self.rule_points).into_vec();
                rules.reserve_exact(1);
                rules.push((rule, points));
                self.rule_points = rules.into_boxed_slice();
            }
        }
    }

    pub(crate) fn engage_contact(&mut self, key: &str, persona: &str, title: Option<&str>, t: i64) {
        self.contacts.engage(key, persona, title, t);
    }

    pub(crate) fn record_window_event(&mut self, kind: EventKind, t: i64) {
        grow_gently(&mut self.window);
        self.window.push(Stamp::new(t, kind));
    }

    pub(crate) fn remember(&mut self, id_hash: i64, as_of: i64) {
        if self.seen.len() == self.seen.capacity() {
            self.seen.reserve_exact(growth(self.seen.len()));
        }
        self.seen.push_back((id_hash, as_of));
    }

    /// Whether an event at `occurred_at` would be among the `max` most recent kept.
    pub(crate) fn keeps_recent(&self, occurred_at: i64, max: usize) -> bool {
        let mut kept = 0;
        for time in self.recent.times().take(max) {
            if time <= occurred_at {
                return true;
            }
            kept += 1;
        }
        kept < max
    }

    pub(crate) fn record_recent(&mut self, recent: &Recent<'_>, max: usize) {
        self.recent.insert(recent, max);
    }

    /// Drops what fell out of every window, then enforces the count bounds; returns what the
    /// bounds (not the windows) dropped.
    pub(crate) fn prune(&mut self, as_of: i64, dedup_window_ms: i64, config: &ScoringConfig) -> Trimmed {
        let mut trimmed = Trimmed {
            contacts: self.contacts.prune(as_of - BREADTH_WINDOW_MS, config.max_contacts),
            ..Trimmed::default()
        };
        let longest = COUNT_WINDOWS_DAYS[COUNT_WINDOWS_DAYS.len() - 1] * DAY_MS;
        self.window.retain(|stamp| stamp.t() > as_of - longest);
        trimmed.window_events = drop_smallest(&mut self.window, config.max_window_events, |stamp| stamp.t());
        let oldest_cap_day = as_of.div_euclid(DAY_MS) - COUNT_WINDOWS_DAYS[COUNT_WINDOWS_DAYS.len() - 1];
        self.caps.retain(|cap| i64::from(cap.day) >= oldest_cap_day);
        // Counters of older days go first (they matter only to late events), then the smallest.
        trimmed.cap_counters =
            drop_smallest(&mut self.caps, config.max_cap_counters, |cap| (cap.day, cap.count, cap.contact, cap.rule));
        while self.seen.front().is_some_and(|(_, applied_at)| *applied_at <= as_of - dedup_window_ms) {
            self.seen.pop_front();
        }
        while self.seen.len() > config.max_seen_events {
            self.seen.pop_front();
            trimmed.seen_ids += 1;
        }
        trimmed
    }

    /// Sheds about half of the least useful remaining detail, to bring the encoded state under
    /// a byte bound: first the recent events (explanations only), then the remembered event
    /// ids (duplicate detection reaches less far back), the window stamps (counts), the cap
    /// counters, and last the engaged contacts, never below `min_contacts` (the breadth that
    /// saturates the multiplier, so the score itself is kept). `None` when nothing is left to shed.
    pub fn shed(&mut self, min_contacts: usize) -> Option<Trimmed> {
        let mut trimmed = Trimmed::default();
        let recent = self.recent.iter().len();
        if recent > 1 {
            let kept: Vec<Recent<'_>> = self.recent.iter().take(1).collect();
            self.recent = RecentLog::from_entries(kept.into_iter());
            trimmed.recent_events = (recent - 1) as u64;
        } else if self.seen.len() > 1 {
            let drop = self.seen.len() / 2;
            self.seen.drain(..drop);
            trimmed.seen_ids = drop as u64;
        } else if self.window.len() > 1 {
            let keep = self.window.len() - self.window.len() / 2;
            trimmed.window_events = drop_smallest(&mut self.window, keep, |stamp| stamp.t());
        } else if self.caps.len() > 1 {
            let keep = self.caps.len() - self.caps.len() / 2;
            trimmed.cap_counters =
                drop_smallest(&mut self.caps, keep, |cap| (cap.day, cap.count, cap.contact, cap.rule));
        } else {
            let contacts = self.contacts.len();
            let keep = (contacts - contacts / 2).max(min_contacts);
            if keep >= contacts {
                return None;
            }
            trimmed.contacts = self.contacts.prune(i64::MIN, keep);
        }
        Some(trimmed)
    }

    /// `B` at `at`: distinct contacts engaged in `(at - 30 days, at]`.
    pub fn breadth_at(&self, at: i64) -> u32 {
        let count = self.contacts.engagement_times().filter(|t| *t > at - BREADTH_WINDOW_MS && *t <= at).count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Events per kind in `(at - N days, at]` for N = 7, 30, 90; kinds with none are left out.
    pub fn counts_at(&self, at: i64) -> Vec<KindCounts> {
        EventKind::ALL
            .iter()
            .filter_map(|kind| {
                let count = |days: i64| {
                    let n = self
                        .window
                        .iter()
                        .filter(|s| s.kind() == *kind && s.t() > at - days * DAY_MS && s.t() <= at)
                        .count();
                    u32::try_from(n).unwrap_or(u32::MAX)
                };
                let counts = KindCounts {
                    kind: *kind,
                    last_7_days: count(COUNT_WINDOWS_DAYS[0]),
                    last_30_days: count(COUNT_WINDOWS_DAYS[1]),
                    last_90_days: count(COUNT_WINDOWS_DAYS[2]),
                };
                (counts.last_90_days > 0).then_some(counts)
            })
            .collect()
    }

    /// Contacts engaged in the breadth window before `at`, most recent first.
    pub fn engaged_contacts(&self, at: i64) -> Vec<EngagedContact> {
        let mut contacts: Vec<EngagedContact> = self
            .contacts
            .iter()
            .filter(|c| c.last_engaged_at > at - BREADTH_WINDOW_MS && c.last_engaged_at <= at)
            .map(|c| EngagedContact {
                contact_id: c.key.to_owned(),
                persona: c.persona.to_owned(),
                title: c.title.map(str::to_owned),
                last_engaged_at: c.last_engaged_at,
            })
            .collect();
        contacts
            .sort_by(|a, b| b.last_engaged_at.cmp(&a.last_engaged_at).then_with(|| a.contact_id.cmp(&b.contact_id)));
        contacts
    }

    pub(crate) fn recent_records(&self, engine: &Engine) -> Vec<RecentEvent> {
        self.recent
            .iter()
            .map(|r| RecentEvent {
                event_id: r.event_id.to_owned(),
                kind: r.kind,
                occurred_at: r.occurred_at,
                rule: r
                    .rule
                    .filter(|i| usize::from(*i) < engine.rules().len())
                    .map(|i| engine.rules().get(i).name.clone()),
                points: r.points,
                contact_id: r.contact_id.map(str::to_owned),
                detail: r.detail.to_owned(),
            })
            .collect()
    }

    /// The Avro form, for the changelog topic.
    pub fn to_record(&self, account_id: &str, engine: &Engine) -> AccountState {
        let rule_name = |index: u16| engine.rules().get(index).name.clone();
        AccountState {
            account_id: account_id.to_owned(),
            tier: self.tier,
            as_of: self.as_of,
            engagement: self.engagement,
            rule_points: self
                .rule_points
                .iter()
                .map(|(index, points)| RuleContribution { rule: rule_name(*index), points: *points })
                .collect(),
            armed: self.armed,
            threshold_crossings: self.threshold_crossings as i64,
            hand_raiser_crossings: self.hand_raiser_crossings as i64,
            contacts: self
                .contacts
                .iter()
                .map(|c| EngagedContact {
                    contact_id: c.key.to_owned(),
                    persona: c.persona.to_owned(),
                    title: c.title.map(str::to_owned),
                    last_engaged_at: c.last_engaged_at,
                })
                .collect(),
            window_events: self.window.iter().map(|s| WindowEvent { kind: s.kind(), occurred_at: s.t() }).collect(),
            cap_counts: self
                .caps
                .iter()
                .map(|cap| CapCount {
                    contact_key: cap_contact_text(cap.contact),
                    rule: rule_name(cap.rule),
                    day: cap.day,
                    count: i32::from(cap.count),
                })
                .collect(),
            seen_events: self
                .seen
                .iter()
                .map(|(id_hash, applied_at)| SeenEvent { id_hash: *id_hash, applied_at: *applied_at })
                .collect(),
            recent_events: self.recent_records(engine),
            events_applied: self.events_applied as i64,
            duplicates: self.duplicates as i64,
            chunks: Vec::new(),
        }
    }

    /// Appends exactly the single-object message `abm_schemas::encode(&self.to_record(..))`
    /// would give, written straight from this state: no intermediate record, no string copies.
    /// The commit path encodes every changed account's state, so this is the scorer's hottest
    /// encoder; a property test holds it byte-equal to the codec.
    pub fn encode_record_into(&self, account_id: &str, engine: &Engine, buffer: &mut Vec<u8>) {
        self.encode_with(account_id, engine, buffer, None);
    }

    /// The head of a split state: the record [`encode_record_into`](Self::encode_record_into)
    /// gives, with `window_events`, `cap_counts` and `seen_events` empty and `chunks` listing
    /// where they are instead.
    pub fn encode_head_into(&self, account_id: &str, engine: &Engine, chunks: &[ChunkRef], buffer: &mut Vec<u8>) {
        self.encode_with(account_id, engine, buffer, Some(chunks));
    }

    fn encode_with(&self, account_id: &str, engine: &Engine, buffer: &mut Vec<u8>, split: Option<&[ChunkRef]>) {
        use abm_schemas::AvroRecord as _;
        let rule_name = |index: u16| engine.rules().get(index).name.as_str();
        let mut w = abm_schemas::binary::Writer::single_object(buffer, AccountState::codec().fingerprint());
        w.string(account_id);
        w.symbol(tier_index(self.tier));
        w.optional_long(self.as_of);
        w.double(self.engagement);
        w.array(self.rule_points.iter(), |w, (index, points)| {
            w.string(rule_name(*index));
            w.double(*points);
        });
        w.boolean(self.armed);
        w.long(self.threshold_crossings as i64);
        w.long(self.hand_raiser_crossings as i64);
        w.array(self.contacts.iter(), |w, c| {
            w.string(c.key);
            w.string(c.persona);
            w.optional_string(c.title);
            w.long(c.last_engaged_at);
        });
        let (window, caps, seen) = match split {
            None => (&self.window[..], &self.caps[..], self.seen.range(..)),
            Some(_) => (&self.window[..0], &self.caps[..0], self.seen.range(0..0)),
        };
        w.array(window.iter(), write_stamp);
        w.array(caps.iter(), |w, cap| write_cap(w, engine, cap));
        w.array(seen, write_seen);
        w.array(self.recent.iter(), |w, r| {
            w.string(r.event_id);
            w.symbol(r.kind as usize);
            w.long(r.occurred_at);
            w.optional_string(r.rule.filter(|i| usize::from(*i) < engine.rules().len()).map(rule_name));
            w.double(r.points);
            w.optional_string(r.contact_id);
            w.string(r.detail);
        });
        w.long(self.events_applied as i64);
        w.long(self.duplicates as i64);
        w.array(split.unwrap_or_default().iter(), |w, chunk| {
            w.symbol(chunk.structure as usize);
            w.long(chunk.id as i64);
        });
    }

    /// Entries of the structures a split state keeps in chunks (window, caps, seen ids).
    pub fn split_entries(&self) -> usize {
        self.window.len() + self.caps.len() + self.seen.len()
    }

    /// The chunks a split state is written as: each of the window, the caps and the seen ids
    /// cut where an entry's boundary hash is `0 mod CHUNK_TARGET` (or at `CHUNK_MAX` entries),
    /// so that a change touches only the chunk it is in and an append only the last one; each
    /// chunk named by the hash of its content as written (a cap's rule by its name, not its
    /// index in the config, so a reordered config cannot give other content the same name).
    pub fn chunk_refs(&self, engine: &Engine) -> Vec<ChunkRef> {
        let rule_hashes: Vec<u64> =
            (0..engine.rules().len()).map(|i| super::event_id_hash(&engine.rules().get(i as u16).name) as u64).collect();
        let rule_hash = |rule: u16| rule_hashes.get(usize::from(rule)).copied().unwrap_or(u64::from(rule));
        let mut chunks = Vec::new();
        cut_chunks(
            StateStructure::WindowEvents,
            self.window.iter().map(|stamp| (mix(stamp.0 as u64), [stamp.0 as u64, 0])),
            &mut chunks,
        );
        cut_chunks(
            StateStructure::CapCounts,
            self.caps.iter().map(|cap| {
                let rule = rule_hash(cap.rule);
                let key = (cap.contact as u64) ^ rule ^ u64::from(cap.day as u32);
                let content = mix(rule ^ (u64::from(cap.day as u32) << 16) ^ u64::from(cap.count));
                (mix(key), [cap.contact as u64, content])
            }),
            &mut chunks,
        );
        cut_chunks(
            StateStructure::SeenEvents,
            self.seen.iter().map(|(id_hash, applied_at)| (mix(*id_hash as u64), [*id_hash as u64, *applied_at as u64])),
            &mut chunks,
        );
        chunks
    }

    /// One chunk of [`chunk_refs`](Self::chunk_refs) as an `AccountStateChunk` message.
    pub fn encode_chunk_into(&self, account_id: &str, engine: &Engine, chunk: &ChunkRef, buffer: &mut Vec<u8>) {
        use abm_schemas::AvroRecord as _;
        let mut w = abm_schemas::binary::Writer::single_object(buffer, AccountStateChunk::codec().fingerprint());
        w.string(account_id);
        w.symbol(chunk.structure as usize);
        w.long(chunk.id as i64);
        let range = chunk.start..chunk.end;
        let (window, caps, seen) = match chunk.structure {
            StateStructure::WindowEvents => (&self.window[range], &self.caps[..0], self.seen.range(0..0)),
            StateStructure::CapCounts => (&self.window[..0], &self.caps[range], self.seen.range(0..0)),
            _ => (&self.window[..0], &self.caps[..0], self.seen.range(range)),
        };
        w.array(window.iter(), write_stamp);
        w.array(caps.iter(), |w, cap| write_cap(w, engine, cap));
        w.array(seen, write_seen);
    }

    /// Back from the Avro form. Rules that no longer exist in the config lose their breakdown
    /// line (their points stay in `E`) and their caps.
    pub fn from_record(record: &AccountState, engine: &Engine) -> AccountScoreState {
        let rule_index = |name: &str| engine.rules().index_of(name);
        AccountScoreState {
            tier: record.tier,
            as_of: record.as_of,
            engagement: record.engagement,
            rule_points: record.rule_points.iter().filter_map(|r| Some((rule_index(&r.rule)?, r.points))).collect(),
            armed: record.armed,
            threshold_crossings: u64::try_from(record.threshold_crossings).unwrap_or(0),
            hand_raiser_crossings: u64::try_from(record.hand_raiser_crossings).unwrap_or(0),
            contacts: ContactLog::from_entries(record.contacts.iter().map(|c| Contact {
                key: &c.contact_id,
                persona: &c.persona,
                title: c.title.as_deref(),
                last_engaged_at: c.last_engaged_at,
            })),
            window: record.window_events.iter().map(|w| Stamp::new(w.occurred_at, w.kind)).collect(),
            caps: record
                .cap_counts
                .iter()
                .filter_map(|cap| {
                    Some(CapEntry {
                        contact: cap_contact_hash(&cap.contact_key),
                        rule: rule_index(&cap.rule)?,
                        day: cap.day,
                        count: u16::try_from(cap.count.max(0)).unwrap_or(u16::MAX),
                    })
                })
                .collect(),
            seen: record.seen_events.iter().map(|s| (s.id_hash, s.applied_at)).collect(),
            recent: RecentLog::from_entries(record.recent_events.iter().map(|r| Recent {
                event_id: &r.event_id,
                contact_id: r.contact_id.as_deref(),
                detail: &r.detail,
                kind: r.kind,
                rule: r.rule.as_deref().and_then(rule_index),
                occurred_at: r.occurred_at,
                points: r.points,
            })),
            events_applied: u64::try_from(record.events_applied).unwrap_or(0),
            duplicates: u64::try_from(record.duplicates).unwrap_or(0),
        }
    }

    /// Approximate heap bytes held by this state (for the memory metric and benchmarks).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.contacts.heap_bytes()
            + self.recent.heap_bytes()
            + self.rule_points.len() * size_of::<(u16, f64)>()
            + self.window.capacity() * size_of::<Stamp>()
            + self.caps.capacity() * size_of::<CapEntry>()
            + self.seen.capacity() * size_of::<(i64, i64)>()
    }
}

/// A UTC day number as kept in cap entries (the Avro form's `int`); far-off days saturate.
/// Removes the entries with the smallest `key` until at most `max` are left (among equal keys,
/// the later entries go first), keeping the others in their order; returns how many it
/// removed. One pass when one entry is over, the steady state of a bound.
fn drop_smallest<T, K: Ord>(items: &mut Vec<T>, max: usize, key: impl Fn(&T) -> K) -> u64 {
    if items.len() <= max {
        return 0;
    }
    let excess = items.len() - max;
    if excess == 1 {
        let smallest = items.iter().enumerate().min_by(|(i, a), (j, b)| key(a).cmp(&key(b)).then(j.cmp(i)));
        if let Some(index) = smallest.map(|(index, _)| index) {
            items.remove(index);
        }
        return 1;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|i, j| key(&items[*i]).cmp(&key(&items[*j])).then(j.cmp(i)));
    let mut doomed = vec![false; items.len()];
    for index in order.into_iter().take(excess) {
        doomed[index] = true;
    }
    let mut position = 0;
    items.retain(|_| {
        position += 1;
        !doomed[position - 1]
    });
    excess as u64
}

/// What the state's bounds dropped (beyond what fell out of the time windows), by structure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub contacts: u64,
    pub window_events: u64,
    pub cap_counters: u64,
    pub seen_ids: u64,
    pub recent_events: u64,
}

impl Trimmed {
    /// The structures with their counts, for metrics.
    pub fn by_structure(&self) -> [(&'static str, u64); 5] {
        [
            ("contacts", self.contacts),
            ("window_events", self.window_events),
            ("cap_counters", self.cap_counters),
            ("seen_ids", self.seen_ids),
            ("recent_events", self.recent_events),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.by_structure().iter().all(|(_, count)| *count == 0)
    }

    pub fn add(&mut self, other: Trimmed) {
        self.contacts += other.contacts;
        self.window_events += other.window_events;
        self.cap_counters += other.cap_counters;
        self.seen_ids += other.seen_ids;
        self.recent_events += other.recent_events;
    }
}

fn day_number(day: i64) -> i32 {
    i32::try_from(day).unwrap_or(if day < 0 { i32::MIN } else { i32::MAX })
}

/// How many slots a full collection of `len` items gains: a quarter more (at least 2), not
/// the doubling of `Vec::push`. States hold many small collections that grow by one item per
/// event; doubling would leave a third of their memory unused on average.
fn growth(len: usize) -> usize {
    (len / 4).max(2)
}

fn grow_gently<T>(items: &mut Vec<T>) {
    if items.len() == items.capacity() {
        items.reserve_exact(growth(items.len()));
    }
}

/// The index of `tier` among the `Tier` enum's symbols in the schema.
/// A chunk of a split state: entries `start..end` of one structure, named by `id`, the hash of
/// their content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub structure: StateStructure,
    pub id: u64,
    pub start: usize,
    pub end: usize,
}

/// A chunk ends after an entry whose boundary hash is `0 mod CHUNK_TARGET` (chunks of 32
/// entries on average), or at `CHUNK_MAX` entries.
const CHUNK_TARGET: u64 = 32;
const CHUNK_MAX: usize = 128;

/// SplitMix64's finaliser: a fixed, well-mixing 64-bit hash step (the same in every process).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Cuts `entries` (boundary hash, content words) into chunks of `structure`.
fn cut_chunks(structure: StateStructure, entries: impl Iterator<Item = (u64, [u64; 2])>, out: &mut Vec<ChunkRef>) {
    let seed = mix(structure as u64 + 1);
    let (mut start, mut id, mut end) = (0, seed, 0);
    for (index, (boundary, content)) in entries.enumerate() {
        id = mix(mix(id ^ content[0]) ^ content[1]);
        end = index + 1;
        if boundary % CHUNK_TARGET == 0 || end - start == CHUNK_MAX {
            out.push(ChunkRef { structure, id, start, end });
            (start, id) = (end, seed);
        }
    }
    if end > start {
        out.push(ChunkRef { structure, id, start, end });
    }
}

fn write_stamp(w: &mut abm_schemas::binary::Writer<'_>, stamp: &Stamp) {
    w.symbol(stamp.kind() as usize);
    w.long(stamp.t());
}

fn write_cap(w: &mut abm_schemas::binary::Writer<'_>, engine: &Engine, cap: &CapEntry) {
    // The same text as `cap_contact_text`, formatted on the stack: no allocation per cap.
    let mut text = [0u8; 17];
    let _ = std::io::Write::write_fmt(&mut &mut text[..], format_args!("#{:016x}", cap.contact as u64));
    w.string(std::str::from_utf8(&text).unwrap_or_default());
    w.string(engine.rules().get(cap.rule).name.as_str());
    w.int(cap.day);
    w.int(i32::from(cap.count));
}

fn write_seen(w: &mut abm_schemas::binary::Writer<'_>, seen: &(i64, i64)) {
    w.long(seen.0);
    w.long(seen.1);
}

/// Appends a chunk's entries to the head of a split state (restore joins them in the head's
/// order, then builds the state with `from_record`).
pub fn join_chunk(head: &mut AccountState, chunk: &AccountStateChunk) {
    match chunk.structure {
        StateStructure::WindowEvents => head.window_events.extend_from_slice(&chunk.window_events),
        StateStructure::CapCounts => head.cap_counts.extend_from_slice(&chunk.cap_counts),
        StateStructure::SeenEvents => head.seen_events.extend_from_slice(&chunk.seen_events),
        StateStructure::Unknown => {}
    }
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Untiered => 0,
        Tier::Tier1 => 1,
        Tier::Tier2 => 2,
        Tier::Tier3 => 3,
    }
}

#[cfg(test)]
mod tests {
    use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
    use proptest::prelude::*;

    use super::{AccountScoreState, cap_contact_hash, cap_contact_text};
    use crate::engine::{Applied, DAY_MS, Engine, ScoringConfig};

    fn visit(id: &str, t: i64) -> EngagementEvent {
        let mut event = EngagementEvent::new(id, EventKind::WebVisit, t, "test");
        event.contact = Some(Contact { contact_id: Some("c-1".into()), ..Contact::default() });
        event.web_visit = Some(WebVisit { url: "https://v.example/docs".into(), referrer: None, title: None });
        event
    }

    /// The old representation: a list of owned contacts, updated the obvious way.
    #[derive(Debug, Clone, PartialEq)]
    struct ModelContact {
        key: String,
        persona: String,
        title: Option<String>,
        last: i64,
    }

    #[derive(Debug, Clone)]
    enum ContactOp {
        Engage { key: u8, persona: u8, title: Option<u8>, t: i64 },
        Prune { oldest: i64, max: usize },
    }

    fn contact_op() -> impl Strategy<Value = ContactOp> {
        prop_oneof![
            4 => (0u8..6, 0u8..3, proptest::option::of(0u8..3), 0i64..40)
                .prop_map(|(key, persona, title, t)| ContactOp::Engage { key, persona, title, t }),
            1 => (0i64..40, 1usize..5).prop_map(|(oldest, max)| ContactOp::Prune { oldest, max }),
        ]
    }

    proptest! {
        /// The packed contacts behave exactly like a plain list of owned contacts.
        #[test]
        fn contact_log_matches_a_plain_list(ops in proptest::collection::vec(contact_op(), 0..40)) {
            let keys = ["c-0", "c-1", "ü-2", "", "a-much-longer-contact-key-of-more-than-a-few-bytes@example.com", "c-5"];
            let personas = ["economic_buyer", "champion", "unknown"];
            let titles = ["VP Finance", "", "Директор"];
            let mut log = super::ContactLog::default();
            let mut model: Vec<ModelContact> = Vec::new();
            for op in ops {
                match op {
                    ContactOp::Engage { key, persona, title, t } => {
                        let (key, persona) = (keys[usize::from(key)], personas[usize::from(persona)]);
                        let title = title.map(|i| titles[usize::from(i)]);
                        match model.iter_mut().find(|c| c.key == key) {
                            Some(c) if t >= c.last => {
                                let title = title.map(str::to_owned).or(c.title.clone());
                                *c = ModelContact { key: key.into(), persona: persona.into(), title, last: t };
                            }
                            Some(_) => {}
                            None => model.push(ModelContact {
                                key: key.into(),
                                persona: persona.into(),
                                title: title.map(Into::into),
                                last: t,
                            }),
                        }
                        log.engage(key, persona, title, t);
                    }
                    ContactOp::Prune { oldest, max } => {
                        model.retain(|c| c.last > oldest);
                        if model.len() > max {
                            model.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.key.cmp(&b.key)));
                            model.truncate(max);
                        }
                        log.prune(oldest, max);
                    }
                }
                let got: Vec<ModelContact> = log
                    .iter()
                    .map(|c| ModelContact {
                        key: c.key.into(),
                        persona: c.persona.into(),
                        title: c.title.map(Into::into),
                        last: c.last_engaged_at,
                    })
                    .collect();
                prop_assert_eq!(&got, &model);
                prop_assert_eq!(log.iter().len(), model.len());
            }
        }
    }

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
    fn stamps_keep_time_and_kind() {
        for kind in EventKind::ALL {
            assert_eq!(super::kind_from_index(kind as usize), kind);
            for t in [0, 1, -1, 1_700_000_000_123, -86_400_001, (1 << 59) - 1, -(1 << 59)] {
                let stamp = super::Stamp::new(t, kind);
                assert_eq!((stamp.t(), stamp.kind()), (t, kind));
            }
            assert_eq!(super::Stamp::new(i64::MAX, kind).t(), (1 << 59) - 1, "clamped");
            assert_eq!(super::Stamp::new(i64::MIN, kind).kind(), kind);
        }
        assert_eq!(std::mem::size_of::<super::Stamp>(), 8);
        assert_eq!(std::mem::size_of::<super::CapEntry>(), 16);
        assert!(std::mem::size_of::<AccountScoreState>() <= 192, "{}", std::mem::size_of::<AccountScoreState>());
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

    #[test]
    fn cap_contacts_round_trip_as_hashes_and_full_keys_are_hashed() {
        let hash = crate::engine::event_id_hash("c-1");
        assert_eq!(cap_contact_hash(&cap_contact_text(hash)), hash);
        assert_eq!(cap_contact_text(hash).len(), 17);
        assert_eq!(cap_contact_hash("c-1"), hash, "a key written in full");
        assert_eq!(cap_contact_hash("#xyz"), crate::engine::event_id_hash("#xyz"), "not a hash: a key");
    }

    /// A changelog record written before the hashing (full contact keys) still caps the same
    /// contact after a restore.
    #[test]
    fn caps_restored_from_full_contact_keys_still_apply() {
        let engine = Engine::new(ScoringConfig::default()).expect("valid");
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS;
        let mut state = AccountScoreState::default();
        for n in 0..10 {
            engine.apply("acc", &mut state, &visit(&format!("e{n}"), t0 + n), Tier::Tier1);
        }
        let mut record = state.to_record("acc", &engine);
        for cap in &mut record.cap_counts {
            assert!(cap.contact_key.starts_with('#'));
            cap.contact_key = "c-1".into();
        }
        let mut restored = AccountScoreState::from_record(&record, &engine);
        let eleventh = engine.apply("acc", &mut restored, &visit("e10", t0 + 10), Tier::Tier1);
        assert!(matches!(eleventh, Applied::Scored { points, .. } if points == 0.0), "{eleventh:?}");
        let original = engine.apply("acc", &mut state, &visit("e10", t0 + 10), Tier::Tier1);
        assert_eq!(original, eleventh);
    }
}
