//! Side by side with the Kafka Streams peer (benches/peers/kafka-streams) on the same broker,
//! the same pre-loaded topic and the same machine, in one run: a cross-check of the results
//! and the time to drain the topic, peak RSS.
//!
//!     deploy/local/bench.sh peer
//!
//! Needs Maven and Java 17 (the peer is built with `mvn package` first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use abm::sim::Rng;
use abm::testkit::{
    ServiceProcess, TestTopics, flush, free_port, http_get, metric, producer, read_all, read_all_bytes, send,
};
use abm::topics::TopicRole;
use abm_schemas::{Account, Contact, DemoRequest, EngagementEvent, EventKind, ScoreCrossing, Tier, WebVisit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const DAY: i64 = 86_400_000;

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn stream(count: u64, accounts: u64) -> Vec<EngagementEvent> {
    let mut rng = Rng::new(77);
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
        - 30 * DAY;
    let titles = ["VP Finance", "Director of Data", "Engineer", "Analyst"];
    let paths = ["/", "/pricing", "/docs", "/careers", "/blog"];
    (0..count)
        .map(|n| {
            let account = rng.below(accounts);
            let t = start + (n as i64) * (30 * DAY / count as i64);
            let id = if n > 0 && rng.below(50) == 0 { format!("p-{}", n - 1) } else { format!("p-{n}") };
            let (kind, demo) =
                if rng.below(200) == 0 { (EventKind::DemoRequest, true) } else { (EventKind::WebVisit, false) };
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
                event.web_visit =
                    Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
            }
            event
        })
        .collect()
}

/// Offsets the peer's consumer group (its application id) has committed on `topic`.
fn committed(group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer =
        abm::testkit::kafka().client_config("bench-peer-lag").set("group.id", group).create().expect("client");
    let mut list = TopicPartitionList::new();
    for p in 0..6 {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed");
    committed.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum()
}

fn main() {
    let count: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let accounts = 2_000;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let peer_dir = root.join("benches/peers/kafka-streams");
    let status = Command::new("mvn").args(["-q", "-B", "package"]).current_dir(&peer_dir).status().expect("mvn runs");
    assert!(status.success(), "building the peer failed");

    let topics = TestTopics::new("bench-peer");
    topics.create();
    let kafka = producer();
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
        send(&kafka, &topics.name(TopicRole::Accounts), &account.account_id, &account);
    }
    let input = topics.name(TopicRole::Engagement);
    for event in stream(count, accounts) {
        send(&kafka, &input, event.account_id.as_deref().unwrap_or(""), &event);
    }
    flush(&kafka);
    println!("peer bench: pre-loaded {count} events for {accounts} accounts");

    // Ours.
    let port = free_port();
    let mut env = topics.env();
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_SCORER__GROUP_ID", format!("{}-s", topics.prefix)));
    env.push(("ABM_SCORER__INSTANCE_ID", format!("{}-s", topics.prefix)));
    env.push(("ABM_LOG__LEVEL", "warn".into()));
    let started = Instant::now();
    let scorer = ServiceProcess::start(&abm::testkit::workspace_binary("scorer"), &[], &env);
    while metric(port, "abm_scorer_events_applied_total", &[]) + metric(port, "abm_scorer_duplicates_total", &[])
        < count as f64
        || metric(port, "abm_scorer_snapshot_age_seconds", &[]) > 0.0
    {
        assert!(started.elapsed() < Duration::from_secs(900), "the scorer did not drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ours = started.elapsed().as_secs_f64();
    let ours_rss = peak_rss_mib(scorer.pid());

    // The peer.
    let app_id = format!("{}-peer", topics.prefix);
    let crossings_topic = format!("{}.peer-crossings", topics.prefix);
    let scores_topic = format!("{}.peer-scores", topics.prefix);
    let state_dir = std::env::temp_dir().join(&app_id);
    let peer_env = [
        ("PEER_BOOTSTRAP", abm::testkit::bootstrap_servers()),
        ("PEER_APP_ID", app_id.clone()),
        ("PEER_INPUT", input.clone()),
        ("PEER_ACCOUNTS", topics.name(TopicRole::Accounts)),
        ("PEER_CROSSINGS", crossings_topic.clone()),
        ("PEER_SCORES", scores_topic.clone()),
        ("PEER_SCHEMAS", root.join("schemas/avro").display().to_string()),
        ("PEER_STATE_DIR", state_dir.display().to_string()),
    ];
    let jar = peer_dir.join("target/abm-streams-peer.jar").display().to_string();
    let started = Instant::now();
    let peer = ServiceProcess::start(Path::new("java"), &["-Xmx1g", "-jar", &jar], &peer_env);
    let end: i64 = {
        let consumer: BaseConsumer = abm::testkit::kafka().client_config("bench-peer-end").create().expect("client");
        (0..6).map(|p| consumer.fetch_watermarks(&input, p, Duration::from_secs(10)).map_or(0, |(_, high)| high)).sum()
    };
    while committed(&app_id, &input) < end {
        assert!(started.elapsed() < Duration::from_secs(900), "the peer did not drain:\n{}", peer.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let theirs = started.elapsed().as_secs_f64();
    let theirs_rss = peak_rss_mib(peer.pid());

    // Cross-check: every account's final score, and the crossing ids.
    let mut peer_scores: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (key, value) in read_all_bytes(&scores_topic) {
        peer_scores.insert(key, serde_json::from_slice(&value).expect("JSON"));
    }
    let mut mismatches = 0;
    for (account, theirs) in &peer_scores {
        let (_, body) = http_get(port, &format!("/v1/accounts/{account}")).expect("scorer answers");
        let ours: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let (a, b) =
            (ours["engagement"].as_f64().unwrap_or(f64::NAN), theirs["engagement"].as_f64().unwrap_or(f64::NAN));
        let same = (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
            && ours["events_applied"] == theirs["applied"]
            && ours["duplicates"] == theirs["duplicates"];
        if !same {
            mismatches += 1;
            if mismatches <= 3 {
                println!(
                    "peer bench: MISMATCH {account}: ours E={a} applied={} dup={}, peer E={b} applied={} dup={}",
                    ours["events_applied"], ours["duplicates"], theirs["applied"], theirs["duplicates"]
                );
            }
        }
    }
    let our_crossings: BTreeSet<String> = read_all::<ScoreCrossing>(&topics.name(TopicRole::ScoreCrossings))
        .into_iter()
        .map(|(_, c)| c.crossing_id)
        .collect();
    let peer_crossings: BTreeSet<String> = read_all_bytes(&crossings_topic)
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice::<serde_json::Value>(&v).expect("JSON")["crossing_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    println!(
        "peer bench: cross-check: {} accounts, {mismatches} score mismatches; crossings ours {} peer {} equal={}",
        peer_scores.len(),
        our_crossings.len(),
        peer_crossings.len(),
        our_crossings == peer_crossings
    );
    println!("| | ours (scorer) | peer (Kafka Streams) | ours / peer |");
    println!("|---|---|---|---|");
    println!(
        "| drain {count} events | {:.0} events/s ({ours:.1} s) | {:.0} events/s ({theirs:.1} s) | {:.2} |",
        count as f64 / ours,
        count as f64 / theirs,
        theirs / ours
    );
    println!("| peak RSS | {ours_rss:.0} MiB | {theirs_rss:.0} MiB | {:.2} |", ours_rss / theirs_rss.max(1.0));
    drop(peer);
    let _ = std::fs::remove_dir_all(state_dir);
}
