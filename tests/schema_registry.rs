//! Confluent's wire format with a real schema registry (Apicurio Registry, started by the test
//! command with `deploy/local/registry.sh`): the whole pipeline writes its public topics with
//! registry ids, its own readers take both framings, confluent-kafka's own registry-aware
//! `AvroDeserializer` (Python, from PyPI) reads the alerts and the scores, and a schema change
//! the registry's BACKWARD rule refuses stops a service at start-up with the registry's reason.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{AccountScore, AvroRecord, SalesAlert};
use abm_testkit::{
    SecureListeners, ServiceProcess, TestTopics, bootstrap_servers, flush, free_port, producer, read_all,
    read_all_bytes, registry_tls_url, registry_url, run_python, run_to_exit, send, use_registry, wait_for_status,
    with_env, workspace_binary,
};

/// `<topic>-value`'s latest registered id, asked of the registry's Confluent API.
fn registered_id(topic: &str) -> Option<u32> {
    let url = format!("{}/subjects/{topic}-value/versions/latest", registry_url());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let response = reqwest::get(url).await.ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body["id"].as_u64().and_then(|id| u32::try_from(id).ok())
    })
}

/// Registers `schema` under `subject` directly (what another producer, or an earlier release,
/// would have done): the registry's status and answer.
fn register(subject: &str, schema: &str) -> (u16, serde_json::Value) {
    let url = format!("{}/subjects/{subject}/versions", registry_url());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema }))
            .send()
            .await
            .expect("the registry answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Reads `count` records of `topic` with confluent-kafka's `AvroDeserializer`: key → value.
fn read_with_confluent_kafka(topic: &str, count: usize) -> Vec<(String, serde_json::Value)> {
    let (ok, stdout, stderr) = run_python(
        "read_confluent_avro.py",
        &[&bootstrap_servers(), &registry_url(), topic, &count.to_string(), "60000"],
    );
    assert!(ok, "confluent-kafka could not read {topic}: {stderr}");
    stdout
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            (record["key"].as_str().unwrap_or_default().to_owned(), record["value"].clone())
        })
        .collect()
}

/// Every record of `topic` is Confluent-framed with the id registered under `<topic>-value`.
fn assert_confluent_framed(topic: &str) -> usize {
    let id = registered_id(topic).unwrap_or_else(|| panic!("nothing registered under {topic}-value"));
    let records = read_all_bytes(topic);
    for (key, bytes) in &records {
        assert_eq!(bytes.first(), Some(&0), "{topic} record {key} is not Confluent-framed");
        assert_eq!(bytes.get(1..5), Some(&id.to_be_bytes()[..]), "{topic} record {key} carries schema id {id}");
    }
    records.len()
}

/// `value` as JSON, the way the Python side prints fastavro's answer.
fn as_json<T: AvroRecord>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("serializes")
}

/// The variables that give a service of this test its own consumer group and instance id (a
/// static member of another run's group would be handed that run's topics).
fn service_vars(service: &str, topics: &TestTopics) -> Vec<(&'static str, String)> {
    let prefix = &topics.prefix;
    match service {
        "ingest" => vec![
            ("ABM_INGEST__WRITE_KEYS__T", "registry-key".into()),
            ("ABM_INGEST__GROUP_ID", format!("{prefix}-ingest")),
        ],
        "scorer" => vec![
            ("ABM_SCORER__GROUP_ID", format!("{prefix}-scorer")),
            ("ABM_SCORER__INSTANCE_ID", format!("{prefix}-scorer")),
        ],
        _ => vec![
            ("ABM_ALERTER__GROUP_ID", format!("{prefix}-alerter")),
            ("ABM_ALERTER__INSTANCE_ID", format!("{prefix}-alerter")),
        ],
    }
}

#[test]
fn the_pipeline_writes_confluent_framing_that_confluent_kafkas_own_deserializer_reads() {
    use_registry();
    let topics = TestTopics::new("registry");
    topics.create();
    // The TAL record is written single-object (by this test): the services read both framings.
    let kafka = producer();
    send(&kafka, &topics.name(TopicRole::Accounts), "acme", &abm_testkit::acme_account());
    flush(&kafka);

    let registry = [("ABM_REGISTRY__URL", registry_url()), ("ABM_REGISTRY__FRAMING", "confluent".to_owned())];
    let ports: BTreeMap<&str, u16> =
        [("ingest", free_port()), ("scorer", free_port()), ("alerter", free_port())].into();
    let mut services = Vec::new();
    for (service, port) in &ports {
        let mut env = with_env(topics.env(), &registry);
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
        env.extend(service_vars(service, &topics));
        let process = ServiceProcess::start(&workspace_binary(service), &[], &env);
        wait_for_status(*port, "/readyz", 200, Duration::from_secs(90), &format!("{service} did not get ready"));
        services.push(process);
    }

    // A demo request (a hand-raiser, and 50 points: tier 1's threshold) and a pricing visit.
    let now = now_ms();
    let events = format!(
        "{}\n{}\n",
        serde_json::json!({"event_id": "r1", "kind": "web_visit", "occurred_at": now - 1000, "account_id": "acme",
            "contact": {"email": "cfo@acme.example", "title": "CFO"}, "properties": {"url": "https://vendor.example/pricing"}}),
        serde_json::json!({"event_id": "r2", "kind": "demo_request", "occurred_at": now, "account_id": "acme",
            "contact": {"email": "vp@acme.example", "title": "VP Engineering"}, "properties": {"form": "demo"}}),
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (status, body) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/v1/events", ports["ingest"]))
            .bearer_auth("registry-key")
            .header("Content-Type", "application/x-ndjson")
            .body(events)
            .send()
            .await
            .expect("posted");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    });
    assert_eq!(status, 200, "{body}");

    // Two alerts (threshold and hand-raiser), read by this process through the registry.
    let alerts_topic = topics.name(TopicRole::SalesAlerts);
    let deadline = Instant::now() + Duration::from_secs(90);
    let alerts = loop {
        let alerts = read_all::<SalesAlert>(&alerts_topic);
        if alerts.len() >= 2 {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "{} alerts after 90 s; scorer: {}\nalerter: {}",
            alerts.len(),
            services[2].stderr(),
            services[0].stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut kinds: Vec<&str> = alerts.iter().map(|(_, alert)| alert.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["hand_raiser", "threshold"]);

    // Every public topic of the run is Confluent-framed with its subject's id...
    for role in [TopicRole::Engagement, TopicRole::ScoreCrossings, TopicRole::AccountScores, TopicRole::SalesAlerts] {
        assert!(assert_confluent_framed(&topics.name(role)) >= 1, "{role:?} has records");
    }
    // ...and the internal changelog keeps single-object framing.
    for (_, bytes) in read_all_bytes(&topics.name(TopicRole::ScorerState)) {
        assert_eq!(bytes.get(..2), Some(&[0xC3, 0x01][..]));
    }

    // confluent-kafka's consumer with its AvroDeserializer reads the alerts and the scores,
    // field for field what this process decodes.
    let theirs: BTreeMap<String, serde_json::Value> = read_with_confluent_kafka(&alerts_topic, 2)
        .into_iter()
        .map(|(_, value)| (value["alert_id"].as_str().unwrap_or_default().to_owned(), value))
        .collect();
    let ours: BTreeMap<String, serde_json::Value> =
        alerts.iter().map(|(_, alert)| (alert.alert_id.clone(), as_json(alert))).collect();
    assert_eq!(theirs, ours, "the alerts as confluent-kafka reads them");

    let scores_topic = topics.name(TopicRole::AccountScores);
    let scores = read_all::<AccountScore>(&scores_topic);
    assert!(!scores.is_empty());
    let theirs: Vec<serde_json::Value> =
        read_with_confluent_kafka(&scores_topic, scores.len()).into_iter().map(|(_, value)| value).collect();
    let ours: Vec<serde_json::Value> = scores.iter().map(|(_, score)| as_json(score)).collect();
    assert_eq!(theirs, ours, "the scores as confluent-kafka reads them");
    let last = theirs.last().expect("a score");
    assert_eq!(last["account_id"], "acme");
    assert!(last["score"].as_f64().is_some_and(|score| score >= 50.0), "{last}");

    for mut process in services {
        process.signal("TERM");
        assert!(process.wait(Duration::from_secs(30)).success(), "{}", process.stderr());
    }
}

/// `SalesAlert`'s schema without the field named `field`: what an earlier release might have
/// registered.
fn sales_alert_without(field: &str) -> String {
    let mut schema: serde_json::Value = serde_json::from_str(SalesAlert::SCHEMA_JSON).expect("json");
    let fields = schema["fields"].as_array_mut().expect("fields");
    let before = fields.len();
    fields.retain(|f| f["name"] != field);
    assert_eq!(fields.len(), before - 1, "SalesAlert has a field {field}");
    schema.to_string()
}

#[test]
fn a_schema_change_the_registry_refuses_stops_the_start_with_its_reason() {
    let topics = TestTopics::new("registry-compat");
    let alerts_topic = topics.name(TopicRole::SalesAlerts);
    let subject = format!("{alerts_topic}-value");
    let env = |topics: &TestTopics, port: u16| {
        let mut env = with_env(
            topics.env(),
            &[("ABM_REGISTRY__URL", registry_url()), ("ABM_REGISTRY__TOPICS__SALES_ALERTS", "confluent".to_owned())],
        );
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
        env.extend(service_vars("alerter", topics));
        env
    };

    // An earlier version had no `alert_id` (which has no default): alerts written with it
    // cannot be read with today's schema, so BACKWARD compatibility refuses today's.
    let (status, answer) = register(&subject, &sales_alert_without("alert_id"));
    assert_eq!(status, 200, "{answer}");
    let (exit, stderr) =
        run_to_exit(&workspace_binary("alerter"), &[], &env(&topics, free_port()), Duration::from_secs(90));
    assert_eq!(exit.code(), Some(1), "{stderr}");
    let line = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "alerter: error: the schema registry refused the schema for subject {subject} as incompatible"
        )),
        "{stderr}"
    );
    assert!(line.contains("409") && line.contains("alert_id"), "the registry's reason is shown: {line}");

    // A compatible change (a new field with a default: `next_step` read from older records as
    // its default) is registered as the subject's next version, and the alerter starts.
    let topics_ok = TestTopics::new("registry-compat-ok");
    let subject_ok = format!("{}-value", topics_ok.name(TopicRole::SalesAlerts));
    let with_default = {
        let schema: serde_json::Value = serde_json::from_str(SalesAlert::SCHEMA_JSON).expect("json");
        let field = schema["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f.get("default").is_some()))
            .and_then(|f| f["name"].as_str())
            .expect("SalesAlert has a field with a default")
            .to_owned();
        sales_alert_without(&field)
    };
    let (status, first) = register(&subject_ok, &with_default);
    assert_eq!(status, 200, "{first}");
    let port = free_port();
    let mut alerter = ServiceProcess::start(&workspace_binary("alerter"), &[], &env(&topics_ok, port));
    wait_for_status(port, "/readyz", 200, Duration::from_secs(90), &alerter.stderr());
    let id = registered_id(&topics_ok.name(TopicRole::SalesAlerts)).expect("registered");
    assert_ne!(Some(id), first["id"].as_u64().and_then(|id| u32::try_from(id).ok()), "a new version");
    alerter.signal("TERM");
    assert!(alerter.wait(Duration::from_secs(30)).success(), "{}", alerter.stderr());
}

/// Over https, trusting `registry.ca_location`: the alerter registers its alerts' schema and
/// starts; with a CA that signed nothing there, start-up stops with the TLS failure named.
#[test]
fn the_registry_is_reached_over_tls_with_the_configured_ca() {
    let secure = SecureListeners::of_broker_under_test();
    for (ca, starts) in [("ca.pem", true), ("untrusted-ca.pem", false)] {
        let topics = TestTopics::new("registry-tls");
        let port = free_port();
        let mut env = with_env(
            topics.env(),
            &[
                ("ABM_REGISTRY__URL", registry_tls_url()),
                ("ABM_REGISTRY__CA_LOCATION", secure.file(ca)),
                ("ABM_REGISTRY__TOPICS__SALES_ALERTS", "confluent".to_owned()),
                ("ABM_REGISTRY__TIMEOUT_MS", "3000".to_owned()),
            ],
        );
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
        env.extend(service_vars("alerter", &topics));
        if starts {
            let mut alerter = ServiceProcess::start(&workspace_binary("alerter"), &[], &env);
            wait_for_status(port, "/readyz", 200, Duration::from_secs(90), &alerter.stderr());
            assert!(registered_id(&topics.name(TopicRole::SalesAlerts)).is_some(), "registered over https");
            alerter.signal("TERM");
            assert!(alerter.wait(Duration::from_secs(30)).success(), "{}", alerter.stderr());
        } else {
            let (exit, stderr) = run_to_exit(&workspace_binary("alerter"), &[], &env, Duration::from_secs(90));
            assert_eq!(exit.code(), Some(1), "{stderr}");
            let line = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default();
            assert!(line.starts_with("alerter: error: cannot reach the schema registry at https://"), "{stderr}");
            assert!(line.to_lowercase().contains("certificate"), "says why: {line}");
        }
    }
}
