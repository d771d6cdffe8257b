//! Scorer state: memory per account at 100k and 1M accounts, and the time to restore 1M
//! accounts from the changelog after a restart.
//!
//!     deploy/local/bench.sh scorer_state
//!
//! Each account gets a typical history: 8 events from 3 contacts over two weeks (web visits,
//! a pricing visit, an email click, an ad click). Memory is the growth of the process's
//! resident set while the accounts are built in the scorer's store (`dashmap`), divided by
//! the number of accounts (the leaderboard's ranking included). The restore writes every account's `AccountState` to a fresh
//! 6-partition changelog topic, then times the scorer's restore path (read to the end with
//! `read_committed`, decode, rebuild) for all partitions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use abm_schemas::{Contact, EmailAction, EmailEvent, EngagementEvent, EventKind, Tier, WebVisit};
use scorer::changelog::restore_partitions;
use scorer::engine::{AccountScoreState, Engine, ScoringConfig};
use scorer::store::{PartitionAccounts, Store};

const DAY: i64 = 86_400_000;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn history(account: usize) -> Vec<EngagementEvent> {
    let t0 = 1_700_000_000_000 + (account as i64 % 1000) * 60_000;
    (0..8)
        .map(|i| {
            let kind = match i {
                5 => EventKind::Email,
                6 => EventKind::AdClick,
                _ => EventKind::WebVisit,
            };
            let mut event = EngagementEvent::new(format!("e-{account}-{i}"), kind, t0 + i as i64 * 2 * DAY, "bench");
            event.contact = Some(Contact {
                contact_id: Some(format!("acc-{account}-c{}", i % 3)),
                title: Some(["VP Finance", "Director of IT", "Engineer"][i % 3].into()),
                ..Contact::default()
            });
            match kind {
                EventKind::WebVisit => {
                    let path = if i == 2 { "/pricing" } else { "/docs" };
                    event.web_visit =
                        Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
                }
                EventKind::Email => event.email = Some(EmailEvent { action: EmailAction::Click, campaign: None }),
                _ => {}
            }
            event
        })
        .collect()
}

fn build(engine: &Engine, store: &Store, accounts: usize) -> Duration {
    let started = Instant::now();
    for account in 0..accounts {
        let id = format!("acc-{account}");
        let partition = (account % 6) as i32;
        let shard = store.partition(partition);
        let mut state = AccountScoreState::default();
        for event in history(account) {
            engine.apply(&id, &mut state, &event, Tier::Tier2);
        }
        shard.insert(id.as_str().into(), Box::new(state));
        store.rank(partition, &id);
    }
    started.elapsed()
}

fn memory(engine: &Arc<Engine>, accounts: usize) -> Store {
    let before = rss_bytes();
    let store = Store::new(engine.clone());
    let took = build(engine, &store, accounts);
    let after = rss_bytes();
    let mut heap = 0;
    store.for_each(|id, state| heap += state.heap_bytes() + id.len() + std::mem::size_of::<AccountScoreState>());
    println!(
        "scorer state {accounts:>8} accounts: RSS +{:.0} MiB = {:.0} bytes/account (state's own estimate {:.0} bytes/account); built in {:.1}s",
        (after.saturating_sub(before)) as f64 / 1_048_576.0,
        after.saturating_sub(before) as f64 / accounts as f64,
        heap as f64 / accounts as f64,
        took.as_secs_f64()
    );
    store
}

fn restore(engine: &Arc<Engine>, store: &Store, accounts: usize) {
    let topics = abm_testkit::TestTopics::new("bench-restore");
    topics.create();
    let changelog = topics.name(abm::topics::TopicRole::ScorerState);
    let producer = abm_testkit::producer();
    let started = Instant::now();
    for partition in store.partitions() {
        let shard = store.partition(partition);
        for entry in shard.iter() {
            let record = entry.value().to_record(entry.key(), engine);
            let payload = abm_schemas::encode(&record).expect("encodes");
            let mut message = rdkafka::producer::BaseRecord::to(&changelog)
                .key(entry.key().as_str())
                .payload(&payload)
                .partition(partition);
            loop {
                match producer.send(message) {
                    Ok(()) => break,
                    Err((_, returned)) => {
                        message = returned;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
    abm_testkit::flush(&producer);
    println!(
        "scorer state: wrote {accounts} account states to the changelog in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let kafka = abm_testkit::kafka();
    let partitions: Vec<i32> = (0..6).collect();
    // The scorer's own restore path (`changelog::restore_partitions`).
    let started = Instant::now();
    let rebuilt: Vec<PartitionAccounts> =
        restore_partitions(&kafka, "bench-restore", &changelog, &partitions, |_| engine.clone())
            .expect("restored")
            .into_values()
            .map(|scorer::changelog::Restored { accounts, skipped, .. }| {
                assert_eq!(skipped, 0);
                accounts
            })
            .collect();
    let took = started.elapsed().as_secs_f64();
    let restored: usize = rebuilt.iter().map(|p| p.len()).sum();
    assert_eq!(restored, accounts);
    println!("scorer state: restored {restored} accounts in {took:.1}s = {:.0} accounts/s", restored as f64 / took);
}

fn main() {
    let engine = Arc::new(Engine::new(ScoringConfig::default()).expect("valid"));
    if let Some(accounts) = std::env::var("BENCH_MEMORY_ONLY").ok().and_then(|s| s.parse().ok()) {
        memory(&engine, accounts);
        return;
    }
    // Each size is measured in a fresh process: memory freed by an earlier measurement stays
    // resident and would be reused, understating the later one.
    let small = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(std::env::args_os().skip(1))
        .env("BENCH_MEMORY_ONLY", "100000")
        .status()
        .expect("runs itself");
    assert!(small.success(), "the 100k measurement failed: {small}");
    let large: usize = std::env::var("BENCH_ACCOUNTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let store = memory(&engine, large);
    restore(&engine, &store, large);
}
