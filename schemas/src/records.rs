//! Typed Rust records, one per `.avsc` file in `schemas/avro/`.
//!
//! Field names, order and types mirror the schemas exactly; the codec checks that at start-up
//! (the first encode or decode of a type), and the round-trip tests check it for every record.
//! Enums are written in `snake_case`, the same spelling as the Avro symbols.

use serde::{Deserialize, Serialize};

/// ABM tier of an account. `Untiered` means "not on the TAL".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    #[default]
    Untiered,
    #[serde(rename = "tier_1")]
    Tier1,
    #[serde(rename = "tier_2")]
    Tier2,
    #[serde(rename = "tier_3")]
    Tier3,
}

impl Tier {
    /// Every tier, in the schema's symbol order.
    pub const ALL: [Tier; 4] = [Tier::Untiered, Tier::Tier1, Tier::Tier2, Tier::Tier3];

    /// The spelling used in config, metrics labels and the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Untiered => "untiered",
            Tier::Tier1 => "tier_1",
            Tier::Tier2 => "tier_2",
            Tier::Tier3 => "tier_3",
        }
    }
}

/// A target account on the TAL (`abm.accounts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub account_id: String,
    pub name: String,
    pub domains: Vec<String>,
    pub tier: Tier,
    pub owner: String,
    pub industry: Option<String>,
    pub employees: Option<i32>,
    /// The buying committee's required personas for this account; `None`: its tier's default.
    pub committee: Option<Vec<String>>,
    pub updated_at: i64,
}

impl Account {
    /// Most personas a buying committee may require.
    pub const MAX_COMMITTEE: usize = 16;

    /// What is wrong with `personas` as a buying committee, if anything: 1 to
    /// [`MAX_COMMITTEE`](Self::MAX_COMMITTEE) distinct personas, each 1 to 64 characters of
    /// `a-z`, `0-9` and `_` (as `economic_buyer`). The one rule for the TAL's `committee`
    /// column and `scoring.committee`.
    pub fn committee_problem(personas: &[String]) -> Option<String> {
        if personas.is_empty() {
            return Some("names no persona".into());
        }
        if personas.len() > Self::MAX_COMMITTEE {
            return Some(format!("names {} personas (at most {})", personas.len(), Self::MAX_COMMITTEE));
        }
        for (index, persona) in personas.iter().enumerate() {
            let well_formed = (1..=64).contains(&persona.len())
                && persona.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !well_formed {
                return Some(format!("persona {persona:?} is not 1-64 characters of a-z, 0-9 and _"));
            }
            if personas[..index].contains(persona) {
                return Some(format!("persona {persona:?} is named twice"));
            }
        }
        None
    }
}

/// What happened. `Unknown` is what an older reader sees for a kind added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    #[default]
    Unknown,
    WebVisit,
    AdClick,
    Email,
    DemoRequest,
    ContentDownload,
    Webinar,
    Meeting,
    Intent,
    Opportunity,
}

impl EventKind {
    /// Every kind, in schema order.
    pub const ALL: [EventKind; 10] = [
        EventKind::Unknown,
        EventKind::WebVisit,
        EventKind::AdClick,
        EventKind::Email,
        EventKind::DemoRequest,
        EventKind::ContentDownload,
        EventKind::Webinar,
        EventKind::Meeting,
        EventKind::Intent,
        EventKind::Opportunity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Unknown => "unknown",
            EventKind::WebVisit => "web_visit",
            EventKind::AdClick => "ad_click",
            EventKind::Email => "email",
            EventKind::DemoRequest => "demo_request",
            EventKind::ContentDownload => "content_download",
            EventKind::Webinar => "webinar",
            EventKind::Meeting => "meeting",
            EventKind::Intent => "intent",
            EventKind::Opportunity => "opportunity",
        }
    }
}

/// The person behind an event, as far as it is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Contact {
    pub contact_id: Option<String>,
    pub email: Option<String>,
    pub title: Option<String>,
    pub persona: Option<String>,
}

/// A website visitor as the identity stitcher knows it (`abm.identity`, `abm.identity-graph`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Visitor {
    /// The tracker's anonymousId, else `user:<userId>`.
    pub visitor_id: String,
    pub user_id: Option<String>,
    pub contact: Option<Contact>,
    pub account_id: Option<String>,
    pub domain: Option<String>,
    /// Framed `EngagementEvent` messages waiting for an account, oldest first.
    pub events: Vec<serde_bytes::ByteBuf>,
    pub updated_at: i64,
}

impl Visitor {
    /// An observation of `visitor_id` carrying one waiting event (its framed `EngagementEvent`).
    pub fn waiting(visitor_id: impl Into<String>, event_message: Vec<u8>, updated_at: i64) -> Visitor {
        Visitor {
            visitor_id: visitor_id.into(),
            events: vec![serde_bytes::ByteBuf::from(event_message)],
            updated_at,
            ..Visitor::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebVisit {
    pub url: String,
    pub referrer: Option<String>,
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdClick {
    pub channel: String,
    pub campaign: Option<String>,
    pub creative: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EmailAction {
    #[default]
    Other,
    Delivered,
    Open,
    Click,
    Reply,
    Bounce,
    Unsubscribe,
}

impl EmailAction {
    /// Every action, in schema order.
    pub const ALL: [EmailAction; 7] = [
        EmailAction::Other,
        EmailAction::Delivered,
        EmailAction::Open,
        EmailAction::Click,
        EmailAction::Reply,
        EmailAction::Bounce,
        EmailAction::Unsubscribe,
    ];

    /// The action's name in lower case (as shown in explanations).
    pub fn as_str(self) -> &'static str {
        match self {
            EmailAction::Other => "other",
            EmailAction::Delivered => "delivered",
            EmailAction::Open => "open",
            EmailAction::Click => "click",
            EmailAction::Reply => "reply",
            EmailAction::Bounce => "bounce",
            EmailAction::Unsubscribe => "unsubscribe",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailEvent {
    pub action: EmailAction,
    pub campaign: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoRequest {
    pub form: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentDownload {
    pub asset: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webinar {
    pub webinar_id: String,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meeting {
    pub meeting_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub topic: String,
    pub strength: f64,
}

/// One change of a CRM opportunity, as a CRM sync sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opportunity {
    pub opportunity_id: String,
    pub stage: OpportunityStage,
    /// The CRM's own name for the stage, free text.
    pub stage_name: Option<String>,
    /// Finite and not negative, in `currency`.
    pub amount: f64,
    /// ISO 4217, upper case.
    pub currency: String,
}

/// Where an opportunity stands. `Other` is what an older reader sees for a stage added later;
/// ingest never produces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OpportunityStage {
    #[default]
    Other,
    Open,
    ClosedWon,
    ClosedLost,
}

impl OpportunityStage {
    /// Every stage, in schema order.
    pub const ALL: [OpportunityStage; 4] =
        [OpportunityStage::Other, OpportunityStage::Open, OpportunityStage::ClosedWon, OpportunityStage::ClosedLost];

    pub fn as_str(self) -> &'static str {
        match self {
            OpportunityStage::Other => "other",
            OpportunityStage::Open => "open",
            OpportunityStage::ClosedWon => "closed_won",
            OpportunityStage::ClosedLost => "closed_lost",
        }
    }

    /// Closed, won or lost.
    pub fn is_closed(self) -> bool {
        matches!(self, OpportunityStage::ClosedWon | OpportunityStage::ClosedLost)
    }
}

/// Where an account stands in its journey, first stage to last (README, "Account journey").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JourneyStage {
    #[default]
    Unaware,
    Aware,
    Engaged,
    Mqa,
    Opportunity,
    Customer,
}

impl JourneyStage {
    /// Every stage, first to last (the schema's symbol order).
    pub const ALL: [JourneyStage; 6] = [
        JourneyStage::Unaware,
        JourneyStage::Aware,
        JourneyStage::Engaged,
        JourneyStage::Mqa,
        JourneyStage::Opportunity,
        JourneyStage::Customer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JourneyStage::Unaware => "unaware",
            JourneyStage::Aware => "aware",
            JourneyStage::Engaged => "engaged",
            JourneyStage::Mqa => "mqa",
            JourneyStage::Opportunity => "opportunity",
            JourneyStage::Customer => "customer",
        }
    }
}

/// An account moved from one journey stage to another (`abm.journey`, key = account id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyTransition {
    /// `<account_id>:journey:<sequence>`.
    pub transition_id: String,
    pub account_id: String,
    pub sequence: i64,
    pub tier: Tier,
    pub from: JourneyStage,
    pub to: JourneyStage,
    /// The event time of the event that caused it.
    pub at: i64,
    pub trigger_event_id: String,
    /// S at the account's as-of time after the event.
    pub score: f64,
}

/// A validated, account-resolved event (`abm.engagement`, `abm.unresolved`).
///
/// Exactly the property record of its `kind` is set; ingest guarantees that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngagementEvent {
    pub event_id: String,
    pub kind: EventKind,
    pub occurred_at: i64,
    pub received_at: i64,
    pub source: String,
    pub account_id: Option<String>,
    pub domain: Option<String>,
    pub contact: Option<Contact>,
    pub web_visit: Option<WebVisit>,
    pub ad_click: Option<AdClick>,
    pub email: Option<EmailEvent>,
    pub demo_request: Option<DemoRequest>,
    pub content_download: Option<ContentDownload>,
    pub webinar: Option<Webinar>,
    pub meeting: Option<Meeting>,
    pub intent: Option<Intent>,
    pub opportunity: Option<Opportunity>,
}

impl EngagementEvent {
    /// An event of `kind` with no properties set; callers fill in the one record of its kind.
    pub fn new(event_id: impl Into<String>, kind: EventKind, occurred_at: i64, source: impl Into<String>) -> Self {
        EngagementEvent {
            event_id: event_id.into(),
            kind,
            occurred_at,
            received_at: occurred_at,
            source: source.into(),
            account_id: None,
            domain: None,
            contact: None,
            web_visit: None,
            ad_click: None,
            email: None,
            demo_request: None,
            content_download: None,
            webinar: None,
            meeting: None,
            intent: None,
            opportunity: None,
        }
    }
}

/// Why ingest refused an input. Fixed set; documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    #[default]
    Other,
    MalformedJson,
    UnknownKind,
    MissingField,
    InvalidField,
    BadTimestamp,
    TooFarInFuture,
    TooOld,
    Oversized,
    Bot,
    /// Valid, but not allowed for the write key that sent it (a browser key's scope).
    NotAllowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Other,
    Http,
    Kafka,
}

/// Where a rejected input came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectSource {
    pub transport: Transport,
    pub write_key: Option<String>,
    pub batch_index: Option<i32>,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// An input that ingest could not accept (`abm.rejected`), kept with its original bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedEvent {
    pub reason: RejectReason,
    pub message: String,
    pub source: RejectSource,
    pub event_id: Option<String>,
    pub received_at: i64,
    #[serde(with = "serde_bytes")]
    pub original: Vec<u8>,
}

/// Decayed points of one rule at the account's as-of time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleContribution {
    pub rule: String,
    pub points: f64,
}

/// A contact with a positive-scoring event in the breadth window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngagedContact {
    pub contact_id: String,
    pub persona: String,
    pub title: Option<String>,
    pub last_engaged_at: i64,
}

/// One of the last few events of an account, for explanations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentEvent {
    pub event_id: String,
    pub kind: EventKind,
    pub occurred_at: i64,
    pub rule: Option<String>,
    pub points: f64,
    pub contact_id: Option<String>,
    pub detail: String,
}

/// Latest score of an account (`abm.account-scores`, compacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountScore {
    pub account_id: String,
    pub tier: Tier,
    pub score: f64,
    pub engagement: f64,
    pub breadth: i32,
    pub multiplier: f64,
    pub threshold: f64,
    pub armed: bool,
    pub as_of: i64,
    pub events_applied: i64,
    pub top_rules: Vec<RuleContribution>,
    /// `None` only in records written before coverage existed.
    pub coverage: Option<CommitteeCoverage>,
    /// The journey stage at as-of (`Unaware` in records written before the journey existed)
    /// and when it was entered.
    #[serde(default)]
    pub stage: JourneyStage,
    #[serde(default)]
    pub stage_entered_at: Option<i64>,
    /// The scoring model (a stable hash of the scorer's `[scoring]`); `None` in records
    /// written before models had versions.
    #[serde(default)]
    pub model_version: Option<String>,
}

/// The buying committee's coverage at a time: the required personas (the account's TAL
/// committee, else its tier's), those an engaged contact has, and those missing, in required
/// order. `ratio` = covered / required, 1 when nothing is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CommitteeCoverage {
    pub required: Vec<String>,
    pub covered: Vec<String>,
    pub missing: Vec<String>,
    pub ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CrossingKind {
    #[default]
    Threshold,
    HandRaiser,
}

impl CrossingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CrossingKind::Threshold => "threshold",
            CrossingKind::HandRaiser => "hand_raiser",
        }
    }
}

/// A threshold crossed, or a hand-raiser (`abm.score-crossings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreCrossing {
    pub crossing_id: String,
    pub account_id: String,
    pub kind: CrossingKind,
    pub sequence: i64,
    pub tier: Tier,
    pub score: f64,
    pub threshold: f64,
    pub engagement: f64,
    pub breadth: i32,
    pub multiplier: f64,
    pub as_of: i64,
    pub trigger_event_id: String,
    pub top_rules: Vec<RuleContribution>,
    pub contacts: Vec<EngagedContact>,
    pub recent_events: Vec<RecentEvent>,
    /// `None` only in records written before coverage existed.
    pub coverage: Option<CommitteeCoverage>,
    /// The scoring model (a stable hash of the scorer's `[scoring]`); `None` in records
    /// written before models had versions.
    #[serde(default)]
    pub model_version: Option<String>,
    /// Found by a re-score of the history under a new model, written at the switch: the
    /// alerter alerts it only within the cooldown of now.
    #[serde(default)]
    pub replayed: bool,
}

/// What SDR tooling subscribes to (`abm.sales-alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SalesAlert {
    pub alert_id: String,
    pub crossing_id: String,
    pub account_id: String,
    pub account_name: String,
    pub tier: Tier,
    pub owner: String,
    pub kind: CrossingKind,
    pub score: f64,
    pub threshold: f64,
    pub as_of: i64,
    pub top_rules: Vec<RuleContribution>,
    pub contacts: Vec<EngagedContact>,
    pub recent_events: Vec<RecentEvent>,
    pub next_step: String,
    /// `None` only in records written before coverage existed.
    pub coverage: Option<CommitteeCoverage>,
    /// The scoring model (a stable hash of the scorer's `[scoring]`); `None` in records
    /// written before models had versions.
    #[serde(default)]
    pub model_version: Option<String>,
}

/// Kind and time of one applied event inside the 90-day count window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEvent {
    pub kind: EventKind,
    pub occurred_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapCount {
    pub contact_key: String,
    pub rule: String,
    pub day: i32,
    pub count: i32,
}

/// A recently applied event id (hashed), for deduplication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenEvent {
    pub id_hash: i64,
    pub applied_at: i64,
}

/// The scorer's full state of one account (`abm.scorer.state`, compacted changelog).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub account_id: String,
    pub tier: Tier,
    pub as_of: Option<i64>,
    pub engagement: f64,
    pub rule_points: Vec<RuleContribution>,
    pub armed: bool,
    pub threshold_crossings: i64,
    pub hand_raiser_crossings: i64,
    pub contacts: Vec<EngagedContact>,
    pub window_events: Vec<WindowEvent>,
    pub cap_counts: Vec<CapCount>,
    pub seen_events: Vec<SeenEvent>,
    pub recent_events: Vec<RecentEvent>,
    pub events_applied: i64,
    pub duplicates: i64,
    /// Empty unless the state is split into [`AccountStateChunk`]s (a hot account's): then the
    /// three arrays above are empty and are the listed chunks' arrays, concatenated in order.
    #[serde(default)]
    pub chunks: Vec<StateChunkRef>,
    /// The latest state of each CRM opportunity of the account.
    #[serde(default)]
    pub opportunities: Vec<OpportunityState>,
    /// The earliest event time among the applied events (`None` in states written before it).
    #[serde(default)]
    pub first_applied_at: Option<i64>,
    /// The journey stage after the last applied event, when it was entered, and how many
    /// transitions the account made so far.
    #[serde(default)]
    pub stage: JourneyStage,
    #[serde(default)]
    pub stage_entered_at: Option<i64>,
    #[serde(default)]
    pub journey_transitions: i64,
    /// The latest event time of an applied demo request.
    #[serde(default)]
    pub last_hand_raiser_at: Option<i64>,
    /// One entry per journey stage ever entered, in stage order (unaware has none).
    #[serde(default)]
    pub stage_entries: Vec<StageEntry>,
    /// The scoring model (a stable hash of the scorer's `[scoring]`); `None` in records
    /// written before models had versions.
    #[serde(default)]
    pub model_version: Option<String>,
}

/// When an account first entered a journey stage, and the sequences of its first and latest
/// transitions into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageEntry {
    pub stage: JourneyStage,
    /// The event time of the first transition into the stage.
    pub first_entered_at: i64,
    pub first_sequence: i64,
    pub last_sequence: i64,
}

/// What the program metrics need of one account (`abm.account-program`, compacted, key =
/// account id), written in the scorer's transaction with the account's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountProgram {
    pub account_id: String,
    /// The tier the account's last applied event was scored with.
    pub tier: Tier,
    pub as_of: Option<i64>,
    pub first_applied_at: Option<i64>,
    pub events_applied: i64,
    pub stage: JourneyStage,
    pub stage_entered_at: Option<i64>,
    pub stage_entries: Vec<StageEntry>,
    /// Every contact the state keeps: persona and latest positive-points event time.
    pub contacts: Vec<ProgramContact>,
    pub opportunities: Vec<OpportunityState>,
}

/// A contact of an [`AccountProgram`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramContact {
    pub persona: String,
    pub last_engaged_at: i64,
}

/// The latest state of one CRM opportunity, as an account's state keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpportunityState {
    pub opportunity_id: String,
    pub stage: OpportunityStage,
    pub stage_name: Option<String>,
    pub amount: f64,
    pub currency: String,
    /// The earliest event time of any change of it applied.
    pub created_at: i64,
    /// The event time of the change whose state this is.
    pub updated_at: i64,
}

/// Which array of [`AccountState`] a chunk holds part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StateStructure {
    /// A symbol this reader does not know.
    #[default]
    Unknown,
    WindowEvents,
    CapCounts,
    SeenEvents,
}

impl StateStructure {
    /// Every symbol, in schema order.
    pub const ALL: [StateStructure; 4] =
        [StateStructure::Unknown, StateStructure::WindowEvents, StateStructure::CapCounts, StateStructure::SeenEvents];
}

/// One chunk of a split [`AccountState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateChunkRef {
    pub structure: StateStructure,
    /// The chunk's content hash.
    pub id: i64,
}

/// Part of one array of a split [`AccountState`], in the same partition of `abm.scorer.state`.
/// Its content never changes under its key; only the array `structure` names is non-empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountStateChunk {
    pub account_id: String,
    pub structure: StateStructure,
    pub id: i64,
    pub window_events: Vec<WindowEvent>,
    pub cap_counts: Vec<CapCount>,
    pub seen_events: Vec<SeenEvent>,
}
