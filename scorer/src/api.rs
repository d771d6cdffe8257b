//! The query API on the scorer's HTTP port.
//!
//! - `GET /v1/accounts/{id}` — the account's score at its as-of time (E, B, m, tier, armed,
//!   breakdown per rule, counts, contacts, recent events) and decayed to now (`now`).
//!   `?at=<ms>` decays to that time instead of the wall clock.
//! - `GET /v1/accounts?top=N&tier=T` — leaderboard by score decayed to now (or `?at=<ms>`),
//!   from the store's ranking: its cost follows N, not the number of accounts.
//!
//! Errors are JSON: `{"error": "...", ...}` with 400 or 404.

use std::sync::Arc;

use abm_schemas::Tier;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::engine::{AccountScoreState, Engine, ScoreView};
use crate::processor::Tiers;
use crate::store::Store;

#[derive(Clone)]
struct ApiState {
    engine: Arc<Engine>,
    store: Store,
    tiers: Arc<Tiers>,
    leaderboard_examined: prometheus::Histogram,
}

/// The routes, to be merged with the ops routes.
pub fn routes(engine: Arc<Engine>, store: Store, tiers: Arc<Tiers>, leaderboard_examined: prometheus::Histogram) -> Router {
    Router::new()
        .route("/v1/accounts", get(leaderboard))
        .route("/v1/accounts/{account_id}", get(account))
        .with_state(ApiState { engine, store, tiers, leaderboard_examined })
}

use abm::clock::now_ms;

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
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

#[derive(Debug, Serialize)]
struct AccountResponse {
    #[serde(flatten)]
    as_of: ScoreView,
    on_tal: bool,
    now: Now,
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
    let tier = api.tiers.get(&account_id).map(|tier| *tier);
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
    let view = api.engine.view(&account_id, &state, None);
    let later = api.engine.view(&account_id, &state, Some(query.at.unwrap_or_else(now_ms)));
    Json(AccountResponse {
        as_of: view,
        on_tal: tier.is_some(),
        now: Now {
            at: later.at,
            score: later.score,
            engagement: later.engagement,
            breadth: later.breadth,
            multiplier: later.multiplier,
        },
    })
    .into_response()
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
