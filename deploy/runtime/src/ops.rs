//! The service's HTTP port: `/metrics`, `/healthz`, `/readyz` and the service's own routes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `[http]` section: the port and its limits. Everything reachable over HTTP is treated as
/// hostile: a client gets bounded time to send its headers and its body, and bounded room.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the service's HTTP port (default per service: ingest `0.0.0.0:8080`,
    /// scorer `0.0.0.0:8081`, alerter `0.0.0.0:8082`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Time a client has to send a request's headers, counted from the connection's start or
    /// the end of its previous response: also the longest a kept-alive connection may sit idle
    /// (default 10000 ms). A client too slow, or silent, is disconnected.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a whole request body, counted from its headers (default
    /// 30000 ms); after it the request is answered 408 (a body read so far is not kept).
    pub body_read_timeout_ms: u64,
    /// Open connections at most (default 1024). Beyond it, [`PROBE_CONNECTIONS`] more are let
    /// in for one request each to `/healthz`, `/readyz` or `/metrics` (anything else is
    /// answered 503), each with at most 1 s to send it, so that probes and Prometheus have a
    /// way through a flood; a connection beyond those is closed at once and counted in
    /// `abm_http_connections_refused_total`.
    pub max_connections: usize,
    /// Requests handled at once at most (default 256), not counting `/healthz` and `/readyz`;
    /// one beyond it is answered 503 with `Retry-After: 1` and counted in
    /// `abm_http_requests_shed_total`.
    pub max_concurrent_requests: usize,
    /// On shutdown, how long requests in flight may take to finish before their connections
    /// are closed (default 10000 ms).
    pub shutdown_grace_ms: u64,
    /// Bearer tokens for the service's data API (the scorer's `/v1/accounts`, which returns
    /// contacts' emails and titles): name = token. A request needs `Authorization: Bearer
    /// <token>`; with none configured the API answers 401 to everyone (unless `api_open`).
    pub api_tokens: std::collections::BTreeMap<String, String>,
    /// Serve the data API without a token (default false): for a laptop or a closed network.
    pub api_open: bool,
    /// Ask for a token on `/metrics`, `/healthz` and `/readyz` too (default false: probes and
    /// Prometheus usually reach them without one).
    pub protect_ops: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 1024,
            max_concurrent_requests: 256,
            shutdown_grace_ms: 10_000,
            api_tokens: std::collections::BTreeMap::new(),
            api_open: false,
            protect_ops: false,
        }
    }
}

/// Without the tokens' values (their names only).
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("body_read_timeout_ms", &self.body_read_timeout_ms)
            .field("max_connections", &self.max_connections)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("api_tokens", &self.api_tokens.keys().collect::<Vec<_>>())
            .field("api_open", &self.api_open)
            .field("protect_ops", &self.protect_ops)
            .finish()
    }
}

impl HttpConfig {
    pub fn body_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_read_timeout_ms.max(1))
    }
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

/// Liveness and readiness of the process, shared by the service and its HTTP port.
///
/// `/healthz` answers 200 while the process serves HTTP at all. `/readyz` answers 200 only
/// between [`Health::set_ready`] and [`Health::set_stopping`], and only while nothing is
/// waited for ([`Health::wait_for`]: a loop restoring its partitions, say); load balancers and
/// Kubernetes stop sending work as soon as shutdown starts, before the service drains.
#[derive(Debug, Clone, Default)]
pub struct Health {
    state: Arc<AtomicU8>,
    /// What readiness waits for, by name, with a line for `/readyz`.
    waiting: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    /// Readiness is 503 until [`Health::done_waiting`] with the same `name`.
    pub fn wait_for(&self, name: impl Into<String>, detail: impl Into<String>) {
        self.waiting().insert(name.into(), detail.into());
    }
    pub fn done_waiting(&self, name: &str) {
        self.waiting().remove(name);
    }
    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    pub fn set_ready(&self) {
        // Never go back from stopping to ready.
        let _ = self.state.compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }
    pub fn set_stopping(&self) {
        self.state.store(STOPPING, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::SeqCst) == READY && self.waiting().is_empty()
    }
    fn describe(&self) -> String {
        match self.state.load(Ordering::SeqCst) {
            STARTING => "starting".into(),
            READY => {
                let waiting = self.waiting();
                if waiting.is_empty() {
                    "ready".into()
                } else {
                    let what: Vec<String> = waiting.iter().map(|(name, detail)| format!("{name}: {detail}")).collect();
                    format!("waiting for {}", what.join("; "))
                }
            }
            _ => "stopping".into(),
        }
    }
}

/// The process's one metrics registry, with process metrics and a build-info gauge.
pub fn new_registry(service: &str) -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    }
    if let Ok(info) = IntGaugeVec::new(
        Opts::new("abm_build_info", "Build of the running service; always 1."),
        &["service", "version"],
    ) {
        info.with_label_values(&[service, env!("CARGO_PKG_VERSION")]).set(1);
        let _ = registry.register(Box::new(info));
    }
    registry
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    health: Health,
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut body = Vec::with_capacity(8 * 1024);
    match TextEncoder::new().encode(&state.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let status = if state.health.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, format!("{}\n", state.health.describe())).into_response()
}

/// The ops routes (behind a token when `http.protect_ops`) merged with the service's own
/// `routes` (which protect themselves as they need: see [`protect`]).
pub fn router(registry: Registry, health: Health, routes: Router, config: &HttpConfig) -> Router {
    let ops = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(OpsState { registry, health });
    let ops = if config.protect_ops { require_token(ops, config) } else { ops };
    ops.merge(routes)
}

/// `routes` behind a bearer token of `http.api_tokens`, unless `http.api_open`.
pub fn protect(routes: Router, config: &HttpConfig) -> Router {
    if config.api_open { routes } else { require_token(routes, config) }
}

fn require_token(routes: Router, config: &HttpConfig) -> Router {
    let tokens: Arc<Vec<String>> = Arc::new(api_tokens(config));
    routes.route_layer(axum::middleware::from_fn_with_state(tokens, check_token))
}

/// `text` as one URL path segment or query value: every byte but RFC 3986's unreserved ones
/// (`A-Z a-z 0-9 - . _ ~`) percent-encoded.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The cookie a browser console carries its token in (hex of the token's bytes), set by
/// [`login_cookie`]: `HttpOnly`, `SameSite=Strict`.
pub const TOKEN_COOKIE: &str = "abm_api_token";

/// The token a request presents: `Authorization: Bearer <token>`, else the console's cookie.
pub fn presented_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == TOKEN_COOKIE)
            .and_then(|(_, hex)| from_hex(hex))
    })
}

fn from_hex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) || text.len() > 2048 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// The `Set-Cookie` value that carries `token` for a browser (`secure`: only over https).
pub fn login_cookie(token: &str, secure: bool) -> String {
    let hex: String = token.bytes().map(|byte| format!("{byte:02x}")).collect();
    let secure = if secure { "; Secure" } else { "" };
    format!("{TOKEN_COOKIE}={hex}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// Whether `presented` is one of `tokens` (every token compared, each in constant time).
pub fn token_allowed(tokens: &[String], presented: &str) -> bool {
    let mut allowed = false;
    for token in tokens {
        allowed |= bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), presented.as_bytes()));
    }
    allowed
}

/// The tokens a service accepts on its data API (empty ones left out).
pub fn api_tokens(config: &HttpConfig) -> Vec<String> {
    config.api_tokens.values().filter(|token| !token.is_empty()).cloned().collect()
}

async fn check_token(
    State(tokens): State<Arc<Vec<String>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = presented_token(request.headers());
    if presented.is_some_and(|presented| token_allowed(&tokens, &presented)) {
        return next.run(request).await;
    }
    // A person at a browser is sent to the console's sign-in page.
    let path = request.uri().path();
    if path.starts_with("/console/") && !path.starts_with("/console/static/") && !path.ends_with("/stream") {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/console/login")]).into_response();
    }
    let error = if tokens.is_empty() {
        "this API needs a token and none is configured: set http.api_tokens.<name> (or http.api_open = true on a closed network)"
    } else {
        "missing or unknown token: send Authorization: Bearer <one of http.api_tokens>"
    };
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": error }))).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

/// Binds the HTTP port; errors name the address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| anyhow::anyhow!("cannot listen on http.listen = {address}: {e}"))
}

/// The HTTP port's own metrics (`abm_http_*`).
#[derive(Debug, Clone)]
struct PortMetrics {
    open: prometheus::IntGauge,
    refused: prometheus::IntCounter,
    shed: prometheus::IntCounter,
}

impl PortMetrics {
    fn register(registry: &Registry) -> prometheus::Result<PortMetrics> {
        let metrics = PortMetrics {
            open: prometheus::IntGauge::new("abm_http_connections_open", "HTTP connections open.")?,
            refused: prometheus::IntCounter::new(
                "abm_http_connections_refused_total",
                "HTTP connections closed at once because http.max_connections were open.",
            )?,
            shed: prometheus::IntCounter::new(
                "abm_http_requests_shed_total",
                "HTTP requests answered 503 because http.max_concurrent_requests were in flight.",
            )?,
        };
        registry.register(Box::new(metrics.open.clone()))?;
        registry.register(Box::new(metrics.refused.clone()))?;
        registry.register(Box::new(metrics.shed.clone()))?;
        Ok(metrics)
    }
}

/// Connections let in past `http.max_connections` for the ops paths only.
pub const PROBE_CONNECTIONS: usize = 16;

/// The paths served on the connections kept for probes: liveness, readiness and metrics.
fn is_ops_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The probes, never shed for requests in flight (they cost next to nothing; `/metrics`, which
/// gathers every series, counts like any request).
fn is_probe_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// How long a connection let in for probes only may take to send its request.
const PROBE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn busy(what: &'static str) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, what).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// The client's address, in each request's extensions (per-client limits read it).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Serves `app` on `listener` within the limits of `config` until `shutdown` is cancelled;
/// then stops accepting and lets requests in flight finish for `shutdown_grace_ms` before it
/// returns (connections still open then end with the process). HTTP/1.1 with keep-alive.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use tower::ServiceExt as _;
    let metrics = PortMetrics::register(&registry).map_err(std::io::Error::other)?;
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let probe_connections = Arc::new(tokio::sync::Semaphore::new(PROBE_CONNECTIONS));
    let requests = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests.max(1)));
    let header_timeout = std::time::Duration::from_millis(config.header_read_timeout_ms.max(1));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (permit, probes_only) = match connections.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match probe_connections.clone().try_acquire_owned() {
                Ok(permit) => (permit, true),
                Err(_) => {
                    metrics.refused.inc();
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, requests, shed) = (app.clone(), requests.clone(), metrics.shed.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let ops = is_ops_path(request.uri().path());
            // The probes take no permit: a flood of requests does not fail them.
            let permit =
                if is_probe_path(request.uri().path()) { None } else { Some(requests.clone().try_acquire_owned()) };
            request.extensions_mut().insert(ClientAddr(peer));
            let shed = shed.clone();
            async move {
                if probes_only && !ops {
                    shed.inc();
                    return Ok::<_, std::convert::Infallible>(busy("busy: too many connections; retry\n"));
                }
                let _permit = match permit {
                    Some(Err(_)) => {
                        shed.inc();
                        return Ok(busy("busy: too many requests in flight; retry\n"));
                    }
                    Some(Ok(permit)) => Some(permit),
                    None => None,
                };
                app.oneshot(request.map(axum::body::Body::new)).await
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(if probes_only { header_timeout.min(PROBE_HEADER_TIMEOUT) } else { header_timeout })
            .keep_alive(!probes_only)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let open = metrics.open.clone();
        open.inc();
        tokio::spawn(async move {
            // Errors here are the client's (a timeout, a reset, a malformed request).
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "HTTP connection ended");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            grace_ms = config.shutdown_grace_ms,
            "HTTP requests still in flight after the shutdown grace; closing them"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn the_http_config_debug_names_tokens_but_never_prints_them() {
        let mut config = super::HttpConfig::default();
        config.api_tokens.insert("console".into(), "s3cret-token-value".into());
        let printed = format!("{config:?}");
        assert!(printed.contains("console"), "{printed}");
        assert!(!printed.contains("s3cret-token-value"), "{printed}");
    }

    #[test]
    fn readiness_waits_for_everything_pending_and_never_returns_from_stopping() {
        let health = Health::default();
        assert!(!health.is_ready(), "starting");
        health.set_ready();
        assert!(health.is_ready());
        health.wait_for("restoring", "partitions [0, 1] of abm.engagement");
        assert!(!health.is_ready());
        assert_eq!(health.describe(), "waiting for restoring: partitions [0, 1] of abm.engagement");
        health.done_waiting("restoring");
        assert!(health.is_ready());
        health.set_stopping();
        health.set_ready();
        assert!(!health.is_ready(), "stopping is final");
    }
}
