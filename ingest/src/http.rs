//! `POST /v1/events`: the tracker collector.
//!
//! Answers only after Kafka acknowledged every record of the batch (accepted events and the
//! rejected ones, which are kept). Status codes:
//! - 200 — processed: counts (`accepted`, `rejected`, `engaged`, `unresolved`), and the first
//!   `ingest.max_reported_problems` rejected events (`problems`: index, event id, reason,
//!   message, each cut to a bounded length) with `problems_omitted` for the rest, so the answer
//!   stays small whatever the batch. At least one event was accepted, or the batch was empty.
//! - 400 — processed, but every event was rejected (all kept in `abm.rejected`).
//! - 401 — missing or unknown write key.
//! - 403 — a browser key used from an origin it does not allow.
//! - 429 with `Retry-After` — a browser key's rate limit (per key or per client address).
//! - 408 — the body did not arrive within `http.body_read_timeout_ms` (nothing processed).
//! - 413 — body over `ingest.max_body_bytes`, or more events than `ingest.max_batch_events`
//!   (kept, truncated, as `oversized`).
//! - 429 / 503 with `Retry-After` — the producer queue is full / Kafka did not acknowledge in
//!   time: nothing of the batch is acknowledged, retry it (repeats are absorbed by `event_id`).

use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;

use abm::ops::ClientAddr;
use abm_schemas::{RejectSource, Transport};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::json;

use crate::keys::{BrowserKeyConfig, Keys, Scope};
use crate::metrics::Metrics;
use crate::pipeline::{Item, prepare, split};
use crate::resolve::TalIndex;
use crate::sink::{Sink, SinkError};
use crate::validate::{Arrival, ValidationConfig};

/// Shared by all requests.
#[derive(Debug)]
pub struct Collector {
    pub keys: Keys,
    /// Lower-case name of the header with the client's address (`ingest.client_address_header`);
    /// empty: the connection's peer.
    pub client_address_header: String,
    pub max_body_bytes: usize,
    /// Events per batch at most (`ingest.max_batch_events`).
    pub max_batch_events: usize,
    /// Rejected events described in an answer at most (`ingest.max_reported_problems`).
    pub max_reported_problems: usize,
    /// Time a request body may take to arrive (`http.body_read_timeout_ms`).
    pub body_read_timeout: std::time::Duration,
    pub validation: ValidationConfig,
    /// The Segment-compatible endpoints (`ingest.segment`).
    pub segment: crate::segment::SegmentConfig,
    pub tal: Arc<TalIndex>,
    pub sink: Sink,
    pub metrics: Metrics,
}

pub fn routes(collector: Arc<Collector>) -> Router {
    let mut router = Router::new().route("/v1/events", post(collect).options(preflight));
    if collector.segment.enabled {
        router = crate::segment_http::routes(router);
    }
    router.with_state(collector)
}

use abm::clock::now_ms;

pub(crate) fn answer(
    collector: &Collector,
    status: StatusCode,
    body: serde_json::Value,
    retry_after: Option<&'static str>,
) -> Response {
    collector.metrics.requests.with_label_values(&[status.as_str()]).inc();
    let mut response = (status, Json(body)).into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    response
}

/// The write key the request carries, by name, with its scope: `Authorization: Bearer <key>`,
/// Basic with the key as user name and any password (as Segment's trackers send it), or a
/// `write_key` query parameter (browsers' `sendBeacon` cannot set headers; browser keys are
/// public), decoded like any URL-encoded value (the tracker sends `encodeURIComponent(key)`).
pub(crate) fn authenticate<'a>(
    collector: &'a Collector,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<(&'a str, Scope<'a>)> {
    let key = match (headers.get(header::AUTHORIZATION), query_key(query)) {
        (Some(value), _) => header_key(value.to_str().ok()?)?,
        (None, Some(key)) => key,
        (None, None) => return None,
    };
    collector.keys.find(&key)
}

fn query_key(query: Option<&str>) -> Option<String> {
    query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(name, _)| name == "write_key").map(|(_, key)| key.into_owned())
    })
}

/// The request's `Origin`, when a browser key allows it; `Err(origin)` when it does not.
pub(crate) fn allowed_origin<'h>(config: &BrowserKeyConfig, headers: &'h HeaderMap) -> Result<Option<&'h str>, String> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(None) };
    let origin = origin.to_str().map_err(|_| "<not text>".to_owned())?;
    if config.origins.is_empty() || config.origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)) {
        Ok(Some(origin))
    } else {
        Err(origin.to_owned())
    }
}

/// The client's address: the configured header's last entry (added by the trusted proxy), else
/// the connection's peer.
fn client_address(collector: &Collector, headers: &HeaderMap, extensions: &Extensions) -> IpAddr {
    let peer = extensions.get::<ClientAddr>().map_or(IpAddr::from([0, 0, 0, 0]), |client| client.0.ip());
    let address = if collector.client_address_header.is_empty() {
        peer
    } else {
        // Only the last entry: the one the trusted proxy added. Entries before it are the
        // client's to write; one that does not parse means the peer address counts.
        headers
            .get_all(collector.client_address_header.as_str())
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|entry| parse_forwarded_address(entry.trim()))
            .unwrap_or(peer)
    };
    rate_limit_unit(address)
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|socket| socket.ip())
}

/// What a per-client limit counts as one client: an IPv4 address, or an IPv6 address's /64
/// (one subscriber's network: an IPv6 host can pick any address in it at will).
fn rate_limit_unit(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1_u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// `OPTIONS /v1/events`: the CORS preflight of a browser that sends with headers (fetch with
/// `Content-Type: application/json`, say). Allowed for a browser key's allowed origins.
async fn preflight(State(collector): State<Arc<Collector>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let browser = query_key(query.as_deref()).and_then(|key| match collector.keys.find(&key) {
        Some((_, Scope::Browser { config, .. })) => Some(config),
        _ => None,
    });
    let origin = browser.map(|config| allowed_origin(config, &headers));
    match origin {
        Some(Ok(Some(origin))) => cors_allowed(origin, "POST", "content-type, content-encoding, authorization"),
        _ => (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "no CORS for this request: a browser key (?write_key=) and one of its allowed origins are needed" })),
        )
            .into_response(),
    }
}

/// A CORS preflight's yes: `origin` may send with `methods` and `headers` (cached 10 minutes).
pub(crate) fn cors_allowed(origin: &str, methods: &'static str, headers: &'static str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    if let Ok(origin) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(headers));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

pub(crate) fn header_key(value: &str) -> Option<String> {
    Some(if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else {
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':').map_or(text.clone(), |(user, _)| user.to_owned())
    })
}

/// Reads at most `limit` bytes of the body; `Err(first bytes)` when it is longer.
pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<Result<Vec<u8>, Vec<u8>>, String> {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the request body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                let room = limit.saturating_sub(bytes.len());
                bytes.extend_from_slice(&data[..room.min(data.len())]);
                return Ok(Err(bytes));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Ok(bytes))
}

pub(crate) fn gunzip(bytes: &[u8], limit: usize) -> Result<Result<Vec<u8>, Vec<u8>>, String> {
    let mut decoded = Vec::new();
    // Every member of a multi-member gzip stream (RFC 1952 2.2: concatenated members are one file).
    let mut reader = flate2::read::MultiGzDecoder::new(bytes).take(limit as u64 + 1);
    reader.read_to_end(&mut decoded).map_err(|e| format!("the gzip body cannot be decompressed: {e}"))?;
    if decoded.len() > limit {
        decoded.truncate(limit);
        return Ok(Err(decoded));
    }
    Ok(Ok(decoded))
}

async fn collect(
    State(collector): State<Arc<Collector>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    body: Body,
) -> Response {
    let Some((key_name, scope)) = authenticate(&collector, &headers, query.as_deref()) else {
        let hint = if collector.keys.is_empty() {
            " (no write keys are configured: set ingest.write_keys or ingest.browser_keys)"
        } else {
            ""
        };
        return answer(
            &collector,
            StatusCode::UNAUTHORIZED,
            json!({ "error": format!("missing or unknown write key: send Authorization: Bearer <write key>{hint}") }),
            None,
        );
    };
    let cors_origin = match admit(&collector, scope, &headers, &extensions) {
        Ok(origin) => origin,
        Err(refusal) => return *refusal,
    };
    with_cors(receive(&collector, key_name, scope, &headers, body).await, cors_origin)
}

/// A browser key's checks: its allowed origins (403) and rate limits (429). The origin to
/// answer CORS for when the request may go on; the answer when it may not.
pub(crate) fn admit(
    collector: &Collector,
    scope: Scope<'_>,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<Option<HeaderValue>, Box<Response>> {
    let Scope::Browser { name, config } = scope else { return Ok(None) };
    let cors_origin = match allowed_origin(config, headers) {
        Ok(origin) => origin.and_then(|origin| HeaderValue::from_str(origin).ok()),
        Err(origin) => {
            let error = format!(
                "origin {origin:?} may not send with browser key {name:?} (ingest.browser_keys.{name}.origins)"
            );
            return Err(Box::new(answer(collector, StatusCode::FORBIDDEN, json!({ "error": error }), None)));
        }
    };
    if let Err(wait) = collector.keys.admit(name, config, client_address(collector, headers, extensions)) {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        collector.metrics.rate_limited.with_label_values(&[name]).inc();
        let mut response = answer(
            collector,
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "error": format!("rate limit of browser key {name:?}: retry after {seconds} s"), "retry_after_seconds": seconds }),
            None,
        );
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Err(Box::new(with_cors(response, cors_origin)));
    }
    Ok(cors_origin)
}

/// Lets the page's script read the answer (and tells caches it depends on the origin).
pub(crate) fn with_cors(mut response: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// Where a request of write key `key_name` is kept from when something of it is rejected.
pub(crate) fn http_source(key_name: &str) -> RejectSource {
    RejectSource {
        transport: Transport::Http,
        write_key: Some(key_name.to_owned()),
        batch_index: Some(0),
        topic: None,
        partition: None,
        offset: None,
    }
}

/// Whether the request says its body is gzip.
pub(crate) fn gzip_encoded(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("gzip"))
}

/// The body, at most `limit` bytes (`Err(first bytes)` when longer), read within
/// `http.body_read_timeout_ms`; the answer (400, 408) when it could not be read.
pub(crate) async fn read_body(
    collector: &Collector,
    body: Body,
    limit: usize,
) -> Result<Result<Vec<u8>, Vec<u8>>, Response> {
    match tokio::time::timeout(collector.body_read_timeout, read_limited(body, limit)).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(message)) => Err(answer(collector, StatusCode::BAD_REQUEST, json!({ "error": message }), None)),
        Err(_) => {
            let message = format!(
                "the request body did not arrive within {} ms (http.body_read_timeout_ms); nothing of it was processed",
                collector.body_read_timeout.as_millis()
            );
            Err(answer(collector, StatusCode::REQUEST_TIMEOUT, json!({ "error": message }), None))
        }
    }
}

/// Reads, validates, writes and answers for an authenticated request.
async fn receive(collector: &Collector, key_name: &str, scope: Scope<'_>, headers: &HeaderMap, body: Body) -> Response {
    let received_at = now_ms();
    let source_name = format!("http:{key_name}");
    let reject_source = http_source(key_name);
    let arrival = Arrival { source: &source_name, received_at, default_kind: None, scope };
    let limit = collector.max_body_bytes;
    let gzipped = gzip_encoded(headers);
    let read = match read_body(collector, body, limit).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let body = match read {
        Ok(bytes) if gzipped => match gunzip(&bytes, limit) {
            Ok(decoded) => decoded,
            Err(message) => {
                // Keep the undecodable body like any malformed input.
                let items = [Item { framing_error: Some(message.clone()), ..Item::of(&bytes) }];
                return finish(collector, &items, &arrival, &reject_source, Some(StatusCode::BAD_REQUEST)).await;
            }
        },
        other => other,
    };
    let bytes = match body {
        Ok(bytes) => bytes,
        Err(head) => {
            // Too large: keep what we read (truncated) as one `oversized` rejection, then 413.
            let message = format!(
                "the body is larger than {limit} bytes{} (ingest.max_body_bytes); send smaller batches",
                if gzipped { " after decompression" } else { "" }
            );
            let items = [Item::of(&head)];
            return oversized(collector, &items[0], &arrival, &reject_source, message).await;
        }
    };
    let items = split(&bytes);
    if items.len() > collector.max_batch_events {
        let message = format!(
            "the batch has {} events, more than {} (ingest.max_batch_events); send smaller batches",
            items.len(),
            collector.max_batch_events
        );
        let whole = Item::of(&bytes);
        return oversized(collector, &whole, &arrival, &reject_source, message).await;
    }
    collector.metrics.batch_size.observe(items.len() as f64);
    finish(collector, &items, &arrival, &reject_source, None).await
}

/// Longest event id and message an answer repeats (an event's own text is not echoed whole).
const MAX_ECHOED_CHARS: usize = 200;

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The answer's body: counts, and the first `max_problems` rejected events.
pub(crate) fn summary(prepared: &crate::pipeline::Prepared, max_problems: usize) -> serde_json::Value {
    use crate::pipeline::Destination;
    let accepted = prepared.accepted();
    let rejected = prepared.results.len() - accepted;
    let problems: Vec<serde_json::Value> = prepared
        .results
        .iter()
        .filter(|result| result.status == "rejected")
        .take(max_problems)
        .map(|result| {
            let mut problem = json!({ "index": result.index, "reason": result.reason, "message": result.message.as_deref().map(cut) });
            if let Some(id) = &result.event_id {
                problem["event_id"] = json!(cut(id));
            }
            problem
        })
        .collect();
    json!({
        "accepted": accepted,
        "rejected": rejected,
        "engaged": prepared.count(Destination::Engaged),
        "unresolved": prepared.count(Destination::Unresolved),
        "pending": prepared.count(Destination::Pending),
        "problems_omitted": rejected - problems.len(),
        "problems": problems,
    })
}

pub(crate) async fn oversized(
    collector: &Collector,
    item: &Item<'_>,
    arrival: &Arrival<'_>,
    source: &RejectSource,
    message: String,
) -> Response {
    let record = abm_schemas::RejectedEvent {
        reason: abm_schemas::RejectReason::Oversized,
        message: format!(
            "{message} (original truncated to {} bytes)",
            item.raw.len().min(crate::pipeline::MAX_KEPT_ORIGINAL)
        ),
        source: RejectSource { batch_index: None, ..source.clone() },
        event_id: None,
        received_at: arrival.received_at,
        original: item.raw[..item.raw.len().min(crate::pipeline::MAX_KEPT_ORIGINAL)].to_vec(),
    };
    let payload = match abm_schemas::encode(&record) {
        Ok(payload) => payload,
        Err(error) => {
            return answer(collector, StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": error.to_string() }), None);
        }
    };
    let records = [crate::pipeline::Record {
        output: crate::pipeline::Output::Rejected,
        key: arrival.source.to_owned(),
        payload,
    }];
    match collector.sink.write_all(&records).await {
        Ok(()) => {
            collector.metrics.received.with_label_values(&["http"]).inc();
            collector.metrics.rejected.with_label_values(&["http", "oversized"]).inc();
            answer(collector, StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": message, "reason": "oversized" }), None)
        }
        Err(error) => unavailable(collector, 1, &error),
    }
}

pub(crate) fn unavailable(collector: &Collector, events: usize, error: &SinkError) -> Response {
    collector.metrics.deferred.with_label_values(&["http"]).inc_by(events as u64);
    let (status, retry_after) = match error {
        SinkError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "1"),
        SinkError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "5"),
    };
    tracing::warn!(%error, events, "batch not acknowledged");
    answer(
        collector,
        status,
        json!({ "error": format!("{error}; nothing of this batch is acknowledged, retry it"), "retry_after_seconds": retry_after.parse::<u32>().unwrap_or(1) }),
        Some(retry_after),
    )
}

async fn finish(
    collector: &Collector,
    items: &[Item<'_>],
    arrival: &Arrival<'_>,
    source: &RejectSource,
    status_override: Option<StatusCode>,
) -> Response {
    let prepared = match prepare(items, arrival, source, &collector.validation, &collector.tal) {
        Ok(prepared) => prepared,
        Err(error) => {
            return answer(collector, StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": error.to_string() }), None);
        }
    };
    collector.metrics.queue_depth.set(i64::from(collector.sink.queue_depth()));
    if let Err(error) = collector.sink.write_all(&prepared.records).await {
        return unavailable(collector, prepared.results.len(), &error);
    }
    collector.metrics.count_written("http", &prepared);
    let accepted = prepared.accepted();
    let rejected = prepared.results.len() - accepted;
    let status =
        status_override.unwrap_or(if accepted == 0 && rejected > 0 { StatusCode::BAD_REQUEST } else { StatusCode::OK });
    answer(collector, status, summary(&prepared, collector.max_reported_problems), None)
}

#[cfg(test)]
mod client_address_tests {
    use super::{IpAddr, parse_forwarded_address, rate_limit_unit};

    #[test]
    fn forwarded_entries_parse_with_or_without_a_port() {
        let v4: IpAddr = [203, 0, 113, 9].into();
        assert_eq!(parse_forwarded_address("203.0.113.9"), Some(v4));
        assert_eq!(parse_forwarded_address("203.0.113.9:5678"), Some(v4));
        assert_eq!(parse_forwarded_address("[2001:db8::1]:443"), "2001:db8::1".parse().ok());
        assert_eq!(parse_forwarded_address("unknown"), None);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a = rate_limit_unit("2001:db8:1:2:aaaa::1".parse().expect("v6"));
        let b = rate_limit_unit("2001:db8:1:2:ffff:1:2:3".parse().expect("v6"));
        let other = rate_limit_unit("2001:db8:1:3::1".parse().expect("v6"));
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().expect("v6"));
        let v4: IpAddr = [198, 51, 100, 7].into();
        assert_eq!(rate_limit_unit(v4), v4);
        assert_eq!(rate_limit_unit("::ffff:198.51.100.7".parse().expect("mapped")), v4);
    }
}
