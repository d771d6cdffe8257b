//! A model change on the real broker: the scorer runs the default model over 60 days of
//! history (with the alerter), then is started with another model. It serves with the old one
//! while it re-scores the history under the new one, is killed with SIGKILL in the middle of
//! that, restarted, and switches. Events keep arriving throughout. Afterwards every account's
//! published score equals a fresh run of the new model over all the events (the engine over
//! them, in partition order), no alert came from a crossing older than the alerter's cooldown,
//! and no alert id was published twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{
    Account, AccountScore, Contact, EngagementEvent, EventKind, SalesAlert, ScoreCrossing, Tier, WebVisit,
};
use abm_testkit::{
    ServiceProcess, TestTopics, flush, free_port, http_get, metric, producer, read_all, send, wait_for_status,
    with_env, workspace_binary,
};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const ACCOUNTS: usize = 40;

fn tier_of(n: usize) -> Tier {
    [Tier::Tier1, Tier::Tier2, Tier::Tier3, Tier::Tier2][n % 4]
}

fn tal() -> Vec<Account> {
    (0..ACCOUNTS)
        .map(|n| Account {
            account_id: format!("acc-{n:03}"),
            name: format!("Company {n}"),
            domains: vec![format!("c{n}.example")],
            tier: tier_of(n),
            owner: "sdr@vendor.example".into(),
            industry: None,
            employees: None,
            committee: None,
            updated_at: 0,
        })
        .collect()
}

/// `count` events from `start`, `step` apart, spread over the accounts (a few busy ones), web
/// visits to a few pages by a few contacts, and a demo request now and then.
fn events(prefix: &str, count: usize, start: i64, step: i64) -> Vec<EngagementEvent> {
    let mut rng = abm_sim::Rng::new(prefix.len() as u64 * 7919 + count as u64);
    (0..count)
        .map(|i| {
            let account = if rng.chance(0.4) { rng.below(5) as usize } else { rng.below(ACCOUNTS as u64) as usize };
            let t = start + i as i64 * step;
            let demo = rng.chance(0.03);
            let kind = if demo { EventKind::DemoRequest } else { EventKind::WebVisit };
            let mut event = EngagementEvent::new(format!("{prefix}-{i}"), kind, t, "test");
            event.account_id = Some(format!("acc-{account:03}"));
            let persona = ["economic_buyer", "champion", "technical_evaluator", "end_user"][rng.below(4) as usize];
            event.contact = Some(Contact {
                contact_id: Some(format!("acc-{account:03}-c{}", rng.below(4))),
                persona: Some(persona.into()),
                ..Contact::default()
            });
            if demo {
                event.demo_request = Some(abm_schemas::DemoRequest { form: "demo".into() });
            } else {
                let path = ["/pricing", "/docs", "/", "/blog/post", "/careers"][rng.below(5) as usize];
                event.web_visit =
                    Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
            }
            event
        })
        .collect()
}

/// The candidate model, as environment variables over the default one.
fn new_model() -> Vec<(&'static str, String)> {
    vec![
        ("ABM_SCORING__THRESHOLDS__TIER_1", "30".into()),
        ("ABM_SCORING__THRESHOLDS__TIER_2", "45".into()),
        ("ABM_SCORING__HALF_LIFE_DAYS", "10".into()),
        ("ABM_SCORING__BREADTH_ALPHA", "0.5".into()),
    ]
}

fn candidate_config() -> scorer::engine::ScoringConfig {
    let mut config = scorer::engine::ScoringConfig::default();
    config.thresholds.tier_1 = 30.0;
    config.thresholds.tier_2 = 45.0;
    config.half_life_days = 10.0;
    config.breadth_alpha = 0.5;
    config
}

#[test]
fn a_model_change_re_scores_the_history_survives_sigkill_and_floods_no_one() {
    let topics = TestTopics::new("rescore");
    topics.create();
    let prefix = topics.prefix.clone();
    let kafka = producer();
    for account in tal() {
        send(&kafka, &topics.name(TopicRole::Accounts), &account.account_id.clone(), &account);
    }
    let now = abm::clock::now_ms();
    // 60 days of history, the last of it within the cooldown of now; then what arrives live.
    let history = events("old", 2400, now - 60 * DAY, 60 * DAY / 2400);
    let live = events("new", 300, now - HOUR, 10_000);
    let engagement = topics.name(TopicRole::Engagement);
    let produce = |events: &[EngagementEvent]| {
        for event in events {
            send(&kafka, &engagement, event.account_id.as_deref().unwrap_or_default(), event);
        }
        flush(&kafka);
    };
    produce(&history);

    let scorer_port = free_port();
    let scorer_env = |extra: &[(&'static str, String)]| {
        let mut env = with_env(topics.env(), extra);
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{scorer_port}")));
        env.push(("ABM_SCORER__GROUP_ID", format!("{prefix}-scorer")));
        env.push(("ABM_SCORER__INSTANCE_ID", format!("{prefix}-scorer")));
        env
    };
    let alerter_port = free_port();
    let mut alerter_env = topics.env();
    alerter_env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{alerter_port}")));
    alerter_env.push(("ABM_ALERTER__GROUP_ID", format!("{prefix}-alerter")));
    alerter_env.push(("ABM_ALERTER__INSTANCE_ID", format!("{prefix}-alerter")));
    let alerter = ServiceProcess::start(&workspace_binary("alerter"), &[], &alerter_env);
    wait_for_status(alerter_port, "/readyz", 200, Duration::from_secs(60), "alerter");

    // The old model over the history.
    let mut old = ServiceProcess::start(&workspace_binary("scorer"), &[], &scorer_env(&[]));
    wait_for_status(scorer_port, "/readyz", 200, Duration::from_secs(60), "scorer, old model");
    let settle = |what: &str, events: usize, process: &ServiceProcess| {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let handled = metric(scorer_port, "abm_scorer_events_applied_total", &[])
                + metric(scorer_port, "abm_scorer_duplicates_total", &[]);
            if handled >= events as f64 && metric(scorer_port, "abm_scorer_snapshot_age_seconds", &[]) == 0.0 {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {handled} of {events} events\n{}", process.stderr());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    settle("the old model", history.len(), &old);
    old.signal("TERM");
    assert!(old.wait(Duration::from_secs(60)).success(), "{}", old.stderr());
    let old_scores = latest::<AccountScore>(&topics.name(TopicRole::AccountScores));
    let old_version = old_scores.values().next().and_then(|s| s.model_version.clone()).expect("a model version");

    // The new model, re-scoring slowly (40 events per second per partition), killed mid-way.
    let slow = [new_model(), vec![("ABM_SCORER__RESCORE_MAX_EVENTS_PER_SECOND", "40".into())]].concat();
    let first = ServiceProcess::start(&workspace_binary("scorer"), &[], &scorer_env(&slow));
    wait_for_status(scorer_port, "/readyz", 200, Duration::from_secs(60), "scorer, new model");
    produce(&live[..150]);
    // The old model serves meanwhile: the new events applied and committed by it.
    settle("the old model serving during the re-score", 150, &first);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(scorer_port, "abm_scorer_rescore_events_total", &[]) < 200.0 {
        assert!(Instant::now() < deadline, "the re-score does not progress\n{}", first.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Mid-way: partitions still re-scoring, served by the old model meanwhile.
    assert!(metric(scorer_port, "abm_scorer_rescore_partitions", &[]) > 0.0, "{}", first.stderr());
    let (status, body) = http_get(scorer_port, "/v1/accounts/acc-001").expect("the API answers");
    assert_eq!(status, 200, "{body}");
    first.signal("KILL");
    drop(first);

    // Restarted with the new model, at full speed: it re-scores again and switches, with no
    // event arriving meanwhile (the killed instance committed all it had).
    let second = ServiceProcess::start(&workspace_binary("scorer"), &[], &scorer_env(&new_model()));
    wait_for_status(scorer_port, "/readyz", 200, Duration::from_secs(60), "scorer, restarted");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = metric(scorer_port, "abm_scorer_rescore_partitions", &[]) == 0.0
            && metric(scorer_port, "abm_scorer_rescore_switches_total", &[]) > 0.0;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the re-score did not switch\n{}", second.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the new model serves what comes next.
    produce(&live[150..]);
    // Everything the restarted scorer had to apply (what the killed one did not commit).
    let total = history.len() + live.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    let scores = loop {
        let scores = latest::<AccountScore>(&topics.name(TopicRole::AccountScores));
        let applied: i64 = scores.values().map(|s| s.events_applied).sum();
        if applied == total as i64 && metric(scorer_port, "abm_scorer_snapshot_age_seconds", &[]) == 0.0 {
            break scores;
        }
        assert!(Instant::now() < deadline, "{applied} of {total} events in the published scores\n{}", second.stderr());
        std::thread::sleep(Duration::from_millis(300));
    };

    // A fresh run of the new model over every event, in the order of their partitions.
    let engine = scorer::engine::Engine::new(candidate_config()).expect("the new model");
    let new_version = engine.model_version().to_owned();
    assert_ne!(new_version, old_version);
    let mut fresh = scorer::backtest::Replay::new(vec![("new".into(), engine)], Default::default(), tal());
    for event in history.iter().chain(&live) {
        fresh.apply(event.account_id.as_deref().unwrap_or_default(), event);
    }
    for (account, score) in &scores {
        assert_eq!(score.model_version.as_deref(), Some(new_version.as_str()), "{account}: scored by the new model");
        let (engine, state) = fresh.state(0, account).expect("the account in the fresh run");
        let expected = engine.score(state);
        assert!(
            (score.score - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{account}: {} after the re-score, {expected} in a fresh run",
            score.score
        );
        assert_eq!(Some(score.as_of), state.as_of, "{account}");
        assert_eq!(score.events_applied as u64, state.events_applied, "{account}");
        assert_eq!(score.stage, state.stage, "{account}");
    }
    let engaged: BTreeSet<&str> = history.iter().chain(&live).filter_map(|e| e.account_id.as_deref()).collect();
    assert_eq!(scores.keys().map(String::as_str).collect::<BTreeSet<_>>(), engaged, "every account scored");
    let (status, body) = http_get(scorer_port, "/v1/accounts/acc-001").expect("the API answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"model_version\":\"{new_version}\"")), "{body}");

    // The alerter has handled every crossing.
    let crossings = read_all::<ScoreCrossing>(&topics.name(TopicRole::ScoreCrossings));
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(alerter_port, "abm_alerter_crossings_total", &[]) < crossings.len() as f64 {
        assert!(Instant::now() < deadline, "the alerter did not handle every crossing\n{}", alerter.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let replayed: Vec<&ScoreCrossing> = crossings.iter().map(|(_, c)| c).filter(|c| c.replayed).collect();
    assert!(!replayed.is_empty(), "the re-score sent its recent crossings");
    assert!(replayed.iter().all(|c| c.model_version.as_deref() == Some(new_version.as_str())));
    let crossing_ids: Vec<&str> = crossings.iter().map(|(_, c)| c.crossing_id.as_str()).collect();
    let unique: BTreeSet<&str> = crossing_ids.iter().copied().collect();
    assert_eq!(unique.len(), crossing_ids.len(), "no crossing id twice, across both models");
    assert!(
        metric(alerter_port, "abm_alerter_suppressed_total", &["reason=\"replayed\""]) > 0.0,
        "replayed crossings older than the cooldown were recorded, not alerted"
    );

    let alerts = read_all::<SalesAlert>(&topics.name(TopicRole::SalesAlerts));
    let ids: Vec<&str> = alerts.iter().map(|(_, a)| a.alert_id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no alert id twice");
    eprintln!(
        "re-score: {} crossings ({} replayed: {} alerted, {} recorded by the alerter), {} alerts, {} partitions switched, {} events re-scored after the restart",
        crossings.len(),
        replayed.len(),
        alerts.iter().filter(|(_, a)| by_id_replayed(&crossings, &a.crossing_id)).count(),
        metric(alerter_port, "abm_alerter_suppressed_total", &["reason=\"replayed\""]),
        alerts.len(),
        metric(scorer_port, "abm_scorer_rescore_switches_total", &[]),
        metric(scorer_port, "abm_scorer_rescore_events_total", &[]),
    );
    // No alert for a crossing older than the cooldown (24 h) when the new model started.
    let cooldown = 24 * HOUR;
    let by_id: BTreeMap<&str, &ScoreCrossing> = crossings.iter().map(|(_, c)| (c.crossing_id.as_str(), c)).collect();
    for (_, alert) in &alerts {
        let crossing = by_id.get(alert.crossing_id.as_str()).expect("the alert's crossing");
        if crossing.replayed {
            assert!(
                crossing.as_of >= now - cooldown,
                "{}: alerted a replayed crossing {} h old",
                alert.alert_id,
                (now - crossing.as_of) / HOUR
            );
        }
    }

    // Rolled back: the old configuration again re-scores back to the old model.
    let mut second = second;
    second.signal("TERM");
    assert!(second.wait(Duration::from_secs(60)).success(), "{}", second.stderr());
    let back = ServiceProcess::start(&workspace_binary("scorer"), &[], &scorer_env(&[]));
    wait_for_status(scorer_port, "/readyz", 200, Duration::from_secs(60), "scorer, rolled back");
    let deadline = Instant::now() + Duration::from_secs(120);
    let rolled_back = loop {
        let scores = latest::<AccountScore>(&topics.name(TopicRole::AccountScores));
        if metric(scorer_port, "abm_scorer_rescore_partitions", &[]) == 0.0
            && scores.values().all(|s| s.model_version.as_deref() == Some(old_version.as_str()))
        {
            break scores;
        }
        assert!(Instant::now() < deadline, "the rollback did not switch\n{}", back.stderr());
        std::thread::sleep(Duration::from_millis(200));
    };
    let engine = scorer::engine::Engine::new(scorer::engine::ScoringConfig::default()).expect("the old model");
    let mut fresh = scorer::backtest::Replay::new(vec![("old".into(), engine)], Default::default(), tal());
    for event in history.iter().chain(&live) {
        fresh.apply(event.account_id.as_deref().unwrap_or_default(), event);
    }
    for (account, score) in &rolled_back {
        let (engine, state) = fresh.state(0, account).expect("the account in the fresh run");
        let expected = engine.score(state);
        assert!(
            (score.score - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{account}: {} after the rollback, {expected} in a fresh run of the old model",
            score.score
        );
    }
    let crossings = read_all::<ScoreCrossing>(&topics.name(TopicRole::ScoreCrossings));
    let ids: BTreeSet<&str> = crossings.iter().map(|(_, c)| c.crossing_id.as_str()).collect();
    assert_eq!(ids.len(), crossings.len(), "no crossing id twice after the rollback either");
    drop(back);
    drop(alerter);
}

/// The latest record of each key of `topic`.
fn latest<T: abm_schemas::AvroRecord>(topic: &str) -> BTreeMap<String, T> {
    read_all::<T>(topic).into_iter().collect()
}

fn by_id_replayed(crossings: &[(String, ScoreCrossing)], id: &str) -> bool {
    crossings.iter().any(|(_, c)| c.crossing_id == id && c.replayed)
}
