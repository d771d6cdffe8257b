//! One account's scoring state, kept compact in memory. Its Avro form, the changelog's
//! `AccountState`, is the scorer's business, not the engine's: `crate::changelog::wire`.
//!
//! - [`AccountScoreState`] and what the engine does to it (this file);
//! - [`ContactLog`] (`contacts.rs`) and [`RecentLog`] (`recent.rs`): packed logs, one allocation
//!   each, over the byte codec of `bytes.rs`, read with [`PackedIter`] (`packed.rs`);
//! - [`CapEntry`] and [`Stamp`] (`stamps.rs`): the fixed-size entries.

mod bytes;
mod contacts;
mod opportunities;
mod packed;
mod recent;
mod stamps;

use std::collections::VecDeque;

use abm_schemas::{EngagedContact, EventKind, JourneyStage, RecentEvent, StageEntry, Tier};

pub use contacts::{Contact, ContactLog};
pub use opportunities::Opportunities;
pub use packed::PackedIter;
pub(crate) use recent::{Recent, RecentLog};
pub(crate) use stamps::{CapEntry, Stamp};

use super::config::ScoringConfig;
use super::{BREADTH_WINDOW_MS, COUNT_WINDOWS_DAYS, DAY_MS, Engine, KindCounts};

/// Everything the engine keeps about one account. All collections are bounded by
/// [`ScoringConfig`]'s `max_*` settings and by the time windows.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountScoreState {
    pub tier: Tier,
    pub as_of: Option<i64>,
    /// `E` at `as_of`.
    pub engagement: f64,
    /// Decayed points per rule index at `as_of`.
    /// (A boxed slice, not a `Vec`: a rule is added rarely, and every byte of the state is
    /// paid by every account; `stamps.rs` bounds its size.)
    pub rule_points: Box<[(u16, f64)]>,
    pub armed: bool,
    /// Crossings so far (u32: four billion per account is out of reach, and the state stays in
    /// its allocator class; see `stamps.rs`).
    pub threshold_crossings: u32,
    pub hand_raiser_crossings: u32,
    pub contacts: ContactLog,
    /// Kind and time of applied events in the 90-day window.
    pub(crate) window: Vec<Stamp>,
    pub(crate) caps: Vec<CapEntry>,
    /// (event id hash, as-of when applied), in apply order.
    pub(crate) seen: VecDeque<(i64, i64)>,
    pub(crate) recent: RecentLog,
    /// The latest state of each CRM opportunity (bounded by `max_opportunities`).
    pub opportunities: Opportunities,
    /// The earliest event time among the applied events; `i64::MAX` before the first (and in
    /// states restored from records written before it was kept). See [`Self::first_applied_at`].
    pub(crate) first_applied: i64,
    pub events_applied: u64,
    pub duplicates: u64,
    /// The journey stage after the last applied event, the event time that moved the account
    /// into it (`i64::MIN` while unaware) and the transitions so far.
    pub stage: JourneyStage,
    pub(crate) stage_entered: i64,
    pub journey_transitions: u32,
    /// The latest event time of an applied demo request; `i64::MIN` before the first.
    pub(crate) last_hand_raiser: i64,
    /// One entry per journey stage ever entered, in stage order (at most five: unaware has none).
    pub stage_entries: StageEntries,
}

/// The journey stages an account entered, one [`StageEntry`] each, in stage order: one pointer
/// in the state (its size is bounded in `stamps.rs`), nothing allocated before the first.
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(clippy::box_collection)] // One pointer, not a Vec's three words, in every account's state.
pub struct StageEntries(Option<Box<Vec<StageEntry>>>);

impl StageEntries {
    /// At most one entry per stage, unaware left out, in stage order.
    pub fn from_entries(entries: impl IntoIterator<Item = StageEntry>) -> StageEntries {
        let mut entries: Vec<StageEntry> = entries.into_iter().filter(|e| e.stage != JourneyStage::Unaware).collect();
        entries.sort_by_key(|e| e.stage);
        entries.dedup_by_key(|e| e.stage);
        StageEntries((!entries.is_empty()).then(|| Box::new(entries)))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, StageEntry> {
        self.0.as_deref().map_or([].iter(), |entries| entries.iter())
    }

    pub fn to_vec(&self) -> Vec<StageEntry> {
        self.iter().copied().collect()
    }
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
            opportunities: Opportunities::default(),
            first_applied: i64::MAX,
            events_applied: 0,
            duplicates: 0,
            stage: JourneyStage::Unaware,
            stage_entered: i64::MIN,
            journey_transitions: 0,
            last_hand_raiser: i64::MIN,
            stage_entries: StageEntries::default(),
        }
    }
}

impl AccountScoreState {
    /// Goes on numbering from `before` (the account's state under the model it is switched
    /// from): its crossing and journey sequences continue `before`'s, so no crossing, alert or
    /// transition id is given twice. Scores are untouched.
    pub fn continue_numbering_from(&mut self, before: &AccountScoreState) {
        self.threshold_crossings = self.threshold_crossings.saturating_add(before.threshold_crossings);
        self.hand_raiser_crossings = self.hand_raiser_crossings.saturating_add(before.hand_raiser_crossings);
        let base = before.journey_transitions;
        self.journey_transitions = self.journey_transitions.saturating_add(base);
        if let Some(entries) = self.stage_entries.0.as_mut() {
            for entry in entries.iter_mut() {
                entry.first_sequence += i64::from(base);
                entry.last_sequence += i64::from(base);
            }
        }
    }

    /// Notes the account's `sequence`-th transition, into `stage` at event time `at`.
    pub(crate) fn enter_stage(&mut self, stage: JourneyStage, at: i64, sequence: u32) {
        let sequence = i64::from(sequence);
        let entries = self.stage_entries.0.get_or_insert_with(Box::default);
        if let Some(entry) = entries.iter_mut().find(|e| e.stage == stage) {
            entry.last_sequence = sequence;
            return;
        }
        entries.push(StageEntry { stage, first_entered_at: at, first_sequence: sequence, last_sequence: sequence });
        entries.sort_by_key(|e| e.stage);
    }

    /// When the account entered its journey stage (event time); `None` while unaware.
    pub fn stage_entered_at(&self) -> Option<i64> {
        (self.stage_entered != i64::MIN).then_some(self.stage_entered)
    }

    /// The latest event time of an applied demo request, if any.
    pub fn last_hand_raiser_at(&self) -> Option<i64> {
        (self.last_hand_raiser != i64::MIN).then_some(self.last_hand_raiser)
    }

    /// The earliest event time among the applied events, if known.
    pub fn first_applied_at(&self) -> Option<i64> {
        (self.first_applied != i64::MAX).then_some(self.first_applied)
    }

    /// Counts one more event of (contact, rule) on `day` and returns the new count.
    pub(crate) fn count_for_cap(&mut self, contact_key: &str, rule: u16, day: i64) -> u32 {
        let contact = abm_schemas::hash::stable_hash(contact_key);
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
        let count = self.contacts.engagement_times().filter(|t| in_breadth_window(*t, at)).count();
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
    /// The contacts engaged in `(at - 30 days, at]`: those breadth counts (and coverage reads).
    pub(crate) fn engaged_at(&self, at: i64) -> impl Iterator<Item = Contact<'_>> {
        self.contacts.iter().filter(move |c| in_breadth_window(c.last_engaged_at, at))
    }

    pub fn engaged_contacts(&self, at: i64) -> Vec<EngagedContact> {
        let mut contacts: Vec<EngagedContact> = self
            .engaged_at(at)
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

    /// Approximate heap bytes held by this state (for the memory metric and benchmarks).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.contacts.heap_bytes()
            + self.recent.heap_bytes()
            + self.rule_points.len() * size_of::<(u16, f64)>()
            + self.window.capacity() * size_of::<Stamp>()
            + self.caps.capacity() * size_of::<CapEntry>()
            + self.seen.capacity() * size_of::<(i64, i64)>()
            + self.opportunities.heap_bytes()
    }
}

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
    pub opportunities: u64,
}

impl Trimmed {
    /// The structures with their counts, for metrics.
    pub fn by_structure(&self) -> [(&'static str, u64); 6] {
        [
            ("contacts", self.contacts),
            ("window_events", self.window_events),
            ("cap_counters", self.cap_counters),
            ("seen_ids", self.seen_ids),
            ("recent_events", self.recent_events),
            ("opportunities", self.opportunities),
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
        self.opportunities += other.opportunities;
    }
}

/// A UTC day number as kept in cap entries (the Avro form's `int`); far-off days saturate.
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

/// Whether a contact last engaged at `t` counts at `at`: `t` in `(at - 30 days, at]`.
pub(crate) fn in_breadth_window(t: i64, at: i64) -> bool {
    t > at.saturating_sub(BREADTH_WINDOW_MS) && t <= at
}
