//! The Segment-compatible collector driven by the real client libraries, unchanged:
//! `@segment/analytics-node` and `@rudderstack/rudder-sdk-node` (npm) from Node, and
//! analytics.js 2.0 (`@segment/analytics-next`) in headless Chromium (Debian's, through
//! playwright-core). Their events arrive scored, and a visitor who browses anonymously and
//! identifies later ends with the score of one identified from the start (identity stitching).

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
    let mut env = topics.env();
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{ingest_port}")));
    env.push(("ABM_INGEST__GROUP_ID", format!("{prefix}-ingest")));
    env.push(("ABM_INGEST__STITCH__GROUP_ID", format!("{prefix}-stitch")));
    env.push(("ABM_INGEST__STITCH__INSTANCE_ID", format!("{prefix}-stitch")));
    let mut ingest =
        ServiceProcess::start(&workspace_binary("ingest"), &["--config", &config.display().to_string()], &env);
    let mut env = topics.env();
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
            assert!(ids.contains(&id.as_str().unwrap_or_default()), "{library}: messageId {id} is the event_id: {ids:?}");
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
    assert_eq!((late["events_applied"].as_u64(), early["events_applied"].as_u64()), (Some(3), Some(3)), "{late}\n{early}");
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

    for process in [&mut ingest, &mut scorer] {
        process.signal("TERM");
        assert!(process.wait(Duration::from_secs(30)).success(), "{}", process.stderr());
    }
    let _ = std::fs::remove_file(&config);
}
