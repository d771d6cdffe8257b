//! `simulate`: a seeded stream of ABM activity published to Kafka.
//!
//! Today it publishes a TAL (`abm.accounts`) and Avro engagement events (`abm.engagement`) for
//! a deterministic set of accounts and contacts, at a target rate. The full world of issue #6
//! (buying committees, in-market surges, bots, HTTP and raw topics, malformed input) grows here.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use abm::kafka::KafkaConfig;
use abm::topics::{TopicOverrides, TopicRole, Topics};
use abm_schemas::{
    Account, AdClick, Contact, DemoRequest, EmailAction, EmailEvent, EngagementEvent, EventKind, Tier, WebVisit,
};
use anyhow::Context as _;
use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Publishes a seeded, deterministic stream of ABM accounts and engagement events to Kafka.
#[derive(Debug, Parser)]
#[command(name = "simulate", version)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Number of accounts on the TAL.
    #[arg(long, default_value_t = 200)]
    accounts: u32,
    /// Number of engagement events to publish.
    #[arg(long, default_value_t = 5_000)]
    events: u64,
    /// Events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seed of the stream: the same seed gives the same accounts and events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Event time of the first event, in ms since the epoch (default: now minus 30 days).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Prefix of the event ids: the same seed and prefix give the same ids (a replay is
    /// absorbed as duplicates); a new prefix gives new events.
    #[arg(long, default_value = "sim")]
    id_prefix: String,
}

/// SplitMix64: small, fast, and the same on every platform (determinism across runs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn account(index: u32) -> Account {
    let tier = match index % 20 {
        0 => Tier::Tier1,
        1..=5 => Tier::Tier2,
        _ => Tier::Tier3,
    };
    Account {
        account_id: format!("acc-{index:05}"),
        name: format!("Company {index}"),
        domains: vec![format!("company{index}.example")],
        tier,
        owner: format!("sdr{}@vendor.example", index % 7),
        industry: None,
        employees: None,
        updated_at: 0,
    }
}

const PERSONAS: [&str; 4] = ["economic_buyer", "champion", "influencer", "unknown"];
const PAGES: [&str; 5] = ["/", "/product", "/pricing", "/blog/streaming", "/careers"];

fn event(rng: &mut Rng, prefix: &str, n: u64, accounts: u32, time: i64) -> EngagementEvent {
    // Zipf-ish skew: low account indexes are much more active.
    let account = (rng.below(u64::from(accounts)) * rng.below(u64::from(accounts)) / u64::from(accounts.max(1))) as u32;
    let kind = match rng.below(100) {
        0..=59 => EventKind::WebVisit,
        60..=74 => EventKind::AdClick,
        75..=97 => EventKind::Email,
        _ => EventKind::DemoRequest,
    };
    let mut event = EngagementEvent::new(format!("{prefix}-{n}"), kind, time, "simulate");
    event.account_id = Some(format!("acc-{account:05}"));
    let contact = rng.below(6);
    event.contact = Some(Contact {
        contact_id: Some(format!("acc-{account:05}-c{contact}")),
        email: Some(format!("person{contact}@company{account}.example")),
        title: None,
        persona: Some(PERSONAS[(contact % 4) as usize].into()),
    });
    match kind {
        EventKind::WebVisit => {
            let path = PAGES[rng.below(PAGES.len() as u64) as usize];
            event.web_visit =
                Some(WebVisit { url: format!("https://vendor.example{path}"), referrer: None, title: None });
        }
        EventKind::AdClick => {
            event.ad_click =
                Some(AdClick { channel: "linkedin".into(), campaign: Some("q4-abm".into()), creative: None });
        }
        EventKind::Email => {
            let action = [EmailAction::Open, EmailAction::Click, EmailAction::Reply, EmailAction::Unsubscribe]
                [rng.below(4) as usize];
            event.email = Some(EmailEvent { action, campaign: Some("nurture".into()) });
        }
        _ => event.demo_request = Some(DemoRequest { form: "contact-sales".into() }),
    }
    event
}

async fn publish(args: Args) -> anyhow::Result<()> {
    let kafka = KafkaConfig { bootstrap_servers: args.bootstrap_servers.clone(), ..KafkaConfig::default() };
    let topics = Topics::resolve(&TopicOverrides::new());
    abm::service::prepare_kafka(&kafka, &topics, "abm-simulate").await?;
    let producer: FutureProducer = kafka.producer_config("abm-simulate").create().context("creating the producer")?;
    let send = |topic: &str, key: String, payload: Vec<u8>| {
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            producer
                .send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(30))
                .await
                .map_err(|(error, _)| anyhow::anyhow!("publishing to {topic}: {error}"))
        }
    };

    for index in 0..args.accounts {
        let account = account(index);
        send(topics.name(TopicRole::Accounts), account.account_id.clone(), abm_schemas::encode(&account)?).await?;
    }
    println!("simulate: published {} accounts to {}", args.accounts, topics.name(TopicRole::Accounts));

    let mut rng = Rng(args.seed);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let start = args.start_ms.unwrap_or(now_ms - 30 * 86_400_000);
    let step = if args.events == 0 { 0 } else { (now_ms - start).max(0) / args.events as i64 };
    let began = Instant::now();
    let mut pending = Vec::with_capacity(1024);
    for n in 0..args.events {
        let event = event(&mut rng, &args.id_prefix, n, args.accounts, start + n as i64 * step);
        let key = event.account_id.clone().unwrap_or_default();
        pending.push(send(topics.name(TopicRole::Engagement), key, abm_schemas::encode(&event)?));
        if pending.len() == 1024 {
            futures::future::try_join_all(pending.drain(..)).await?;
        }
        if args.rate > 0 {
            let due = Duration::from_secs_f64((n + 1) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                futures::future::try_join_all(pending.drain(..)).await?;
                tokio::time::sleep(wait).await;
            }
        }
        if (n + 1) % 1000 == 0 {
            println!("simulate: {} events published ({:.0}/s)", n + 1, (n + 1) as f64 / began.elapsed().as_secs_f64());
        }
    }
    futures::future::try_join_all(pending.drain(..)).await?;
    println!(
        "simulate: published {} events to {} in {:.1}s",
        args.events,
        topics.name(TopicRole::Engagement),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("simulate: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(publish(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("simulate: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
