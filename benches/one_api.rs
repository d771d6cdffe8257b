//! One API across scorer instances: what answering for every account costs. Two scorer
//! instances share the accounts; queries go to one of them, which answers accounts of its own
//! partitions itself and forwards the others' to their holder; leaderboards are gathered from
//! both.
//!
//!     deploy/local/bench.sh one_api
//!
//! Prints the latency (p50, p99) of account queries answered where asked and forwarded, of the
//! gathered leaderboard (`top=100`), and of a gathered search (`q=`: each instance scans).

use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{Contact, EngagementEvent, EventKind, Tier};
use abm_testkit::{ServiceProcess, TEST_API_TOKEN, TestTopics, free_port, metric, wait_for_status};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "one_api {name:<32} n={:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let accounts: usize = std::env::var("BENCH_ACCOUNTS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let topics = TestTopics::new("bench-one-api");
    topics.create();
    let producer = abm_testkit::producer();
    let now = abm::clock::now_ms();
    for a in 0..accounts {
        let id = format!("acc-{a:06}");
        let mut account = abm_testkit::acme_account();
        account.account_id.clone_from(&id);
        account.name = format!("Company {a}");
        account.tier = [Tier::Tier1, Tier::Tier2, Tier::Tier3][a % 3];
        abm_testkit::send(&producer, &topics.name(TopicRole::Accounts), &id, &account);
        for n in 0..3 {
            let mut event =
                EngagementEvent::new(format!("e-{a}-{n}"), EventKind::WebVisit, now - (n + 1) * 3_600_000, "bench");
            event.account_id = Some(id.clone());
            event.contact = Some(Contact { contact_id: Some(format!("c-{a}-{n}")), ..Contact::default() });
            abm_testkit::send(&producer, &topics.name(TopicRole::Engagement), &id, &event);
        }
    }
    abm_testkit::flush(&producer);

    let prefix = topics.prefix.clone();
    let ports = [free_port(), free_port()];
    let processes: Vec<ServiceProcess> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut env = topics.env();
            env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
            env.push(("ABM_SCORER__ADVERTISED_URL", format!("http://127.0.0.1:{port}")));
            env.push(("ABM_SCORER__GROUP_ID", format!("{prefix}-scorer")));
            env.push(("ABM_SCORER__INSTANCE_ID", format!("{prefix}-{i}")));
            env.push(("ABM_LOG__LEVEL", "warn".into()));
            let process = ServiceProcess::start(&abm_testkit::workspace_binary("scorer"), &[], &env);
            wait_for_status(*port, "/readyz", 200, Duration::from_secs(60), "scorer");
            process
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let applied = || ports.iter().map(|port| metric(*port, "abm_scorer_events_applied_total", &[])).sum::<f64>();
    let held = |port: u16| metric(port, "abm_scorer_partitions_held", &["state=\"ready\""]);
    while applied() < (3 * accounts) as f64 || held(ports[0]) == 0.0 || held(ports[1]) == 0.0 {
        assert!(Instant::now() < deadline, "the scorers did not apply the events and split the partitions");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let base = format!("http://127.0.0.1:{}", ports[0]);
    let me = format!("{prefix}-0");
    runtime.block_on(async {
        let get = |path: String| {
            let client = client.clone();
            let url = format!("{base}{path}");
            async move {
                let started = Instant::now();
                let response = client.get(&url).bearer_auth(TEST_API_TOKEN).send().await.expect("answers");
                let by =
                    response.headers().get("x-abm-answered-by").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let status = response.status();
                let _ = response.bytes().await.expect("body");
                assert_eq!(status, 200, "{url}");
                (started.elapsed().as_secs_f64() * 1000.0, by)
            }
        };
        // Warm the connections.
        for a in 0..50 {
            get(format!("/v1/accounts/acc-{a:06}")).await;
        }
        let (mut here, mut forwarded) = (Vec::new(), Vec::new());
        for i in 0..4000 {
            let a = (i * 7919) % accounts;
            let (ms, by) = get(format!("/v1/accounts/acc-{a:06}")).await;
            if by == me { here.push(ms) } else { forwarded.push(ms) }
        }
        summary("account, answered where asked", here);
        summary("account, forwarded to its holder", forwarded);
        let mut board = Vec::new();
        for _ in 0..300 {
            board.push(get("/v1/accounts?top=100".to_owned()).await.0);
        }
        summary("leaderboard top=100, gathered", board);
        let mut search = Vec::new();
        for i in 0..50 {
            search.push(get(format!("/v1/accounts?top=20&q=company%20{}", i * 13)).await.0);
        }
        summary(&format!("search over {accounts} accounts"), search);
    });
    drop(processes);
}
