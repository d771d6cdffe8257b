//! The scorer service against the real broker: a hand-written log, the query API, the output
//! topics, and exactly-once under repeated kill -9.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use abm_schemas::{
    AccountScore, AccountState, Contact, CrossingKind, DemoRequest, EngagementEvent, EventKind, JourneyStage,
    JourneyTransition, OpportunityStage, ScoreCrossing, Tier, WebVisit,
};
use abm_sim::Rng;
use abm_testkit::{ServiceProcess, http_get, program, wait_for_status};
use scorer::engine::{AccountScoreState, Applied, DAY_MS, Engine, ScoringConfig};
use support::*;

const T0: i64 = 1_700_000_000_000;
const SCORER: &str = env!("CARGO_BIN_EXE_scorer");

fn visit(id: &str, account: &str, path: &str, t: i64, contact: &str, persona: &str) -> EngagementEvent {
    let mut event = EngagementEvent::new(id, EventKind::WebVisit, t, "test");
    event.account_id = Some(account.into());
    event.contact =
        Some(Contact { contact_id: Some(contact.into()), persona: Some(persona.into()), ..Contact::default() });
    event.web_visit = Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
    event
}

fn start(env: &Env) -> ServiceProcess {
    let vars = env.vars();
    let process = ServiceProcess::start(Path::new(SCORER), &[], &vars);
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(60), "scorer did not get ready");
    process
}

/// Waits until the scorer has applied or absorbed `expected` events of `account`.
fn wait_for_account(env: &Env, account: &str, expected: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(json) = account_json(env.port, account) {
            let seen = json["events_applied"].as_u64().unwrap_or(0) + json["duplicates"].as_u64().unwrap_or(0);
            if seen >= expected {
                return json;
            }
        }
        assert!(Instant::now() < deadline, "{account}: fewer than {expected} events applied in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hand_written_log_scores_as_computed_by_hand_through_kafka() {
    let env = Env::new("scorer-hand");
    env.create_topics();
    let producer = producer();
    send(&producer, &env.topic(TopicRole::Accounts), "acc-1", &account("acc-1", Tier::Tier1));
    // Tier 1 (threshold 50), an economic buyer (x1.5), as in engine_by_hand's threshold test.
    let buyer = ("cfo", "economic_buyer");
    let log = vec![
        visit("p1", "acc-1", "/pricing", T0, buyer.0, buyer.1), // 22.5
        visit("p2", "acc-1", "/pricing", T0, buyer.0, buyer.1), // 45
        visit("v1", "acc-1", "/", T0, buyer.0, buyer.1),        // 52.5: threshold 1
        visit("v2", "acc-1", "/", T0, buyer.0, buyer.1),        // 60
        visit("v2", "acc-1", "/", T0, buyer.0, buyer.1),        // duplicate id: ignored
        visit("v3", "acc-1", "/", T0 + 14 * DAY_MS, buyer.0, buyer.1), // 37.5: not below 37.5
        visit("v4", "acc-1", "/", T0 + 28 * DAY_MS, buyer.0, buyer.1), // 26.25: re-armed
        visit("p3", "acc-1", "/pricing", T0 + 28 * DAY_MS, buyer.0, buyer.1), // 48.75
        visit("v5", "acc-1", "/", T0 + 28 * DAY_MS, buyer.0, buyer.1), // 56.25: threshold 2
    ];
    let mut demo = EngagementEvent::new("d1", EventKind::DemoRequest, T0 + 28 * DAY_MS, "test");
    demo.account_id = Some("acc-1".into());
    demo.demo_request = Some(DemoRequest { form: "contact-sales".into() }); // +50: 106.25, hand-raiser 1
    let mut stray = visit("x", "acc-2", "/", T0, "someone", "unknown");
    stray.account_id = Some("acc-2".into()); // not on the TAL: untiered
    for event in log.iter().chain([&demo, &stray]) {
        send(&producer, &env.topic(TopicRole::Engagement), event.account_id.as_deref().unwrap_or(""), event);
    }
    flush(&producer);

    let mut scorer = start(&env);
    let json = wait_for_account(&env, "acc-1", 10);
    assert!(close(json["engagement"].as_f64().expect("E"), 106.25), "{json}");
    assert!(close(json["score"].as_f64().expect("S"), 106.25), "B = 1, m = 1: {json}");
    assert_eq!(json["breadth"], 1);
    assert_eq!(json["tier"], "tier_1");
    assert_eq!(json["threshold"], 50.0);
    assert_eq!(json["armed"], false);
    assert_eq!(json["events_applied"], 9);
    assert_eq!(json["duplicates"], 1);
    assert_eq!(json["as_of"], T0 + 28 * DAY_MS);
    let decayed = json["now"]["engagement"].as_f64().expect("decayed E");
    assert!(decayed < 106.25 && decayed > 0.0, "decayed to now: {json}");
    let pricing = json["rule_points"]
        .as_array()
        .expect("breakdown")
        .iter()
        .find(|r| r["rule"] == "pricing_page")
        .expect("pricing");
    // 45 decayed by two half-lives, plus 22.5: 33.75.
    assert!(close(pricing["points"].as_f64().expect("points"), 33.75), "{json}");
    let untiered = wait_for_account(&env, "acc-2", 1);
    assert_eq!(untiered["tier"], "untiered");
    assert_eq!(untiered["threshold"], 150.0);

    let (status, body) = http_get(env.port, "/v1/accounts/nobody").expect("answers");
    assert_eq!(status, 404);
    assert!(body.contains("\"error\"") && body.contains("nobody"), "{body}");
    // The leaderboard follows the written batches: acc-1 is on it within a commit interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(env.port, "/v1/accounts?top=1&tier=1").expect("answers");
        assert_eq!(status, 200);
        if body.contains("acc-1") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("acc-1") && !body.contains("acc-2"), "{body}");
    let (status, _) = http_get(env.port, "/v1/accounts?top=0").expect("answers");
    assert_eq!(status, 400);
    let (status, _) = http_get(env.port, "/v1/accounts?tier=gold").expect("answers");
    assert_eq!(status, 400);

    // Stop cleanly: the last transaction is committed, the outputs are there.
    scorer.signal("TERM");
    assert!(scorer.wait(Duration::from_secs(30)).success(), "{}", scorer.stderr());
    let crossings: Vec<String> = read_all::<ScoreCrossing>(&env.topic(TopicRole::ScoreCrossings))
        .into_iter()
        .map(|(_, c)| c.crossing_id)
        .collect();
    assert_eq!(crossings, vec!["acc-1:threshold:1", "acc-1:threshold:2", "acc-1:hand_raiser:1"]);
    let crossing = read_all::<ScoreCrossing>(&env.topic(TopicRole::ScoreCrossings)).pop().expect("hand-raiser").1;
    assert_eq!(crossing.kind, CrossingKind::HandRaiser);
    assert_eq!(crossing.recent_events[0].event_id, "d1");
    assert_eq!(crossing.top_rules[0].rule, "demo_request");
    let scores = read_all::<AccountScore>(&env.topic(TopicRole::AccountScores));
    let last = scores.iter().rev().find(|(key, _)| key == "acc-1").expect("a score for acc-1").1.clone();
    assert!(close(last.score, 106.25));
    let states = read_all::<AccountState>(&env.topic(TopicRole::ScorerState));
    assert!(states.iter().any(|(key, state)| key == "acc-1" && state.events_applied == 9));

    // A restart restores the state from the changelog: nothing is re-applied or lost.
    let _again = start(&env);
    let json = wait_for_account(&env, "acc-1", 10);
    assert!(close(json["engagement"].as_f64().expect("E"), 106.25), "{json}");
    assert_eq!(json["events_applied"], 9);
    // The published score says what the API's explanation says at the same as-of.
    assert_eq!(json["as_of"], last.as_of, "{json}");
    assert!(close(json["score"].as_f64().expect("S"), last.score), "{json}");
    assert!(close(json["multiplier"].as_f64().expect("m"), last.multiplier), "{json}");
    assert_eq!(json["breadth"], last.breadth, "{json}");
    assert_eq!(json["armed"], last.armed, "{json}");
    assert!(close(json["threshold"].as_f64().expect("T"), last.threshold), "{json}");
    let explained: Vec<&str> =
        json["rule_points"].as_array().expect("rules").iter().filter_map(|r| r["rule"].as_str()).collect();
    let published: Vec<&str> = last.top_rules.iter().map(|r| r.rule.as_str()).collect();
    assert!(!published.is_empty() && explained.starts_with(&published), "{published:?} vs {explained:?}");
}

fn stream(count: usize, accounts: u64, seed: u64) -> Vec<EngagementEvent> {
    let mut rng = Rng::new(seed);
    let paths = ["/", "/pricing", "/careers", "/docs"];
    (0..count)
        .map(|n| {
            let account = format!("acc-{}", rng.below(accounts));
            // Some retries: the same event id again.
            let id = if n > 10 && rng.below(20) == 0 {
                format!("e{}", n - 1 - rng.below(10) as usize)
            } else {
                format!("e{n}")
            };
            let t = T0 + (n as i64) * 60_000 + rng.below(3_600_000) as i64;
            let contact = format!("{account}-c{}", rng.below(5));
            let roll = rng.below(80);
            if roll == 2 {
                // A CRM change: opportunities open, win and lose, so journeys reach every stage.
                let mut change = EngagementEvent::new(id, EventKind::Opportunity, t, "test");
                change.opportunity = Some(abm_schemas::Opportunity {
                    opportunity_id: format!("{account}-o{}", rng.below(2)),
                    stage: [OpportunityStage::Open, OpportunityStage::ClosedWon, OpportunityStage::ClosedLost]
                        [rng.below(3) as usize],
                    stage_name: None,
                    amount: 1_000.0 * rng.below(50) as f64,
                    currency: "EUR".into(),
                });
                change.account_id = Some(account);
                change
            } else if roll < 2 {
                let mut demo = EngagementEvent::new(id, EventKind::DemoRequest, t, "test");
                demo.account_id = Some(account);
                demo.demo_request = Some(DemoRequest { form: "f".into() });
                demo
            } else {
                let path = paths[rng.below(4) as usize];
                visit(
                    &id,
                    &account,
                    path,
                    t,
                    &contact,
                    ["economic_buyer", "champion", "unknown"][rng.below(3) as usize],
                )
            }
        })
        .collect()
}

#[test]
fn kill_minus_nine_at_random_points_loses_nothing_and_duplicates_no_crossing() {
    let env = Env::new("scorer-eos");
    env.create_topics();
    let accounts = 40;
    let tiers: BTreeMap<String, Tier> = (0..accounts)
        .map(|i| (format!("acc-{i}"), [Tier::Tier1, Tier::Tier2, Tier::Tier3][(i % 3) as usize]))
        .collect();
    let tal = producer();
    for (id, tier) in &tiers {
        send(&tal, &env.topic(TopicRole::Accounts), id, &account(id, *tier));
    }
    flush(&tal);
    let events = stream(12_000, accounts, 7);

    // What an uninterrupted run computes: each account's events in partition (= send) order.
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let mut expected_states = BTreeMap::new();
    let mut expected_crossings = BTreeSet::new();
    let mut expected_transitions = BTreeMap::new();
    for (account, log) in by_account(&events) {
        let mut state = AccountScoreState::default();
        for event in &log {
            if let Applied::Scored { crossings, transition, .. } =
                engine.apply(&account, &mut state, event, tiers[&account])
            {
                expected_crossings.extend(crossings.into_iter().map(|c| c.crossing_id));
                if let Some(t) = transition {
                    expected_transitions.insert(t.transition_id.clone(), t);
                }
            }
        }
        expected_states.insert(account, (state, log.len() as u64));
    }
    assert!(expected_crossings.len() > 20, "the stream should cross thresholds: {}", expected_crossings.len());

    // The stream flows while the scorer is killed with SIGKILL at random points.
    let topic = env.topic(TopicRole::Engagement);
    let feeder = {
        let events = events.clone();
        std::thread::spawn(move || {
            let feed = support::producer();
            for chunk in events.chunks(500) {
                for event in chunk {
                    send(&feed, &topic, event.account_id.as_deref().unwrap_or(""), event);
                }
                flush(&feed);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let mut rng = Rng::new(11);
    for round in 0..5 {
        let scorer = start(&env);
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        scorer.signal("KILL");
        drop(scorer);
        eprintln!("killed the scorer (round {round})");
    }
    feeder.join().expect("feeder");
    let _scorer = start(&env);

    for (account, (state, count)) in &expected_states {
        let json = wait_for_account(&env, account, *count);
        let engagement = json["engagement"].as_f64().expect("E");
        assert!(close(engagement, state.engagement), "{account}: E {engagement} vs {}", state.engagement);
        assert!(close(json["score"].as_f64().expect("S"), engine.score(state)), "{account}: {json}");
        assert_eq!(json["events_applied"], state.events_applied, "{account}");
        assert_eq!(json["duplicates"], state.duplicates, "{account}");
        assert_eq!(json["armed"], state.armed, "{account}");
    }
    // Let the last transaction commit, then read the crossings as SDR tooling would.
    std::thread::sleep(Duration::from_secs(2));
    let ids: Vec<String> = read_all::<ScoreCrossing>(&env.topic(TopicRole::ScoreCrossings))
        .into_iter()
        .map(|(_, c)| c.crossing_id)
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a crossing id was published twice to read_committed readers");
    assert_eq!(unique, expected_crossings, "crossing ids differ from an uninterrupted run (gaps or extras)");

    // Journey transitions likewise: each exactly once, equal to the uninterrupted run's.
    let stages: BTreeSet<JourneyStage> = expected_transitions.values().map(|t| t.to).collect();
    assert!(stages.len() >= 5, "the stream should reach most stages: {stages:?}");
    let transitions = read_all::<JourneyTransition>(&env.topic(TopicRole::Journey));
    let by_id: BTreeMap<String, JourneyTransition> =
        transitions.iter().map(|(_, t)| (t.transition_id.clone(), t.clone())).collect();
    assert_eq!(by_id.len(), transitions.len(), "a transition id was published twice to read_committed readers");
    assert_eq!(by_id, expected_transitions, "transitions differ from an uninterrupted run");
}

#[test]
fn two_instances_split_the_partitions_and_the_survivor_carries_on_with_the_same_results() {
    let env = Env::new("scorer-scale");
    env.create_topics();
    let accounts = 30;
    let tiers: BTreeMap<String, Tier> = (0..accounts).map(|i| (format!("acc-{i}"), Tier::Tier2)).collect();
    let tal = producer();
    for (id, tier) in &tiers {
        send(&tal, &env.topic(TopicRole::Accounts), id, &account(id, *tier));
    }
    flush(&tal);
    let events = stream(6_000, accounts, 21);
    let (first, second) = events.split_at(3_000);

    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let mut expected = BTreeMap::new();
    for (account, log) in by_account(&events) {
        let mut state = AccountScoreState::default();
        for event in &log {
            engine.apply(&account, &mut state, event, tiers[&account]);
        }
        expected.insert(account, (state, log.len() as u64));
    }

    // Instance A, then instance B joins the group: the partitions are split between them.
    let mut env_b = env.clone();
    env_b.port = abm_testkit::free_port();
    let with_instance = |env: &Env, name: &str| {
        let mut vars = env.instance_vars(name);
        // Detect the killed member after 6 s (the broker's minimum) instead of librdkafka's 45 s.
        vars.push(("ABM_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS", "6000".into()));
        vars.push(("ABM_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS", "1000".into()));
        vars
    };
    let a = ServiceProcess::start(Path::new(SCORER), &[], &with_instance(&env, "a"));
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(60), "A ready");
    let b = ServiceProcess::start(Path::new(SCORER), &[], &with_instance(&env_b, "b"));
    wait_for_status(env_b.port, "/readyz", 200, Duration::from_secs(60), "B ready");
    let feed = producer();
    for event in first {
        send(&feed, &env.topic(TopicRole::Engagement), event.account_id.as_deref().unwrap_or(""), event);
    }
    flush(&feed);
    // Both instances end up owning accounts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let gauge = |port: u16| -> i64 {
        let body = http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default();
        body.lines()
            .find(|line| line.starts_with("abm_scorer_accounts "))
            .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0, |v| v as i64)
    };
    while gauge(env.port) == 0 || gauge(env_b.port) == 0 {
        assert!(
            Instant::now() < deadline,
            "the partitions were not split: A {} B {}",
            gauge(env.port),
            gauge(env_b.port)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A dies; B restores A's accounts from the changelog and takes the rest of the stream.
    a.signal("KILL");
    drop(a);
    for event in second {
        send(&feed, &env.topic(TopicRole::Engagement), event.account_id.as_deref().unwrap_or(""), event);
    }
    flush(&feed);
    for (account, (state, count)) in &expected {
        let json = wait_for_account(&env_b, account, *count);
        assert!(close(json["engagement"].as_f64().expect("E"), state.engagement), "{account}: {json}");
        assert_eq!(json["events_applied"], state.events_applied, "{account}");
        assert_eq!(json["duplicates"], state.duplicates, "{account}");
    }
    drop(b);
}

/// The query API returns personal data (contacts' emails and titles): it answers only with a
/// token of `http.api_tokens`; `/metrics`, `/healthz` and `/readyz` stay open unless
/// `http.protect_ops`; with no token configured the API answers 401 to everyone.
#[test]
fn the_query_api_needs_a_token_and_the_probes_do_not() {
    let get = |port: u16, path: &str, token: Option<&str>| {
        let headers: Vec<(&str, String)> =
            token.map(|t| vec![("Authorization", format!("Bearer {t}"))]).unwrap_or_default();
        let (status, headers, body) = abm_testkit::http_request(port, "GET", path, b"", &headers);
        (status, headers.get("www-authenticate").cloned(), body)
    };
    for (protect_ops, tokens) in [(false, true), (true, true), (false, false)] {
        let env = Env::new("api-auth");
        env.create_topics();
        let mut vars = env.vars();
        if tokens {
            vars.push(("ABM_HTTP__API_TOKENS__DASHBOARD", "dash-token".into()));
        } else {
            vars.push(("ABM_HTTP__API_OPEN", "false".into()));
        }
        vars.push(("ABM_HTTP__PROTECT_OPS", protect_ops.to_string()));
        let scorer = ServiceProcess::start(Path::new(SCORER), &[], &vars);
        let token = if tokens { Some("dash-token") } else { None };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(env.port, "/readyz", token.filter(|_| protect_ops)).0 != 200 {
            assert!(Instant::now() < deadline, "not ready\n{}", scorer.stderr());
            std::thread::sleep(Duration::from_millis(200));
        }
        let (status, challenge, body) = get(env.port, "/v1/accounts?top=5", None);
        assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")), "{body}");
        let (status, _, _) = get(env.port, "/v1/accounts/acme", Some("not-the-token"));
        assert_eq!(status, 401);
        if tokens {
            let (status, _, body) = get(env.port, "/v1/accounts?top=5", Some("dash-token"));
            assert_eq!(status, 200, "{body}");
            let (status, _, _) = get(env.port, "/v1/accounts/nobody", Some("dash-token"));
            assert_eq!(status, 404, "authorised, and unknown");
        } else {
            let (_, _, body) = get(env.port, "/v1/accounts?top=5", None);
            assert!(body.contains("http.api_tokens"), "says what to configure: {body}");
        }
        let (status, _, _) = get(env.port, "/metrics", None);
        assert_eq!(status, if protect_ops { 401 } else { 200 }, "protect_ops = {protect_ops}");
        let (status, _, _) = get(env.port, "/healthz", None);
        assert_eq!(status, if protect_ops { 401 } else { 200 });
    }
}

#[test]
fn two_instances_answer_the_program_as_one_and_as_recomputed_from_scratch() {
    let env = Env::new("scorer-program");
    env.create_topics();
    // acc-0..acc-19 on the TAL (tiers 1, 2, 3 in turn; acc-0 with a committee of its own),
    // acc-20..acc-23 not on it.
    let accounts = 24;
    let tal_tier = |i: u64| [Tier::Tier1, Tier::Tier2, Tier::Tier3][(i % 3) as usize];
    let tal = producer();
    for i in 0..20 {
        let mut record = account(&format!("acc-{i}"), tal_tier(i));
        if i == 0 {
            record.committee = Some(vec!["champion".into(), "legal".into()]);
        }
        send(&tal, &env.topic(TopicRole::Accounts), &record.account_id.clone(), &record);
    }
    flush(&tal);
    let events = stream(3_000, accounts, 33);
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let committees = &engine.config().committee;
    let mut truths: BTreeMap<String, program::Truth> = BTreeMap::new();
    for (account, log) in by_account(&events) {
        let index: u64 = account.trim_start_matches("acc-").parse().expect("acc-N");
        let on_tal = index < 20;
        let tier = if on_tal { tal_tier(index) } else { Tier::Untiered };
        let mut state = AccountScoreState::default();
        let mut transitions = Vec::new();
        for event in &log {
            if let Applied::Scored { transition: Some(t), .. } = engine.apply(&account, &mut state, event, tier) {
                transitions.push((t.to, t.at));
            }
        }
        let committee =
            if index == 0 { vec!["champion".into(), "legal".into()] } else { committees.for_tier(tier).to_vec() };
        let record = state.to_record(&account, &engine);
        truths.insert(
            account,
            program::Truth {
                tier,
                on_tal,
                committee,
                stage: state.stage,
                transitions,
                contacts: record.contacts.iter().map(|c| (c.persona.clone(), c.last_engaged_at)).collect(),
                deals: record.opportunities.clone(),
                first_applied_at: record.first_applied_at,
                alerts: Vec::new(),
            },
        );
    }
    for i in 0..20 {
        let id = format!("acc-{i}");
        truths
            .entry(id)
            .or_insert_with(|| program::Truth::unaware(tal_tier(i), committees.for_tier(tal_tier(i)).to_vec()));
    }
    // Alerts, as the alerter would publish them: one per account for 12 accounts, an hour
    // apart from T0 (some before their account's first deal, some after).
    let alerts = producer();
    for i in 0..12u64 {
        let id = format!("acc-{}", i * 2);
        let at = T0 + i as i64 * 3_600_000;
        let alert = program::sales_alert(&format!("{id}:threshold:1"), &id, CrossingKind::Threshold, at);
        send(&alerts, &env.topic(TopicRole::SalesAlerts), &id, &alert);
        truths.get_mut(&id).expect("an account of the stream").alerts.push(at);
    }
    flush(&alerts);

    let mut env_b = env.clone();
    env_b.port = abm_testkit::free_port();
    let with_instance = |env: &Env, name: &str| env.instance_vars(name);
    let a = ServiceProcess::start(Path::new(SCORER), &[], &with_instance(&env, "a"));
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(60), "A ready");
    let b = ServiceProcess::start(Path::new(SCORER), &[], &with_instance(&env_b, "b"));
    wait_for_status(env_b.port, "/readyz", 200, Duration::from_secs(60), "B ready");
    let metric = |port: u16, name: &str| -> f64 {
        let body = http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default();
        // Summed over the metric's series.
        body.lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Both instances own partitions (a lag gauge per partition) before the stream starts.
    let owned = |port: u16| {
        let body = http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default();
        body.lines().filter(|line| line.starts_with("abm_scorer_consumer_lag{")).count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while owned(env.port) == 0 || owned(env_b.port) == 0 || owned(env.port) + owned(env_b.port) < 6 {
        assert!(Instant::now() < deadline, "the partitions were not split between A and B");
        std::thread::sleep(Duration::from_millis(200));
    }
    let feed = producer();
    for event in &events {
        send(&feed, &env.topic(TopicRole::Engagement), event.account_id.as_deref().unwrap_or(""), event);
    }
    flush(&feed);
    let handled =
        |port: u16| metric(port, "abm_scorer_events_applied_total") + metric(port, "abm_scorer_duplicates_total");
    let deadline = Instant::now() + Duration::from_secs(90);
    while handled(env.port) + handled(env_b.port) < events.len() as f64 {
        assert!(
            Instant::now() < deadline,
            "A and B handled {} of {}",
            handled(env.port) + handled(env_b.port),
            events.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(handled(env.port) > 0.0 && handled(env_b.port) > 0.0, "both instances did part of the work");

    // While the stream is within the windows (T0 + 5 d: engagement and coverage), and after
    // every alert window has ended (T0 + 95 d), per tier and list, and for one tier.
    let all: Vec<program::Truth> = truths.into_values().collect();
    for (at, tier) in [(T0 + 5 * DAY_MS, None), (T0 + 95 * DAY_MS, None), (T0 + 5 * DAY_MS, Some(Tier::Tier2))] {
        let expected = program::report(&all, at, tier);
        let query = tier.map_or(String::new(), |t| format!("&tier={}", t.as_str()));
        let path = format!("/v1/program?at={at}{query}");
        // The book follows the topics a moment behind the scorers' commits.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (from_a, from_b) = loop {
            let get = |port: u16| -> Option<serde_json::Value> {
                let (status, body) = http_get(port, &path)?;
                (status == 200).then(|| serde_json::from_str(&body).expect("JSON"))
            };
            let (from_a, from_b) = (get(env.port), get(env_b.port));
            let wrong = match (&from_a, &from_b) {
                (Some(from_a), Some(from_b)) => {
                    program::mismatch(from_a, &expected, &path).or_else(|| program::mismatch(from_b, &expected, &path))
                }
                _ => Some("no answer".into()),
            };
            match wrong {
                None => break (from_a, from_b),
                Some(wrong) if Instant::now() > deadline => panic!("{wrong}"),
                Some(_) => {}
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        // Two instances answer as one, to the bit, and as the recomputation.
        assert_eq!(from_a, from_b, "{path}");
    }
    // Figures that could not fail would prove nothing: this world has them all.
    let (status, body) = http_get(env.port, &format!("/v1/program?at={}", T0 + 95 * DAY_MS)).expect("answers");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let all = &json["all"];
    for (what, value) in [
        ("customers", &all["accounts_by_stage"]["customer"]),
        ("won", &all["opportunities"]["won"]),
        ("lost", &all["opportunities"]["lost"]),
        ("followed alerts", &all["alerts"]["windows"][0]["followed"]),
        ("non-TAL accounts", &json["non_tal"]["accounts"]),
    ] {
        assert!(value.as_u64().unwrap_or(0) > 0, "{what}: {value} in {body}");
    }
    let engaged = serde_json::from_str::<serde_json::Value>(
        &http_get(env.port, &format!("/v1/program?at={}", T0 + 5 * DAY_MS)).expect("answers").1,
    )
    .expect("JSON");
    assert!(engaged["all"]["engaged"].as_u64().unwrap_or(0) > 0, "{engaged}");
    assert!(engaged["all"]["mean_coverage"].as_f64().unwrap_or(0.0) > 0.0, "{engaged}");
    // The gauges carry the same program (at the wall clock): the TAL by tier on both.
    // (Refreshed every 10 s.) The program's figures, not this instance's share of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in [env.port, env_b.port] {
        loop {
            let text = http_get(port, "/metrics").expect("metrics").1;
            let tal = text.contains(r#"abm_scorer_tal_accounts_by_tier{tier="tier_2"} 7"#);
            let lost = text.contains(r#"abm_scorer_program_win_rate{list="all"} "#);
            let accounts: f64 = text
                .lines()
                .filter(|line| line.starts_with("abm_scorer_accounts_by_stage{"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if tal && lost && accounts == 24.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    drop((a, b));
}

/// A state restored from the changelog whose account has no `AccountProgram` yet (written by a
/// scorer from before the program metrics) is written to `abm.account-program` once the book is
/// loaded: the program counts it without waiting for its next event.
#[test]
fn restored_accounts_missing_from_the_program_are_backfilled() {
    let env = Env::new("scorer-backfill");
    env.create_topics();
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let mut state = AccountScoreState::default();
    let demo = {
        let mut demo = EngagementEvent::new("d1", EventKind::DemoRequest, T0, "test");
        demo.account_id = Some("old-1".into());
        demo.demo_request = Some(DemoRequest { form: "f".into() });
        demo
    };
    engine.apply("old-1", &mut state, &visit("v1", "old-1", "/pricing", T0, "c1", "champion"), Tier::Untiered);
    engine.apply("old-1", &mut state, &demo, Tier::Untiered);
    let payload = abm_schemas::encode(&state.to_record("old-1", &engine)).expect("encodes");
    let kafka = producer();
    let changelog = env.topic(TopicRole::ScorerState);
    let record = rdkafka::producer::BaseRecord::to(&changelog).key("old-1").payload(&payload).partition(0);
    kafka.send(record).map_err(|(error, _)| error).expect("queued");
    flush(&kafka);

    let scorer = start(&env);
    // The backfill rides on the transactions that follow: the next event of any account.
    let event = visit("n1", "new-1", "/", T0, "c9", "unknown");
    send(&kafka, &env.topic(TopicRole::Engagement), "new-1", &event);
    flush(&kafka);
    let deadline = Instant::now() + Duration::from_secs(60);
    let at = T0 + DAY_MS;
    loop {
        let program = http_get(env.port, &format!("/v1/program?at={at}"))
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
        if let Some(program) = &program
            && program["non_tal"]["accounts"] == 2
        {
            // old-1 (restored) in mqa, new-1 aware; both engaged a day before at.
            assert_eq!(program["non_tal"]["accounts_by_stage"]["mqa"], 1, "{program}");
            assert_eq!(program["non_tal"]["accounts_by_stage"]["aware"], 1, "{program}");
            assert_eq!(program["non_tal"]["engaged"], 2, "{program}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored account never reached the program: {program:?}\n{}",
            scorer.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let records = read_all::<abm_schemas::AccountProgram>(&env.topic(TopicRole::AccountProgram));
    let old: Vec<_> = records.iter().filter(|(key, _)| key == "old-1").collect();
    assert_eq!(old.len(), 1, "written once");
    assert_eq!(old[0].1.stage, JourneyStage::Mqa);
}
