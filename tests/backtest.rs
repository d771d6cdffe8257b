//! `scorer backtest` on a simulated history, against a live run on the real broker: the
//! simulator (web visits, emails, ads, demo requests and the CRM opportunities that follow
//! them, over 120 days) through ingest, the scorer and the alerter; then a backtest of the same
//! history with a candidate model. The current model's replayed alerts are exactly the alerts
//! the live alerter published (the same ids, the same model version); the candidate's differ as
//! its model says; the report's figures add up; the HTML page has its charts and fetches
//! nothing (it is kept as `target/backtest-report.html`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{CrossingKind, SalesAlert, ScoreCrossing};
use abm_testkit::{Pipeline, TestTopics, metric, read_all, unique, workspace_binary};

const KEY: &str = "backtest-write-key";

#[test]
fn a_backtest_of_the_live_model_gives_the_live_alerts_and_the_candidate_its_own() {
    let topics = TestTopics::new("backtest");
    topics.create();
    let accounts = "80";
    let pipeline = Pipeline::start(&topics, accounts, KEY);
    let (scorer_port, alerter_port) = (pipeline.scorer_port, pipeline.alerter_port);
    let (scorer, alerter) = (&pipeline.scorer, &pipeline.alerter);
    pipeline.simulate("6000", &["--span-days", "120"]);

    // The live run settles: every event of abm.engagement applied and committed, every
    // crossing handled by the alerter.
    let records = abm_testkit::read_all_bytes(&topics.name(TopicRole::Engagement));
    let engagement = records.len() as f64;
    // What a simulated event takes in abm.engagement (README, "Changing the model": the
    // retention's storage cost).
    let bytes: usize = records.iter().map(|(key, value)| key.len() + value.len()).sum();
    eprintln!(
        "abm.engagement: {engagement} records, {:.0} bytes of key and value each",
        bytes as f64 / engagement.max(1.0)
    );
    assert!(engagement > 3000.0, "the simulator's events reached abm.engagement: {engagement}");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let handled = metric(scorer_port, "abm_scorer_events_applied_total", &[])
            + metric(scorer_port, "abm_scorer_duplicates_total", &[]);
        let crossings = read_all::<ScoreCrossing>(&topics.name(TopicRole::ScoreCrossings)).len() as f64;
        let alerted = metric(alerter_port, "abm_alerter_crossings_total", &[]);
        if handled == engagement && crossings > 0.0 && alerted == crossings {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live run did not settle: {handled} of {engagement} events, {alerted} of {crossings} crossings\n{}\n{}",
            scorer.stderr(),
            alerter.stderr()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let live: Vec<SalesAlert> =
        read_all::<SalesAlert>(&topics.name(TopicRole::SalesAlerts)).into_iter().map(|(_, alert)| alert).collect();
    assert!(live.len() >= 10, "the live run alerted: {}", live.len());
    let live_ids: BTreeSet<String> = live.iter().map(|a| a.alert_id.clone()).collect();
    assert_eq!(live_ids.len(), live.len(), "no alert id twice");
    let versions: BTreeSet<Option<String>> = live.iter().map(|a| a.model_version.clone()).collect();
    assert_eq!(versions.len(), 1, "one model: {versions:?}");

    // The candidate: lower thresholds for tiers 1 and 2, pricing visits worth more.
    let dir = std::env::temp_dir().join(unique("backtest"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let candidate = dir.join("candidate.toml");
    let mut scoring = toml::Table::try_from(default_scoring()).expect("the default model as TOML");
    scoring["thresholds"]["tier_1"] = toml::Value::Float(30.0);
    scoring["thresholds"]["tier_2"] = toml::Value::Float(45.0);
    let rules = scoring["rules"].as_array_mut().expect("rules");
    for rule in rules.iter_mut() {
        if rule["name"].as_str() == Some("pricing_page") {
            rule["points"] = toml::Value::Float(25.0);
        }
    }
    let mut file = toml::Table::new();
    file.insert("scoring".into(), toml::Value::Table(scoring));
    std::fs::write(&candidate, toml::to_string(&file).expect("TOML")).expect("writes the candidate");
    let (json, html, alerts) = (dir.join("report.json"), dir.join("report.html"), dir.join("alerts.jsonl"));
    let output = std::process::Command::new(workspace_binary("scorer"))
        .args(["backtest", "--candidate"])
        .arg(&candidate)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .arg("--alerts")
        .arg(&alerts)
        .envs(topics.env())
        .output()
        .expect("scorer backtest runs");
    let table = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "backtest failed:\n{table}\n{stderr}");
    eprintln!("{table}");

    // The current model's alerts are the live alerts, id for id.
    let replayed: Vec<serde_json::Value> = std::fs::read_to_string(&alerts)
        .expect("the alerts file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON alert per line"))
        .collect();
    let ids_of = |model: &str| -> BTreeSet<String> {
        replayed
            .iter()
            .filter(|a| a["model"] == model)
            .map(|a| a["alert_id"].as_str().expect("alert_id").to_owned())
            .collect()
    };
    let current = ids_of("current");
    assert_eq!(current, live_ids, "the backtest of the live model alerts as the live run did");
    let candidate_ids = ids_of("candidate");
    assert_ne!(candidate_ids, current, "a lower threshold gives other alerts");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report")).expect("JSON");
    assert_eq!(report["events"].as_f64(), Some(engagement), "every event replayed: {report:#}");
    let models = report["models"].as_array().expect("models");
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["model_version"].as_str(), versions.iter().next().cloned().flatten().as_deref());
    assert_ne!(models[0]["model_version"], models[1]["model_version"]);
    let count = |model: &serde_json::Value, kind: &str| model["segments"]["all"][kind].as_u64().expect("count");
    let live_of = |kind: CrossingKind| live.iter().filter(|a| a.kind == kind).count() as u64;
    assert_eq!(count(&models[0], "threshold_alerts"), live_of(CrossingKind::Threshold));
    assert_eq!(count(&models[0], "hand_raiser_alerts"), live_of(CrossingKind::HandRaiser));
    // The candidate's score is never below the current one's (the same events, more points for
    // pricing visits) and its thresholds are not higher: every account the current model
    // alerted on a threshold for, the candidate alerted too, no later. (Not necessarily as
    // often: a lower threshold also re-arms lower.) Hand-raisers do not depend on the model.
    let first_threshold = |model: &str| -> std::collections::BTreeMap<String, i64> {
        let mut first = std::collections::BTreeMap::new();
        for alert in replayed.iter().filter(|a| a["model"] == model && a["kind"] == "threshold") {
            let at = alert["as_of"].as_i64().expect("as_of");
            let account = alert["account_id"].as_str().expect("account_id").to_owned();
            first.entry(account).and_modify(|t: &mut i64| *t = (*t).min(at)).or_insert(at);
        }
        first
    };
    let (before, after) = (first_threshold("current"), first_threshold("candidate"));
    assert!(!before.is_empty());
    for (account, at) in &before {
        let candidate_at =
            after.get(account).unwrap_or_else(|| panic!("{account}: no threshold alert under the candidate"));
        assert!(candidate_at <= at, "{account}: the candidate alerted later ({candidate_at} > {at})");
    }
    assert_eq!(count(&models[1], "hand_raiser_alerts"), count(&models[0], "hand_raiser_alerts"));
    for model in models {
        // The tiers add up to all.
        let segments = model["segments"].as_object().expect("segments");
        for figure in ["accounts", "threshold_alerts", "hand_raiser_alerts", "mqa_accounts"] {
            let tiers: u64 =
                segments.iter().filter(|(k, _)| *k != "all").map(|(_, s)| s[figure].as_u64().unwrap_or(0)).sum();
            assert_eq!(tiers, segments["all"][figure].as_u64().unwrap_or(0), "{figure}");
        }
        let weekly: u64 = model["weekly"]
            .as_array()
            .expect("weekly")
            .iter()
            .map(|w| w["threshold"].as_u64().unwrap_or(0) + w["hand_raiser"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(weekly, count(model, "threshold_alerts") + count(model, "hand_raiser_alerts"));
        let distributed: u64 = model["distribution"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["accounts"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(Some(distributed), report["accounts"].as_u64());
        // The simulator opens opportunities after demo requests: recall has something to count.
        let recall = &segments["all"]["recall"];
        assert!(recall["opportunities"].as_u64().unwrap_or(0) > 0, "{recall}");
        assert!(recall["preceded"].as_u64() <= recall["opportunities"].as_u64());
    }
    assert!(table.contains("precision 30 d") && table.contains("recall 90 d"), "{table}");
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    assert!(page.matches("<svg").count() >= 3, "three charts");
    assert!(page.contains("default-src 'none'"));
    assert!(!page.contains("<script"), "no script in the page");
    // Kept for a look: target/backtest-report.html.
    let kept = abm_testkit::repository_root().join("target/backtest-report.html");
    std::fs::write(&kept, &page).expect("keeps the page");
    eprintln!("the HTML report: {}", kept.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The default `[scoring]`, as the scorer prints it.
fn default_scoring() -> toml::Table {
    let output = std::process::Command::new(workspace_binary("scorer"))
        .arg("--print-config")
        .output()
        .expect("scorer --print-config runs");
    assert!(output.status.success());
    let config: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("TOML");
    config["scoring"].as_table().expect("[scoring]").clone()
}
