//! Scorer throughput as a ratio to a bare consumer reading the same topic on the same broker in
//! the same run (the practical limit on this machine).
//!
//!     deploy/local/bench.sh scorer
//!
//! Pre-loads `BENCH_EVENTS` (default 300,000) Avro engagement events for 10,000 accounts into a
//! fresh 6-partition topic, then (1) drains it with a bare librdkafka consumer that only counts
//! messages, and (2) starts the release scorer on it (exactly-once, default settings) and times
//! until every event is applied and committed.

use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{Contact, EngagementEvent, EventKind, WebVisit};
use abm_testkit::{ServiceProcess, TestTopics, flush, free_port, metric, producer, send, wait_for_status};

fn events(count: u64) -> impl Iterator<Item = EngagementEvent> {
    let start = abm::clock::now_ms() - 30 * 86_400_000;
    (0..count).map(move |n| {
        let account = n % 10_000;
        let mut event = EngagementEvent::new(format!("b-{n}"), EventKind::WebVisit, start + n as i64 * 5_000, "bench");
        event.account_id = Some(format!("acc-{account}"));
        event.contact = Some(Contact { contact_id: Some(format!("acc-{account}-c{}", n % 5)), ..Contact::default() });
        let path = ["/", "/pricing", "/docs", "/careers"][(n % 4) as usize];
        event.web_visit = Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
        event
    })
}

fn main() {
    let count: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(300_000);
    let topics = TestTopics::new("bench-scorer");
    topics.create();
    let input = topics.name(TopicRole::Engagement);
    let kafka = producer();
    let started = Instant::now();
    for event in events(count) {
        send(&kafka, &input, event.account_id.as_deref().unwrap_or(""), &event);
    }
    flush(&kafka);
    println!("scorer bench: pre-loaded {count} events in {:.1}s", started.elapsed().as_secs_f64());

    // (1) A bare consumer: the same client library, the same topic, no work per message.
    let bare = abm_testkit::bare_read_seconds(&input, count);
    let bare_rate = count as f64 / bare;
    println!("scorer bench: bare consumer read {count} in {bare:.2}s = {bare_rate:.0} events/s");

    // (2) The scorer, exactly-once, with its default settings.
    let port = free_port();
    let mut env = topics.env();
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_SCORER__GROUP_ID", format!("{}-scorer", topics.prefix)));
    env.push(("ABM_SCORER__INSTANCE_ID", format!("{}-scorer", topics.prefix)));
    env.push(("ABM_LOG__LEVEL", "warn".into()));
    for (key, value) in
        std::env::vars().filter(|(k, _)| k.starts_with("ABM_SCORER__") || k.starts_with("ABM_KAFKA__LIBRDKAFKA__"))
    {
        // Tuning under test, e.g. ABM_SCORER__COMMIT_INTERVAL_MS or
        // ABM_KAFKA__LIBRDKAFKA__COMPRESSION_TYPE.
        env.push((Box::leak(key.into_boxed_str()), value));
    }
    let scorer = ServiceProcess::start(&abm_testkit::workspace_binary("scorer"), &[], &env);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), "scorer ready");
    let cpu_before = abm_testkit::cpu_seconds(scorer.pid());
    let started = Instant::now();
    let mut first = None;
    loop {
        let applied = metric(port, "abm_scorer_events_applied_total", &[]);
        if applied > 0.0 {
            first.get_or_insert(started.elapsed());
        }
        // Applied and committed: nothing waits for a transaction.
        if applied >= count as f64 && metric(port, "abm_scorer_snapshot_age_seconds", &[]) == 0.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "the scorer did not drain the topic");
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = started.elapsed().as_secs_f64();
    // Start-up (restoring 6 empty partitions) is not throughput: time from the first applied event.
    let scoring = total - first.map_or(0.0, |f| f.as_secs_f64());
    let scorer_rate = count as f64 / scoring;
    let cpu = abm_testkit::cpu_seconds(scorer.pid()) - cpu_before;
    let transactions = metric(port, "abm_scorer_transactions_total", &[]);
    let committing = metric(port, "abm_scorer_snapshot_duration_seconds_sum", &[]);
    println!(
        "scorer bench: scorer applied and committed {count} in {scoring:.2}s = {scorer_rate:.0} events/s \
         ({transactions:.0} transactions taking {committing:.2}s in all, scorer CPU {cpu:.1}s = {:.0} events per \
         CPU-second)",
        count as f64 / cpu.max(0.001)
    );
    println!("scorer bench: scorer / bare consumer = {:.2}", scorer_rate / bare_rate);
}
