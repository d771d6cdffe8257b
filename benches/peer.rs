//! Side by side with the Kafka Streams peer (benches/peers/kafka-streams) on the same broker and
//! the same machine, in one run:
//!
//! 1. drain: the same pre-loaded topic, each side started on it in turn; time from process start
//!    until its consumer group's committed offsets reach the end of the topic;
//! 2. recovery: both killed with SIGKILL, more events appended, each restarted in turn; time
//!    from the restart until the committed offsets reach the new end (restore + rejoin + the
//!    appended events);
//! 3. cross-check after recovery: every account's final engagement, events applied and
//!    duplicates, and the set of crossing ids, equal on both sides (and no crossing id twice);
//! 4. latency at a fixed rate: each side on its own fresh topic, the same generated stream sent
//!    at `BENCH_RATE` events/s for `BENCH_SECONDS`; an event's latency is from its send to the
//!    moment its offset is seen committed by the side's consumer group. Both sides commit
//!    outputs and offsets in one Kafka transaction, so that is when its effects become visible
//!    to `read_committed` readers downstream.
//!
//!     deploy/local/bench.sh peer      (BENCH_EVENTS, BENCH_ACCOUNTS, BENCH_RATE, BENCH_SECONDS)
//!
//! Needs Maven and Java 17 (the peer is built with `mvn package` first).

#[path = "peer_harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_sim::Rng;
use abm_testkit::{TestProducer, TestTopics, flush, free_port, metric, producer};
use harness::{PARTITIONS, Side, committed, event, group_reader, load_tal, now_ms, peak_rss_mib, wait_committed};
use rdkafka::producer::{BaseRecord, Producer as _};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Percentiles {
    min: f64,
    p50: f64,
    p99: f64,
    max: f64,
    count: usize,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Percentiles { min: samples[0], p50: at(0.50), p99: at(0.99), max: at(1.0), count: samples.len() }
}

/// Sends `rate` events/s for `seconds` to a fresh topic set while `side` runs on it, and
/// measures each event's send-to-committed latency (ms).
fn latency(side: &Side, accounts: u64, rate: u64, seconds: u64) -> (Percentiles, f64) {
    let topics = TestTopics::new(&format!("bench-peer-live-{}", side.name));
    topics.create();
    let kafka = producer();
    load_tal(&kafka, &topics, accounts);
    flush(&kafka);
    let input = topics.name(TopicRole::Engagement);
    let port = free_port();
    let process = side.start(&topics, port);
    let group = side.group(&topics);
    let live: TestProducer =
        abm_testkit::kafka().producer_config("bench-peer-live").set("linger.ms", "0").create().expect("producer");
    let mut rng = Rng::new(99);

    // Warm-up: one event per partition, committed, so that both sides are past start-up.
    let started = Instant::now();
    for p in 0..PARTITIONS {
        let (_, e) = event(&mut rng, p as u64, accounts, now_ms(), "warm");
        let bytes = abm_schemas::encode(&e).expect("encodes");
        let key = e.account_id.clone().unwrap_or_default();
        live.send(BaseRecord::to(&input).key(&key).payload(&bytes).partition(p)).expect("queued");
    }
    live.flush(Duration::from_secs(30)).expect("flushed");
    wait_committed(&group, &input, i64::from(PARTITIONS), started, &process);

    // Per partition, the send instant of each offset (offsets are contiguous: only we write).
    let sent: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::new(Mutex::new(vec![Vec::new(); PARTITIONS as usize]));
    let total = rate * seconds;
    let sender = {
        let sent = Arc::clone(&sent);
        let input = input.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            for n in 0..total {
                let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (account, e) = event(&mut rng, n, accounts, now_ms(), "live");
                let p = (account % PARTITIONS as u64) as i32;
                let bytes = abm_schemas::encode(&e).expect("encodes");
                let key = e.account_id.clone().unwrap_or_default();
                let mut guard = sent.lock().expect("lock");
                live.send(BaseRecord::to(&input).key(&key).payload(&bytes).partition(p)).expect("queued");
                guard[p as usize].push(Instant::now());
            }
            live.flush(Duration::from_secs(30)).expect("flushed");
        })
    };
    let consumer = group_reader(&group);
    let mut seen = vec![1i64; PARTITIONS as usize]; // past the warm-up event
    let mut samples = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(seconds + 120);
    while samples.len() < total as usize {
        assert!(Instant::now() < deadline, "{} did not commit the live stream:\n{}", side.name, process.stderr());
        let offsets = committed(&consumer, &input);
        let now = Instant::now();
        let sent = sent.lock().expect("lock");
        for (p, &offset) in offsets.iter().enumerate() {
            while seen[p] < offset {
                let k = (seen[p] - 1) as usize;
                samples.push(now.duration_since(sent[p][k]).as_secs_f64() * 1000.0);
                seen[p] += 1;
            }
        }
        drop(sent);
        std::thread::sleep(Duration::from_millis(5));
    }
    sender.join().expect("sender");
    if side.name == "ours" {
        let transactions = metric(port, "abm_scorer_transactions_total", &[]);
        let commit = metric(port, "abm_scorer_snapshot_duration_seconds_sum", &[]);
        println!(
            "peer bench: ours at {rate} events/s: {transactions} transactions, mean commit {:.1} ms",
            commit / transactions.max(1.0) * 1000.0
        );
    }
    (percentiles(samples), peak_rss_mib(process.pid()))
}

fn main() {
    let count: u64 = env_or("BENCH_EVENTS", 200_000);
    let accounts: u64 = env_or("BENCH_ACCOUNTS", 2_000);
    let rate: u64 = env_or("BENCH_RATE", 1_000);
    let seconds: u64 = env_or("BENCH_SECONDS", 30);
    let root = &abm_testkit::repository_root();
    harness::build_peer(root);
    let run = harness::drain_kill_recover(root, count, accounts);
    let (our_latency, our_live_rss) =
        latency(&Side { name: "ours", root: root.to_path_buf() }, accounts, rate, seconds);
    let (peer_latency, peer_live_rss) =
        latency(&Side { name: "peer", root: root.to_path_buf() }, accounts, rate, seconds);

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let (ours, peer) = (&run.our_drain, &run.peer_drain);
    let count_i = count as i64;
    println!("| | ours (scorer) | peer (Kafka Streams) | ours / peer |");
    println!("|---|---|---|---|");
    println!(
        "| drain {count} pre-loaded events, from process start | {:.0} events/s ({:.1} s) | {:.0} events/s ({:.1} s) \
         | {:.2} |",
        count as f64 / ours.done,
        ours.done,
        count as f64 / peer.done,
        peer.done,
        peer.done / ours.done
    );
    println!(
        "| same, from the first commit (start-up excluded) | {:.0} events/s | {:.0} events/s | {:.2} |",
        ours.steady_rate(count_i),
        peer.steady_rate(count_i),
        ratio(ours.steady_rate(count_i), peer.steady_rate(count_i))
    );
    println!(
        "| start-up: process start to first commit | {:.1} s | {:.1} s | {:.2} |",
        ours.first_commit,
        peer.first_commit,
        ratio(ours.first_commit, peer.first_commit)
    );
    println!(
        "| peak RSS while draining | {:.0} MiB | {:.0} MiB | {:.2} |",
        run.our_rss_mib,
        run.peer_rss_mib,
        ratio(run.our_rss_mib, run.peer_rss_mib)
    );
    let (ours, peer) = (&run.our_recovery, &run.peer_recovery);
    println!(
        "| recovery after kill -9: restart to first commit ({accounts} accounts' state restored) | {:.1} s | {:.1} s \
         | {:.2} |",
        ours.first_commit,
        peer.first_commit,
        ratio(ours.first_commit, peer.first_commit)
    );
    println!(
        "| recovery after kill -9: restart to caught up ({} events appended while down) | {:.1} s | {:.1} s | {:.2} |",
        run.extra,
        ours.done,
        peer.done,
        ratio(ours.done, peer.done)
    );
    for (label, f) in [
        ("min", (|p: &Percentiles| p.min) as fn(&Percentiles) -> f64),
        ("p50", |p: &Percentiles| p.p50),
        ("p99", |p: &Percentiles| p.p99),
        ("max", |p: &Percentiles| p.max),
    ] {
        let (a, b) = (f(&our_latency), f(&peer_latency));
        println!(
            "| latency {label} at {rate} events/s ({} events) | {a:.0} ms | {b:.0} ms | {:.2} |",
            our_latency.count,
            ratio(a, b)
        );
    }
    println!(
        "| peak RSS at {rate} events/s | {our_live_rss:.0} MiB | {peer_live_rss:.0} MiB | {:.2} |",
        ratio(our_live_rss, peer_live_rss)
    );
    assert!(run.cross_check.agree(), "the cross-check failed: {}", run.cross_check.summary());
}
