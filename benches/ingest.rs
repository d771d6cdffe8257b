//! Ingest throughput: accepted events per second, and per CPU-second of the ingest process
//! ("per core"), over HTTP batches (the native format and Segment's `/v1/batch`), over the
//! raw-topic path, and the identity stitcher's rate, against the broker under test.
//!
//!     deploy/local/bench.sh ingest
//!
//! Needs a running broker (`KAFKA_BOOTSTRAP_SERVERS`, default 127.0.0.1:9092) and the release
//! binaries (`cargo build --release --bins`); bench.sh does both.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{Account, Tier};
use abm_testkit::{ServiceProcess, TestTopics, flush, free_port, metric, producer, send, send_bytes, wait_for_status};

const KEY: &str = "bench-key";
const ACCOUNTS: usize = 1000;

use abm::clock::now_ms;

fn event_json(n: u64) -> String {
    let account = n as usize % ACCOUNTS;
    let path = ["/", "/pricing", "/docs", "/blog/abm"][n as usize % 4];
    format!(
        r#"{{"event_id":"b-{n}","kind":"web_visit","occurred_at":{},"contact":{{"id":"c{}","email":"p{}@company{account}.example"}},"properties":{{"url":"https://vendor.example{path}"}},"user_agent":"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"}}"#,
        now_ms(),
        n % 7,
        n % 7
    )
}

/// The same page view as a Segment message, from an identified user (`context.traits.email`):
/// resolved at the collector, as `event_json` is.
fn segment_json(n: u64) -> String {
    let account = n as usize % ACCOUNTS;
    let path = ["/", "/pricing", "/docs", "/blog/abm"][n as usize % 4];
    format!(
        r#"{{"type":"page","messageId":"s-{n}","anonymousId":"a{}","userId":"c{}","timestamp":{},"context":{{"traits":{{"email":"p{}@company{account}.example"}},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0","page":{{"url":"https://vendor.example{path}"}}}}}}"#,
        n % 7,
        n % 7,
        now_ms(),
        n % 7
    )
}

/// How the HTTP clients send: the native `/v1/events` array, or a Segment `/v1/batch`.
#[derive(Clone, Copy)]
enum Protocol {
    Native,
    Segment,
}

impl Protocol {
    fn request(self, first: u64, batch: usize) -> (&'static str, String) {
        match self {
            Protocol::Native => (
                "/v1/events",
                format!("[{}]", (first..first + batch as u64).map(event_json).collect::<Vec<_>>().join(",")),
            ),
            Protocol::Segment => (
                "/v1/batch",
                format!(
                    r#"{{"batch":[{}]}}"#,
                    (first..first + batch as u64).map(segment_json).collect::<Vec<_>>().join(",")
                ),
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Native => "http   ",
            Protocol::Segment => "segment",
        }
    }
}

fn publish_tal(topics: &TestTopics) {
    let kafka = producer();
    for i in 0..ACCOUNTS {
        let account = Account {
            account_id: format!("acc-{i}"),
            name: format!("Company {i}"),
            domains: vec![format!("company{i}.example")],
            tier: [Tier::Tier1, Tier::Tier2, Tier::Tier3][i % 3],
            owner: "sdr@vendor.example".into(),
            industry: None,
            employees: None,
            committee: None,
            updated_at: 0,
        };
        send(&kafka, &topics.name(TopicRole::Accounts), &account.account_id, &account);
    }
    flush(&kafka);
}

/// One keep-alive connection posting batches; returns the events accepted.
fn client(port: u16, protocol: Protocol, batch: usize, until: Instant, next_id: Arc<AtomicU64>) -> u64 {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut accepted = 0;
    while Instant::now() < until {
        let first = next_id.fetch_add(batch as u64, Ordering::Relaxed);
        let (path, body) = protocol.request(first, batch);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        writer.write_all(request.as_bytes()).expect("write");
        writer.write_all(body.as_bytes()).expect("write");
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut response = vec![0; length];
        reader.read_exact(&mut response).expect("body");
        assert!(status_line.contains(" 200 "), "{status_line} {}", String::from_utf8_lossy(&response));
        accepted += batch as u64;
    }
    accepted
}

fn http_path(protocol: Protocol, clients: usize, batch: usize, seconds: u64) {
    let topics = TestTopics::new("bench-ingest-http");
    topics.create();
    publish_tal(&topics);
    let port = free_port();
    let mut env = topics.env();
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_INGEST__WRITE_KEYS__BENCH", KEY.into()));
    env.push(("ABM_INGEST__RAW_TOPICS", "false".into()));
    env.push(("ABM_LOG__LEVEL", "warn".into()));
    let ingest = ServiceProcess::start(&abm_testkit::workspace_binary("ingest"), &[], &env);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), "ingest ready");
    let next_id = Arc::new(AtomicU64::new(0));
    // Warm-up.
    client(port, protocol, batch, Instant::now() + Duration::from_secs(2), next_id.clone());

    let cpu_before = abm_testkit::cpu_seconds(ingest.pid());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let next_id = next_id.clone();
            std::thread::spawn(move || client(port, protocol, batch, until, next_id))
        })
        .collect();
    let accepted: u64 = handles.into_iter().map(|h| h.join().expect("client")).sum();
    let wall = started.elapsed().as_secs_f64();
    let cpu = abm_testkit::cpu_seconds(ingest.pid()) - cpu_before;
    let p50 = metric(port, "abm_ingest_produce_latency_seconds_sum", &[])
        / metric(port, "abm_ingest_produce_latency_seconds_count", &[]).max(1.0);
    println!(
        "ingest {} clients={clients} batch={batch}: {accepted} events in {wall:.1}s = {:.0} events/s; ingest CPU {cpu:.1}s = {:.0} events per CPU-second; mean produce latency {:.1} ms",
        protocol.name(),
        accepted as f64 / wall,
        accepted as f64 / cpu.max(0.001),
        p50 * 1000.0
    );
}

/// The identity stitcher: `visitors` anonymous visitors' `pages` page views wait on
/// `abm.identity` (written there directly, the collector's work not counted), then one
/// identify each releases them; the rate is the stitcher's, from its first record to the
/// last event released, with its process's CPU.
fn stitch_path(visitors: u64, pages: u64) {
    let topics = TestTopics::new("bench-ingest-stitch");
    topics.create();
    publish_tal(&topics);
    let kafka = producer();
    let identity = topics.name(TopicRole::Identity);
    for v in 0..visitors {
        let visitor = format!("v{v}");
        for p in 0..pages {
            let mut event = abm_schemas::EngagementEvent::new(
                format!("{visitor}-{p}"),
                abm_schemas::EventKind::WebVisit,
                now_ms(),
                "http:bench",
            );
            event.web_visit = Some(abm_schemas::WebVisit {
                url: "https://vendor.example/pricing".into(),
                referrer: None,
                title: None,
            });
            let observed =
                abm_schemas::Visitor::waiting(&visitor, abm_schemas::encode(&event).expect("encodes"), now_ms());
            send(&kafka, &identity, &visitor, &observed);
        }
        let identify = abm_schemas::Visitor {
            visitor_id: visitor.clone(),
            contact: Some(abm_schemas::Contact {
                email: Some(format!("p{v}@company{}.example", v as usize % ACCOUNTS)),
                ..Default::default()
            }),
            updated_at: now_ms(),
            ..abm_schemas::Visitor::default()
        };
        send(&kafka, &identity, &visitor, &identify);
    }
    flush(&kafka);
    let port = free_port();
    let mut env = topics.env();
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_INGEST__RAW_TOPICS", "false".into()));
    env.push(("ABM_INGEST__STITCH__GROUP_ID", format!("{}-stitch", topics.prefix)));
    env.push(("ABM_INGEST__STITCH__INSTANCE_ID", format!("{}-stitch", topics.prefix)));
    env.push(("ABM_LOG__LEVEL", "warn".into()));
    let ingest = ServiceProcess::start(&abm_testkit::workspace_binary("ingest"), &[], &env);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), "ingest ready");
    let cpu_before = abm_testkit::cpu_seconds(ingest.pid());
    let started = Instant::now();
    let events = visitors * pages;
    while metric(port, "abm_ingest_stitch_events_total", &["outcome=\"resolved\""]) < events as f64 {
        assert!(started.elapsed() < Duration::from_secs(600), "the stitcher did not release every event");
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = abm_testkit::cpu_seconds(ingest.pid()) - cpu_before;
    println!(
        "ingest stitch visitors={visitors} pages={pages}: {events} events released in {wall:.1}s = {:.0} events/s (records in: {}); ingest CPU {cpu:.1}s = {:.0} events per CPU-second",
        events as f64 / wall,
        events + visitors,
        events as f64 / cpu.max(0.001)
    );
}

fn raw_path(records: u64) {
    let topics = TestTopics::new("bench-ingest-raw");
    topics.create();
    publish_tal(&topics);
    let kafka = producer();
    let raw = topics.name(TopicRole::RawWebVisits);
    for n in 0..records {
        send_bytes(&kafka, &raw, "tracker", event_json(n).as_bytes());
    }
    flush(&kafka);
    let port = free_port();
    let mut env = topics.env();
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_INGEST__GROUP_ID", format!("{}-group", topics.prefix)));
    env.push(("ABM_LOG__LEVEL", "warn".into()));
    let started = Instant::now();
    let ingest = ServiceProcess::start(&abm_testkit::workspace_binary("ingest"), &[], &env);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), "ingest ready");
    let ready = started.elapsed().as_secs_f64();
    let cpu_before = abm_testkit::cpu_seconds(ingest.pid());
    let drain_started = Instant::now();
    while metric(port, "abm_ingest_events_received_total", &["transport=\"kafka\""]) < records as f64 {
        assert!(drain_started.elapsed() < Duration::from_secs(600), "raw path did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = drain_started.elapsed().as_secs_f64();
    let cpu = abm_testkit::cpu_seconds(ingest.pid()) - cpu_before;
    println!(
        "ingest raw    records={records}: drained in {wall:.1}s = {:.0} events/s; ingest CPU {cpu:.1}s = {:.0} events per CPU-second (start-up {ready:.1}s not counted)",
        records as f64 / wall,
        records as f64 / cpu.max(0.001)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we ignore.
    let seconds = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    http_path(Protocol::Native, 4, 100, seconds);
    http_path(Protocol::Segment, 4, 100, seconds);
    raw_path(std::env::var("BENCH_RAW_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000));
    stitch_path(2_000, 20);
}
