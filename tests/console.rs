//! The console in a real browser: headless Chromium (Debian's, through playwright-core) against
//! ingest, the scorer and the alerter on the real broker, fed by the simulator. The browser
//! signs in, watches the alerts page while the simulator runs (a new alert appears without a
//! reload), filters and searches the accounts, clicks through to an account, opens the program;
//! each page is checked against the scorer's API and written as a screenshot under
//! `target/console-screenshots/`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use abm_testkit::{Pipeline, TEST_API_TOKEN, TestTopics, http_get, repository_root, wait_for_status};

const KEY: &str = "console-write-key";

fn api(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http_get(port, path).expect("the scorer answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn the_console_shows_real_data_and_new_alerts_live_in_chromium() {
    let topics = TestTopics::new("console");
    topics.create();
    let accounts = "60";
    // The simulator's TAL, through the import command, and the services on it.
    let pipeline = Pipeline::start(&topics, accounts, KEY);
    let (scorer_port, scorer) = (pipeline.scorer_port, &pipeline.scorer);
    // The program's topics are read (the program page answers).
    wait_for_status(scorer_port, "/v1/program", 200, Duration::from_secs(60), "the program's topics read");

    // The browser signs in and opens the alerts page.
    let shots = repository_root().join("target/console-screenshots");
    // This run's screenshots only.
    let _ = std::fs::remove_dir_all(&shots);
    assert!(
        repository_root().join("tests/node/node_modules").is_dir(),
        "tests/node/node_modules is missing: run deploy/local/test.sh (or npm ci --prefix tests/node)"
    );
    let mut browser = Command::new("node")
        .arg(repository_root().join("tests/node/console-browser.mjs"))
        .args([&format!("http://127.0.0.1:{scorer_port}"), TEST_API_TOKEN, &shots.display().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Node 20: see the README)");
    // The browser's lines, read on a thread: a hung browser fails the test instead of holding it.
    let (sender, lines) = std::sync::mpsc::channel::<String>();
    let stdout = browser.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |timeout: Duration| lines.recv_timeout(timeout).unwrap_or_default();
    let ready = next_line(Duration::from_secs(120));
    assert!(ready.contains("\"ready\":true"), "the alerts page did not get live: {ready}\n{}", scorer.stderr());

    // The simulator feeds the pipeline while the page is open.
    pipeline.simulate("4000", &[]);
    let seen = next_line(Duration::from_secs(240));
    assert!(seen.contains("\"alert\""), "no alert appeared in the feed: {seen}\n{}", scorer.stderr());
    // The pipeline settles (everything applied and committed, the program read) before the
    // browser looks at the other pages, which are then compared with the API.
    let handled = || {
        abm_testkit::metric(scorer_port, "abm_scorer_events_applied_total", &[])
            + abm_testkit::metric(scorer_port, "abm_scorer_duplicates_total", &[])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last = -1.0;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = handled();
        if now > 0.0 && now == last && abm_testkit::metric(scorer_port, "abm_scorer_snapshot_age_seconds", &[]) == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the scorer did not settle");
        last = now;
    }
    {
        use std::io::Write as _;
        let mut input = browser.stdin.take().expect("stdin");
        input.write_all(b"go\n").expect("the browser reads");
    }

    let summary_line = next_line(Duration::from_secs(180));
    let output = browser.wait_with_output().expect("node ends");
    let summary: serde_json::Value = serde_json::from_str(&summary_line).unwrap_or_else(|_| {
        panic!("no summary from the browser: {summary_line}\n{}", String::from_utf8_lossy(&output.stderr))
    });
    eprintln!("console screenshots: {}\nthe browser saw: {summary:#}", shots.display());
    assert!(summary.get("error").is_none(), "the browser failed: {summary:#}");
    assert_eq!(summary["problems"], serde_json::json!([]), "errors, or requests to other origins: {summary:#}");

    // Sign-in: the console sent the browser to it, and refused a wrong token.
    assert!(summary["login_url"].as_str().unwrap_or("").ends_with("/console/login"), "{summary:#}");
    assert_eq!(summary["wrong_token"], "Unknown token.");

    // The feed: a new alert, on the same page, one the alerter sent.
    assert_eq!(summary["same_page"], true, "the alert came without a reload");
    let fresh = &summary["fresh_alert"];
    let alert_id = fresh["id"].as_str().expect("an alert id");
    let alerts: Vec<(String, abm_schemas::SalesAlert)> =
        abm_testkit::read_all(&topics.name(abm::topics::TopicRole::SalesAlerts));
    let sent = alerts.iter().find(|(_, alert)| alert.alert_id == alert_id).map(|(_, alert)| alert);
    let sent = sent.unwrap_or_else(|| panic!("the feed's alert {alert_id} is not in abm.sales-alerts"));
    let text = fresh["text"].as_str().unwrap_or("");
    assert!(text.contains("Why:") && text.contains(&sent.next_step), "the why and the next step: {text}");

    // Accounts: the scorer's leaderboard, in its order.
    let board = api(scorer_port, "/v1/accounts?top=100");
    let page_ids: Vec<&str> =
        summary["accounts"].as_array().expect("rows").iter().filter_map(|r| r["id"].as_str()).collect();
    let api_ids: Vec<&str> =
        board["accounts"].as_array().expect("accounts").iter().filter_map(|a| a["account_id"].as_str()).collect();
    assert!(page_ids.len() >= 5, "the accounts page shows accounts: {page_ids:?}");
    assert_eq!(page_ids.len(), api_ids.len());
    // As sets: the page and the API were asked a moment apart (a contact leaving the breadth
    // window in between may swap two neighbours).
    let (page_top, api_top): (BTreeSet<&str>, BTreeSet<&str>) =
        (page_ids[..5].iter().copied().collect(), api_ids[..5].iter().copied().collect());
    assert_eq!(page_top, api_top, "the top of the page is the API's leaderboard");
    for row in summary["accounts"].as_array().expect("rows") {
        assert!(row["coverage"].as_str().unwrap_or("").ends_with('%'), "{row}");
        assert!(
            ["rising", "steady", "cooling"].iter().any(|t| row["trend"].as_str().unwrap_or("").contains(t)),
            "{row}"
        );
    }
    let mqa = summary["mqa"].as_array().expect("rows");
    assert!(!mqa.is_empty() && mqa.iter().all(|r| r["stage"] == "MQA"), "the stage filter: {mqa:?}");
    let api_mqa = api(scorer_port, "/v1/accounts?top=100&stage=mqa");
    assert_eq!(mqa.len(), api_mqa["accounts"].as_array().map_or(0, Vec::len));
    let tier_1 = summary["tier_1"].as_array().expect("rows");
    assert!(!tier_1.is_empty() && tier_1.iter().all(|r| r["tier"] == "Tier 1"), "the tier filter: {tier_1:?}");
    let api_tier_1 = api(scorer_port, "/v1/accounts?top=100&tier=1");
    assert_eq!(tier_1.len(), api_tier_1["accounts"].as_array().map_or(0, Vec::len));
    let search = summary["search"].as_str().unwrap_or("").to_lowercase();
    let searched = summary["searched"].as_array().expect("rows");
    assert!(!searched.is_empty(), "the search {search:?} finds the account it was taken from");
    for row in searched {
        let (name, id) =
            (row["name"].as_str().unwrap_or("").to_lowercase(), row["id"].as_str().unwrap_or("").to_lowercase());
        assert!(name.contains(&search) || id.contains(&search), "{row} does not match {search:?}");
        assert_eq!(row["tier"], "Tier 1", "the search keeps the tier filter");
    }

    // The account clicked: its score now and its explanation, as the API gives them.
    let account = &summary["account"];
    let clicked = account["clicked"].as_str().expect("an account clicked");
    assert!(account["url"].as_str().unwrap_or("").ends_with(&format!("/console/accounts/{clicked}")), "{account}");
    let json = api(scorer_port, &format!("/v1/accounts/{clicked}"));
    let (shown, now) = (account["score"].as_f64().unwrap_or(-1.0), json["now"]["score"].as_f64().unwrap_or(0.0));
    assert!((shown - now).abs() <= 0.05 + now * 0.01, "the page shows {shown}, the API {now}");
    assert_eq!(account["rule_bars"].as_u64(), json["rule_points"].as_array().map(|r| r.len() as u64), "{account}");
    assert_eq!(account["contacts"].as_u64(), json["contacts"].as_array().map(|c| c.len() as u64));
    assert_eq!(account["activity"].as_u64(), json["recent_events"].as_array().map(|e| e.len() as u64));
    assert!(account["activity"].as_u64().unwrap_or(0) > 0 && account["journey"].as_u64().unwrap_or(0) > 0, "{account}");

    // The program: a funnel per tier and the charts.
    let program = &summary["program"];
    assert_eq!(program["funnels"], 4, "{program}");
    assert!(program["charts"].as_u64().unwrap_or(0) >= 10 && program["bars"].as_u64().unwrap_or(0) > 20, "{program}");
    let report = api(scorer_port, "/v1/program");
    let steps = report["all"]["conversion"].as_array().map(|c| c.len() as u64);
    assert_eq!(program["conversion_rows"].as_u64(), steps);
    assert_eq!(program["velocity_bars"].as_u64(), steps, "a velocity bar per step");

    // Ingest's producers put each account where the scorer's directory looks for it.
    assert_eq!(abm_testkit::metric(scorer_port, "abm_scorer_misplaced_events_total", &[]), 0.0);

    let screenshots = summary["screenshots"].as_array().expect("screenshots");
    assert_eq!(screenshots.len(), 5);
    for file in screenshots {
        let size = std::fs::metadata(file.as_str().unwrap_or("")).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{file}: {size} bytes");
    }
}
