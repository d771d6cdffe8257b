//! The Segment-compatible collector driven by the real client libraries, unchanged:
//! `@segment/analytics-node` and `@rudderstack/rudder-sdk-node` (npm) from Node, and
//! analytics.js 2.0 (`@segment/analytics-next`) in headless Chromium (Debian's, through
//! playwright-core). Their events arrive scored, and a visitor who browses anonymously and
//! identifies later ends with the score of one identified from the start (identity stitching),
//! with every Avro topic in Confluent framing through the schema registry under test.

use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{Account, Tier};
use abm_testkit::{
    ServiceProcess, TestTopics, flush, free_port, http_get, producer, repository_root, run_node, send, wait_for_status,
    workspace_binary,
};

const SERVER_KEY: &str = "server-write-key";
const SITE_KEY: &str = "site-write-key";

fn account(id: &str, domain: &str) -> Account {
    Account {
        account_id: id.into(),
        name: id.into(),
        domains: vec![domain.into()],
        tier: Tier::Tier1,
        owner: format!("sdr-{id}@vendor.example"),
        industry: None,
        employees: None,
        committee: None,
        updated_at: 0,
    }
}

/// The scorer's view of `account` once `events` events are applied (or the last view after
/// the deadline, for the assertion's message).
fn scored(port: u16, account: &str, events: u64, deadline: Instant) -> serde_json::Value {
    loop {
        let body = http_get(port, &format!("/v1/accounts/{account}"))
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .unwrap_or_default();
        if body["events_applied"].as_u64() == Some(events) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn count_of(view: &serde_json::Value, kind: &str) -> u64 {
    view["counts"]
        .as_array()
        .and_then(|counts| counts.iter().find(|c| c["kind"] == kind))
        .and_then(|c| c["last_90_days"].as_u64())
        .unwrap_or(0)
}

#[test]
fn segment_and_rudderstack_clients_are_scored_and_a_late_identify_scores_as_an_early_one() {
    let topics = TestTopics::new("segment");
    topics.create();
    let kafka = producer();
    for (id, domain) in
        [("acme", "acme.example"), ("beta", "beta.example"), ("gamma", "gamma.example"), ("delta", "delta.example")]
    {
        send(&kafka, &topics.name(TopicRole::Accounts), id, &account(id, domain));
    }
    flush(&kafka);

    let (ingest_port, scorer_port) = (free_port(), free_port());
    let config = std::env::temp_dir().join(format!("{}-ingest.toml", topics.prefix));
    std::fs::write(
        &config,
        format!(
            "[ingest.write_keys]\nbackend = \"{SERVER_KEY}\"\n[ingest.browser_keys.site]\nkey = \"{SITE_KEY}\"\nkinds = [\"web_visit\", \"demo_request\"]\n"
        ),
    )
    .expect("config");
    let prefix = &topics.prefix;
    // Every Avro topic in Confluent framing, the stitcher's too: the Segment path through the
    // schema registry under test.
    let registry =
        [("ABM_REGISTRY__URL", abm_testkit::registry_url()), ("ABM_REGISTRY__FRAMING", "confluent".to_owned())];
    let mut env = abm_testkit::with_env(topics.env(), &registry);
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{ingest_port}")));
    env.push(("ABM_INGEST__GROUP_ID", format!("{prefix}-ingest")));
    env.push(("ABM_INGEST__STITCH__GROUP_ID", format!("{prefix}-stitch")));
    env.push(("ABM_INGEST__STITCH__INSTANCE_ID", format!("{prefix}-stitch")));
    let mut ingest =
        ServiceProcess::start(&workspace_binary("ingest"), &["--config", &config.display().to_string()], &env);
    let mut env = abm_testkit::with_env(topics.env(), &registry);
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{scorer_port}")));
    env.push(("ABM_SCORER__GROUP_ID", format!("{prefix}-scorer")));
    env.push(("ABM_SCORER__INSTANCE_ID", format!("{prefix}-scorer")));
    let mut scorer = ServiceProcess::start(&workspace_binary("scorer"), &[], &env);
    wait_for_status(ingest_port, "/readyz", 200, Duration::from_secs(90), "ingest did not get ready");
    wait_for_status(scorer_port, "/readyz", 200, Duration::from_secs(90), "scorer did not get ready");

    // Server-side libraries: Segment's (gamma) and RudderStack's (delta).
    let collector = format!("http://127.0.0.1:{ingest_port}");
    let (ok, stdout, stderr) =
        run_node("segment-server-clients.mjs", &[&collector, SERVER_KEY, "gamma.example", "delta.example"]);
    assert!(ok, "the server-side clients failed: {stderr}\ningest: {}", ingest.stderr());
    let sent: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the ids sent");

    // analytics.js in Chromium: acme identifies late, beta from the start.
    let screenshots = repository_root().join("target/test-screenshots");
    std::fs::create_dir_all(&screenshots).expect("screenshot directory");
    let screenshot = screenshots.join("segment-analytics-js.png");
    let (ok, stdout, stderr) = run_node(
        "segment-browser.mjs",
        &[
            &format!("127.0.0.1:{ingest_port}"),
            SITE_KEY,
            "acme.example",
            "beta.example",
            &screenshot.display().to_string(),
        ],
    );
    assert!(ok, "analytics.js failed: {stderr}\ningest: {}", ingest.stderr());
    let browsed: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the visitors");
    assert_ne!(browsed["late"], browsed["early"], "two visitors");
    assert!(screenshot.exists(), "a screenshot of the page");

    let deadline = Instant::now() + Duration::from_secs(90);
    // Each server-side session: a page and a demo request scored (identify is no event; the
    // unmapped "Button Clicked" is ignored), attributed to its identified contact.
    for (account, library, persona) in [("gamma", "segment", "economic_buyer"), ("delta", "rudder", "economic_buyer")] {
        let view = scored(scorer_port, account, 2, deadline);
        assert_eq!(view["events_applied"], 2, "{library}: {view}\ningest: {}", ingest.stderr());
        assert_eq!((count_of(&view, "web_visit"), count_of(&view, "demo_request")), (1, 1), "{library}: {view}");
        let ids: Vec<&str> = view["recent_events"]
            .as_array()
            .map(|events| events.iter().filter_map(|e| e["event_id"].as_str()).collect())
            .unwrap_or_default();
        for id in sent[library]["events"].as_array().expect("ids") {
            assert!(
                ids.contains(&id.as_str().unwrap_or_default()),
                "{library}: messageId {id} is the event_id: {ids:?}"
            );
        }
        // Both events count for the identified user, with the persona its identify's title gives.
        let contacts = view["contacts"].as_array().cloned().unwrap_or_default();
        assert_eq!(contacts.len(), 1, "{library}: {view}");
        assert_eq!(contacts[0]["contact_id"], sent[library]["user"], "{library}: {view}");
        assert_eq!(contacts[0]["persona"], persona, "{library}: {view}");
    }

    // The browser visitors: three pages each, the same score whether the visitor identified
    // before browsing (beta) or after two anonymous pages (acme).
    let late = scored(scorer_port, "acme", 3, deadline);
    let early = scored(scorer_port, "beta", 3, deadline);
    assert_eq!(
        (late["events_applied"].as_u64(), early["events_applied"].as_u64()),
        (Some(3), Some(3)),
        "{late}\n{early}"
    );
    let (late_score, early_score) = (late["score"].as_f64().unwrap_or(0.0), early["score"].as_f64().unwrap_or(-1.0));
    assert!(late_score > 0.0, "{late}");
    // Equal up to the clock-skew correction of each event (sentAt vs arrival: a few ms, while
    // the decay's half-life is 14 days, so 1e-6 of relative room is thousands of times more).
    assert!((late_score - early_score).abs() <= 1e-6 * early_score, "late {late_score} vs early {early_score}");
    for (view, user) in [(&late, "user-acme.example"), (&early, "user-beta.example")] {
        let contacts = view["contacts"].as_array().cloned().unwrap_or_default();
        assert_eq!(contacts.len(), 1, "{view}");
        assert_eq!(contacts[0]["contact_id"], user, "every page counts for the identified contact: {view}");
        assert_eq!(contacts[0]["persona"], "economic_buyer", "from the title CFO: {view}");
    }

    // The visitors' topics were Confluent-framed (magic byte 0).
    for role in [TopicRole::Identity, TopicRole::IdentityGraph, TopicRole::Engagement] {
        let records = abm_testkit::read_all_bytes(&topics.name(role));
        assert!(!records.is_empty() && records.iter().all(|(_, bytes)| bytes.first() == Some(&0)), "{role:?}");
    }
    for process in [&mut ingest, &mut scorer] {
        process.signal("TERM");
        assert!(process.wait(Duration::from_secs(30)).success(), "{}", process.stderr());
    }
    let _ = std::fs::remove_file(&config);
}

/// Posts Segment batches to `/v1/batch` with the server key; panics unless each is answered 200.
fn post_batches(port: u16, messages: &[serde_json::Value]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = reqwest::Client::new();
    for chunk in messages.chunks(200) {
        let (status, body) = runtime.block_on(async {
            let response = client
                .post(format!("http://127.0.0.1:{port}/v1/batch"))
                .basic_auth(SERVER_KEY, Some(""))
                .json(&serde_json::json!({ "batch": chunk }))
                .send()
                .await
                .expect("posted");
            (response.status().as_u16(), response.text().await.unwrap_or_default())
        });
        assert_eq!(status, 200, "{body}");
    }
}

/// The stitcher releases each waiting event exactly once, whatever kill -9 interrupts: the
/// collector takes every message once (its stitcher off), then a stitcher alone works through
/// `abm.identity` while it is killed and restarted; `abm.engagement` ends with every page
/// once, enriched with its visitor's contact.
#[test]
fn kill_9_during_stitching_loses_and_repeats_nothing() {
    let topics = TestTopics::new("stitch-kill");
    topics.create();
    let kafka = producer();
    send(&kafka, &topics.name(TopicRole::Accounts), "acme", &account("acme", "acme.example"));
    flush(&kafka);
    let prefix = topics.prefix.clone();
    let config = std::env::temp_dir().join(format!("{prefix}-ingest.toml"));
    std::fs::write(&config, format!("[ingest.write_keys]\nbackend = \"{SERVER_KEY}\"\n")).expect("config");
    let config_arg = config.display().to_string();
    let start = |stitch: bool, port: u16| {
        let mut env = topics.env();
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
        env.push(("ABM_INGEST__GROUP_ID", format!("{prefix}-ingest")));
        env.push(("ABM_INGEST__RAW_TOPICS", "false".into()));
        env.push(("ABM_INGEST__STITCH__ENABLED", stitch.to_string()));
        env.push(("ABM_INGEST__STITCH__GROUP_ID", format!("{prefix}-stitch")));
        env.push(("ABM_INGEST__STITCH__INSTANCE_ID", format!("{prefix}-stitch")));
        env.push(("ABM_INGEST__STITCH__COMMIT_INTERVAL_MS", "20".into()));
        let process = ServiceProcess::start(&workspace_binary("ingest"), &["--config", &config_arg], &env);
        wait_for_status(port, "/readyz", 200, Duration::from_secs(90), "ingest did not get ready");
        process
    };

    // 300 visitors, 20 pages each: the even ones identify before browsing, the odd ones after.
    let (visitors, pages) = (300, 20);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let identify = |v: usize| {
        serde_json::json!({"type": "identify", "anonymousId": format!("v{v}"), "userId": format!("u{v}"),
            "messageId": format!("i{v}"), "traits": {"email": format!("p{v}@acme.example"), "title": "Director"}})
    };
    let page = |v: usize, p: usize| {
        serde_json::json!({"type": "page", "anonymousId": format!("v{v}"), "messageId": format!("v{v}-p{p}"),
            "timestamp": now - 3_600_000 + (p as i64) * 1000, "properties": {"url": format!("https://vendor.example/p{p}")}})
    };
    let mut messages = Vec::new();
    for v in 0..visitors {
        if v % 2 == 0 {
            messages.push(identify(v));
        }
        messages.extend((0..pages).map(|p| page(v, p)));
        if v % 2 == 1 {
            messages.push(identify(v));
        }
    }
    let port = free_port();
    let mut collector = start(false, port);
    post_batches(port, &messages);
    collector.signal("TERM");
    assert!(collector.wait(Duration::from_secs(30)).success(), "{}", collector.stderr());

    // The stitcher alone, killed three times while it works.
    let engagement = topics.name(TopicRole::Engagement);
    let expected = visitors * pages;
    let mut seed = now as u64 | 1;
    for round in 0..3 {
        let port = free_port();
        let mut stitcher = start(true, port);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 900));
        stitcher.signal("KILL");
        let _ = stitcher.wait(Duration::from_secs(30));
        eprintln!("round {round}: killed with {} events released", abm_testkit::read_all_bytes(&engagement).len());
    }
    let port = free_port();
    let mut stitcher = start(true, port);
    let deadline = Instant::now() + Duration::from_secs(120);
    let released = loop {
        let released = abm_testkit::read_all::<abm_schemas::EngagementEvent>(&engagement);
        if released.len() >= expected || Instant::now() > deadline {
            break released;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // A little longer: anything beyond `expected` would be a repeat.
    std::thread::sleep(Duration::from_secs(2));
    let released = if released.len() >= expected {
        abm_testkit::read_all::<abm_schemas::EngagementEvent>(&engagement)
    } else {
        released
    };
    let mut ids: Vec<&str> = released.iter().map(|(_, event)| event.event_id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "an event was released twice");
    assert_eq!(ids.len(), expected, "every page released once\n{}", stitcher.stderr());
    for (key, event) in &released {
        let visitor = event.event_id.split('-').next().unwrap_or_default();
        let contact = event.contact.as_ref().expect("enriched");
        assert_eq!(key, "acme");
        assert_eq!(contact.email.as_deref(), Some(format!("p{}@acme.example", &visitor[1..]).as_str()), "{event:?}");
        assert_eq!(contact.contact_id.as_deref(), Some(format!("u{}", &visitor[1..]).as_str()));
    }
    stitcher.signal("TERM");
    assert!(stitcher.wait(Duration::from_secs(30)).success(), "{}", stitcher.stderr());
    let _ = std::fs::remove_file(&config);
}
