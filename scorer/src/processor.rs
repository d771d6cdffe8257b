//! The scorer's processor for the exactly-once loop ([`abm::eos`]).
//!
//! Each event of `abm.engagement` is applied to its account's state. Each transaction holds,
//! atomically: the crossings emitted since the last one (`abm.score-crossings`), the latest
//! `AccountState` of every account changed since (`abm.scorer.state`, written to the same
//! partition number as the input partition it belongs to), their latest `AccountScore`
//! (`abm.account-scores`; coalesced: at most one per account per transaction) and
//! `AccountProgram` (`abm.account-program`, likewise), and the input
//! offsets. A newly assigned partition's accounts are restored from the committed changelog
//! before any of its events is applied, so after a crash no event is counted twice or lost
//! and `read_committed` readers see each crossing once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm::eos::{Outbox, Processor, StagedCounters};
use abm::kafka::KafkaConfig;
use abm_schemas::{AccountScore, EngagementEvent, EventKind, RejectReason, Tier};
use dashmap::DashMap;
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use crate::changelog::SplitStates;
use crate::engine::Membership;
use crate::engine::{AccountScoreState, Applied, Engine, ScoreAt};
use crate::metrics::Metrics;
use crate::store::{PartitionAccounts, Store};

/// Topic names the processor reads and writes.
#[derive(Debug, Clone)]
pub struct LoopTopics {
    pub engagement: String,
    pub state: String,
    pub scores: String,
    pub crossings: String,
    pub journey: String,
    pub program: String,
    pub rejected: String,
}

/// Accounts changed in the open batch, per input partition.
type Dirty = HashMap<i32, HashSet<String>>;

/// An account's TAL entry as the scorer needs it: its tier and, when the TAL names one, its
/// buying committee.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TalEntry {
    pub tier: Tier,
    pub committee: Option<Box<[String]>>,
    /// The account's name and owner, for the query API and the console.
    pub name: Box<str>,
    pub owner: Box<str>,
}

impl TalEntry {
    /// An empty committee (only another writer than `ingest import-tal` can make one) means
    /// the tier's default, as an empty CSV cell does.
    pub fn of(account: abm_schemas::Account) -> TalEntry {
        let committee = account.committee.filter(|personas| !personas.is_empty()).map(Vec::into_boxed_slice);
        TalEntry { tier: account.tier, committee, name: account.name.into(), owner: account.owner.into() }
    }

    pub fn membership(&self) -> Membership<'_> {
        Membership { tier: self.tier, committee: self.committee.as_deref() }
    }
}

/// The TAL, by account id, kept current by the table reader.
pub type Tal = DashMap<String, TalEntry>;

/// Why an engagement event cannot be applied to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// No `account_id`, and no record key to take it from.
    MissingAccount,
    /// An account id with control characters (the id).
    InvalidAccount(String),
}

/// The account an event of `abm.engagement` is applied to: its `account_id` (moved out of the
/// event: the engine takes the id as an argument), else the record's key. The one rule of the
/// live loop, a re-score and a backtest.
pub fn account_of(event: &mut EngagementEvent, key: Option<&[u8]>) -> Result<String, Unusable> {
    let key = key.and_then(|key| std::str::from_utf8(key).ok()).filter(|key| !key.is_empty());
    let account_id = event.account_id.take().or_else(|| key.map(str::to_owned)).ok_or(Unusable::MissingAccount)?;
    if account_id.chars().any(char::is_control) {
        return Err(Unusable::InvalidAccount(account_id));
    }
    Ok(account_id)
}

#[derive(Debug)]
pub struct ScorerProcessor {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub tal: Arc<Tal>,
    pub topics: LoopTopics,
    pub metrics: Metrics,
    pub kafka: KafkaConfig,
    /// (input partition, account) changed in the open batch.
    dirty: Mutex<Dirty>,
    /// `events_applied` per kind, resolved once (no label hashing per event).
    applied_by_kind: Vec<prometheus::IntCounter>,
    /// Counts of the open transaction's work, applied when it commits.
    staged: StagedCounters,
    /// What was last written for each split (hot) account.
    split: Mutex<SplitStates>,
    /// The program's book, and the restored accounts whose `AccountProgram` it may lack (states
    /// written before the program metrics existed): written in the next transactions, at most
    /// [`BACKFILL_PER_COMMIT`] each, once the book is loaded.
    book: Arc<crate::program::Book>,
    backfill: Mutex<BTreeMap<i32, Vec<String>>>,
    /// The partitions held here, restoring or restored, for the query API's routing.
    pub ownership: Arc<crate::directory::Ownership>,
    /// `abm.engagement`'s partition count (0: unknown, not checked).
    engagement_partitions: i32,
    /// The models the cluster has run, and how a re-score runs (`None`: no re-scores, as in
    /// tests that run the processor alone).
    models: Arc<crate::models::Models>,
    rescore: Option<crate::rescore::RescoreSettings>,
    /// The partitions being re-scored here, whether there are any (read per event), and the
    /// switches made in the open transaction.
    shadows: Mutex<BTreeMap<i32, Arc<crate::rescore::Shadow>>>,
    rescoring: std::sync::atomic::AtomicBool,
    switches: Mutex<Vec<Switch>>,
    /// A transaction with switches aborted: their crossings go out first in the next one.
    resend: std::sync::atomic::AtomicBool,
}

/// A partition switched to the configured model in the open transaction: its accounts and the
/// re-score's crossings to send (written again by the next transaction if this one aborts
/// without rewinding the partition).
#[derive(Debug)]
struct Switch {
    partition: i32,
    accounts: Vec<String>,
    /// (account id, encoded `ScoreCrossing`).
    crossings: Vec<(String, Vec<u8>)>,
    recorded: u64,
    /// Sent in the open transaction.
    sent: bool,
}

/// Restored accounts checked for a missing `AccountProgram` per transaction.
pub const BACKFILL_PER_COMMIT: usize = 5_000;

use abm::clock::now_ms;

impl ScorerProcessor {
    pub fn new(
        engine: Arc<Engine>,
        store: Store,
        tal: Arc<Tal>,
        topics: LoopTopics,
        metrics: Metrics,
        kafka: KafkaConfig,
        book: Arc<crate::program::Book>,
    ) -> ScorerProcessor {
        let applied_by_kind =
            EventKind::ALL.iter().map(|kind| metrics.events_applied.with_label_values(&[kind.as_str()])).collect();
        ScorerProcessor {
            engine,
            store,
            tal,
            topics,
            metrics,
            kafka,
            dirty: Mutex::new(Dirty::new()),
            applied_by_kind,
            staged: StagedCounters::default(),
            split: Mutex::new(SplitStates::default()),
            book,
            backfill: Mutex::new(BTreeMap::new()),
            ownership: Arc::default(),
            engagement_partitions: 0,
            models: Arc::default(),
            rescore: None,
            shadows: Mutex::new(BTreeMap::new()),
            rescoring: std::sync::atomic::AtomicBool::new(false),
            switches: Mutex::new(Vec::new()),
            resend: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The same, re-scoring under the configured model every partition whose state another
    /// model of `models` built (README, "Changing the model").
    pub fn with_rescore(
        mut self,
        models: Arc<crate::models::Models>,
        settings: crate::rescore::RescoreSettings,
    ) -> ScorerProcessor {
        self.models = models;
        self.rescore = Some(settings);
        self
    }

    fn shadows(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Arc<crate::rescore::Shadow>>> {
        self.shadows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn switches(&self) -> std::sync::MutexGuard<'_, Vec<Switch>> {
        self.switches.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads `partitions` of the changelog to its end, each with the model `engine_of` gives.
    fn read_changelog(
        &self,
        partitions: &[i32],
        engine_of: impl Fn(i32) -> Arc<Engine>,
    ) -> anyhow::Result<BTreeMap<i32, crate::changelog::Restored>> {
        crate::changelog::restore_partitions(
            &self.kafka,
            "abm-scorer-restore",
            &self.topics.state,
            partitions,
            engine_of,
        )
    }

    /// Starts re-scoring `partition` under the configured model.
    fn start_rescore(&self, partition: i32, serving: &str) {
        let Some(settings) = self.rescore.clone() else { return };
        tracing::info!(
            partition,
            serving,
            configured = self.engine.model_version(),
            "the partition's state was built by another model: it serves with that model while abm.engagement is re-scored under the configured one"
        );
        let shadow = crate::rescore::Shadow::start(
            partition,
            self.engine.clone(),
            self.kafka.clone(),
            settings,
            self.tal.clone(),
            self.metrics.clone(),
        );
        let mut shadows = self.shadows();
        if let Some(previous) = shadows.insert(partition, shadow) {
            previous.stop();
        }
        self.rescoring.store(true, std::sync::atomic::Ordering::Release);
        self.metrics.rescore_partitions.set(shadows.len() as i64);
    }

    /// Switches every re-scored partition that has caught up with the live loop (and writes
    /// again what a switch of an aborted transaction wrote): its accounts are marked dirty, so
    /// the commit writes them whole, and the re-score's recent crossings are sent.
    fn switch_caught_up(&self, out: &Outbox<'_>, dirty: &mut Dirty) -> anyhow::Result<()> {
        if self.rescoring.load(std::sync::atomic::Ordering::Acquire) {
            let mut shadows = self.shadows();
            let mut behind = 0;
            let mut caught_up = Vec::new();
            for (partition, shadow) in shadows.iter() {
                behind += shadow.behind();
                if shadow.caught_up() {
                    caught_up.push(*partition);
                }
            }
            for partition in caught_up {
                if let Some(shadow) = shadows.remove(&partition) {
                    shadow.stop();
                    behind -= shadow.behind();
                    let switch = self.switch(&shadow);
                    self.switches().push(switch);
                }
            }
            self.metrics.rescore_behind.set(behind);
            self.rescoring.store(!shadows.is_empty(), std::sync::atomic::Ordering::Release);
            self.metrics.rescore_partitions.set(shadows.len() as i64);
        }
        for switch in self.switches().iter() {
            let accounts = dirty.entry(switch.partition).or_default();
            accounts.extend(switch.accounts.iter().cloned());
        }
        self.send_switch_crossings(out)
    }

    /// Sends the crossings of the switches not sent in this transaction yet: at the switch, or
    /// after an abort that kept the partition switched, first thing in the next transaction
    /// (before any live crossing of the new model, whose sequences come after theirs).
    fn send_switch_crossings(&self, out: &Outbox<'_>) -> anyhow::Result<()> {
        for switch in self.switches().iter_mut().filter(|switch| !switch.sent) {
            for (account_id, crossing) in &switch.crossings {
                out.send(&self.topics.crossings, account_id, crossing, None)?;
            }
            switch.sent = true;
        }
        self.resend.store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Puts the shadow's states in place of the partition's (numbering on from them), under
    /// the configured model.
    fn switch(&self, shadow: &crate::rescore::Shadow) -> Switch {
        let partition = shadow.partition;
        let serving = self.store.engine_of(partition);
        let live = self.store.partition(partition);
        let crate::rescore::ShadowState { accounts, crossings, mut recorded, events, .. } =
            std::mem::take(&mut *shadow.lock());
        let window = self.rescore.as_ref().map_or(0, |settings| settings.window_ms);
        let now = now_ms();
        let switched = PartitionAccounts::default();
        let mut bases: std::collections::HashMap<Box<str>, (u32, u32)> = std::collections::HashMap::new();
        for (account_id, mut fresh) in accounts {
            if let Some(before) = live.get(&*account_id) {
                bases.insert(account_id.clone(), (before.threshold_crossings, before.hand_raiser_crossings));
                fresh.continue_numbering_from(&before);
            }
            switched.insert((&*account_id).into(), Box::new(fresh));
        }
        // An account with no event left in the retained history keeps its state, read into the
        // configured model (its rules matched by name).
        let mut carried = 0;
        for entry in live.iter() {
            let account_id = entry.key().to_string();
            if !switched.contains_key(account_id.as_str()) {
                let record = entry.value().to_record(&account_id, &serving);
                switched.insert(
                    account_id.as_str().into(),
                    Box::new(AccountScoreState::from_record(&record, &self.engine)),
                );
                carried += 1;
            }
        }
        let mut sent = Vec::new();
        for mut crossing in crossings {
            if crossing.as_of < now - window {
                recorded += 1;
                continue;
            }
            let (threshold, hand_raiser) = bases.get(crossing.account_id.as_str()).copied().unwrap_or_default();
            crossing.sequence += i64::from(match crossing.kind {
                abm_schemas::CrossingKind::Threshold => threshold,
                abm_schemas::CrossingKind::HandRaiser => hand_raiser,
            });
            crossing.crossing_id =
                crate::engine::crossing_id(&crossing.account_id, crossing.kind, crossing.sequence as u64);
            crossing.replayed = true;
            match abm_schemas::encode(&crossing) {
                Ok(encoded) => sent.push((crossing.account_id.clone(), encoded)),
                Err(error) => {
                    recorded += 1;
                    tracing::error!(%error, crossing = crossing.crossing_id, "a re-score's crossing does not encode: recorded only");
                }
            }
        }
        self.metrics.rescore_crossings.with_label_values(&["sent"]).inc_by(sent.len() as u64);
        self.metrics.rescore_crossings.with_label_values(&["recorded"]).inc_by(recorded);
        let ids: Vec<String> = switched.iter().map(|entry| entry.key().to_string()).collect();
        self.store.serve_with(partition, None);
        self.store.install(partition, switched);
        tracing::info!(
            partition,
            from = serving.model_version(),
            to = self.engine.model_version(),
            events,
            accounts = ids.len(),
            carried,
            seconds = shadow.elapsed().as_secs_f64(),
            "re-score caught up: switching the partition to the configured model"
        );
        Switch { partition, accounts: ids, crossings: sent, recorded, sent: false }
    }

    /// The same, reporting the partitions it holds to `ownership`.
    /// `engagement_partitions`: the input's partition count, to check that each event is where
    /// the directory will look for its account.
    pub fn with_ownership(
        mut self,
        ownership: Arc<crate::directory::Ownership>,
        engagement_partitions: i32,
    ) -> ScorerProcessor {
        self.ownership = ownership;
        self.engagement_partitions = engagement_partitions;
        self
    }

    fn backfill(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Vec<String>>> {
        self.backfill.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the `AccountProgram` of restored accounts the book does not have (up to
    /// [`BACKFILL_PER_COMMIT`] checked), skipping those this batch wrote already.
    fn write_backfill(&self, out: &Outbox<'_>, written: &Dirty) -> anyhow::Result<()> {
        if !self.book.is_loaded() {
            return Ok(());
        }
        let mut backfill = self.backfill();
        let mut budget = BACKFILL_PER_COMMIT;
        let mut sent = 0;
        for (partition, pending) in backfill.iter_mut() {
            let accounts = self.store.partition(*partition);
            while budget > 0 {
                let Some(account_id) = pending.pop() else { break };
                budget -= 1;
                if self.book.has_facts(&account_id) || written.get(partition).is_some_and(|d| d.contains(&account_id)) {
                    continue;
                }
                let Some(state) = accounts.get(account_id.as_str()) else { continue };
                let payload = abm_schemas::encode(&crate::program::record_of(&account_id, &state))?;
                out.send(&self.topics.program, &account_id, &payload, None)?;
                sent += 1;
            }
        }
        backfill.retain(|_, pending| !pending.is_empty());
        if sent > 0 {
            tracing::info!(accounts = sent, "wrote the AccountProgram of restored accounts the program lacked");
        }
        Ok(())
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn split(&self) -> std::sync::MutexGuard<'_, SplitStates> {
        self.split.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The published score at the state's own as-of time: what [`Engine::view`] gives for it,
    /// without building the explanation's contacts, counts and recent events.
    fn account_score(&self, engine: &Engine, account_id: &str, state: &AccountScoreState) -> AccountScore {
        let ScoreAt { score, engagement, breadth, multiplier, .. } = engine.score_parts(state, None);
        let entry = self.tal.get(account_id);
        let committee = entry.as_ref().and_then(|entry| entry.committee.as_deref());
        AccountScore {
            account_id: account_id.to_owned(),
            tier: state.tier,
            score,
            engagement,
            breadth: breadth as i32,
            multiplier,
            threshold: engine.threshold(state.tier),
            armed: state.armed,
            as_of: state.as_of.unwrap_or(0),
            events_applied: state.events_applied as i64,
            top_rules: engine.top_rules(state, 1.0, engine.config().top_rules),
            coverage: Some(engine.coverage(state, state.as_of.unwrap_or(0), committee)),
            stage: state.stage,
            stage_entered_at: state.stage_entered_at(),
            model_version: Some(engine.model_version().to_owned()),
        }
    }
}

impl ScorerProcessor {
    fn count_trimmed(&self, trimmed: &crate::engine::Trimmed) {
        for (structure, count) in trimmed.by_structure() {
            if count > 0 {
                self.staged.add(&self.metrics.state_trimmed.with_label_values(&[structure]), count);
            }
        }
    }

    /// Sheds detail from an account's state until its encoding (in `payload`) fits
    /// `max_state_bytes`; false when it cannot (the score-bearing part alone is too large).
    fn shed_to_fit(
        &self,
        engine: &Engine,
        accounts: &PartitionAccounts,
        account_id: &str,
        payload: &mut Vec<u8>,
    ) -> bool {
        let config = engine.config();
        let Some(mut state) = accounts.get_mut(account_id) else { return false };
        let mut trimmed = crate::engine::Trimmed::default();
        let fits = loop {
            match state.shed(config.saturating_breadth()) {
                None => break false,
                Some(shed) => trimmed.add(shed),
            }
            payload.clear();
            state.encode_record_into(account_id, engine, payload);
            if payload.len() <= config.max_state_bytes {
                break true;
            }
        };
        self.count_trimmed(&trimmed);
        tracing::warn!(
            account = account_id,
            bytes = payload.len(),
            fits,
            ?trimmed,
            "account state over scoring.max_state_bytes: detail shed"
        );
        fits
    }

    /// Keeps a state that cannot be written (its start, with the reason) in `abm.rejected`. The
    /// account goes on in memory; after a restart it resumes from its last written state.
    fn reject_oversized(
        &self,
        out: &Outbox<'_>,
        partition: i32,
        account_id: &str,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.staged.add(&self.metrics.state_oversized, 1);
        let max = self.engine.config().max_state_bytes;
        let message = format!(
            "account state of {account_id} is {} bytes, over scoring.max_state_bytes ({max}) after shedding detail; not written to the changelog (first {} bytes kept)",
            payload.len(),
            payload.len().min(KEPT_OVERSIZED_BYTES)
        );
        tracing::error!(account = account_id, bytes = payload.len(), max, "{message}");
        let rejected = abm_schemas::RejectedEvent {
            reason: RejectReason::Oversized,
            message,
            source: abm_schemas::RejectSource {
                transport: abm_schemas::Transport::Kafka,
                write_key: None,
                batch_index: None,
                topic: Some(self.topics.state.clone()),
                partition: Some(partition),
                offset: None,
            },
            event_id: None,
            received_at: now_ms(),
            original: payload.get(..KEPT_OVERSIZED_BYTES).unwrap_or(payload).to_vec(),
        };
        out.send(&self.topics.rejected, &format!("kafka:{}", self.topics.state), &abm_schemas::encode(&rejected)?, None)
    }
}

/// How much of an oversized state `abm.rejected` keeps.
const KEPT_OVERSIZED_BYTES: usize = 65_536;

impl Processor for ScorerProcessor {
    fn process(&self, message: &BorrowedMessage<'_>, out: &Outbox<'_>) -> anyhow::Result<()> {
        let partition = message.partition();
        if self.rescoring.load(std::sync::atomic::Ordering::Acquire)
            && let Some(shadow) = self.shadows().get(&partition)
        {
            // Whatever becomes of the event (applied, a duplicate, rejected), the live state
            // has seen it: the partition's re-score may apply it.
            shadow.live_applied(message.offset());
        }
        if self.resend.load(std::sync::atomic::Ordering::Acquire) {
            self.send_switch_crossings(out)?;
        }
        let payload = message.payload().unwrap_or_default();
        let mut event = match abm_schemas::decode::<EngagementEvent>(payload) {
            Ok(event) => event,
            // The schema registry did not answer: the batch is aborted and read again.
            Err(error) if error.is_retryable() => return Err(anyhow::anyhow!("decoding an EngagementEvent: {error}")),
            Err(error) => {
                self.staged.add(&self.metrics.rejected.with_label_values(&["undecodable"]), 1);
                let text = format!("undecodable EngagementEvent: {error}");
                return out.reject(&self.topics.rejected, message, RejectReason::Other, text, None);
            }
        };
        let account_id = match account_of(&mut event, message.key()) {
            Ok(account_id) => account_id,
            Err(Unusable::MissingAccount) => {
                let id = Some(event.event_id.clone());
                self.staged.add(&self.metrics.rejected.with_label_values(&["missing_field"]), 1);
                let text = "engagement event without account_id".to_owned();
                return out.reject(&self.topics.rejected, message, RejectReason::MissingField, text, id);
            }
            Err(Unusable::InvalidAccount(account_id)) => {
                let id = Some(event.event_id.clone());
                self.staged.add(&self.metrics.rejected.with_label_values(&["invalid_field"]), 1);
                let text =
                    format!("account_id {:?} contains control characters", account_id.escape_debug().to_string());
                return out.reject(&self.topics.rejected, message, RejectReason::InvalidField, text, id);
            }
        };
        if self.engagement_partitions > 0
            && crate::directory::partition_of(&account_id, self.engagement_partitions) != partition
        {
            self.staged.add(&self.metrics.misplaced_events, 1);
        }
        let entry = self.tal.get(&account_id);
        let membership = entry.as_ref().map(|entry| entry.membership()).unwrap_or_default();
        let accounts = self.store.partition(partition);
        // The partition's model: the configured one, or while it is re-scored the one its
        // state was built by.
        let serving = self.store.mixed().then(|| self.store.engine_of(partition));
        let engine = serving.as_deref().unwrap_or(&self.engine);
        // Look up by &str first: the owned key is built only for a new account.
        let applied = match accounts.get_mut(account_id.as_str()) {
            Some(mut state) => engine.apply(&account_id, &mut state, &event, membership),
            None => {
                let mut state = accounts.entry(account_id.as_str().into()).or_default();
                engine.apply(&account_id, &mut state, &event, membership)
            }
        };
        drop(entry);
        match applied {
            // The state changed too (its `duplicates` count): written like any other change,
            // or a rewind to the last commit would forget the count.
            Applied::Duplicate => self.staged.add(&self.metrics.duplicates, 1),
            Applied::Scored { crossings, transition, trimmed, .. } => {
                self.staged.add(&self.applied_by_kind[event.kind as usize], 1);
                if !trimmed.is_empty() {
                    self.count_trimmed(&trimmed);
                }
                let latency_ms = (now_ms() - event.received_at).max(0);
                self.metrics.apply_latency.observe(latency_ms as f64 / 1000.0);
                for crossing in crossings {
                    let counter =
                        self.metrics.crossings.with_label_values(&[crossing.kind.as_str(), crossing.tier.as_str()]);
                    self.staged.add(&counter, 1);
                    out.send(&self.topics.crossings, &account_id, &abm_schemas::encode(&crossing)?, None)?;
                }
                if let Some(transition) = transition {
                    let counter = self
                        .metrics
                        .journey_transitions
                        .with_label_values(&[transition.to.as_str(), transition.tier.as_str()]);
                    self.staged.add(&counter, 1);
                    out.send(&self.topics.journey, &account_id, &abm_schemas::encode(&transition)?, None)?;
                }
            }
        }
        let mut dirty = self.dirty();
        let accounts = dirty.entry(partition).or_default();
        if !accounts.contains(account_id.as_str()) {
            accounts.insert(account_id);
        }
        Ok(())
    }

    fn before_commit(&self, out: &Outbox<'_>) -> anyhow::Result<()> {
        let mut dirty = std::mem::take(&mut *self.dirty());
        self.switch_caught_up(out, &mut dirty)?;
        self.write_backfill(out, &dirty)?;
        let mut state_payload = Vec::with_capacity(4096);
        let mut written = crate::changelog::Written::default();
        let mut split = self.split();
        for (partition, ids) in &dirty {
            // Once per partition: its accounts and the model it is served with.
            let accounts = self.store.partition(*partition);
            let engine = self.store.engine_of(*partition);
            let max_bytes = engine.config().max_state_bytes;
            for account_id in ids {
                // Encode under the shard's read guard (no await; the TAL is read, never written,
                // meanwhile): no deep copy.
                let (score_payload, program_payload, rank) = {
                    let Some(state) = accounts.get(account_id.as_str()) else { continue };
                    state_payload.clear();
                    state.encode_record_into(account_id, &engine, &mut state_payload);
                    let record = self.account_score(&engine, account_id, &state);
                    let program = abm_schemas::encode(&crate::program::record_of(account_id, &state))?;
                    (abm_schemas::encode(&record)?, program, crate::store::rank_of(&engine, &state, record.score))
                };
                // The leaderboard's ranking follows each written batch (once per changed account).
                self.store.place(*partition, account_id, rank);
                if state_payload.len() > max_bytes
                    && !self.shed_to_fit(&engine, &accounts, account_id, &mut state_payload)
                {
                    self.reject_oversized(out, *partition, account_id, &state_payload)?;
                } else if let Some(state) = accounts.get(account_id.as_str()) {
                    let topic = &self.topics.state;
                    let one = split.write(*partition, account_id, &state, &engine, &state_payload, |key, value| {
                        out.write(topic, key, value, Some(*partition))
                    })?;
                    written.records += one.records;
                    written.bytes += one.bytes;
                    written.tombstones += one.tombstones;
                }
                out.send(&self.topics.scores, account_id, &score_payload, None)?;
                out.send(&self.topics.program, account_id, &program_payload, None)?;
            }
        }
        self.staged.add(&self.metrics.state_records, written.records + written.tombstones);
        self.staged.add(&self.metrics.state_bytes, written.bytes);
        self.metrics.split_accounts.set(split.len() as i64);
        Ok(())
    }

    fn restore(&self, partitions: &[i32]) -> anyhow::Result<()> {
        let started = Instant::now();
        self.ownership.restoring(partitions);
        let mut restored = self.read_changelog(partitions, |_| self.engine.clone())?;
        // Partitions whose state another model built: read again with that model (its rule
        // indexes), served by it, and re-scored under the configured one.
        let mut stale: BTreeMap<i32, Arc<Engine>> = BTreeMap::new();
        for (partition, found) in &restored {
            let Some(Some(version)) = &found.model_version else { continue };
            if version == self.engine.model_version() || self.rescore.is_none() {
                continue;
            }
            let serving = self.models.engine(version).unwrap_or_else(|| {
                tracing::error!(
                    partition,
                    model = version,
                    configured = self.engine.model_version(),
                    "the partition's state was built by a model not in abm.scoring-models: read with the configured model (rules matched by name) and re-scored"
                );
                self.engine.clone()
            });
            stale.insert(*partition, serving);
        }
        let again: Vec<i32> =
            stale.iter().filter(|(_, engine)| !Arc::ptr_eq(engine, &self.engine)).map(|(p, _)| *p).collect();
        if !again.is_empty() {
            let read = self.read_changelog(&again, |partition| stale[&partition].clone())?;
            restored.extend(read);
        }
        let mut count = 0;
        for (partition, found) in restored {
            let crate::changelog::Restored { accounts, split, skipped, .. } = found;
            self.store.serve_with(partition, stale.get(&partition).filter(|e| !Arc::ptr_eq(e, &self.engine)).cloned());
            // Counted and skipped: one bad record must not crash-loop the scorer.
            self.metrics.restore_skipped.inc_by(skipped);
            // Until librdkafka's statistics report it, the partition's lag is known to be 0+.
            self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set(0);
            count += accounts.len();
            let ids: Vec<String> = accounts.iter().map(|entry| entry.key().to_string()).collect();
            self.backfill().insert(partition, ids);
            self.store.install(partition, accounts);
            self.split().restored(partition, split);
        }
        self.metrics.split_accounts.set(self.split().len() as i64);
        self.metrics.restore_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.restored_accounts.inc_by(count as u64);
        self.metrics.accounts.set(self.store.account_count() as i64);
        tracing::info!(?partitions, accounts = count, seconds = started.elapsed().as_secs_f64(), "state restored");
        for (partition, serving) in stale {
            self.start_rescore(partition, serving.model_version());
        }
        // A partition revoked while it was read stays released (the loop then drops its state).
        self.ownership.ready(partitions);
        Ok(())
    }

    fn revoke(&self, partitions: &[i32]) {
        // Not answered here from now on: before the accounts go.
        self.ownership.released(partitions);
        {
            // A re-score goes with its partition (its restore starts another); so does a switch
            // not committed yet (the restore finds the old model's state again).
            let mut shadows = self.shadows();
            for partition in partitions {
                if let Some(shadow) = shadows.remove(partition) {
                    shadow.stop();
                    tracing::info!(partition, "re-score stopped: the partition is revoked or rewound");
                }
                self.store.serve_with(*partition, None);
            }
            self.rescoring.store(!shadows.is_empty(), std::sync::atomic::Ordering::Release);
            self.metrics.rescore_partitions.set(shadows.len() as i64);
            if shadows.is_empty() {
                self.metrics.rescore_behind.set(0);
            }
            self.switches().retain(|switch| !partitions.contains(&switch.partition));
        }
        let mut split = self.split();
        for partition in partitions {
            split.forget(*partition);
            self.store.drop_partition(*partition);
            let _ = self.metrics.consumer_lag.remove_label_values(&[&partition.to_string()]);
        }
        self.dirty().retain(|partition, _| !partitions.contains(partition));
        self.backfill().retain(|partition, _| !partitions.contains(partition));
        self.metrics.accounts.set(self.store.account_count() as i64);
    }

    fn committed(&self, duration: Duration) {
        self.staged.commit();
        for switch in std::mem::take(&mut *self.switches()) {
            self.metrics.rescore_switches.inc();
            tracing::info!(
                partition = switch.partition,
                model = self.engine.model_version(),
                accounts = switch.accounts.len(),
                crossings_sent = switch.crossings.len(),
                crossings_recorded = switch.recorded,
                "switched to the configured model: the re-scored state is committed"
            );
        }
        self.metrics.commit_duration.observe(duration.as_secs_f64());
        self.metrics.transactions.inc();
        self.metrics.accounts.set(self.store.account_count() as i64);
    }

    fn uncommitted_age(&self, seconds: f64) {
        self.metrics.snapshot_age.set(seconds);
    }

    fn aborted(&self, _reason: &str) {
        self.staged.discard();
        self.metrics.transactions_aborted.inc();
        // A switch whose transaction aborted without rewinding its partition is written whole
        // again by the next one: its split accounts' chunks too (what was written is unknown).
        let mut switches = self.switches();
        let mut split = self.split();
        for switch in switches.iter_mut() {
            split.forget(switch.partition);
            switch.sent = false;
        }
        self.resend.store(!switches.is_empty(), std::sync::atomic::Ordering::Release);
    }

    /// A caught-up re-score switches even when no event comes: the loop opens a transaction.
    fn wants_commit(&self) -> bool {
        if !self.switches().is_empty() {
            return true;
        }
        self.rescoring.load(std::sync::atomic::Ordering::Acquire)
            && self.shadows().values().any(|shadow| shadow.caught_up())
    }

    fn lag(&self, partition: i32, lag: i64) {
        self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set(lag);
    }
}
