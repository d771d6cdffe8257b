//! One API across scorer instances, through the real broker: three instances behind one
//! address (a round-robin TCP balancer, as a Kubernetes Service), one killed with SIGKILL and
//! another added while queries go on. Every answer equals the single instance's answer or is a
//! 503 with `Retry-After`; every instance ends up answering for every account.

mod support;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use abm_testkit::{ServiceProcess, TEST_API_TOKEN, http_request, metric, wait_for_status};
use support::*;

const SCORER: &str = env!("CARGO_BIN_EXE_scorer");
const DAY: i64 = 86_400_000;
/// The time every answer is asked at: fixed, so that answers do not change with the clock.
const AT: i64 = 1_765_000_000_000;

/// A round-robin balancer: each connection goes to the next backend that accepts one (a
/// backend that refuses is skipped, as a Service drops an endpoint whose pod is gone).
struct Balancer {
    port: u16,
    backends: Arc<Mutex<Vec<u16>>>,
}

impl Balancer {
    fn start(backends: Vec<u16>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("address").port();
        let backends = Arc::new(Mutex::new(backends));
        let shared = backends.clone();
        std::thread::spawn(move || {
            let mut next = 0usize;
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let ports = shared.lock().expect("lock").clone();
                let mut upstream = None;
                for attempt in 0..ports.len() {
                    let port = ports[(next + attempt) % ports.len()];
                    if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
                        next = (next + attempt + 1) % ports.len();
                        upstream = Some(stream);
                        break;
                    }
                }
                let Some(upstream) = upstream else { continue };
                let (mut c_read, mut u_write) =
                    (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
                let (mut u_read, mut c_write) = (upstream, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut u_write);
                    let _ = u_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Balancer { port, backends }
    }

    fn add(&self, port: u16) {
        self.backends.lock().expect("lock").push(port);
    }
}

fn get(port: u16, path: &str) -> (u16, BTreeMap<String, String>, String) {
    http_request(port, "GET", path, b"", &[("Authorization", format!("Bearer {TEST_API_TOKEN}"))])
}

/// Equal as JSON, numbers within 1e-9 (relative).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, value)| y.get(key).is_some_and(|other| same(value, other)))
        }
        _ => a == b,
    }
}

fn events() -> Vec<EngagementEvent> {
    let mut events = Vec::new();
    for a in 0..40 {
        for n in 0..(5 + a % 7) {
            let t = AT - 40 * DAY + i64::from(a * 13 + n * 29) * 3_600_000;
            let kind = if n % 5 == 4 { EventKind::AdClick } else { EventKind::WebVisit };
            let mut event = EngagementEvent::new(format!("e-{a}-{n}"), kind, t, "test");
            event.account_id = Some(format!("acc-{a:03}"));
            event.contact = Some(Contact { contact_id: Some(format!("c-{a}-{}", n % 3)), ..Contact::default() });
            if kind == EventKind::WebVisit {
                let path = if n % 3 == 0 { "/pricing" } else { "/blog" };
                event.web_visit =
                    Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
            }
            events.push(event);
        }
    }
    events
}

/// The instance's variables: its own id, port and advertised address; a killed member is
/// noticed by the group after 6 s.
fn instance(env: &Env, name: &str, port: u16) -> Vec<(&'static str, String)> {
    let mut vars = env.instance_vars(name);
    vars.retain(|(key, _)| *key != "ABM_HTTP__LISTEN");
    vars.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    vars.push(("ABM_SCORER__ADVERTISED_URL", format!("http://127.0.0.1:{port}")));
    vars.push(("ABM_SCORER__MEMBER_TTL_MS", "4000".into()));
    vars.push(("ABM_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS", "6000".into()));
    vars.push(("ABM_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS", "1000".into()));
    vars
}

/// The single instance's answers, and what the instances answered since.
struct Tally {
    reference: BTreeMap<String, (u16, serde_json::Value)>,
    paths: Vec<String>,
    /// Account answers by the instance that held the account (`x-abm-answered-by`).
    answered: BTreeMap<String, usize>,
    /// Account answers the asked instance got from another one.
    forwarded: usize,
    unavailable: usize,
}

impl Tally {
    /// Asks `path` of the instance (or balancer) at `port`: true when answered (as the single
    /// instance did), false on a 503 (with `Retry-After`); anything else fails the test.
    fn check(&mut self, port: u16, path: &str) -> bool {
        let (status, headers, body) = get(port, path);
        assert_ne!(status, 0, "{path} through {port}: no answer at all");
        let (expected_status, expected) = &self.reference[path];
        if status == 503 {
            assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"), "{path}: a 503 says when to retry");
            self.unavailable += 1;
            return false;
        }
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path} through {port}: {status} {body}"));
        assert_eq!(status, *expected_status, "{path} through {port}: {body}");
        assert!(same(&json, expected), "{path} through {port}:\n{json}\nnot the single instance's\n{expected}");
        if let Some(by) = headers.get("x-abm-answered-by") {
            let asked = headers.get("x-abm-instance").expect("the asked instance says its name");
            *self.answered.entry(by.clone()).or_default() += 1;
            self.forwarded += usize::from(by != asked);
        }
        true
    }

    /// Asks every path of every instance until all answer (none 503), at most 90 s.
    fn settle(&mut self, ports: &[u16], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut all = true;
            for port in ports {
                for path in self.paths.clone() {
                    all &= self.check(*port, &path);
                }
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: answers were still 503 after 90 s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn paths(ids: &[String]) -> Vec<String> {
    let mut paths: Vec<String> = ids.iter().map(|id| format!("/v1/accounts/{id}?at={AT}")).collect();
    paths.push(format!("/v1/accounts?top=25&at={AT}"));
    paths.push(format!("/v1/accounts?top=5&tier=1&at={AT}"));
    paths.push(format!("/v1/accounts?top=10&q=company%20acc-01&at={AT}"));
    paths.push(format!("/v1/accounts/nobody?at={AT}"));
    paths
}

#[test]
fn any_instance_answers_for_every_account_or_says_503() {
    let env = Env::new("one-api");
    env.create_topics();
    let feed = producer();
    // 50 TAL accounts, of which 10 without events; 40 with events.
    for a in 0..50 {
        let tier = [Tier::Tier1, Tier::Tier2, Tier::Tier3][a % 3];
        let id = format!("acc-{a:03}");
        send(&feed, &env.topic(TopicRole::Accounts), &id, &account(&id, tier));
    }
    let events = events();
    for event in &events {
        send(&feed, &env.topic(TopicRole::Engagement), event.account_id.as_deref().unwrap_or(""), event);
    }
    flush(&feed);
    let ids: Vec<String> = (0..50).map(|a| format!("acc-{a:03}")).collect();

    // The single instance's answers, once it has applied every event and committed.
    let ports: Vec<u16> = (0..4).map(|_| abm_testkit::free_port()).collect();
    let mut a = ServiceProcess::start(Path::new(SCORER), &[], &instance(&env, "a", ports[0]));
    wait_for_status(ports[0], "/readyz", 200, Duration::from_secs(60), "A ready");
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(ports[0], "abm_scorer_events_applied_total", &[]) < events.len() as f64
        || metric(ports[0], "abm_scorer_snapshot_age_seconds", &[]) != 0.0
    {
        assert!(Instant::now() < deadline, "A did not apply the events:\n{}", a.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let paths = paths(&ids);
    let mut reference: BTreeMap<String, (u16, serde_json::Value)> = BTreeMap::new();
    for path in &paths {
        let (status, headers, body) = get(ports[0], path);
        assert!(status == 200 || status == 404, "{path}: {status} {body}");
        assert!(headers.contains_key("x-abm-instance"), "{path}: {headers:?}");
        reference.insert(path.clone(), (status, serde_json::from_str(&body).expect("JSON")));
    }
    assert_eq!(reference[&format!("/v1/accounts/nobody?at={AT}")].0, 404);
    let board = &reference[&format!("/v1/accounts?top=25&at={AT}")].1["accounts"];
    assert_eq!(board.as_array().map(Vec::len), Some(25), "{board}");
    let zero = &reference[&format!("/v1/accounts/acc-045?at={AT}")].1;
    assert_eq!(zero["on_tal"], true, "a TAL account without events: {zero}");
    assert_eq!(zero["score"], 0.0);
    let searched = reference[&format!("/v1/accounts?top=10&q=company%20acc-01&at={AT}")].1["accounts"].clone();
    let found: Vec<&str> =
        searched.as_array().expect("array").iter().filter_map(|e| e["account_id"].as_str()).collect();
    assert_eq!(found.len(), 10, "the search matches acc-010..acc-019 by name: {searched}");
    assert!(found.iter().all(|id| id.starts_with("acc-01")), "{found:?}");

    // B and C join; the balancer spreads queries over the three.
    let b = ServiceProcess::start(Path::new(SCORER), &[], &instance(&env, "b", ports[1]));
    let mut c = ServiceProcess::start(Path::new(SCORER), &[], &instance(&env, "c", ports[2]));
    wait_for_status(ports[1], "/readyz", 200, Duration::from_secs(60), "B ready");
    wait_for_status(ports[2], "/readyz", 200, Duration::from_secs(60), "C ready");
    let balancer = Balancer::start(ports[..3].to_vec());

    let mut tally = Tally { reference, paths: paths.clone(), answered: BTreeMap::new(), forwarded: 0, unavailable: 0 };
    tally.settle(&ports[..3], "three instances");
    for instance in ["a", "b", "c"] {
        let id = format!("{}-{instance}", env.prefix());
        assert!(tally.answered.get(&id).copied().unwrap_or(0) > 0, "{id} answered nothing: {:?}", tally.answered);
    }
    let forwarded = |port: u16| metric(port, "abm_scorer_queries_forwarded_total", &["outcome=\"answered\""]);
    assert!(forwarded(ports[0]) + forwarded(ports[1]) + forwarded(ports[2]) > 0.0, "queries were forwarded");
    assert!(tally.forwarded > 0, "accounts were answered by their holder through another instance");

    // C is killed; queries through the balancer go on while its partitions move.
    c.signal("KILL");
    let _ = c.wait(Duration::from_secs(10));
    let mut during = 0;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        for path in &paths {
            tally.check(balancer.port, path);
            during += 1;
        }
    }
    tally.settle(&ports[..2], "after C was killed");

    // D is added behind the balancer; queries go on while partitions move to it.
    let d = ServiceProcess::start(Path::new(SCORER), &[], &instance(&env, "d", ports[3]));
    balancer.add(ports[3]);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for path in &paths {
            tally.check(balancer.port, path);
            during += 1;
        }
    }
    wait_for_status(ports[3], "/readyz", 200, Duration::from_secs(60), "D ready");
    let survivors = [ports[0], ports[1], ports[3]];
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(ports[3], "abm_scorer_partitions_held", &["state=\"ready\""]) == 0.0 {
        assert!(Instant::now() < deadline, "D was given no partition");
        std::thread::sleep(Duration::from_millis(200));
    }
    tally.settle(&survivors, "after D was added");
    let d_id = format!("{}-d", env.prefix());
    assert!(tally.answered.get(&d_id).copied().unwrap_or(0) > 0, "D answered nothing: {:?}", tally.answered);
    for port in survivors {
        assert_eq!(metric(port, "abm_scorer_misplaced_events_total", &[]), 0.0);
    }
    eprintln!(
        "queries while instances came and went: {during}; 503s: {}; account answers by holder: {:?}, {} of them forwarded",
        tally.unavailable, tally.answered, tally.forwarded
    );
    drop((b, d));
    a.signal("TERM");
    let _ = a.wait(Duration::from_secs(30));
}
