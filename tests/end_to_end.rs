//! End to end on the real broker: a seeded simulated world through ingest (HTTP and raw
//! topics), the scorer and the alerter. Afterwards every account's score from the scorer's API
//! equals a recomputation by an independent implementation written here (from the README's
//! rules, recomputing each score from scratch, not with the engine's code), and the published
//! alerts equal the expected crossings after the cooldown.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use abm::topics::TopicRole;
use abm_schemas::{
    EmailAction, EngagementEvent, EventKind, JourneyStage, OpportunityStage, OpportunityState, SalesAlert, Tier,
};
use abm_sim::{Channel, Expect, World, WorldConfig, raw_role, tal_csv};
use abm_testkit::{
    PrivateBroker, SecureListeners, ServiceProcess, TestTopics, TokenEndpoint, flush, free_port, http_get, metric,
    producer_to, program, read_all_from, run_to_exit, send_bytes, unique, wait_for_status, with_env, workspace_binary,
};

const DAY: i64 = 86_400_000;
/// `scoring.dedup_window_days` (the default) in ms.
const DEDUP_WINDOW: i64 = 7 * DAY;
const KEY: &str = "e2e-key";

// ---- the independent implementation -----------------------------------------------------

/// Base points of the first matching default rule, and whether it is the capped web_visit rule.
fn base_points(event: &EngagementEvent) -> (f64, Option<&'static str>) {
    let path = |url: &str| {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let path = if url.contains("://") { rest.find('/').map_or("", |i| &rest[i..]) } else { rest };
        path.split(['?', '#']).next().unwrap_or("").to_owned()
    };
    match event.kind {
        EventKind::DemoRequest => (50.0, Some("demo")),
        EventKind::Meeting => (30.0, Some("meeting")),
        EventKind::WebVisit => {
            let p = path(&event.web_visit.as_ref().map(|w| w.url.clone()).unwrap_or_default());
            if p.contains("/pricing") {
                (15.0, Some("pricing"))
            } else if p.contains("/careers") || p.contains("/jobs") {
                (-5.0, Some("careers"))
            } else {
                (5.0, Some("web_visit"))
            }
        }
        EventKind::ContentDownload => (10.0, Some("content")),
        EventKind::Email => match event.email.as_ref().map(|e| e.action) {
            Some(EmailAction::Click) => (5.0, Some("email_click")),
            Some(EmailAction::Unsubscribe) => (-10.0, Some("unsubscribe")),
            _ => (0.0, None),
        },
        EventKind::AdClick => (5.0, Some("ad_click")),
        _ => (0.0, None),
    }
}

/// The event's persona, else the default title mapping's, else `unknown`.
fn persona(event: &EngagementEvent) -> String {
    let contact = event.contact.as_ref();
    let from_title = || {
        let title = contact.and_then(|c| c.title.as_deref())?.to_lowercase();
        let words: Vec<&str> = title.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
        let has = |w: &str| words.contains(&w);
        let persona =
            if ["chief", "ceo", "cfo", "cto", "cio", "vp"].iter().any(|w| has(w)) || title.contains("vice president") {
                "economic_buyer"
            } else if ["head", "director", "manager"].iter().any(|w| has(w)) {
                "champion"
            } else if ["architect", "engineer", "developer"].iter().any(|w| has(w)) {
                "technical_evaluator"
            } else if has("analyst") {
                "end_user"
            } else {
                return None;
            };
        Some(persona.to_owned())
    };
    contact.and_then(|c| c.persona.clone()).or_else(from_title).unwrap_or_else(|| "unknown".into())
}

fn weight(event: &EngagementEvent) -> f64 {
    match persona(event).as_str() {
        "economic_buyer" => 1.5,
        "champion" => 1.2,
        _ => 1.0,
    }
}

/// The default `scoring.committee` of a tier (1, 2, 3; anything else: untiered).
fn default_committee(tier: Option<u8>) -> Vec<String> {
    let personas: &[&str] = match tier {
        Some(1) => &["economic_buyer", "champion", "technical_evaluator", "end_user"],
        Some(2) => &["economic_buyer", "champion", "technical_evaluator"],
        _ => &["economic_buyer", "champion"],
    };
    personas.iter().map(|p| (*p).to_owned()).collect()
}

fn contact_key(event: &EngagementEvent) -> Option<String> {
    let contact = event.contact.as_ref()?;
    contact.contact_id.clone().or_else(|| contact.email.clone())
}

/// One applied event as the formula needs it.
struct Applied {
    t: i64,
    points: f64,
    contact: Option<String>,
    persona: String,
    positive_rule: bool,
    hand_raiser: bool,
}

/// S, E and B of a set of applied events, recomputed from scratch (no incremental decay).
fn score(applied: &[Applied]) -> (f64, f64, usize) {
    let as_of = applied.iter().map(|a| a.t).max().unwrap_or(0);
    let e: f64 = applied.iter().map(|a| a.points * 2f64.powf(-((as_of - a.t) as f64) / (14.0 * DAY as f64))).sum();
    let breadth = applied
        .iter()
        .filter(|a| a.positive_rule && a.t > as_of - 30 * DAY)
        .filter_map(|a| a.contact.clone())
        .collect::<BTreeSet<_>>()
        .len();
    let m = if breadth <= 1 { 1.0 } else { (1.0 + 0.25 * (breadth as f64 - 1.0)).min(2.0) };
    (e.max(0.0) * m, e, breadth)
}

#[derive(Debug)]
struct Expected {
    score: f64,
    engagement: f64,
    breadth: usize,
    applied: usize,
    duplicates: usize,
    /// (crossing id, kind, as_of)
    crossings: Vec<(String, &'static str, i64)>,
    /// The required personas an engaged contact covers at as-of, and those missing.
    covered: Vec<String>,
    missing: Vec<String>,
    /// The journey stage after the last applied event (README, "Account journey"); `None` for
    /// an account with more opportunities than the scorer keeps (not recomputed here).
    stage: Option<&'static str>,
    /// (stage, event time) of each journey transition, in order; `None` with `stage`.
    transitions: Option<Vec<(JourneyStage, i64)>>,
    /// (persona, latest engagement) of the contacts the state keeps: those engaged in the 30
    /// days before as-of.
    contacts: Vec<(String, i64)>,
    /// The latest state of each opportunity.
    deals: Vec<OpportunityState>,
    first_applied_at: Option<i64>,
}

/// Coverage at as-of (README, "Buying committee coverage"): each contact's persona is that of
/// its latest positive-rule event (by time, then applied order), and it covers only if that
/// event is in the 30 days before as-of.
fn coverage(applied: &[Applied], required: &[String]) -> (Vec<String>, Vec<String>) {
    let as_of = applied.iter().map(|a| a.t).max().unwrap_or(0);
    let mut latest: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    for (index, a) in applied.iter().enumerate().filter(|(_, a)| a.positive_rule) {
        if let Some(contact) = &a.contact {
            let entry = latest.entry(contact).or_insert((a.t, index));
            if (a.t, index) >= *entry {
                *entry = (a.t, index);
            }
        }
    }
    let engaged: BTreeSet<&str> = latest
        .values()
        .filter(|(t, _)| *t > as_of - 30 * DAY)
        .map(|(_, index)| applied[*index].persona.as_str())
        .collect();
    required.iter().cloned().partition(|persona| engaged.contains(persona.as_str()))
}

/// Each opportunity's latest state: the change with the largest time, then the later applied;
/// created at the earliest time of any of its changes.
fn latest_deals(changes: &[(i64, String, OpportunityStage, f64, String)]) -> Vec<OpportunityState> {
    let mut latest: BTreeMap<&str, (i64, usize, i64)> = BTreeMap::new();
    for (index, (t, id, ..)) in changes.iter().enumerate() {
        let entry = latest.entry(id.as_str()).or_insert((*t, index, *t));
        if (*t, index) >= (entry.0, entry.1) {
            (entry.0, entry.1) = (*t, index);
        }
        entry.2 = entry.2.min(*t);
    }
    latest
        .into_iter()
        .map(|(id, (t, index, created))| {
            let (_, _, stage, amount, currency) = &changes[index];
            OpportunityState {
                opportunity_id: id.to_owned(),
                stage: *stage,
                stage_name: None,
                amount: *amount,
                currency: currency.clone(),
                created_at: created,
                updated_at: t,
            }
        })
        .collect()
}

/// The journey stage of the applied events so far (README, "Account journey"), from the last
/// stage upwards; `None` past the opportunities the scorer keeps (20), not recomputed here.
fn stage_of(
    applied: &[Applied],
    changes: &[(i64, String, OpportunityStage, f64, String)],
    threshold: f64,
) -> Option<&'static str> {
    let deals = latest_deals(changes);
    let has = |stage: OpportunityStage| deals.iter().any(|d| d.stage == stage);
    let (score, _, breadth) = score(applied);
    let as_of = applied.iter().map(|a| a.t).max().unwrap_or(0);
    let raised = applied.iter().any(|a| a.hand_raiser && a.t > as_of - 30 * DAY);
    Some(if deals.len() > 20 {
        return None;
    } else if applied.is_empty() {
        "unaware"
    } else if has(OpportunityStage::ClosedWon) {
        "customer"
    } else if has(OpportunityStage::Open) {
        "opportunity"
    } else if score >= threshold || raised {
        "mqa"
    } else if score >= 0.5 * threshold || breadth >= 2 {
        "engaged"
    } else {
        "aware"
    })
}

fn stage_named(name: &str) -> JourneyStage {
    JourneyStage::ALL.into_iter().find(|s| s.as_str() == name).unwrap_or_default()
}

fn recompute(account: &str, log: &[EngagementEvent], threshold: f64, required: &[String]) -> Expected {
    // event id → the account's as-of when it was applied: a repeat is a duplicate while the
    // as-of advanced less than the dedup window (7 days) since (README, "Duplicates").
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut caps: HashMap<(String, i64), u32> = HashMap::new();
    let mut applied = Vec::new();
    // (time, opportunity id, stage, amount, currency) of each applied opportunity change, in
    // applied order.
    let mut changes: Vec<(i64, String, OpportunityStage, f64, String)> = Vec::new();
    let mut transitions = Some(Vec::new());
    let mut stage_before = "unaware";
    let mut duplicates = 0;
    let (mut armed, mut thresholds, mut hands) = (true, 0, 0);
    let mut crossings = Vec::new();
    for event in log {
        let as_of_before = applied.iter().map(|a: &Applied| a.t).max().unwrap_or(i64::MIN);
        if seen.get(&event.event_id).is_some_and(|applied_at| *applied_at > as_of_before - DEDUP_WINDOW) {
            duplicates += 1;
            continue;
        }
        let (base, rule) = base_points(event);
        let contact = contact_key(event);
        let mut points = base * weight(event);
        if rule == Some("web_visit") {
            let count = caps
                .entry((contact.clone().unwrap_or_else(|| "anonymous".into()), event.occurred_at.div_euclid(DAY)))
                .or_default();
            *count += 1;
            if *count > 10 {
                points = 0.0;
            }
        }
        if let Some(change) = &event.opportunity {
            changes.push((
                event.occurred_at,
                change.opportunity_id.clone(),
                change.stage,
                change.amount,
                change.currency.clone(),
            ));
        }
        applied.push(Applied {
            t: event.occurred_at,
            points,
            contact,
            persona: persona(event),
            positive_rule: rule.is_some() && base > 0.0,
            hand_raiser: event.kind == EventKind::DemoRequest,
        });
        let (s, _, _) = score(&applied);
        let as_of = applied.iter().map(|a| a.t).max().unwrap_or(0);
        seen.insert(event.event_id.clone(), as_of);
        if armed && s >= threshold {
            armed = false;
            thresholds += 1;
            crossings.push((format!("{account}:threshold:{thresholds}"), "threshold", as_of));
        } else if !armed && s < threshold * 0.75 {
            armed = true;
        }
        if event.kind == EventKind::DemoRequest {
            hands += 1;
            crossings.push((format!("{account}:hand_raiser:{hands}"), "hand_raiser", as_of));
        }
        // The journey after each applied event: a change is a transition at the event's time.
        match stage_of(&applied, &changes, threshold) {
            None => transitions = None,
            Some(stage) if stage != stage_before => {
                stage_before = stage;
                if let Some(list) = transitions.as_mut() {
                    list.push((stage_named(stage), event.occurred_at));
                }
            }
            Some(_) => {}
        }
    }
    let (score, engagement, breadth) = score(&applied);
    let (covered, missing) = coverage(&applied, required);
    let stage = stage_of(&applied, &changes, threshold);
    let as_of = applied.iter().map(|a| a.t).max().unwrap_or(0);
    let mut latest: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    for (index, a) in applied.iter().enumerate().filter(|(_, a)| a.positive_rule) {
        if let Some(contact) = &a.contact {
            let entry = latest.entry(contact).or_insert((a.t, index));
            if (a.t, index) >= *entry {
                *entry = (a.t, index);
            }
        }
    }
    let contacts = latest
        .values()
        .filter(|(t, _)| *t > as_of - 30 * DAY)
        .map(|(t, index)| (applied[*index].persona.clone(), *t))
        .collect();
    let deals = latest_deals(&changes);
    let first_applied_at = applied.iter().map(|a| a.t).min();
    Expected {
        score,
        engagement,
        breadth,
        applied: applied.len(),
        duplicates,
        crossings,
        covered,
        missing,
        stage,
        transitions,
        contacts,
        deals,
        first_applied_at,
    }
}

/// Alerts after a 24 h cooldown per (account, kind), in event time.
fn expected_alerts(crossings: &[(String, &'static str, i64)]) -> BTreeSet<String> {
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut alerts = BTreeSet::new();
    for (id, kind, as_of) in crossings {
        if last.get(kind).is_none_or(|t| as_of - t >= DAY) {
            last.insert(kind, *as_of);
            alerts.insert(id.clone());
        }
    }
    alerts
}

// ---- the run ----------------------------------------------------------------------------

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Waits until `done`; on time-out, panics with the last lines of `service`'s stderr.
fn wait_until(what: &str, timeout: Duration, service: &ServiceProcess, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            let stderr = service.stderr();
            // Without the repeats of "all brokers are down" that librdkafka floods it with.
            let tail: Vec<&str> =
                stderr.lines().rev().filter(|line| !line.contains("AllBrokersDown")).take(60).collect();
            panic!(
                "timed out waiting for {what}; its stderr ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_simulated_world_scores_and_alerts_as_an_independent_implementation_expects() {
    run_world("e2e", 4000, &[], Chaos::Calm);
}

/// The broker is stopped for 12 s and started again, twice, while the stream flows; no service
/// is restarted. Ingest answers 503 with `Retry-After` while it is away (the sender retries),
/// the scorer and the alerter abort and rewind what they could not commit, and afterwards every
/// score and alert must be what the independent implementation expects: no alert twice, none
/// missing, no acknowledged event lost. `deploy/local/bench.sh outages` (benches/outages.rs,
/// which includes this file) runs it repeatedly and counts the exact runs.
pub fn run_with_two_broker_restarts() {
    let _one_at_a_time = PRIVATE_BROKERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let broker = PrivateBroker::start();
    run_world("e2e-outage", 3000, &[], Chaos::BrokerRestarts(&broker));
}

/// Scale-out under load: while the stream flows, a second scorer and a second alerter join
/// their groups, then a third scorer; the second pair leaves with SIGTERM and the third is
/// killed with SIGKILL (its partitions come back after the session timeout, 10 s here). Every
/// score and alert must equal what one instance alone gives.
#[test]
fn instances_join_and_leave_under_load_and_results_equal_one_instance() {
    run_world("e2e-scale", 3000, &[], Chaos::ScaleOut);
}

#[test]
fn the_pipeline_rides_out_two_broker_restarts_exactly() {
    run_with_two_broker_restarts();
}

/// The broker stopped for 3-8 s and restarted three times at random moments, the first right
/// after the services restored their partitions, and 2 s after the alerter was killed,
/// restarted and had restored (the schedule that left an alerter idle for good before loops
/// were watched); no other restart. Every score and alert must be right, and no loop may go
/// without progress past its bound. The schedule is printed; `OUTAGE_SEED` repeats one.
pub fn run_with_random_broker_restarts() {
    let _one_at_a_time = PRIVATE_BROKERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let broker = PrivateBroker::start();
    let seed = std::env::var("OUTAGE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    run_world("e2e-random-outage", 3000, &[], Chaos::RandomBrokerRestarts(&broker, seed));
}

#[test]
fn the_pipeline_rides_out_broker_restarts_at_random_moments() {
    run_with_random_broker_restarts();
}

/// The same over a secured cluster: the three services talk to the broker only over SASL_SSL
/// with SCRAM-SHA-512 (the client settings of deploy/k8s and deploy/docker); the test's own
/// reads and writes use the plaintext listener.
#[test]
fn the_pipeline_runs_end_to_end_over_sasl_ssl_with_scram_sha_512() {
    let secure = SecureListeners::of_broker_under_test();
    run_world("e2e-sasl", 1500, &secure.sasl_env(&secure.password(), "ca.pem"), Chaos::Calm);
}

/// The same with OAUTHBEARER: each service fetches its tokens from an OIDC token endpoint
/// (client credentials) and the broker checks their signature, issuer, audience and expiry
/// against its issuer's keys, as with Keycloak, Okta or Azure AD in front of a cluster.
#[test]
fn the_pipeline_runs_end_to_end_over_sasl_ssl_with_oauthbearer_oidc_tokens() {
    let secure = SecureListeners::of_broker_under_test();
    let endpoint = TokenEndpoint::start(&secure, "abm-pipeline", "pipeline-secret");
    run_world("e2e-oauth", 600, &secure.oauth_env(&endpoint, "pipeline-secret"), Chaos::Calm);
    // ingest (import and service), the scorer and the alerter each logged in with a token.
    assert!(endpoint.issued() >= 4, "tokens issued: {}", endpoint.issued());
    assert_eq!(endpoint.refused(), 0);
}

/// Samples the loops' stalled-seconds gauges twice a second until stopped; keeps the largest.
struct StallSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Stalls>,
}

/// What [`StallSampler`] saw.
#[derive(Debug)]
struct Stalls {
    /// The longest time a loop had input waiting without progress, and the gauge that showed it
    /// (the gauges count from the last real progress: a heal does not reset them).
    longest: f64,
    which: String,
    /// Consumer replacements after a stall, over every loop, at the last sample (a restarted
    /// alerter's count starts again, so the highest seen per sample is kept).
    heals: f64,
}

impl StallSampler {
    fn start(ports: &BTreeMap<&str, u16>) -> StallSampler {
        let gauges = [
            (ports["scorer"], "abm_scorer_loop_stalled_seconds"),
            (ports["alerter"], "abm_alerter_loop_stalled_seconds"),
            (ports["alerter"], "abm_alerter_webhook_stalled_seconds"),
            (ports["ingest"], "abm_ingest_raw_loop_stalled_seconds"),
        ];
        let heals = [
            (ports["scorer"], "abm_scorer_loop_heals_total"),
            (ports["alerter"], "abm_alerter_loop_heals_total"),
            (ports["alerter"], "abm_alerter_webhook_heals_total"),
            (ports["ingest"], "abm_ingest_raw_loop_heals_total"),
        ];
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Stalls { longest: 0.0, which: "none".to_owned(), heals: 0.0 };
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for (port, gauge) in gauges {
                    let seconds = metric(port, gauge, &[]);
                    if seconds > seen.longest {
                        (seen.longest, seen.which) = (seconds, gauge.to_owned());
                    }
                }
                let heals: f64 = heals.iter().map(|(port, counter)| metric(*port, counter, &[])).sum();
                seen.heals = seen.heals.max(heals);
                std::thread::sleep(Duration::from_millis(500));
            }
            seen
        });
        StallSampler { stop, thread }
    }

    fn stop(self) -> Stalls {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(Stalls {
            longest: f64::INFINITY,
            which: "the sampler panicked".into(),
            heals: 0.0,
        })
    }
}

/// The runs on a private broker take turns: two brokers and two pipelines at once on two cores
/// would measure the machine, not the pipeline.
static PRIVATE_BROKERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long each broker outage of the outage run lasts: 12 s, or `OUTAGE_SECONDS` (the
/// benchmark runs it with 60).
fn outage() -> Duration {
    Duration::from_secs(std::env::var("OUTAGE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12))
}

/// What happens to the pipeline while the stream flows.
#[derive(Debug, Clone, Copy)]
enum Chaos<'a> {
    Calm,
    /// Everything runs on that broker, which is stopped for [`outage`] and started again, twice.
    BrokerRestarts(&'a PrivateBroker),
    /// Scorer and alerter instances join their groups one by one and leave again.
    ScaleOut,
    /// Everything runs on that broker, stopped three times at moments drawn from the seed.
    RandomBrokerRestarts(&'a PrivateBroker, u64),
}

/// SplitMix64: the random schedule of [`Chaos::RandomBrokerRestarts`] from its seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut x = *state;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// (batch index, outage) for each broker outage of `chaos` over `batches` batches.
fn outage_schedule(chaos: Chaos<'_>, batches: usize) -> Vec<(usize, Duration)> {
    match chaos {
        Chaos::BrokerRestarts(_) => vec![(batches / 3, outage()), (2 * batches / 3, outage())],
        Chaos::RandomBrokerRestarts(_, seed) => {
            let mut state = seed;
            let mut at: Vec<usize> = vec![1];
            while at.len() < 3 {
                let index = batches / 4 + (next_random(&mut state) as usize) % (batches * 3 / 4);
                if at.iter().all(|other| other.abs_diff(index) >= 3) {
                    at.push(index);
                }
            }
            at.sort_unstable();
            at.into_iter().map(|index| (index, Duration::from_millis(3000 + next_random(&mut state) % 5001))).collect()
        }
        _ => Vec::new(),
    }
}

impl<'a> Chaos<'a> {
    fn outages(self) -> Option<&'a PrivateBroker> {
        match self {
            Chaos::BrokerRestarts(broker) | Chaos::RandomBrokerRestarts(broker, _) => Some(broker),
            _ => None,
        }
    }
}

/// Runs a seeded world of `total` events through the three services (their Kafka settings
/// overridden by `kafka_env`) and checks every score and alert, with `chaos` while the events
/// are sent.
fn run_world(name: &str, total: usize, kafka_env: &[(&'static str, String)], chaos: Chaos<'_>) {
    let outages = chaos.outages();
    let scale_out = matches!(chaos, Chaos::ScaleOut);
    let bootstrap = outages.map_or_else(abm_testkit::bootstrap_servers, PrivateBroker::bootstrap);
    let mut kafka_env = kafka_env.to_vec();
    if outages.is_some() {
        kafka_env.push(("ABM_KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()));
    }
    if scale_out {
        // A killed member's partitions move after the session timeout: 10 s instead of 45.
        kafka_env.push(("ABM_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS", "10000".into()));
    }
    let kafka_env = kafka_env.as_slice();
    let topics = TestTopics::new(name);
    topics.create_on(&bootstrap);
    let now = abm::clock::now_ms();
    let config = WorldConfig::new(2024, 25, now - 30 * DAY, 30 * DAY - 60_000);
    let mut world = World::new(config, total as u64, &unique(name));
    let events: Vec<_> = (0..total).map(|_| world.next_event()).collect();
    let tiers: BTreeMap<String, u8> = world.accounts.iter().map(|a| (a.id.clone(), a.tier)).collect();
    let committees: BTreeMap<String, Option<Vec<String>>> =
        world.accounts.iter().map(|a| (a.id.clone(), a.committee.clone())).collect();

    // The TAL, through the import command.
    let csv = std::env::temp_dir().join(format!("{}.csv", topics.prefix));
    std::fs::write(&csv, tal_csv(&world.accounts)).expect("csv");
    let (status, stderr) = run_to_exit(
        &workspace_binary("ingest"),
        &["import-tal", &csv.display().to_string()],
        &with_env(topics.env(), kafka_env),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");

    let ports: BTreeMap<&str, u16> =
        [("ingest", free_port()), ("scorer", free_port()), ("alerter", free_port())].into();
    let spawn = |binary: &'static str, port: u16, extra: &[(&'static str, String)]| {
        let mut env = with_env(topics.env(), kafka_env);
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
        env.extend_from_slice(extra);
        ServiceProcess::start(&workspace_binary(binary), &[], &env)
    };
    let start = |name: &'static str, extra: &[(&'static str, String)]| {
        let process = spawn(name, ports[name], extra);
        wait_for_status(ports[name], "/readyz", 200, Duration::from_secs(60), name);
        process
    };
    let prefix = topics.prefix.clone();
    let ingest = start(
        "ingest",
        &[("ABM_INGEST__WRITE_KEYS__E2E", KEY.into()), ("ABM_INGEST__GROUP_ID", format!("{prefix}-ingest"))],
    );
    // ABM_TEST_STALL_AFTER_MS overrides the loops' stall bound (benches/outages.rs sets an
    // hour to measure the loops as they were before they were watched).
    let stall_after = std::env::var("ABM_TEST_STALL_AFTER_MS").ok();
    let mut scorer_env = vec![
        ("ABM_SCORER__GROUP_ID", format!("{prefix}-scorer")),
        ("ABM_SCORER__INSTANCE_ID", format!("{prefix}-scorer")),
    ];
    let mut alerter_env = vec![
        ("ABM_ALERTER__GROUP_ID", format!("{prefix}-alerter")),
        ("ABM_ALERTER__INSTANCE_ID", format!("{prefix}-alerter")),
    ];
    if let Some(ms) = &stall_after {
        scorer_env.push(("ABM_SCORER__STALL_AFTER_MS", ms.clone()));
        alerter_env.push(("ABM_ALERTER__STALL_AFTER_MS", ms.clone()));
    }
    let scorer = start("scorer", &scorer_env);
    let mut alerter = start("alerter", &alerter_env);
    // How long any loop went without progress while input waited, sampled all run long: it must
    // stay within the loops' bound (past it, a loop heals and starts again from 0).
    let longest_stall = StallSampler::start(&ports);
    let stall_bound_s = stall_after.as_deref().and_then(|ms| ms.parse::<f64>().ok()).map_or(20.0, |ms| ms / 1000.0);

    // Send like the simulator: NDJSON batches over HTTP, single records to the raw topics. A
    // batch refused with 503 (the broker is away) is sent again after its Retry-After.
    let kafka = producer_to(&bootstrap);
    let mut refused_while_away = 0;
    let mut post = |body: String| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        loop {
            let (status, retry_after) = runtime.block_on(async {
                let response = reqwest::Client::new()
                    .post(format!("http://127.0.0.1:{}/v1/events", ports["ingest"]))
                    .bearer_auth(KEY)
                    .body(body.clone())
                    .send()
                    .await
                    .expect("posted");
                let retry_after =
                    response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                (response.status().as_u16(), retry_after)
            });
            if status == 503 && outages.is_some() {
                let seconds = retry_after.expect("a 503 says when to retry (Retry-After)");
                refused_while_away += 1;
                std::thread::sleep(Duration::from_secs(seconds.min(1)));
                continue;
            }
            assert!((200..300).contains(&status) || status == 400, "ingest answered {status}");
            return;
        }
    };
    let batches: Vec<&[abm_sim::SimEvent]> = events.chunks(50).collect();
    // Scale-out: (scorer, alerter) instances 2 and scorer 3 join and leave during the stream.
    let member = |service: &'static str, n: u32| {
        let group = if service == "scorer" { "ABM_SCORER__GROUP_ID" } else { "ABM_ALERTER__GROUP_ID" };
        let id = if service == "scorer" { "ABM_SCORER__INSTANCE_ID" } else { "ABM_ALERTER__INSTANCE_ID" };
        let env = [(group, format!("{prefix}-{service}")), (id, format!("{prefix}-{service}-{n}"))];
        spawn(service, free_port(), &env)
    };
    let mut joined: Vec<(&'static str, ServiceProcess)> = Vec::new();
    let step = |index: usize, k: usize| scale_out && index == k * batches.len() / 6;
    let schedule = outage_schedule(chaos, batches.len());
    if !schedule.is_empty() {
        eprintln!("outages: {chaos:?}: at batches {schedule:?} of {}", batches.len());
    }
    // A restarted alerter's counters start again from 0: then the alerts topic is what counts.
    let mut alerter_restarted = false;
    std::thread::scope(|scope| {
        let mut resuming = None;
        for (index, chunk) in batches.iter().enumerate() {
            if step(index, 1) {
                joined.push(("scorer-2", member("scorer", 2)));
                joined.push(("alerter-2", member("alerter", 2)));
            } else if step(index, 2) {
                joined.push(("scorer-3", member("scorer", 3)));
            } else if step(index, 3) {
                for (name, process) in &joined {
                    if name.ends_with("-2") {
                        process.signal("TERM");
                    }
                }
            } else if step(index, 4) {
                for (name, process) in &joined {
                    if *name == "scorer-3" {
                        process.signal("KILL");
                    }
                }
            }
            if let Some(broker) = outages
                && let Some((_, outage)) = schedule.iter().find(|(at, _)| *at == index)
            {
                // One outage at a time: the last one has ended before the next starts.
                if let Some(resumed) = resuming.take() {
                    let _ = std::thread::ScopedJoinHandle::join(resumed);
                }
                if matches!(chaos, Chaos::RandomBrokerRestarts(..)) && index == schedule[0].0 {
                    // The schedule that once left an alerter idle for good: it is killed and
                    // restarted, restores its partitions, and the broker goes down 2 s later.
                    alerter.signal("KILL");
                    let _ = alerter.wait(Duration::from_secs(30));
                    alerter = start("alerter", &alerter_env);
                    alerter_restarted = true;
                    std::thread::sleep(Duration::from_secs(2));
                }
                broker.stop();
                let outage = *outage;
                resuming = Some(scope.spawn(move || {
                    std::thread::sleep(outage);
                    broker.resume();
                }));
            }
            let mut lines = Vec::new();
            for event in *chunk {
                match raw_role(&event.kind)
                    .filter(|_| event.channel == Channel::Raw && event.expect != Expect::Malformed)
                {
                    Some(role) => send_bytes(&kafka, &topics.name(role), "sim", event.json.as_bytes()),
                    None => lines.push(event.json.clone()),
                }
            }
            if !lines.is_empty() {
                post(lines.join("\n"));
            }
            if outages.is_some() {
                // Spread the stream so both outages fall in the middle of it.
                std::thread::sleep(Duration::from_millis(100));
            } else if scale_out {
                // Over about 30 s, so that each member joins, works and leaves while events
                // flow (a rebalance takes a few seconds).
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    });
    flush(&kafka);
    if outages.is_some() {
        assert!(refused_while_away > 0, "ingest answered 503 while the broker was away");
    }

    // Everything is answered for, then scored, then alerted.
    let m = |service: &str, name: &str, labels: &[&str]| metric(ports[service], name, labels);
    let patience = if outages.is_some() { Duration::from_secs(300) } else { Duration::from_secs(120) };
    wait_until("ingest to answer for every event", patience, &ingest, || {
        m("ingest", "abm_ingest_events_received_total", &[]) >= total as f64
    });
    let engagement = topics.name(TopicRole::Engagement);
    let logged_ids = || -> Vec<String> {
        read_all_from::<EngagementEvent>(&bootstrap, &engagement).into_iter().map(|(_, e)| e.event_id).collect()
    };
    let engaged = if outages.is_some() {
        // Ingest's counters count attempts, and a write that reached Kafka but whose
        // acknowledgement did not reach ingest was answered 503 and sent again (it is in the log
        // twice; the scorer absorbs the repeat). What counts is the log: every event meant for
        // an account gets there (nothing acknowledged is lost), and the scorer applies the log.
        let expected: BTreeSet<String> = events
            .iter()
            .filter(|e| matches!(e.expect, Expect::Engaged | Expect::Duplicate))
            .filter_map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.json).ok()?["event_id"].as_str().map(str::to_owned)
            })
            .collect();
        wait_until("every event meant for an account to be in abm.engagement", patience, &ingest, || {
            let logged: BTreeSet<String> = logged_ids().into_iter().collect();
            expected.is_subset(&logged)
        });
        logged_ids().len() as f64
    } else {
        m("ingest", "abm_ingest_events_accepted_total", &["destination=\"engaged\""])
    };
    let intended_rejects = events.iter().filter(|e| matches!(e.expect, Expect::Bot | Expect::Malformed)).count() as f64;
    let rejected = m("ingest", "abm_ingest_events_rejected_total", &[]);
    if outages.is_some() {
        // A batch refused with 503 is sent again: its bad events are rejected (and kept) again.
        assert!(rejected >= intended_rejects, "bots and malformed events rejected: {rejected}");
    } else {
        assert_eq!(rejected, intended_rejects, "bots and malformed events rejected");
    }
    // The scorer's input log, per account, in partition order: what it saw, in the order it saw it.
    let mut logs: BTreeMap<String, Vec<EngagementEvent>> = BTreeMap::new();
    for (key, event) in read_all_from::<EngagementEvent>(&bootstrap, &engagement) {
        logs.entry(key).or_default().push(event);
    }
    assert_eq!(logs.values().map(Vec::len).sum::<usize>() as f64, engaged);
    if scale_out {
        // Other instances did part of the work and are gone: the first instance, which holds
        // every partition again, must answer for every event of every account.
        let answered = |account: &str| {
            http_get(ports["scorer"], &format!("/v1/accounts/{account}"))
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .map_or(0, |json| {
                    json["events_applied"].as_u64().unwrap_or(0) + json["duplicates"].as_u64().unwrap_or(0)
                })
        };
        wait_until("scorer 1 to hold every partition again and answer for every event", patience, &scorer, || {
            logs.iter().all(|(account, log)| answered(account) == log.len() as u64)
        });
        for (name, process) in &mut joined {
            let status = process.wait(Duration::from_secs(60));
            if name.ends_with("-2") {
                assert!(status.success(), "{name} stops cleanly on SIGTERM: {status:?}\n{}", process.stderr());
            } else {
                assert!(!status.success(), "{name} was killed: {status:?}");
            }
            // Each member really took part: it was given partitions while the stream flowed.
            assert!(
                process.stderr().contains("partitions assigned"),
                "{name} never got a partition:\n{}",
                process.stderr()
            );
        }
    } else {
        wait_until("the scorer to apply every engaged event", patience, &scorer, || {
            m("scorer", "abm_scorer_events_applied_total", &[]) + m("scorer", "abm_scorer_duplicates_total", &[])
                >= engaged
        });
        let crossings = m("scorer", "abm_scorer_crossings_total", &[]);
        assert!(crossings > 5.0, "the world should cross thresholds: {crossings}");
        if !alerter_restarted {
            wait_until("the alerter to read every crossing", patience, &alerter, || {
                m("alerter", "abm_alerter_crossings_total", &[]) >= crossings
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if outages.is_some() {
        eprintln!(
            "outages: {refused_while_away} batches refused with 503; transactions aborted and rewound: scorer {}, alerter {}",
            m("scorer", "abm_scorer_transactions_aborted_total", &[]),
            m("alerter", "abm_alerter_transactions_aborted_total", &[]),
        );
        eprintln!(
            "outages: loops healed (consumer replaced after a stall): scorer {}, alerter {}",
            m("scorer", "abm_scorer_loop_heals_total", &[]),
            m("alerter", "abm_alerter_loop_heals_total", &[]),
        );
        // No loop is left stalled (one that stalls past its bound heals, and is counted). Read
        // the moment a loop comes back from a commit it retried through the last outage, the
        // gauge can still show that outage's wait (seen once in CI: 10.1 s); it must fall back
        // to 0 within the bound, or the loop is stalled.
        let bound = Duration::from_secs(20);
        wait_until("the scorer's loop to be unstalled", bound, &scorer, || {
            m("scorer", "abm_scorer_loop_stalled_seconds", &[]) == 0.0
        });
        wait_until("the alerter's loop to be unstalled", bound, &alerter, || {
            m("alerter", "abm_alerter_loop_stalled_seconds", &[]) == 0.0
        });
    }
    let Stalls { longest, which, heals } = longest_stall.stop();
    eprintln!(
        "stalls: longest time a loop had input waiting without progress: {longest:.1} s ({which}); heals: {heals}"
    );
    // A check runs about once a second: a stall is seen at most that much past its bound. The
    // gauges do not restart at a heal: after one, the replacement consumer must join its group
    // and take input within 10 s, and a heal that does not help shows here too.
    let allowance = if heals > 0.0 { 10.0 } else { 2.0 };
    assert!(
        longest <= stall_bound_s + allowance,
        "{which} went {longest:.1} s without progress (bound {stall_bound_s} s, heals {heals})"
    );
    if matches!(chaos, Chaos::Calm) {
        // With nothing going wrong, no loop may ever have needed healing.
        assert_eq!(heals, 0.0, "a loop healed in a calm run:\n{}\n{}", scorer.stderr(), alerter.stderr());
    }

    let mut expected_alert_ids = BTreeSet::new();
    // Accounts with some persona covered, and with some missing: the world must show both.
    let mut coverage_seen = (0, 0);
    let mut stages_seen = BTreeSet::new();
    // What the program metrics are recomputed from, per account.
    let tier_of = |account: &str| match tiers.get(account) {
        Some(1) => Tier::Tier1,
        Some(2) => Tier::Tier2,
        Some(3) => Tier::Tier3,
        _ => Tier::Untiered,
    };
    let mut truths: BTreeMap<String, program::Truth> = BTreeMap::new();
    for (account, log) in &logs {
        let threshold = match tiers.get(account) {
            Some(1) => 50.0,
            Some(2) => 75.0,
            Some(3) => 100.0,
            _ => 150.0,
        };
        let required = committees
            .get(account)
            .cloned()
            .flatten()
            .unwrap_or_else(|| default_committee(tiers.get(account).copied()));
        let expected = recompute(account, log, threshold, &required);
        let (status, body) = http_get(ports["scorer"], &format!("/v1/accounts/{account}")).expect("scorer answers");
        assert_eq!(status, 200, "{account}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let got = |field: &str| json[field].as_f64().unwrap_or(f64::NAN);
        // On a mismatch, the account's whole story: what the scorer shows and its input log.
        let story = || {
            let log: Vec<String> = log
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {:?} t={}",
                        e.event_id,
                        e.kind.as_str(),
                        e.email.as_ref().map(|m| m.action),
                        e.occurred_at
                    )
                })
                .collect();
            format!("{account}: scorer {json}\nexpected {expected:?}\nlog:\n{}", log.join("\n"))
        };
        assert!(
            close(got("engagement"), expected.engagement),
            "E {} vs {}: {}",
            got("engagement"),
            expected.engagement,
            story()
        );
        assert!(close(got("score"), expected.score), "S {} vs {}: {}", got("score"), expected.score, story());
        assert_eq!(json["breadth"].as_u64(), Some(expected.breadth as u64), "B: {}", story());
        assert_eq!(json["events_applied"].as_u64(), Some(expected.applied as u64), "{}", story());
        assert_eq!(json["duplicates"].as_u64(), Some(expected.duplicates as u64), "{}", story());
        let names = |field: &str| -> Vec<String> {
            json["coverage"][field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        assert_eq!(names("required"), required, "committee: {}", story());
        assert_eq!(names("covered"), expected.covered, "covered: {}", story());
        assert_eq!(names("missing"), expected.missing, "missing: {}", story());
        let ratio = expected.covered.len() as f64 / required.len() as f64;
        assert!(close(json["coverage"]["ratio"].as_f64().unwrap_or(f64::NAN), ratio), "ratio: {}", story());
        if let Some(stage) = expected.stage {
            assert_eq!(json["stage"].as_str(), Some(stage), "stage: {}", story());
            stages_seen.insert(stage);
        }
        coverage_seen.0 += usize::from(!expected.covered.is_empty());
        coverage_seen.1 += usize::from(!expected.missing.is_empty());
        expected_alert_ids.extend(expected_alerts(&expected.crossings));
        let transitions = expected.transitions.clone().unwrap_or_else(|| panic!("{account}: journey not recomputed"));
        truths.insert(
            account.clone(),
            program::Truth {
                tier: tier_of(account),
                on_tal: tiers.contains_key(account),
                committee: required.clone(),
                stage: stage_named(expected.stage.unwrap_or("unaware")),
                transitions,
                contacts: expected.contacts.clone(),
                deals: expected.deals.clone(),
                first_applied_at: expected.first_applied_at,
                alerts: vec![],
            },
        );
    }
    // TAL accounts without an event are in the program too (unaware).
    for account in tiers.keys().filter(|a| !logs.contains_key(*a)) {
        let required = committees
            .get(account)
            .cloned()
            .flatten()
            .unwrap_or_else(|| default_committee(tiers.get(account).copied()));
        truths.insert(account.clone(), program::Truth::unaware(tier_of(account), required));
    }
    assert!(expected_alert_ids.len() > 5, "the world should raise alerts: {}", expected_alert_ids.len());
    assert!(coverage_seen.0 > 0 && coverage_seen.1 > 0, "covered and missing personas: {coverage_seen:?}");
    // (A dense world of few accounts has them all engaged or beyond.) CRM outcomes follow
    // hand-raisers in the simulated world: some accounts have an open opportunity or are won.
    assert!(stages_seen.len() >= 3, "the world should spread over the journey: {stages_seen:?}");
    let alert_ids = || -> Vec<String> {
        read_all_from::<SalesAlert>(&bootstrap, &topics.name(TopicRole::SalesAlerts))
            .into_iter()
            .map(|(_, alert)| alert.alert_id)
            .collect()
    };
    if scale_out || alerter_restarted {
        // The alerters' work is not counted anywhere that survives them: wait on the topic.
        wait_until("every expected alert in abm.sales-alerts", patience, &alerter, || {
            alert_ids().len() >= expected_alert_ids.len()
        });
        std::thread::sleep(Duration::from_secs(1));
    }
    // Every alert carries the committee's coverage, and its next step names what is missing.
    for (_, alert) in read_all_from::<SalesAlert>(&bootstrap, &topics.name(TopicRole::SalesAlerts)) {
        let coverage = alert.coverage.as_ref().unwrap_or_else(|| panic!("{} has no coverage", alert.alert_id));
        let named = alert.next_step.contains("Multi-thread: no ");
        assert_eq!(named, !coverage.missing.is_empty(), "{}: {}", alert.alert_id, alert.next_step);
    }
    let alerts = alert_ids();
    let distinct: BTreeSet<String> = alerts.iter().cloned().collect();
    assert_eq!(distinct.len(), alerts.len(), "no alert twice");
    assert_eq!(distinct, expected_alert_ids, "alerts = expected crossings after the 24 h cooldown");

    // The program metrics (README, "Program metrics") over the whole world equal the
    // recomputation from the accounts above and the alerts published: at the end of the stream
    // (engagement, coverage) and 60 days later (every 30-day alert window ended).
    for (_, alert) in read_all_from::<SalesAlert>(&bootstrap, &topics.name(TopicRole::SalesAlerts)) {
        if let Some(truth) = truths.get_mut(&alert.account_id) {
            truth.alerts.push(alert.as_of);
        }
    }
    let truths: Vec<program::Truth> = truths.into_values().collect();
    let end = abm::clock::now_ms();
    for at in [end, end + 60 * DAY] {
        let expected = program::report(&truths, at, None);
        let path = format!("/v1/program?at={at}");
        // The program's book follows abm.account-program a moment behind the scorer's commits.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = http_get(ports["scorer"], &path)
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
            let wrong = answer.map_or(Some("no answer".to_owned()), |got| program::mismatch(&got, &expected, &path));
            match wrong {
                None => break,
                Some(wrong) => assert!(Instant::now() < deadline, "{wrong}\nscorer: {}", scorer.stderr()),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let all = &expected["all"];
        eprintln!(
            "program at {at}: engagement rate {}, mean coverage {}, stages {}, win rate {}, alerts followed within 30 days {}",
            all["engagement_rate"],
            all["mean_coverage"],
            all["accounts_by_stage"],
            all["opportunities"]["win_rate"],
            all["alerts"]["windows"][0]["rate"]
        );
    }
    // Figures that could not fail would prove nothing: the world has engagement, outcomes and
    // alerts followed by opportunities.
    let later = program::report(&truths, end + 60 * DAY, None);
    let now = program::report(&truths, end, None);
    assert!(now["all"]["engaged"].as_u64().unwrap_or(0) > 0, "{now}");
    assert!(later["all"]["opportunities"]["won"].as_u64().unwrap_or(0) > 0, "{later}");
    assert!(later["all"]["alerts"]["windows"][0]["followed"].as_u64().unwrap_or(0) > 0, "{later}");
    let _ = std::fs::remove_file(csv);
}
