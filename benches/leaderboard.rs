//! Leaderboard latency at 1M accounts: the store's ranking against a full scan.
//!
//!     deploy/local/bench.sh leaderboard
//!
//! Builds `BENCH_ACCOUNTS` (default 1,000,000) accounts in the scorer's store, across 6
//! partitions and the four tiers, each with 1 to 12 events from 1 to 5 contacts spread over
//! the 90 days before "now" (a heavy tail: a few accounts much more active than most), and
//! ranks them as the scorer does when it writes a batch. Then times `Store::top` (what
//! `GET /v1/accounts?top=N[&tier=T]` runs) for N = 10, 100, 1000, all tiers and one tier, at
//! "now" and a day later, and checks each answer against a full scan (every account scored at
//! that time and sorted: what the leaderboard did before), which is timed too. Also: the
//! latency while another thread ranks accounts as batches are written, and the ranking's
//! memory (RSS growth of ranking 1M accounts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use scorer::engine::{AccountScoreState, DAY_MS, Engine, ScoringConfig};
use scorer::store::Store;

const NOW: i64 = 1_760_000_000_000;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

/// SplitMix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut x = *state;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn history(account: usize, random: &mut u64) -> Vec<EngagementEvent> {
    // Events: 1 + a geometric-ish tail up to 12.
    let mut events = 1;
    while events < 12 && next(random).is_multiple_of(3) {
        events += 1;
    }
    let contacts = 1 + (next(random) % 5) as usize;
    (0..events)
        .map(|i| {
            let kind = match next(random) % 20 {
                0 => EventKind::DemoRequest,
                1..=3 => EventKind::ContentDownload,
                _ => EventKind::WebVisit,
            };
            let at = NOW - (next(random) % (90 * DAY_MS as u64)) as i64;
            let mut event = EngagementEvent::new(format!("e-{account}-{i}"), kind, at, "bench");
            event.contact = Some(Contact {
                contact_id: Some(format!("acc-{account}-c{}", next(random) as usize % contacts)),
                persona: Some(["economic_buyer", "champion", "user"][i % 3].into()),
                ..Contact::default()
            });
            if kind == EventKind::WebVisit {
                let path = if next(random).is_multiple_of(4) { "/pricing" } else { "/docs" };
                event.web_visit =
                    Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
            }
            event
        })
        .collect()
}

fn full_scan(engine: &Engine, store: &Store, tier: Option<Tier>, at: i64, n: usize) -> Vec<(String, f64)> {
    let mut all = Vec::new();
    store.for_each(|id, state| {
        if tier.is_none_or(|tier| tier == state.tier) {
            all.push((id.to_owned(), engine.score_at(state, at)));
        }
    });
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

/// Median and 99th percentile of `runs` timings of `run`.
fn time(runs: usize, mut run: impl FnMut()) -> (Duration, Duration) {
    let mut took: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .collect();
    took.sort();
    (took[runs / 2], took[(runs * 99 / 100).min(runs - 1)])
}

fn main() {
    let accounts: usize = std::env::var("BENCH_ACCOUNTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let engine = Arc::new(Engine::new(ScoringConfig::default()).expect("valid"));
    let store = Store::new(engine.clone());
    let tiers = [Tier::Tier1, Tier::Tier2, Tier::Tier3, Tier::Untiered];
    let mut random = 2024_u64;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(accounts);
    for account in 0..accounts {
        let id = format!("acc-{account}");
        let tier = tiers[account % 4];
        let mut state = AccountScoreState::default();
        for event in history(account, &mut random) {
            engine.apply(&id, &mut state, &event, tier);
        }
        store.partition((account % 6) as i32).insert(id.as_str().into(), Box::new(state));
        ids.push(id);
    }
    println!("leaderboard: built {accounts} accounts in {:.1}s", started.elapsed().as_secs_f64());
    let before = rss_bytes();
    let started = Instant::now();
    for (account, id) in ids.iter().enumerate() {
        store.rank((account % 6) as i32, id);
    }
    println!(
        "leaderboard: ranked {accounts} accounts in {:.1}s; ranking memory RSS +{:.0} MiB = {:.0} bytes/account",
        started.elapsed().as_secs_f64(),
        rss_bytes().saturating_sub(before) as f64 / 1_048_576.0,
        rss_bytes().saturating_sub(before) as f64 / accounts as f64
    );

    println!("| request | at | ranking p50 | ranking p99 | examined | full scan |");
    println!("|---|---|---|---|---|---|");
    for at in [NOW, NOW + DAY_MS] {
        for (tier, n) in [(None, 10), (None, 100), (None, 1000), (Some(Tier::Tier1), 10), (Some(Tier::Tier1), 100)] {
            let top = store.top(tier, at, n, |id, _, score| (id.to_owned(), score));
            let scan_started = Instant::now();
            let scan = full_scan(&engine, &store, tier, at, n);
            let scan_took = scan_started.elapsed();
            assert_eq!(top.entries, scan, "the ranking's answer is the full scan's");
            let (p50, p99) = time(200, || {
                std::hint::black_box(store.top(tier, at, n, |id, _, score| (id.to_owned(), score)));
            });
            let request = match tier {
                Some(_) => format!("top={n}&tier=1"),
                None => format!("top={n}"),
            };
            let when = if at == NOW { "now" } else { "now + 1 day" };
            println!(
                "| `{request}` | {when} | {:.3} ms | {:.3} ms | {} | {:.0} ms |",
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0,
                top.examined,
                scan_took.as_secs_f64() * 1000.0
            );
        }
    }

    // While batches are written: another thread ranks accounts as fast as it can.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop, ids) = (store.clone(), stop.clone(), ids.clone());
        std::thread::spawn(move || {
            let mut ranked = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for chunk in ids.chunks(500).take(200) {
                    for id in chunk {
                        let account: usize = id.trim_start_matches("acc-").parse().unwrap_or(0);
                        store.rank((account % 6) as i32, id);
                        ranked += 1;
                    }
                }
            }
            ranked
        })
    };
    let started = Instant::now();
    let (p50, p99) = time(500, || {
        std::hint::black_box(store.top(None, NOW, 100, |id, _, score| (id.to_owned(), score)));
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ranked = writer.join().unwrap_or(0);
    println!(
        "leaderboard: top=100 while another thread ranks {:.0} accounts/s: p50 {:.3} ms, p99 {:.3} ms",
        ranked as f64 / started.elapsed().as_secs_f64(),
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );
}
