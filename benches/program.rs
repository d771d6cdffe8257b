//! The program metrics at 1M accounts: what every scorer instance holds and what a
//! `GET /v1/program` costs.
//!
//!     deploy/local/bench.sh program
//!
//! Builds `BENCH_ACCOUNTS` (default 1,000,000) `AccountProgram` records as the scorer writes
//! them (1 to 5 kept contacts with committee personas, the journey's stage entries so far, 0
//! to 3 opportunities) and encodes them; 200,000 of the accounts are on the TAL. Then, as an
//! instance's follower does: decodes every record into the book (timed: how fast an instance
//! reads `abm.account-program` from the start, minus the network), with 100,000 alerts, and
//! measures the book's memory (RSS growth). Then times `report` (what `GET /v1/program` and
//! the gauges run) for every account and for one tier.

use std::time::Instant;

use abm_schemas::{
    AccountProgram, CrossingKind, JourneyStage, OpportunityStage, OpportunityState, ProgramContact, SalesAlert,
    StageEntry, Tier,
};
use scorer::engine::{DAY_MS, Engine, ScoringConfig};
use scorer::processor::{Tal, TalEntry};
use scorer::program::{Book, report};

const NOW: i64 = 1_760_000_000_000;

/// SplitMix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut x = *state;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn record(index: usize, random: &mut u64) -> AccountProgram {
    let personas = ["economic_buyer", "champion", "technical_evaluator", "end_user", "unknown"];
    let contacts = (0..1 + next(random) % 5)
        .map(|_| ProgramContact {
            persona: personas[(next(random) % 5) as usize].into(),
            last_engaged_at: NOW - (next(random) % (60 * DAY_MS as u64)) as i64,
        })
        .collect();
    let reached = 1 + (next(random) % 5) as usize;
    let first = NOW - 90 * DAY_MS + (next(random) % (30 * DAY_MS as u64)) as i64;
    let stage_entries: Vec<StageEntry> = JourneyStage::ALL[1..=reached]
        .iter()
        .enumerate()
        .map(|(i, stage)| StageEntry {
            stage: *stage,
            first_entered_at: first + i as i64 * 7 * DAY_MS,
            first_sequence: i as i64 + 1,
            last_sequence: i as i64 + 1,
        })
        .collect();
    let opportunities = (0..next(random) % 4)
        .map(|n| OpportunityState {
            opportunity_id: format!("opp-{index}-{n}"),
            stage: [OpportunityStage::Open, OpportunityStage::ClosedWon, OpportunityStage::ClosedLost]
                [(next(random) % 3) as usize],
            stage_name: Some("Discovery".into()),
            amount: 1_000.0 * (next(random) % 100) as f64,
            currency: "USD".into(),
            created_at: first + 20 * DAY_MS,
            updated_at: first + 40 * DAY_MS,
        })
        .collect();
    AccountProgram {
        account_id: format!("acc-{index:07}"),
        tier: Tier::Untiered,
        as_of: Some(NOW - DAY_MS),
        first_applied_at: Some(first),
        events_applied: 10,
        stage: stage_entries.last().map_or(JourneyStage::Unaware, |e| e.stage),
        stage_entered_at: stage_entries.last().map(|e| e.first_entered_at),
        stage_entries,
        contacts,
        opportunities,
    }
}

fn main() {
    let accounts: usize = std::env::var("BENCH_ACCOUNTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let engine = Engine::new(ScoringConfig::default()).expect("default config");
    let mut random = 42;
    let encoded: Vec<Vec<u8>> =
        (0..accounts).map(|i| abm_schemas::encode(&record(i, &mut random)).expect("encodes")).collect();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    println!("program: {accounts} AccountProgram records, {:.0} bytes each on average", bytes as f64 / accounts as f64);

    let tal = Tal::default();
    for i in (0..accounts).step_by(5) {
        let tier = [Tier::Tier1, Tier::Tier2, Tier::Tier3][i % 3];
        tal.insert(format!("acc-{i:07}"), TalEntry { tier, committee: None, name: "".into(), owner: "".into() });
    }
    let before = abm_testkit::rss_bytes(std::process::id()) as usize;
    let book = Book::default();
    let started = Instant::now();
    for payload in &encoded {
        book.read_program(b"", Some(payload)).expect("decodes");
    }
    let elapsed = started.elapsed();
    drop(encoded);
    for n in 0..100_000usize {
        let account = format!("acc-{:07}", (n * 7) % accounts);
        book.alert(&SalesAlert {
            alert_id: format!("{account}:threshold:{n}"),
            crossing_id: String::new(),
            account_id: account,
            account_name: String::new(),
            tier: Tier::Tier1,
            owner: String::new(),
            kind: CrossingKind::Threshold,
            score: 60.0,
            threshold: 50.0,
            as_of: NOW - (n as i64 % 120) * DAY_MS,
            top_rules: vec![],
            contacts: vec![],
            recent_events: vec![],
            next_step: String::new(),
            coverage: None,
            model_version: None,
        });
    }
    let grown = (abm_testkit::rss_bytes(std::process::id()) as usize).saturating_sub(before);
    println!(
        "program: read into the book in {:.2} s ({:.0}k records/s); book with 100,000 alerts: {:.0} MB RSS growth ({:.0} bytes per account)",
        elapsed.as_secs_f64(),
        accounts as f64 / elapsed.as_secs_f64() / 1000.0,
        grown as f64 / 1e6,
        grown as f64 / accounts as f64
    );
    for (what, tier) in [("every account", None), ("tier_2 only", Some(Tier::Tier2))] {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let started = Instant::now();
            last = Some(report(&book, &tal, &engine, NOW, tier));
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let report = last.expect("ran");
        println!(
            "program: GET /v1/program ({what}): median {:.0} ms, min {:.0} ms over 5 runs ({} accounts, engagement rate {:.3})",
            times[2],
            times[0],
            report.all.accounts,
            report.all.engagement_rate.unwrap_or(f64::NAN)
        );
    }
}
