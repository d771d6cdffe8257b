//! The changelog's wire mapping: an account's in-memory state ([`AccountScoreState`]) to and
//! from its Avro form (`AccountState`, and `AccountStateChunk` for a split state), in one place.
//!
//! Three ways through it: [`AccountScoreState::to_record`] builds the record (tests, tools),
//! [`AccountScoreState::encode_record_into`] writes the same bytes straight from the state (the
//! commit path; a property test holds it byte-equal to the codec), and
//! [`AccountScoreState::from_record`] reads it back. A field added to `account_state.avsc`
//! is added to all three (and to `encode_chunk_into` when it is chunked).

use abm_schemas::{
    AccountState, AccountStateChunk, CapCount, EngagedContact, JourneyStage, RuleContribution, SeenEvent,
    StateStructure, Tier, WindowEvent,
};

use crate::engine::state::{CapEntry, Recent, RecentLog, Stamp};
use crate::engine::{AccountScoreState, Contact, ContactLog, Engine, Opportunities};

impl AccountScoreState {
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
            threshold_crossings: i64::from(self.threshold_crossings),
            hand_raiser_crossings: i64::from(self.hand_raiser_crossings),
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
            opportunities: self.opportunities.iter().cloned().collect(),
            first_applied_at: self.first_applied_at(),
            stage: self.stage,
            stage_entered_at: self.stage_entered_at(),
            journey_transitions: i64::from(self.journey_transitions),
            last_hand_raiser_at: self.last_hand_raiser_at(),
            stage_entries: self.stage_entries.to_vec(),
            model_version: Some(engine.model_version().to_owned()),
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
        w.long(i64::from(self.threshold_crossings));
        w.long(i64::from(self.hand_raiser_crossings));
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
        w.array(self.opportunities.iter(), |w, o| {
            w.string(&o.opportunity_id);
            w.symbol(o.stage as usize);
            w.optional_string(o.stage_name.as_deref());
            w.double(o.amount);
            w.string(&o.currency);
            w.long(o.created_at);
            w.long(o.updated_at);
        });
        w.optional_long(self.first_applied_at());
        w.symbol(self.stage as usize);
        w.optional_long(self.stage_entered_at());
        w.long(i64::from(self.journey_transitions));
        w.optional_long(self.last_hand_raiser_at());
        w.array(self.stage_entries.iter(), |w, e| {
            w.symbol(e.stage as usize);
            w.long(e.first_entered_at);
            w.long(e.first_sequence);
            w.long(e.last_sequence);
        });
        w.optional_string(Some(engine.model_version()));
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
        let rule_hashes: Vec<u64> = (0..engine.rules().len())
            .map(|i| abm_schemas::hash::stable_hash(&engine.rules().get(i as u16).name) as u64)
            .collect();
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
            threshold_crossings: u32::try_from(record.threshold_crossings.max(0)).unwrap_or(u32::MAX),
            hand_raiser_crossings: u32::try_from(record.hand_raiser_crossings.max(0)).unwrap_or(u32::MAX),
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
            opportunities: Opportunities::from_entries(record.opportunities.iter().cloned()),
            first_applied: record.first_applied_at.unwrap_or(i64::MAX),
            events_applied: u64::try_from(record.events_applied).unwrap_or(0),
            duplicates: u64::try_from(record.duplicates).unwrap_or(0),
            stage: record.stage,
            stage_entered: record.stage_entered_at.unwrap_or(i64::MIN),
            journey_transitions: u32::try_from(record.journey_transitions.max(0)).unwrap_or(u32::MAX),
            last_hand_raiser: record.last_hand_raiser_at.unwrap_or(i64::MIN),
            stage_entries: stage_entries(record),
        }
    }
}

/// The stage entries of a record; a state written before they were kept (none, but a stage
/// past unaware) starts with its current stage, entered at `stage_entered_at` by its latest
/// transition.
fn stage_entries(record: &AccountState) -> crate::engine::StageEntries {
    let mut entries = crate::engine::StageEntries::from_entries(record.stage_entries.iter().copied());
    if entries.iter().next().is_none()
        && record.stage != JourneyStage::Unaware
        && let Some(at) = record.stage_entered_at
    {
        let sequence = record.journey_transitions.max(1);
        entries = crate::engine::StageEntries::from_entries([abm_schemas::StageEntry {
            stage: record.stage,
            first_entered_at: at,
            first_sequence: sequence,
            last_sequence: sequence,
        }]);
    }
    entries
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
        .map_or_else(|| abm_schemas::hash::stable_hash(text), |hash| hash as i64)
}

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

    use super::{cap_contact_hash, cap_contact_text};
    use crate::engine::{AccountScoreState, Applied, DAY_MS, Engine, ScoringConfig};

    fn visit(id: &str, t: i64) -> EngagementEvent {
        let mut event = EngagementEvent::new(id, EventKind::WebVisit, t, "test");
        event.contact = Some(Contact { contact_id: Some("c-1".into()), ..Contact::default() });
        event.web_visit = Some(WebVisit { url: "https://v.example/docs".into(), referrer: None, title: None });
        event
    }

    /// A state written before stage entries (none) starts with its current stage, entered at
    /// `stage_entered_at` by its latest transition; entries read back as written, one per stage.
    #[test]
    fn stage_entries_of_older_states_start_with_the_current_stage() {
        use abm_schemas::{JourneyStage, StageEntry};
        let engine = Engine::new(ScoringConfig::default()).expect("valid");
        let mut state = AccountScoreState::default();
        engine.apply("acc", &mut state, &visit("e1", 1_700_000_000_000), Tier::Tier1);
        let mut record = state.to_record("acc", &engine);
        assert_eq!(record.stage_entries.len(), 1, "aware");
        record.stage_entries.clear();
        record.stage = JourneyStage::Mqa;
        record.stage_entered_at = Some(5);
        record.journey_transitions = 3;
        let restored = AccountScoreState::from_record(&record, &engine);
        let entry = StageEntry { stage: JourneyStage::Mqa, first_entered_at: 5, first_sequence: 3, last_sequence: 3 };
        assert_eq!(restored.stage_entries.to_vec(), [entry]);
        // Repeated or unaware entries in a record (another writer's) are kept once, in order.
        let aware = StageEntry { stage: JourneyStage::Aware, ..entry };
        let unaware = StageEntry { stage: JourneyStage::Unaware, ..entry };
        record.stage_entries = vec![entry, unaware, aware, entry];
        let restored = AccountScoreState::from_record(&record, &engine);
        assert_eq!(restored.stage_entries.to_vec(), [aware, entry]);
    }

    #[test]
    fn cap_contacts_round_trip_as_hashes_and_full_keys_are_hashed() {
        let hash = abm_schemas::hash::stable_hash("c-1");
        assert_eq!(cap_contact_hash(&cap_contact_text(hash)), hash);
        assert_eq!(cap_contact_text(hash).len(), 17);
        assert_eq!(cap_contact_hash("c-1"), hash, "a key written in full");
        assert_eq!(cap_contact_hash("#xyz"), abm_schemas::hash::stable_hash("#xyz"), "not a hash: a key");
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
