//! The alerter against the real broker: policy by alert id, kill -9, webhooks with a local
//! HTTP receiver (500s, hangs, parking and replay).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{Account, CrossingKind, SalesAlert, ScoreCrossing, Tier};
use abm_sim::Rng;
use abm_testkit::{
    ServiceProcess, TestTopics, flush, free_port, metric, producer, read_all, read_all_bytes, run_to_exit, send,
    send_bytes, wait_for_status,
};
use alerter::policy::{Decision, History, PolicyConfig, decide};

const ALERTER: &str = env!("CARGO_BIN_EXE_alerter");
const H: i64 = 3_600_000;
const T0: i64 = 1_700_000_000_000;

fn crossing(account: &str, kind: CrossingKind, sequence: i64, as_of: i64) -> ScoreCrossing {
    ScoreCrossing {
        crossing_id: format!("{account}:{}:{sequence}", kind.as_str()),
        account_id: account.into(),
        kind,
        sequence,
        tier: Tier::Tier2,
        score: 90.0,
        threshold: 75.0,
        engagement: 90.0,
        breadth: 2,
        multiplier: 1.25,
        as_of,
        trigger_event_id: format!("e-{sequence}"),
        top_rules: vec![abm_schemas::RuleContribution { rule: "pricing_page".into(), points: 45.0 }],
        contacts: vec![],
        recent_events: vec![],
        coverage: None,
        model_version: Some("0123456789abcdef".into()),
        replayed: false,
    }
}

fn tal_account(id: &str, tier: Tier) -> Account {
    Account {
        account_id: id.into(),
        name: format!("Company {id}"),
        domains: vec![format!("{id}.example")],
        tier,
        owner: format!("owner-of-{id}@vendor.example"),
        industry: None,
        employees: None,
        committee: None,
        updated_at: 0,
    }
}

struct Alerter {
    topics: TestTopics,
    port: u16,
}

impl Alerter {
    fn new(name: &str) -> Alerter {
        let topics = TestTopics::new(name);
        topics.create();
        Alerter { topics, port: free_port() }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars = self.topics.env();
        vars.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{}", self.port)));
        vars.push(("ABM_ALERTER__GROUP_ID", format!("{}-alerter", self.topics.prefix)));
        vars.push(("ABM_ALERTER__INSTANCE_ID", format!("{}-instance", self.topics.prefix)));
        vars
    }

    fn start(&self, args: &[&str]) -> ServiceProcess {
        let process = ServiceProcess::start(Path::new(ALERTER), args, &self.env());
        wait_for_status(self.port, "/readyz", 200, Duration::from_secs(60), "alerter did not get ready");
        process
    }

    fn topic(&self, role: TopicRole) -> String {
        self.topics.name(role)
    }

    fn alert_ids(&self) -> Vec<String> {
        read_all::<SalesAlert>(&self.topic(TopicRole::SalesAlerts)).into_iter().map(|(_, a)| a.alert_id).collect()
    }

    fn wait_for_alerts(&self, count: usize, process: &ServiceProcess) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ids = self.alert_ids();
            if ids.len() >= count {
                return ids;
            }
            assert!(Instant::now() < deadline, "only {} of {count} alerts arrived\n{}", ids.len(), process.stderr());
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn repeats_and_rapid_recrossings_give_exactly_the_expected_alerts() {
    let alerter = Alerter::new("alerter-policy");
    let kafka = producer();
    send(&kafka, &alerter.topic(TopicRole::Accounts), "a", &tal_account("a", Tier::Tier1));
    // A record that is not an Account is counted and changes nothing; another account is kept.
    send_bytes(&kafka, &alerter.topic(TopicRole::Accounts), "junk", b"not an Account");
    send(&kafka, &alerter.topic(TopicRole::Accounts), "c", &tal_account("c", Tier::Tier3));
    let stream = [
        crossing("a", CrossingKind::Threshold, 1, T0),          // alert
        crossing("a", CrossingKind::Threshold, 1, T0),          // repeat: duplicate
        crossing("a", CrossingKind::Threshold, 2, T0 + H),      // 1 h later: cooldown
        crossing("a", CrossingKind::HandRaiser, 1, T0 + H),     // own history: alert
        crossing("a", CrossingKind::HandRaiser, 2, T0 + 2 * H), // cooldown
        crossing("a", CrossingKind::Threshold, 3, T0 + 25 * H), // 25 h after the alert: alert
        crossing("a", CrossingKind::Threshold, 2, T0 + H),      // late repeat: duplicate
        crossing("b", CrossingKind::Threshold, 1, T0),          // not on the TAL: alert
    ];
    for c in &stream {
        send(&kafka, &alerter.topic(TopicRole::ScoreCrossings), &c.account_id, c);
    }
    flush(&kafka);
    let tier_1_topic = format!("{}.alerts-tier-1", alerter.topics.prefix);
    let mut env = alerter.env();
    env.push(("ABM_ALERTER__TIER_TOPICS__TIER_1", tier_1_topic.clone()));
    let process = ServiceProcess::start(Path::new(ALERTER), &[], &env);
    wait_for_status(alerter.port, "/readyz", 200, Duration::from_secs(60), "alerter did not get ready");
    let ids: BTreeSet<String> = alerter.wait_for_alerts(4, &process).into_iter().collect();
    std::thread::sleep(Duration::from_secs(1));
    let alerts = read_all::<SalesAlert>(&alerter.topic(TopicRole::SalesAlerts));
    assert_eq!(alerts.len(), 4, "{ids:?}");
    let expected: BTreeSet<String> =
        ["a:threshold:1", "a:hand_raiser:1", "a:threshold:3", "b:threshold:1"].into_iter().map(String::from).collect();
    assert_eq!(ids, expected);
    let a = &alerts.iter().find(|(_, alert)| alert.alert_id == "a:hand_raiser:1").expect("hand-raiser").1;
    assert_eq!(a.account_name, "Company a");
    assert_eq!(a.owner, "owner-of-a@vendor.example");
    assert_eq!(a.tier, Tier::Tier1);
    assert_eq!(a.kind, CrossingKind::HandRaiser);
    assert!(a.next_step.contains("Call within the hour"), "{}", a.next_step);
    assert_eq!(a.top_rules[0].rule, "pricing_page");
    let b = &alerts.iter().find(|(_, alert)| alert.account_id == "b").expect("b").1;
    assert_eq!(b.owner, "unassigned");
    assert_eq!(b.account_name, "b");
    assert_eq!(metric(alerter.port, "abm_alerter_suppressed_total", &["reason=\"duplicate\""]), 2.0);
    assert_eq!(metric(alerter.port, "abm_alerter_suppressed_total", &["reason=\"cooldown\""]), 2.0);
    assert_eq!(metric(alerter.port, "abm_alerter_alerts_total", &[]), 4.0);
    assert_eq!(metric(alerter.port, "abm_alerter_tal_accounts", &[]), 2.0);
    assert_eq!(metric(alerter.port, "abm_alerter_tal_decode_errors_total", &[]), 1.0);
    // The tier topic gets the tier-1 account's alerts, and only those.
    let tier_1: BTreeSet<String> = read_all::<SalesAlert>(&tier_1_topic).into_iter().map(|(_, a)| a.alert_id).collect();
    let expected_tier_1: BTreeSet<String> =
        ["a:threshold:1", "a:hand_raiser:1", "a:threshold:3"].into_iter().map(String::from).collect();
    assert_eq!(tier_1, expected_tier_1);
}

#[test]
fn kill_minus_nine_mid_stream_publishes_no_alert_twice_and_loses_none() {
    let alerter = Alerter::new("alerter-eos");
    let mut rng = Rng::new(5);
    // 40 accounts, 40 crossings each, 0-30 h apart: some alert, some are in cooldown.
    let mut stream = Vec::new();
    for round in 0..40 {
        for account in 0..40 {
            let kind = if rng.below(5) == 0 { CrossingKind::HandRaiser } else { CrossingKind::Threshold };
            let _ = round;
            stream.push((format!("acc-{account}"), kind));
        }
    }
    let mut sequences: BTreeMap<(String, CrossingKind), i64> = BTreeMap::new();
    let mut clocks: BTreeMap<String, i64> = BTreeMap::new();
    let crossings: Vec<ScoreCrossing> = stream
        .into_iter()
        .map(|(account, kind)| {
            let sequence = sequences.entry((account.clone(), kind)).or_default();
            *sequence += 1;
            let clock = clocks.entry(account.clone()).or_insert(T0);
            *clock += rng.below(30) as i64 * H;
            crossing(&account, kind, *sequence, *clock)
        })
        .collect();
    let config = PolicyConfig::default();
    let mut histories: BTreeMap<(String, CrossingKind), History> = BTreeMap::new();
    let expected: BTreeSet<String> = crossings
        .iter()
        .filter_map(|c| {
            match decide(&config, c, None, histories.entry((c.account_id.clone(), c.kind)).or_default(), i64::MAX) {
                Decision::Alert(alert) => Some(alert.alert_id),
                _ => None,
            }
        })
        .collect();
    assert!(
        expected.len() > 200 && expected.len() < crossings.len(),
        "a mix of alerts and cooldowns: {}",
        expected.len()
    );

    let topic = alerter.topic(TopicRole::ScoreCrossings);
    let feeder = std::thread::spawn(move || {
        let kafka = producer();
        for chunk in crossings.chunks(100) {
            for c in chunk {
                send(&kafka, &topic, &c.account_id, c);
            }
            flush(&kafka);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut kill_rng = Rng::new(99);
    for _ in 0..4 {
        let process = alerter.start(&[]);
        std::thread::sleep(Duration::from_millis(200 + kill_rng.below(1200)));
        process.signal("KILL");
        drop(process);
    }
    feeder.join().expect("feeder");
    let process = alerter.start(&[]);
    let ids = alerter.wait_for_alerts(expected.len(), &process);
    std::thread::sleep(Duration::from_secs(2));
    let ids_after = alerter.alert_ids();
    assert_eq!(ids.len(), ids_after.len(), "more alerts kept arriving");
    let unique: BTreeSet<String> = ids_after.iter().cloned().collect();
    assert_eq!(unique.len(), ids_after.len(), "an alert id was published twice");
    assert_eq!(unique, expected, "alerts differ from an uninterrupted run");
}

/// A local HTTP receiver: `/ok` answers 200, `/fail` 500 until switched, `/hang` never answers.
struct Receiver {
    port: u16,
    /// (path, alert_id) of every request answered 200.
    delivered: Arc<Mutex<Vec<(String, String)>>>,
    fail: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicBool::new(true));
        let (d, f) = (delivered.clone(), fail.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (d, f) = (d.clone(), f.clone());
                std::thread::spawn(move || serve(stream, &d, &f));
            }
        });
        Receiver { port, delivered, fail }
    }

    fn delivered_to(&self, path: &str) -> Vec<String> {
        self.delivered.lock().expect("lock").iter().filter(|(p, _)| p == path).map(|(_, id)| id.clone()).collect()
    }
}

fn serve(stream: TcpStream, delivered: &Mutex<Vec<(String, String)>>, fail: &AtomicBool) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let id = json["alert_id"].as_str().unwrap_or_default().to_owned();
        let status = match path.as_str() {
            "/hang" => {
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            "/fail" if fail.load(Ordering::SeqCst) => "500 Internal Server Error",
            _ => {
                delivered.lock().expect("lock").push((path.clone(), id));
                "200 OK"
            }
        };
        let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn failing_and_hanging_webhooks_are_retried_parked_and_replayed_once_without_blocking_kafka() {
    let receiver = Receiver::start();
    let alerter = Alerter::new("alerter-webhooks");
    let config = std::env::temp_dir().join(format!("{}.toml", alerter.topics.prefix));
    let hook = |name: &str, format: &str| {
        format!(
            "[[alerter.webhooks]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{}/{name}\"\nformat = \"{format}\"\n\
             timeout_ms = 500\nmax_retries = 2\nbackoff_ms = 50\ncircuit_failures = 2\ncircuit_open_ms = 60000\n\
             start_from = \"earliest\"\n",
            receiver.port
        )
    };
    std::fs::write(&config, [hook("ok", "json"), hook("fail", "json"), hook("hang", "slack")].join("\n"))
        .expect("config");
    let config_path = config.display().to_string();

    let kafka = producer();
    for i in 0..10 {
        let c = crossing(&format!("acc-{i}"), CrossingKind::HandRaiser, 1, T0);
        send(&kafka, &alerter.topic(TopicRole::ScoreCrossings), &c.account_id, &c);
    }
    flush(&kafka);
    let started = Instant::now();
    let process = alerter.start(&["--config", &config_path]);
    // Alerts flow to Kafka regardless of the dead endpoints.
    alerter.wait_for_alerts(10, &process);
    let kafka_path = started.elapsed();
    assert!(kafka_path < Duration::from_secs(45), "alerts took {kafka_path:?}");
    let expected: BTreeSet<String> = (0..10).map(|i| format!("acc-{i}:hand_raiser:1")).collect();

    // The good endpoint gets every alert; the others' alerts are parked after retries / circuit.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let parked = read_all_bytes(&alerter.topic(TopicRole::ParkedAlerts));
        let count = |key: &str| parked.iter().filter(|(k, _)| k == key).count();
        let ok: BTreeSet<String> = receiver.delivered_to("/ok").into_iter().collect();
        if ok == expected && count("fail") == 10 && count("hang") == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ok {} / parked fail {} hang {}\n{}",
            ok.len(),
            count("fail"),
            count("hang"),
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        metric(alerter.port, "abm_alerter_webhook_deliveries_total", &["endpoint=\"fail\"", "outcome=\"retry\""])
            >= 2.0
    );
    assert!(
        metric(
            alerter.port,
            "abm_alerter_webhook_deliveries_total",
            &["endpoint=\"fail\"", "outcome=\"circuit_open\""]
        ) >= 1.0
    );
    assert_eq!(
        metric(alerter.port, "abm_alerter_webhook_deliveries_total", &["endpoint=\"ok\"", "outcome=\"delivered\""]),
        10.0
    );
    assert!(receiver.delivered_to("/fail").is_empty());

    // The endpoint recovers: a replay delivers each parked alert once; a second replay nothing.
    receiver.fail.store(false, Ordering::SeqCst);
    let mut env = alerter.env();
    env.retain(|(key, _)| *key != "ABM_HTTP__LISTEN");
    let (status, stderr) = run_to_exit(
        Path::new(ALERTER),
        &["--config", &config_path, "replay-parked", "--endpoint", "fail"],
        &env,
        Duration::from_secs(120),
    );
    assert!(status.success(), "{stderr}");
    let replayed = receiver.delivered_to("/fail");
    let distinct: BTreeSet<String> = replayed.iter().cloned().collect();
    assert_eq!(replayed.len(), 10, "each parked alert delivered once: {replayed:?}");
    assert_eq!(distinct, expected);
    let (status, stderr) = run_to_exit(
        Path::new(ALERTER),
        &["--config", &config_path, "replay-parked", "--endpoint", "fail"],
        &env,
        Duration::from_secs(120),
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(receiver.delivered_to("/fail").len(), 10, "a second replay delivers nothing again");
    let _ = std::fs::remove_file(&config);
}

/// A webhook task whose consumer stops fetching (the failure reported against librdkafka after
/// broker restarts, injected: its partitions paused for good after 5 alerts) is noticed by its
/// watch and healed by a new consumer: every alert is delivered, each once.
#[test]
fn a_webhook_consumer_that_stops_fetching_is_replaced_and_every_alert_is_delivered_once() {
    let receiver = Receiver::start();
    let alerter = Alerter::new("alerter-webhook-stall");
    let config = std::env::temp_dir().join(format!("{}.toml", alerter.topics.prefix));
    std::fs::write(
        &config,
        format!(
            "[alerter]\nstall_after_ms = 3000\n\n[[alerter.webhooks]]\nname = \"sdr\"\nurl = \"http://127.0.0.1:{}/sdr\"\nstart_from = \"earliest\"\n",
            receiver.port
        ),
    )
    .expect("config");
    let config_path = config.display().to_string();
    let mut env = alerter.env();
    env.push(("ABMTEST_FAULT_WEBHOOK_STALL_AFTER_MESSAGES", "5".into()));
    let process = ServiceProcess::start(Path::new(ALERTER), &["--config", &config_path], &env);
    wait_for_status(alerter.port, "/readyz", 200, Duration::from_secs(60), "alerter did not get ready");

    // Crossings keep arriving after the fault: the paused consumer leaves their alerts waiting.
    let kafka = producer();
    let expected: BTreeSet<String> = (0..20).map(|i| format!("stall-{i}:hand_raiser:1")).collect();
    for wave in 0..4 {
        for i in wave * 5..(wave + 1) * 5 {
            let c = crossing(&format!("stall-{i}"), CrossingKind::HandRaiser, 1, T0);
            send(&kafka, &alerter.topic(TopicRole::ScoreCrossings), &c.account_id, &c);
        }
        flush(&kafka);
        std::thread::sleep(Duration::from_millis(700));
    }
    alerter.wait_for_alerts(20, &process);
    let deadline = Instant::now() + Duration::from_secs(90);
    while receiver.delivered_to("/sdr").len() < 20 {
        assert!(
            Instant::now() < deadline,
            "{} of 20 delivered\n{}",
            receiver.delivered_to("/sdr").len(),
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    let delivered = receiver.delivered_to("/sdr");
    assert_eq!(delivered.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(delivered.len(), 20, "each alert once: {delivered:?}");
    assert_eq!(
        metric(alerter.port, "abm_alerter_webhook_heals_total", &["endpoint=\"sdr\""]),
        1.0,
        "{}",
        process.stderr()
    );
    // The gauge counts from the last progress (a heal does not reset it): 0 at the next check.
    abm_testkit::wait_for_metric(
        alerter.port,
        "abm_alerter_webhook_stalled_seconds",
        &["endpoint=\"sdr\""],
        0.0,
        Duration::from_secs(5),
        "progressing again",
    );
    assert!(process.stderr().contains("have input but nothing was taken"), "{}", process.stderr());
    wait_for_status(alerter.port, "/readyz", 200, Duration::from_secs(30), "ready again after healing");
    let _ = std::fs::remove_file(&config);
}

/// A webhook URL is a secret (Slack's carry their token): when delivery fails, neither the log
/// nor the parked alert's `reason` header shows it, nor the headers configured for it
/// (`--print-config` is checked in `tests/ops.rs`).
#[test]
fn a_failing_webhook_never_shows_its_url_or_headers_in_logs_or_parked_alerts() {
    let alerter = Alerter::new("alerter-webhook-secret");
    let secret = "T0000-B0000-XXXXsecretXXXX";
    let config = std::env::temp_dir().join(format!("{}.toml", alerter.topics.prefix));
    std::fs::write(
        &config,
        format!(
            "[[alerter.webhooks]]\nname = \"slack\"\nurl = \"http://127.0.0.1:{}/services/{secret}\"\nformat = \"slack\"\n\
             timeout_ms = 300\nmax_retries = 1\nbackoff_ms = 20\nstart_from = \"earliest\"\n\
             [alerter.webhooks.headers]\nAuthorization = \"Bearer header-{secret}\"\n",
            free_port()
        ),
    )
    .expect("config");
    let kafka = producer();
    let c = crossing("acc-secret", CrossingKind::HandRaiser, 1, T0);
    send(&kafka, &alerter.topic(TopicRole::ScoreCrossings), &c.account_id, &c);
    flush(&kafka);
    let mut env = alerter.env();
    env.push(("RUST_LOG", "debug".into()));
    let process = ServiceProcess::start(Path::new(ALERTER), &["--config", &config.display().to_string()], &env);
    wait_for_status(alerter.port, "/readyz", 200, Duration::from_secs(60), "alerter did not get ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    let parked = loop {
        let parked = abm_testkit::read_all_with_headers(&alerter.topic(TopicRole::ParkedAlerts));
        if !parked.is_empty() {
            break parked;
        }
        assert!(Instant::now() < deadline, "nothing parked\n{}", process.stderr());
        std::thread::sleep(Duration::from_millis(300));
    };
    let reason = parked[0].2.iter().find(|(name, _)| name == "reason").map(|(_, v)| v.clone()).expect("reason");
    assert!(!reason.is_empty() && !reason.contains(secret), "{reason}");
    let log = process.stderr();
    assert!(log.contains("webhook attempt failed"), "the debug log says what failed: {log}");
    assert!(!log.contains(secret), "{log}");
    let (_, metrics) = abm_testkit::http_get(alerter.port, "/metrics").expect("metrics");
    assert!(metrics.contains("abm_alerter_webhook"), "{metrics}");
    assert!(!metrics.contains(secret), "metrics show a webhook secret:\n{metrics}");
    let _ = std::fs::remove_file(&config);
}

/// With `alerter.json_alerts`, each alert is also a plain JSON object on its own topic, in the
/// same transaction; with `alerter.compression = "gzip"` a client without lz4 (kafkajs, what
/// n8n's Kafka trigger uses) reads it, where the default lz4 stops it.
#[test]
fn json_alerts_are_the_avro_alerts_as_plain_objects_and_gzip_lets_kafkajs_read_them() {
    let alerter = Alerter::new("alerter-json");
    let kafka = producer();
    send(&kafka, &alerter.topic(TopicRole::Accounts), "a", &tal_account("a", Tier::Tier1));
    let stream = [
        crossing("a", CrossingKind::Threshold, 1, T0),
        crossing("a", CrossingKind::HandRaiser, 1, T0 + H),
        crossing("b", CrossingKind::Threshold, 1, T0),
    ];
    for c in &stream {
        send(&kafka, &alerter.topic(TopicRole::ScoreCrossings), &c.account_id, c);
    }
    flush(&kafka);
    let mut env = alerter.env();
    env.push(("ABM_ALERTER__JSON_ALERTS", "true".into()));
    env.push(("ABM_ALERTER__COMPRESSION", "gzip".into()));
    let process = ServiceProcess::start(Path::new(ALERTER), &[], &env);
    wait_for_status(alerter.port, "/readyz", 200, Duration::from_secs(60), "alerter did not get ready");
    alerter.wait_for_alerts(3, &process);
    let avro: BTreeMap<String, serde_json::Value> = read_all::<SalesAlert>(&alerter.topic(TopicRole::SalesAlerts))
        .into_iter()
        .map(|(_, alert)| (alert.alert_id.clone(), serde_json::to_value(&alert).expect("serializes")))
        .collect();
    let json_topic = alerter.topic(TopicRole::SalesAlertsJson);
    let json: BTreeMap<String, serde_json::Value> = read_all_bytes(&json_topic)
        .into_iter()
        .map(|(key, bytes)| {
            let value: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON object");
            assert_eq!(value["account_id"].as_str(), Some(key.as_str()), "keyed by account");
            (value["alert_id"].as_str().expect("alert_id").to_owned(), value)
        })
        .collect();
    assert_eq!(json.len(), 3);
    assert_eq!(json, avro, "the JSON alerts are the Avro alerts, field for field");
    let a = &json["a:hand_raiser:1"];
    assert_eq!(
        (a["kind"].as_str(), a["tier"].as_str(), a["as_of"].as_i64()),
        (Some("hand_raiser"), Some("tier_1"), Some(T0 + H))
    );

    // kafkajs, no lz4 codec: reads the gzip topic...
    let bootstrap = abm_testkit::bootstrap_servers();
    let (ok, stdout, stderr) = abm_testkit::run_node("read-json-alerts.mjs", &[&bootstrap, &json_topic, "3", "30000"]);
    assert!(ok, "kafkajs could not read the gzip alerts: {stderr}");
    let read: BTreeSet<String> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("JSON")["alert_id"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(read, json.keys().cloned().collect::<BTreeSet<_>>());
    // ...and cannot read the same records compressed with lz4 (the default): the reason the
    // setting exists.
    let lz4_topic = format!("{}.lz4-copy", alerter.topics.prefix);
    let spec = abm::topics::TopicSpec {
        role: TopicRole::SalesAlertsJson,
        name: lz4_topic.clone(),
        partitions: 1,
        compacted: false,
        retention_ms: None,
        doc: String::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(abm_testkit::kafka().ensure_topics("test", &[spec])).expect("topic created");
    for (key, bytes) in read_all_bytes(&json_topic) {
        send_bytes(&kafka, &lz4_topic, &key, &bytes);
    }
    flush(&kafka);
    let (ok, _, stderr) = abm_testkit::run_node("read-json-alerts.mjs", &[&bootstrap, &lz4_topic, "3", "15000"]);
    assert!(!ok, "kafkajs read lz4 batches: the gzip check above would prove nothing");
    assert!(stderr.to_lowercase().contains("lz4"), "{stderr}");
    drop(process);

    // A codec librdkafka does not have is refused at start-up, clearly.
    let mut env = alerter.env();
    env.push(("ABM_ALERTER__COMPRESSION", "brotli".into()));
    let (status, stderr) = run_to_exit(Path::new(ALERTER), &[], &env, Duration::from_secs(30));
    assert!(!status.success());
    assert!(stderr.contains("alerter.compression = \"brotli\": use one of lz4, gzip, snappy, zstd, none"), "{stderr}");
}
