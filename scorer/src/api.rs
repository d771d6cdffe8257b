//! The query API on the scorer's HTTP port.
//!
//! Every instance answers for every account (see [`crate::directory`]): a query for an account
//! of a partition held elsewhere is forwarded to its holder, the leaderboard is gathered from
//! every instance, and while the partition is being restored or moved the answer is `503` with
//! `Retry-After: 1`, never a score from state that is not there.
//!
//! - `GET /v1/accounts/{id}` — the account's score at its as-of time (E, B, m, tier, armed,
//!   breakdown per rule, counts, contacts, recent events) and decayed to now (`now`).
//!   `?at=<ms>` decays to that time instead of the wall clock.
//! - `GET /v1/accounts?top=N&tier=T&stage=S&q=text&at=<ms>` — leaderboard by score decayed to
//!   now (or `at`), over every instance. Without `stage` and `q` each instance reads its
//!   ranking (its cost follows N, not the number of accounts); with them, it scans.
//! - `GET /v1/program?tier=T&at=<ms>` — the ABM program's figures over every account of every
//!   instance (README, "Program metrics"); `503` with `Retry-After` until this instance has read
//!   the program's topics once. The body is [`program::Report`]: its types are the contract.
//!
//! Errors are JSON: `{"error": "...", ...}` with 400, 404 or 503. Each answer says which
//! instance made it in `x-abm-instance`.

use std::sync::Arc;
use std::time::Duration;

use abm_schemas::{
    CommitteeCoverage, EngagedContact, EventKind, JourneyStage, OpportunityState, RecentEvent, RuleContribution, Tier,
};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::directory::{Directory, Holding, Route, partition_of};
use crate::engine::{AccountScoreState, Engine, ScoreView};
use crate::processor::Tal;
use crate::program::{self, Book};
use crate::store::Store;

/// On a request from one instance to another: the sender's instance id. Such a request is
/// answered by the receiver alone (never forwarded again).
pub const FORWARDED: &str = "x-abm-forwarded";
/// On a leaderboard request from one instance to another: `local`, this instance's partitions
/// only, with the list of them.
pub const SCOPE: &str = "x-abm-scope";
/// On every answer: the instance that was asked.
pub const INSTANCE: &str = "x-abm-instance";
/// On an account's answer: the instance that holds the account and read it (the asked one, or
/// the one it forwarded to).
pub const ANSWERED_BY: &str = "x-abm-answered-by";

/// What the query API reads.
#[derive(Debug, Clone)]
pub struct Api {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub tal: Arc<Tal>,
    pub book: Arc<Book>,
    pub directory: Arc<Directory>,
    /// For queries forwarded to other instances.
    pub client: reqwest::Client,
    /// One program pass at a time (each is a walk over every account): others wait their turn.
    pub program_passes: Arc<tokio::sync::Semaphore>,
    /// One scanning leaderboard (a filter or a search) at a time.
    pub scans: Arc<tokio::sync::Semaphore>,
    pub leaderboard_examined: prometheus::Histogram,
    pub forwarded: prometheus::IntCounterVec,
}

impl Api {
    pub fn new(
        engine: Arc<Engine>,
        store: Store,
        tal: Arc<Tal>,
        book: Arc<Book>,
        directory: Arc<Directory>,
        forward_timeout: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<Api> {
        let client = reqwest::Client::builder()
            .timeout(forward_timeout)
            .connect_timeout(forward_timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            // Straight to the other instance: the caller's token never goes through a proxy.
            .no_proxy()
            .build()?;
        Ok(Api {
            engine,
            store,
            tal,
            book,
            directory,
            client,
            program_passes: Arc::new(tokio::sync::Semaphore::new(1)),
            scans: Arc::new(tokio::sync::Semaphore::new(1)),
            leaderboard_examined: metrics.leaderboard_examined.clone(),
            forwarded: metrics.queries_forwarded.clone(),
        })
    }
}

/// The routes, to be merged with the ops routes.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/v1/accounts", get(leaderboard))
        .route("/v1/accounts/{account_id}", get(account))
        .route("/v1/program", get(program_report))
        .with_state(api)
}

/// Why a query has no answer.
#[derive(Debug)]
pub enum Failure {
    /// Not now: the partition is being restored or moved, or its holder did not answer.
    Unavailable(String),
    /// A definite answer that is not a body: 400, 404 (the JSON error as the holder gave it).
    Status(StatusCode, serde_json::Value),
}

impl Failure {
    fn bad_request(message: String) -> Failure {
        Failure::Status(StatusCode::BAD_REQUEST, serde_json::json!({ "error": message }))
    }

    pub fn into_response(self, instance: &str) -> Response {
        let mut response = match self {
            Failure::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                Json(serde_json::json!({ "error": reason, "retry_after_s": 1 })),
            )
                .into_response(),
            Failure::Status(status, body) => (status, Json(body)).into_response(),
        };
        stamp(&mut response, instance);
        response
    }
}

fn stamp(response: &mut Response, instance: &str) {
    if let Ok(value) = HeaderValue::from_str(instance) {
        response.headers_mut().insert(INSTANCE, value);
    }
}

fn answer(api: &Api, result: Result<serde_json::Value, Failure>) -> Response {
    match result {
        Ok(body) => {
            let mut response = Json(body).into_response();
            stamp(&mut response, api.directory.me());
            response
        }
        Err(failure) => failure.into_response(api.directory.me()),
    }
}

/// The credentials a forwarded query carries: the caller's (its bearer token, or the console's
/// cookie), checked again by the holder.
pub fn credentials(headers: &HeaderMap) -> Option<HeaderValue> {
    abm::ops::presented_token(headers).and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok())
}

/// Largest body taken from another instance.
const MAX_FORWARDED_BODY: usize = 16 << 20;

/// GETs `path_and_query` from another instance, as a forwarded query.
async fn ask(
    api: &Api,
    instance_id: &str,
    url: &str,
    path_and_query: &str,
    auth: Option<&HeaderValue>,
    local_scope: bool,
) -> Result<(serde_json::Value, String), Failure> {
    let mut request =
        api.client.get(format!("{}{path_and_query}", url.trim_end_matches('/'))).header(FORWARDED, api.directory.me());
    if local_scope {
        request = request.header(SCOPE, "local");
    }
    if let Some(auth) = auth {
        request = request.header(header::AUTHORIZATION, auth.clone());
    }
    let unavailable = |detail: String| {
        api.forwarded.with_label_values(&["unanswered"]).inc();
        Failure::Unavailable(format!("instance {instance_id} ({url}) did not answer: {detail}"))
    };
    let mut response = request.send().await.map_err(|error| unavailable(error.without_url().to_string()))?;
    let status = response.status();
    let answered_by =
        response.headers().get(ANSWERED_BY).and_then(|v| v.to_str().ok()).unwrap_or(instance_id).to_owned();
    if response.content_length().is_some_and(|length| length > MAX_FORWARDED_BODY as u64) {
        return Err(unavailable(format!("an answer of {} bytes", response.content_length().unwrap_or(0))));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| unavailable(error.without_url().to_string()))? {
        if bytes.len() + chunk.len() > MAX_FORWARDED_BODY {
            return Err(unavailable(format!("an answer over {MAX_FORWARDED_BODY} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|error| unavailable(format!("not JSON: {error}")))?;
    match status.as_u16() {
        200 => {
            api.forwarded.with_label_values(&["answered"]).inc();
            Ok((body, answered_by))
        }
        503 => {
            api.forwarded.with_label_values(&["unavailable"]).inc();
            let reason = body.get("error").and_then(serde_json::Value::as_str).unwrap_or("unavailable");
            Err(Failure::Unavailable(format!("instance {instance_id}: {reason}")))
        }
        400 | 401 | 404 => {
            api.forwarded.with_label_values(&["answered"]).inc();
            Err(Failure::Status(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY), body))
        }
        other => Err(unavailable(format!("status {other}"))),
    }
}

use abm::clock::now_ms;

// Response bodies: the API's own types, filled field by field from the engine's view, so the
// engine's types never reach the wire (renaming an engine field is a compile error here, not a
// silent change of the API). Nested records (rule points, contacts, recent events) are the Avro
// records of `abm-schemas`, whose names are a published contract already.

/// `GET /v1/accounts/{id}`: the explanation at the account's as-of time, and `now`.
#[derive(Debug, Serialize)]
struct AccountResponse {
    account_id: String,
    tier: Tier,
    at: i64,
    as_of: Option<i64>,
    score: f64,
    engagement: f64,
    breadth: u32,
    multiplier: f64,
    threshold: f64,
    armed: bool,
    rule_points: Vec<RuleContribution>,
    counts: Vec<Counts>,
    contacts: Vec<EngagedContact>,
    coverage: CommitteeCoverage,
    stage: JourneyStage,
    stage_entered_at: Option<i64>,
    recent_events: Vec<RecentEvent>,
    opportunities: Vec<OpportunityState>,
    first_applied_at: Option<i64>,
    events_applied: u64,
    duplicates: u64,
    on_tal: bool,
    now: Now,
    /// The scoring model that explains the account (the version of its `[scoring]`).
    model_version: String,
}

/// Events of one kind in the last 7, 30 and 90 days.
#[derive(Debug, Serialize)]
struct Counts {
    kind: EventKind,
    last_7_days: u32,
    last_30_days: u32,
    last_90_days: u32,
}

/// The score decayed to a later time.
#[derive(Debug, Serialize)]
struct Now {
    at: i64,
    score: f64,
    engagement: f64,
    breadth: u32,
    multiplier: f64,
}

impl AccountResponse {
    fn new(view: ScoreView, later: &ScoreView, on_tal: bool) -> AccountResponse {
        let ScoreView {
            account_id,
            tier,
            at,
            as_of,
            score,
            engagement,
            breadth,
            multiplier,
            threshold,
            armed,
            rule_points,
            counts,
            contacts,
            coverage,
            stage,
            stage_entered_at,
            recent_events,
            opportunities,
            first_applied_at,
            events_applied,
            duplicates,
        } = view;
        let counts = counts
            .into_iter()
            .map(|c| Counts {
                kind: c.kind,
                last_7_days: c.last_7_days,
                last_30_days: c.last_30_days,
                last_90_days: c.last_90_days,
            })
            .collect();
        AccountResponse {
            account_id,
            tier,
            at,
            as_of,
            score,
            engagement,
            breadth,
            multiplier,
            threshold,
            armed,
            rule_points,
            counts,
            contacts,
            coverage,
            stage,
            stage_entered_at,
            recent_events,
            opportunities,
            first_applied_at,
            events_applied,
            duplicates,
            on_tal,
            now: Now {
                at: later.at,
                score: later.score,
                engagement: later.engagement,
                breadth: later.breadth,
                multiplier: later.multiplier,
            },
            model_version: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AccountQuery {
    at: Option<i64>,
}

async fn account(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(account_id): Path<String>,
    Query(query): Query<AccountQuery>,
) -> Response {
    let forwarded = headers.contains_key(FORWARDED);
    match account_answer(&api, &account_id, query.at, credentials(&headers).as_ref(), forwarded).await {
        Ok((body, by)) => {
            let mut response = answer(&api, Ok(body));
            if let Ok(value) = HeaderValue::from_str(&by) {
                response.headers_mut().insert(ANSWERED_BY, value);
            }
            response
        }
        Err(failure) => failure.into_response(api.directory.me()),
    }
}

/// `GET /v1/accounts/{id}`'s body, from this instance or the account's holder, and the holder.
pub async fn account_answer(
    api: &Api,
    account_id: &str,
    at: Option<i64>,
    auth: Option<&HeaderValue>,
    forwarded: bool,
) -> Result<(serde_json::Value, String), Failure> {
    let partition = partition_of(account_id, api.directory.partitions());
    let version = api.directory.ownership().version();
    match api.directory.route(partition, now_ms(), forwarded) {
        Route::Here => {
            local_account(api, account_id, partition, at, version).map(|body| (body, api.directory.me().to_owned()))
        }
        Route::There { instance_id, url } => {
            let mut path = format!("/v1/accounts/{}", abm::ops::percent_encode(account_id));
            if let Some(at) = at {
                path.push_str(&format!("?at={at}"));
            }
            ask(api, &instance_id, &url, &path, auth, false).await
        }
        Route::Unavailable(reason) => Err(Failure::Unavailable(reason)),
    }
}

fn local_account(
    api: &Api,
    account_id: &str,
    partition: i32,
    at: Option<i64>,
    version: u64,
) -> Result<serde_json::Value, Failure> {
    let entry = api.tal.get(account_id).map(|entry| entry.clone());
    let tier = entry.as_ref().map(|entry| entry.tier);
    let committee = entry.as_ref().and_then(|entry| entry.committee.as_deref());
    let found = api.store.get_in(partition, account_id);
    // The partitions held here changed since the query was routed (one revoked, perhaps
    // restored again): what was read (or not found) is no answer.
    let ownership = api.directory.ownership();
    if ownership.version() != version || ownership.holding(partition) != Holding::Ready {
        return Err(Failure::Unavailable(format!("partition {partition} moved on this instance during the query")));
    }
    let state = match (found, tier) {
        (Some(state), _) => state,
        // On the TAL but no events yet: a zero score, armed.
        (None, Some(tier)) => AccountScoreState { tier, ..AccountScoreState::default() },
        (None, None) => {
            return Err(Failure::Status(
                StatusCode::NOT_FOUND,
                serde_json::json!({
                    "error": "account not found: no events applied and not on the TAL",
                    "account_id": account_id,
                }),
            ));
        }
    };
    // The model the partition is served with (another than the configured one while it is
    // re-scored).
    let engine = api.store.engine_of(partition);
    let view = engine.view_with(account_id, &state, None, committee);
    let later = engine.view_with(account_id, &state, Some(at.unwrap_or_else(now_ms)), committee);
    let mut response = AccountResponse::new(view, &later, tier.is_some());
    response.model_version = engine.model_version().to_owned();
    serde_json::to_value(response)
        .map_err(|error| Failure::Unavailable(format!("the answer did not serialize: {error}")))
}

#[derive(Debug, Default, Deserialize)]
pub struct LeaderboardQuery {
    pub top: Option<usize>,
    pub tier: Option<String>,
    pub stage: Option<String>,
    pub q: Option<String>,
    pub at: Option<i64>,
}

/// One account of the leaderboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub account_id: String,
    /// The TAL's name ("" when not on the TAL).
    pub name: String,
    pub tier: Tier,
    pub score_now: f64,
    pub score: f64,
    pub as_of: Option<i64>,
    pub armed: bool,
    pub stage: JourneyStage,
    /// The buying committee's coverage at `at` (0..1).
    pub coverage: f64,
    /// Events in the 7 and 30 days up to `at`.
    pub events_7d: u32,
    pub events_30d: u32,
    /// `rising`, `steady` or `cooling`: the last 7 days' events against the 23 days before, per
    /// day (README, "Leaderboard").
    pub trend: Trend,
}

/// The last 7 days' events per day against the 23 days before's (`events_30d - events_7d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    Rising,
    Steady,
    Cooling,
}

impl Trend {
    pub fn of(events_7d: u32, events_30d: u32) -> Trend {
        // 7d / 7 against (30d - 7d) / 23, in integers: 23 * 7d against 7 * (30d - 7d).
        let (recent, before) = (23 * u64::from(events_7d), 7 * u64::from(events_30d.saturating_sub(events_7d)));
        match recent.cmp(&before) {
            std::cmp::Ordering::Greater => Trend::Rising,
            std::cmp::Ordering::Equal => Trend::Steady,
            std::cmp::Ordering::Less => Trend::Cooling,
        }
    }
}

/// `tier=`: none (or empty) for every tier.
fn tier_param(text: Option<&str>) -> Result<Option<Tier>, Failure> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => parse_tier(text)
            .map(Some)
            .ok_or_else(|| Failure::bad_request(format!("unknown tier {text:?}: use 1, 2, 3 or untiered"))),
    }
}

/// `at=`: the wall clock when absent.
fn at_param(at: Option<i64>) -> Result<i64, Failure> {
    let at = at.unwrap_or_else(now_ms);
    if (-MAX_AT_MS..=MAX_AT_MS).contains(&at) {
        Ok(at)
    } else {
        Err(Failure::bad_request(format!("at must be epoch milliseconds within ±{MAX_AT_MS}")))
    }
}

fn parse_tier(text: &str) -> Option<Tier> {
    match text {
        "1" | "tier_1" => Some(Tier::Tier1),
        "2" | "tier_2" => Some(Tier::Tier2),
        "3" | "tier_3" => Some(Tier::Tier3),
        "untiered" | "none" => Some(Tier::Untiered),
        _ => None,
    }
}

fn parse_stage(text: &str) -> Option<JourneyStage> {
    JourneyStage::ALL.into_iter().find(|stage| stage.as_str() == text)
}

/// Largest number of accounts one leaderboard request returns.
pub const MAX_TOP: usize = 1000;
/// How long a filtered or searched leaderboard waits for the one scan at a time.
const SCAN_WAIT: Duration = Duration::from_secs(5);
/// Longest search text.
const MAX_SEARCH: usize = 200;

async fn leaderboard(State(api): State<Api>, headers: HeaderMap, Query(query): Query<LeaderboardQuery>) -> Response {
    let local = headers.get(SCOPE).is_some_and(|scope| scope == "local") && headers.contains_key(FORWARDED);
    let result = leaderboard_answer(&api, &query, credentials(&headers).as_ref(), local).await;
    answer(&api, result)
}

/// A checked leaderboard request.
#[derive(Debug, Clone)]
struct Wanted {
    top: usize,
    tier: Option<Tier>,
    stage: Option<JourneyStage>,
    q: Option<String>,
    at: i64,
}

impl Wanted {
    fn of(query: &LeaderboardQuery) -> Result<Wanted, Failure> {
        let top = query.top.unwrap_or(10);
        if top == 0 || top > MAX_TOP {
            return Err(Failure::bad_request(format!("top must be between 1 and {MAX_TOP}")));
        }
        let tier = tier_param(query.tier.as_deref())?;
        let stage = match query.stage.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(parse_stage(text).ok_or_else(|| {
                Failure::bad_request(format!(
                    "unknown stage {text:?}: use unaware, aware, engaged, mqa, opportunity or customer"
                ))
            })?),
        };
        let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()).map(str::to_lowercase);
        if q.as_ref().is_some_and(|q| q.len() > MAX_SEARCH) {
            return Err(Failure::bad_request(format!("q is longer than {MAX_SEARCH} bytes")));
        }
        let at = at_param(query.at)?;
        Ok(Wanted { top, tier, stage, q, at })
    }

    /// The same request for another instance's own partitions.
    fn path(&self) -> String {
        let mut path = format!("/v1/accounts?top={}&at={}", self.top, self.at);
        if let Some(tier) = self.tier {
            path.push_str(&format!("&tier={}", tier.as_str()));
        }
        if let Some(stage) = self.stage {
            path.push_str(&format!("&stage={}", stage.as_str()));
        }
        if let Some(q) = &self.q {
            path.push_str(&format!("&q={}", abm::ops::percent_encode(q)));
        }
        path
    }
}

/// The leaderboard over every instance (`local`: over this instance's partitions, with their
/// list). Its entries are ordered by score at `at`, then account id.
pub async fn leaderboard_answer(
    api: &Api,
    query: &LeaderboardQuery,
    auth: Option<&HeaderValue>,
    local: bool,
) -> Result<serde_json::Value, Failure> {
    let wanted = Wanted::of(query)?;
    let mine = local_top(api, &wanted).await?;
    if local {
        return Ok(serde_json::json!({ "at": wanted.at, "accounts": mine.entries, "partitions": mine.partitions }));
    }
    let total = api.directory.partitions();
    let peers = api.directory.live_peers(now_ms());
    let mut asks = tokio::task::JoinSet::new();
    for peer in peers {
        let (api, path, auth) = (api.clone(), wanted.path(), auth.cloned());
        asks.spawn(async move { ask(&api, &peer.instance_id, &peer.url, &path, auth.as_ref(), true).await });
    }
    let mut entries = mine.entries;
    let mut covered: Vec<u32> = vec![0; usize::try_from(total).unwrap_or(0)];
    let mut beyond = false;
    let mut cover = |partitions: &[i32]| {
        for partition in partitions {
            match usize::try_from(*partition).ok().and_then(|p| covered.get_mut(p)) {
                Some(count) => *count += 1,
                None => beyond = true,
            }
        }
    };
    cover(&mine.partitions);
    let mut failure = None;
    while let Some(joined) = asks.join_next().await {
        let body = match joined {
            Ok(Ok((body, _))) => body,
            Ok(Err(error)) => {
                failure.get_or_insert(error);
                continue;
            }
            Err(error) => {
                failure.get_or_insert(Failure::Unavailable(format!("a gathering task failed: {error}")));
                continue;
            }
        };
        let parsed = serde_json::from_value::<Vec<i32>>(body["partitions"].clone())
            .and_then(|partitions| Ok((partitions, serde_json::from_value::<Vec<Entry>>(body["accounts"].clone())?)));
        match parsed {
            Ok((partitions, theirs)) => {
                cover(&partitions);
                entries.extend(theirs);
            }
            Err(error) => {
                failure.get_or_insert(Failure::Unavailable(format!("an instance's part did not parse: {error}")));
            }
        }
    }
    // Every partition answered for exactly once, or no answer.
    let missing: Vec<usize> = covered.iter().enumerate().filter(|(_, n)| **n == 0).map(|(p, _)| p).collect();
    let twice: Vec<usize> = covered.iter().enumerate().filter(|(_, n)| **n > 1).map(|(p, _)| p).collect();
    if beyond {
        return Err(Failure::Unavailable(format!(
            "an instance answered for a partition beyond abm.engagement's {total}: the instances disagree on the partition count"
        )));
    }
    if !missing.is_empty() || !twice.is_empty() {
        if let Some(Failure::Status(status, body)) = failure {
            return Err(Failure::Status(status, body));
        }
        let mut reason = String::from("the leaderboard is being regathered:");
        if !missing.is_empty() {
            reason.push_str(&format!(" partitions {missing:?} have no live restored holder"));
        }
        if !twice.is_empty() {
            reason.push_str(&format!(" partitions {twice:?} were answered twice (moving)"));
        }
        if let Some(Failure::Unavailable(detail)) = failure {
            reason.push_str(&format!("; {detail}"));
        }
        return Err(Failure::Unavailable(reason));
    }
    entries.sort_by(|a, b| b.score_now.total_cmp(&a.score_now).then_with(|| a.account_id.cmp(&b.account_id)));
    entries.truncate(wanted.top);
    Ok(serde_json::json!({ "at": wanted.at, "accounts": entries }))
}

/// This instance's part of a leaderboard, and the partitions it covers.
struct LocalTop {
    entries: Vec<Entry>,
    partitions: Vec<i32>,
}

async fn local_top(api: &Api, wanted: &Wanted) -> Result<LocalTop, Failure> {
    let scanning = wanted.stage.is_some() || wanted.q.is_some();
    // A scan walks every account: one at a time.
    let _turn = if scanning {
        let turn = tokio::time::timeout(SCAN_WAIT, api.scans.clone().acquire_owned()).await;
        match turn {
            Ok(Ok(turn)) => Some(turn),
            Ok(Err(_)) => return Err(Failure::Unavailable("the scorer is stopping".to_owned())),
            Err(_) => return Err(Failure::Unavailable("other searches are running on this instance".to_owned())),
        }
    } else {
        None
    };
    let (api, wanted) = (api.clone(), wanted.clone());
    // Off the runtime's threads: a request walks shared structures (and may scan them all).
    let walked = tokio::task::spawn_blocking(move || {
        let ownership = api.directory.ownership();
        let before = ownership.version();
        let (ready, _) = ownership.snapshot();
        let (tal, at) = (&api.tal, wanted.at);
        let entry = |account_id: &str, state: &AccountScoreState, score_now: f64| {
            let engine = api.store.engine_of_account(account_id);
            let tal_entry = tal.get(account_id);
            let committee = tal_entry.as_ref().and_then(|entry| entry.committee.clone());
            let (events_7d, events_30d) = state
                .counts_at(at)
                .iter()
                .fold((0u32, 0u32), |(a, b), c| (a.saturating_add(c.last_7_days), b.saturating_add(c.last_30_days)));
            Entry {
                account_id: account_id.to_owned(),
                name: tal_entry.as_ref().map(|entry| entry.name.to_string()).unwrap_or_default(),
                tier: state.tier,
                score_now,
                score: engine.score(state),
                as_of: state.as_of,
                armed: state.armed,
                stage: state.stage,
                coverage: engine.coverage(state, at, committee.as_deref()).ratio,
                events_7d,
                events_30d,
                trend: Trend::of(events_7d, events_30d),
            }
        };
        let top = if wanted.stage.is_some() || wanted.q.is_some() {
            let (tier, stage, q) = (wanted.tier, wanted.stage, wanted.q.as_deref());
            api.store.top_matching(
                at,
                wanted.top,
                |account_id, state| {
                    tier.is_none_or(|tier| state.tier == tier)
                        && stage.is_none_or(|stage| state.stage == stage)
                        && q.is_none_or(|q| {
                            account_id.to_lowercase().contains(q)
                                || tal.get(account_id).is_some_and(|entry| entry.name.to_lowercase().contains(q))
                        })
                },
                entry,
            )
        } else {
            api.store.top(wanted.tier, at, wanted.top, entry)
        };
        // What was walked is what the partitions held then: a partition that came or went
        // meanwhile makes it no answer.
        let steady = ownership.version() == before && api.store.partitions().iter().all(|p| ready.contains(p));
        (top, ready, steady)
    })
    .await;
    let Ok((top, partitions, steady)) = walked else {
        return Err(Failure::Unavailable("the leaderboard request failed".to_owned()));
    };
    if !steady {
        return Err(Failure::Unavailable("this instance's partitions changed during the query".to_owned()));
    }
    api.leaderboard_examined.observe(top.examined as f64);
    Ok(LocalTop { entries: top.entries, partitions })
}

/// The largest `at` (either side of 1970) a program request takes: year ±33658, far from i64's
/// limits, so that no window arithmetic can overflow.
const MAX_AT_MS: i64 = 1_000_000_000_000_000;

#[derive(Debug, Default, Deserialize)]
pub struct ProgramQuery {
    pub tier: Option<String>,
    pub at: Option<i64>,
}

async fn program_report(State(api): State<Api>, Query(query): Query<ProgramQuery>) -> Response {
    match program_answer(&api, &query).await {
        Ok(report) => {
            let mut response = Json(report).into_response();
            stamp(&mut response, api.directory.me());
            response
        }
        Err(failure) => failure.into_response(api.directory.me()),
    }
}

/// The program's figures. Every instance reads the program's topics whole, so each answers for
/// every account without asking the others.
pub async fn program_answer(api: &Api, query: &ProgramQuery) -> Result<program::Report, Failure> {
    let tier = tier_param(query.tier.as_deref())?;
    if !api.book.is_loaded() {
        return Err(Failure::Unavailable(
            "the program's topics (abm.account-program, abm.sales-alerts) are still being read".to_owned(),
        ));
    }
    let at = at_param(query.at)?;
    let Ok(_turn) = api.program_passes.clone().acquire_owned().await else {
        return Err(Failure::Unavailable("the scorer is stopping".to_owned()));
    };
    let (book, tal, engine) = (api.book.clone(), api.tal.clone(), api.engine.clone());
    // One pass over every account of the program: off the runtime's threads.
    tokio::task::spawn_blocking(move || program::report(&book, &tal, &engine, at, tier))
        .await
        .map_err(|_| Failure::Unavailable("the program request failed".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ScoringConfig;

    /// The account body's names are the API's contract: this list changes only with the API.
    #[test]
    fn the_account_body_has_the_documented_fields() {
        let engine = Engine::new(ScoringConfig::default()).expect("default config");
        let state = AccountScoreState { tier: Tier::Tier1, ..AccountScoreState::default() };
        let view = engine.view("acme", &state, None);
        let later = engine.view("acme", &state, Some(1_000));
        let json = serde_json::to_value(AccountResponse::new(view, &later, true)).expect("serializes");
        let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        let mut expected = vec![
            "account_id",
            "tier",
            "at",
            "as_of",
            "score",
            "engagement",
            "breadth",
            "multiplier",
            "threshold",
            "armed",
            "rule_points",
            "counts",
            "contacts",
            "coverage",
            "stage",
            "stage_entered_at",
            "recent_events",
            "opportunities",
            "first_applied_at",
            "events_applied",
            "duplicates",
            "on_tal",
            "now",
            "model_version",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        let now: Vec<&str> = json["now"].as_object().expect("now").keys().map(String::as_str).collect();
        assert_eq!(now.len(), 5, "{now:?}");
        assert_eq!(json["now"]["at"], 1_000);
        assert_eq!(json["tier"], "tier_1");
        assert_eq!(json["on_tal"], true);
        assert_eq!(json["coverage"]["missing"][0], "economic_buyer", "{}", json["coverage"]);
        assert_eq!(json["coverage"]["ratio"], 0.0);
        assert_eq!(json["stage"], "unaware");
        assert_eq!(json["stage_entered_at"], serde_json::Value::Null);
    }

    /// The program body's names are the API's contract too.
    #[test]
    fn the_program_body_has_the_documented_fields() {
        let engine = Engine::new(ScoringConfig::default()).expect("default config");
        let (book, tal) = (Book::default(), Tal::default());
        let json = serde_json::to_value(program::report(&book, &tal, &engine, 1_000, None)).expect("serializes");
        let keys =
            |value: &serde_json::Value| -> Vec<String> { value.as_object().expect("object").keys().cloned().collect() };
        assert_eq!(keys(&json), ["all", "at", "non_tal", "tal", "tier", "tiers"]);
        assert_eq!(keys(&json["tiers"]), ["tier_1", "tier_2", "tier_3", "untiered"]);
        let figures = &json["all"];
        assert_eq!(
            keys(figures),
            [
                "accounts",
                "accounts_by_stage",
                "alerts",
                "conversion",
                "engaged",
                "engaged_tal_accounts",
                "engagement_rate",
                "mean_coverage",
                "opportunities",
                "tal_accounts"
            ]
        );
        assert_eq!(keys(&figures["accounts_by_stage"]).len(), 6);
        assert_eq!(
            keys(&figures["conversion"][0]),
            ["converted", "entered", "median_days_to_next", "next", "next_accounts", "rate", "stage"]
        );
        assert_eq!(
            keys(&figures["opportunities"]),
            ["by_currency", "lost", "median_days_to_won", "open", "win_rate", "won", "won_accounts"]
        );
        assert_eq!(keys(&figures["alerts"]), ["alerts", "followed", "median_days_to_opportunity", "windows"]);
        assert_eq!(keys(&figures["alerts"]["windows"][0]), ["days", "followed", "matured", "rate"]);
        assert_eq!(figures["engagement_rate"], serde_json::Value::Null);
    }
}
