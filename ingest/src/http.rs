//! `POST /v1/events`: the tracker collector.
//!
//! Answers only after Kafka acknowledged every record of the batch (accepted events and the
//! rejected ones, which are kept). Status codes:
//! - 200 — processed; `results` says per event `accepted` (with destination) or `rejected`
//!   (with reason and message). At least one event was accepted, or the batch was empty.
//! - 400 — processed, but every event was rejected (all kept in `abm.rejected`).
//! - 401 — missing or unknown write key.
//! - 413 — body over `ingest.max_body_bytes` (kept, truncated, as `oversized`).
//! - 429 / 503 with `Retry-After` — the producer queue is full / Kafka did not acknowledge in
//!   time: nothing of the batch is acknowledged, retry it (repeats are absorbed by `event_id`).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use abm_schemas::{RejectSource, Transport};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::json;

use crate::metrics::Metrics;
use crate::pipeline::{Item, prepare, split};
use crate::resolve::TalIndex;
use crate::sink::{Sink, SinkError};
use crate::validate::{Arrival, ValidationConfig};

/// Shared by all requests.
#[derive(Debug)]
pub struct Collector {
    /// name → secret.
    pub write_keys: BTreeMap<String, String>,
    pub max_body_bytes: usize,
    pub validation: ValidationConfig,
    pub tal: Arc<TalIndex>,
    pub sink: Sink,
    pub metrics: Metrics,
}

pub fn routes(collector: Arc<Collector>) -> Router {
    Router::new().route("/v1/events", post(collect)).with_state(collector)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn answer(
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

/// The name of the write key the request carries: `Authorization: Bearer <key>`, Basic with
/// the key as user name and any password (as Segment's trackers send it), or a `write_key`
/// query parameter (browsers' `sendBeacon` cannot set headers; browser keys are public).
fn authenticate<'a>(collector: &'a Collector, headers: &HeaderMap, query: Option<&str>) -> Option<&'a str> {
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("write_key="))
            .map(|key| key.replace("%2B", "+").replace("%3D", "="))
    });
    let key = match (headers.get(header::AUTHORIZATION), from_query) {
        (Some(value), _) => header_key(value.to_str().ok()?)?,
        (None, Some(key)) => key,
        (None, None) => return None,
    };
    collector
        .write_keys
        .iter()
        .find(|(_, secret)| !secret.is_empty() && secret.as_bytes() == key.as_bytes())
        .map(|(name, _)| name.as_str())
}

fn header_key(value: &str) -> Option<String> {
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
async fn read_limited(body: Body, limit: usize) -> Result<Result<Vec<u8>, Vec<u8>>, String> {
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

fn gunzip(bytes: &[u8], limit: usize) -> Result<Result<Vec<u8>, Vec<u8>>, String> {
    let mut decoded = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(bytes).take(limit as u64 + 1);
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
    body: Body,
) -> Response {
    let Some(key_name) = authenticate(&collector, &headers, query.as_deref()) else {
        let hint =
            if collector.write_keys.is_empty() { " (no write keys are configured: set ingest.write_keys)" } else { "" };
        return answer(
            &collector,
            StatusCode::UNAUTHORIZED,
            json!({ "error": format!("missing or unknown write key: send Authorization: Bearer <write key>{hint}") }),
            None,
        );
    };
    let received_at = now_ms();
    let source_name = format!("http:{key_name}");
    let reject_source = RejectSource {
        transport: Transport::Http,
        write_key: Some(key_name.to_owned()),
        batch_index: Some(0),
        topic: None,
        partition: None,
        offset: None,
    };
    let arrival = Arrival { source: &source_name, received_at, default_kind: None };
    let limit = collector.max_body_bytes;
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));

    let read = match read_limited(body, limit).await {
        Ok(read) => read,
        Err(message) => return answer(&collector, StatusCode::BAD_REQUEST, json!({ "error": message }), None),
    };
    let body = match read {
        Ok(bytes) if gzipped => match gunzip(&bytes, limit) {
            Ok(decoded) => decoded,
            Err(message) => {
                // Keep the undecodable body like any malformed input.
                let items = [Item { raw: &bytes, framing_error: Some(message.clone()) }];
                return finish(&collector, &items, &arrival, &reject_source, Some(StatusCode::BAD_REQUEST)).await;
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
            let items = [Item { raw: &head, framing_error: None }];
            return oversized(&collector, &items[0], &arrival, &reject_source, message).await;
        }
    };
    let items = split(&bytes);
    collector.metrics.batch_size.observe(items.len() as f64);
    finish(&collector, &items, &arrival, &reject_source, None).await
}

async fn oversized(
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

fn unavailable(collector: &Collector, events: usize, error: &SinkError) -> Response {
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
    answer(collector, status, json!({ "accepted": accepted, "rejected": rejected, "results": prepared.results }), None)
}
