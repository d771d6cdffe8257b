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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm::sim::Rng;
use abm::testkit::{
    ServiceProcess, TestProducer, TestTopics, flush, free_port, http_get, metric, producer, read_all, read_all_bytes,
    send,
};
use abm::topics::TopicRole;
use abm_schemas::{Account, Contact, DemoRequest, EngagementEvent, EventKind, ScoreCrossing, Tier, WebVisit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

const DAY: i64 = 86_400_000;
const PARTITIONS: i32 = 6;
const TIMEOUT: Duration = Duration::from_secs(900);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Event `n` of a seeded stream over `accounts` accounts at event time `t`: web visits by six
/// contacts per account with four titles, 1 in 200 a demo request, 1 in 50 a retry of the
/// previous event (a duplicate id).
fn event(rng: &mut Rng, n: u64, accounts: u64, t: i64, tag: &str) -> (u64, EngagementEvent) {
    let titles = ["VP Finance", "Director of Data", "Engineer", "Analyst"];
    let paths = ["/", "/pricing", "/docs", "/careers", "/blog"];
    let account = rng.below(accounts);
    let id = if n > 0 && rng.below(50) == 0 { format!("{tag}-{}", n - 1) } else { format!("{tag}-{n}") };
    let demo = rng.below(200) == 0;
    let kind = if demo { EventKind::DemoRequest } else { EventKind::WebVisit };
    let mut event = EngagementEvent::new(id, kind, t, "bench");
    event.account_id = Some(format!("acc-{account}"));
    let c = rng.below(6);
    event.contact = Some(Contact {
        contact_id: Some(format!("acc-{account}-c{c}")),
        title: Some(titles[(c % 4) as usize].into()),
        ..Contact::default()
    });
    if demo {
        event.demo_request = Some(DemoRequest { form: "demo".into() });
    } else {
        let path = paths[rng.below(5) as usize];
        event.web_visit = Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
    }
    (account, event)
}

/// `count` events spread over the 30 days before `end`, in event-time order.
fn history(seed: u64, count: u64, accounts: u64, end: i64, tag: &str) -> Vec<EngagementEvent> {
    let mut rng = Rng::new(seed);
    let span = 30 * DAY;
    (0..count).map(|n| event(&mut rng, n, accounts, end - span + (n as i64) * (span / count as i64), tag).1).collect()
}

fn load_tal(kafka: &TestProducer, topics: &TestTopics, accounts: u64) {
    let tiers = [Tier::Tier1, Tier::Tier2, Tier::Tier3, Tier::Untiered];
    for a in 0..accounts {
        let account = Account {
            account_id: format!("acc-{a}"),
            name: format!("Company {a}"),
            domains: vec![format!("acct{a}.example")],
            tier: tiers[(a % 4) as usize],
            owner: "sdr@vendor.example".into(),
            industry: None,
            employees: None,
            updated_at: 0,
        };
        send(kafka, &topics.name(TopicRole::Accounts), &account.account_id, &account);
    }
}

/// Committed offsets of `group` on `topic`, per partition.
fn committed(consumer: &BaseConsumer, topic: &str) -> Vec<i64> {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    match consumer.committed_offsets(list, Duration::from_secs(10)) {
        Ok(list) => list.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).collect(),
        Err(_) => vec![0; PARTITIONS as usize],
    }
}

fn group_reader(group: &str) -> BaseConsumer {
    // read_uncommitted: the offset fetch then never waits for pending transactional offsets
    // (those become visible only with the commit marker either way).
    abm::testkit::kafka()
        .client_config("bench-peer-lag")
        .set("group.id", group)
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("client")
}

fn end_offset(topic: &str) -> i64 {
    let consumer: BaseConsumer = abm::testkit::kafka().client_config("bench-peer-end").create().expect("client");
    (0..PARTITIONS)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |(_, high)| high))
        .sum()
}

/// Waits until `group` has committed `topic` up to `end`: seconds since `started`.
fn wait_committed(group: &str, topic: &str, end: i64, started: Instant, who: &ServiceProcess) -> f64 {
    let consumer = group_reader(group);
    while committed(&consumer, topic).iter().sum::<i64>() < end {
        assert!(started.elapsed() < TIMEOUT, "{group} did not reach offset {end} of {topic}:\n{}", who.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed().as_secs_f64()
}

/// One side under test: how to start it on a topic set, and which consumer group it commits as.
struct Side {
    name: &'static str,
    root: PathBuf,
}

impl Side {
    fn group(&self, topics: &TestTopics) -> String {
        format!("{}-{}", topics.prefix, self.name)
    }

    /// Starts the side on `topics`; ours serves its API on `port`.
    fn start(&self, topics: &TestTopics, port: u16) -> ServiceProcess {
        let group = self.group(topics);
        if self.name == "ours" {
            let mut env = topics.env();
            env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
            env.push(("ABM_SCORER__GROUP_ID", group.clone()));
            env.push(("ABM_SCORER__INSTANCE_ID", group));
            env.push(("ABM_LOG__LEVEL", "warn".into()));
            ServiceProcess::start(&abm::testkit::workspace_binary("scorer"), &[], &env)
        } else {
            let env = [
                ("PEER_BOOTSTRAP", abm::testkit::bootstrap_servers()),
                ("PEER_APP_ID", group.clone()),
                ("PEER_INSTANCE_ID", group.clone()),
                ("PEER_INPUT", topics.name(TopicRole::Engagement)),
                ("PEER_ACCOUNTS", topics.name(TopicRole::Accounts)),
                ("PEER_CROSSINGS", format!("{}.peer-crossings", topics.prefix)),
                ("PEER_SCORES", format!("{}.peer-scores", topics.prefix)),
                ("PEER_SCHEMAS", self.root.join("schemas/avro").display().to_string()),
                ("PEER_STATE_DIR", std::env::temp_dir().join(&group).display().to_string()),
            ];
            let jar = self.root.join("benches/peers/kafka-streams/target/abm-streams-peer.jar");
            ServiceProcess::start(Path::new("java"), &["-Xmx1g", "-jar", &jar.display().to_string()], &env)
        }
    }
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
        abm::testkit::kafka().producer_config("bench-peer-live").set("linger.ms", "0").create().expect("producer");
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let status = Command::new("mvn")
        .args(["-q", "-B", "package"])
        .current_dir(root.join("benches/peers/kafka-streams"))
        .status()
        .expect("mvn runs");
    assert!(status.success(), "building the peer failed");
    let ours = Side { name: "ours", root: root.clone() };
    let peer = Side { name: "peer", root: root.clone() };

    // 1. Drain the same pre-loaded topic.
    let topics = TestTopics::new("bench-peer");
    topics.create();
    let kafka = producer();
    load_tal(&kafka, &topics, accounts);
    let input = topics.name(TopicRole::Engagement);
    for e in history(77, count, accounts, now_ms() - DAY, "p") {
        send(&kafka, &input, e.account_id.as_deref().unwrap_or(""), &e);
    }
    flush(&kafka);
    let end = end_offset(&input);
    println!("peer bench: pre-loaded {count} events for {accounts} accounts");
    let port = free_port();
    let started = Instant::now();
    let our_process = ours.start(&topics, port);
    let our_drain = wait_committed(&ours.group(&topics), &input, end, started, &our_process);
    let started = Instant::now();
    let peer_process = peer.start(&topics, 0);
    let peer_drain = wait_committed(&peer.group(&topics), &input, end, started, &peer_process);
    let (our_rss, peer_rss) = (peak_rss_mib(our_process.pid()), peak_rss_mib(peer_process.pid()));

    // 2. Recovery: SIGKILL both, append events, restart each in turn.
    our_process.signal("KILL");
    peer_process.signal("KILL");
    drop((our_process, peer_process));
    let extra = (count / 10).max(100);
    for e in history(78, extra, accounts, now_ms(), "r") {
        send(&kafka, &input, e.account_id.as_deref().unwrap_or(""), &e);
    }
    flush(&kafka);
    let end = end_offset(&input);
    let started = Instant::now();
    let our_process = ours.start(&topics, port);
    let our_recovery = wait_committed(&ours.group(&topics), &input, end, started, &our_process);
    let started = Instant::now();
    let peer_process = peer.start(&topics, 0);
    let peer_recovery = wait_committed(&peer.group(&topics), &input, end, started, &peer_process);

    // 3. Cross-check after the kill and recovery.
    let scores_topic = format!("{}.peer-scores", topics.prefix);
    let mut peer_scores: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (key, value) in read_all_bytes(&scores_topic) {
        peer_scores.insert(key, serde_json::from_slice(&value).expect("JSON"));
    }
    let mut mismatches = 0;
    for (account, theirs) in &peer_scores {
        let (_, body) = http_get(port, &format!("/v1/accounts/{account}")).expect("scorer answers");
        let mine: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let (a, b) =
            (mine["engagement"].as_f64().unwrap_or(f64::NAN), theirs["engagement"].as_f64().unwrap_or(f64::NAN));
        let same = (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
            && mine["events_applied"] == theirs["applied"]
            && mine["duplicates"] == theirs["duplicates"];
        if !same {
            mismatches += 1;
            if mismatches <= 3 {
                println!(
                    "peer bench: MISMATCH {account}: ours E={a} applied={} dup={}, peer E={b} applied={} dup={}",
                    mine["events_applied"], mine["duplicates"], theirs["applied"], theirs["duplicates"]
                );
            }
        }
    }
    let our_accounts = metric(port, "abm_scorer_accounts", &[]) as usize;
    let our_ids: Vec<String> = read_all::<ScoreCrossing>(&topics.name(TopicRole::ScoreCrossings))
        .into_iter()
        .map(|(_, c)| c.crossing_id)
        .collect();
    let peer_ids: Vec<String> = read_all_bytes(&format!("{}.peer-crossings", topics.prefix))
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice::<serde_json::Value>(&v).expect("JSON")["crossing_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let (our_set, peer_set): (BTreeSet<&String>, BTreeSet<&String>) =
        (our_ids.iter().collect(), peer_ids.iter().collect());
    let agree = mismatches == 0
        && our_accounts == peer_scores.len()
        && our_set == peer_set
        && our_set.len() == our_ids.len()
        && peer_set.len() == peer_ids.len();
    println!(
        "peer bench: cross-check after kill -9 and recovery: accounts ours {our_accounts} peer {}, {mismatches} score \
         mismatches; crossings ours {} ({} distinct) peer {} ({} distinct), same ids: {}; {}",
        peer_scores.len(),
        our_ids.len(),
        our_set.len(),
        peer_ids.len(),
        peer_set.len(),
        our_set == peer_set,
        if agree { "AGREE" } else { "DISAGREE" }
    );
    drop((our_process, peer_process));
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(peer.group(&topics)));

    // 4. Latency at a fixed rate, each side alone on its own fresh topic.
    let (our_latency, our_live_rss) = latency(&ours, accounts, rate, seconds);
    let (peer_latency, peer_live_rss) = latency(&peer, accounts, rate, seconds);

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!("| | ours (scorer) | peer (Kafka Streams) | ours / peer |");
    println!("|---|---|---|---|");
    println!(
        "| drain {count} pre-loaded events (from process start) | {:.0} events/s ({our_drain:.1} s) | {:.0} events/s \
         ({peer_drain:.1} s) | {:.2} |",
        count as f64 / our_drain,
        count as f64 / peer_drain,
        peer_drain / our_drain
    );
    println!("| peak RSS while draining | {our_rss:.0} MiB | {peer_rss:.0} MiB | {:.2} |", ratio(our_rss, peer_rss));
    println!(
        "| recovery after kill -9 ({accounts} accounts' state + {extra} new events) | {our_recovery:.1} s | \
         {peer_recovery:.1} s | {:.2} |",
        ratio(our_recovery, peer_recovery)
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
    assert!(agree, "the cross-check failed: see above");
}
