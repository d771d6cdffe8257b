//! A loop whose consumer stops fetching (the failure reported against librdkafka after broker
//! restarts, injected here: every assigned partition paused for good) is noticed by the
//! watchdog and healed by a new consumer, without losing or doubling an event.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use abm_testkit::{ServiceProcess, metric, wait_for_status};
use scorer::engine::{AccountScoreState, Engine, ScoringConfig};
use support::*;

const SCORER: &str = env!("CARGO_BIN_EXE_scorer");
const ACCOUNTS: usize = 6;

fn visit(n: usize) -> EngagementEvent {
    let account = format!("stall-acc-{}", n % ACCOUNTS);
    let mut event =
        EngagementEvent::new(format!("stall-{n}"), EventKind::WebVisit, 1_760_000_000_000 + n as i64 * 60_000, "test");
    event.account_id = Some(account.clone());
    event.contact = Some(Contact { contact_id: Some(format!("{account}-c{}", n % 4)), ..Contact::default() });
    event.web_visit = Some(WebVisit { url: "https://vendor.example/pricing".into(), referrer: None, title: None });
    event
}

#[test]
fn a_consumer_that_stops_fetching_is_replaced_and_nothing_is_lost_or_doubled() {
    let env = Env::new("stall");
    env.create_topics();
    let producer = producer();
    for a in 0..ACCOUNTS {
        let id = format!("stall-acc-{a}");
        send(&producer, &env.topic(TopicRole::Accounts), &id, &account(&id, Tier::Tier2));
    }
    flush(&producer);
    let mut vars = env.vars();
    vars.push(("ABM_SCORER__STALL_AFTER_MS", "3000".into()));
    vars.push(("ABMTEST_FAULT_STALL_AFTER_MESSAGES", "100".into()));
    let scorer = ServiceProcess::start(Path::new(SCORER), &[], &vars);
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(60), "scorer did not get ready");

    // Events keep arriving after the fault: the paused consumer leaves them waiting.
    let events: Vec<EngagementEvent> = (0..400).map(visit).collect();
    for chunk in events.chunks(100) {
        for event in chunk {
            send(&producer, &env.topic(TopicRole::Engagement), event.account_id.as_deref().unwrap_or_default(), event);
        }
        flush(&producer);
        std::thread::sleep(Duration::from_millis(700));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let done =
        |port| metric(port, "abm_scorer_events_applied_total", &[]) + metric(port, "abm_scorer_duplicates_total", &[]);
    while done(env.port) < events.len() as f64 {
        assert!(Instant::now() < deadline, "not every event was applied:\n{}", scorer.stderr());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(metric(env.port, "abm_scorer_loop_heals_total", &[]), 1.0, "{}", scorer.stderr());
    assert!(scorer.stderr().contains("have input but nothing was processed"), "{}", scorer.stderr());
    // Exactly once across the replacement: each event applied once, none seen as a repeat.
    assert_eq!(metric(env.port, "abm_scorer_events_applied_total", &[]), events.len() as f64);
    assert_eq!(metric(env.port, "abm_scorer_duplicates_total", &[]), 0.0);
    // The gauge counts from the last progress (a heal does not reset it): 0 at the next check.
    abm_testkit::wait_for_metric(
        env.port,
        "abm_scorer_loop_stalled_seconds",
        &[],
        0.0,
        Duration::from_secs(5),
        "progressing again",
    );
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(30), "ready again after healing");

    // Every account's score equals an uninterrupted in-process run.
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    for (account, log) in by_account(&events) {
        let mut state = AccountScoreState::default();
        for event in &log {
            engine.apply(&account, &mut state, event, Tier::Tier2);
        }
        let expected = engine.view(&account, &state, None);
        let json = account_json(env.port, &account).expect("account");
        assert!(close(json["score"].as_f64().unwrap_or(f64::NAN), expected.score), "{account}: {json}");
        assert_eq!(json["events_applied"].as_u64(), Some(log.len() as u64));
    }
}
