//! The query API on the scorer's HTTP port.
//!
//! - `GET /v1/accounts/{id}` — the account's score at its as-of time (E, B, m, tier, armed,
//!   breakdown per rule, counts, contacts, recent events) and decayed to now (`now`).
//!   `?at=<ms>` decays to that time instead of the wall clock.
//! - `GET /v1/accounts?top=N&tier=T` — leaderboard by score decayed to now (or `?at=<ms>`),
//!   from the store's ranking: its cost follows N, not the number of accounts.
//!
//! - `GET /v1/program?tier=T&at=<ms>` — the ABM program's figures over every account of every
//!   instance (README, "Program metrics"); `503` with `Retry-After` until this instance has read
//!   the program's topics once. The body is [`program::Report`]: its types are the contract.
//!
//! Errors are JSON: `{"error": "...", ...}` with 400 or 404.

use std::sync::Arc;

use abm_schemas::{
    CommitteeCoverage, EngagedContact, EventKind, JourneyStage, OpportunityState, RecentEvent, RuleContribution, Tier,
};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::engine::{AccountScoreState, Engine, ScoreView};
use crate::processor::Tal;
use crate::program::{self, Book};
use crate::store::Store;

#[derive(Clone)]
struct ApiState {
    engine: Arc<Engine>,
    store: Store,
    tal: Arc<Tal>,
    book: Arc<Book>,
    /// One program pass at a time (each is a walk over every account): others wait their turn.
    program_passes: Arc<tokio::sync::Semaphore>,
    leaderboard_examined: prometheus::Histogram,
}

/// The routes, to be merged with the ops routes.
pub fn routes(
    engine: Arc<Engine>,
    store: Store,
    tal: Arc<Tal>,
    book: Arc<Book>,
    leaderboard_examined: prometheus::Histogram,
) -> Router {
    Router::new()
        .route("/v1/accounts", get(leaderboard))
        .route("/v1/accounts/{account_id}", get(account))
        .route("/v1/program", get(program_report))
        .with_state(ApiState {
            engine,
            store,
            tal,
            book,
            program_passes: Arc::new(tokio::sync::Semaphore::new(1)),
            leaderboard_examined,
        })
}

use abm::clock::now_ms;

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

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
        }
    }
}

#[derive(Debug, Deserialize)]
struct AccountQuery {
    at: Option<i64>,
}

async fn account(
    State(api): State<ApiState>,
    Path(account_id): Path<String>,
    Query(query): Query<AccountQuery>,
) -> Response {
    let entry = api.tal.get(&account_id).map(|entry| entry.clone());
    let tier = entry.as_ref().map(|entry| entry.tier);
    let committee = entry.as_ref().and_then(|entry| entry.committee.as_deref());
    let state = match (api.store.get(&account_id), tier) {
        (Some(state), _) => state,
        // On the TAL but no events yet: a zero score, armed.
        (None, Some(tier)) => AccountScoreState { tier, ..AccountScoreState::default() },
        (None, None) => {
            return (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({
                    "error": "account not found: no events applied by this scorer instance and not on the TAL",
                    "account_id": account_id,
                })),
            )
                .into_response();
        }
    };
    let view = api.engine.view_with(&account_id, &state, None, committee);
    let later = api.engine.view_with(&account_id, &state, Some(query.at.unwrap_or_else(now_ms)), committee);
    Json(AccountResponse::new(view, &later, tier.is_some())).into_response()
}

#[derive(Debug, Deserialize)]
struct LeaderboardQuery {
    top: Option<usize>,
    tier: Option<String>,
    at: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Entry {
    account_id: String,
    tier: Tier,
    score_now: f64,
    score: f64,
    as_of: Option<i64>,
    armed: bool,
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

/// Largest number of accounts one leaderboard request returns.
const MAX_TOP: usize = 1000;

async fn leaderboard(State(api): State<ApiState>, Query(query): Query<LeaderboardQuery>) -> Response {
    let top = query.top.unwrap_or(10);
    if top == 0 || top > MAX_TOP {
        return error(StatusCode::BAD_REQUEST, format!("top must be between 1 and {MAX_TOP}"));
    }
    let tier = match query.tier.as_deref().map(|t| (t, parse_tier(t))) {
        None => None,
        Some((_, Some(tier))) => Some(tier),
        Some((text, None)) => {
            return error(StatusCode::BAD_REQUEST, format!("unknown tier {text:?}: use 1, 2, 3 or untiered"));
        }
    };
    let at = query.at.unwrap_or_else(now_ms);
    // Off the runtime's threads: a request walks shared structures (and may scan them all).
    let (store, engine) = (api.store.clone(), api.engine.clone());
    let walked = tokio::task::spawn_blocking(move || {
        store.top(tier, at, top, |account_id, state, score_now| Entry {
            account_id: account_id.to_owned(),
            tier: state.tier,
            score_now,
            score: engine.score(state),
            as_of: state.as_of,
            armed: state.armed,
        })
    })
    .await;
    let Ok(top) = walked else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the leaderboard request failed".to_owned());
    };
    api.leaderboard_examined.observe(top.examined as f64);
    let entries = top.entries;
    Json(serde_json::json!({ "at": at, "accounts": entries })).into_response()
}

/// The largest `at` (either side of 1970) a program request takes: year ±33658, far from i64's
/// limits, so that no window arithmetic can overflow.
const MAX_AT_MS: i64 = 1_000_000_000_000_000;

#[derive(Debug, Deserialize)]
struct ProgramQuery {
    tier: Option<String>,
    at: Option<i64>,
}

async fn program_report(State(api): State<ApiState>, Query(query): Query<ProgramQuery>) -> Response {
    let tier = match query.tier.as_deref().map(|t| (t, parse_tier(t))) {
        None => None,
        Some((_, Some(tier))) => Some(tier),
        Some((text, None)) => {
            return error(StatusCode::BAD_REQUEST, format!("unknown tier {text:?}: use 1, 2, 3 or untiered"));
        }
    };
    if !api.book.is_loaded() {
        let body = Json(serde_json::json!({
            "error": "the program's topics (abm.account-program, abm.sales-alerts) are still being read",
        }));
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], body).into_response();
    }
    let at = query.at.unwrap_or_else(now_ms);
    if !(-MAX_AT_MS..=MAX_AT_MS).contains(&at) {
        return error(StatusCode::BAD_REQUEST, format!("at must be epoch milliseconds within ±{MAX_AT_MS}"));
    }
    let Ok(_turn) = api.program_passes.clone().acquire_owned().await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the program request failed".to_owned());
    };
    let (book, tal, engine) = (api.book.clone(), api.tal.clone(), api.engine.clone());
    // One pass over every account of the program: off the runtime's threads.
    match tokio::task::spawn_blocking(move || program::report(&book, &tal, &engine, at, tier)).await {
        Ok(report) => Json(report).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the program request failed".to_owned()),
    }
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
