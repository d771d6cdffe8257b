//! The scorer: rolling, explainable engagement scores per account, exactly once.
//!
//! - [`engine`] — the pure scoring engine (rules, decay, breadth, thresholds, state).
//! - [`store`] — sharded in-memory state, grouped by input partition.
//! - [`processor`] — the transactional consume-apply-produce loop, restores and rebalances.
//! - [`backtest`] — `scorer backtest`: a candidate model against the current one, from history.
//! - [`api`] — the query API (`/v1/accounts/...`), answered for every account by any instance.
//! - [`console`] — the console's pages (`/console/...`).
//! - [`directory`] — which instance holds which partition (`abm.scorer-members`).
//! - [`models`] — the scoring models the cluster has run (`abm.scoring-models`).
//! - [`rescore`] — re-scoring a partition under a new model while the old one serves it.
//! - [`metrics`] — `abm_scorer_*`.
pub mod api;
pub mod backtest;
pub mod changelog;
pub mod console;
pub mod directory;
pub mod engine;
pub mod metrics;
pub mod models;
pub mod processor;
pub mod program;
pub mod rescore;
pub mod store;

/// The scorer holds many small per-account blocks: mimalloc keeps them without a per-block
/// header and in size classes, where glibc's malloc adds 8 bytes and rounds each to 16. Set
/// here, in the library, so the service, its tests and its benchmarks all measure the same
/// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use abm::eos::EosSettings;
use abm::kafka::KafkaConfig;
use abm::ops::{self, HttpConfig};
use abm::registry::{Output, RegistryConfig};
use abm::service::{Context, ServiceConfig, prepare_kafka};
use abm::tal::TalChange;
use abm::telemetry::LogConfig;
use abm::topics::{TopicOverrides, TopicRole, Topics};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, ScoringConfig};
use crate::metrics::Metrics;
use crate::processor::{LoopTopics, ScorerProcessor, Tal, TalEntry};
use crate::store::Store;

/// The scorer's HTTP port unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8081";

/// The scorer's configuration (see the README's configuration reference).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub topics: TopicOverrides,
    pub registry: RegistryConfig,
    pub scorer: Settings,
    pub scoring: ScoringConfig,
}

/// `[scorer]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Consumer group of the scorer instances (default `abm-scorer`).
    pub group_id: String,
    /// Stable id of this instance, used as its Kafka `transactional.id`; a restarted instance
    /// with the same id fences its predecessor's unfinished transaction at once (default
    /// `abm-scorer-<hostname>`; in Kubernetes use a StatefulSet so pod names are stable).
    pub instance_id: String,
    /// Longest a transaction stays open while input keeps coming (default 250 ms): state
    /// snapshot, scores, crossings and offsets are made durable together as soon as the
    /// fetched input is drained, and at least this often under load. `abm.account-scores` is
    /// coalesced per transaction (at most one record per account per transaction).
    pub commit_interval_ms: u64,
    /// A transaction is also committed after this many events (default 100000).
    pub max_batch_events: usize,
    /// The loop heals (replaces its Kafka consumer) when its input has events for it but it
    /// made no progress for this long (default 20000 ms, at least 2000).
    pub stall_after_ms: u64,
    /// The base URL other instances reach this one's HTTP API at, written to the directory
    /// (`abm.scorer-members`). Default: `http://<host>:<port>`, host the `http.listen` address
    /// or, when that is 0.0.0.0, the hostname (which other machines may not resolve: in
    /// Kubernetes set it to the pod's IP, as `deploy/k8s/scorer.yaml` does).
    pub advertised_url: String,
    /// A directory record older than this is an instance gone without a word: its partitions
    /// answer 503 until their new holder has restored them (default 10000 ms, at least 3000).
    pub member_ttl_ms: u64,
    /// How long a query forwarded to another instance may take before it is answered 503
    /// (default 5000 ms).
    pub forward_timeout_ms: u64,
    /// When the instance restores a partition whose state another model built, it re-scores
    /// it from abm.engagement under `[scoring]`; the crossings that re-score finds within this
    /// many hours of now are sent (marked replayed: the alerter alerts those within its
    /// cooldown of now), older ones only counted (default 168, a week: more than any cooldown).
    pub replay_window_hours: f64,
    /// Events per second a re-score applies at most, per partition (default 0: no limit; set
    /// it when a re-score must leave CPU to the live loop).
    pub rescore_max_events_per_second: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            group_id: "abm-scorer".into(),
            instance_id: format!("abm-scorer-{}", abm::service::hostname()),
            commit_interval_ms: 250,
            max_batch_events: 100_000,
            stall_after_ms: 20_000,
            advertised_url: String::new(),
            member_ttl_ms: 10_000,
            forward_timeout_ms: 5_000,
            replay_window_hours: 168.0,
            rescore_max_events_per_second: 0,
        }
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// Runs the scorer until `context.shutdown` is cancelled.
pub async fn run(config: Config, context: Context) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new(config.scoring.clone())?);
    let topics = Topics::resolve(&config.topics);
    prepare_kafka(&config.kafka, &topics, "abm-scorer").await?;
    let (engagement, state) = (topics.name(TopicRole::Engagement), topics.name(TopicRole::ScorerState));
    let partitions = config.kafka.check_changelog_partitions("abm-scorer-check", engagement, state).await?;
    let outputs = [
        TopicRole::AccountScores,
        TopicRole::ScoreCrossings,
        TopicRole::Journey,
        TopicRole::AccountProgram,
        TopicRole::Rejected,
    ]
    .map(|role| Output::of(&topics, role));
    let inputs = [TopicRole::Engagement, TopicRole::Accounts, TopicRole::AccountProgram, TopicRole::SalesAlerts]
        .map(|role| Output::of(&topics, role));
    abm::registry::prepare(&config.registry, &outputs, &inputs).await?;
    let metrics = Metrics::register(&context.registry).context("registering metrics")?;
    metrics.model.with_label_values(&[engine.model_version()]).set(1);
    anyhow::ensure!(
        config.scorer.replay_window_hours.is_finite() && config.scorer.replay_window_hours >= 0.0,
        "scorer.replay_window_hours: must be a number of hours >= 0"
    );

    // The models: this one registered, every one the cluster ran known (to serve a partition
    // another model built while it is re-scored).
    let models = Arc::new(models::Models::default());
    models.insert(engine.clone());
    {
        let topic = topics.name(TopicRole::ScoringModels).to_owned();
        let (kafka, registered, instance) = (config.kafka.clone(), engine.clone(), config.scorer.instance_id.clone());
        let topic_name = topic.clone();
        tokio::task::spawn_blocking(move || models::register(&kafka, &topic_name, &registered, &instance))
            .await
            .context("registering the model")??;
        let known = models.clone();
        let shown = topic.clone();
        abm::kafka::follow_table(
            &config.kafka,
            "abm-scorer-models",
            &topic,
            context.shutdown.clone(),
            move |key, value| {
                if let Err(error) = known.apply(key, value) {
                    tracing::warn!(%error, topic = shown, "model record left out");
                }
            },
        )
        .await?;
        tracing::info!(model = engine.model_version(), known = models.len(), "scoring model registered in {topic}");
    }

    // The TAL first: events must be scored with their account's tier.
    let tal: Arc<Tal> = Arc::new(Tal::default());
    {
        let table = tal.clone();
        let tal_metrics = abm::tal::TalMetrics {
            accounts: metrics.tal_accounts.clone(),
            decode_errors: metrics.tal_decode_errors.clone(),
        };
        abm::tal::follow(
            &config.kafka,
            &topics,
            "abm-scorer-tal",
            context.shutdown.clone(),
            tal_metrics,
            move |change| {
                match change {
                    TalChange::Upsert(account) => {
                        table.insert(account.account_id.clone(), TalEntry::of(account));
                    }
                    TalChange::Remove(account_id) => {
                        table.remove(&account_id);
                    }
                }
                table.len()
            },
        )
        .await?;
        tracing::info!(accounts = tal.len(), "TAL loaded");
    }

    // The program's book: every account's facts and every alert, read whole in the background
    // (`/v1/program` answers 503 until both topics were read to their end once).
    let book = Arc::new(program::Book::default());
    follow_program(&config.kafka, &topics, &book, &metrics, &context);

    let store = Store::new(engine.clone());
    let listener = ops::bind(config.http.listen).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "scorer listening");

    // The directory: every instance's address and partitions, read whole before answering.
    let ownership = Arc::new(directory::Ownership::default());
    let members = Arc::new(directory::Directory::new(
        &config.scorer.instance_id,
        i32::try_from(partitions).unwrap_or(i32::MAX),
        Duration::from_millis(config.scorer.member_ttl_ms.max(3_000)),
        ownership.clone(),
    ));
    let members_topic = topics.name(TopicRole::ScorerMembers).to_owned();
    {
        let (members, topic) = (members.clone(), members_topic.clone());
        abm::kafka::follow_table(
            &config.kafka,
            "abm-scorer-directory",
            &members_topic,
            context.shutdown.clone(),
            move |key, value| {
                if let Err(error) = members.apply(key, value) {
                    tracing::warn!(%error, topic, key = %String::from_utf8_lossy(key), "directory record left out");
                }
            },
        )
        .await?;
    }
    let url = advertised_url(&config, bound);
    tracing::info!(
        url,
        instance = config.scorer.instance_id,
        partitions,
        "advertising this instance in {members_topic}"
    );
    let publisher = directory::publish(
        &config.kafka,
        &members_topic,
        members.clone(),
        url,
        metrics.partitions_held.clone(),
        context.shutdown.clone(),
    )?;

    let api = api::Api::new(
        engine.clone(),
        store.clone(),
        tal.clone(),
        book.clone(),
        members,
        Duration::from_millis(config.scorer.forward_timeout_ms.max(100)),
        &metrics,
    )?;
    let console = console::Console {
        api: api.clone(),
        feeds: Arc::new(tokio::sync::Semaphore::new(console::MAX_FEEDS)),
        shutdown: context.shutdown.clone(),
        tokens: (!config.http.api_open).then(|| Arc::new(ops::api_tokens(&config.http))),
    };
    let app = ops::router(
        context.registry.clone(),
        context.health.clone(),
        ops::protect(api::routes(api).merge(console::routes(console.clone())), &config.http)
            .merge(console::open_routes(console)),
        &config.http,
    );
    let server = tokio::spawn(ops::serve(
        listener,
        app,
        config.http.clone(),
        context.registry.clone(),
        context.shutdown.clone(),
    ));

    let loop_topics = LoopTopics {
        engagement: topics.name(TopicRole::Engagement).to_owned(),
        state: topics.name(TopicRole::ScorerState).to_owned(),
        scores: topics.name(TopicRole::AccountScores).to_owned(),
        crossings: topics.name(TopicRole::ScoreCrossings).to_owned(),
        journey: topics.name(TopicRole::Journey).to_owned(),
        program: topics.name(TopicRole::AccountProgram).to_owned(),
        rejected: topics.name(TopicRole::Rejected).to_owned(),
    };
    let settings = EosSettings {
        client_id: "abm-scorer".into(),
        group_id: config.scorer.group_id.clone(),
        transactional_id: config.scorer.instance_id.clone(),
        input_topic: loop_topics.engagement.clone(),
        commit_interval: Duration::from_millis(config.scorer.commit_interval_ms),
        max_batch_events: config.scorer.max_batch_events.max(1),
        stall_after: Duration::from_millis(config.scorer.stall_after_ms.max(2000)),
        compression: None,
        metrics: abm::eos::LoopMetrics::register(&context.registry, "scorer").context("registering metrics")?,
    };
    let gauges = program::ProgramGauges::register(&context.registry).context("registering metrics")?;
    let refresher = tokio::spawn({
        let (book, tal, engine, shutdown) = (book.clone(), tal.clone(), engine.clone(), context.shutdown.clone());
        async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = program::REFRESH;
                if !book.is_loaded() {
                    gauges.loaded(false);
                    wait = Duration::from_secs(1);
                    continue;
                }
                gauges.loaded(true);
                let (book, tal, engine, gauges) = (book.clone(), tal.clone(), engine.clone(), gauges.clone());
                let started = std::time::Instant::now();
                let _ = tokio::task::spawn_blocking(move || {
                    gauges.set(&program::report(&book, &tal, &engine, abm::clock::now_ms(), None))
                })
                .await;
                // At most 1/20 of a core: a pass over a large book waits 20 times its length.
                wait = wait.max(started.elapsed() * program::REFRESH_COST_FACTOR);
            }
        }
    });
    let rescore = rescore::RescoreSettings {
        group_id: config.scorer.group_id.clone(),
        topic: loop_topics.engagement.clone(),
        window_ms: (config.scorer.replay_window_hours * 3_600_000.0) as i64,
        max_events_per_second: config.scorer.rescore_max_events_per_second,
    };
    let processor = Arc::new(
        ScorerProcessor::new(engine, store, tal, loop_topics, metrics, config.kafka.clone(), book.clone())
            .with_ownership(ownership, i32::try_from(partitions).unwrap_or(0))
            .with_rescore(models, rescore),
    );
    context.health.set_ready();
    let loop_result = abm::eos::run_on_thread(
        config.kafka.clone(),
        settings,
        processor,
        context.health.clone(),
        context.shutdown.clone(),
    )
    .await;
    context.health.set_stopping();
    refresher.abort();
    let served = server.await;
    // Its tombstone written (the publisher stops on shutdown), whatever the server's end.
    let _ = tokio::task::spawn_blocking(move || publisher.join()).await;
    served.context("HTTP server task")?.context("HTTP server")?;
    loop_result
}

/// `scorer.advertised_url`, or `http://<host>:<bound port>`.
fn advertised_url(config: &Config, bound: std::net::SocketAddr) -> String {
    if !config.scorer.advertised_url.trim().is_empty() {
        return config.scorer.advertised_url.trim().trim_end_matches('/').to_owned();
    }
    let host = if bound.ip().is_unspecified() { abm::service::hostname() } else { bound.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    format!("http://{host}:{}", bound.port())
}

/// Follows `abm.account-program` and `abm.sales-alerts` into `book`, each on a task of its own;
/// a record that does not decode is counted and left out. A reader that cannot start (the
/// broker away at start-up, a topic missing) tries again every 5 s: meanwhile `/v1/program`
/// answers 503 and `abm_scorer_program_loaded` is 0.
fn follow_program(
    kafka: &KafkaConfig,
    topics: &Topics,
    book: &Arc<program::Book>,
    metrics: &Metrics,
    context: &Context,
) {
    type Read = fn(&program::Book, &[u8], Option<&[u8]>) -> Result<(), abm_schemas::DecodeError>;
    type Loaded = fn(&program::Book);
    let readers: [(TopicRole, Read, Loaded); 2] = [
        (TopicRole::AccountProgram, program::Book::read_program, program::Book::facts_loaded),
        (TopicRole::SalesAlerts, program::Book::read_alert, program::Book::alerts_loaded),
    ];
    for (role, read, done) in readers {
        let (kafka, book, shutdown) = (kafka.clone(), book.clone(), context.shutdown.clone());
        let topic = topics.name(role).to_owned();
        let client_id = format!("abm-scorer-program-{}", role.key());
        let errors = metrics.program_decode_errors.with_label_values(&[role.key()]);
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let on_record = {
                    let (book, errors, topic) = (book.clone(), errors.clone(), topic.clone());
                    move |key: &[u8], value: Option<&[u8]>| {
                        if let Err(error) = read(&book, key, value) {
                            tracing::warn!(%error, topic, key = %String::from_utf8_lossy(key), "undecodable record left out of the program");
                            errors.inc();
                        }
                    }
                };
                match abm::kafka::follow_table(&kafka, &client_id, &topic, shutdown.clone(), on_record).await {
                    Ok(()) => {
                        done(&book);
                        tracing::info!(
                            topic,
                            accounts = book.accounts(),
                            alerts = book.alert_count(),
                            "program topic read"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::error!(%error, topic, "program metrics: cannot read the topic; trying again in 5 s");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                    }
                }
            }
        });
    }
}
