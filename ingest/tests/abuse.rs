//! The public edge under attack, over real HTTP against the real broker: junk and huge batches
//! get bounded answers, slow clients are cut off, connections are bounded, a browser key cannot
//! forge kinds or accounts nor exceed its rate, and what is acknowledged is kept.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{EngagementEvent, RejectReason, RejectedEvent};
use abm_testkit::{ServiceProcess, TestTopics, flush, free_port, http_request, metric, producer, read_all, send};

const INGEST: &str = env!("CARGO_BIN_EXE_ingest");
const SERVER_KEY: &str = "server-secret";
/// A browser key with the characters `encodeURIComponent` escapes.
const BROWSER_KEY: &str = "pub/key+with=odd&chars";
const ORIGIN: &str = "https://www.vendor.example";

use abm::clock::now_ms;

struct Ingest {
    topics: TestTopics,
    port: u16,
    process: ServiceProcess,
}

/// Ingest with a server key and browser key `site` (its extra settings in `browser`, TOML).
fn start(name: &str, extra: &[(&'static str, String)], browser: &str) -> Ingest {
    let topics = TestTopics::new(name);
    topics.create();
    let kafka = producer();
    send(&kafka, &topics.name(TopicRole::Accounts), "acme", &abm_testkit::acme_account());
    flush(&kafka);
    let port = free_port();
    let mut vars = topics.env();
    vars.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    vars.push(("ABM_INGEST__GROUP_ID", format!("{}-ingest", topics.prefix)));
    vars.extend_from_slice(extra);
    let config = std::env::temp_dir().join(format!("{}.toml", topics.prefix));
    std::fs::write(
        &config,
        format!(
            "[ingest.write_keys]\nbackend = \"{SERVER_KEY}\"\n\n[ingest.browser_keys.site]\nkey = \"{BROWSER_KEY}\"\norigins = [\"{ORIGIN}\"]\n{browser}\n"
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let mut process = ServiceProcess::start(Path::new(INGEST), &["--config", &config], &vars);
    process.wait_ready(port, Duration::from_secs(60));
    Ingest { topics, port, process }
}

fn server_auth() -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {SERVER_KEY}"))]
}

fn browser_path() -> String {
    let encoded: String = form_urlencoded::byte_serialize(BROWSER_KEY.as_bytes()).collect();
    format!("/v1/events?write_key={encoded}")
}

fn visit(id: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","kind":"web_visit","occurred_at":{},"domain":"acme.example","properties":{{"url":"https://v.example/pricing"}}}}"#,
        now_ms()
    )
}

#[test]
fn junk_and_huge_batches_get_bounded_answers_and_are_kept() {
    let ingest = start("abuse-junk", &[("ABM_INGEST__MAX_BATCH_EVENTS", "1000".into())], "");
    // 1 MiB of junk lines: 400 with 50 problems and a count, not one result per line.
    let line = "x".repeat(63);
    let lines = (1024 * 1024 - 1) / 64;
    let body = format!("{line}\n").repeat(lines);
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/events", body.as_bytes(), &server_auth());
    // More lines than the batch cap: the whole body is refused (and kept) as oversized.
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("ingest.max_batch_events"), "{answer}");
    // Under the cap: every event answered for, the answer a few KB.
    let body = format!("{line}\n").repeat(900);
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/events", body.as_bytes(), &server_auth());
    assert_eq!(status, 400, "{answer}");
    assert!(answer.len() < 20_000, "the answer is bounded: {} bytes", answer.len());
    let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(json["rejected"], 900);
    assert_eq!(json["problems"].as_array().map(Vec::len), Some(50));
    assert_eq!(json["problems_omitted"], 850);
    assert_eq!(json["problems"][0]["reason"], "malformed_json");
    // A good batch: counts by destination.
    let body = format!("[{},{}]", visit("good-1"), visit("good-2"));
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/events", body.as_bytes(), &server_auth());
    assert_eq!(status, 200, "{answer}");
    let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!((json["accepted"].as_u64(), json["engaged"].as_u64()), (Some(2), Some(2)), "{answer}");
    // Everything answered for is kept: 900 junk lines and the oversized body.
    let rejected = read_all::<RejectedEvent>(&ingest.topics.name(TopicRole::Rejected));
    let count = |reason: RejectReason| rejected.iter().filter(|(_, r)| r.reason == reason).count();
    assert_eq!(count(RejectReason::MalformedJson), 900);
    assert_eq!(count(RejectReason::Oversized), 1);
    assert_eq!(metric(ingest.port, "abm_ingest_events_received_total", &[]), 903.0);
}

#[test]
fn every_member_of_a_multi_member_gzip_body_is_read() {
    let ingest = start("abuse-gzip", &[], "");
    let member = |text: String| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).expect("gzip");
        gz.finish().expect("gzip")
    };
    let mut body = member(format!("{}\n", visit("gz-1")));
    body.extend(member(format!("{}\n", visit("gz-2"))));
    let mut headers = server_auth();
    headers.push(("Content-Encoding", "gzip".into()));
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/events", &body, &headers);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""accepted":2"#), "both members: {answer}");
}

#[test]
fn a_gzip_bomb_is_refused_after_the_body_limit_and_kept() {
    let ingest = start("abuse-bomb", &[], "");
    // 256 MiB of zeros in 256 KiB of gzip: decompression stops at ingest.max_body_bytes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0_u8; 1024 * 1024];
    for _ in 0..256 {
        gz.write_all(&zeros).expect("gzip");
    }
    let bomb = gz.finish().expect("gzip");
    assert!(bomb.len() < 2 * 1024 * 1024, "{} bytes", bomb.len());
    let mut headers = server_auth();
    headers.push(("Content-Encoding", "gzip".into()));
    let before = abm_testkit::rss_bytes(ingest.process.pid());
    for _ in 0..5 {
        let (status, _, answer) = http_request(ingest.port, "POST", "/v1/events", &bomb, &headers);
        assert_eq!(status, 413, "{answer}");
        assert!(answer.contains("after decompression"), "{answer}");
    }
    let grown = abm_testkit::rss_bytes(ingest.process.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "five bombs of 256 MiB grew ingest by {} MiB", grown / 1_048_576);
    // Kept, truncated, as oversized; the service goes on.
    let rejected = read_all::<RejectedEvent>(&ingest.topics.name(TopicRole::Rejected));
    assert_eq!(rejected.iter().filter(|(_, r)| r.reason == RejectReason::Oversized).count(), 5);
    let (status, _, _) =
        http_request(ingest.port, "POST", "/v1/events", visit("after-bomb").as_bytes(), &server_auth());
    assert_eq!(status, 200);
}

#[test]
fn many_tiny_events_are_each_answered_for_and_kept() {
    let ingest = start("abuse-tiny", &[], "");
    // 5000 (the batch cap) empty objects: each rejected for its missing fields, the answer bounded.
    let body = "{}\n".repeat(5000);
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/events", body.as_bytes(), &server_auth());
    assert_eq!(status, 400, "{}", &answer[..answer.len().min(500)]);
    assert!(answer.len() < 20_000, "the answer is bounded: {} bytes", answer.len());
    let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(json["rejected"], 5000);
    assert_eq!(json["problems_omitted"], 4950);
    // One more than the cap: refused whole (413) and kept as one oversized rejection.
    let body = "{}\n".repeat(5001);
    let (status, _, _) = http_request(ingest.port, "POST", "/v1/events", body.as_bytes(), &server_auth());
    assert_eq!(status, 413);
    // 5000 small valid visits in one batch: every one acknowledged is in the log.
    let now = now_ms();
    let visits: Vec<String> = (0..5000)
        .map(|n| format!(r#"{{"event_id":"t{n}","kind":"web_visit","occurred_at":{now},"domain":"acme.example","properties":{{"url":"/"}}}}"#))
        .collect();
    let (status, _, answer) =
        http_request(ingest.port, "POST", "/v1/events", visits.join("\n").as_bytes(), &server_auth());
    assert_eq!(status, 200, "{}", &answer[..answer.len().min(500)]);
    assert!(answer.contains(r#""accepted":5000"#), "{answer}");
    let engaged: BTreeSet<String> = read_all::<EngagementEvent>(&ingest.topics.name(TopicRole::Engagement))
        .into_iter()
        .map(|(_, e)| e.event_id)
        .collect();
    assert_eq!(engaged, (0..5000).map(|n| format!("t{n}")).collect::<BTreeSet<_>>());
    let rejected = read_all::<RejectedEvent>(&ingest.topics.name(TopicRole::Rejected));
    assert_eq!(rejected.iter().filter(|(_, r)| r.reason == RejectReason::MissingField).count(), 5000);
    assert_eq!(rejected.iter().filter(|(_, r)| r.reason == RejectReason::Oversized).count(), 1);
    // Conservation: every event received is accepted or rejected.
    let received = metric(ingest.port, "abm_ingest_events_received_total", &[]);
    let accepted = metric(ingest.port, "abm_ingest_events_accepted_total", &[]);
    let refused = metric(ingest.port, "abm_ingest_events_rejected_total", &[]);
    assert_eq!(received, accepted + refused, "received {received} = accepted {accepted} + rejected {refused}");
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_connections_are_bounded() {
    let ingest = start(
        "abuse-slow",
        &[
            ("ABM_HTTP__HEADER_READ_TIMEOUT_MS", "2000".into()),
            ("ABM_HTTP__BODY_READ_TIMEOUT_MS", "1000".into()),
            ("ABM_HTTP__MAX_CONNECTIONS", "8".into()),
        ],
        "",
    );
    let closed_within = |mut stream: TcpStream, limit: Duration| {
        stream.set_read_timeout(Some(limit)).expect("timeout");
        let started = Instant::now();
        let mut buffer = [0_u8; 1024];
        let mut answer = Vec::new();
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return Some((started.elapsed(), String::from_utf8_lossy(&answer).into_owned())),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some((started.elapsed(), String::from_utf8_lossy(&answer).into_owned()));
                }
                Err(_) => return None,
            }
        }
    };
    // Slowloris: headers never finished.
    let mut stream = TcpStream::connect(("127.0.0.1", ingest.port)).expect("connects");
    stream.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n").expect("writes");
    let (after, _) = closed_within(stream, Duration::from_secs(10)).expect("the server closes a slow header");
    assert!(after < Duration::from_secs(5), "{after:?}");
    // Idle: connected, nothing sent.
    let stream = TcpStream::connect(("127.0.0.1", ingest.port)).expect("connects");
    assert!(closed_within(stream, Duration::from_secs(10)).is_some(), "an idle connection is closed");
    // A body that never finishes: 408.
    let mut stream = TcpStream::connect(("127.0.0.1", ingest.port)).expect("connects");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVER_KEY}\r\nContent-Length: 1000\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).expect("writes");
    let (_, answer) = closed_within(stream, Duration::from_secs(10)).expect("answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // More connections than allowed: probes still get through (on the few connections kept
    // for them), nothing else does, the extra ones beyond those are closed at once, and the
    // service serves again once connections close.
    let mut held: Vec<TcpStream> =
        (0..8).map(|_| TcpStream::connect(("127.0.0.1", ingest.port)).expect("connects")).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, _) = http_request(ingest.port, "GET", "/healthz", b"", &[]);
    assert_eq!(status, 200, "liveness answers through a connection flood");
    let (status, _, _) = http_request(ingest.port, "GET", "/readyz", b"", &[]);
    assert_eq!(status, 200, "readiness answers through a connection flood");
    let (status, headers, _) =
        http_request(ingest.port, "POST", "/v1/events", visit("flood").as_bytes(), &server_auth());
    assert_eq!(status, 503, "events wait for a connection of their own");
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
    held.extend(
        (0..abm::ops::PROBE_CONNECTIONS).map(|_| TcpStream::connect(("127.0.0.1", ingest.port)).expect("connects")),
    );
    std::thread::sleep(Duration::from_millis(200));
    let extra = TcpStream::connect(("127.0.0.1", ingest.port)).expect("connects");
    let (after, answer) = closed_within(extra, Duration::from_secs(5)).expect("closed at once");
    assert!(after < Duration::from_secs(1) && answer.is_empty(), "{after:?} {answer}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(metric(ingest.port, "abm_http_connections_refused_total", &[]) >= 1.0);
    let (status, _, _) = http_request(ingest.port, "POST", "/v1/events", visit("after").as_bytes(), &server_auth());
    assert_eq!(status, 200, "serves again once connections closed");
}

#[test]
fn a_browser_key_cannot_forge_kinds_or_accounts_and_is_rate_limited() {
    let ingest = start("abuse-browser", &[], "client_requests_per_second = 1\nclient_burst = 6");
    let from_site = vec![("Origin", ORIGIN.to_owned())];
    // The key, URL-encoded as the tracker sends it, works; its visit is accepted.
    let (status, headers, answer) =
        http_request(ingest.port, "POST", &browser_path(), visit("b-visit").as_bytes(), &from_site);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers.get("access-control-allow-origin").map(String::as_str), Some(ORIGIN));
    // Forged: a demo request, an explicit account, a persona. Each rejected as not_allowed, kept.
    let now = now_ms();
    let forged = [
        format!(
            r#"{{"event_id":"b-demo","kind":"demo_request","occurred_at":{now},"domain":"acme.example","properties":{{"form":"contact-sales"}}}}"#
        ),
        format!(
            r#"{{"event_id":"b-account","kind":"web_visit","occurred_at":{now},"account_id":"evil-{now}","properties":{{"url":"https://v.example/"}}}}"#
        ),
        format!(
            r#"{{"event_id":"b-persona","kind":"web_visit","occurred_at":{now},"domain":"acme.example","contact":{{"email":"x@acme.example","persona":"economic_buyer"}},"properties":{{"url":"https://v.example/"}}}}"#
        ),
    ];
    let body = format!("[{}]", forged.join(","));
    let (status, _, answer) = http_request(ingest.port, "POST", &browser_path(), body.as_bytes(), &from_site);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer.matches("not_allowed").count(), 3, "{answer}");
    // The same through the server key: accepted (trusted sources keep the whole format).
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/events", body.as_bytes(), &server_auth());
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""accepted":3"#), "{answer}");
    // Another origin: 403. The CORS preflight: allowed for the site, refused for others.
    let elsewhere = vec![("Origin", "https://evil.example".to_owned())];
    let (status, _, _) = http_request(ingest.port, "POST", &browser_path(), visit("b-evil").as_bytes(), &elsewhere);
    assert_eq!(status, 403);
    let mut preflight = from_site.clone();
    preflight.push(("Access-Control-Request-Method", "POST".into()));
    let (status, headers, _) = http_request(ingest.port, "OPTIONS", &browser_path(), b"", &preflight);
    assert_eq!(status, 204);
    assert_eq!(headers.get("access-control-allow-origin").map(String::as_str), Some(ORIGIN));
    let (status, _, _) = http_request(ingest.port, "OPTIONS", &browser_path(), b"", &elsewhere);
    assert_eq!(status, 403);
    // Flood from one client: 429 with Retry-After once the burst is spent.
    let mut limited = None;
    for n in 0..20 {
        let (status, headers, _) =
            http_request(ingest.port, "POST", &browser_path(), visit(&format!("b-flood-{n}")).as_bytes(), &from_site);
        if status == 429 {
            limited = headers.get("retry-after").cloned();
            break;
        }
        assert_eq!(status, 200);
    }
    let retry_after: u64 = limited.expect("rate limited").parse().expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(metric(ingest.port, "abm_ingest_rate_limited_total", &["key=\"site\""]) >= 1.0);

    let rejected = read_all::<RejectedEvent>(&ingest.topics.name(TopicRole::Rejected));
    let refused: BTreeSet<String> = rejected
        .iter()
        .filter(|(_, r)| r.reason == RejectReason::NotAllowed)
        .filter_map(|(_, r)| r.event_id.clone())
        .collect();
    assert_eq!(refused, ["b-account", "b-demo", "b-persona"].map(String::from).into());
    // No account was created from the browser: nothing engaged for the forged id.
    let engaged = read_all::<EngagementEvent>(&ingest.topics.name(TopicRole::Engagement));
    let browser_accounts: BTreeSet<&str> =
        engaged.iter().filter(|(_, e)| e.source == "http:site").map(|(key, _)| key.as_str()).collect();
    assert_eq!(browser_accounts, ["acme"].into(), "browser events resolve by domain only");
    // The keys are named in metrics and logs, never shown.
    let (_, metrics) = abm_testkit::http_get(ingest.port, "/metrics").expect("metrics");
    assert!(metrics.contains("key=\"site\""), "{metrics}");
    for secret in [BROWSER_KEY, SERVER_KEY] {
        assert!(!metrics.contains(secret), "metrics show a write key:\n{metrics}");
        assert!(!ingest.process.stderr().contains(secret), "the log shows a write key");
    }
    drop(ingest.process);
}

/// The Segment-compatible endpoints hold the same line: CORS only for a browser key's origins,
/// no key no body, a body over the Segment limit kept as oversized, a message of no known type
/// kept as sent, and a browser key's `group`, `identify` and pages land in the browser's own
/// visitor namespace with no explicit account or persona.
#[test]
fn the_segment_endpoints_hold_the_same_line() {
    use base64::Engine as _;
    let ingest = start(
        "abuse-segment",
        &[("ABM_INGEST__SEGMENT__MAX_BATCH_BYTES", "4096".into()), ("ABM_INGEST__STITCH__ENABLED", "false".into())],
        "",
    );
    // The preflight: yes for the key's origin, no for another.
    let preflight = |origin: &str| {
        let headers = [("Origin", origin.to_owned()), ("Access-Control-Request-Method", "POST".to_owned())];
        http_request(ingest.port, "OPTIONS", "/v1/t", b"", &headers)
    };
    let (status, headers, _) = preflight(ORIGIN);
    assert_eq!(status, 204);
    assert_eq!(headers.get("access-control-allow-origin").map(String::as_str), Some(ORIGIN));
    assert!(headers.get("access-control-allow-headers").is_some_and(|h| h.contains("authorization")));
    assert_eq!(preflight("https://evil.example").0, 403);

    // No key (nor one in the body): 401, nothing kept.
    let page = format!(
        r#"{{"type":"page","anonymousId":"a1","properties":{{"url":"https://v.example/"}},"timestamp":{}}}"#,
        now_ms()
    );
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/p", page.as_bytes(), &[]);
    assert_eq!(status, 401, "{answer}");
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{BROWSER_KEY}:")));
    let browser =
        [("Authorization", basic.clone()), ("Origin", ORIGIN.to_owned()), ("Content-Type", "text/plain".to_owned())];

    // A browser's batch: a page, a group naming an account, an identify naming a persona, and
    // a message of no known type.
    let batch = format!(
        r#"{{"batch":[{page},
            {{"type":"group","anonymousId":"a1","groupId":"acme","traits":{{"domain":"acme.example"}}}},
            {{"type":"identify","anonymousId":"a1","traits":{{"email":"x@gmail.com","persona":"economic_buyer"}}}},
            {{"type":"teleport","anonymousId":"a1"}}]}}"#
    );
    let (status, headers, answer) = http_request(ingest.port, "POST", "/v1/batch", batch.as_bytes(), &browser);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers.get("access-control-allow-origin").map(String::as_str), Some(ORIGIN));
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(
        (answer["pending"].as_u64(), answer["identities"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(2), Some(1)),
        "{answer}"
    );
    let observed = read_all::<abm_schemas::Visitor>(&ingest.topics.name(TopicRole::Identity));
    assert_eq!(observed.len(), 3);
    for (key, visitor) in &observed {
        assert_eq!((key.as_str(), visitor.visitor_id.as_str()), ("web:a1", "web:a1"), "the browser's namespace");
        assert_eq!(visitor.account_id, None, "no explicit account from a browser");
        assert_eq!(visitor.contact.as_ref().and_then(|c| c.persona.clone()), None, "no persona from a browser");
    }
    let rejected = read_all::<RejectedEvent>(&ingest.topics.name(TopicRole::Rejected));
    let teleport = rejected.iter().find(|(_, r)| r.reason == RejectReason::UnknownKind).expect("kept");
    assert!(String::from_utf8_lossy(&teleport.1.original).contains("teleport"), "kept as sent");

    // Over the Segment body limit (4096 here): 413, kept as oversized.
    let big = format!(r#"{{"batch":[{}]}}"#, vec![page.as_str(); 80].join(","));
    let server = [("Authorization", format!("Bearer {SERVER_KEY}"))];
    // (Through /v1/import, Segment's historical name of /v1/batch.)
    let (status, _, answer) = http_request(ingest.port, "POST", "/v1/import", big.as_bytes(), &server);
    assert_eq!(status, 413, "{answer}");
    let rejected = read_all::<RejectedEvent>(&ingest.topics.name(TopicRole::Rejected));
    assert!(rejected.iter().any(|(_, r)| r.reason == RejectReason::Oversized), "kept as oversized");
}
