//! One account's scoring state, kept compact in memory, and its Avro form (`AccountState`).

use std::collections::VecDeque;

use abm_schemas::{
    AccountState, CapCount, EngagedContact, EventKind, RecentEvent, RuleContribution, SeenEvent, Tier, WindowEvent,
};

use super::config::ScoringConfig;
use super::{BREADTH_WINDOW_MS, COUNT_WINDOWS_DAYS, DAY_MS, Engine, KindCounts};

/// Up to `N` strings, each possibly absent, in one allocation: a state holds many short
/// strings, and one heap block each (plus the allocator's overhead) cost more than the text.
#[derive(Debug, Clone, PartialEq)]
struct Packed<const N: usize> {
    text: Box<str>,
    /// Where each string ends in `text`; `u32::MAX` when absent.
    ends: [u32; N],
}

impl<const N: usize> Packed<N> {
    fn new(parts: [Option<&str>; N]) -> Packed<N> {
        let mut text = String::with_capacity(parts.iter().flatten().map(|part| part.len()).sum());
        let mut ends = [u32::MAX; N];
        for (end, part) in ends.iter_mut().zip(parts) {
            if let Some(part) = part {
                text.push_str(part);
                *end = u32::try_from(text.len()).unwrap_or(u32::MAX - 1);
            }
        }
        Packed { text: text.into_boxed_str(), ends }
    }

    fn get(&self, index: usize) -> Option<&str> {
        let end = self.ends[index];
        if end == u32::MAX {
            return None;
        }
        let start = self.ends[..index].iter().rev().find(|e| **e != u32::MAX).map_or(0, |e| *e as usize);
        self.text.get(start..end as usize)
    }

    fn text_len(&self) -> usize {
        self.text.len()
    }
}

/// A contact with a positive-scoring event (kept while inside the breadth window).
#[derive(Debug, Clone, PartialEq)]
pub struct ContactEntry {
    /// Key, persona, title.
    strings: Packed<3>,
    pub last_engaged_at: i64,
}

impl ContactEntry {
    pub fn new(key: &str, persona: &str, title: Option<&str>, last_engaged_at: i64) -> ContactEntry {
        ContactEntry { strings: Packed::new([Some(key), Some(persona), title]), last_engaged_at }
    }

    pub fn key(&self) -> &str {
        self.strings.get(0).unwrap_or_default()
    }

    pub fn persona(&self) -> &str {
        self.strings.get(1).unwrap_or_default()
    }

    pub fn title(&self) -> Option<&str> {
        self.strings.get(2)
    }
}

/// Events of (contact, rule) on one UTC day, for caps. The contact is kept as the FNV-1a 64
/// hash of its key (no string per entry); in the Avro form that is `#` and 16 hex digits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CapEntry {
    contact: i64,
    day: i64,
    rule: u16,
    count: u32,
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

/// One of the last few events, for explanations.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recent {
    /// Event id, contact id, detail.
    strings: Packed<3>,
    pub kind: EventKind,
    pub rule: Option<u16>,
    pub occurred_at: i64,
    pub points: f64,
}

impl Recent {
    pub(crate) fn new(
        event_id: &str,
        contact_id: Option<&str>,
        detail: &str,
        kind: EventKind,
        occurred_at: i64,
        rule: Option<u16>,
        points: f64,
    ) -> Recent {
        Recent { strings: Packed::new([Some(event_id), contact_id, Some(detail)]), kind, rule, occurred_at, points }
    }

    pub(crate) fn event_id(&self) -> &str {
        self.strings.get(0).unwrap_or_default()
    }

    pub(crate) fn contact_id(&self) -> Option<&str> {
        self.strings.get(1)
    }

    pub(crate) fn detail(&self) -> &str {
        self.strings.get(2).unwrap_or_default()
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
    pub rule_points: Vec<(u16, f64)>,
    pub armed: bool,
    pub threshold_crossings: u64,
    pub hand_raiser_crossings: u64,
    pub contacts: Vec<ContactEntry>,
    /// Kind and time of applied events in the 90-day window.
    pub(crate) window: Vec<(i64, EventKind)>,
    pub(crate) caps: Vec<CapEntry>,
    /// (event id hash, as-of when applied), in apply order.
    pub(crate) seen: VecDeque<(i64, i64)>,
    pub(crate) recent: Vec<Recent>,
    pub events_applied: u64,
    pub duplicates: u64,
}

impl Default for AccountScoreState {
    fn default() -> Self {
        AccountScoreState {
            tier: Tier::Untiered,
            as_of: None,
            engagement: 0.0,
            rule_points: Vec::new(),
            // Accounts start armed.
            armed: true,
            threshold_crossings: 0,
            hand_raiser_crossings: 0,
            contacts: Vec::new(),
            window: Vec::new(),
            caps: Vec::new(),
            seen: VecDeque::new(),
            recent: Vec::new(),
            events_applied: 0,
            duplicates: 0,
        }
    }
}

impl AccountScoreState {
    /// Counts one more event of (contact, rule) on `day` and returns the new count.
    pub(crate) fn count_for_cap(&mut self, contact_key: &str, rule: u16, day: i64) -> u32 {
        let contact = super::event_id_hash(contact_key);
        if let Some(entry) = self.caps.iter_mut().find(|e| e.rule == rule && e.day == day && e.contact == contact) {
            entry.count += 1;
            return entry.count;
        }
        grow_gently(&mut self.caps);
        self.caps.push(CapEntry { contact, rule, day, count: 1 });
        1
    }

    pub(crate) fn add_rule_points(&mut self, rule: u16, points: f64) {
        match self.rule_points.iter_mut().find(|(index, _)| *index == rule) {
            Some((_, total)) => *total += points,
            None => {
                grow_gently(&mut self.rule_points);
                self.rule_points.push((rule, points));
            }
        }
    }

    pub(crate) fn engage_contact(&mut self, key: &str, persona: &str, title: Option<&str>, t: i64) {
        match self.contacts.iter_mut().find(|c| c.key() == key) {
            Some(contact) => {
                if t >= contact.last_engaged_at {
                    let title = title.or(contact.title());
                    if contact.persona() != persona || contact.title() != title {
                        *contact = ContactEntry::new(key, persona, title, t);
                    }
                    contact.last_engaged_at = t;
                }
            }
            None => {
                grow_gently(&mut self.contacts);
                self.contacts.push(ContactEntry::new(key, persona, title, t));
            }
        }
    }

    pub(crate) fn record_window_event(&mut self, kind: EventKind, t: i64) {
        grow_gently(&mut self.window);
        self.window.push((t, kind));
    }

    pub(crate) fn remember(&mut self, id_hash: i64, as_of: i64) {
        if self.seen.len() == self.seen.capacity() {
            self.seen.reserve_exact(growth(self.seen.len()));
        }
        self.seen.push_back((id_hash, as_of));
    }

    /// Whether an event at `occurred_at` would be among the `max` most recent kept.
    pub(crate) fn keeps_recent(&self, occurred_at: i64, max: usize) -> bool {
        self.recent.iter().take(max).any(|r| r.occurred_at <= occurred_at) || self.recent.len() < max
    }

    pub(crate) fn record_recent(&mut self, recent: Recent, max: usize) {
        self.recent.truncate(max);
        // Newest event time first; among equal times, the later applied first.
        let position =
            self.recent.iter().position(|r| r.occurred_at <= recent.occurred_at).unwrap_or(self.recent.len());
        if position >= max {
            return;
        }
        if self.recent.len() == max {
            self.recent.pop();
        }
        // Exactly `max` slots, never the doubling growth of a push past capacity.
        self.recent.reserve_exact(max - self.recent.len());
        self.recent.insert(position, recent);
    }

    /// Drops what fell out of every window, then enforces the size bounds.
    pub(crate) fn prune(&mut self, as_of: i64, dedup_window_ms: i64, config: &ScoringConfig) {
        self.contacts.retain(|c| c.last_engaged_at > as_of - BREADTH_WINDOW_MS);
        if self.contacts.len() > config.max_contacts {
            self.contacts.sort_by(|a, b| b.last_engaged_at.cmp(&a.last_engaged_at).then_with(|| a.key().cmp(b.key())));
            self.contacts.truncate(config.max_contacts);
        }
        let longest = COUNT_WINDOWS_DAYS[COUNT_WINDOWS_DAYS.len() - 1] * DAY_MS;
        self.window.retain(|(t, _)| *t > as_of - longest);
        if self.window.len() > config.max_window_events {
            self.window.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
            self.window.truncate(config.max_window_events);
        }
        let oldest_cap_day = as_of.div_euclid(DAY_MS) - COUNT_WINDOWS_DAYS[COUNT_WINDOWS_DAYS.len() - 1];
        self.caps.retain(|cap| cap.day >= oldest_cap_day);
        while self.seen.front().is_some_and(|(_, applied_at)| *applied_at <= as_of - dedup_window_ms) {
            self.seen.pop_front();
        }
        while self.seen.len() > config.max_seen_events {
            self.seen.pop_front();
        }
    }

    /// `B` at `at`: distinct contacts engaged in `(at - 30 days, at]`.
    pub fn breadth_at(&self, at: i64) -> u32 {
        let count = self
            .contacts
            .iter()
            .filter(|c| c.last_engaged_at > at - BREADTH_WINDOW_MS && c.last_engaged_at <= at)
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Events per kind in `(at - N days, at]` for N = 7, 30, 90; kinds with none are left out.
    pub fn counts_at(&self, at: i64) -> Vec<KindCounts> {
        EventKind::ALL
            .iter()
            .filter_map(|kind| {
                let count = |days: i64| {
                    let n =
                        self.window.iter().filter(|(t, k)| k == kind && *t > at - days * DAY_MS && *t <= at).count();
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
                contact_id: c.key().to_owned(),
                persona: c.persona().to_owned(),
                title: c.title().map(str::to_owned),
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
                event_id: r.event_id().to_owned(),
                kind: r.kind,
                occurred_at: r.occurred_at,
                rule: r
                    .rule
                    .filter(|i| usize::from(*i) < engine.rules().len())
                    .map(|i| engine.rules().get(i).name.clone()),
                points: r.points,
                contact_id: r.contact_id().map(str::to_owned),
                detail: r.detail().to_owned(),
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
                    contact_id: c.key().to_owned(),
                    persona: c.persona().to_owned(),
                    title: c.title().map(str::to_owned),
                    last_engaged_at: c.last_engaged_at,
                })
                .collect(),
            window_events: self.window.iter().map(|(t, kind)| WindowEvent { kind: *kind, occurred_at: *t }).collect(),
            cap_counts: self
                .caps
                .iter()
                .map(|cap| CapCount {
                    contact_key: cap_contact_text(cap.contact),
                    rule: rule_name(cap.rule),
                    day: i32::try_from(cap.day).unwrap_or(i32::MAX),
                    count: i32::try_from(cap.count).unwrap_or(i32::MAX),
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
        }
    }

    /// Appends exactly the single-object message `abm_schemas::encode(&self.to_record(..))`
    /// would give, written straight from this state: no intermediate record, no string copies.
    /// The commit path encodes every changed account's state, so this is the scorer's hottest
    /// encoder; a property test holds it byte-equal to the codec.
    pub fn encode_record_into(&self, account_id: &str, engine: &Engine, buffer: &mut Vec<u8>) {
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
            w.string(c.key());
            w.string(c.persona());
            w.optional_string(c.title());
            w.long(c.last_engaged_at);
        });
        w.array(self.window.iter(), |w, (t, kind)| {
            w.symbol(*kind as usize);
            w.long(*t);
        });
        w.array(self.caps.iter(), |w, cap| {
            // The same text as `cap_contact_text`, formatted on the stack: no allocation per cap.
            let mut text = [0u8; 17];
            let _ = std::io::Write::write_fmt(&mut &mut text[..], format_args!("#{:016x}", cap.contact as u64));
            w.string(std::str::from_utf8(&text).unwrap_or_default());
            w.string(rule_name(cap.rule));
            w.int(i32::try_from(cap.day).unwrap_or(i32::MAX));
            w.int(i32::try_from(cap.count).unwrap_or(i32::MAX));
        });
        w.array(self.seen.iter(), |w, (id_hash, applied_at)| {
            w.long(*id_hash);
            w.long(*applied_at);
        });
        w.array(self.recent.iter(), |w, r| {
            w.string(r.event_id());
            w.symbol(r.kind as usize);
            w.long(r.occurred_at);
            w.optional_string(r.rule.filter(|i| usize::from(*i) < engine.rules().len()).map(rule_name));
            w.double(r.points);
            w.optional_string(r.contact_id());
            w.string(r.detail());
        });
        w.long(self.events_applied as i64);
        w.long(self.duplicates as i64);
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
            contacts: record
                .contacts
                .iter()
                .map(|c| ContactEntry::new(&c.contact_id, &c.persona, c.title.as_deref(), c.last_engaged_at))
                .collect(),
            window: record.window_events.iter().map(|w| (w.occurred_at, w.kind)).collect(),
            caps: record
                .cap_counts
                .iter()
                .filter_map(|cap| {
                    Some(CapEntry {
                        contact: cap_contact_hash(&cap.contact_key),
                        rule: rule_index(&cap.rule)?,
                        day: i64::from(cap.day),
                        count: u32::try_from(cap.count).unwrap_or(0),
                    })
                })
                .collect(),
            seen: record.seen_events.iter().map(|s| (s.id_hash, s.applied_at)).collect(),
            recent: record
                .recent_events
                .iter()
                .map(|r| {
                    Recent::new(
                        &r.event_id,
                        r.contact_id.as_deref(),
                        &r.detail,
                        r.kind,
                        r.occurred_at,
                        r.rule.as_deref().and_then(rule_index),
                        r.points,
                    )
                })
                .collect(),
            events_applied: u64::try_from(record.events_applied).unwrap_or(0),
            duplicates: u64::try_from(record.duplicates).unwrap_or(0),
        }
    }

    /// Approximate heap bytes held by this state (for the memory metric and benchmarks).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let strings: usize = self.contacts.iter().map(|c| c.strings.text_len()).sum::<usize>()
            + self.recent.iter().map(|r| r.strings.text_len()).sum::<usize>();
        strings
            + self.rule_points.capacity() * size_of::<(u16, f64)>()
            + self.contacts.capacity() * size_of::<ContactEntry>()
            + self.window.capacity() * size_of::<(i64, EventKind)>()
            + self.caps.capacity() * size_of::<CapEntry>()
            + self.seen.capacity() * size_of::<(i64, i64)>()
            + self.recent.capacity() * size_of::<Recent>()
    }
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

    use super::{AccountScoreState, cap_contact_hash, cap_contact_text};
    use crate::engine::{Applied, DAY_MS, Engine, ScoringConfig};

    fn visit(id: &str, t: i64) -> EngagementEvent {
        let mut event = EngagementEvent::new(id, EventKind::WebVisit, t, "test");
        event.contact = Some(Contact { contact_id: Some("c-1".into()), ..Contact::default() });
        event.web_visit = Some(WebVisit { url: "https://v.example/docs".into(), referrer: None, title: None });
        event
    }

    #[test]
    fn packed_strings_keep_each_part_and_its_absence() {
        let all = super::Packed::new([Some("id"), Some(""), Some("detail")]);
        assert_eq!((all.get(0), all.get(1), all.get(2)), (Some("id"), Some(""), Some("detail")));
        let gaps = super::Packed::new([None, Some("é"), None]);
        assert_eq!((gaps.get(0), gaps.get(1), gaps.get(2)), (None, Some("é"), None));
        let last = super::Packed::new([Some("a"), None, Some("bc")]);
        assert_eq!((last.get(0), last.get(1), last.get(2)), (Some("a"), None, Some("bc")));
        assert_eq!(last.text_len(), 3);
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
