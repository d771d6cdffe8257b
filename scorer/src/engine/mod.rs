//! The scoring engine: pure functions over one account's state. No Kafka, no clock, no I/O.
//!
//! [`Engine::apply`] applies one event to an account's [`AccountScoreState`] and returns the
//! crossings it caused; [`Engine::view`] explains a state at its as-of time or decayed to a
//! later time. The semantics are the README's "Scoring semantics", written so
//! anyone can recompute a score by hand.

pub mod config;
pub mod rules;
pub mod state;

use abm_schemas::hash::stable_hash;
use abm_schemas::{
    CommitteeCoverage, CrossingKind, EngagedContact, EngagementEvent, EventKind, JourneyStage, JourneyTransition,
    OpportunityStage, OpportunityState, RecentEvent, RuleContribution, ScoreCrossing, Tier,
};

pub use config::{Committee, JourneyConfig, RuleConfig, ScoringConfig, ScoringConfigError, Thresholds};
pub use rules::{Rules, url_path};
pub use state::{AccountScoreState, Contact, ContactLog, Opportunities, StageEntries, Trimmed};

/// Milliseconds in a day; "UTC day" of an event time is `t.div_euclid(DAY_MS)`.
pub const DAY_MS: i64 = 86_400_000;
/// Breadth window: distinct engaged contacts in `(as_of - 30 days, as_of]`.
pub const BREADTH_WINDOW_MS: i64 = 30 * DAY_MS;
/// Count windows, in days.
pub const COUNT_WINDOWS_DAYS: [i64; 3] = [7, 30, 90];

/// What applying one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The event id was seen before for this account: nothing changed but the duplicate count.
    Duplicate,
    /// The event was applied.
    Scored {
        /// Points at the event's own time (after persona weight and cap), and the rule.
        points: f64,
        rule: Option<u16>,
        /// Crossings in emission order: threshold first, then hand-raiser.
        crossings: Vec<ScoreCrossing>,
        /// The journey stage change the event caused, if any.
        transition: Option<JourneyTransition>,
        /// What the state's bounds dropped to take this event (usually nothing).
        trimmed: Trimmed,
    },
}

/// What the engine takes from an account's TAL entry: its tier and, when the TAL names one, its
/// buying committee (else the tier's from `scoring.committee`). A bare [`Tier`] converts into
/// one without a committee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Membership<'a> {
    pub tier: Tier,
    pub committee: Option<&'a [String]>,
}

impl From<Tier> for Membership<'static> {
    fn from(tier: Tier) -> Self {
        Membership { tier, committee: None }
    }
}

/// An account's score and its explanation at a point in time. Not a wire type: the API's
/// response bodies (`api.rs`) are filled from it field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreView {
    pub account_id: String,
    pub tier: Tier,
    /// The time the view is computed at: as-of, or later when decayed to now.
    pub at: i64,
    pub as_of: Option<i64>,
    pub score: f64,
    pub engagement: f64,
    pub breadth: u32,
    pub multiplier: f64,
    pub threshold: f64,
    pub armed: bool,
    pub rule_points: Vec<RuleContribution>,
    /// Events per kind in the last 7, 30 and 90 days before `at`.
    pub counts: Vec<KindCounts>,
    pub contacts: Vec<EngagedContact>,
    /// The buying committee's coverage at `at`.
    pub coverage: CommitteeCoverage,
    /// The journey stage after the last applied event, and when it was entered.
    pub stage: JourneyStage,
    pub stage_entered_at: Option<i64>,
    pub recent_events: Vec<RecentEvent>,
    /// The latest state of each CRM opportunity, in order of first appearance.
    pub opportunities: Vec<OpportunityState>,
    pub first_applied_at: Option<i64>,
    pub events_applied: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KindCounts {
    pub kind: EventKind,
    pub last_7_days: u32,
    pub last_30_days: u32,
    pub last_90_days: u32,
}

/// The engine: compiled configuration, shared by all accounts.
#[derive(Debug, Clone)]
pub struct Engine {
    config: ScoringConfig,
    rules: Rules,
    half_life_ms: f64,
    dedup_window_ms: i64,
    /// [`ScoringConfig::model_version`], computed once.
    version: String,
}

impl Engine {
    pub fn new(config: ScoringConfig) -> Result<Engine, ScoringConfigError> {
        let version = config.model_version();
        Engine::with_version(config, version)
    }

    /// An engine for a model recorded as `version` by a release whose `[scoring]` had other
    /// fields (this release's defaults fill the new ones): it stamps what it writes with the
    /// version the model was recorded as.
    pub fn with_version(config: ScoringConfig, version: String) -> Result<Engine, ScoringConfigError> {
        config.validate()?;
        Ok(Engine {
            rules: Rules::new(&config),
            half_life_ms: config.half_life_days * DAY_MS as f64,
            dedup_window_ms: (config.dedup_window_days * DAY_MS as f64) as i64,
            version,
            config,
        })
    }

    pub fn config(&self) -> &ScoringConfig {
        &self.config
    }

    /// The model's version ([`ScoringConfig::model_version`]).
    pub fn model_version(&self) -> &str {
        &self.version
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The half-life `H` in milliseconds.
    pub fn half_life_ms(&self) -> f64 {
        self.half_life_ms
    }

    /// `2^(-dt / H)`.
    pub fn decay(&self, dt_ms: i64) -> f64 {
        (-(dt_ms as f64) / self.half_life_ms).exp2()
    }

    /// `m(B) = min(1 + alpha (B - 1), m_max)`, and 1 when `B <= 1`.
    pub fn multiplier(&self, breadth: u32) -> f64 {
        if breadth <= 1 {
            1.0
        } else {
            (1.0 + self.config.breadth_alpha * f64::from(breadth - 1)).min(self.config.breadth_max)
        }
    }

    pub fn threshold(&self, tier: Tier) -> f64 {
        self.config.thresholds.for_tier(tier)
    }

    fn persona_weight(&self, persona: &str) -> f64 {
        self.config.persona_weights.get(persona).copied().unwrap_or(1.0)
    }

    /// Applies `event` to the state of account `account_id`, whose TAL entry is now `tal` (a
    /// tier, or a [`Membership`] naming its committee too).
    pub fn apply<'a>(
        &self,
        account_id: &str,
        state: &mut AccountScoreState,
        event: &EngagementEvent,
        tal: impl Into<Membership<'a>>,
    ) -> Applied {
        let Membership { tier, committee } = tal.into();
        let id_hash = stable_hash(&event.event_id);
        if state.seen.iter().any(|(hash, _)| *hash == id_hash) {
            state.duplicates += 1;
            return Applied::Duplicate;
        }
        let t = event.occurred_at;
        let rule_index = self.rules.first_match(event);
        let persona = self.rules.persona(event);
        let contact = event.contact.as_ref();
        let contact_key: Option<std::borrow::Cow<'_, str>> = contact
            .and_then(|c| c.contact_id.as_deref().filter(|id| !id.is_empty()).map(std::borrow::Cow::Borrowed))
            .or_else(|| {
                contact.and_then(|c| c.email.as_ref()).map(|email| std::borrow::Cow::Owned(email.to_lowercase()))
            });

        // Points at the event's own time: the rule's points, persona-weighted, unless capped.
        let mut points = 0.0;
        if let Some(index) = rule_index {
            let rule = self.rules.get(index);
            points = rule.points * self.persona_weight(persona);
            if let Some(cap) = rule.cap_per_contact_per_day {
                let key = contact_key.as_deref().unwrap_or("anonymous");
                if state.count_for_cap(key, index, t.div_euclid(DAY_MS)) > cap {
                    points = 0.0;
                }
            }
        }

        // Advance as-of (decaying what is there), then add the event's decayed contribution.
        let as_of = match state.as_of {
            Some(as_of) if as_of >= t => as_of,
            Some(as_of) => {
                let factor = self.decay(t - as_of);
                state.engagement *= factor;
                for (_, rule_points) in &mut state.rule_points {
                    *rule_points *= factor;
                }
                t
            }
            None => t,
        };
        state.as_of = Some(as_of);
        let contribution = points * self.decay(as_of - t);
        state.engagement += contribution;
        if let Some(index) = rule_index {
            state.add_rule_points(index, contribution);
        }

        // A contact is engaged by an event that matched a rule with positive points.
        if let (Some(key), Some(index)) = (&contact_key, rule_index)
            && self.rules.get(index).points > 0.0
        {
            let title = contact.and_then(|c| c.title.as_deref());
            state.engage_contact(key, persona, title, t);
        }

        let mut opportunities_dropped = 0;
        if let Some(change) = &event.opportunity {
            opportunities_dropped = state.opportunities.apply(change, t, self.config.max_opportunities);
        }
        state.first_applied = state.first_applied.min(t);
        if event.kind == EventKind::DemoRequest {
            state.last_hand_raiser = state.last_hand_raiser.max(t);
        }
        state.tier = tier;
        state.events_applied += 1;
        state.record_window_event(event.kind, t);
        state.remember(id_hash, as_of);
        if state.keeps_recent(t, self.config.max_recent_events) {
            let detail = recent_detail(event);
            let recent = state::Recent {
                event_id: &event.event_id,
                contact_id: contact_key.as_deref(),
                detail: &detail,
                kind: event.kind,
                rule: rule_index,
                occurred_at: t,
                points,
            };
            state.record_recent(&recent, self.config.max_recent_events);
        }
        let mut trimmed = state.prune(as_of, self.dedup_window_ms, &self.config);
        trimmed.opportunities = opportunities_dropped;

        // The score's parts at as-of, once for both evaluations (as-of is set: an event was applied).
        let parts = self.score_parts(state, None);
        let crossings = self.evaluate(account_id, state, event, committee, &parts);
        let transition = self.advance_journey(account_id, state, event, &parts);
        Applied::Scored { points, rule: rule_index, crossings, transition, trimmed }
    }

    /// The journey stage `state` is in at its as-of time: the first, from the last stage
    /// upwards, whose criteria hold (README, "Account journey").
    pub fn stage(&self, state: &AccountScoreState) -> JourneyStage {
        self.stage_with(state, &self.score_parts(state, None))
    }

    /// [`stage`](Self::stage) with the score's parts at as-of already computed.
    fn stage_with(&self, state: &AccountScoreState, parts: &ScoreAt) -> JourneyStage {
        let Some(as_of) = state.as_of else {
            return JourneyStage::Unaware;
        };
        let has = |stage: OpportunityStage| state.opportunities.iter().any(|o| o.stage == stage);
        if has(OpportunityStage::ClosedWon) {
            return JourneyStage::Customer;
        }
        if has(OpportunityStage::Open) {
            return JourneyStage::Opportunity;
        }
        let journey = &self.config.journey;
        let threshold = self.threshold(state.tier);
        let hand_raiser_window = (journey.mqa_hand_raiser_days * DAY_MS as f64) as i64;
        let raised = state.last_hand_raiser > as_of - hand_raiser_window && state.last_hand_raiser <= as_of;
        if parts.score >= journey.mqa_score_ratio * threshold || raised {
            return JourneyStage::Mqa;
        }
        if parts.score >= journey.engaged_score_ratio * threshold || parts.breadth >= journey.engaged_breadth {
            return JourneyStage::Engaged;
        }
        // An applied event in the 90 days before as-of: as-of is the time of one.
        JourneyStage::Aware
    }

    /// Re-evaluates the stage after an applied event; a change is the account's next
    /// transition, at the event's time.
    fn advance_journey(
        &self,
        account_id: &str,
        state: &mut AccountScoreState,
        event: &EngagementEvent,
        parts: &ScoreAt,
    ) -> Option<JourneyTransition> {
        let stage = self.stage_with(state, parts);
        if stage == state.stage {
            return None;
        }
        let from = std::mem::replace(&mut state.stage, stage);
        state.stage_entered = event.occurred_at;
        state.journey_transitions += 1;
        let sequence = state.journey_transitions;
        state.enter_stage(stage, event.occurred_at, sequence);
        Some(JourneyTransition {
            transition_id: journey_transition_id(account_id, sequence),
            account_id: account_id.to_owned(),
            sequence: i64::from(sequence),
            tier: state.tier,
            from,
            to: stage,
            at: event.occurred_at,
            trigger_event_id: event.event_id.clone(),
            score: parts.score,
        })
    }

    /// Threshold and hand-raiser evaluation after an applied event (the README's order).
    fn evaluate(
        &self,
        account_id: &str,
        state: &mut AccountScoreState,
        event: &EngagementEvent,
        committee: Option<&[String]>,
        parts: &ScoreAt,
    ) -> Vec<ScoreCrossing> {
        let mut crossings = Vec::new();
        let threshold = self.threshold(state.tier);
        if state.armed && parts.score >= threshold {
            state.armed = false;
            state.threshold_crossings = state.threshold_crossings.saturating_add(1);
            crossings.push(self.crossing(account_id, state, CrossingKind::Threshold, event, parts, committee));
        } else if !state.armed && parts.score < threshold * (1.0 - self.config.hysteresis) {
            state.armed = true;
        }
        if event.kind == EventKind::DemoRequest {
            state.hand_raiser_crossings = state.hand_raiser_crossings.saturating_add(1);
            crossings.push(self.crossing(account_id, state, CrossingKind::HandRaiser, event, parts, committee));
        }
        crossings
    }

    fn crossing(
        &self,
        account_id: &str,
        state: &AccountScoreState,
        kind: CrossingKind,
        event: &EngagementEvent,
        parts: &ScoreAt,
        committee: Option<&[String]>,
    ) -> ScoreCrossing {
        let sequence = match kind {
            CrossingKind::Threshold => u64::from(state.threshold_crossings),
            CrossingKind::HandRaiser => u64::from(state.hand_raiser_crossings),
        };
        let as_of = state.as_of.unwrap_or(event.occurred_at);
        ScoreCrossing {
            crossing_id: crossing_id(account_id, kind, sequence),
            account_id: account_id.to_owned(),
            kind,
            sequence: sequence as i64,
            tier: state.tier,
            score: parts.score,
            threshold: self.threshold(state.tier),
            engagement: parts.engagement,
            breadth: parts.breadth as i32,
            multiplier: parts.multiplier,
            as_of,
            trigger_event_id: event.event_id.clone(),
            top_rules: self.top_rules(state, 1.0, self.config.top_rules),
            contacts: state.engaged_contacts(as_of),
            recent_events: state.recent_records(self),
            coverage: Some(self.coverage(state, as_of, committee)),
            model_version: Some(self.version.clone()),
            replayed: false,
        }
    }

    /// The buying committee's coverage at `at`: the required personas are `committee` (the
    /// account's TAL list) or else its tier's from `scoring.committee`; one is covered when a
    /// contact engaged in `(at - 30 days, at]` (as in breadth) has it as its persona.
    pub fn coverage(&self, state: &AccountScoreState, at: i64, committee: Option<&[String]>) -> CommitteeCoverage {
        let required = committee.unwrap_or_else(|| self.config.committee.for_tier(state.tier));
        let engaged: Vec<&str> = state.engaged_at(at).map(|c| c.persona).collect();
        let (covered, missing): (Vec<String>, Vec<String>) =
            required.iter().cloned().partition(|persona| engaged.contains(&persona.as_str()));
        let ratio = if required.is_empty() { 1.0 } else { covered.len() as f64 / required.len() as f64 };
        CommitteeCoverage { required: required.to_vec(), covered, missing, ratio }
    }

    /// The `limit` rules with the most decayed points (by magnitude), scaled by `factor`.
    pub fn top_rules(&self, state: &AccountScoreState, factor: f64, limit: usize) -> Vec<RuleContribution> {
        let mut rules: Vec<RuleContribution> = state
            .rule_points
            .iter()
            .filter(|(index, _)| usize::from(*index) < self.rules.len())
            .map(|(index, points)| RuleContribution {
                rule: self.rules.get(*index).name.clone(),
                points: points * factor,
            })
            .collect();
        rules.sort_by(|a, b| b.points.abs().total_cmp(&a.points.abs()).then_with(|| a.rule.cmp(&b.rule)));
        rules.truncate(limit);
        rules
    }

    /// The account's score and explanation at `at` (its as-of time when `None` or earlier), its
    /// coverage against its tier's committee.
    pub fn view(&self, account_id: &str, state: &AccountScoreState, at: Option<i64>) -> ScoreView {
        self.view_with(account_id, state, at, None)
    }

    /// [`view`](Self::view) with the committee the account's TAL entry names, if any.
    pub fn view_with(
        &self,
        account_id: &str,
        state: &AccountScoreState,
        at: Option<i64>,
        committee: Option<&[String]>,
    ) -> ScoreView {
        let as_of = state.as_of;
        let ScoreAt { at, factor, engagement, breadth, multiplier, score } = self.score_parts(state, at);
        let rule_points = self.top_rules(state, factor, usize::MAX);
        ScoreView {
            account_id: account_id.to_owned(),
            tier: state.tier,
            at,
            as_of,
            score,
            engagement,
            breadth,
            multiplier,
            threshold: self.threshold(state.tier),
            armed: state.armed,
            rule_points,
            counts: state.counts_at(at),
            contacts: state.engaged_contacts(at),
            coverage: self.coverage(state, at, committee),
            stage: state.stage,
            stage_entered_at: state.stage_entered_at(),
            recent_events: state.recent_records(self),
            opportunities: state.opportunities.iter().cloned().collect(),
            first_applied_at: state.first_applied_at(),
            events_applied: state.events_applied,
            duplicates: state.duplicates,
        }
    }

    /// The score formula, its one home (README, "Scoring semantics"): at `t = max(at, T)`, T the
    /// as-of time (`t = T` when `at` is `None`), `E(t) = E * 2^(-(t - T) / H)` and
    /// `S(t) = max(E(t), 0) * m(B(t))`. For an account without events, `t = at` (or 0) and E = 0.
    pub fn score_parts(&self, state: &AccountScoreState, at: Option<i64>) -> ScoreAt {
        let (at, factor) = match (state.as_of, at) {
            (Some(as_of), Some(at)) => {
                let at = at.max(as_of);
                (at, self.decay(at - as_of))
            }
            (Some(as_of), None) => (as_of, 1.0),
            (None, at) => (at.unwrap_or(0), 1.0),
        };
        let engagement = state.engagement * factor;
        let breadth = state.breadth_at(at);
        let multiplier = self.multiplier(breadth);
        ScoreAt { at, factor, engagement, breadth, multiplier, score: engagement.max(0.0) * multiplier }
    }

    /// Score at the state's own as-of time (what `abm.account-scores` publishes).
    pub fn score(&self, state: &AccountScoreState) -> f64 {
        self.score_parts(state, None).score
    }

    /// The score decayed to `at` (the leaderboard's `score_now`).
    pub fn score_at(&self, state: &AccountScoreState, at: i64) -> f64 {
        self.score_parts(state, Some(at)).score
    }
}

/// The parts of an account's score at a time: see [`Engine::score_parts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreAt {
    /// The time `t` the parts are computed at.
    pub at: i64,
    /// The decay factor `2^(-(t - T) / H)` (1 at the as-of time).
    pub factor: f64,
    /// `E(t)`.
    pub engagement: f64,
    /// `B(t)`.
    pub breadth: u32,
    /// `m(B(t))`.
    pub multiplier: f64,
    /// `S(t)`.
    pub score: f64,
}

/// What a recent event shows besides its kind: the URL path of a visit, the channel and
/// campaign of an ad click, the email action, and so on.
fn recent_detail(event: &EngagementEvent) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let detail = match event.kind {
        EventKind::WebVisit => event.web_visit.as_ref().map(|v| Cow::Borrowed(url_path(&v.url))),
        EventKind::AdClick => event.ad_click.as_ref().map(|a| match a.campaign.as_deref() {
            Some(campaign) if !campaign.is_empty() => {
                let mut text = format!("{} {campaign}", a.channel);
                text.truncate(text.trim_end().len());
                Cow::Owned(text)
            }
            _ => Cow::Borrowed(a.channel.trim_end()),
        }),
        EventKind::Email => event.email.as_ref().map(|e| Cow::Borrowed(e.action.as_str())),
        EventKind::DemoRequest => event.demo_request.as_ref().map(|d| Cow::Owned(format!("form {}", d.form))),
        EventKind::ContentDownload => event.content_download.as_ref().map(|c| Cow::Borrowed(c.asset.as_str())),
        EventKind::Webinar => event.webinar.as_ref().map(|w| Cow::Owned(format!("{} {}", w.action, w.webinar_id))),
        EventKind::Meeting => event.meeting.as_ref().map(|m| Cow::Borrowed(m.meeting_id.as_str())),
        EventKind::Intent => event.intent.as_ref().map(|i| Cow::Owned(format!("{} ({:.2})", i.topic, i.strength))),
        EventKind::Opportunity => event.opportunity.as_ref().map(|o| {
            let stage = o.stage_name.as_deref().filter(|name| !name.is_empty()).unwrap_or(o.stage.as_str());
            Cow::Owned(format!("{} {stage} {} {}", o.opportunity_id, o.amount, o.currency))
        }),
        EventKind::Unknown => None,
    };
    detail.unwrap_or_default()
}

/// `<account_id>:journey:<sequence>`: a pure function of the account's log.
pub fn journey_transition_id(account_id: &str, sequence: u32) -> String {
    format!("{account_id}:journey:{sequence}")
}

/// `<account_id>:<kind>:<sequence>`: a pure function of the account's log.
pub fn crossing_id(account_id: &str, kind: CrossingKind, sequence: u64) -> String {
    format!("{account_id}:{}:{sequence}", kind.as_str())
}
