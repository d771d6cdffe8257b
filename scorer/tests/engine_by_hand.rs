//! Scores for hand-written event logs, checked against values computed by hand (in comments).
//! Default scoring config unless a test says otherwise: web visit +5 (cap 10 per contact per
//! day), pricing +15, careers -5, email click +5, unsubscribe -10, ad click +5, demo +50,
//! meeting +30, content download +10; personas economic_buyer 1.5, champion 1.2; half-life
//! 14 days; m(B) = min(1 + 0.25 (B - 1), 2); thresholds 50/75/100/150; hysteresis 0.25.

use abm_schemas::{
    Contact, CrossingKind, EmailAction, EmailEvent, EngagementEvent, EventKind, Opportunity, OpportunityStage, Tier,
    WebVisit,
};
use scorer::engine::{AccountScoreState, Applied, DAY_MS, Engine, ScoringConfig};

const T0: i64 = 1_700_000_000_000;
const ACCOUNT: &str = "acc-1";

fn event(id: &str, kind: EventKind, t: i64, contact: Option<(&str, &str)>) -> EngagementEvent {
    let mut event = EngagementEvent::new(id, kind, t, "test");
    event.account_id = Some(ACCOUNT.into());
    event.contact = contact.map(|(id, persona)| Contact {
        contact_id: Some(id.into()),
        email: None,
        title: None,
        persona: Some(persona.into()),
    });
    event
}

fn visit(id: &str, path: &str, t: i64, contact: Option<(&str, &str)>) -> EngagementEvent {
    let mut event = event(id, EventKind::WebVisit, t, contact);
    event.web_visit =
        Some(WebVisit { url: format!("https://vendor.example{path}?utm=x"), referrer: None, title: None });
    event
}

fn email(id: &str, action: EmailAction, t: i64, contact: Option<(&str, &str)>) -> EngagementEvent {
    let mut event = event(id, EventKind::Email, t, contact);
    event.email = Some(EmailEvent { action, campaign: None });
    event
}

/// Applies `log` in order with `tier`; returns the state and every crossing id emitted.
fn run(engine: &Engine, tier: Tier, log: &[EngagementEvent]) -> (AccountScoreState, Vec<String>) {
    let mut state = AccountScoreState::default();
    let mut crossings = Vec::new();
    for event in log {
        if let Applied::Scored { crossings: emitted, .. } = engine.apply(ACCOUNT, &mut state, event, tier) {
            crossings.extend(emitted.into_iter().map(|c| c.crossing_id));
        }
    }
    (state, crossings)
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    let tolerance = 1e-9 * expected.abs().max(1.0);
    assert!((actual - expected).abs() <= tolerance, "{what}: got {actual}, expected {expected}");
}

fn engine() -> Engine {
    Engine::new(ScoringConfig::default()).expect("default config is valid")
}

#[test]
fn decay_halves_points_every_half_life_and_late_events_decay_from_as_of() {
    let engine = engine();
    let c1 = Some(("c1", "unknown"));
    let (state, _) = run(
        &engine,
        Tier::Tier3,
        &[
            visit("a", "/pricing", T0, c1),              // 15
            visit("b", "/", T0 + 14 * DAY_MS, c1),       // 5 at as_of = T0 + 14d
            visit("c", "/product", T0 + 7 * DAY_MS, c1), // late: 5 * 2^(-7/14)
        ],
    );
    // E = 15 * 2^-1 + 5 + 5 * 2^-0.5 = 7.5 + 5 + 3.5355339059327378
    let expected = 7.5 + 5.0 + 5.0 * 0.5f64.sqrt();
    assert_close(state.engagement, expected, "E");
    assert_eq!(state.as_of, Some(T0 + 14 * DAY_MS), "a late event does not move as_of");
    let view = engine.view(ACCOUNT, &state, None);
    assert_eq!(view.breadth, 1);
    assert_close(view.score, expected, "S with B = 1");
    let pricing = view.rule_points.iter().find(|r| r.rule == "pricing_page").expect("pricing in breakdown");
    assert_close(pricing.points, 7.5, "pricing decayed");
    // Decayed to now = as_of + 28 days: a quarter.
    let later = engine.view(ACCOUNT, &state, Some(T0 + 42 * DAY_MS));
    assert_close(later.engagement, expected / 4.0, "E decayed to a later time");
    assert_eq!(later.breadth, 1, "c1 last engaged 28 days before: inside (at - 30d, at]");
    let edge = engine.view(ACCOUNT, &state, Some(T0 + 44 * DAY_MS));
    assert_eq!(edge.breadth, 0, "exactly 30 days before is outside the half-open window");
}

#[test]
fn persona_weights_multiply_points_including_negative_ones() {
    let engine = engine();
    let (state, _) = run(
        &engine,
        Tier::Tier3,
        &[
            visit("a", "/pricing", T0, Some(("cfo", "economic_buyer"))), // 15 * 1.5 = 22.5
            visit("b", "/careers/eng", T0, Some(("champ", "champion"))), // -5 * 1.2 = -6
            email("c", EmailAction::Unsubscribe, T0, Some(("x", "intern"))), // -10 * 1.0 (unlisted persona)
            email("d", EmailAction::Click, T0, None),                    // 5 * 1.0 (no contact: unknown)
        ],
    );
    assert_close(state.engagement, 22.5 - 6.0 - 10.0 + 5.0, "E");
    // Only cfo matched a positive rule with a known contact: B = 1.
    assert_eq!(state.breadth_at(T0), 1);
    assert_close(engine.score(&state), 11.5, "S");
}

#[test]
fn caps_zero_events_past_n_per_contact_per_utc_day_but_still_count_them() {
    let engine = engine();
    let c1 = Some(("c1", "unknown"));
    let mut log: Vec<EngagementEvent> = (0..12).map(|i| visit(&format!("v{i}"), "/", T0 + i, c1)).collect();
    // Anonymous visitors share one "anonymous" key per account.
    log.extend((0..11).map(|i| visit(&format!("anon{i}"), "/blog", T0 + 20 + i, None)));
    // The next UTC day starts a new count.
    let next_day = (T0.div_euclid(DAY_MS) + 1) * DAY_MS;
    log.push(visit("v-next", "/", next_day, c1));
    // Pricing is another rule: not capped by web_visit's cap.
    log.push(visit("p", "/pricing", next_day, c1));
    let (state, _) = run(&engine, Tier::Tier3, &log);
    let decay = |t: i64| (-((next_day - t) as f64) / (14.0 * DAY_MS as f64)).exp2();
    let mut expected = 0.0;
    for i in 0..10 {
        expected += 5.0 * decay(T0 + i); // c1's first ten score
    }
    for i in 0..10 {
        expected += 5.0 * decay(T0 + 20 + i); // anonymous: first ten
    }
    expected += 5.0 + 15.0;
    assert_close(state.engagement, expected, "E with caps");
    let view = engine.view(ACCOUNT, &state, None);
    let web = view.counts.iter().find(|c| c.kind == EventKind::WebVisit).expect("web visits counted");
    assert_eq!(web.last_7_days, 25, "capped events still count");
    assert_eq!(view.events_applied, 25);
}

#[test]
fn breadth_counts_distinct_contacts_with_positive_rules_in_thirty_days() {
    let engine = engine();
    let (state, _) = run(
        &engine,
        Tier::Tier3,
        &[
            visit("a", "/", T0, Some(("c1", "unknown"))),
            visit("b", "/", T0 + DAY_MS, Some(("c2", "unknown"))),
            visit("c", "/", T0 + 2 * DAY_MS, Some(("c3", "unknown"))),
            visit("d", "/", T0 + 2 * DAY_MS, Some(("c3", "unknown"))),
            email("e", EmailAction::Unsubscribe, T0 + 2 * DAY_MS, Some(("c4", "unknown"))),
            visit("f", "/", T0 + 2 * DAY_MS, None),
        ],
    );
    let as_of = T0 + 2 * DAY_MS;
    let e = 5.0 * (-2.0f64 / 14.0).exp2() + 5.0 * (-1.0f64 / 14.0).exp2() + 5.0 + 5.0 - 10.0 + 5.0;
    assert_close(state.engagement, e, "E");
    // c1, c2, c3 engaged; c4's only event has negative points; the anonymous visit has no contact.
    assert_eq!(state.breadth_at(as_of), 3);
    assert_close(engine.score(&state), e * 1.5, "S = E * m(3) = E * 1.5");
    // 30 days after c1's visit (window is half-open): c1 drops out, B = 2, m = 1.25.
    let view = engine.view(ACCOUNT, &state, Some(T0 + 30 * DAY_MS));
    assert_eq!(view.breadth, 2);
    assert_close(view.multiplier, 1.25, "m(2)");
    // Breadth saturates at m_max = 2 (B >= 5).
    let many: Vec<_> = (0..8)
        .map(|i| visit(&format!("m{i}"), "/", T0, Some((["a", "b", "c", "d", "e", "f", "g", "h"][i], "unknown"))))
        .collect();
    let (state, _) = run(&engine, Tier::Tier3, &many);
    assert_eq!(state.breadth_at(T0), 8);
    assert_close(engine.score(&state), 40.0 * 2.0, "m capped at 2");
}

#[test]
fn thresholds_fire_once_then_rearm_below_the_hysteresis_band() {
    let engine = engine();
    let buyer = Some(("cfo", "economic_buyer"));
    let log = vec![
        visit("p1", "/pricing", T0, buyer), // 22.5
        visit("p2", "/pricing", T0, buyer), // 45
        visit("v1", "/", T0, buyer),        // 52.5 >= 50 (tier 1): crossing 1, disarm
        visit("v2", "/", T0, buyer),        // 60: disarmed, nothing
        // 14 days later: 30 + 7.5 = 37.5, not < 37.5 (= 50 * 0.75): still disarmed
        visit("v3", "/", T0 + 14 * DAY_MS, buyer),
        // 28 days after T0: 37.5 / 2 + 7.5 = 26.25 < 37.5: re-armed
        visit("v4", "/", T0 + 28 * DAY_MS, buyer),
        visit("p3", "/pricing", T0 + 28 * DAY_MS, buyer), // 48.75 < 50
        visit("v5", "/", T0 + 28 * DAY_MS, buyer),        // 56.25 >= 50: crossing 2
    ];
    let (state, crossings) = run(&engine, Tier::Tier1, &log);
    assert_eq!(crossings, vec!["acc-1:threshold:1", "acc-1:threshold:2"]);
    assert_close(state.engagement, 56.25, "E");
    assert!(!state.armed);
    // The same log on tier 3 (threshold 100) never crosses.
    let (_, crossings) = run(&engine, Tier::Tier3, &log);
    assert!(crossings.is_empty());
}

#[test]
fn a_demo_request_is_always_a_hand_raiser_and_may_also_cross() {
    let engine = engine();
    let mut demo = event("d1", EventKind::DemoRequest, T0, Some(("c1", "champion")));
    demo.demo_request = Some(abm_schemas::DemoRequest { form: "contact-sales".into() });
    let mut demo2 = demo.clone();
    demo2.event_id = "d2".into();
    let mut state = AccountScoreState::default();
    let Applied::Scored { crossings, points, .. } = engine.apply(ACCOUNT, &mut state, &demo, Tier::Tier1) else {
        panic!("applied")
    };
    assert_close(points, 60.0, "50 * 1.2");
    let kinds: Vec<_> = crossings.iter().map(|c| (c.kind, c.crossing_id.as_str())).collect();
    assert_eq!(
        kinds,
        vec![(CrossingKind::Threshold, "acc-1:threshold:1"), (CrossingKind::HandRaiser, "acc-1:hand_raiser:1")]
    );
    let explanation = &crossings[0];
    assert_eq!(explanation.top_rules[0].rule, "demo_request");
    assert_eq!(explanation.contacts[0].contact_id, "c1");
    assert_eq!(explanation.recent_events[0].event_id, "d1");
    assert_eq!(explanation.trigger_event_id, "d1");
    // Disarmed now, but a second demo request is still a hand-raiser, with the next sequence.
    let Applied::Scored { crossings, .. } = engine.apply(ACCOUNT, &mut state, &demo2, Tier::Tier1) else {
        panic!("applied")
    };
    let ids: Vec<_> = crossings.iter().map(|c| c.crossing_id.as_str()).collect();
    assert_eq!(ids, vec!["acc-1:hand_raiser:2"]);
}

#[test]
fn a_repeated_event_id_changes_nothing_but_the_duplicate_count() {
    let engine = engine();
    let a = visit("same-id", "/pricing", T0, Some(("c1", "unknown")));
    let mut b = visit("same-id", "/", T0 + DAY_MS, Some(("c2", "unknown")));
    b.kind = EventKind::WebVisit;
    let mut state = AccountScoreState::default();
    engine.apply(ACCOUNT, &mut state, &a, Tier::Tier3);
    let before = state.clone();
    assert_eq!(engine.apply(ACCOUNT, &mut state, &b, Tier::Tier3), Applied::Duplicate);
    assert_eq!(state.duplicates, 1);
    state.duplicates = 0;
    assert_eq!(state, before);
}

#[test]
fn unmatched_kinds_score_zero_but_count_and_advance_as_of() {
    let engine = engine();
    let (state, _) = run(
        &engine,
        Tier::Tier3,
        &[visit("a", "/pricing", T0, None), event("w", EventKind::Webinar, T0 + 14 * DAY_MS, None)],
    );
    assert_eq!(state.as_of, Some(T0 + 14 * DAY_MS));
    assert_close(state.engagement, 7.5, "pricing decayed by one half-life");
    assert_eq!(state.events_applied, 2);
}

#[test]
fn configured_rules_match_channel_and_campaign_and_invalid_configs_are_refused() {
    let mut config = ScoringConfig::default();
    let linkedin: scorer::engine::RuleConfig = toml::from_str(
        "name = \"linkedin_q4\"\npoints = 8\nkind = \"ad_click\"\nchannel = \"LinkedIn\"\ncampaign = \"q4\"\n",
    )
    .expect("rule parses");
    config.rules.insert(0, linkedin);
    let engine = Engine::new(config.clone()).expect("valid");
    let ad = |id: &str, channel: &str, campaign: &str| {
        let mut e = event(id, EventKind::AdClick, T0, None);
        e.ad_click =
            Some(abm_schemas::AdClick { channel: channel.into(), campaign: Some(campaign.into()), creative: None });
        e
    };
    let (state, _) =
        run(&engine, Tier::Tier3, &[ad("1", "linkedin", "q4"), ad("2", "google", "q4"), ad("3", "linkedin", "q1")]);
    assert_close(state.engagement, 8.0 + 5.0 + 5.0, "only the first ad matches linkedin_q4");

    config.rules.push(config.rules[0].clone());
    assert!(Engine::new(config).expect_err("duplicate rule name").to_string().contains("rules[10].name"));
    let bad = ScoringConfig { half_life_days: 0.0, ..ScoringConfig::default() };
    assert!(Engine::new(bad).is_err());
}

fn opportunity(id: &str, opportunity_id: &str, stage: OpportunityStage, amount: f64, t: i64) -> EngagementEvent {
    let mut event = event(id, EventKind::Opportunity, t, None);
    event.opportunity = Some(Opportunity {
        opportunity_id: opportunity_id.into(),
        stage,
        stage_name: None,
        amount,
        currency: "USD".into(),
    });
    event
}

#[test]
fn opportunities_keep_their_latest_state_score_nothing_by_default_and_survive_the_changelog() {
    let engine = engine();
    let log = [
        visit("v1", "/pricing", T0, Some(("c1", "champion"))),
        opportunity("o1", "006A", OpportunityStage::Open, 10_000.0, T0 + DAY_MS),
        opportunity("o2", "006B", OpportunityStage::Open, 5_000.0, T0 + 2 * DAY_MS),
        opportunity("o3", "006A", OpportunityStage::ClosedWon, 12_000.0, T0 + 10 * DAY_MS),
        // A late change of 006A (before its state): only its creation time moves back.
        opportunity("o4", "006A", OpportunityStage::Open, 9_000.0, T0 - DAY_MS),
        opportunity("o3", "006A", OpportunityStage::ClosedLost, 0.0, T0 + 11 * DAY_MS),
    ];
    let (state, crossings) = run(&engine, Tier::Tier1, &log);
    assert!(crossings.is_empty(), "{crossings:?}");
    // Pricing +15 * 1.2 = 18 at T0, decayed over the 10 days to as-of: 18 * 2^(-10/14).
    assert_close(state.engagement, 18.0 * (-10.0f64 / 14.0).exp2(), "opportunities carry no points");
    assert_eq!(state.events_applied, 5, "the repeated event id o3 is a duplicate");
    assert_eq!(state.duplicates, 1);
    assert_eq!(state.first_applied_at(), Some(T0 - DAY_MS));
    let view = engine.view(ACCOUNT, &state, None);
    let a = &view.opportunities[0];
    assert_eq!(
        (a.opportunity_id.as_str(), a.stage, a.amount, a.created_at, a.updated_at),
        ("006A", OpportunityStage::ClosedWon, 12_000.0, T0 - DAY_MS, T0 + 10 * DAY_MS)
    );
    let b = &view.opportunities[1];
    assert_eq!((b.opportunity_id.as_str(), b.stage, b.amount), ("006B", OpportunityStage::Open, 5_000.0));
    assert_eq!(view.recent_events[0].detail, "006A closed_won 12000 USD");
    let counts = view.counts.iter().find(|c| c.kind == EventKind::Opportunity).expect("counted");
    assert_eq!((counts.last_7_days, counts.last_30_days), (1, 4), "(as_of - 7 days, as_of] holds o3 only");

    let restored = AccountScoreState::from_record(&state.to_record(ACCOUNT, &engine), &engine);
    assert_eq!(restored, state);
}

#[test]
fn a_rule_may_match_opportunities_and_the_bound_is_counted() {
    let mut config = ScoringConfig { max_opportunities: 1, ..ScoringConfig::default() };
    config.rules.insert(
        0,
        scorer::engine::RuleConfig {
            name: "opportunity".into(),
            points: 40.0,
            kind: Some(EventKind::Opportunity),
            email_action: None,
            url_patterns: vec![],
            channel: None,
            campaign: None,
            cap_per_contact_per_day: None,
        },
    );
    let engine = Engine::new(config).expect("valid");
    let mut state = AccountScoreState::default();
    engine.apply(ACCOUNT, &mut state, &opportunity("o1", "A", OpportunityStage::ClosedLost, 1.0, T0), Tier::Tier1);
    let applied =
        engine.apply(ACCOUNT, &mut state, &opportunity("o2", "B", OpportunityStage::Open, 1.0, T0), Tier::Tier1);
    match applied {
        Applied::Scored { points, trimmed, .. } => {
            assert_eq!(points, 40.0);
            assert_eq!(trimmed.opportunities, 1, "the closed one went");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(state.opportunities.iter().map(|o| o.opportunity_id.as_str()).collect::<Vec<_>>(), ["B"]);
    assert_close(state.engagement, 80.0, "two matches at the same time");
}

/// Names of the covered and missing personas of `state` at `at`.
fn covered_missing(
    engine: &Engine,
    state: &AccountScoreState,
    at: i64,
    committee: Option<&[String]>,
) -> (Vec<String>, Vec<String>, f64) {
    let coverage = engine.coverage(state, at, committee);
    (coverage.covered, coverage.missing, coverage.ratio)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

#[test]
fn coverage_counts_required_personas_of_contacts_engaged_in_thirty_days() {
    let engine = engine();
    // Tier 2 requires economic_buyer, champion, technical_evaluator (in that order).
    let log = [
        visit("a", "/", T0, Some(("c1", "economic_buyer"))),
        // An email open matches no rule: c2 is not engaged by it.
        email("b", EmailAction::Open, T0, Some(("c2", "champion"))),
        // Careers is a negative rule: c3 is not engaged by it.
        visit("c", "/careers", T0, Some(("c3", "technical_evaluator"))),
        visit("d", "/pricing", T0 + DAY_MS, Some(("c2", "champion"))),
    ];
    let (state, _) = run(&engine, Tier::Tier2, &log);
    let (covered, missing, ratio) = covered_missing(&engine, &state, T0 + DAY_MS, None);
    assert_eq!(covered, names(&["economic_buyer", "champion"]));
    assert_eq!(missing, names(&["technical_evaluator"]));
    assert_close(ratio, 2.0 / 3.0, "2 of 3");
    // The crossing-free view says the same at as-of.
    let view = engine.view(ACCOUNT, &state, None);
    assert_eq!(view.coverage.covered, covered);

    // 31 days after T0: c1 (T0) is out of (as_of - 30 d, as_of]; c2's T0 + 1 d sits exactly
    // on the excluded edge; c3 engages now as a technical evaluator.
    let mut state = state;
    engine.apply(
        ACCOUNT,
        &mut state,
        &visit("e", "/", T0 + 31 * DAY_MS, Some(("c3", "technical_evaluator"))),
        Tier::Tier2,
    );
    let (covered, missing, ratio) = covered_missing(&engine, &state, T0 + 31 * DAY_MS, None);
    assert_eq!(covered, names(&["technical_evaluator"]));
    assert_eq!(missing, names(&["economic_buyer", "champion"]));
    assert_close(ratio, 1.0 / 3.0, "1 of 3");
}

#[test]
fn a_contact_covers_the_persona_of_its_latest_engagement_and_the_tal_committee_overrides_the_tier() {
    let engine = engine();
    // c1 engages as a champion, then (later in event time) as an end user; an older event
    // applied afterwards does not take the persona back.
    let log = [
        visit("a", "/", T0, Some(("c1", "champion"))),
        visit("b", "/", T0 + 2 * DAY_MS, Some(("c1", "end_user"))),
        visit("c", "/", T0 + DAY_MS, Some(("c1", "champion"))),
    ];
    let (state, _) = run(&engine, Tier::Tier1, &log);
    // Tier 1: economic_buyer, champion, technical_evaluator, end_user.
    let (covered, missing, ratio) = covered_missing(&engine, &state, T0 + 2 * DAY_MS, None);
    assert_eq!(covered, names(&["end_user"]));
    assert_eq!(missing, names(&["economic_buyer", "champion", "technical_evaluator"]));
    assert_close(ratio, 0.25, "1 of 4");

    // The account's TAL committee replaces the tier's, order kept; crossings carry it.
    let committee = names(&["legal", "end_user"]);
    let membership = scorer::engine::Membership { tier: Tier::Tier1, committee: Some(&committee) };
    let mut state = AccountScoreState::default();
    let demo = event("d", EventKind::DemoRequest, T0, Some(("c9", "end_user")));
    let Applied::Scored { crossings, .. } = engine.apply(ACCOUNT, &mut state, &demo, membership) else {
        panic!("applied")
    };
    // 50 points at tier 1 (threshold 50) and a demo: a threshold and a hand-raiser crossing.
    assert_eq!(crossings.len(), 2);
    for crossing in &crossings {
        let coverage = crossing.coverage.as_ref().expect("coverage");
        assert_eq!(coverage.required, committee);
        assert_eq!(coverage.covered, names(&["end_user"]));
        assert_eq!(coverage.missing, names(&["legal"]));
        assert_close(coverage.ratio, 0.5, "1 of 2");
    }
}

/// Applies `log` with `tier`; returns the state and every journey transition as
/// (id, from, to, at).
fn journey(
    engine: &Engine,
    tier: Tier,
    log: &[EngagementEvent],
) -> (AccountScoreState, Vec<(String, &'static str, &'static str, i64)>) {
    let mut state = AccountScoreState::default();
    let mut transitions = Vec::new();
    for event in log {
        if let Applied::Scored { transition: Some(t), .. } = engine.apply(ACCOUNT, &mut state, event, tier) {
            assert_eq!(t.trigger_event_id, event.event_id);
            transitions.push((t.transition_id, t.from.as_str(), t.to.as_str(), t.at));
        }
    }
    (state, transitions)
}

#[test]
fn the_journey_moves_through_its_stages_evaluated_from_the_last_upwards() {
    let engine = engine();
    let demo = event("c", EventKind::DemoRequest, T0 + DAY_MS, Some(("c1", "unknown")));
    let log = [
        // 5 points, B = 1: an applied event makes the account aware.
        visit("a", "/", T0, Some(("c1", "unknown"))),
        // E = 20, B = 2, m = 1.25, S = 25 = 0.5 * 50 (tier 1): engaged.
        visit("b", "/pricing", T0, Some(("c2", "unknown"))),
        // A demo request: a hand-raiser in the last 30 days, mqa.
        demo,
        // An open opportunity: opportunity.
        opportunity("d", "o1", OpportunityStage::Open, 10_000.0, T0 + 2 * DAY_MS),
        // Lost: nothing open or won; the hand-raiser of T0 + 1 d still holds: back to mqa.
        opportunity("e", "o1", OpportunityStage::ClosedLost, 10_000.0, T0 + 3 * DAY_MS),
        // A repeat changes nothing.
        opportunity("e", "o1", OpportunityStage::ClosedLost, 10_000.0, T0 + 3 * DAY_MS),
        // Won: customer, whatever else holds.
        opportunity("f", "o2", OpportunityStage::ClosedWon, 25_000.0, T0 + 4 * DAY_MS),
        visit("g", "/", T0 + 5 * DAY_MS, Some(("c3", "unknown"))),
    ];
    let (state, transitions) = journey(&engine, Tier::Tier1, &log);
    let expected = [
        ("acc-1:journey:1", "unaware", "aware", T0),
        ("acc-1:journey:2", "aware", "engaged", T0),
        ("acc-1:journey:3", "engaged", "mqa", T0 + DAY_MS),
        ("acc-1:journey:4", "mqa", "opportunity", T0 + 2 * DAY_MS),
        ("acc-1:journey:5", "opportunity", "mqa", T0 + 3 * DAY_MS),
        ("acc-1:journey:6", "mqa", "customer", T0 + 4 * DAY_MS),
    ];
    let got: Vec<(&str, &str, &str, i64)> =
        transitions.iter().map(|(id, f, t, at)| (id.as_str(), *f, *t, *at)).collect();
    assert_eq!(got, expected);
    assert_eq!(state.stage, abm_schemas::JourneyStage::Customer);
    assert_eq!(state.stage_entered_at(), Some(T0 + 4 * DAY_MS));
    assert_eq!(state.journey_transitions, 6);
    // The first entry of each stage entered, and the sequences of its first and latest
    // transitions into it: mqa was entered by transitions 3 and 5.
    let entries: Vec<(&str, i64, i64, i64)> = state
        .stage_entries
        .iter()
        .map(|e| (e.stage.as_str(), e.first_entered_at, e.first_sequence, e.last_sequence))
        .collect();
    assert_eq!(
        entries,
        [
            ("aware", T0, 1, 1),
            ("engaged", T0, 2, 2),
            ("mqa", T0 + DAY_MS, 3, 5),
            ("opportunity", T0 + 2 * DAY_MS, 4, 4),
            ("customer", T0 + 4 * DAY_MS, 6, 6),
        ]
    );
    let view = engine.view(ACCOUNT, &state, None);
    assert_eq!((view.stage, view.stage_entered_at), (state.stage, state.stage_entered_at()));
}

#[test]
fn mqa_by_hand_raise_lasts_thirty_days_and_the_score_can_hold_it() {
    let engine = engine();
    // Tier 3 (threshold 100): a demo request alone (50 points) is mqa by its hand-raise.
    let log = [
        event("a", EventKind::DemoRequest, T0, Some(("c1", "unknown"))),
        // 30 days later the hand-raise is out of (as_of - 30 d, as_of]; E = 50 * 2^(-30/14)
        // + 5 = 16.4 < 50 = 0.5 * 100, B = 1: aware.
        visit("b", "/", T0 + 30 * DAY_MS, Some(("c1", "unknown"))),
    ];
    let (state, transitions) = journey(&engine, Tier::Tier3, &log);
    let got: Vec<(&str, &str)> = transitions.iter().map(|(_, f, t, _)| (*f, *t)).collect();
    assert_eq!(got, [("unaware", "mqa"), ("mqa", "aware")]);
    assert_eq!(state.stage_entered_at(), Some(T0 + 30 * DAY_MS));

    // Tier 1 (threshold 50): two demo requests 29 days apart, then a visit 20 days later:
    // S = (50 * 2^(-49/14) + 50 * 2^(-20/14) + 5) = 27.3 < 50 but the second hand-raise is
    // 20 days old: still mqa, no transition.
    let log = [
        event("a", EventKind::DemoRequest, T0, Some(("c1", "unknown"))),
        event("b", EventKind::DemoRequest, T0 + 29 * DAY_MS, Some(("c1", "unknown"))),
        visit("c", "/", T0 + 49 * DAY_MS, Some(("c1", "unknown"))),
    ];
    let (state, transitions) = journey(&engine, Tier::Tier1, &log);
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert_eq!(state.stage, abm_schemas::JourneyStage::Mqa);
    assert_eq!(state.stage_entered_at(), Some(T0));
}
