//! Ingest against the real broker: every reason code over HTTP and over a raw topic, nothing
//! valid lost, counters balanced; gzip, NDJSON, auth and size limits; the broker going away.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{EngagementEvent, RejectedEvent, Transport};
use abm_testkit::{
    PrivateBroker, ServiceProcess, TestTopics, flush, free_port, metric, producer, read_all, send, send_bytes,
    wait_for_status,
};

const INGEST: &str = env!("CARGO_BIN_EXE_ingest");
const KEY: &str = "test-secret";

use abm::clock::now_ms;

/// `POST /v1/events`: status, headers (lower-cased names) and body.
fn post(port: u16, body: &[u8], headers: &[(&str, String)]) -> (u16, BTreeMap<String, String>, String) {
    post_to(port, "/v1/events", body, headers)
}

fn post_to(port: u16, path: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, BTreeMap<String, String>, String) {
    abm_testkit::http_request(port, "POST", path, body, headers)
}

fn bearer() -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {KEY}")), ("Content-Type", "application/json".into())]
}

fn start_ingest(topics: &TestTopics, port: u16, extra: &[(&'static str, String)]) -> ServiceProcess {
    let mut vars = topics.env();
    vars.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    vars.push(("ABM_INGEST__WRITE_KEYS__SITE", KEY.into()));
    vars.push(("ABM_INGEST__GROUP_ID", format!("{}-ingest", topics.prefix)));
    vars.extend_from_slice(extra);
    let mut process = ServiceProcess::start(Path::new(INGEST), &[], &vars);
    process.wait_ready(port, Duration::from_secs(60));
    process
}

/// One bad event per reason code (the code is the map key), as JSON text.
fn bad_events(tag: &str) -> BTreeMap<&'static str, String> {
    let now = now_ms();
    let url = r#""properties":{"url":"https://v.example/"}"#;
    BTreeMap::from([
        ("malformed_json", format!(r#"{{"event_id":"{tag}-mj","kind":"web_visit", oops"#)),
        ("unknown_kind", format!(r#"{{"event_id":"{tag}-uk","kind":"fax","occurred_at":{now}}}"#)),
        ("missing_field", format!(r#"{{"event_id":"{tag}-mf","kind":"demo_request","occurred_at":{now}}}"#)),
        (
            "invalid_field",
            format!(
                r#"{{"event_id":"{tag}-if","kind":"web_visit","occurred_at":{now},"contact":{{"email":"no-at-sign"}},{url}}}"#
            ),
        ),
        (
            "bad_timestamp",
            format!(r#"{{"event_id":"{tag}-bt","kind":"web_visit","occurred_at":"last tuesday",{url}}}"#),
        ),
        (
            "too_far_in_future",
            format!(r#"{{"event_id":"{tag}-ff","kind":"web_visit","occurred_at":{},{url}}}"#, now + 86_400_000),
        ),
        (
            "too_old",
            format!(r#"{{"event_id":"{tag}-to","kind":"web_visit","occurred_at":{},{url}}}"#, now - 200 * 86_400_000),
        ),
        (
            "oversized",
            format!(
                r#"{{"event_id":"{tag}-os","kind":"web_visit","occurred_at":{now},"properties":{{"url":"/{}"}}}}"#,
                "x".repeat(40_000)
            ),
        ),
        (
            "bot",
            format!(
                r#"{{"event_id":"{tag}-bo","kind":"web_visit","occurred_at":{now},"user_agent":"Mozilla/5.0 (compatible; bingbot/2.0)",{url}}}"#
            ),
        ),
    ])
}

/// Valid events: one resolved by email domain, one by `domain`, one unresolved (free mail).
fn good_events(tag: &str) -> Vec<(String, &'static str)> {
    let now = now_ms();
    vec![
        (
            format!(
                r#"{{"event_id":"{tag}-g1","kind":"web_visit","occurred_at":{now},"contact":{{"id":"c1","email":"jane@acme.example"}},"properties":{{"url":"https://v.example/pricing"}}}}"#
            ),
            "engaged",
        ),
        (
            format!(
                r#"{{"event_id":"{tag}-g2","kind":"ad_click","occurred_at":{now},"domain":"www.acme.example","properties":{{"channel":"linkedin"}}}}"#
            ),
            "engaged",
        ),
        (
            format!(
                r#"{{"event_id":"{tag}-g3","kind":"email","occurred_at":{now},"contact":{{"email":"joe@gmail.com"}},"properties":{{"action":"reply"}}}}"#
            ),
            "unresolved",
        ),
    ]
}

#[test]
fn every_reason_code_over_http_and_raw_topics_is_kept_and_nothing_valid_is_lost() {
    let topics = TestTopics::new("ingest-reasons");
    topics.create();
    let kafka = producer();
    send(&kafka, &topics.name(TopicRole::Accounts), "acme", &abm_testkit::acme_account());
    flush(&kafka);
    let port = free_port();
    let _ingest = start_ingest(&topics, port, &[]);

    // HTTP: one batch (a JSON array) with every bad event and the good ones.
    let bad = bad_events("h");
    let good = good_events("h");
    let mut parts: Vec<String> = bad.values().filter(|json| !json.contains("oops")).cloned().collect();
    parts.extend(good.iter().map(|(json, _)| json.clone()));
    let body = format!("[{}]", parts.join(","));
    let (status, _, response) = post(port, body.as_bytes(), &bearer());
    assert_eq!(status, 200, "{response}");
    let response: serde_json::Value = serde_json::from_str(&response).expect("JSON");
    assert_eq!(response["accepted"], 3, "{response}");
    assert_eq!(response["rejected"], 8, "{response}");
    // Malformed JSON cannot sit in an array; it comes as an NDJSON line.
    let ndjson = format!("{}\n{}\n", bad["malformed_json"], good[0].0.replace("h-g1", "h-g4"));
    let (status, _, response) = post(port, ndjson.as_bytes(), &bearer());
    assert_eq!(status, 200, "{response}");
    assert!(response.contains(r#""reason":"malformed_json""#), "{response}");

    // Raw topics: one event per record, the same set, on the web-visits topic.
    let raw_topic = topics.name(TopicRole::RawWebVisits);
    let bad_raw = bad_events("k");
    let good_raw = good_events("k");
    for json in bad_raw.values().chain(good_raw.iter().map(|(json, _)| json)) {
        send_bytes(&kafka, &raw_topic, "tracker", json.as_bytes());
    }
    flush(&kafka);
    let expected_raw = (bad_raw.len() + good_raw.len()) as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(port, "abm_ingest_events_received_total", &["transport=\"kafka\""]) < expected_raw {
        assert!(Instant::now() < deadline, "the raw records were not all processed");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every reason code is in abm.rejected, for both transports, with the original bytes.
    let rejected = read_all::<RejectedEvent>(&topics.name(TopicRole::Rejected));
    for (transport, tag, events) in [(Transport::Http, "h", &bad), (Transport::Kafka, "k", &bad_raw)] {
        for (code, json) in events.iter() {
            let found = rejected
                .iter()
                .map(|(_, r)| r)
                .find(|r| r.source.transport == transport && ingest::validate::reason_code(r.reason) == *code)
                .unwrap_or_else(|| panic!("no {code} rejection over {transport:?}"));
            assert_eq!(found.original, json.as_bytes(), "{code}: original bytes kept");
            assert!(!found.message.is_empty());
            // The id is known whenever the event could be parsed.
            let readable = !matches!(*code, "malformed_json" | "oversized");
            assert_eq!(found.event_id.is_some(), readable, "{code}: {:?}", found.event_id);
            if let Some(id) = &found.event_id {
                assert!(id.starts_with(&format!("{tag}-")), "{code}: {id}");
            }
            match transport {
                Transport::Http => assert_eq!(found.source.write_key.as_deref(), Some("site")),
                _ => {
                    assert_eq!(found.source.topic.as_deref(), Some(raw_topic.as_str()));
                    assert!(found.source.offset.is_some() && found.source.partition.is_some());
                }
            }
        }
    }

    // Nothing valid is lost: every good event is where its resolution sends it.
    let engaged: BTreeSet<String> = read_all::<EngagementEvent>(&topics.name(TopicRole::Engagement))
        .into_iter()
        .map(|(key, e)| format!("{key}/{}", e.event_id))
        .collect();
    let unresolved: BTreeSet<String> =
        read_all::<EngagementEvent>(&topics.name(TopicRole::Unresolved)).into_iter().map(|(_, e)| e.event_id).collect();
    for tag in ["h", "k"] {
        assert!(engaged.contains(&format!("acme/{tag}-g1")), "{engaged:?}");
        assert!(engaged.contains(&format!("acme/{tag}-g2")), "{engaged:?}");
        assert!(unresolved.contains(&format!("{tag}-g3")), "{unresolved:?}");
    }
    assert!(engaged.contains("acme/h-g4"));
    assert_eq!(engaged.len(), 5);
    assert_eq!(unresolved.len(), 2);

    // Conservation, per transport.
    for transport in ["http", "kafka"] {
        let label = format!("transport=\"{transport}\"");
        let received = metric(port, "abm_ingest_events_received_total", &[&label]);
        let accepted = metric(port, "abm_ingest_events_accepted_total", &[&label]);
        let rejected = metric(port, "abm_ingest_events_rejected_total", &[&label]);
        let engaged = metric(port, "abm_ingest_events_accepted_total", &[&label, "destination=\"engaged\""]);
        let unresolved = metric(port, "abm_ingest_events_accepted_total", &[&label, "destination=\"unresolved\""]);
        assert!(received > 0.0);
        assert_eq!(received, accepted + rejected, "{transport}: received = accepted + rejected");
        assert_eq!(accepted, engaged + unresolved, "{transport}: accepted = engaged + unresolved");
    }
    assert_eq!(metric(port, "abm_ingest_events_received_total", &["transport=\"http\""]), 13.0);
    assert_eq!(metric(port, "abm_ingest_events_rejected_total", &["transport=\"kafka\""]), 9.0);
}

#[test]
fn gzip_ndjson_basic_auth_and_limits() {
    let topics = TestTopics::new("ingest-http");
    topics.create();
    let port = free_port();
    let _ingest = start_ingest(&topics, port, &[("ABM_INGEST__MAX_BODY_BYTES", "200000".into())]);
    let now = now_ms();
    let ndjson = format!(
        "{{\"event_id\":\"z1\",\"kind\":\"meeting\",\"occurred_at\":{now},\"properties\":{{\"meeting_id\":\"m\"}}}}\n\
         {{\"event_id\":\"z2\",\"kind\":\"intent\",\"occurred_at\":{now},\"properties\":{{\"topic\":\"etl\",\"strength\":0.7}}}}\n"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ndjson.as_bytes()).expect("gzip");
    let body = gz.finish().expect("gzip");
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"));
    let (status, _, response) =
        post(port, &body, &[("Authorization", format!("Basic {basic}")), ("Content-Encoding", "gzip".into())]);
    assert_eq!(status, 200, "{response}");
    assert!(response.contains(r#""accepted":2"#), "{response}");

    // Browsers' sendBeacon cannot set headers: the key may come as a query parameter.
    let beacon = format!(r#"{{"event_id":"z3","kind":"web_visit","occurred_at":{now},"properties":{{"url":"/"}}}}"#);
    let (status, _, response) = post_to(port, &format!("/v1/events?write_key={KEY}"), beacon.as_bytes(), &[]);
    assert_eq!(status, 200, "{response}");
    let (status, _, _) = post_to(port, "/v1/events?write_key=nope", beacon.as_bytes(), &[]);
    assert_eq!(status, 401);

    let (status, _, response) = post(port, b"[]", &[("Authorization", "Bearer wrong".into())]);
    assert_eq!(status, 401, "{response}");
    let (status, _, _) = post(port, b"[]", &[]);
    assert_eq!(status, 401);

    // Too large, plain and after decompression: 413, and the body is kept (truncated).
    let big = vec![b'x'; 300_000];
    let (status, _, response) = post(port, &big, &bearer());
    assert_eq!(status, 413, "{response}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 5_000_000]).expect("gzip");
    let bomb = gz.finish().expect("gzip");
    let (status, _, _) =
        post(port, &bomb, &[("Authorization", format!("Bearer {KEY}")), ("Content-Encoding", "gzip".into())]);
    assert_eq!(status, 413);
    // Every event of a batch rejected: 400, all kept.
    let (status, _, response) = post(port, b"{\"kind\":\"fax\"}", &bearer());
    assert_eq!(status, 400, "{response}");
    let rejected = read_all::<RejectedEvent>(&topics.name(TopicRole::Rejected));
    let oversized = rejected.iter().filter(|(_, r)| ingest::validate::reason_code(r.reason) == "oversized").count();
    assert_eq!(oversized, 2, "both 413s are kept");
    assert!(rejected.iter().any(|(_, r)| r.original == b"{\"kind\":\"fax\"}"));
    let unresolved = read_all::<EngagementEvent>(&topics.name(TopicRole::Unresolved));
    assert_eq!(unresolved.len(), 3);
}

#[test]
fn with_the_broker_down_the_collector_answers_503_and_retried_events_arrive_after() {
    let broker = PrivateBroker::start();
    let topics = TestTopics::new("ingest-outage");
    let port = free_port();
    let mut vars = vec![("ABM_INGEST__PRODUCE_TIMEOUT_MS", "3000".into()), ("ABM_INGEST__RAW_TOPICS", "false".into())];
    vars.push(("ABM_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap()));
    let mut env = topics.env();
    env.retain(|(key, _)| *key != "ABM_KAFKA__BOOTSTRAP_SERVERS");
    env.extend(vars);
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_INGEST__WRITE_KEYS__SITE", KEY.into()));
    let _ingest = ServiceProcess::start(Path::new(INGEST), &[], &env);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), "ingest ready");

    let batch = |tag: &str| {
        let now = now_ms();
        let events: Vec<String> = (0..5)
            .map(|i| format!(r#"{{"event_id":"{tag}-{i}","kind":"web_visit","occurred_at":{now},"domain":"x{i}.example","properties":{{"url":"/"}}}}"#))
            .collect();
        format!("[{}]", events.join(","))
    };
    let (status, _, response) = post(port, batch("before").as_bytes(), &bearer());
    assert_eq!(status, 200, "{response}");

    broker.stop();
    let started = Instant::now();
    let (status, headers, response) = post(port, batch("during").as_bytes(), &bearer());
    let waited = started.elapsed();
    assert_eq!(status, 503, "{response}");
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("5"));
    assert!(waited < Duration::from_secs(20), "answered after {waited:?}; bounded by produce_timeout_ms");
    assert!(metric(port, "abm_ingest_events_deferred_total", &["transport=\"http\""]) >= 5.0);

    broker.resume();
    // The sender retries the same batch until it is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, _) = post(port, batch("during").as_bytes(), &bearer());
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not accepted after the broker returned (last status {status})");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Read from the private broker: every event of both batches is there, as sent.
    let ids = read_ids(&broker.bootstrap(), &topics.name(TopicRole::Unresolved));
    let expected: BTreeSet<String> = (0..5).flat_map(|i| [format!("before-{i}"), format!("during-{i}")]).collect();
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct, expected, "every event arrived; repeats (if any) carry the same event_id");
}

/// Event ids in `topic` on the broker at `bootstrap`.
/// A raw-topic consumer that stops fetching (the failure reported against librdkafka after
/// broker restarts, injected: its partitions paused for good after 50 records) is noticed by
/// the normaliser's watch and healed by a new consumer: every record is normalised, each once.
#[test]
fn a_raw_topic_consumer_that_stops_fetching_is_replaced_and_every_record_is_taken_once() {
    let topics = TestTopics::new("ingest-raw-stall");
    topics.create();
    let kafka = producer();
    send(&kafka, &topics.name(TopicRole::Accounts), "acme", &abm_testkit::acme_account());
    flush(&kafka);
    let port = free_port();
    let ingest = start_ingest(
        &topics,
        port,
        &[("ABM_INGEST__STALL_AFTER_MS", "3000".into()), ("ABMTEST_FAULT_RAW_STALL_AFTER_MESSAGES", "50".into())],
    );
    // Records keep arriving after the fault: the paused consumer leaves them waiting.
    let raw_topic = topics.name(TopicRole::RawWebVisits);
    let now = now_ms();
    let ids: BTreeSet<String> = (0..200).map(|n| format!("raw-stall-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let json = format!(
            r#"{{"event_id":"{id}","kind":"web_visit","occurred_at":{now},"domain":"acme.example","properties":{{"url":"https://v.example/p{n}"}}}}"#
        );
        send_bytes(&kafka, &raw_topic, "tracker", json.as_bytes());
        if n % 50 == 49 {
            flush(&kafka);
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    flush(&kafka);
    let received = || metric(port, "abm_ingest_events_received_total", &["transport=\"kafka\""]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while received() < ids.len() as f64 {
        assert!(Instant::now() < deadline, "{} of {} raw records taken\n{}", received(), ids.len(), ingest.stderr());
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(received(), ids.len() as f64, "each record once\n{}", ingest.stderr());
    assert_eq!(metric(port, "abm_ingest_raw_loop_heals_total", &[]), 1.0, "{}", ingest.stderr());
    // The gauge counts from the last progress (a heal does not reset it): 0 at the next check.
    abm_testkit::wait_for_metric(
        port,
        "abm_ingest_raw_loop_stalled_seconds",
        &[],
        0.0,
        Duration::from_secs(5),
        "progressing again",
    );
    assert!(ingest.stderr().contains("have input but nothing was taken"), "{}", ingest.stderr());
    let engaged: BTreeSet<String> =
        read_ids(&abm_testkit::bootstrap_servers(), &topics.name(TopicRole::Engagement)).into_iter().collect();
    assert_eq!(engaged, ids);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(30), "ready again after healing");
}

fn read_ids(bootstrap: &str, topic: &str) -> Vec<String> {
    abm_testkit::read_all_bytes_from(bootstrap, topic)
        .into_iter()
        .map(|(_, bytes)| abm_schemas::decode::<EngagementEvent>(&bytes).expect("decodes").event_id)
        .collect()
}
