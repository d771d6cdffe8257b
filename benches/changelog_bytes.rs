//! Bytes the scorer writes to its changelog (`abm.scorer.state`) per applied event, for a hot and
//! a typical account, written whole (every commit rewrites the account's state, as before split
//! states) and as the scorer writes it now (a hot account split into a head and chunks).
//!
//!     deploy/local/bench.sh changelog_bytes
//!
//! The commit path in memory (no broker): events are applied with the scoring engine and every
//! 100 ms of a steady stream one commit writes each changed account, exactly as the scorer's
//! `before_commit` does (`SplitStates::write`). The hot account gets 20 events per commit from
//! 500 contacts, 5 ms of event time apart (200 events/s for 11,000 commits); the typical one
//! the history of `benches/scorer_state.rs`, 8 events from 3 contacts two days apart, one per
//! commit. Bytes are the records' values (keys and Kafka's framing are not counted).

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use scorer::changelog::SplitStates;
use scorer::engine::{AccountScoreState, Engine, ScoringConfig};

const T0: i64 = 1_700_000_000_000;

fn event(account: &str, n: u64, t: i64, contact: u64) -> EngagementEvent {
    let kind = [EventKind::WebVisit, EventKind::WebVisit, EventKind::Email, EventKind::AdClick][(n % 4) as usize];
    let mut event = EngagementEvent::new(format!("{account}-{n}"), kind, t, "bench");
    event.account_id = Some(account.into());
    event.contact = Some(Contact { contact_id: Some(format!("{account}-c{contact}")), ..Contact::default() });
    if kind == EventKind::WebVisit {
        event.web_visit =
            Some(WebVisit { url: format!("https://vendor.example/page/{}", n % 17), referrer: None, title: None });
    }
    event
}

struct Run {
    events: u64,
    whole_bytes: u64,
    split_bytes: u64,
    records: u64,
    last_whole: usize,
}

fn run(engine: &Engine, account: &str, commits: u64, events_per_commit: u64, step_ms: i64, contacts: u64) -> Run {
    let mut state = AccountScoreState::default();
    let mut split = SplitStates::default();
    let mut whole = Vec::new();
    let mut out = Run { events: 0, whole_bytes: 0, split_bytes: 0, records: 0, last_whole: 0 };
    for _ in 0..commits {
        for _ in 0..events_per_commit {
            let n = out.events;
            let t = T0 + n as i64 * step_ms;
            engine.apply(account, &mut state, &event(account, n, t, (n * 7919) % contacts), Tier::Tier1);
            out.events += 1;
        }
        whole.clear();
        state.encode_record_into(account, engine, &mut whole);
        out.whole_bytes += whole.len() as u64;
        out.last_whole = whole.len();
        let written = split.write(0, account, &state, engine, &whole, |_, _| Ok(())).expect("in memory");
        out.split_bytes += written.bytes;
        out.records += written.records + written.tombstones;
    }
    out
}

fn main() {
    let engine = Engine::new(ScoringConfig::default()).expect("default config");
    for (name, commits, per_commit, step_ms, contacts) in
        [("hot", 11_000, 20, 5, 500), ("typical", 8, 1, 2 * 86_400_000, 3)]
    {
        let started = std::time::Instant::now();
        let r = run(&engine, name, commits, per_commit, step_ms, contacts);
        let writes = commits;
        println!(
            "changelog {name:>7}: {} events in {writes} commits; whole state {:.0} bytes/event ({:.0} bytes/commit, last {} bytes); written split {:.0} bytes/event ({:.0} bytes/commit, {:.1} records/commit); {:.1}x less ({:.1}s)",
            r.events,
            r.whole_bytes as f64 / r.events as f64,
            r.whole_bytes as f64 / writes as f64,
            r.last_whole,
            r.split_bytes as f64 / r.events as f64,
            r.split_bytes as f64 / writes as f64,
            r.records as f64 / writes as f64,
            r.whole_bytes as f64 / r.split_bytes as f64,
            started.elapsed().as_secs_f64(),
        );
    }
}
