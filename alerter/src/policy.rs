//! The alert policy: pure decisions from a crossing and the account's alert history.
//!
//! - A crossing whose sequence is not above the last one seen for its (account, kind) is a
//!   repeat: no alert (crossing ids are `<account>:<kind>:<sequence>`).
//! - Cooldown per (account, kind), in event time: a crossing is suppressed when an alert of the
//!   same kind for the account was published less than the cooldown (of the account's tier)
//!   before it. Kinds have separate histories, so a threshold alert's cooldown never holds back
//!   a hand-raiser.
//! - A crossing a re-score found in the history under a new model (`replayed`) is recorded (its
//!   sequence) but alerted only when it is within the cooldown (of its tier) of now: a model
//!   change does not flood SDRs with stale alerts.
//! - Otherwise: one `SalesAlert`, id = crossing id, with the TAL's name and owner, the why
//!   (top rules, contacts, recent events) and a suggested next step by kind and tier.

use std::collections::BTreeMap;

use abm_schemas::{Account, CommitteeCoverage, CrossingKind, SalesAlert, ScoreCrossing, Tier};
use serde::{Deserialize, Serialize};

const HOUR_MS: f64 = 3_600_000.0;

/// The alert policy part of `[alerter]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Cooldown per (account, kind), in hours of event time (default 24).
    pub cooldown_hours: f64,
    /// Per-tier cooldown overrides, e.g. `tier_1 = 4`.
    pub cooldown_hours_by_tier: BTreeMap<Tier, f64>,
    /// Owner on alerts for accounts that are not on the TAL (default `unassigned`).
    pub default_owner: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            cooldown_hours: 24.0,
            cooldown_hours_by_tier: BTreeMap::new(),
            default_owner: "unassigned".into(),
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), String> {
        let bad = |h: f64| !(h.is_finite() && h >= 0.0);
        if bad(self.cooldown_hours) || self.cooldown_hours_by_tier.values().any(|h| bad(*h)) {
            return Err("alerter.cooldown_hours*: must be a number of hours >= 0".into());
        }
        Ok(())
    }

    pub fn cooldown_ms(&self, tier: Tier) -> i64 {
        (self.cooldown_hours_by_tier.get(&tier).copied().unwrap_or(self.cooldown_hours) * HOUR_MS) as i64
    }
}

/// The alert history of one (account, kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Highest crossing sequence seen (alerted or not).
    pub last_sequence: i64,
    /// `as_of` of the last alert published.
    pub last_alert_as_of: Option<i64>,
}

/// What to do with a crossing.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Alert(Box<SalesAlert>),
    /// Seen before (same or older sequence).
    Duplicate,
    /// Within the cooldown of the previous alert of this kind.
    Cooldown,
    /// Found by a re-score, and older than the cooldown: recorded, not alerted.
    Replayed,
}

/// Decides, and updates `history` accordingly. `now`: the wall-clock time a replayed crossing
/// is measured against.
pub fn decide(
    config: &PolicyConfig,
    crossing: &ScoreCrossing,
    account: Option<&Account>,
    history: &mut History,
    now: i64,
) -> Decision {
    if crossing.sequence <= history.last_sequence {
        return Decision::Duplicate;
    }
    history.last_sequence = crossing.sequence;
    let tier = account.map_or(crossing.tier, |a| a.tier);
    if crossing.replayed && now.saturating_sub(crossing.as_of) >= config.cooldown_ms(tier) {
        return Decision::Replayed;
    }
    if let Some(last) = history.last_alert_as_of
        && crossing.as_of - last < config.cooldown_ms(tier)
    {
        return Decision::Cooldown;
    }
    history.last_alert_as_of = Some(crossing.as_of);
    let name = account.map_or(crossing.account_id.as_str(), |a| a.name.as_str());
    Decision::Alert(Box::new(SalesAlert {
        alert_id: crossing.crossing_id.clone(),
        crossing_id: crossing.crossing_id.clone(),
        account_id: crossing.account_id.clone(),
        account_name: name.to_owned(),
        tier,
        owner: account.map_or_else(|| config.default_owner.clone(), |a| a.owner.clone()),
        kind: crossing.kind,
        score: crossing.score,
        threshold: crossing.threshold,
        as_of: crossing.as_of,
        top_rules: crossing.top_rules.clone(),
        contacts: crossing.contacts.clone(),
        recent_events: crossing.recent_events.clone(),
        next_step: next_step(crossing.kind, tier, name, crossing.contacts.len(), crossing.coverage.as_ref()),
        coverage: crossing.coverage.clone(),
        model_version: crossing.model_version.clone(),
    }))
}

/// A short suggested next step by kind and tier; when the buying committee has personas no
/// engaged contact covers, it ends naming them ("Multi-thread: no economic buyer or champion
/// engaged yet.").
pub fn next_step(
    kind: CrossingKind,
    tier: Tier,
    name: &str,
    contacts: usize,
    coverage: Option<&CommitteeCoverage>,
) -> String {
    let step = step_by_kind_and_tier(kind, tier, name, contacts);
    match coverage.map(|coverage| coverage.missing.as_slice()) {
        Some([]) | None => step,
        Some(missing) => {
            let names: Vec<String> = missing.iter().map(|persona| persona.replace('_', " ")).collect();
            let list = match names.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            format!("{step} Multi-thread: no {list} engaged yet.")
        }
    }
}

fn step_by_kind_and_tier(kind: CrossingKind, tier: Tier, name: &str, contacts: usize) -> String {
    match (kind, tier) {
        (CrossingKind::HandRaiser, Tier::Tier1) => {
            format!("Call within the hour: {name} asked for a demo. Bring the AE and the account plan.")
        }
        (CrossingKind::HandRaiser, Tier::Tier2) => {
            format!("Reach out today: {name} asked for a demo. Book it and qualify.")
        }
        (CrossingKind::HandRaiser, _) => format!("Book the demo {name} asked for within 24 hours."),
        (CrossingKind::Threshold, Tier::Tier1) => format!(
            "Multi-thread now: personal outreach to the {contacts} engaged contact(s) at {name}; align the 1:1 play with the AE."
        ),
        (CrossingKind::Threshold, Tier::Tier2) => {
            format!("Start the 1:few sequence for the {contacts} engaged contact(s) at {name} this week.")
        }
        (CrossingKind::Threshold, Tier::Tier3) => {
            format!("Enrol the engaged contacts at {name} in the 1:many sequence; watch for a hand-raise.")
        }
        (CrossingKind::Threshold, Tier::Untiered) => {
            format!("{name} is engaging but not on the TAL: review its fit and consider adding it.")
        }
    }
}

/// One human line for a terminal: who, what, why, next.
pub fn one_line(alert: &SalesAlert) -> String {
    let what = match alert.kind {
        CrossingKind::HandRaiser => "HAND-RAISER".to_owned(),
        CrossingKind::Threshold => format!("score {:.0} >= {:.0}", alert.score, alert.threshold),
    };
    let why: Vec<String> = alert.top_rules.iter().take(3).map(|r| format!("{} {:+.0}", r.rule, r.points)).collect();
    let contacts: Vec<String> = alert.contacts.iter().take(3).map(|c| c.persona.clone()).collect();
    let committee =
        alert.coverage.as_ref().map_or_else(|| "-".to_owned(), |c| format!("{}/{}", c.covered.len(), c.required.len()));
    format!(
        "[{}] {} ({}) -> {} | {what} | why: {} | contacts: {} {} | committee: {committee} | next: {}",
        alert.tier.as_str(),
        alert.account_name,
        alert.account_id,
        alert.owner,
        if why.is_empty() { "-".into() } else { why.join(", ") },
        alert.contacts.len(),
        if contacts.is_empty() { String::new() } else { format!("({})", contacts.join(", ")) },
        alert.next_step
    )
}

/// The sequence of a crossing id `<account>:<kind>:<sequence>`.
pub fn sequence_of(crossing_id: &str) -> Option<i64> {
    crossing_id.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn crossing(kind: CrossingKind, sequence: i64, as_of: i64) -> ScoreCrossing {
        ScoreCrossing {
            crossing_id: format!("acc:{}:{sequence}", kind.as_str()),
            account_id: "acc".into(),
            kind,
            sequence,
            tier: Tier::Tier2,
            score: 80.0,
            threshold: 75.0,
            engagement: 80.0,
            breadth: 1,
            multiplier: 1.0,
            as_of,
            trigger_event_id: "e".into(),
            top_rules: vec![],
            contacts: vec![],
            recent_events: vec![],
            coverage: None,
            model_version: None,
            replayed: false,
        }
    }

    #[test]
    fn duplicates_cooldowns_and_separate_kinds() {
        let config =
            PolicyConfig { cooldown_hours_by_tier: BTreeMap::from([(Tier::Tier1, 2.0)]), ..PolicyConfig::default() };
        let mut threshold = History::default();
        let mut hand = History::default();
        let is_alert = |d: &Decision| matches!(d, Decision::Alert(_));
        assert!(is_alert(&decide(&config, &crossing(CrossingKind::Threshold, 1, 0), None, &mut threshold, 0)));
        assert_eq!(
            decide(&config, &crossing(CrossingKind::Threshold, 1, 0), None, &mut threshold, 0),
            Decision::Duplicate
        );
        assert_eq!(
            decide(&config, &crossing(CrossingKind::Threshold, 2, 23 * H), None, &mut threshold, 0),
            Decision::Cooldown
        );
        // The hand-raiser has its own history: not held back by the threshold alert.
        assert!(is_alert(&decide(&config, &crossing(CrossingKind::HandRaiser, 1, 23 * H), None, &mut hand, 0)));
        // 24 h after the last *alert* (not the suppressed crossing): alert again.
        assert!(is_alert(&decide(&config, &crossing(CrossingKind::Threshold, 3, 24 * H), None, &mut threshold, 0)));
        // Tier 1 accounts use their tier's 2 h cooldown.
        let account = Account {
            account_id: "acc".into(),
            name: "Acme".into(),
            domains: vec![],
            tier: Tier::Tier1,
            owner: "jo@v.example".into(),
            industry: None,
            employees: None,
            committee: None,
            updated_at: 0,
        };
        match decide(&config, &crossing(CrossingKind::Threshold, 4, 26 * H), Some(&account), &mut threshold, 0) {
            Decision::Alert(alert) => {
                assert_eq!(alert.alert_id, "acc:threshold:4");
                assert_eq!(alert.owner, "jo@v.example");
                assert_eq!(alert.account_name, "Acme");
                assert_eq!(alert.tier, Tier::Tier1);
                assert!(alert.next_step.contains("Acme"));
            }
            other => panic!("expected an alert, got {other:?}"),
        }
        assert_eq!(sequence_of("a:b:c:threshold:17"), Some(17));
    }

    #[test]
    fn a_replayed_crossing_is_alerted_only_within_the_cooldown_of_now() {
        let config = PolicyConfig::default();
        let now = 1_000 * H;
        let replayed = |sequence: i64, as_of: i64| ScoreCrossing {
            replayed: true,
            ..crossing(CrossingKind::Threshold, sequence, as_of)
        };
        let mut history = History::default();
        // 25 h before now: recorded (its sequence), not alerted.
        assert_eq!(decide(&config, &replayed(1, now - 25 * H), None, &mut history, now), Decision::Replayed);
        assert_eq!(history, History { last_sequence: 1, last_alert_as_of: None });
        // 23 h before now: alerted, as a live crossing would be.
        assert!(matches!(decide(&config, &replayed(2, now - 23 * H), None, &mut history, now), Decision::Alert(_)));
        // The cooldown holds for what follows, replayed or live.
        assert_eq!(decide(&config, &replayed(3, now - 22 * H), None, &mut history, now), Decision::Cooldown);
        assert_eq!(
            decide(&config, &crossing(CrossingKind::Threshold, 4, now), None, &mut history, now),
            Decision::Cooldown
        );
        // A live crossing is never held back for its age.
        let mut fresh = History::default();
        assert!(matches!(
            decide(&config, &crossing(CrossingKind::Threshold, 1, 0), None, &mut fresh, now),
            Decision::Alert(_)
        ));
    }

    #[test]
    fn the_next_step_names_the_personas_no_engaged_contact_covers() {
        let coverage = |missing: &[&str]| CommitteeCoverage {
            required: vec!["economic_buyer".into(), "champion".into(), "end_user".into()],
            covered: vec![],
            missing: missing.iter().map(|p| (*p).to_owned()).collect(),
            ratio: 0.0,
        };
        let step =
            |coverage: Option<&CommitteeCoverage>| next_step(CrossingKind::Threshold, Tier::Tier2, "Acme", 2, coverage);
        let plain = step(None);
        assert!(plain.starts_with("Start the 1:few sequence"), "{plain}");
        assert_eq!(step(Some(&coverage(&[]))), plain, "all covered: nothing added");
        assert_eq!(
            step(Some(&coverage(&["economic_buyer"]))),
            format!("{plain} Multi-thread: no economic buyer engaged yet.")
        );
        assert_eq!(
            step(Some(&coverage(&["economic_buyer", "champion", "end_user"]))),
            format!("{plain} Multi-thread: no economic buyer, champion or end user engaged yet.")
        );
    }
}
