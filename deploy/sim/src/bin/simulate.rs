//! `simulate`: a seeded ABM world (see `abm_sim`) sent to ingest like real trackers do.
//!
//!     simulate tal --accounts 200 --out tal.csv         # the TAL, for `ingest import-tal`
//!     simulate run --events 20000 --rate 1000 ...        # events over HTTP and the raw topics
//!
//! The same seed gives the same TAL and the same events; `--out` also writes every event (with
//! its channel and what ingest should make of it) as NDJSON for replay or inspection.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abm::kafka::KafkaConfig;
use abm::topics::{TopicOverrides, Topics};
use abm_sim::{Channel, Expect, SimEvent, World, WorldConfig, raw_role, tal_csv};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// Simulates an ABM world: a TAL, buying committees, in-market surges, bots, free-mail and
/// unknown visitors, duplicates and malformed events.
#[derive(Debug, Parser)]
#[command(name = "simulate", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct WorldArgs {
    /// Accounts on the TAL.
    #[arg(long, default_value_t = 200)]
    accounts: usize,
    /// Seed: the same seed gives the same world.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the TAL as CSV (for `ingest import-tal`).
    Tal {
        #[command(flatten)]
        world: WorldArgs,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Send events to ingest: over HTTP (`POST /v1/events`) and to the raw topics (names as
    /// the services take them: `ABM_TOPICS__<KEY>` overrides a default).
    Run(RunArgs),
    /// Send again the events recorded with `run --out FILE`, in order, on their channels.
    Replay(ReplayArgs),
    /// Run librdkafka's in-process mock Kafka cluster (for the demo where Java is absent):
    /// creates the declared topics, prints `bootstrap=<host:port>`, serves until Ctrl-C.
    /// Not a real broker: no compaction, nothing survives a restart.
    MockKafka,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The NDJSON file written by `run --out`.
    file: std::path::PathBuf,
    #[command(flatten)]
    target: Target,
}

/// Where events go.
#[derive(Debug, Clone, clap::Args)]
struct Target {
    /// Events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Ingest's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ingest_url: String,
    /// Write key for ingest.
    #[arg(long, default_value = "demo-write-key")]
    write_key: String,
    /// Kafka bootstrap servers (for the raw topics).
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    world: WorldArgs,
    /// Number of events.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    #[command(flatten)]
    target: Target,
    /// Days of event time the events cover, ending now.
    #[arg(long, default_value_t = 30.0)]
    span_days: f64,
    /// Event id prefix: a new prefix gives new events with the same shape.
    #[arg(long, default_value = "sim")]
    id_prefix: String,
    /// Also write every event as NDJSON to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

use abm::clock::now_ms;

/// Seconds ingest asked the sender to wait (429/503 `Retry-After`), for the closing report.
static PUSHBACK_SECONDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Posts one batch, retrying 429/503 after `Retry-After` (never drops a batch).
async fn post(client: &reqwest::Client, url: &str, key: &str, body: String) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let response = client.post(url).bearer_auth(key).body(body.clone()).send().await;
        match response {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 400 => return Ok(()),
            Ok(r) if r.status().as_u16() == 429 || r.status().as_u16() == 503 => {
                let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
                PUSHBACK_SECONDS.fetch_add(wait, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Ok(r) => anyhow::bail!("ingest answered {} to a batch: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(error) if started.elapsed() < Duration::from_secs(60) => {
                tracing::debug!(%error, "post failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("posting to ingest"),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    http: u64,
    raw: u64,
    by_expect: std::collections::BTreeMap<String, u64>,
}

async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let span_ms = (args.span_days * 86_400_000.0) as i64;
    let config = WorldConfig::new(args.world.seed, args.world.accounts, now_ms() - span_ms, span_ms);
    let mut world = World::new(config, args.events, &args.id_prefix);
    let events = (0..args.events).map(move |_| world.next_event());
    send_events(events, args.events, &args.target, args.out.as_deref()).await
}

async fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let events = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str::<SimEvent>(line).with_context(|| format!("{}:{}", args.file.display(), n + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let count = events.len() as u64;
    send_events(events.into_iter(), count, &args.target, None).await
}

/// Sends `events` (HTTP in NDJSON batches, raw records to their topics) at the target rate.
async fn send_events(
    events: impl Iterator<Item = SimEvent>,
    total: u64,
    target: &Target,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let Target { rate, ingest_url, write_key, bootstrap_servers: bootstrap } = target;
    let (events_total, rate) = (total, *rate);
    let kafka = KafkaConfig { bootstrap_servers: bootstrap.clone(), ..KafkaConfig::default() };
    let topics = Topics::resolve(&abm::topics::overrides_from_env());
    let producer: FutureProducer = kafka.producer_config("abm-simulate").create().context("creating the producer")?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let url = format!("{}/v1/events", ingest_url.trim_end_matches('/'));
    let mut log = match out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    let mut batch: Vec<String> = Vec::new();
    let mut raw_pending: Vec<futures::future::BoxFuture<'static, anyhow::Result<()>>> = Vec::new();
    let mut counts = Counts::default();
    let began = Instant::now();
    let mut last_report = Instant::now();
    for (n, event) in (0u64..).zip(events) {
        if let Some(log) = log.as_mut() {
            writeln!(log, "{}", serde_json::to_string(&event)?)?;
        }
        *counts.by_expect.entry(format!("{:?}", event.expect).to_lowercase()).or_default() += 1;
        let role = raw_role(&event.kind).filter(|_| event.channel == Channel::Raw && event.expect != Expect::Malformed);
        match role {
            Some(role) => {
                counts.raw += 1;
                // Queued, not awaited one by one: a delivery takes a linger and a round trip
                // (~5-10 ms), which would cap the rate at a few hundred per second.
                let mut record = FutureRecord::to(topics.name(role)).key("simulate").payload(event.json.as_bytes());
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(delivery) => break delivery,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                            record = returned;
                            futures::future::try_join_all(raw_pending.drain(..)).await?;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((error, _)) => anyhow::bail!("raw topic: {error}"),
                    }
                };
                raw_pending.push(Box::pin(async move {
                    match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(anyhow::anyhow!("raw topic: {error}")),
                        Err(_) => Err(anyhow::anyhow!("raw topic: the producer went away")),
                    }
                }));
            }
            None => {
                counts.http += 1;
                batch.push(event.json);
            }
        }
        if batch.len() >= 50 || (n + 1 == events_total && !batch.is_empty()) {
            // NDJSON: a malformed event breaks only its own line, as with real trackers.
            let body = std::mem::take(&mut batch).join("\n");
            let permit = in_flight.clone().acquire_owned().await?;
            let (client, url, key) = (client.clone(), url.clone(), write_key.clone());
            tasks.spawn(async move {
                let result = post(&client, &url, &key, body).await;
                drop(permit);
                result
            });
        }
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
        if raw_pending.len() >= 256 {
            futures::future::try_join_all(raw_pending.drain(..)).await?;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64((n + 1) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            println!("simulate: {} events sent ({:.0}/s)", n + 1, (n + 1) as f64 / began.elapsed().as_secs_f64());
        }
    }
    futures::future::try_join_all(raw_pending.drain(..)).await?;
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    if let Some(mut log) = log {
        log.flush()?;
    }
    let took = began.elapsed().as_secs_f64();
    let delivered = events_total as f64 / took.max(1e-9);
    println!(
        "simulate: sent {events_total} events in {took:.1}s ({delivered:.0}/s; {} over HTTP, {} to raw topics); intended: {:?}",
        counts.http, counts.raw, counts.by_expect
    );
    // Said, not hidden: a rate well below the one asked for, and why as far as it is known.
    if rate > 0 && delivered < rate as f64 * 0.9 && events_total as f64 / rate as f64 >= 1.0 {
        let pushback = PUSHBACK_SECONDS.load(std::sync::atomic::Ordering::Relaxed);
        let why = if pushback > 0 {
            format!("ingest asked to wait (429/503 with Retry-After) for {pushback} s in all")
        } else {
            "the sender, ingest or the broker could not keep up on this machine (no pushback from ingest)".to_owned()
        };
        println!("simulate: asked for {rate}/s, delivered {delivered:.0}/s: {why}");
    }
    Ok(())
}

fn mock_kafka() -> anyhow::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(1).context("starting the mock cluster")?;
    for spec in Topics::resolve(&TopicOverrides::new()).specs() {
        cluster.create_topic(&spec.name, spec.partitions, 1).with_context(|| format!("creating {}", spec.name))?;
    }
    println!("bootstrap={}", cluster.bootstrap_servers());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(cluster);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.command {
        Command::Tal { world, out } => {
            let config = WorldConfig::new(world.seed, world.accounts, 0, 0);
            let csv = tal_csv(&abm_sim::accounts(&config));
            match out {
                Some(path) => std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display())),
                None => {
                    print!("{csv}");
                    Ok(())
                }
            }
        }
        Command::MockKafka => mock_kafka(),
        Command::Replay(replay_args) => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(replay(&replay_args)),
            Err(error) => Err(error.into()),
        },
        Command::Run(run_args) => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(run(&run_args)),
            Err(error) => Err(error.into()),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("simulate: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
