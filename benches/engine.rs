//! The scorer's own work per event on one core, without Kafka: how much of the distance between
//! the scorer and a bare consumer (`benches/scorer.rs`) is ours.
//!
//!     deploy/local/bench.sh engine
//!
//! The events of `benches/scorer.rs` (web visits for 10,000 accounts from 5 contacts each,
//! 5 s of event time apart), encoded as ingest writes them. Timed separately, each over all
//! events: decoding (`abm_schemas::decode`, each event dropped at once), applying
//! (`Engine::apply` on states in a map, as the store keeps them: decode and apply timed
//! together, less the decode), and the commit's encoding: every 25,000 events (a 250 ms batch at
//! 100k events/s) each changed account's `AccountState` (`encode_record_into`, as
//! `before_commit` writes it) and its program record.

use std::collections::HashMap;
use std::time::Instant;

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use scorer::engine::{AccountScoreState, Engine, ScoringConfig};

fn events(count: u64) -> Vec<Vec<u8>> {
    let start = abm::clock::now_ms() - 30 * 86_400_000;
    (0..count)
        .map(|n| {
            let account = n % 10_000;
            let mut event =
                EngagementEvent::new(format!("b-{n}"), EventKind::WebVisit, start + n as i64 * 5_000, "bench");
            event.account_id = Some(format!("acc-{account}"));
            event.contact =
                Some(Contact { contact_id: Some(format!("acc-{account}-c{}", n % 5)), ..Contact::default() });
            let path = ["/", "/pricing", "/docs", "/careers"][(n % 4) as usize];
            event.web_visit =
                Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
            abm_schemas::encode(&event).expect("encodes")
        })
        .collect()
}

fn rate(count: u64, seconds: f64) -> String {
    format!("{:>9.0} events/s ({:.2} µs each)", count as f64 / seconds, seconds * 1e6 / count as f64)
}

fn main() {
    let count: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let batch = 25_000usize;
    let payloads = events(count);
    let engine = Engine::new(ScoringConfig::default()).expect("the default model");

    // Warm-up: the allocator, the caches.
    for payload in payloads.iter().take(10_000) {
        let _ = abm_schemas::decode::<EngagementEvent>(payload).expect("decodes");
    }

    // Decoded and dropped at once, as the scorer does.
    let started = Instant::now();
    for payload in &payloads {
        std::hint::black_box(abm_schemas::decode::<EngagementEvent>(payload).expect("decodes"));
    }
    let decode = started.elapsed().as_secs_f64();

    // Decoded and applied: the apply's share is the difference.
    let mut states: HashMap<String, AccountScoreState> = HashMap::new();
    let started = Instant::now();
    for payload in &payloads {
        let event = abm_schemas::decode::<EngagementEvent>(payload).expect("decodes");
        let id = event.account_id.as_deref().unwrap_or_default();
        let state = match states.get_mut(id) {
            Some(state) => state,
            None => states.entry(id.to_owned()).or_default(),
        };
        std::hint::black_box(engine.apply(id, state, &event, Tier::Tier2));
    }
    let apply = (started.elapsed().as_secs_f64() - decode).max(0.0);

    // Which accounts each batch changed.
    let decoded: Vec<String> = payloads
        .iter()
        .map(|p| abm_schemas::decode::<EngagementEvent>(p).expect("decodes").account_id.unwrap_or_default())
        .collect();
    // The commit's encoding: each account changed in a batch, once per batch.
    let mut changed = 0u64;
    let mut bytes = 0u64;
    let mut buffer = Vec::with_capacity(4096);
    let started = Instant::now();
    for chunk in decoded.chunks(batch) {
        let mut ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let state = &states[id];
            buffer.clear();
            state.encode_record_into(id, &engine, &mut buffer);
            let program = abm_schemas::encode(&scorer::program::record_of(id, state)).expect("encodes");
            bytes += (buffer.len() + program.len()) as u64;
            changed += 1;
        }
    }
    let commit = started.elapsed().as_secs_f64();

    println!("engine: {count} events, {} accounts, one core, no Kafka", states.len());
    println!("  decode  {}", rate(count, decode));
    println!("  apply   {}", rate(count, apply));
    println!(
        "  commit  {} ({changed} account writes in batches of {batch}, {:.0} bytes each)",
        rate(count, commit),
        bytes as f64 / changed.max(1) as f64
    );
    println!("  all     {}", rate(count, decode + apply + commit));
}
