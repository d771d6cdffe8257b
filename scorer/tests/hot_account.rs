//! One very hot account: every per-account structure stays bounded by count, the encoded state
//! by bytes, and within the bounds the score is what the documented semantics give.

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use scorer::engine::{AccountScoreState, Applied, DAY_MS, Engine, ScoringConfig, Trimmed};

const T0: i64 = 1_700_000_000_000;
const ACCOUNT: &str = "hot-account";

fn visit(id: &str, t: i64, contact: &str, path: &str) -> EngagementEvent {
    let mut event = EngagementEvent::new(id, EventKind::WebVisit, t, "test");
    event.account_id = Some(ACCOUNT.into());
    event.contact = Some(Contact { contact_id: Some(contact.into()), email: None, title: None, persona: None });
    event.web_visit = Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
    event
}

fn encoded_len(engine: &Engine, state: &AccountScoreState) -> usize {
    let mut bytes = Vec::new();
    state.encode_record_into(ACCOUNT, engine, &mut bytes);
    bytes.len()
}

/// Applies every event; returns the total the bounds trimmed.
fn apply_all(engine: &Engine, state: &mut AccountScoreState, events: impl Iterator<Item = EngagementEvent>) -> Trimmed {
    let mut trimmed = Trimmed::default();
    for event in events {
        if let Applied::Scored { trimmed: this, .. } = engine.apply(ACCOUNT, state, &event, Tier::Tier1) {
            trimmed.add(this);
        }
    }
    trimmed
}

#[test]
fn thirty_five_thousand_distinct_contacts_stay_bounded_and_score_exactly() {
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let config = engine.config().clone();
    let mut state = AccountScoreState::default();
    // 35,000 capped web visits, one per contact, one second apart (all on one UTC day or two).
    let n = 35_000;
    let events = (0..n).map(|i| visit(&format!("e{i}"), T0 + i * 1000, &format!("contact-{i}"), "/blog"));
    let trimmed = apply_all(&engine, &mut state, events);

    assert!(state.contacts.iter().count() <= config.max_contacts);
    let bytes = encoded_len(&engine, &state);
    assert!(bytes <= config.max_state_bytes, "encoded state {bytes} bytes over {}", config.max_state_bytes);
    assert!(trimmed.cap_counters > 0 && trimmed.contacts > 0 && trimmed.seen_ids > 0, "{trimmed:?}");
    assert_eq!(trimmed.contacts, (n as u64) - config.max_contacts as u64);

    // No contact repeats, so dropping cap counters changes nothing: every visit scores 5
    // (persona unknown, weight 1), decayed from the last visit's time; the breadth saturates.
    let as_of = T0 + (n - 1) * 1000;
    let half_life_ms = config.half_life_days * DAY_MS as f64;
    let expected: f64 = (0..n).map(|i| 5.0 * (-((as_of - (T0 + i * 1000)) as f64) / half_life_ms).exp2()).sum();
    assert!((state.engagement - expected).abs() <= 1e-9 * expected, "{} vs {expected}", state.engagement);
    let view = engine.view(ACCOUNT, &state, None);
    assert_eq!(view.breadth as usize, config.max_contacts);
    assert!((view.score - expected * config.breadth_max).abs() <= 1e-9 * expected * 2.0);
}

#[test]
fn caps_hold_exactly_within_the_counter_bound() {
    let config = ScoringConfig { max_cap_counters: 8, ..ScoringConfig::default() };
    let engine = Engine::new(config).expect("valid");
    let mut state = AccountScoreState::default();
    // 8 contacts, 15 visits each on one day: exactly 10 score per contact (cap 10/day).
    let events =
        (0..8).flat_map(|c| (0..15).map(move |k| visit(&format!("c{c}-{k}"), T0 + c * 100 + k, &format!("c{c}"), "/")));
    let trimmed = apply_all(&engine, &mut state, events);
    assert_eq!(trimmed.cap_counters, 0);
    assert_eq!(state.events_applied, 120);
    let as_of = T0 + 7 * 100 + 14;
    let half_life_ms = DAY_MS as f64 * 14.0;
    let expected: f64 = (0..8)
        .flat_map(|c| (0..10).map(move |k| T0 + c * 100 + k))
        .map(|t| 5.0 * (-((as_of - t) as f64) / half_life_ms).exp2())
        .sum();
    assert!((state.engagement - expected).abs() <= 1e-9 * expected);
}

#[test]
fn older_days_cap_counters_go_first() {
    let config = ScoringConfig { max_cap_counters: 2, ..ScoringConfig::default() };
    let engine = Engine::new(config).expect("valid");
    let mut state = AccountScoreState::default();
    // Day 0: contact a; day 1: contacts b and c. The bound (2) drops day 0's counter for a.
    let log = [visit("1", T0, "a", "/"), visit("2", T0 + DAY_MS, "b", "/"), visit("3", T0 + DAY_MS + 1, "c", "/")];
    let trimmed = apply_all(&engine, &mut state, log.into_iter());
    assert_eq!(trimmed.cap_counters, 1);
    // b and c still have their counters: 9 more visits each score, the 10th more does not.
    let more = (0..10).map(|k| visit(&format!("b{k}"), T0 + DAY_MS + 10 + k, "b", "/"));
    let mut scored = 0;
    for event in more {
        if let Applied::Scored { points, .. } = engine.apply(ACCOUNT, &mut state, &event, Tier::Tier1)
            && points > 0.0
        {
            scored += 1;
        }
    }
    assert_eq!(scored, 9, "b had 1 of its 10 already");
}

#[test]
fn a_state_over_the_byte_bound_sheds_detail_but_keeps_its_score() {
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let config = engine.config().clone();
    let mut state = AccountScoreState::default();
    // 64 contacts with 6 KiB ids and URLs with 6 KiB paths: over 256 KiB encoded.
    let long = "x".repeat(6 * 1024);
    let events = (0..200).map(|i| visit(&format!("e{i}"), T0 + i, &format!("{long}{i}"), &format!("/{long}")));
    apply_all(&engine, &mut state, events);
    let before = engine.view(ACCOUNT, &state, None);
    assert!(encoded_len(&engine, &state) > config.max_state_bytes);
    let mut shed = Trimmed::default();
    while encoded_len(&engine, &state) > config.max_state_bytes {
        shed.add(state.shed(config.saturating_breadth()).expect("can shed down to the bound"));
    }
    let after = engine.view(ACCOUNT, &state, None);
    assert_eq!(after.score, before.score, "the score is kept");
    assert_eq!(after.engagement, before.engagement);
    assert!(state.contacts.iter().count() >= config.saturating_breadth());
    assert!(shed.recent_events > 0 && shed.contacts > 0, "{shed:?}");
}
