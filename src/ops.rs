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

/// `[http]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the service's HTTP port (default per service: ingest `0.0.0.0:8080`,
    /// scorer `0.0.0.0:8081`, alerter `0.0.0.0:8082`). Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: SocketAddr::from(([0, 0, 0, 0], 0)) }
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

/// The ops routes merged with the service's own `routes`.
pub fn router(registry: Registry, health: Health, routes: Router) -> Router {
    let ops = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(OpsState { registry, health });
    ops.merge(routes)
}

/// Binds the HTTP port; errors name the address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| anyhow::anyhow!("cannot listen on http.listen = {address}: {e}"))
}

/// Serves `app` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::Health;

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
