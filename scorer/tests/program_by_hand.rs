//! Program metrics for a small hand-written world, every figure computed by hand (in
//! comments) from the README's definitions ("Program metrics"). Default scoring config:
//! thresholds 50/75/100/150, pricing +15, web visit +5, demo +50, economic_buyer 1.5,
//! champion 1.2; committees tier 1 economic_buyer, champion, technical_evaluator, end_user;
//! tier 2 economic_buyer, champion, technical_evaluator; untiered economic_buyer, champion.

use abm_schemas::{
    Contact, CrossingKind, EngagementEvent, EventKind, JourneyStage, Opportunity, OpportunityStage, SalesAlert, Tier,
    WebVisit,
};
use scorer::engine::{AccountScoreState, DAY_MS, Engine, ScoringConfig};
use scorer::processor::{Tal, TalEntry};
use scorer::program::{Book, Report, record_of, report};

/// The time the program is evaluated at.
const AT: i64 = 1_800_000_000_000;

fn ago(days: i64) -> i64 {
    AT - days * DAY_MS
}

fn visit(id: &str, path: &str, t: i64, contact: &str, persona: &str) -> EngagementEvent {
    let mut event = EngagementEvent::new(id, EventKind::WebVisit, t, "test");
    event.contact =
        Some(Contact { contact_id: Some(contact.into()), persona: Some(persona.into()), ..Contact::default() });
    event.web_visit = Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
    event
}

fn demo(id: &str, t: i64, contact: &str, persona: &str) -> EngagementEvent {
    let mut event = visit(id, "/", t, contact, persona);
    event.kind = EventKind::DemoRequest;
    event.web_visit = None;
    event
}

fn deal(id: &str, opportunity: &str, stage: OpportunityStage, amount: f64, currency: &str, t: i64) -> EngagementEvent {
    let mut event = EngagementEvent::new(id, EventKind::Opportunity, t, "test");
    event.opportunity = Some(Opportunity {
        opportunity_id: opportunity.into(),
        stage,
        stage_name: None,
        amount,
        currency: currency.into(),
    });
    event
}

fn alert(id: &str, account: &str, kind: CrossingKind, at: i64) -> SalesAlert {
    abm_testkit::program::sales_alert(id, account, kind, at)
}

/// The world: a (tier 1), b and c (tier 2) on the TAL, x not on it.
fn world() -> (Engine, Tal, Book) {
    let engine = Engine::new(ScoringConfig::default()).expect("default config");
    let tal = Tal::default();
    tal.insert("a".into(), TalEntry { tier: Tier::Tier1, committee: None, name: "".into(), owner: "".into() });
    tal.insert("b".into(), TalEntry { tier: Tier::Tier2, committee: None, name: "".into(), owner: "".into() });
    tal.insert("c".into(), TalEntry { tier: Tier::Tier2, committee: None, name: "".into(), owner: "".into() });
    let book = Book::default();
    let apply = |account: &str, tier: Tier, log: &[EngagementEvent]| {
        let mut state = AccountScoreState::default();
        for event in log {
            engine.apply(account, &mut state, event, tier);
        }
        book.record(record_of(account, &state));
        state
    };
    // a: S = 22.5 (pricing by an economic buyer, B = 1) < 25: aware (1); a demo request: mqa
    // (2, no engaged on the way); an open deal: opportunity (3); a technical evaluator's visit
    // 2 days ago changes no stage.
    let a = apply(
        "a",
        Tier::Tier1,
        &[
            visit("a1", "/pricing", ago(60), "a-c1", "economic_buyer"),
            demo("a2", ago(50), "a-c2", "champion"),
            deal("a3", "o1", OpportunityStage::Open, 20_000.0, "USD", ago(45)),
            visit("a4", "/", ago(2), "a-c3", "technical_evaluator"),
        ],
    );
    assert_eq!(a.stage, JourneyStage::Opportunity);
    // b: aware (1), B = 2: engaged (2), open deal: opportunity (3), won: customer (4); a new
    // open deal in EUR keeps it a customer.
    let b = apply(
        "b",
        Tier::Tier2,
        &[
            visit("b1", "/", ago(20), "b-c1", "champion"),
            visit("b2", "/pricing", ago(20), "b-c2", "unknown"),
            deal("b3", "o2", OpportunityStage::Open, 10_000.0, "USD", ago(15)),
            deal("b4", "o2", OpportunityStage::ClosedWon, 10_000.0, "USD", ago(10)),
            deal("b5", "o3", OpportunityStage::Open, 5_000.0, "EUR", ago(8)),
        ],
    );
    assert_eq!(b.stage, JourneyStage::Customer);
    // x (not on the TAL, untiered): aware (1); a lost deal changes no stage.
    apply(
        "x",
        Tier::Untiered,
        &[
            visit("x1", "/", ago(1), "x-c1", "unknown"),
            deal("x2", "o4", OpportunityStage::ClosedLost, 7_000.0, "USD", ago(1)),
        ],
    );
    book.alert(&alert("a:hand_raiser:1", "a", CrossingKind::HandRaiser, ago(50)));
    book.alert(&alert("b:threshold:1", "b", CrossingKind::Threshold, ago(100)));
    // Read twice (a reader starting again): counted once.
    book.alert(&alert("b:threshold:1", "b", CrossingKind::Threshold, ago(100)));
    (engine, tal, book)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= 1e-12)
}

#[test]
fn every_figure_of_a_small_world_as_computed_by_hand() {
    let (engine, tal, book) = world();
    let Report { all, tal: on_tal, non_tal, tiers, .. } = report(&book, &tal, &engine, AT, None);

    // 4 accounts: a, b, c on the TAL, x not. Engaged (a contact engaged in (AT - 30 d, AT]):
    // a (2 days ago), b (20), x (1); c has nothing. Engagement rate: TAL accounts only, 2 / 3.
    assert_eq!((all.accounts, all.tal_accounts, all.engaged, all.engaged_tal_accounts), (4, 3, 3, 2));
    assert!(close(all.engagement_rate, 2.0 / 3.0), "{:?}", all.engagement_rate);
    // Coverage at AT: a 1 of 4 (technical_evaluator), b 1 of 3 (champion), c 0, x 0 of 2.
    assert!(close(all.mean_coverage, (0.25 + 1.0 / 3.0) / 4.0), "{:?}", all.mean_coverage);
    let stages: Vec<(JourneyStage, u64)> = all.accounts_by_stage.iter().map(|(s, n)| (*s, *n)).collect();
    assert_eq!(
        stages,
        [
            (JourneyStage::Unaware, 1),
            (JourneyStage::Aware, 1),
            (JourneyStage::Engaged, 0),
            (JourneyStage::Mqa, 0),
            (JourneyStage::Opportunity, 1),
            (JourneyStage::Customer, 1),
        ]
    );
    // Conversion: aware entered by a, b, x; a and b went further (2/3); aware → engaged: b
    // only, the same day (0 days). engaged: b, converted. mqa: a, converted; mqa →
    // opportunity: a, 5 days. opportunity: a and b, b converted (1/2); → customer: b, 5 days.
    let conversion: Vec<(JourneyStage, u64, u64, u64, Option<f64>)> = all
        .conversion
        .iter()
        .map(|c| (c.stage, c.entered, c.converted, c.next_accounts, c.median_days_to_next))
        .collect();
    assert_eq!(
        conversion,
        [
            (JourneyStage::Aware, 3, 2, 1, Some(0.0)),
            (JourneyStage::Engaged, 1, 1, 0, None),
            (JourneyStage::Mqa, 1, 1, 1, Some(5.0)),
            (JourneyStage::Opportunity, 2, 1, 1, Some(5.0)),
        ]
    );
    assert!(close(all.conversion[0].rate, 2.0 / 3.0));
    assert_eq!(all.conversion[0].next, JourneyStage::Engaged);
    // Deals: open o1 (USD 20,000) and o3 (EUR 5,000), won o2 (USD 10,000), lost o4: win rate
    // 1 / 2. b's first won deal 10 days after its first event (20 days ago).
    let deals = &all.opportunities;
    assert_eq!((deals.open, deals.won, deals.lost, deals.won_accounts), (2, 1, 1, 1));
    assert_eq!(deals.win_rate, Some(0.5));
    assert_eq!(deals.median_days_to_won, Some(10.0));
    let usd = &deals.by_currency["USD"];
    assert_eq!(
        (usd.open_pipeline, usd.won_revenue, usd.won, usd.mean_won_deal),
        (20_000.0, 10_000.0, 1, Some(10_000.0))
    );
    let eur = &deals.by_currency["EUR"];
    assert_eq!((eur.open_pipeline, eur.won_revenue, eur.won, eur.mean_won_deal), (5_000.0, 0.0, 0, None));
    // Alerts: a's hand-raiser 50 days ago, b's threshold 100 days ago (read twice, one alert).
    // 30 days: both matured; a's followed (o1 opened 5 days later), b's not (o2 85 days
    // later). 90 days: only b's matured (AT - 100 d + 90 d ≤ AT), followed (85 ≤ 90).
    // Days to the first opportunity: 5 and 85, median 45.
    let alerts = &all.alerts;
    assert_eq!(alerts.alerts, 2);
    let windows: Vec<(i64, u64, u64, Option<f64>)> =
        alerts.windows.iter().map(|w| (w.days, w.matured, w.followed, w.rate)).collect();
    assert_eq!(windows, [(30, 2, 1, Some(0.5)), (90, 1, 1, Some(1.0))]);
    assert_eq!((alerts.followed, alerts.median_days_to_opportunity), (2, Some(45.0)));

    // TAL: a, b, c. Non-TAL: x, engaged, no TAL account to make a rate of; its deal lost.
    assert_eq!((on_tal.accounts, on_tal.engaged, on_tal.opportunities.won, on_tal.opportunities.lost), (3, 2, 1, 0));
    assert!(close(on_tal.mean_coverage, (0.25 + 1.0 / 3.0) / 3.0));
    assert_eq!((non_tal.accounts, non_tal.tal_accounts, non_tal.engaged), (1, 0, 1));
    assert_eq!((non_tal.engagement_rate, non_tal.opportunities.win_rate), (None, Some(0.0)));
    // Tiers: tier 1 = a, tier 2 = b and c, tier 3 empty, untiered = x.
    let counts: Vec<(Tier, u64)> = tiers.iter().map(|(t, f)| (*t, f.accounts)).collect();
    assert_eq!(counts, [(Tier::Untiered, 1), (Tier::Tier1, 1), (Tier::Tier2, 2), (Tier::Tier3, 0)]);
    assert!(close(tiers[&Tier::Tier2].engagement_rate, 0.5));
    assert!(close(tiers[&Tier::Tier2].mean_coverage, 1.0 / 6.0));
    assert_eq!((tiers[&Tier::Tier3].mean_coverage, tiers[&Tier::Tier3].engagement_rate), (None, None));
}

#[test]
fn at_moves_the_windows_and_tier_narrows_every_segment() {
    let (engine, tal, book) = world();
    // 25 days earlier: a state keeps the contacts engaged in the 30 days before its own as-of,
    // so a keeps only its contact of 2 days ago (after this at), b's and x's are after it too:
    // nobody engaged. a's alert was 25 days old: its 30-day window had not ended. Stages and
    // deals are the facts so far.
    let earlier = report(&book, &tal, &engine, ago(25), None);
    assert_eq!((earlier.all.engaged, earlier.all.mean_coverage), (0, Some(0.0)));
    assert_eq!(earlier.all.alerts.windows[0].matured, 1);
    assert_eq!(earlier.all.accounts_by_stage[&JourneyStage::Customer], 1);

    let tier_2 = report(&book, &tal, &engine, AT, Some(Tier::Tier2));
    assert_eq!((tier_2.all.accounts, tier_2.tal.accounts, tier_2.non_tal.accounts), (2, 2, 0));
    assert_eq!(tier_2.tiers.keys().copied().collect::<Vec<_>>(), [Tier::Tier2]);
    assert_eq!(tier_2.all.alerts.alerts, 1);
    assert_eq!(tier_2.all, report(&book, &tal, &engine, AT, None).tiers[&Tier::Tier2]);
}

#[test]
fn a_stage_counts_as_converted_when_a_later_one_is_entered_after_it_even_if_entered_before_too() {
    let engine = Engine::new(ScoringConfig::default()).expect("default config");
    let (tal, book) = (Tal::default(), Book::default());
    tal.insert("d".into(), TalEntry { tier: Tier::Tier3, committee: None, name: "".into(), owner: "".into() });
    let mut state = AccountScoreState::default();
    // Tier 3 (threshold 100). A demo request: mqa by its hand-raise (1). 31 days later the
    // hand-raise has expired and E = 50 * 2^(-31/14) + 5 = 15.7 < 50, B = 1: aware (2). A second
    // contact's pricing visit: B = 2, engaged (3). Another demo request: mqa again (4).
    for event in [
        demo("d1", ago(40), "d-c1", "unknown"),
        visit("d2", "/", ago(9), "d-c1", "unknown"),
        visit("d3", "/pricing", ago(9), "d-c2", "unknown"),
        demo("d4", ago(8), "d-c1", "unknown"),
    ] {
        engine.apply("d", &mut state, &event, Tier::Tier3);
    }
    assert_eq!(state.journey_transitions, 4);
    book.record(record_of("d", &state));
    let figures = report(&book, &tal, &engine, AT, None).all;
    let conversion: Vec<(JourneyStage, u64, u64, Option<f64>)> =
        figures.conversion.iter().map(|c| (c.stage, c.entered, c.converted, c.median_days_to_next)).collect();
    // aware (2) → mqa (4) later: converted; aware → engaged the same day. engaged (3) → mqa
    // (4): converted, though mqa was first entered before (1); engaged → mqa: mqa's first entry
    // (1) was not after engaged's (3), so no days. mqa: nothing later.
    assert_eq!(
        conversion,
        [
            (JourneyStage::Aware, 1, 1, Some(0.0)),
            (JourneyStage::Engaged, 1, 1, None),
            (JourneyStage::Mqa, 1, 0, None),
            (JourneyStage::Opportunity, 0, 0, None),
        ]
    );
}

#[test]
fn an_alert_counts_before_its_account_s_facts_are_read() {
    let engine = Engine::new(ScoringConfig::default()).expect("default config");
    let (tal, book) = (Tal::default(), Book::default());
    tal.insert("e".into(), TalEntry { tier: Tier::Tier1, committee: None, name: "".into(), owner: "".into() });
    // abm.sales-alerts read before abm.account-program has e's record; x is not on the TAL
    // and has no record: not an account of the program, its alert is not counted.
    book.alert(&alert("e:threshold:1", "e", CrossingKind::Threshold, ago(40)));
    book.alert(&alert("x:threshold:1", "x", CrossingKind::Threshold, ago(40)));
    let all = report(&book, &tal, &engine, AT, None).all;
    assert_eq!((all.accounts, all.accounts_by_stage[&JourneyStage::Unaware]), (1, 1));
    assert_eq!(all.alerts.alerts, 1);
    let windows: Vec<(i64, u64, u64)> = all.alerts.windows.iter().map(|w| (w.days, w.matured, w.followed)).collect();
    assert_eq!(windows, [(30, 1, 0), (90, 0, 0)]);
    // An at far out of range cannot overflow the windows.
    let far = report(&book, &tal, &engine, i64::MAX, None).all;
    assert_eq!(far.alerts.windows[1].matured, 1);
}
