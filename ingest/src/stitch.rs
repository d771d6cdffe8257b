//! Identity stitching: a visitor's events that could not be resolved to an account wait until
//! the visitor identifies (or names its company), then go to `abm.engagement` at their own
//! event times, exactly once.
//!
//! The collector writes what it learns of a visitor (a Segment `identify`, `group`, `alias`) and
//! each of its events it could not resolve to `abm.identity`, keyed by visitor id, as
//! [`Visitor`] observations. The stitcher — an exactly-once loop of its own ([`abm::eos`]) —
//! keeps each visitor's merged state, one record per visitor in the compacted
//! `abm.identity-graph` (the same partition number as its input: the state follows the
//! partition, as the scorer's does), and for every observation:
//!
//! 1. merges it into the visitor ([`merge`]: facts given win, events are appended);
//! 2. tries every waiting event with the visitor's facts ([`settle`]): the event's own contact
//!    fields first, the visitor's fill the rest (contact id, email, title, persona), then its
//!    account (explicit, by email domain, by domain, as the collector resolves). An event that
//!    resolves goes to `abm.engagement`; the others wait;
//! 3. keeps at most `ingest.stitch.max_pending_events` waiting (the oldest beyond go to
//!    `abm.unresolved`, counted), and forgets a visitor idle for `ingest.stitch.retention_days`
//!    (its waiting events go to `abm.unresolved`).
//!
//! Outputs, the visitor's new state and the input offsets commit in one transaction, so an
//! event is released once however the process dies; and since the scorer's decay does not
//! depend on the order events arrive in, a late resolution gives the score an early one would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm::eos::{Outbox, Processor, StagedCounters};
use abm::kafka::KafkaConfig;
use abm_schemas::{EngagementEvent, RejectReason, Visitor};
use anyhow::{Context as _, anyhow};
use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;
use serde::{Deserialize, Serialize};

use crate::resolve::{Resolution, TalIndex};

/// `[ingest.stitch]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StitchConfig {
    /// Run the stitcher in this process (default true). Every ingest instance may run it: they
    /// share its partitions as a consumer group.
    pub enabled: bool,
    /// Consumer group of the stitchers (default `abm-stitch`).
    pub group_id: String,
    /// Stable id of this instance: its Kafka `transactional.id` (default `abm-stitch-<hostname>`).
    pub instance_id: String,
    /// Transaction interval (default 100 ms): how long a resolved event may wait to be released.
    pub commit_interval_ms: u64,
    /// Events kept waiting per visitor (default 100); older ones go to `abm.unresolved`.
    pub max_pending_events: usize,
    /// Bytes of waiting events kept per visitor (default 262144): the visitor's state is one
    /// record, which must stay well under Kafka's 1 MB; older events beyond go to `abm.unresolved`.
    pub max_pending_bytes: usize,
    /// A visitor unseen this long is forgotten, its waiting events to `abm.unresolved` (default 90).
    pub retention_days: u32,
    /// Visitors held per partition at most (default 100000): beyond it the least recently seen
    /// sixteenth are forgotten as if expired (`evicted`), so no flood of new visitor ids can
    /// grow the state without end.
    pub max_visitors_per_partition: usize,
    /// As `ingest.stall_after_ms`, for the stitcher's loop (default 20000, at least 2000).
    pub stall_after_ms: u64,
}

impl Default for StitchConfig {
    fn default() -> Self {
        StitchConfig {
            enabled: true,
            group_id: "abm-stitch".into(),
            instance_id: format!("abm-stitch-{}", abm::service::hostname()),
            commit_interval_ms: 100,
            max_pending_events: 100,
            max_pending_bytes: 262_144,
            retention_days: 90,
            max_visitors_per_partition: 100_000,
            stall_after_ms: 20_000,
        }
    }
}

impl StitchConfig {
    pub fn check(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.max_pending_events) {
            return Err("ingest.stitch.max_pending_events must be 1 to 10000".into());
        }
        if !(16_384..=786_432).contains(&self.max_pending_bytes) {
            return Err("ingest.stitch.max_pending_bytes must be 16384 to 786432".into());
        }
        if self.retention_days == 0 {
            return Err("ingest.stitch.retention_days must be at least 1".into());
        }
        if self.max_visitors_per_partition < 16 {
            return Err("ingest.stitch.max_visitors_per_partition must be at least 16".into());
        }
        Ok(())
    }
}

/// Merges an observation into a visitor's state: each fact the observation gives replaces the
/// state's (contact fields one by one), its events are appended, the newest time is kept.
pub fn merge(state: &mut Visitor, observed: Visitor) {
    if state.visitor_id.is_empty() {
        state.visitor_id = observed.visitor_id;
    }
    if observed.user_id.is_some() {
        state.user_id = observed.user_id;
    }
    if let Some(given) = observed.contact {
        let contact = state.contact.get_or_insert_with(Default::default);
        for (mine, theirs) in [
            (&mut contact.contact_id, given.contact_id),
            (&mut contact.email, given.email),
            (&mut contact.title, given.title),
            (&mut contact.persona, given.persona),
        ] {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
    }
    if observed.account_id.is_some() {
        state.account_id = observed.account_id;
    }
    if observed.domain.is_some() {
        state.domain = observed.domain;
    }
    state.events.extend(observed.events);
    state.updated_at = state.updated_at.max(observed.updated_at);
}

/// `event` with what the visitor's state knows: its own contact fields first, the visitor's
/// for the rest; the visitor's account and domain when it has none.
pub fn enrich(event: &mut EngagementEvent, visitor: &Visitor) {
    let known_id = visitor.contact.as_ref().and_then(|c| c.contact_id.clone()).or_else(|| visitor.user_id.clone());
    if let Some(known) = &visitor.contact {
        let contact = event.contact.get_or_insert_with(Default::default);
        for (mine, theirs) in [
            (&mut contact.email, &known.email),
            (&mut contact.title, &known.title),
            (&mut contact.persona, &known.persona),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
    }
    if let Some(id) = known_id {
        let contact = event.contact.get_or_insert_with(Default::default);
        contact.contact_id.get_or_insert(id);
    }
    if event.account_id.is_none() {
        event.account_id.clone_from(&visitor.account_id);
    }
    if event.domain.is_none() {
        event.domain.clone_from(&visitor.domain);
    }
}

/// What became of a visitor's waiting events.
#[derive(Debug, Default)]
pub struct Settled {
    /// Resolved: (account, the enriched event), in the order they waited.
    pub resolved: Vec<(String, EngagementEvent)>,
    /// Pushed out by the bound (oldest first), as they were.
    pub overflow: Vec<EngagementEvent>,
    /// Waiting messages that did not decode (dropped from the state, counted).
    pub undecodable: usize,
}

/// Tries every waiting event of `state` with its facts; keeps those that do not resolve, at
/// most `max_pending` of them and `max_bytes` of their messages (the newest).
pub fn settle(state: &mut Visitor, tal: &TalIndex, max_pending: usize, max_bytes: usize) -> Settled {
    let mut settled = Settled::default();
    let mut waiting = Vec::new();
    for message in std::mem::take(&mut state.events) {
        let Ok(original) = abm_schemas::decode::<EngagementEvent>(&message) else {
            settled.undecodable += 1;
            continue;
        };
        let mut event = original.clone();
        enrich(&mut event, state);
        match tal.resolve(&mut event) {
            Resolution::Account(account) => settled.resolved.push((account, event)),
            Resolution::Unresolved(_) => waiting.push((message, original)),
        }
    }
    // The newest that fit both bounds stay; everything older goes.
    let mut kept_bytes = 0;
    let mut kept = 0;
    for (message, _) in waiting.iter().rev() {
        if kept == max_pending || kept_bytes + message.len() > max_bytes {
            break;
        }
        kept += 1;
        kept_bytes += message.len();
    }
    let excess = waiting.len() - kept;
    for (index, (message, original)) in waiting.into_iter().enumerate() {
        if index < excess {
            settled.overflow.push(original);
        } else {
            state.events.push(message);
        }
    }
    settled
}

/// The visitors of one partition to forget, and why: `expired` when last seen before `cutoff`
/// (when given), then, while more than `bound` remain, the least recently seen down to
/// 15/16 of it (`evicted`).
pub fn to_forget(states: &HashMap<String, Visitor>, cutoff: Option<i64>, bound: usize) -> Vec<(String, &'static str)> {
    let expired = |visitor: &Visitor| cutoff.is_some_and(|cutoff| visitor.updated_at < cutoff);
    let mut chosen: Vec<(String, &'static str)> =
        states.iter().filter(|(_, v)| expired(v)).map(|(k, _)| (k.clone(), "expired")).collect();
    let remaining = states.len() - chosen.len();
    if remaining > bound {
        let mut by_age: Vec<(i64, &String)> =
            states.iter().filter(|(_, v)| !expired(v)).map(|(k, v)| (v.updated_at, k)).collect();
        by_age.sort_unstable();
        let excess = remaining - (bound - bound / 16);
        chosen.extend(by_age.into_iter().take(excess).map(|(_, k)| (k.clone(), "evicted")));
    }
    chosen
}

/// Whether a visitor's state holds nothing worth keeping.
fn is_empty(state: &Visitor) -> bool {
    state.events.is_empty()
        && state.user_id.is_none()
        && state.contact.is_none()
        && state.account_id.is_none()
        && state.domain.is_none()
}

/// The stitcher's topics.
#[derive(Debug, Clone)]
pub struct StitchTopics {
    pub identity: String,
    pub graph: String,
    pub engagement: String,
    pub unresolved: String,
    pub rejected: String,
}

/// `abm_ingest_stitch_*`.
#[derive(Debug, Clone)]
pub struct StitchMetrics {
    /// Observations read, by what they carried: `event`, `identity`.
    pub observations: prometheus::IntCounterVec,
    /// Events released by outcome: `resolved` (to abm.engagement), `overflow`, `expired` (to
    /// abm.unresolved), `undecodable`.
    pub events: prometheus::IntCounterVec,
    pub visitors: prometheus::IntGauge,
    pub waiting: prometheus::IntGauge,
}

impl StitchMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<StitchMetrics> {
        let metrics = StitchMetrics {
            observations: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "abm_ingest_stitch_observations_total",
                    "abm.identity records the stitcher applied, by what they carried (an event waiting for its account, or identity facts).",
                ),
                &["carrying"],
            )?,
            events: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "abm_ingest_stitch_events_total",
                    "Waiting events the stitcher let go: resolved (to abm.engagement), overflow, expired and evicted (to abm.unresolved), undecodable. Events in = these + abm_ingest_stitch_waiting_events.",
                ),
                &["outcome"],
            )?,
            visitors: prometheus::IntGauge::new(
                "abm_ingest_stitch_visitors",
                "Visitors this instance's stitcher holds (its partitions).",
            )?,
            waiting: prometheus::IntGauge::new(
                "abm_ingest_stitch_waiting_events",
                "Events waiting for their visitor's account on this instance's partitions.",
            )?,
        };
        registry.register(Box::new(metrics.observations.clone()))?;
        registry.register(Box::new(metrics.events.clone()))?;
        registry.register(Box::new(metrics.visitors.clone()))?;
        registry.register(Box::new(metrics.waiting.clone()))?;
        Ok(metrics)
    }
}

type Partitions = HashMap<i32, HashMap<String, Visitor>>;

/// The stitcher as an [`abm::eos::Processor`].
#[derive(Debug)]
pub struct StitchProcessor {
    config: StitchConfig,
    tal: Arc<TalIndex>,
    topics: StitchTopics,
    kafka: KafkaConfig,
    metrics: StitchMetrics,
    staged: StagedCounters,
    visitors: Mutex<Partitions>,
    dirty: Mutex<BTreeMap<i32, BTreeSet<String>>>,
    /// Visitors the open transaction forgets (tombstoned in it): removed from memory when it
    /// commits, kept when it aborts (the graph still holds them then).
    forgetting: Mutex<Vec<(i32, String)>>,
    last_sweep: Mutex<Instant>,
    last_gauges: Mutex<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often idle visitors are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl StitchProcessor {
    pub fn new(
        config: StitchConfig,
        tal: Arc<TalIndex>,
        topics: StitchTopics,
        kafka: KafkaConfig,
        metrics: StitchMetrics,
    ) -> StitchProcessor {
        StitchProcessor {
            config,
            tal,
            topics,
            kafka,
            metrics,
            staged: StagedCounters::default(),
            visitors: Mutex::default(),
            dirty: Mutex::default(),
            forgetting: Mutex::default(),
            last_sweep: Mutex::new(Instant::now()),
            last_gauges: Mutex::new(Instant::now()),
        }
    }

    fn count(&self, outcome: &str, amount: usize) {
        if amount > 0 {
            self.staged.add(&self.metrics.events.with_label_values(&[outcome]), amount as u64);
        }
    }

    fn release(&self, out: &Outbox<'_>, visitor_id: &str, settled: Settled, why: &str) -> anyhow::Result<()> {
        for (account, event) in &settled.resolved {
            out.send(&self.topics.engagement, account, &abm_schemas::encode(event)?, None)?;
        }
        for event in &settled.overflow {
            out.send(&self.topics.unresolved, visitor_id, &abm_schemas::encode(event)?, None)?;
        }
        self.count("resolved", settled.resolved.len());
        self.count(why, settled.overflow.len());
        self.count("undecodable", settled.undecodable);
        Ok(())
    }

    /// Sets the visitor gauges: a pass over every visitor, so at most once a second.
    fn update_gauges(&self, force: bool) {
        {
            let mut last = lock(&self.last_gauges);
            if !force && last.elapsed() < Duration::from_secs(1) {
                return;
            }
            *last = Instant::now();
        }
        let visitors = lock(&self.visitors);
        let count: usize = visitors.values().map(HashMap::len).sum();
        let waiting: usize = visitors.values().flat_map(HashMap::values).map(|v| v.events.len()).sum();
        self.metrics.visitors.set(count as i64);
        self.metrics.waiting.set(waiting as i64);
    }

    /// Forgets visitors idle past the retention (`expired`), and the least recently seen of a
    /// partition over its bound (`evicted`); their waiting events go to abm.unresolved.
    fn sweep(&self, out: &Outbox<'_>, now: i64, idle: bool) -> anyhow::Result<()> {
        let cutoff = now.saturating_sub(i64::from(self.config.retention_days) * 86_400_000);
        let bound = self.config.max_visitors_per_partition;
        let mut forgotten = Vec::new();
        {
            let visitors = lock(&self.visitors);
            for (partition, states) in visitors.iter() {
                for (visitor_id, why) in to_forget(states, idle.then_some(cutoff), bound) {
                    if let Some(state) = states.get(&visitor_id) {
                        forgotten.push((*partition, visitor_id, state.events.clone(), why));
                    }
                }
            }
        }
        for (partition, visitor_id, events, why) in forgotten {
            let mut settled = Settled::default();
            for message in events {
                match abm_schemas::decode::<EngagementEvent>(&message) {
                    Ok(event) => settled.overflow.push(event),
                    Err(_) => settled.undecodable += 1,
                }
            }
            self.release(out, &visitor_id, settled, why)?;
            out.write(&self.topics.graph, &visitor_id, None, Some(partition))?;
            lock(&self.forgetting).push((partition, visitor_id));
        }
        Ok(())
    }
}

impl Processor for StitchProcessor {
    fn process(&self, message: &BorrowedMessage<'_>, out: &Outbox<'_>) -> anyhow::Result<()> {
        let partition = message.partition();
        let observed = match abm_schemas::decode::<Visitor>(message.payload().unwrap_or_default()) {
            Ok(observed) => observed,
            Err(error) if error.is_retryable() => return Err(anyhow!("decoding a Visitor: {error}")),
            Err(error) => {
                let text = format!("undecodable Visitor: {error}");
                return out.reject(&self.topics.rejected, message, RejectReason::Other, text, None);
            }
        };
        let carrying = if observed.events.is_empty() { "identity" } else { "event" };
        self.staged.add(&self.metrics.observations.with_label_values(&[carrying]), 1);
        let key = message.key().map(String::from_utf8_lossy).map(|key| key.into_owned());
        let visitor_id = key.filter(|key| !key.is_empty()).unwrap_or_else(|| observed.visitor_id.clone());
        let settled = {
            let mut visitors = lock(&self.visitors);
            let state = visitors.entry(partition).or_default().entry(visitor_id.clone()).or_default();
            merge(state, observed);
            settle(state, &self.tal, self.config.max_pending_events, self.config.max_pending_bytes)
        };
        self.release(out, &visitor_id, settled, "overflow")?;
        lock(&self.dirty).entry(partition).or_default().insert(visitor_id);
        Ok(())
    }

    fn before_commit(&self, out: &Outbox<'_>) -> anyhow::Result<()> {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        for (partition, visitor_ids) in dirty {
            for visitor_id in visitor_ids {
                let payload = {
                    let mut visitors = lock(&self.visitors);
                    let states = visitors.entry(partition).or_default();
                    match states.get(&visitor_id) {
                        Some(state) if !is_empty(state) => Some(abm_schemas::encode(state)?),
                        Some(_) => {
                            states.remove(&visitor_id);
                            None
                        }
                        None => None,
                    }
                };
                out.write(&self.topics.graph, &visitor_id, payload.as_deref(), Some(partition))?;
            }
        }
        let due = {
            let mut last = lock(&self.last_sweep);
            let due = last.elapsed() >= SWEEP_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        let crowded = lock(&self.visitors).values().any(|states| states.len() > self.config.max_visitors_per_partition);
        if due || crowded {
            self.sweep(out, abm::clock::now_ms(), due)?;
        }
        Ok(())
    }

    fn restore(&self, partitions: &[i32]) -> anyhow::Result<()> {
        let mut restored: Partitions = partitions.iter().map(|p| (*p, HashMap::new())).collect();
        abm::kafka::read_to_end(
            &self.kafka,
            "abm-stitch-restore",
            &self.topics.graph,
            partitions,
            |partition, key, value| {
                let Some(states) = restored.get_mut(&partition) else { return Ok(()) };
                let visitor_id = String::from_utf8_lossy(key).into_owned();
                match value {
                    None => {
                        states.remove(&visitor_id);
                    }
                    Some(bytes) => {
                        match abm_schemas::decode_patiently::<Visitor>(bytes, abm_schemas::REGISTRY_PATIENCE) {
                            Ok(state) => {
                                states.insert(visitor_id, state);
                            }
                            Err(error) if error.is_retryable() => return Err(anyhow!("{error}")),
                            Err(error) => {
                                // Its facts and waiting events cannot be read: counted, and left in the graph.
                                self.metrics.events.with_label_values(&["undecodable"]).inc();
                                tracing::error!(partition, %error, "undecodable visitor state skipped");
                            }
                        }
                    }
                }
                Ok(())
            },
        )
        .with_context(|| format!("restoring the identity graph of partitions {partitions:?}"))?;
        lock(&self.visitors).extend(restored);
        self.update_gauges(true);
        Ok(())
    }

    fn revoke(&self, partitions: &[i32]) {
        let mut visitors = lock(&self.visitors);
        let mut dirty = lock(&self.dirty);
        for partition in partitions {
            visitors.remove(partition);
            dirty.remove(partition);
        }
    }

    fn committed(&self, _duration: Duration) {
        let forgotten = std::mem::take(&mut *lock(&self.forgetting));
        {
            let mut visitors = lock(&self.visitors);
            for (partition, visitor_id) in forgotten {
                if let Some(states) = visitors.get_mut(&partition) {
                    states.remove(&visitor_id);
                }
            }
        }
        self.staged.commit();
        self.update_gauges(false);
    }

    fn aborted(&self, _reason: &str) {
        self.staged.discard();
        lock(&self.dirty).clear();
        lock(&self.forgetting).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abm_schemas::{Account, Contact, EventKind, Tier, WebVisit};

    fn tal() -> TalIndex {
        let index = TalIndex::new(&crate::validate::ValidationConfig::default().free_mail_domains);
        index.upsert(&Account {
            account_id: "acme".into(),
            name: "Acme".into(),
            domains: vec!["acme.example".into()],
            tier: Tier::Tier1,
            owner: "sdr".into(),
            industry: None,
            employees: None,
            committee: None,
            updated_at: 0,
        });
        index
    }

    fn page(id: &str, at: i64) -> Vec<u8> {
        let mut event = EngagementEvent::new(id, EventKind::WebVisit, at, "http:site");
        event.web_visit = Some(WebVisit { url: "https://vendor.example/pricing".into(), referrer: None, title: None });
        abm_schemas::encode(&event).expect("encodes")
    }

    fn observe(events: Vec<Vec<u8>>) -> Visitor {
        let mut observed = Visitor { visitor_id: "a1".into(), updated_at: 5, ..Visitor::default() };
        for event in events {
            merge(&mut observed, Visitor::waiting("a1", event, 5));
        }
        observed
    }

    fn identify(email: &str, title: &str) -> Visitor {
        Visitor {
            visitor_id: "a1".into(),
            user_id: Some("u1".into()),
            contact: Some(Contact {
                contact_id: Some("u1".into()),
                email: Some(email.into()),
                title: Some(title.into()),
                persona: None,
            }),
            updated_at: 9,
            ..Visitor::default()
        }
    }

    #[test]
    fn waiting_events_resolve_once_the_visitor_identifies_whatever_the_order() {
        let tal = tal();
        // Anonymous first: the pages wait, then identify releases them enriched.
        let mut late = Visitor::default();
        merge(&mut late, observe(vec![page("p1", 100), page("p2", 200)]));
        let settled = settle(&mut late, &tal, 10, 1 << 20);
        assert!(settled.resolved.is_empty() && late.events.len() == 2);
        merge(&mut late, identify("cfo@acme.example", "CFO"));
        let released = settle(&mut late, &tal, 10, 1 << 20).resolved;
        assert!(late.events.is_empty());
        // Identified first: the same pages resolve as they arrive, to the same events.
        let mut early = Visitor::default();
        merge(&mut early, identify("cfo@acme.example", "CFO"));
        assert!(settle(&mut early, &tal, 10, 1 << 20).resolved.is_empty());
        merge(&mut early, observe(vec![page("p1", 100), page("p2", 200)]));
        let at_once = settle(&mut early, &tal, 10, 1 << 20).resolved;
        assert_eq!(released, at_once);
        assert_eq!(released.len(), 2);
        let (account, event) = &released[0];
        assert_eq!(account, "acme");
        assert_eq!((event.event_id.as_str(), event.occurred_at), ("p1", 100), "at its own event time");
        let contact = event.contact.as_ref().expect("contact");
        assert_eq!(
            (contact.contact_id.as_deref(), contact.email.as_deref(), contact.title.as_deref()),
            (Some("u1"), Some("cfo@acme.example"), Some("CFO"))
        );
    }

    #[test]
    fn free_mail_waits_for_a_group_and_the_bound_pushes_the_oldest_out() {
        let tal = tal();
        let mut visitor = Visitor::default();
        merge(&mut visitor, identify("someone@gmail.com", "Engineer"));
        merge(&mut visitor, observe((0..5).map(|i| page(&format!("p{i}"), i)).collect()));
        let settled = settle(&mut visitor, &tal, 3, 1 << 20);
        assert!(settled.resolved.is_empty());
        let pushed: Vec<&str> = settled.overflow.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(pushed, ["p0", "p1"], "the oldest go");
        assert_eq!(visitor.events.len(), 3);
        merge(&mut visitor, Visitor { domain: Some("acme.example".into()), updated_at: 10, ..Visitor::default() });
        let released = settle(&mut visitor, &tal, 3, 1 << 20).resolved;
        assert_eq!(released.iter().map(|(_, e)| e.event_id.as_str()).collect::<Vec<_>>(), ["p2", "p3", "p4"]);
        // The event's own email stays its own (gmail), the account came from the group.
        assert_eq!(released[0].1.contact.as_ref().and_then(|c| c.email.as_deref()), Some("someone@gmail.com"));
        assert_eq!(visitor.updated_at, 10);
    }

    #[test]
    fn idle_visitors_expire_and_a_crowded_partition_forgets_the_least_recently_seen() {
        let states: HashMap<String, Visitor> = (0..40)
            .map(|i| {
                (format!("v{i:02}"), Visitor { visitor_id: format!("v{i:02}"), updated_at: i, ..Visitor::default() })
            })
            .collect();
        let mut forgotten = to_forget(&states, Some(5), 100);
        forgotten.sort();
        assert_eq!(forgotten, (0..5).map(|i| (format!("v{i:02}"), "expired")).collect::<Vec<_>>());
        // 35 left over a bound of 32: down to 30 (32 - 32/16), the oldest first.
        let mut forgotten = to_forget(&states, Some(5), 32);
        forgotten.sort_by_key(|(id, _)| id.clone());
        let evicted: Vec<&str> =
            forgotten.iter().filter(|(_, why)| *why == "evicted").map(|(id, _)| id.as_str()).collect();
        assert_eq!(evicted, ["v05", "v06", "v07", "v08", "v09"]);
        assert!(to_forget(&states, None, 40).is_empty());
    }

    #[test]
    fn the_waiting_events_of_a_visitor_are_bounded_in_bytes_too() {
        let tal = tal();
        let mut visitor = Visitor::default();
        merge(&mut visitor, observe((0..10).map(|i| page(&format!("p{i}"), i)).collect()));
        let size = visitor.events[0].len();
        let settled = settle(&mut visitor, &tal, 100, 3 * size + size / 2);
        assert_eq!(settled.overflow.len(), 7, "only the newest three fit");
        assert_eq!(abm_schemas::decode::<EngagementEvent>(&visitor.events[0]).expect("event").event_id, "p7");
    }

    #[test]
    fn an_events_own_contact_fields_win_over_the_visitors() {
        let mut event = EngagementEvent::new("e", EventKind::WebVisit, 1, "s");
        event.contact = Some(Contact { title: Some("CTO".into()), ..Contact::default() });
        let mut visitor = Visitor::default();
        merge(&mut visitor, identify("x@acme.example", "CFO"));
        enrich(&mut event, &visitor);
        let contact = event.contact.expect("contact");
        assert_eq!((contact.title.as_deref(), contact.email.as_deref()), (Some("CTO"), Some("x@acme.example")));
    }
}
