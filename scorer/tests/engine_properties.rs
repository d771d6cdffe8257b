//! Properties of the scoring engine over arbitrary event logs.

use abm_schemas::{
    Contact, EmailAction, EmailEvent, EngagementEvent, EventKind, Opportunity, OpportunityStage, Tier, WebVisit,
};
use proptest::prelude::*;
use scorer::engine::{AccountScoreState, Applied, DAY_MS, Engine, ScoringConfig};

const T0: i64 = 1_700_000_000_000;

fn arbitrary_event() -> impl Strategy<Value = (u8, i64, Option<u8>, u8)> {
    // (kind selector, time offset within 60 days, contact, persona selector)
    (0u8..9, 0i64..60 * DAY_MS, proptest::option::of(0u8..6), 0u8..4)
}

fn build(index: usize, (kind, offset, contact, persona): (u8, i64, Option<u8>, u8)) -> EngagementEvent {
    let kinds = [
        EventKind::WebVisit,
        EventKind::WebVisit,
        EventKind::Email,
        EventKind::AdClick,
        EventKind::DemoRequest,
        EventKind::ContentDownload,
        EventKind::Meeting,
        EventKind::Intent,
        EventKind::Opportunity,
    ];
    let kind = kinds[usize::from(kind)];
    let mut event = EngagementEvent::new(format!("e{index}"), kind, T0 + offset, "prop");
    event.contact = contact.map(|c| Contact {
        contact_id: Some(format!("c{c}")),
        email: None,
        title: (c % 2 == 0).then(|| format!("Title {c}")),
        persona: Some(["economic_buyer", "champion", "unknown", "user"][usize::from(persona)].into()),
    });
    match kind {
        EventKind::WebVisit => {
            let path = ["/", "/pricing", "/careers", "/blog"][(offset % 4) as usize];
            event.web_visit = Some(WebVisit { url: format!("https://v.example{path}"), referrer: None, title: None });
        }
        EventKind::Email => {
            let action = [EmailAction::Click, EmailAction::Unsubscribe, EmailAction::Open][(offset % 3) as usize];
            event.email = Some(EmailEvent { action, campaign: None });
        }
        EventKind::Opportunity => {
            let stage = [OpportunityStage::Open, OpportunityStage::ClosedWon, OpportunityStage::ClosedLost]
                [(offset % 3) as usize];
            event.opportunity = Some(Opportunity {
                opportunity_id: format!("o{}", offset % 4),
                stage,
                stage_name: (offset % 2 == 0).then(|| "Negotiation".to_owned()),
                amount: (offset % 1000) as f64 * 10.5,
                currency: "USD".into(),
            });
        }
        _ => {}
    }
    event
}

fn log_strategy() -> impl Strategy<Value = Vec<EngagementEvent>> {
    proptest::collection::vec(arbitrary_event(), 1..60)
        .prop_map(|raw| raw.into_iter().enumerate().map(|(i, e)| build(i, e)).collect())
}

fn replay(engine: &Engine, log: &[EngagementEvent]) -> (AccountScoreState, Vec<String>) {
    let mut state = AccountScoreState::default();
    let mut crossings = Vec::new();
    for event in log {
        if let Applied::Scored { crossings: emitted, .. } = engine.apply("acc", &mut state, event, Tier::Tier2) {
            crossings.extend(emitted.into_iter().map(|c| c.crossing_id));
        }
    }
    (state, crossings)
}

fn uncapped() -> Engine {
    let mut config = ScoringConfig::default();
    for rule in &mut config.rules {
        rule.cap_per_contact_per_day = None;
    }
    Engine::new(config).expect("valid")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Without caps (which are defined in processing order), E, as-of, B and the per-rule
    /// breakdown do not depend on the order events arrive in.
    #[test]
    fn engagement_is_independent_of_event_order(log in log_strategy(), seed in any::<u64>()) {
        let engine = uncapped();
        let mut shuffled = log.clone();
        // Deterministic Fisher-Yates from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let (a, _) = replay(&engine, &log);
        let (b, _) = replay(&engine, &shuffled);
        prop_assert!(close(a.engagement, b.engagement), "{} vs {}", a.engagement, b.engagement);
        prop_assert_eq!(a.as_of, b.as_of);
        let as_of = a.as_of.unwrap_or(0);
        prop_assert_eq!(a.breadth_at(as_of), b.breadth_at(as_of));
        prop_assert!(close(engine.score(&a), engine.score(&b)));
        let mut rules_a = a.rule_points.clone();
        let mut rules_b = b.rule_points.clone();
        rules_a.sort_by_key(|(i, _)| *i);
        rules_b.sort_by_key(|(i, _)| *i);
        prop_assert_eq!(rules_a.len(), rules_b.len());
        for ((ia, pa), (ib, pb)) in rules_a.iter().zip(&rules_b) {
            prop_assert_eq!(ia, ib);
            prop_assert!(close(*pa, *pb));
        }
        let counts_a = engine.view("acc", &a, None).counts;
        let counts_b = engine.view("acc", &b, None).counts;
        prop_assert_eq!(counts_a, counts_b);
    }

    /// Replaying the same log from scratch gives the same state and the same crossings.
    #[test]
    fn replaying_a_log_gives_the_same_state(log in log_strategy()) {
        let engine = Engine::new(ScoringConfig::default()).expect("valid");
        let (a, crossings_a) = replay(&engine, &log);
        let (b, crossings_b) = replay(&engine, &log);
        prop_assert_eq!(a, b);
        prop_assert_eq!(crossings_a, crossings_b);
    }

    /// The scorer's direct changelog encoder gives exactly the codec's bytes for the record.
    #[test]
    fn direct_state_encoding_equals_the_codec(log in log_strategy(), tier in 0usize..4) {
        let engine = Engine::new(ScoringConfig::default()).expect("valid");
        let tier = [Tier::Untiered, Tier::Tier1, Tier::Tier2, Tier::Tier3][tier];
        let mut state = AccountScoreState::default();
        for event in &log {
            engine.apply("acc-1", &mut state, event, tier);
        }
        let expected = abm_schemas::encode(&state.to_record("acc-1", &engine)).expect("encodes");
        let mut direct = vec![7u8]; // appends, keeps what was there
        state.encode_record_into("acc-1", &engine, &mut direct);
        prop_assert_eq!(&direct[1..], &expected[..]);
        prop_assert_eq!(direct[0], 7);
    }

    /// State survives the changelog's Avro round trip unchanged, and applying the rest of a
    /// log to the restored state gives what applying it to the original gives.
    #[test]
    fn state_survives_an_avro_round_trip(log in log_strategy(), split in 0usize..60) {
        let engine = Engine::new(ScoringConfig::default()).expect("valid");
        let split = split.min(log.len());
        let (state, _) = replay(&engine, &log[..split]);
        let bytes = abm_schemas::encode(&state.to_record("acc", &engine)).expect("encodes");
        let restored = AccountScoreState::from_record(&abm_schemas::decode(&bytes).expect("decodes"), &engine);
        prop_assert_eq!(&restored, &state);
        let (mut continued, mut original) = (restored, state);
        for event in &log[split..] {
            let x = engine.apply("acc", &mut continued, event, Tier::Tier2);
            let y = engine.apply("acc", &mut original, event, Tier::Tier2);
            prop_assert_eq!(x, y);
        }
        prop_assert_eq!(continued, original);
    }

    /// Applying again an event applied within the dedup window (the account's as-of advanced
    /// less than 7 days since) changes nothing but the duplicate count.
    #[test]
    fn duplicates_change_nothing(log in log_strategy(), pick in any::<prop::sample::Index>()) {
        let engine = Engine::new(ScoringConfig::default()).expect("valid");
        let (mut state, _) = replay(&engine, &log);
        let before = state.clone();
        let final_as_of = state.as_of.expect("events applied");
        let mut as_of = i64::MIN;
        let remembered: Vec<&EngagementEvent> = log
            .iter()
            .filter(|event| {
                as_of = as_of.max(event.occurred_at);
                as_of > final_as_of - 7 * DAY_MS
            })
            .collect();
        let again = remembered[pick.index(remembered.len())];
        prop_assert_eq!(engine.apply("acc", &mut state, again, Tier::Tier2), Applied::Duplicate);
        prop_assert_eq!(state.duplicates, before.duplicates + 1);
        state.duplicates = before.duplicates;
        prop_assert_eq!(state, before);
    }
}
