//! `scorer backtest`'s replay speed, next to a bare consumer and the live scorer's drain rate
//! (`benches/scorer.rs`, the same events).
//!
//!     deploy/local/bench.sh backtest
//!
//! Pre-loads `BENCH_EVENTS` (default 300,000) Avro engagement events for 10,000 accounts into a
//! fresh 6-partition topic, then (1) drains it with a bare librdkafka consumer that only counts
//! messages, (2) runs the release `scorer backtest` on it (two models: the default and a
//! candidate with other thresholds and points) and times it from start to report, with its
//! CPU time, and (3) replays the same encoded events in this process, without Kafka (decode
//! and two models: the replay's own cost). Prints what a year of a large site's history (1B
//! events) would take at (2)'s rate.

use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{Contact, EngagementEvent, EventKind, WebVisit};
use abm_testkit::{TestTopics, flush, producer, send_bytes, unique};

fn events(count: u64) -> impl Iterator<Item = EngagementEvent> {
    let start = abm::clock::now_ms() - 30 * 86_400_000;
    (0..count).map(move |n| {
        let account = n % 10_000;
        let kind = if n % 97 == 0 { EventKind::DemoRequest } else { EventKind::WebVisit };
        let mut event = EngagementEvent::new(format!("b-{n}"), kind, start + n as i64 * 5_000, "bench");
        event.account_id = Some(format!("acc-{account}"));
        event.contact = Some(Contact { contact_id: Some(format!("acc-{account}-c{}", n % 5)), ..Contact::default() });
        if kind == EventKind::DemoRequest {
            event.demo_request = Some(abm_schemas::DemoRequest { form: "demo".into() });
        } else {
            let path = ["/", "/pricing", "/docs", "/careers"][(n % 4) as usize];
            event.web_visit =
                Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
        }
        event
    })
}

const CANDIDATE: &str = r#"
[scoring.thresholds]
tier_1 = 40.0
tier_2 = 60.0
tier_3 = 80.0
untiered = 120.0
"#;

fn main() {
    let count: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let topics = TestTopics::new("bench-backtest");
    topics.create();
    let input = topics.name(TopicRole::Engagement);
    let kafka = producer();
    let encoded: Vec<(String, Vec<u8>)> = events(count)
        .map(|event| (event.account_id.clone().unwrap_or_default(), abm_schemas::encode(&event).expect("encodes")))
        .collect();
    let started = Instant::now();
    for (key, payload) in &encoded {
        send_bytes(&kafka, &input, key, payload);
    }
    flush(&kafka);
    println!("backtest bench: pre-loaded {count} events in {:.1}s", started.elapsed().as_secs_f64());

    // (1) A bare consumer: the same client library, the same topic, no work per message.
    let bare = abm_testkit::bare_read_seconds(&input, count);
    println!("backtest bench: bare consumer read {count} in {bare:.2}s = {:.0} events/s", count as f64 / bare);

    // (2) `scorer backtest`, start to report.
    let dir = std::env::temp_dir().join(unique("bench-backtest"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let candidate = dir.join("candidate.toml");
    std::fs::write(&candidate, CANDIDATE).expect("candidate");
    let json = dir.join("report.json");
    let started = Instant::now();
    let child = std::process::Command::new(abm_testkit::workspace_binary("scorer"))
        .args(["backtest", "--candidate"])
        .arg(&candidate)
        .arg("--json")
        .arg(&json)
        .envs(topics.env())
        .env("ABM_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("scorer backtest starts");
    let pid = child.id();
    // CPU time, sampled until the process ends (a finished process has no /proc entry).
    let mut cpu = 0.0;
    let mut child = child;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "scorer backtest failed");
            break;
        }
        cpu = abm_testkit::cpu_seconds(pid).max(cpu);
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    assert_eq!(report["events"].as_u64(), Some(count), "every event replayed");
    let replay = report["replay_seconds"].as_f64().expect("replay_seconds");
    let rate = count as f64 / replay;
    println!(
        "backtest bench: scorer backtest took {seconds:.2}s start to report; its replay of {count} events through 2 \
         models {replay:.2}s = {rate:.0} events/s; CPU {cpu:.1}s = {:.0} events per CPU-second",
        count as f64 / cpu.max(0.001)
    );
    let hours = 1e9 / rate / 3600.0;
    println!("backtest bench: at that rate 1B events (a year of a large site) take {hours:.1} h");
    let _ = std::fs::remove_dir_all(&dir);

    // (3) The replay alone: decode and two models, in memory.
    let current = scorer::engine::Engine::new(scorer::engine::ScoringConfig::default()).expect("default model");
    let table: toml::Table = toml::from_str(CANDIDATE).expect("TOML");
    let candidate: scorer::engine::ScoringConfig = table["scoring"].clone().try_into().expect("candidate");
    let candidate = scorer::engine::Engine::new(candidate).expect("candidate model");
    let mut replay = scorer::backtest::Replay::new(
        vec![("current".into(), current), ("candidate".into(), candidate)],
        Default::default(),
        [],
    );
    let started = Instant::now();
    for (key, payload) in &encoded {
        replay.record(Some(key.as_bytes()), payload).expect("applies");
    }
    let report = replay.report(None, 10);
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "backtest bench: in memory (decode + 2 models + report), {count} events in {seconds:.2}s = {:.0} events/s",
        count as f64 / seconds
    );
    assert_eq!(report.events, count);
}
