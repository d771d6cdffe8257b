//! Ingest's memory under a flood of 1 MiB junk bodies from 50 connections.
//!
//!     deploy/local/bench.sh ingest_flood
//!
//! Needs a running broker (`KAFKA_BOOTSTRAP_SERVERS`, default 127.0.0.1:9092) and the release
//! binaries; bench.sh does both. For `BENCH_SECONDS` (default 20) per shape, 50 keep-alive
//! connections post 1 MiB bodies as fast as ingest answers, in three shapes:
//!
//! - `lines-64`: 16,383 lines of 63 `x` (more lines than `ingest.max_batch_events`): 413, the
//!   body kept truncated as one `oversized` rejection;
//! - `lines-256`: 4,095 lines of 255 `x` (under the cap): 400, every line kept as a
//!   `malformed_json` rejection (the heaviest for Kafka: 4,095 records per body);
//! - `gzip-bomb`: 64 MiB of zeros gzipped (65 KiB on the wire): 413 at 1 MiB decompressed.
//!
//! Then `lines-256` again: a leak would show as a higher plateau. The ingest process's
//! resident set is sampled every 100 ms; printed: before, peak, after,
//! requests answered per second by status, and the biggest answer seen (bounded answers).
//! Afterwards a valid event must still be accepted, and the rejected topic must hold what
//! was answered for.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm_testkit::{ServiceProcess, TestTopics, free_port, http_request, metric, wait_for_status};

const KEY: &str = "bench-key";
const CONNECTIONS: usize = 50;

/// Posts `body` over one keep-alive connection until `stop`; counts answers by status and
/// keeps the largest answer's size. Reconnects when the server closes the connection.
fn client(
    port: u16,
    body: Arc<Vec<u8>>,
    gzip: bool,
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<BTreeMap<u16, u64>>>,
    largest: Arc<AtomicU64>,
) {
    let encoding = if gzip { "Content-Encoding: gzip\r\n" } else { "" };
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n{encoding}Content-Length: {}\r\n\r\n",
        body.len()
    );
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let Ok(mut writer) = stream.try_clone() else { continue };
        let mut reader = BufReader::new(stream);
        while !stop.load(Ordering::Relaxed) {
            if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(&body)).is_err() {
                break;
            }
            let mut status_line = String::new();
            if reader.read_line(&mut status_line).unwrap_or(0) == 0 {
                break;
            }
            let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let (mut length, mut close) = (0, false);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                close |= lower.starts_with("connection:") && lower.contains("close");
            }
            let mut answer = vec![0; length];
            if reader.read_exact(&mut answer).is_err() {
                break;
            }
            largest.fetch_max(length as u64, Ordering::Relaxed);
            *statuses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(status).or_default() += 1;
            if close {
                break;
            }
        }
    }
}

fn flood(name: &str, port: u16, pid: u32, body: Vec<u8>, gzip: bool, seconds: u64) {
    let body = Arc::new(body);
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(BTreeMap::new()));
    let largest = Arc::new(AtomicU64::new(0));
    let before = abm_testkit::rss_bytes(pid);
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (body, stop, statuses, largest) = (body.clone(), stop.clone(), statuses.clone(), largest.clone());
            std::thread::spawn(move || client(port, body, gzip, stop, statuses, largest))
        })
        .collect();
    let mut peak = before;
    while started.elapsed() < Duration::from_secs(seconds) {
        peak = peak.max(abm_testkit::rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    let wall = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let after = abm_testkit::rss_bytes(pid);
    let statuses = statuses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let answered: u64 = statuses.values().sum();
    let by_status: Vec<String> = statuses.iter().map(|(status, n)| format!("{status}: {n}")).collect();
    println!(
        "| {name} | {} KiB | {answered} ({:.0}/s; {}) | {:.0} MiB | {:.0} MiB | {:.0} MiB | {} bytes |",
        body.len() / 1024,
        answered as f64 / wall,
        by_status.join(", "),
        before as f64 / 1_048_576.0,
        peak as f64 / 1_048_576.0,
        after as f64 / 1_048_576.0,
        largest.load(Ordering::Relaxed)
    );
}

fn main() {
    let seconds = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let topics = TestTopics::new("bench-ingest-flood");
    topics.create();
    let port = free_port();
    let mut env = topics.env();
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_INGEST__WRITE_KEYS__BENCH", KEY.into()));
    env.push(("ABM_INGEST__RAW_TOPICS", "false".into()));
    env.push(("ABM_LOG__LEVEL", "warn".into()));
    let ingest = ServiceProcess::start(&abm_testkit::workspace_binary("ingest"), &[], &env);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), "ingest ready");
    let pid = ingest.pid();

    let lines = |width: usize| {
        let line = format!("{}\n", "x".repeat(width - 1));
        line.repeat((1024 * 1024 - 1) / width).into_bytes()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0_u8; 1024 * 1024];
    for _ in 0..64 {
        gz.write_all(&zeros).expect("gzip");
    }
    let bomb = gz.finish().expect("gzip");

    println!(
        "ingest flood: {CONNECTIONS} connections, {seconds} s per shape, ingest defaults (max_body_bytes 1 MiB, max_batch_events 5000)"
    );
    println!("| shape | body | answered | RSS before | RSS peak | RSS after | largest answer |");
    println!("|---|---|---|---|---|---|---|");
    flood("lines-64", port, pid, lines(64), false, seconds);
    flood("lines-256", port, pid, lines(256), false, seconds);
    flood("gzip-bomb", port, pid, bomb, true, seconds);
    // Again, after all that: memory returns to the same level rather than growing.
    flood("lines-256 again", port, pid, lines(256), false, seconds);

    let visit = format!(
        r#"{{"event_id":"after-flood","kind":"web_visit","occurred_at":{},"account_id":"acc-1","properties":{{"url":"/"}}}}"#,
        abm::clock::now_ms()
    );
    let (status, _, answer) =
        http_request(port, "POST", "/v1/events", visit.as_bytes(), &[("Authorization", format!("Bearer {KEY}"))]);
    assert_eq!(status, 200, "ingest still accepts after the flood: {answer}");
    let received = metric(port, "abm_ingest_events_received_total", &[]);
    let accepted = metric(port, "abm_ingest_events_accepted_total", &[]);
    let rejected = metric(port, "abm_ingest_events_rejected_total", &[]);
    println!("ingest flood: events received {received} = accepted {accepted} + rejected {rejected}; still serving");
    assert_eq!(received, accepted + rejected, "conservation");
}
