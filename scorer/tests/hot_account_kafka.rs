//! One hot account through the real broker: the scorer keeps committing, answers for the
//! account, and every changelog record of it stays under `scoring.max_state_bytes`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use abm_schemas::{AccountState, AccountStateChunk, Contact, EngagementEvent, EventKind, Tier, WebVisit};
use abm_testkit::{ServiceProcess, metric, read_all_bytes_from, wait_for_status};
use scorer::engine::{AccountScoreState, DAY_MS, Engine, ScoringConfig};
use support::*;

const SCORER: &str = env!("CARGO_BIN_EXE_scorer");
const ACCOUNT: &str = "hot-1";

fn visit(n: u64, t: i64, contact: &str) -> EngagementEvent {
    let mut event = EngagementEvent::new(format!("hot-{n}"), EventKind::WebVisit, t, "test");
    event.account_id = Some(ACCOUNT.into());
    event.contact = Some(Contact { contact_id: Some(contact.into()), ..Contact::default() });
    let path = if n.is_multiple_of(7) { "/pricing" } else { "/blog" };
    event.web_visit = Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
    event
}

/// Sends `events`, runs the scorer until it has applied them all, and checks the bounds.
/// Returns the account as the API shows it.
fn run_hot_account(name: &str, events: &[EngagementEvent]) -> serde_json::Value {
    let env = Env::new(name);
    env.create_topics();
    let producer = producer();
    send(&producer, &env.topic(TopicRole::Accounts), ACCOUNT, &account(ACCOUNT, Tier::Tier1));
    for event in events {
        send(&producer, &env.topic(TopicRole::Engagement), ACCOUNT, event);
    }
    flush(&producer);
    let scorer = ServiceProcess::start(Path::new(SCORER), &[], &env.vars());
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(60), "scorer did not get ready");
    let deadline = Instant::now() + Duration::from_secs(900);
    let json = loop {
        if let Some(json) = account_json(env.port, ACCOUNT)
            && json["events_applied"].as_u64().unwrap_or(0) + json["duplicates"].as_u64().unwrap_or(0)
                >= events.len() as u64
        {
            break json;
        }
        assert!(Instant::now() < deadline, "the hot account was not applied in time:\n{}", scorer.stderr());
        std::thread::sleep(Duration::from_millis(500));
    };
    // It kept committing: many transactions; and the last one is waited for, so that the kill
    // below finds everything durable and the restore must give all of it back (a kill before
    // the last commit would leave the restarted scorer re-applying the tail after its restore).
    let durable = Instant::now() + Duration::from_secs(60);
    while metric(env.port, "abm_scorer_snapshot_age_seconds", &[]) != 0.0 {
        assert!(Instant::now() < durable, "the last batch was not committed within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(env.port, "abm_scorer_transactions_total", &[]) >= 2.0);
    let bound = ScoringConfig::default().max_state_bytes;
    let records = read_all_bytes_from(&abm_testkit::bootstrap_servers(), &env.topic(TopicRole::ScorerState));
    assert!(!records.is_empty());
    for (key, bytes) in &records {
        assert!(bytes.len() <= bound, "a changelog record of {} bytes, over {bound}", bytes.len());
        if scorer::changelog::is_chunk_key(key.as_bytes()) {
            // A split state's chunk (or a chunk's tombstone).
            assert!(key.starts_with(&format!("\0{ACCOUNT}\0")), "{key:?}");
            if !bytes.is_empty() {
                abm_schemas::decode::<AccountStateChunk>(bytes).expect("decodes");
            }
        } else {
            assert_eq!(key, ACCOUNT);
            abm_schemas::decode::<AccountState>(bytes).expect("decodes");
        }
    }
    assert_eq!(metric(env.port, "abm_scorer_state_oversized_total", &[]), 0.0);
    assert_eq!(metric(env.port, "abm_scorer_split_accounts", &[]), 1.0, "the hot account is written split");
    // Restarted, the scorer restores the split state from the real changelog exactly.
    drop(scorer);
    let _scorer = ServiceProcess::start(Path::new(SCORER), &[], &env.vars());
    wait_for_status(env.port, "/readyz", 200, Duration::from_secs(120), "restarted scorer did not get ready");
    let again = account_json(env.port, ACCOUNT).expect("the account after a restart");
    assert_eq!(again["events_applied"], json["events_applied"], "/readyz was 200 before the restore: {again}");
    for field in ["score", "engagement", "breadth", "events_applied", "duplicates", "counts", "contacts"] {
        assert_eq!(again[field], json[field], "{field} after the restore");
    }
    json
}

#[test]
fn thirty_five_thousand_distinct_contacts_on_one_account() {
    let t0 = 1_760_000_000_000;
    let events: Vec<EngagementEvent> = (0..35_000).map(|n| visit(n, t0 + n as i64 * 1000, &format!("c-{n}"))).collect();
    let json = run_hot_account("hot-contacts", &events);
    // Equal to an uninterrupted in-process run of the same log.
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let mut state = AccountScoreState::default();
    for event in &events {
        engine.apply(ACCOUNT, &mut state, event, Tier::Tier1);
    }
    let expected = engine.view(ACCOUNT, &state, None);
    assert!(close(json["score"].as_f64().unwrap_or(f64::NAN), expected.score), "{json}");
    assert_eq!(json["breadth"].as_u64(), Some(u64::from(expected.breadth)));
}

#[test]
fn a_million_events_on_one_account_over_ninety_days() {
    let t0 = 1_760_000_000_000;
    let n = 1_000_000u64;
    let step = 90 * DAY_MS / n as i64;
    // 5,000 contacts coming back again and again: caps, breadth, dedup and windows all full.
    let events: Vec<EngagementEvent> =
        (0..n).map(|i| visit(i, t0 + i as i64 * step, &format!("c-{}", i % 5000))).collect();
    let json = run_hot_account("hot-million", &events);
    assert_eq!(json["events_applied"].as_u64(), Some(n), "{json}");
}
