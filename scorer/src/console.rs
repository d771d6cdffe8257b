//! The console: pages for people who are not engineers, rendered here as HTML, charts drawn as
//! inline SVG. No build step, nothing fetched from elsewhere: one stylesheet and one script,
//! compiled into the binary and served from `/console/static/`.
//!
//! - `/console/accounts` — the leaderboard over every instance, by tier and journey stage,
//!   searchable: score, trend, stage and coverage at a glance.
//! - `/console/accounts/{id}` — why this score, the buying committee, recent activity, journey
//!   history, opportunities and alerts received.
//! - `/console/alerts` — the latest alerts, and new ones as they come (server-sent events from
//!   `/console/alerts/stream`).
//! - `/console/program` — the funnel per tier, engagement, coverage, conversion and velocity,
//!   pipeline and win rate on and off the TAL.
//!
//! Everything shown comes from Kafka and is escaped; the pages' Content-Security-Policy allows
//! scripts, styles and connections to this origin only. The pages sit behind the data API's
//! tokens: a browser signs in once at `/console/login` and carries the token in an `HttpOnly`,
//! `SameSite=Strict` cookie.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use abm_schemas::{JourneyStage, SalesAlert, Tier};
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::api::{self, Api, Failure, LeaderboardQuery, ProgramQuery};

/// Live alert feeds (open alerts pages) per scorer instance; one more is answered 503.
pub const MAX_FEEDS: usize = 64;

/// Alerts kept whole for the alerts page.
pub const RECENT_ALERTS: usize = 100;

/// The latest alerts, and a broadcast of each new one to the open alert pages.
pub struct AlertFeed {
    recent: Mutex<VecDeque<Arc<SalesAlert>>>,
    sender: tokio::sync::broadcast::Sender<Arc<SalesAlert>>,
}

impl Default for AlertFeed {
    fn default() -> Self {
        AlertFeed { recent: Mutex::default(), sender: tokio::sync::broadcast::channel(256).0 }
    }
}

impl std::fmt::Debug for AlertFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertFeed").field("listeners", &self.sender.receiver_count()).finish()
    }
}

impl AlertFeed {
    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<SalesAlert>>> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An alert read from `abm.sales-alerts` (one already kept is not kept again).
    pub fn push(&self, alert: SalesAlert) {
        let mut recent = self.recent();
        if recent.iter().any(|known| known.alert_id == alert.alert_id) {
            return;
        }
        let alert = Arc::new(alert);
        recent.push_back(alert.clone());
        while recent.len() > RECENT_ALERTS {
            recent.pop_front();
        }
        drop(recent);
        // No page open: nobody to tell.
        let _ = self.sender.send(alert);
    }

    /// The kept alerts, newest first.
    pub fn latest(&self) -> Vec<Arc<SalesAlert>> {
        self.recent().iter().rev().cloned().collect()
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<SalesAlert>> {
        self.sender.subscribe()
    }
}

/// What the console needs besides the API: the tokens to sign in with.
#[derive(Debug, Clone)]
pub struct Console {
    pub api: Api,
    /// Live alert feeds open at once (each holds a connection): at most [`MAX_FEEDS`].
    pub feeds: Arc<tokio::sync::Semaphore>,
    /// Ends the live feeds when the scorer stops.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// `None`: the API is open (`http.api_open`), no sign-in.
    pub tokens: Option<Arc<Vec<String>>>,
}

/// The pages, to be put behind the data API's tokens ([`abm::ops::protect`]).
pub fn routes(console: Console) -> Router {
    Router::new()
        .route("/console/accounts", get(accounts_page))
        .route("/console/accounts/{account_id}", get(account_page))
        .route("/console/alerts", get(alerts_page))
        .route("/console/alerts/stream", get(alert_stream))
        .route("/console/program", get(program_page))
        .with_state(console)
}

/// The sign-in page and the static files: outside the tokens.
pub fn open_routes(console: Console) -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/accounts") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", axum::routing::post(logout))
        .route("/console/static/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/static/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/static/icon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        .with_state(console)
}

const STYLE: &str = include_str!("console/console.css");
const SCRIPT: &str = include_str!("console/console.js");
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#2f5bd3\"/><rect x=\"3\" y=\"9\" width=\"2\" height=\"4\" fill=\"#fff\"/><rect x=\"7\" y=\"6\" width=\"2\" height=\"7\" fill=\"#fff\"/><rect x=\"11\" y=\"3\" width=\"2\" height=\"10\" fill=\"#fff\"/></svg>";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The pages' own headers: this origin only, no framing, nothing cached or referred.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Not `no-referrer`: a form posted under it says `Origin: null`.
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Escapes text for HTML content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM` UTC of epoch milliseconds.
pub fn when(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rest / 3_600_000, rest / 60_000 % 60)
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Tier1 => "Tier 1",
        Tier::Tier2 => "Tier 2",
        Tier::Tier3 => "Tier 3",
        Tier::Untiered => "Untiered",
    }
}

fn stage_name(stage: JourneyStage) -> &'static str {
    match stage {
        JourneyStage::Unaware => "Unaware",
        JourneyStage::Aware => "Aware",
        JourneyStage::Engaged => "Engaged",
        JourneyStage::Mqa => "MQA",
        JourneyStage::Opportunity => "Opportunity",
        JourneyStage::Customer => "Customer",
    }
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "–".to_owned(), |r| format!("{:.0}%", r * 100.0))
}

/// A page: the navigation, `title`, `body`.
fn page(active: &str, title: &str, body: &str, signed_in: bool) -> String {
    let mut nav = String::new();
    for (href, name) in
        [("/console/accounts", "Accounts"), ("/console/alerts", "Alerts"), ("/console/program", "Program")]
    {
        let current = if name == active { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{name}</a>");
    }
    let logout = if signed_in {
        "<form method=\"post\" action=\"/console/logout\" class=\"logout\"><button type=\"submit\">Sign out</button></form>"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · ABM engagement</title><link rel=\"icon\" href=\"/console/static/icon.svg\" type=\"image/svg+xml\"><link rel=\"stylesheet\" href=\"/console/static/console.css\">\
<script src=\"/console/static/console.js\" defer></script></head>\
<body><header><span class=\"brand\">ABM engagement</span><nav>{nav}</nav>{logout}</header><main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title)
    )
}

/// A failure as a page: a 503 reloads itself after a second.
fn failure_page(console: &Console, active: &str, failure: Failure) -> Response {
    match failure {
        Failure::Unavailable(reason) => {
            let body = format!(
                "<p class=\"notice\" id=\"unavailable\" data-retry=\"1\">Not available this second: {}. The page reloads by itself.</p>",
                esc(&reason)
            );
            let mut response =
                html(StatusCode::SERVICE_UNAVAILABLE, page(active, active, &body, console.tokens.is_some()));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Failure::Status(status, body) => {
            let message = body.get("error").and_then(serde_json::Value::as_str).unwrap_or("no answer").to_owned();
            let body = format!("<p class=\"notice\" id=\"error\">{}</p>", esc(&message));
            html(status, page(active, active, &body, console.tokens.is_some()))
        }
    }
}

/// A horizontal bar chart: one row per (label, value, shown text), bars scaled to the largest
/// magnitude; negative values drawn in their own colour.
fn bars(id: &str, rows: &[(String, f64, String)]) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">Nothing yet.</p>".to_owned();
    }
    let max = rows.iter().map(|(_, v, _)| v.abs()).fold(0.0_f64, f64::max).max(f64::MIN_POSITIVE);
    let (label_w, bar_w, row_h) = (200.0, 360.0, 24.0);
    let height = row_h * rows.len() as f64 + 4.0;
    let mut svg = format!(
        "<svg class=\"chart\" id=\"{id}\" role=\"img\" viewBox=\"0 0 {w} {height}\" width=\"{w}\" height=\"{height}\">",
        id = esc(id),
        w = label_w + bar_w + 90.0
    );
    for (i, (label, value, shown)) in rows.iter().enumerate() {
        let y = row_h * i as f64 + 2.0;
        let width = (value.abs() / max * bar_w).max(if *value != 0.0 { 1.0 } else { 0.0 });
        let class = if *value < 0.0 { "bar negative" } else { "bar" };
        let _ = write!(
            svg,
            "<text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{label}</text><rect class=\"{class}\" x=\"{bx}\" y=\"{y}\" width=\"{width:.1}\" height=\"{bh}\"><title>{label}: {shown}</title></rect><text x=\"{vx:.1}\" y=\"{ty}\">{shown}</text>",
            lx = label_w - 8.0,
            ty = y + 16.0,
            label = esc(label),
            bx = label_w,
            bh = row_h - 6.0,
            vx = label_w + width + 6.0,
            shown = esc(shown),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A small bar of a ratio (0..1), for tables.
fn meter(ratio: f64) -> String {
    let width = (ratio.clamp(0.0, 1.0) * 60.0).round();
    format!(
        "<svg class=\"meter\" viewBox=\"0 0 60 10\" width=\"60\" height=\"10\" role=\"img\"><rect class=\"track\" width=\"60\" height=\"10\"/><rect class=\"bar\" width=\"{width}\" height=\"10\"/></svg> {:.0}%",
        ratio * 100.0
    )
}

#[derive(Debug, Default, Deserialize)]
struct AccountsQuery {
    tier: Option<String>,
    stage: Option<String>,
    q: Option<String>,
    top: Option<usize>,
}

async fn accounts_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<AccountsQuery>,
) -> Response {
    let wanted = LeaderboardQuery {
        top: Some(query.top.unwrap_or(100).clamp(1, api::MAX_TOP)),
        tier: query.tier.clone(),
        stage: query.stage.clone(),
        q: query.q.clone(),
        at: None,
    };
    let board = match api::leaderboard_answer(&console.api, &wanted, api::credentials(&headers).as_ref(), false).await {
        Ok(board) => board,
        Err(failure) => return failure_page(&console, "Accounts", failure),
    };
    let entries: Vec<api::Entry> = match serde_json::from_value(board["accounts"].clone()) {
        Ok(entries) => entries,
        Err(error) => {
            return failure_page(
                &console,
                "Accounts",
                Failure::Unavailable(format!("the leaderboard did not parse: {error}")),
            );
        }
    };
    let selected = |value: &str, current: &Option<String>| {
        if current.as_deref() == Some(value) { " selected" } else { "" }
    };
    let mut body = String::from("<form method=\"get\" action=\"/console/accounts\" class=\"filters\" id=\"filters\">");
    let _ = write!(body, "<label>Tier <select name=\"tier\" id=\"tier\"><option value=\"\">All</option>");
    for (value, name) in [("1", "Tier 1"), ("2", "Tier 2"), ("3", "Tier 3"), ("untiered", "Untiered")] {
        let _ = write!(body, "<option value=\"{value}\"{}>{name}</option>", selected(value, &query.tier));
    }
    let _ = write!(
        body,
        "</select></label><label>Stage <select name=\"stage\" id=\"stage\"><option value=\"\">All</option>"
    );
    for stage in JourneyStage::ALL {
        let _ = write!(
            body,
            "<option value=\"{}\"{}>{}</option>",
            stage.as_str(),
            selected(stage.as_str(), &query.stage),
            stage_name(stage)
        );
    }
    let _ = write!(
        body,
        "</select></label><label>Search <input type=\"search\" name=\"q\" id=\"q\" maxlength=\"200\" value=\"{}\" placeholder=\"Account or name\"></label><button type=\"submit\" id=\"apply\">Filter</button></form>",
        esc(query.q.as_deref().unwrap_or(""))
    );
    let noun = if entries.len() == 1 { "account" } else { "accounts" };
    let _ = write!(body, "<p class=\"count\" id=\"count\">{} {noun}, by score now.</p>", entries.len());
    body.push_str("<table id=\"accounts\"><thead><tr><th>#</th><th>Account</th><th>Tier</th><th class=\"num\">Score</th><th>Trend</th><th>Stage</th><th>Coverage</th><th class=\"num\">Events 7d / 30d</th></tr></thead><tbody>");
    for (rank, entry) in entries.iter().enumerate() {
        let name = if entry.name.is_empty() { entry.account_id.clone() } else { entry.name.clone() };
        let (arrow, trend) = match entry.trend {
            api::Trend::Rising => ("▲", "rising"),
            api::Trend::Steady => ("▶", "steady"),
            api::Trend::Cooling => ("▼", "cooling"),
        };
        let _ = write!(
            body,
            "<tr data-account=\"{id}\"><td>{rank}</td><td><a href=\"/console/accounts/{href}\">{name}</a><br><small>{id}</small></td><td>{tier}</td><td class=\"num\">{score:.1}</td><td class=\"trend {trend}\">{arrow} {trend}</td><td><span class=\"stage {stage_key}\">{stage}</span></td><td>{coverage}</td><td class=\"num\">{e7} / {e30}</td></tr>",
            id = esc(&entry.account_id),
            rank = rank + 1,
            href = abm::ops::percent_encode(&entry.account_id),
            name = esc(&name),
            tier = tier_name(entry.tier),
            score = entry.score_now,
            stage_key = entry.stage.as_str(),
            stage = stage_name(entry.stage),
            coverage = meter(entry.coverage),
            e7 = entry.events_7d,
            e30 = entry.events_30d,
        );
    }
    body.push_str("</tbody></table>");
    html(StatusCode::OK, page("Accounts", "Accounts", &body, console.tokens.is_some()))
}

async fn account_page(State(console): State<Console>, headers: HeaderMap, Path(account_id): Path<String>) -> Response {
    let account =
        match api::account_answer(&console.api, &account_id, None, api::credentials(&headers).as_ref(), false).await {
            Ok((account, _)) => account,
            Err(failure) => return failure_page(&console, "Accounts", failure),
        };
    let text = |value: &serde_json::Value| value.as_str().unwrap_or("").to_owned();
    let number = |value: &serde_json::Value| value.as_f64().unwrap_or(0.0);
    let tal = console.api.tal.get(&account_id).map(|entry| (entry.name.to_string(), entry.owner.to_string()));
    let (name, owner) = tal.unwrap_or_else(|| (account_id.clone(), String::new()));
    let mut body = String::new();
    let stage: JourneyStage = serde_json::from_value(account["stage"].clone()).unwrap_or_default();
    let tier: Tier = serde_json::from_value(account["tier"].clone()).unwrap_or(Tier::Untiered);
    let _ = write!(
        body,
        "<section class=\"summary\" id=\"summary\"><p class=\"lede\"><strong>{name}</strong> <small>{id}</small></p>\
<dl><dt>Score now</dt><dd id=\"score\">{now:.1}</dd><dt>Threshold</dt><dd>{threshold:.1}</dd><dt>Tier</dt><dd>{tier}</dd>\
<dt>Stage</dt><dd><span class=\"stage {stage_key}\">{stage}</span></dd><dt>Owner</dt><dd>{owner}</dd><dt>Alert armed</dt><dd>{armed}</dd>\
<dt>On the TAL</dt><dd>{tal}</dd><dt>Events applied</dt><dd>{applied}</dd></dl></section>",
        name = esc(&name),
        id = esc(&account_id),
        now = number(&account["now"]["score"]),
        threshold = number(&account["threshold"]),
        tier = tier_name(tier),
        stage_key = stage.as_str(),
        stage = stage_name(stage),
        owner = esc(&owner),
        armed =
            if account["armed"].as_bool().unwrap_or(false) { "yes" } else { "no (fired; re-arms below the threshold)" },
        tal = if account["on_tal"].as_bool().unwrap_or(false) { "yes" } else { "no" },
        applied = account["events_applied"].as_u64().unwrap_or(0),
    );
    // Why: each rule's points at the as-of time, times the breadth multiplier.
    let multiplier = number(&account["multiplier"]);
    let rules: Vec<(String, f64, String)> = account["rule_points"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| (text(&r["rule"]), number(&r["points"]), format!("{:.1}", number(&r["points"]))))
                .collect()
        })
        .unwrap_or_default();
    let _ = write!(
        body,
        "<section><h2>Why this score</h2><p>Engagement {e:.1} points from these rules (decayed to {asof}), times {m:.2} for {b} engaged contacts: score {s:.1}.</p>{chart}</section>",
        e = number(&account["engagement"]),
        asof = account["as_of"].as_i64().map_or_else(|| "now".to_owned(), when),
        m = multiplier,
        b = account["breadth"].as_u64().unwrap_or(0),
        s = number(&account["score"]),
        chart = bars("rules", &rules),
    );
    // The buying committee.
    body.push_str("<section id=\"committee\"><h2>Buying committee</h2>");
    let coverage = &account["coverage"];
    let list = |value: &serde_json::Value| -> String {
        let items: Vec<String> =
            value.as_array().map(|v| v.iter().map(|p| esc(&text(p))).collect()).unwrap_or_default();
        if items.is_empty() { "none".to_owned() } else { items.join(", ") }
    };
    let _ = write!(
        body,
        "<p>Coverage {ratio}: covered {covered}; <strong>missing {missing}</strong>.</p>",
        ratio = meter(number(&coverage["ratio"])),
        covered = list(&coverage["covered"]),
        missing = list(&coverage["missing"]),
    );
    body.push_str("<table id=\"contacts\"><thead><tr><th>Contact</th><th>Persona</th><th>Title</th><th>Last engaged</th></tr></thead><tbody>");
    for contact in account["contacts"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&text(&contact["contact_id"])),
            esc(&text(&contact["persona"])),
            esc(&text(&contact["title"])),
            contact["last_engaged_at"].as_i64().map(when).unwrap_or_default()
        );
    }
    body.push_str("</tbody></table></section>");
    // Recent activity.
    body.push_str("<section><h2>Recent activity</h2><ol class=\"timeline\" id=\"activity\">");
    let mut recent: Vec<&serde_json::Value> = account["recent_events"].as_array().into_iter().flatten().collect();
    recent.sort_by_key(|event| std::cmp::Reverse(event["occurred_at"].as_i64().unwrap_or(0)));
    for event in recent {
        let _ = write!(
            body,
            "<li><time>{}</time> <span class=\"kind\">{}</span> {} <span class=\"points\">{:+.1} ({})</span></li>",
            event["occurred_at"].as_i64().map(when).unwrap_or_default(),
            esc(&text(&event["kind"])),
            esc(&text(&event["detail"])),
            number(&event["points"]),
            esc(event["rule"].as_str().unwrap_or("no rule")),
        );
    }
    body.push_str("</ol></section>");
    // Journey and alerts, from the program's topics.
    let (stages, alerts) = console.api.book.story(&account_id);
    body.push_str("<section><h2>Journey</h2><ol class=\"journey\" id=\"journey\">");
    for (stage, at) in &stages {
        let _ = write!(
            body,
            "<li><span class=\"stage {}\">{}</span> since {}</li>",
            stage.as_str(),
            stage_name(*stage),
            when(*at)
        );
    }
    if stages.is_empty() {
        body.push_str("<li>Unaware: no stage entered yet.</li>");
    }
    body.push_str("</ol></section><section><h2>Opportunities</h2><table id=\"opportunities\"><thead><tr><th>Opportunity</th><th>Stage</th><th class=\"num\">Amount</th><th>Created</th></tr></thead><tbody>");
    for deal in account["opportunities"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{:.0} {}</td><td>{}</td></tr>",
            esc(&text(&deal["opportunity_id"])),
            esc(&text(&deal["stage"])),
            number(&deal["amount"]),
            esc(&text(&deal["currency"])),
            deal["created_at"].as_i64().map(when).unwrap_or_default(),
        );
    }
    body.push_str("</tbody></table></section><section><h2>Alerts received</h2><ul id=\"account-alerts\">");
    for (kind, at) in &alerts {
        let _ = write!(body, "<li>{} alert at {}</li>", esc(kind.as_str()), when(*at));
    }
    if alerts.is_empty() {
        body.push_str("<li>None yet.</li>");
    }
    body.push_str("</ul></section>");
    html(StatusCode::OK, page("Accounts", &name, &body, console.tokens.is_some()))
}

/// An alert's why: its three largest rules and their points.
fn why(alert: &SalesAlert) -> String {
    let rules: Vec<String> = alert.top_rules.iter().take(3).map(|r| format!("{} {:.1}", r.rule, r.points)).collect();
    rules.join(", ")
}

/// One alert as a list item (the same markup the script builds for a live one).
fn alert_item(alert: &SalesAlert) -> String {
    format!(
        "<li class=\"alert\" data-alert=\"{id}\"><time>{at}</time> <a href=\"/console/accounts/{href}\">{name}</a> <span class=\"kind\">{kind}</span> <span>{tier}</span> score {score:.1} / {threshold:.1}<br><span class=\"why\">Why: {why}</span><br><span class=\"next\">Next: {next}</span> <small>{owner}</small></li>",
        id = esc(&alert.alert_id),
        at = when(alert.as_of),
        href = abm::ops::percent_encode(&alert.account_id),
        name = esc(if alert.account_name.is_empty() { &alert.account_id } else { &alert.account_name }),
        kind = esc(alert.kind.as_str()),
        tier = tier_name(alert.tier),
        score = alert.score,
        threshold = alert.threshold,
        why = esc(&why(alert)),
        next = esc(&alert.next_step),
        owner = esc(&alert.owner),
    )
}

async fn alerts_page(State(console): State<Console>) -> Response {
    let mut body = String::from(
        "<p>The latest alerts, newest first. New ones appear here as they are sent: <span id=\"live\" data-state=\"connecting\">connecting…</span></p><ul id=\"alerts\" class=\"alerts\">",
    );
    for alert in console.api.book.feed.latest() {
        body.push_str(&alert_item(&alert));
    }
    body.push_str("</ul>");
    html(StatusCode::OK, page("Alerts", "Alerts", &body, console.tokens.is_some()))
}

/// New alerts as server-sent events (`event: alert`, data: the alert's fields the page shows).
async fn alert_stream(State(console): State<Console>) -> Response {
    let Ok(permit) = console.feeds.clone().try_acquire_owned() else {
        return Failure::Unavailable(format!("{MAX_FEEDS} live alert feeds are open on this instance"))
            .into_response(console.api.directory.me());
    };
    let receiver = console.api.book.feed.subscribe();
    let start = (receiver, console.shutdown.clone(), permit);
    let stream = futures::stream::unfold(start, |(mut receiver, shutdown, permit)| async move {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return None,
                received = receiver.recv() => received,
            };
            match received {
                Ok(alert) => {
                    let data = serde_json::json!({
                        "alert_id": alert.alert_id,
                        "account_id": alert.account_id,
                        "account_name": alert.account_name,
                        "tier": tier_name(alert.tier),
                        "kind": alert.kind.as_str(),
                        "score": format!("{:.1}", alert.score),
                        "threshold": format!("{:.1}", alert.threshold),
                        "at": when(alert.as_of),
                        "why": why(&alert),
                        "next_step": alert.next_step,
                        "owner": alert.owner,
                    });
                    let event = Event::default().event("alert").data(data.to_string());
                    return Some((Ok::<Event, Infallible>(event), (receiver, shutdown, permit)));
                }
                // A slow page missed some: it goes on with the next.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Default, Deserialize)]
struct ProgramPageQuery {
    tier: Option<String>,
}

async fn program_page(State(console): State<Console>, Query(query): Query<ProgramPageQuery>) -> Response {
    let report = match api::program_answer(&console.api, &ProgramQuery { tier: query.tier.clone(), at: None }).await {
        Ok(report) => report,
        Err(failure) => return failure_page(&console, "Program", failure),
    };
    let mut body = format!("<p>As of {} UTC, over every account of every instance.</p>", when(report.at));
    // The funnel per tier.
    body.push_str("<section id=\"funnel\"><h2>Journey funnel by tier</h2><div class=\"grid\">");
    for (tier, figures) in &report.tiers {
        let rows: Vec<(String, f64, String)> = JourneyStage::ALL
            .iter()
            .map(|stage| {
                let n = figures.accounts_by_stage.get(stage).copied().unwrap_or(0);
                (stage_name(*stage).to_owned(), n as f64, n.to_string())
            })
            .collect();
        let _ = write!(
            body,
            "<figure><figcaption>{}</figcaption>{}</figure>",
            tier_name(*tier),
            bars(&format!("funnel-{}", tier.as_str()), &rows)
        );
    }
    body.push_str("</div></section>");
    // Engagement and coverage per tier.
    let per_tier = |value: &dyn Fn(&crate::program::Figures) -> Option<f64>| -> Vec<(String, f64, String)> {
        report
            .tiers
            .iter()
            .map(|(tier, f)| (tier_name(*tier).to_owned(), value(f).unwrap_or(0.0), percent(value(f))))
            .collect()
    };
    let _ = write!(
        body,
        "<section id=\"engagement\"><h2>Engagement rate (TAL accounts engaged in the last 30 days)</h2>{}</section>\
<section id=\"coverage\"><h2>Buying-committee coverage (mean over TAL accounts)</h2>{}</section>",
        bars("engagement-rate", &per_tier(&|f| f.engagement_rate)),
        bars("coverage-rate", &per_tier(&|f| f.mean_coverage)),
    );
    // Conversion and velocity.
    body.push_str("<section id=\"conversion\"><h2>Conversion and velocity between stages</h2><table><thead><tr><th>From</th><th>To</th><th class=\"num\">Entered</th><th class=\"num\">Converted</th><th>Rate</th><th class=\"num\">Median days to next</th></tr></thead><tbody>");
    for step in &report.all.conversion {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            stage_name(step.stage),
            stage_name(step.next),
            step.entered,
            step.converted,
            step.rate.map_or_else(|| "–".to_owned(), meter),
            step.median_days_to_next.map_or_else(|| "–".to_owned(), |d| format!("{d:.1}")),
        );
    }
    body.push_str("</tbody></table>");
    let rates: Vec<(String, f64, String)> = report
        .all
        .conversion
        .iter()
        .map(|s| (format!("{} → {}", stage_name(s.stage), stage_name(s.next)), s.rate.unwrap_or(0.0), percent(s.rate)))
        .collect();
    body.push_str("<h3>Conversion rate</h3>");
    body.push_str(&bars("conversion-rate", &rates));
    let velocity: Vec<(String, f64, String)> = report
        .all
        .conversion
        .iter()
        .map(|s| {
            let days = s.median_days_to_next;
            let shown = days.map_or_else(|| "–".to_owned(), |d| format!("{d:.1} days"));
            (format!("{} → {}", stage_name(s.stage), stage_name(s.next)), days.unwrap_or(0.0), shown)
        })
        .collect();
    body.push_str("<h3>Velocity: median days to the next stage</h3>");
    body.push_str(&bars("velocity", &velocity));
    body.push_str("</section>");
    // Pipeline and win rate, TAL against the rest.
    body.push_str("<section id=\"pipeline\"><h2>Pipeline and win rate: TAL against non-TAL</h2>");
    let segments = [("TAL", &report.tal), ("Non-TAL", &report.non_tal)];
    let win: Vec<(String, f64, String)> = segments
        .iter()
        .map(|(name, f)| {
            ((*name).to_owned(), f.opportunities.win_rate.unwrap_or(0.0), percent(f.opportunities.win_rate))
        })
        .collect();
    body.push_str("<h3>Win rate</h3>");
    body.push_str(&bars("win-rate", &win));
    let mut pipeline = Vec::new();
    for (name, figures) in segments {
        for (currency, money) in &figures.opportunities.by_currency {
            pipeline.push((
                format!("{name} open {currency}"),
                money.open_pipeline,
                format!("{:.0}", money.open_pipeline),
            ));
            pipeline.push((format!("{name} won {currency}"), money.won_revenue, format!("{:.0}", money.won_revenue)));
        }
    }
    body.push_str("<h3>Open pipeline and won revenue</h3>");
    body.push_str(&bars("pipeline-amounts", &pipeline));
    let _ = write!(
        body,
        "<p>Opportunities: TAL {} open, {} won, {} lost; non-TAL {} open, {} won, {} lost. Alerts: {} sent, {} followed by an opportunity.</p></section>",
        report.tal.opportunities.open,
        report.tal.opportunities.won,
        report.tal.opportunities.lost,
        report.non_tal.opportunities.open,
        report.non_tal.opportunities.won,
        report.non_tal.opportunities.lost,
        report.all.alerts.alerts,
        report.all.alerts.followed,
    );
    html(StatusCode::OK, page("Program", "Program", &body, console.tokens.is_some()))
}

fn login_form(message: &str) -> String {
    let notice = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"notice\" id=\"login-error\">{}</p>", esc(message))
    };
    format!(
        "{notice}<form method=\"post\" action=\"/console/login\" class=\"login\"><label>API token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required maxlength=\"1000\"></label><button type=\"submit\" id=\"sign-in\">Sign in</button></form><p><small>One of the scorer's <code>http.api_tokens</code>. It is kept in this browser in an HttpOnly cookie until you sign out.</small></p>"
    )
}

async fn login_page(State(console): State<Console>) -> Response {
    if console.tokens.is_none() {
        return Redirect::to("/console/accounts").into_response();
    }
    html(StatusCode::OK, page("", "Sign in", &login_form(""), false))
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// Whether the request came from a page of this origin (a form posted from elsewhere is not
/// taken: no sign-in forged by another site).
fn same_origin(headers: &HeaderMap) -> bool {
    // Browsers say it themselves (Fetch Metadata); older ones send the Origin.
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok()) {
        return site == "same-origin" || site == "none";
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => origin.split_once("://").is_some_and(|(_, rest)| rest == host),
    }
}

async fn login(State(console): State<Console>, headers: HeaderMap, Form(login): Form<Login>) -> Response {
    let Some(tokens) = console.tokens.as_ref() else {
        return Redirect::to("/console/accounts").into_response();
    };
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            page("", "Sign in", &login_form("A sign-in from another site is refused."), false),
        );
    }
    if !abm::ops::token_allowed(tokens, login.token.trim()) {
        return html(StatusCode::UNAUTHORIZED, page("", "Sign in", &login_form("Unknown token."), false));
    }
    let secure = headers.get("x-forwarded-proto").is_some_and(|p| p == "https");
    let cookie = abm::ops::login_cookie(login.token.trim(), secure);
    let mut response = Redirect::to("/console/accounts").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "a sign-out from another site is refused").into_response();
    }
    let mut response = Redirect::to("/console/login").into_response();
    let expired = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", abm::ops::TOKEN_COOKIE);
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(when(0), "1970-01-01 00:00");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(when(1_765_000_000_000), "2025-12-06 05:46");
        assert_eq!(when(-86_400_000), "1969-12-31 00:00");
    }

    #[test]
    fn text_from_kafka_cannot_make_markup() {
        let hostile = "<script>alert(1)</script>\"' onmouseover=x";
        let escaped = esc(hostile);
        assert!(!escaped.contains('<') && !escaped.contains('"') && !escaped.contains('\''), "{escaped}");
        let chart = bars("x\"", &[(hostile.to_owned(), 1.0, hostile.to_owned())]);
        assert!(!chart.contains("<script>") && !chart.contains("x\""), "{chart}");
        assert_eq!(abm::ops::percent_encode("a/b c?"), "a%2Fb%20c%3F");
    }

    fn alert(id: &str) -> SalesAlert {
        abm_testkit::program::sales_alert(id, "acme", abm_schemas::CrossingKind::Threshold, 1_000)
    }

    #[test]
    fn the_feed_keeps_the_latest_alerts_once_each() {
        let feed = AlertFeed::default();
        let mut receiver = feed.subscribe();
        for n in 0..(RECENT_ALERTS + 5) {
            feed.push(alert(&format!("a{n}")));
        }
        feed.push(alert(&format!("a{}", RECENT_ALERTS + 4)));
        let latest = feed.latest();
        assert_eq!(latest.len(), RECENT_ALERTS);
        assert_eq!(latest[0].alert_id, format!("a{}", RECENT_ALERTS + 4), "newest first, a repeat not kept again");
        assert_eq!(receiver.try_recv().map(|a| a.alert_id.clone()).ok(), Some("a0".to_owned()));
    }
}
