//! A loop whose consumer stops fetching (the failure reported against librdkafka after broker
//! restarts, injected here: every assigned partition paused for good) is noticed by the
//! watchdog and healed by a new consumer, without losing or doubling an event. A transactional
//! call that never comes back (librdkafka's `send_offsets_to_transaction` after a broker
//! restart, injected here) gets its producer replaced, again without losing or doubling one.

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

/// Sends `events` in chunks of 100, 700 ms apart, and waits until each is applied or seen as a
/// repeat (at most 120 s).
fn send_and_wait(env: &Env, scorer: &ServiceProcess, events: &[EngagementEvent]) {
    let producer = producer();
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
}

/// Every account's score equals an uninterrupted in-process run, each event applied once.
fn assert_exact(env: &Env, events: &[EngagementEvent]) {
    assert_eq!(metric(env.port, "abm_scorer_events_applied_total", &[]), events.len() as f64);
    assert_eq!(metric(env.port, "abm_scorer_duplicates_total", &[]), 0.0);
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    for (account, log) in by_account(events) {
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

fn start_scorer(env: &Env, fault: (&str, &str)) -> ServiceProcess {
    env.create_topics();
    let producer = producer();
    for a in 0..ACCOUNTS {
        let id = format!("stall-acc-{a}");
        send(&producer, &env.topic(TopicRole::Accounts), &id, &account(&id, Tier::Tier2));
    }
    flush(&producer);
    let mut vars = env.vars();
    vars.push(("ABM_SCORER__STALL_AFTER_MS", "3000".into()));
    vars.push((fault.0, fault.1.into()));
    let scorer = ServiceProcess::start(Path::new(SCORER), &[], &vars);
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(60), "scorer did not get ready");
    scorer
}

/// The transaction of the third commit never gets its `send_offsets_to_transaction` back: the
/// loop waits the Kafka timeout plus a grace, abandons that producer for a new one (which fences
/// it and aborts its transaction), rewinds the batch and does it again. The process stays up
/// (its watchdog would end it if the loop thread had been stuck in the call).
#[test]
fn a_transactional_call_that_never_comes_back_gets_a_new_producer_and_nothing_is_lost_or_doubled() {
    let env = Env::new("wedge");
    let mut scorer = start_scorer(&env, ("ABMTEST_FAULT_WEDGE_AFTER_COMMITS", "3"));
    let events: Vec<EngagementEvent> = (0..400).map(visit).collect();
    send_and_wait(&env, &scorer, &events);
    assert!(scorer.stderr().contains("did not come back within"), "{}", scorer.stderr());
    assert_eq!(metric(env.port, "abm_scorer_producers_replaced_total", &[]), 1.0, "{}", scorer.stderr());
    assert!(metric(env.port, "abm_scorer_transactions_aborted_total", &[]) >= 1.0);
    assert!(scorer.is_running(), "the scorer exited:\n{}", scorer.stderr());
    assert_exact(&env, &events);
}

#[test]
fn a_consumer_that_stops_fetching_is_replaced_and_nothing_is_lost_or_doubled() {
    let env = Env::new("stall");
    let scorer = start_scorer(&env, ("ABMTEST_FAULT_STALL_AFTER_MESSAGES", "100"));
    // Events keep arriving after the fault: the paused consumer leaves them waiting.
    let events: Vec<EngagementEvent> = (0..400).map(visit).collect();
    send_and_wait(&env, &scorer, &events);
    assert_eq!(metric(env.port, "abm_scorer_loop_heals_total", &[]), 1.0, "{}", scorer.stderr());
    assert!(scorer.stderr().contains("have input but nothing was processed"), "{}", scorer.stderr());
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
    // Exactly once across the replacement.
    assert_exact(&env, &events);
}
