//! The Segment-compatible endpoints on ingest's port (the mapping is [`crate::segment`]'s):
//!
//! - `POST /v1/batch`, `/v1/import`, `/v1/b` — a batch (`{"batch": [...], "sentAt", "writeKey"}`);
//! - `POST /v1/track|page|screen|identify|group|alias` and `/v1/t|p|s|i|g|a` — one message;
//! - `GET /sourceConfig` — what RudderStack's JavaScript SDK asks for first;
//! - `OPTIONS` on each — the CORS preflight of analytics.js and RudderStack's browser SDK.
//!
//! The write key comes from HTTP Basic auth (the key as user name, as Segment's libraries send
//! it), `Authorization: Bearer`, the body's `writeKey`, or a `writeKey` query parameter. Any
//! `Content-Type` is taken as JSON (analytics.js sends `text/plain`, RudderStack's Node SDK
//! `application/x-www-form-urlencoded`); a gzip body is recognised by `Content-Encoding` or by
//! its magic bytes. Limits: `ingest.segment.max_batch_bytes` per body (413, kept as
//! `oversized`), `ingest.validation.max_event_bytes` per message, the browser key's scope and
//! rate limits. Answers: as `POST /v1/events`'s (counts and problems), plus `success`,
//! `identities` and `ignored`.

use std::sync::Arc;

use abm_schemas::RejectSource;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::http::{
    Collector, admit, answer, cors_allowed, gunzip, gzip_encoded, header_key, http_source, oversized, read_body,
    summary, unavailable, with_cors,
};
use crate::keys::Scope;
use crate::pipeline::{Item, Output, Record, prepare};
use crate::segment::{Envelope, Translated, messages, source_config, translate, type_of_path};
use crate::validate::{Arrival, Rejection};

pub(crate) fn routes(router: Router<Arc<Collector>>) -> Router<Arc<Collector>> {
    router
        .route("/sourceConfig", get(rudderstack_source_config).options(preflight))
        .route("/sourceConfig/", get(rudderstack_source_config).options(preflight))
        // `/v1/batch` (and Segment's historical `/v1/import`, short `/v1/b`) or one message.
        .route("/v1/{message_type}", post(one_or_batch).options(preflight))
}

async fn preflight(State(collector): State<Arc<Collector>>, headers: HeaderMap) -> Response {
    // The preflight carries no credentials: it is allowed when some browser key allows the
    // origin; the request itself is then checked against its own key.
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or_default();
    let allowed = !origin.is_empty()
        && collector.keys.browser_configs().any(|config| {
            config.origins.is_empty() || config.origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
        });
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({ "error": "no CORS for this origin: no browser key (ingest.browser_keys) allows it" })),
        )
            .into_response();
    }
    cors_allowed(origin, "GET, POST", "content-type, content-encoding, authorization, anonymousid, sentat")
}

/// `writeKey` from the query (`?writeKey=` as RudderStack sends it, or `?write_key=`).
fn query_write_key(query: Option<&str>) -> Option<String> {
    query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "writeKey" || name == "write_key")
            .map(|(_, key)| key.into_owned())
    })
}

fn unauthorized(collector: &Collector) -> Response {
    answer(
        collector,
        StatusCode::UNAUTHORIZED,
        json!({ "error": "missing or unknown write key: send it as the Basic auth user name, or as writeKey in the body" }),
        None,
    )
}

async fn rudderstack_source_config(
    State(collector): State<Arc<Collector>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(header_key)
        .or_else(|| query_write_key(query.as_deref()));
    let Some((name, scope)) = key.as_deref().and_then(|key| collector.keys.find(key)) else {
        return unauthorized(&collector);
    };
    let name = name.to_owned();
    match admit(&collector, scope, &headers, &extensions) {
        Ok(origin) => with_cors(axum::Json(source_config(&name)).into_response(), origin),
        Err(refusal) => *refusal,
    }
}

async fn one_or_batch(
    State(collector): State<Arc<Collector>>,
    Path(message_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    body: Body,
) -> Response {
    let path_type = match message_type.as_str() {
        "batch" | "b" | "import" => None,
        other => match type_of_path(other) {
            Some(kind) => Some(kind),
            None => return (StatusCode::NOT_FOUND, axum::Json(json!({ "error": "no such endpoint" }))).into_response(),
        },
    };
    receive(&collector, path_type, query.as_deref(), &headers, &extensions, body).await
}

fn message_type_label(message: &Value, path_type: Option<&'static str>) -> &'static str {
    message.get("type").and_then(Value::as_str).and_then(type_of_path).or(path_type).unwrap_or("other")
}

async fn receive(
    collector: &Collector,
    path_type: Option<&'static str>,
    query: Option<&str>,
    headers: &HeaderMap,
    extensions: &Extensions,
    body: Body,
) -> Response {
    let received_at = abm::clock::now_ms();
    let limit = collector.segment.max_batch_bytes;
    // A key in the headers or the query is checked, and a browser key's origin and rate limit
    // applied, before the body is read: a request without a known key costs no body. A key
    // that comes only in the body (`writeKey`) is checked once the body is parsed.
    let header_or_query = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(header_key)
        .or_else(|| query_write_key(query));
    let mut admitted = None;
    if let Some(key) = header_or_query.as_deref() {
        let Some((key_name, scope)) = collector.keys.find(key) else { return unauthorized(collector) };
        match admit(collector, scope, headers, extensions) {
            Ok(origin) => admitted = Some((key_name, scope, origin)),
            Err(refusal) => return *refusal,
        }
    }
    let read = match read_body(collector, body, limit).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let gzipped = gzip_encoded(headers);
    // A body that cannot be decompressed is kept as received.
    let bytes = match read {
        Ok(raw) if gzipped || raw.starts_with(&[0x1f, 0x8b]) => gunzip(&raw, limit).map_err(|message| (message, raw)),
        other => Ok(other),
    };
    let parsed: Option<Value> = match &bytes {
        Ok(Ok(bytes)) => serde_json::from_slice(bytes).ok(),
        _ => None,
    };
    let (key_name, scope, cors_origin) = match admitted {
        Some(admitted) => admitted,
        None => {
            let body_key = parsed.as_ref().and_then(|body| messages(body).1);
            let Some((key_name, scope)) = body_key.and_then(|key| collector.keys.find(key)) else {
                return unauthorized(collector);
            };
            match admit(collector, scope, headers, extensions) {
                Ok(origin) => (key_name, scope, origin),
                Err(refusal) => return *refusal,
            }
        }
    };
    let source_name = format!("http:{key_name}");
    let reject_source = http_source(key_name);
    let arrival = Arrival { source: &source_name, received_at, default_kind: None, scope };
    let response = match (bytes, parsed) {
        (Err((message, received)), _) => {
            let items = [Item { framing_error: Some(message), ..Item::of(&received) }];
            finish(collector, &items, Vec::new(), &arrival, &reject_source, 0).await
        }
        (Ok(Err(head)), _) => {
            let message = format!(
                "the body is larger than {limit} bytes (ingest.segment.max_batch_bytes, Segment's batch limit); send smaller batches"
            );
            oversized(collector, &Item::of(&head), &arrival, &reject_source, message).await
        }
        (Ok(Ok(raw)), None) => {
            let items = [Item { framing_error: Some("the body is not valid JSON".into()), ..Item::of(&raw) }];
            finish(collector, &items, Vec::new(), &arrival, &reject_source, 0).await
        }
        (Ok(Ok(_)), Some(body)) => {
            let anonymous_id = headers.get("anonymousid").and_then(|v| v.to_str().ok());
            let (list, _) = messages(&body);
            let envelope = Envelope {
                path_type,
                batch_sent_at: body.get("sentAt").filter(|v| !v.is_null()),
                anonymous_id,
                browser: matches!(scope, Scope::Browser { .. }),
                received_at,
            };
            if list.len() > collector.max_batch_events {
                let message = format!(
                    "the batch has {} messages, more than {} (ingest.max_batch_events); send smaller batches",
                    list.len(),
                    collector.max_batch_events
                );
                let raw = serde_json::to_vec(&body).unwrap_or_default();
                let response = oversized(collector, &Item::of(&raw), &arrival, &reject_source, message).await;
                return with_cors(response, cors_origin);
            }
            let originals: Vec<Vec<u8>> = list.iter().map(|m| serde_json::to_vec(m).unwrap_or_default()).collect();
            // Per event (or invalid message): what to validate, its visitor, why it is invalid,
            // and which message it was (kept as sent when it is rejected).
            let mut entries: Vec<Entry> = Vec::with_capacity(list.len());
            let mut identities = Vec::new();
            let mut ignored = 0;
            let mut outcomes = Vec::with_capacity(list.len());
            for (index, message) in list.iter().enumerate() {
                let original = &originals[index];
                let outcome = if original.len() > collector.validation.max_event_bytes {
                    // Held to the per-event limit as it was sent: validation says `oversized`.
                    entries.push((original.clone(), None, None, index));
                    "invalid"
                } else {
                    match translate(message, &envelope, &collector.segment) {
                        Translated::Event { json, visitor } => {
                            entries.push((json, visitor, None, index));
                            "event"
                        }
                        Translated::Identity(visitor) => {
                            identities.push(visitor);
                            "identity"
                        }
                        Translated::Ignored { .. } => {
                            ignored += 1;
                            "ignored"
                        }
                        Translated::Invalid(refusal) => {
                            entries.push((original.clone(), None, Some(refusal), index));
                            "invalid"
                        }
                    }
                };
                outcomes.push((message_type_label(message, path_type), outcome));
            }
            let items: Vec<Item<'_>> = entries
                .iter()
                .map(|(raw, visitor, invalid, index)| Item {
                    raw,
                    framing_error: None,
                    refused: invalid.clone(),
                    visitor: visitor.as_deref(),
                    original: Some(&originals[*index]),
                })
                .collect();
            let mut records = Vec::with_capacity(identities.len());
            for visitor in &identities {
                match abm_schemas::encode(visitor) {
                    Ok(payload) => {
                        records.push(Record { output: Output::Identity, key: visitor.visitor_id.clone(), payload })
                    }
                    Err(error) => {
                        return answer(
                            collector,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            json!({ "error": error.to_string() }),
                            None,
                        );
                    }
                }
            }
            collector.metrics.batch_size.observe(list.len() as f64);
            let response = finish(collector, &items, records, &arrival, &reject_source, ignored).await;
            // Counted once the batch is durable: a batch answered 429/503 is sent again.
            if response.status().is_success() || response.status() == StatusCode::BAD_REQUEST {
                for (label, outcome) in outcomes {
                    collector.metrics.segment_messages.with_label_values(&[label, outcome]).inc();
                }
            }
            response
        }
    };
    with_cors(response, cors_origin)
}

/// One message to validate: its native JSON (or itself, when refused or too large), its
/// visitor, why it is refused, and its index in the batch (what is kept when it is rejected).
type Entry = (Vec<u8>, Option<String>, Option<Rejection>, usize);

async fn finish(
    collector: &Collector,
    items: &[Item<'_>],
    identities: Vec<Record>,
    arrival: &Arrival<'_>,
    source: &RejectSource,
    ignored: usize,
) -> Response {
    let mut prepared = match prepare(items, arrival, source, &collector.validation, &collector.tal) {
        Ok(prepared) => prepared,
        Err(error) => {
            return answer(collector, StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": error.to_string() }), None);
        }
    };
    let identity_count = identities.len();
    prepared.records.extend(identities);
    if let Err(error) = collector.sink.write_all(&prepared.records).await {
        return unavailable(collector, prepared.results.len() + identity_count, &error);
    }
    collector.metrics.count_written("http", &prepared);
    let accepted = prepared.accepted();
    let rejected = prepared.results.len() - accepted;
    let status =
        if accepted == 0 && identity_count == 0 && rejected > 0 { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let mut body = summary(&prepared, collector.max_reported_problems);
    body["success"] = json!(status == StatusCode::OK);
    body["identities"] = json!(identity_count);
    body["ignored"] = json!(ignored);
    answer(collector, status, body, None)
}
