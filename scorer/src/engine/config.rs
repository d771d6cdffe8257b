//! `[scoring]`: rules, persona weights, decay, breadth, thresholds. Defaults follow the ABM
//! ABM playbooks; every field is documented in the README's scoring section.

use std::collections::BTreeMap;

use abm_schemas::{EmailAction, EventKind, Tier};
use serde::{Deserialize, Serialize};

/// One scoring rule. Every condition that is set must hold; the first matching rule wins.
/// The largest `cap_per_contact_per_day`: the state counts a day's events per (contact, rule)
/// in 16 bits.
pub const MAX_CAP_PER_DAY: u32 = u16::MAX as u32 - 1;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name, used in explanations and the state.
    pub name: String,
    /// Points before persona weighting; may be negative.
    pub points: f64,
    /// Event kind, e.g. `web_visit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventKind>,
    /// Email action, e.g. `click` (only email events have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_action: Option<EmailAction>,
    /// Matches when the URL's path (no host, no query) contains any of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url_patterns: Vec<String>,
    /// Ad channel, case-insensitive (e.g. `linkedin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Campaign (ad or email), exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// Only the first N events of this rule per contact per UTC day score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_per_contact_per_day: Option<u32>,
}

impl RuleConfig {
    fn new(name: &str, points: f64, kind: EventKind) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            points,
            kind: Some(kind),
            email_action: None,
            url_patterns: Vec::new(),
            channel: None,
            campaign: None,
            cap_per_contact_per_day: None,
        }
    }
}

/// Maps a job title to a persona when the event does not name one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TitlePersona {
    /// Whole words of the title, case-insensitive: `vp` matches "VP Finance", not "MVP".
    pub title_words: String,
    pub persona: String,
}

/// Threshold per tier.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub tier_1: f64,
    pub tier_2: f64,
    pub tier_3: f64,
    /// Accounts not on the TAL.
    pub untiered: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { tier_1: 50.0, tier_2: 75.0, tier_3: 100.0, untiered: 150.0 }
    }
}

impl Thresholds {
    pub fn for_tier(&self, tier: Tier) -> f64 {
        match tier {
            Tier::Tier1 => self.tier_1,
            Tier::Tier2 => self.tier_2,
            Tier::Tier3 => self.tier_3,
            Tier::Untiered => self.untiered,
        }
    }
}

/// Required buying-committee personas per tier (`[scoring.committee]`); an account's TAL
/// `committee` overrides its tier's list.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Committee {
    pub tier_1: Vec<String>,
    pub tier_2: Vec<String>,
    pub tier_3: Vec<String>,
    pub untiered: Vec<String>,
}

impl Default for Committee {
    fn default() -> Self {
        let personas = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect();
        Committee {
            tier_1: personas(&["economic_buyer", "champion", "technical_evaluator", "end_user"]),
            tier_2: personas(&["economic_buyer", "champion", "technical_evaluator"]),
            tier_3: personas(&["economic_buyer", "champion"]),
            untiered: personas(&["economic_buyer", "champion"]),
        }
    }
}

impl Committee {
    pub fn for_tier(&self, tier: Tier) -> &[String] {
        match tier {
            Tier::Tier1 => &self.tier_1,
            Tier::Tier2 => &self.tier_2,
            Tier::Tier3 => &self.tier_3,
            Tier::Untiered => &self.untiered,
        }
    }
}

/// `[scoring.journey]`: the criteria of the journey stages that are not fixed (README,
/// "Account journey"). `customer` (a `closed_won` opportunity), `opportunity` (an `open` one),
/// `aware` (an applied event) and `unaware` are not configurable.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JourneyConfig {
    /// `mqa`: `S ≥ mqa_score_ratio · threshold(tier)` (default 1), or a demo request in the
    /// `mqa_hand_raiser_days` (30) before as-of.
    pub mqa_score_ratio: f64,
    pub mqa_hand_raiser_days: f64,
    /// `engaged`: `S ≥ engaged_score_ratio · threshold(tier)` (0.5), or `B ≥ engaged_breadth` (2).
    pub engaged_score_ratio: f64,
    pub engaged_breadth: u32,
}

impl Default for JourneyConfig {
    fn default() -> Self {
        JourneyConfig { mqa_score_ratio: 1.0, mqa_hand_raiser_days: 30.0, engaged_score_ratio: 0.5, engaged_breadth: 2 }
    }
}

/// `[scoring]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Ordered rules; the first match gives an event its points.
    pub rules: Vec<RuleConfig>,
    /// Weight per persona; personas not listed weigh 1.0. Events without persona are `unknown`.
    pub persona_weights: BTreeMap<String, f64>,
    /// Title-to-persona mapping, first match wins, used when the event has no persona.
    pub title_personas: Vec<TitlePersona>,
    /// Half-life of points, in days of event time (default 14).
    pub half_life_days: f64,
    /// Breadth multiplier `m(B) = min(1 + alpha * (B - 1), max)` (defaults 0.25 and 2.0).
    pub breadth_alpha: f64,
    pub breadth_max: f64,
    /// Re-arm below `threshold * (1 - hysteresis)` (default 0.25).
    pub hysteresis: f64,
    pub thresholds: Thresholds,
    /// Required buying-committee personas per tier (see [`Committee`]).
    pub committee: Committee,
    /// Journey stage criteria (see [`JourneyConfig`]).
    pub journey: JourneyConfig,
    /// Explanations and state bounds.
    pub max_recent_events: usize,
    pub max_contacts: usize,
    pub max_window_events: usize,
    /// Event ids are remembered while the account's as-of advanced less than this (default 7).
    pub dedup_window_days: f64,
    pub max_seen_events: usize,
    /// Cap counters kept per account, one per (contact, capped rule, UTC day) (default 2048).
    /// Beyond it the oldest days' counters go first, then the smallest: a contact whose counter
    /// was dropped counts from 0 again that day.
    pub max_cap_counters: usize,
    /// CRM opportunities kept per account, the latest state of each (default 20). Beyond it
    /// the closed ones updated longest ago go first, then the open ones updated longest ago.
    pub max_opportunities: usize,
    /// Largest encoded account state written to the changelog, in bytes (default 262144; the
    /// broker's default `message.max.bytes` is 1 MiB). A larger state sheds detail first
    /// (recent events, remembered ids, window stamps, cap counters, contacts beyond the
    /// breadth that saturates the multiplier); one that still does not fit is not written.
    pub max_state_bytes: usize,
    /// Rules listed in explanations (default 5).
    pub top_rules: usize,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        let mut pricing = RuleConfig::new("pricing_page", 15.0, EventKind::WebVisit);
        pricing.url_patterns = vec!["/pricing".into()];
        let mut careers = RuleConfig::new("careers_page", -5.0, EventKind::WebVisit);
        careers.url_patterns = vec!["/careers".into(), "/jobs".into()];
        let mut email_click = RuleConfig::new("email_click", 5.0, EventKind::Email);
        email_click.email_action = Some(EmailAction::Click);
        let mut unsubscribe = RuleConfig::new("email_unsubscribe", -10.0, EventKind::Email);
        unsubscribe.email_action = Some(EmailAction::Unsubscribe);
        let mut web_visit = RuleConfig::new("web_visit", 5.0, EventKind::WebVisit);
        web_visit.cap_per_contact_per_day = Some(10);
        ScoringConfig {
            rules: vec![
                RuleConfig::new("demo_request", 50.0, EventKind::DemoRequest),
                RuleConfig::new("sdr_meeting", 30.0, EventKind::Meeting),
                pricing,
                careers,
                web_visit,
                RuleConfig::new("content_download", 10.0, EventKind::ContentDownload),
                email_click,
                unsubscribe,
                RuleConfig::new("ad_click", 5.0, EventKind::AdClick),
            ],
            persona_weights: BTreeMap::from([
                ("economic_buyer".into(), 1.5),
                ("champion".into(), 1.2),
                ("unknown".into(), 1.0),
            ]),
            title_personas: [
                ("chief", "economic_buyer"),
                ("ceo", "economic_buyer"),
                ("cfo", "economic_buyer"),
                ("cto", "economic_buyer"),
                ("cio", "economic_buyer"),
                ("vp", "economic_buyer"),
                ("vice president", "economic_buyer"),
                ("head", "champion"),
                ("director", "champion"),
                ("manager", "champion"),
                ("architect", "technical_evaluator"),
                ("engineer", "technical_evaluator"),
                ("developer", "technical_evaluator"),
                ("analyst", "end_user"),
            ]
            .into_iter()
            .map(|(words, persona)| TitlePersona { title_words: words.into(), persona: persona.into() })
            .collect(),
            half_life_days: 14.0,
            breadth_alpha: 0.25,
            breadth_max: 2.0,
            hysteresis: 0.25,
            thresholds: Thresholds::default(),
            committee: Committee::default(),
            journey: JourneyConfig::default(),
            max_recent_events: 5,
            max_contacts: 64,
            max_window_events: 512,
            dedup_window_days: 7.0,
            max_seen_events: 4096,
            max_cap_counters: 2048,
            max_opportunities: 20,
            max_state_bytes: 262_144,
            top_rules: 5,
        }
    }
}

/// Bounds of `max_state_bytes`: room for a typical state, and under the broker's default
/// `message.max.bytes` (1,048,588) with space for the record's key and headers.
pub const MIN_STATE_BYTES: usize = 16_384;
pub const MAX_STATE_BYTES: usize = 1_000_000;

impl ScoringConfig {
    /// The model's version: FNV-1a 64 of the configuration's canonical JSON (every field, in
    /// declaration order, defaults filled in, maps sorted by key), as 16 hex digits. Two configs
    /// that score alike by construction (one spelling a default out, one leaving it) have the
    /// same version; any change of a field, even one that happens to score alike, gives
    /// another. Recorded in the state and on every score, crossing and alert.
    pub fn model_version(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a ScoringConfig serialises to JSON");
        let hash = abm_schemas::hash::fnv1a_64_from(abm_schemas::hash::FNV64_OFFSET_BASIS, &canonical);
        format!("{hash:016x}")
    }

    /// The breadth at which the multiplier reaches `breadth_max` (at most `max_contacts`):
    /// shedding contacts never goes below it, so the score is unchanged.
    pub fn saturating_breadth(&self) -> usize {
        if self.breadth_alpha <= 0.0 || self.breadth_max <= 1.0 {
            return 1.min(self.max_contacts);
        }
        let breadth = (1.0 + (self.breadth_max - 1.0) / self.breadth_alpha).ceil();
        (breadth.min(self.max_contacts as f64) as usize).max(1)
    }
}

/// A scoring configuration that cannot be used, with the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("scoring.{field}: {problem}")]
pub struct ScoringConfigError {
    pub field: String,
    pub problem: String,
}

impl ScoringConfig {
    /// Checks what serde cannot: finite numbers, positive bounds, unique rule names.
    pub fn validate(&self) -> Result<(), ScoringConfigError> {
        let fail =
            |field: &str, problem: &str| Err(ScoringConfigError { field: field.into(), problem: problem.into() });
        if !(self.half_life_days.is_finite() && self.half_life_days > 0.0) {
            return fail("half_life_days", "must be a positive number of days");
        }
        if !(self.breadth_alpha.is_finite() && self.breadth_alpha >= 0.0) {
            return fail("breadth_alpha", "must be >= 0");
        }
        if !(self.breadth_max.is_finite() && self.breadth_max >= 1.0) {
            return fail("breadth_max", "must be >= 1");
        }
        if !(0.0..1.0).contains(&self.hysteresis) {
            return fail("hysteresis", "must be in [0, 1)");
        }
        for (tier, value) in [
            ("tier_1", self.thresholds.tier_1),
            ("tier_2", self.thresholds.tier_2),
            ("tier_3", self.thresholds.tier_3),
            ("untiered", self.thresholds.untiered),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return fail(&format!("thresholds.{tier}"), "must be a positive number");
            }
        }
        for tier in Tier::ALL {
            // An empty list is allowed here: nothing required (coverage 1).
            let personas = self.committee.for_tier(tier);
            if !personas.is_empty()
                && let Some(problem) = abm_schemas::Account::committee_problem(personas)
            {
                return fail(&format!("committee.{}", tier.as_str()), &problem);
            }
        }
        let journey = &self.journey;
        for (field, value) in [
            ("journey.mqa_score_ratio", journey.mqa_score_ratio),
            ("journey.engaged_score_ratio", journey.engaged_score_ratio),
            ("journey.mqa_hand_raiser_days", journey.mqa_hand_raiser_days),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return fail(field, "must be a positive number");
            }
        }
        if journey.engaged_breadth == 0 {
            return fail("journey.engaged_breadth", "must be at least 1");
        }
        if !(self.dedup_window_days.is_finite() && self.dedup_window_days >= 7.0) {
            return fail("dedup_window_days", "must be at least 7 days");
        }
        if self.rules.len() > usize::from(u16::MAX) {
            return fail("rules", "too many rules");
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.name.is_empty() || !names.insert(rule.name.as_str()) {
                return fail(&format!("rules[{index}].name"), "must be non-empty and unique");
            }
            if !rule.points.is_finite() {
                return fail(&format!("rules[{index}].points"), "must be a finite number");
            }
            if rule.cap_per_contact_per_day == Some(0) {
                return fail(
                    &format!("rules[{index}].cap_per_contact_per_day"),
                    "must be at least 1 (remove the rule instead)",
                );
            }
            if rule.cap_per_contact_per_day.is_some_and(|cap| cap > MAX_CAP_PER_DAY) {
                return fail(
                    &format!("rules[{index}].cap_per_contact_per_day"),
                    &format!("must be at most {MAX_CAP_PER_DAY} (remove the cap instead)"),
                );
            }
        }
        for (persona, weight) in &self.persona_weights {
            if !weight.is_finite() {
                return fail(&format!("persona_weights.{persona}"), "must be a finite number");
            }
        }
        if self.max_seen_events == 0
            || self.max_window_events == 0
            || self.max_contacts == 0
            || self.max_cap_counters == 0
            || self.max_opportunities == 0
        {
            return fail("max_*", "bounds must be at least 1");
        }
        if !(MIN_STATE_BYTES..=MAX_STATE_BYTES).contains(&self.max_state_bytes) {
            return fail(
                "max_state_bytes",
                &format!(
                    "must be between {MIN_STATE_BYTES} and {MAX_STATE_BYTES} (under the broker's message.max.bytes)"
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_CAP_PER_DAY, ScoringConfig};

    fn with_cap(cap: u32) -> Result<(), super::ScoringConfigError> {
        let mut config = ScoringConfig::default();
        config.rules[0].cap_per_contact_per_day = Some(cap);
        config.validate()
    }

    #[test]
    fn committees_must_name_distinct_well_formed_personas() {
        let mut config = ScoringConfig::default();
        assert!(config.validate().is_ok());
        config.committee.tier_2 = vec!["champion".into(), "champion".into()];
        let error = config.validate().expect_err("duplicate");
        assert_eq!(error.field, "committee.tier_2");
        assert!(error.problem.contains("named twice"), "{}", error.problem);
        config.committee.tier_2 = vec![];
        assert!(config.validate().is_ok(), "empty: nothing required");
        config.committee.tier_2 = vec!["Economic Buyer".into()];
        assert!(config.validate().expect_err("spelling").problem.contains("a-z, 0-9 and _"));
    }

    #[test]
    fn caps_must_fit_the_state_counters() {
        assert!(with_cap(1).is_ok());
        assert!(with_cap(MAX_CAP_PER_DAY).is_ok());
        let zero = with_cap(0).expect_err("zero");
        assert_eq!(zero.field, "rules[0].cap_per_contact_per_day");
        let big = with_cap(MAX_CAP_PER_DAY + 1).expect_err("too big");
        assert_eq!(big.field, "rules[0].cap_per_contact_per_day");
        assert!(big.problem.contains("65534"), "{}", big.problem);
    }

    #[test]
    fn the_model_version_follows_the_settings_not_their_spelling() {
        let default = ScoringConfig::default().model_version();
        assert_eq!(default.len(), 16);
        assert!(default.chars().all(|c| c.is_ascii_hexdigit()));
        // A default spelled out, and maps written in another order: the same model.
        let spelled: ScoringConfig = toml::from_str(
            "half_life_days = 14.0\n[persona_weights]\nunknown = 1.0\nchampion = 1.2\neconomic_buyer = 1.5\n",
        )
        .expect("TOML");
        assert_eq!(spelled.model_version(), default);
        // Any change of a setting: another model.
        let mut lower = ScoringConfig::default();
        lower.thresholds.tier_2 = 74.0;
        assert_ne!(lower.model_version(), default);
        let mut reordered = ScoringConfig::default();
        reordered.rules.swap(0, 1);
        assert_ne!(reordered.model_version(), default, "rule order decides the first match");
    }
}
