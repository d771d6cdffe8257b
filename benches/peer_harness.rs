//! The side-by-side harness shared by the peer benchmark (`benches/peer.rs`) and the peer
//! cross-check test (`tests/peer_crosscheck.rs`): the seeded stream, starting either side on a
//! topic set (ours: the release scorer; the peer: the Kafka Streams jar), following a consumer
//! group's committed offsets, and the cross-check of final scores and crossing ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{Account, Contact, DemoRequest, EngagementEvent, EventKind, ScoreCrossing, Tier, WebVisit};
use abm_sim::Rng;
use abm_testkit::{
    ServiceProcess, TestProducer, TestTopics, flush, free_port, http_get, metric, producer, read_all, read_all_bytes,
    send,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

pub const DAY: i64 = 86_400_000;
pub const PARTITIONS: i32 = 6;
pub const TIMEOUT: Duration = Duration::from_secs(900);

pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub use abm::clock::now_ms;

/// Event `n` of a seeded stream over `accounts` accounts at event time `t`: web visits by six
/// contacts per account with four titles, 1 in 200 a demo request, 1 in 50 a retry of the
/// previous event (a duplicate id).
pub fn event(rng: &mut Rng, n: u64, accounts: u64, t: i64, tag: &str) -> (u64, EngagementEvent) {
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
pub fn history(seed: u64, count: u64, accounts: u64, end: i64, tag: &str) -> Vec<EngagementEvent> {
    let mut rng = Rng::new(seed);
    let span = 30 * DAY;
    (0..count).map(|n| event(&mut rng, n, accounts, end - span + (n as i64) * (span / count as i64), tag).1).collect()
}

pub fn load_tal(kafka: &TestProducer, topics: &TestTopics, accounts: u64) {
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
            committee: None,
            updated_at: 0,
        };
        send(kafka, &topics.name(TopicRole::Accounts), &account.account_id, &account);
    }
}

/// Committed offsets of `group` on `topic`, per partition.
pub fn committed(consumer: &BaseConsumer, topic: &str) -> Vec<i64> {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    match consumer.committed_offsets(list, Duration::from_secs(10)) {
        Ok(list) => list.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).collect(),
        Err(_) => vec![0; PARTITIONS as usize],
    }
}

pub fn group_reader(group: &str) -> BaseConsumer {
    // read_uncommitted: the offset fetch then never waits for pending transactional offsets
    // (those become visible only with the commit marker either way).
    abm_testkit::kafka()
        .client_config("bench-peer-lag")
        .set("group.id", group)
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("client")
}

pub fn end_offset(topic: &str) -> i64 {
    let consumer: BaseConsumer = abm_testkit::kafka().client_config("bench-peer-end").create().expect("client");
    (0..PARTITIONS)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |(_, high)| high))
        .sum()
}

/// How a side went through a topic: seconds from `started` until its first commit past the
/// offsets it started from, how many events that commit covered, and seconds until all of them.
pub struct Progress {
    pub first_commit: f64,
    pub first_events: i64,
    pub done: f64,
}

impl Progress {
    /// Events per second between the first commit and the last (start-up excluded).
    pub fn steady_rate(&self, events: i64) -> f64 {
        (events - self.first_events) as f64 / (self.done - self.first_commit).max(1e-3)
    }
}

/// Waits until `group` has committed `topic` up to `end`.
pub fn wait_committed(group: &str, topic: &str, end: i64, started: Instant, who: &ServiceProcess) -> Progress {
    let consumer = group_reader(group);
    let from: i64 = committed(&consumer, topic).iter().sum();
    let mut first = None;
    loop {
        let at: i64 = committed(&consumer, topic).iter().sum();
        if at > from && first.is_none() {
            first = Some((started.elapsed().as_secs_f64(), at - from));
        }
        if at >= end {
            let (first_commit, first_events) = first.unwrap_or((0.0, 0));
            return Progress { first_commit, first_events, done: started.elapsed().as_secs_f64() };
        }
        assert!(started.elapsed() < TIMEOUT, "{group} did not reach offset {end} of {topic}:\n{}", who.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One side under test: how to start it on a topic set, and which consumer group it commits as.
pub struct Side {
    pub name: &'static str,
    pub root: PathBuf,
}

impl Side {
    pub fn group(&self, topics: &TestTopics) -> String {
        format!("{}-{}", topics.prefix, self.name)
    }

    /// Starts the side on `topics`; ours serves its API on `port`.
    pub fn start(&self, topics: &TestTopics, port: u16) -> ServiceProcess {
        let group = self.group(topics);
        if self.name == "ours" {
            let mut env = topics.env();
            env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
            env.push(("ABM_SCORER__GROUP_ID", group.clone()));
            env.push(("ABM_SCORER__INSTANCE_ID", group));
            env.push(("ABM_LOG__LEVEL", "warn".into()));
            ServiceProcess::start(&abm_testkit::workspace_binary("scorer"), &[], &env)
        } else {
            let env = [
                ("PEER_BOOTSTRAP", abm_testkit::bootstrap_servers()),
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

/// Builds the peer's jar with Maven (`benches/peers/kafka-streams/target/abm-streams-peer.jar`).
pub fn build_peer(root: &Path) {
    let status = Command::new("mvn")
        .args(["-q", "-B", "package"])
        .current_dir(root.join("benches/peers/kafka-streams"))
        .status()
        .expect("mvn runs (Maven and Java 17 are needed for the peer)");
    assert!(status.success(), "building the peer failed");
}

/// Final results of both sides compared.
#[derive(Debug)]
pub struct CrossCheck {
    pub our_accounts: usize,
    pub peer_accounts: usize,
    pub mismatches: usize,
    /// The first few mismatches, described.
    pub examples: Vec<String>,
    pub our_crossings: Vec<String>,
    pub peer_crossings: Vec<String>,
}

impl CrossCheck {
    /// Same accounts, same scores, the same crossing ids on both sides, none twice.
    pub fn agree(&self) -> bool {
        let (ours, peer): (BTreeSet<&String>, BTreeSet<&String>) =
            (self.our_crossings.iter().collect(), self.peer_crossings.iter().collect());
        self.mismatches == 0
            && self.our_accounts == self.peer_accounts
            && ours == peer
            && ours.len() == self.our_crossings.len()
            && peer.len() == self.peer_crossings.len()
    }

    pub fn summary(&self) -> String {
        let distinct = |ids: &[String]| ids.iter().collect::<BTreeSet<_>>().len();
        format!(
            "accounts ours {} peer {}, {} score mismatches{}; crossings ours {} ({} distinct) peer {} ({} distinct); {}",
            self.our_accounts,
            self.peer_accounts,
            self.mismatches,
            if self.examples.is_empty() { String::new() } else { format!(" ({})", self.examples.join("; ")) },
            self.our_crossings.len(),
            distinct(&self.our_crossings),
            self.peer_crossings.len(),
            distinct(&self.peer_crossings),
            if self.agree() { "AGREE" } else { "DISAGREE" }
        )
    }
}

/// The peer's latest score per account once they account for all `events` sent (applied or
/// duplicate). The peer writes scores in a second sub-topology, behind a repartition topic: its
/// input offsets reach the end before its scores do. Read again until they do (or TIMEOUT).
fn peer_scores_covering(topics: &TestTopics, events: u64) -> BTreeMap<String, serde_json::Value> {
    let started = Instant::now();
    loop {
        let mut peer_scores: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (key, value) in read_all_bytes(&format!("{}.peer-scores", topics.prefix)) {
            peer_scores.insert(key, serde_json::from_slice(&value).expect("JSON"));
        }
        let covered: u64 = peer_scores
            .values()
            .map(|s| s["applied"].as_u64().unwrap_or(0) + s["duplicates"].as_u64().unwrap_or(0))
            .sum();
        if covered >= events || started.elapsed() > TIMEOUT {
            if covered < events {
                println!("peer side by side: the peer's scores account for {covered} of {events} events");
            }
            return peer_scores;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compares the peer's latest scores and crossings on `topics` with ours (the scorer serving
/// its API on `port`): engagement within 1e-9 relative, events applied and duplicates equal.
pub fn cross_check(topics: &TestTopics, port: u16, events: u64) -> CrossCheck {
    let peer_scores = peer_scores_covering(topics, events);
    let mut mismatches = 0;
    let mut examples = Vec::new();
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
            if examples.len() < 3 {
                examples.push(format!(
                    "{account}: ours E={a} applied={} dup={}, peer E={b} applied={} dup={}",
                    mine["events_applied"], mine["duplicates"], theirs["applied"], theirs["duplicates"]
                ));
            }
        }
    }
    let our_crossings = read_all::<ScoreCrossing>(&topics.name(TopicRole::ScoreCrossings))
        .into_iter()
        .map(|(_, c)| c.crossing_id)
        .collect();
    let peer_crossings = read_all_bytes(&format!("{}.peer-crossings", topics.prefix))
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice::<serde_json::Value>(&v).expect("JSON")["crossing_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    CrossCheck {
        our_accounts: metric(port, "abm_scorer_accounts", &[]) as usize,
        peer_accounts: peer_scores.len(),
        mismatches,
        examples,
        our_crossings,
        peer_crossings,
    }
}

/// What [`drain_kill_recover`] measured.
pub struct SideBySide {
    pub our_drain: Progress,
    pub peer_drain: Progress,
    pub our_rss_mib: f64,
    pub peer_rss_mib: f64,
    /// Events appended while both were down.
    pub extra: u64,
    pub our_recovery: Progress,
    pub peer_recovery: Progress,
    pub cross_check: CrossCheck,
}

/// Pre-loads `count` events for `accounts` accounts on a fresh topic set; starts ours, then
/// the peer, each until its group has committed the whole topic; kills both with SIGKILL,
/// appends 10% more events, restarts each in turn until caught up; then cross-checks.
pub fn drain_kill_recover(root: &Path, count: u64, accounts: u64) -> SideBySide {
    let ours = Side { name: "ours", root: root.to_path_buf() };
    let peer = Side { name: "peer", root: root.to_path_buf() };
    let topics = TestTopics::new("peer-side-by-side");
    topics.create();
    let kafka = producer();
    load_tal(&kafka, &topics, accounts);
    let input = topics.name(TopicRole::Engagement);
    for e in history(77, count, accounts, now_ms() - DAY, "p") {
        send(&kafka, &input, e.account_id.as_deref().unwrap_or(""), &e);
    }
    flush(&kafka);
    let end = end_offset(&input);
    println!("peer side by side: pre-loaded {count} events for {accounts} accounts");
    let port = free_port();
    // Each side alone, in turn, from its start until its group has committed up to `end`.
    let run = |side: &Side, port: u16, end: i64| {
        let started = Instant::now();
        let process = side.start(&topics, port);
        let progress = wait_committed(&side.group(&topics), &input, end, started, &process);
        (process, progress)
    };
    let (our_process, our_drain) = run(&ours, port, end);
    let (peer_process, peer_drain) = run(&peer, 0, end);
    let (our_rss_mib, peer_rss_mib) = (peak_rss_mib(our_process.pid()), peak_rss_mib(peer_process.pid()));

    our_process.signal("KILL");
    peer_process.signal("KILL");
    drop((our_process, peer_process));
    let extra = (count / 10).max(100);
    for e in history(78, extra, accounts, now_ms(), "r") {
        send(&kafka, &input, e.account_id.as_deref().unwrap_or(""), &e);
    }
    flush(&kafka);
    let end = end_offset(&input);
    let (our_process, our_recovery) = run(&ours, port, end);
    let (peer_process, peer_recovery) = run(&peer, 0, end);

    let cross_check = cross_check(&topics, port, count + extra);
    println!("peer side by side: cross-check after kill -9 and recovery: {}", cross_check.summary());
    drop((our_process, peer_process));
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(peer.group(&topics)));
    SideBySide { our_drain, peer_drain, our_rss_mib, peer_rss_mib, extra, our_recovery, peer_recovery, cross_check }
}
