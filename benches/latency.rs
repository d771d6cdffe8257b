//! End-to-end latency: from ingest's HTTP acknowledgement of an event to the sales alert it
//! causes being readable (`read_committed`) in `abm.sales-alerts`, at 100, 1,000 and 10,000
//! events/s in one run, with exactly-once on in the scorer and the alerter (their defaults).
//!
//!     deploy/local/bench.sh latency
//!
//! Every event is a demo request for an account of its own, so each one causes exactly one
//! hand-raiser alert (`<account>:hand_raiser:1`). Events go in batches every 10 ms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_testkit::{ServiceProcess, TestTopics, free_port, unique, wait_for_status};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// When each record of `topic` became readable (`read_committed`), by the id `id_of` gives it
/// (the first arrival wins), read on a thread of its own for the rest of the run.
fn arrivals_of(topic: String, id_of: fn(&BorrowedMessage<'_>) -> Option<String>) -> Arrivals {
    let arrivals = Arrivals::default();
    let found = arrivals.clone();
    std::thread::spawn(move || {
        let consumer: BaseConsumer = abm_testkit::kafka()
            .consumer_config("bench-latency", &unique(&format!("latency-{topic}")))
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        loop {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(10)) {
                let arrived = Instant::now();
                if let Some(id) = id_of(&message) {
                    found.lock().expect("lock").entry(id).or_insert(arrived);
                }
            }
        }
    });
    arrivals
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let topics = TestTopics::new("bench-latency");
    topics.create();
    let prefix = topics.prefix.clone();
    let ports = [free_port(), free_port(), free_port()];
    let mut processes = Vec::new();
    for (i, (name, extra)) in [
        ("ingest", vec![("ABM_INGEST__WRITE_KEYS__BENCH", "k".to_owned()), ("ABM_INGEST__RAW_TOPICS", "false".into())]),
        (
            "scorer",
            vec![("ABM_SCORER__GROUP_ID", format!("{prefix}-s")), ("ABM_SCORER__INSTANCE_ID", format!("{prefix}-s"))],
        ),
        (
            "alerter",
            vec![("ABM_ALERTER__GROUP_ID", format!("{prefix}-a")), ("ABM_ALERTER__INSTANCE_ID", format!("{prefix}-a"))],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut env = topics.env();
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{}", ports[i])));
        env.push(("ABM_LOG__LEVEL", "warn".into()));
        env.extend(extra);
        processes.push(ServiceProcess::start(&abm_testkit::workspace_binary(name), &[], &env));
        wait_for_status(ports[i], "/readyz", 200, Duration::from_secs(60), name);
    }

    // Alert arrival times, by alert id; crossing arrival times, by account (the scorer's share).
    let arrivals = arrivals_of(topics.name(TopicRole::SalesAlerts), |message| {
        abm_schemas::decode::<abm_schemas::SalesAlert>(message.payload().unwrap_or_default()).ok().map(|a| a.alert_id)
    });
    let crossed = arrivals_of(topics.name(TopicRole::ScoreCrossings), |message| {
        Some(String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned())
    });
    std::thread::sleep(Duration::from_secs(3));

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/events", ports[0]);
    for rate in [100u64, 1_000, 10_000] {
        let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let commits = |port: u16| {
            (
                abm_testkit::metric(port, "abm_scorer_snapshot_duration_seconds_sum", &[]),
                abm_testkit::metric(port, "abm_scorer_snapshot_duration_seconds_count", &[]),
            )
        };
        let (sum_before, count_before) = commits(ports[1]);
        let per_tick = (rate / 100).max(1);
        let ticks = seconds * 100;
        runtime.block_on(async {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            let mut tasks = tokio::task::JoinSet::new();
            for tick in 0..ticks {
                interval.tick().await;
                let now = abm::clock::now_ms();
                let accounts: Vec<String> = (0..per_tick).map(|i| format!("lat-{rate}-{tick}-{i}")).collect();
                let body = accounts
                    .iter()
                    .map(|a| format!(r#"{{"event_id":"{a}","kind":"demo_request","occurred_at":{now},"account_id":"{a}","properties":{{"form":"demo"}}}}"#))
                    .collect::<Vec<_>>()
                    .join("\n");
                let (client, url, acks) = (client.clone(), url.clone(), acks.clone());
                tasks.spawn(async move {
                    let response = client.post(&url).bearer_auth("k").body(body).send().await.expect("posted");
                    assert!(response.status().is_success(), "{}", response.status());
                    let acked = Instant::now();
                    let mut acks = acks.lock().expect("lock");
                    for account in accounts {
                        acks.insert(format!("{account}:hand_raiser:1"), acked);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
        // Wait for the alerts of this rate.
        let deadline = Instant::now() + Duration::from_secs(60);
        let expected = acks.lock().expect("lock").len();
        let latencies = loop {
            let arrived = arrivals.lock().expect("lock");
            let acks = acks.lock().expect("lock");
            let found: Vec<f64> = acks
                .iter()
                .filter_map(|(id, acked)| {
                    arrived.get(id).map(|t| t.saturating_duration_since(*acked).as_secs_f64() * 1000.0)
                })
                .collect();
            if found.len() >= expected || Instant::now() > deadline {
                break found;
            }
            drop((arrived, acks));
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut to_crossing: Vec<f64> = {
            let crossed = crossed.lock().expect("lock");
            let acks = acks.lock().expect("lock");
            acks.iter()
                .filter_map(|(id, acked)| {
                    let account = id.split(':').next().unwrap_or_default();
                    crossed.get(account).map(|t| t.saturating_duration_since(*acked).as_secs_f64() * 1000.0)
                })
                .collect()
        };
        to_crossing.sort_by(f64::total_cmp);
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "latency rate={rate:>5}/s events={expected:>6} alerts={:>6}: p50 {:.0} ms  p99 {:.0} ms  p999 {:.0} ms  max {:.0} ms",
            sorted.len(),
            percentile(&sorted, 0.50),
            percentile(&sorted, 0.99),
            percentile(&sorted, 0.999),
            sorted.last().copied().unwrap_or(f64::NAN)
        );
        let (sum_after, count_after) = commits(ports[1]);
        let transactions = count_after - count_before;
        println!(
            "  the scorer committed {transactions:.0} transactions, {:.1} ms each on average",
            (sum_after - sum_before) * 1000.0 / transactions.max(1.0)
        );
        println!(
            "  of which ack -> crossing readable (the scorer's part): p50 {:.0} ms  p99 {:.0} ms  p999 {:.0} ms",
            percentile(&to_crossing, 0.50),
            percentile(&to_crossing, 0.99),
            percentile(&to_crossing, 0.999)
        );
    }
    drop(processes);
}
