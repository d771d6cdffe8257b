//! Segment's HTTP Tracking API, and what RudderStack's SDKs send, in the native event format.
//!
//! Pure: a Segment message (`page`, `track`, `identify`, `group`, `alias`, `screen`) becomes
//! either a native event (the JSON of the README's "Event format", validated like any other
//! event), an identity observation of its visitor (for the stitcher, [`crate::stitch`]), or
//! nothing that scores (a `track` whose event name maps to no kind: counted as ignored).
//!
//! The mapping (README, "Segment and RudderStack"):
//! - `page` → `web_visit`: `url`, `referrer`, `title` from `properties`, else `context.page`;
//!   `screen` → `web_visit` of `app://<name>`.
//! - `track` → the kind its event name maps to in `ingest.segment.track` (defaults:
//!   [`SegmentConfig::default`]), with that kind's properties taken from the event's.
//! - `identify` → the visitor's contact: `traits.email`, `traits.title`, `traits.persona`
//!   (server keys only), `userId` as the contact id.
//! - `group` → the visitor's account: `groupId` as the account id (server keys only; a browser
//!   key's group gives only its domain), `traits.domain`, else the host of `traits.website`.
//! - `alias` → `previousId`'s visitor is `userId`'s user.
//! - `messageId` is the `event_id`; `originalTimestamp`, else `timestamp`, is the event time,
//!   corrected by the clock skew `sentAt` shows (the message's, else the batch's).
//! - A message's visitor is its `anonymousId` (RudderStack also sends it as the `AnonymousId`
//!   header), else `user:<userId>`.

use std::collections::BTreeMap;

use abm_schemas::{Contact, EventKind, RejectReason, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::validate::Rejection;

fn invalid(reason: RejectReason, message: impl Into<String>) -> Translated {
    Translated::Invalid(Rejection::new(reason, message))
}

/// How a `track` event name maps to a kind: `{ kind = "email", action = "click" }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackKind {
    pub kind: EventKind,
    /// The email action (`email`) or the webinar action (`webinar`) the event name means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// `[ingest.segment]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentConfig {
    /// Serve the Segment-compatible endpoints (default true).
    pub enabled: bool,
    /// `track` event names and the kind each means (the defaults below; a table here replaces
    /// them all). Names are matched exactly.
    pub track: BTreeMap<String, TrackKind>,
    /// Largest Segment batch body, after decompression (default 512000 bytes, Segment's 500 KB).
    /// Each message is also held to `ingest.validation.max_event_bytes` (Segment's 32 KB).
    pub max_batch_bytes: usize,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        let kind = |kind: EventKind, action: Option<&str>| TrackKind { kind, action: action.map(str::to_owned) };
        let track = [
            ("Demo Requested", kind(EventKind::DemoRequest, None)),
            ("Ad Clicked", kind(EventKind::AdClick, None)),
            ("Email Delivered", kind(EventKind::Email, Some("delivered"))),
            ("Email Opened", kind(EventKind::Email, Some("open"))),
            ("Email Link Clicked", kind(EventKind::Email, Some("click"))),
            ("Email Replied", kind(EventKind::Email, Some("reply"))),
            ("Email Bounced", kind(EventKind::Email, Some("bounce"))),
            ("Unsubscribed", kind(EventKind::Email, Some("unsubscribe"))),
            ("Content Downloaded", kind(EventKind::ContentDownload, None)),
            ("Webinar Registered", kind(EventKind::Webinar, Some("registered"))),
            ("Webinar Attended", kind(EventKind::Webinar, Some("attended"))),
            ("Meeting Held", kind(EventKind::Meeting, None)),
        ]
        .into_iter()
        .map(|(name, kind)| (name.to_owned(), kind))
        .collect();
        SegmentConfig { enabled: true, track, max_batch_bytes: 512_000 }
    }
}

impl SegmentConfig {
    /// What is wrong with the section, if anything.
    pub fn check(&self) -> Result<(), String> {
        for (name, track) in &self.track {
            let at = format!("ingest.segment.track.{name:?}");
            match (track.kind, track.action.as_deref()) {
                (EventKind::Unknown, _) => {
                    return Err(format!("{at}: kind \"unknown\" scores nothing; leave the name out"));
                }
                (EventKind::Opportunity, _) => {
                    return Err(format!("{at}: CRM opportunities do not come from website trackers"));
                }
                (EventKind::Email | EventKind::Webinar, None) => {
                    return Err(format!("{at}: kind {} needs an action", track.kind.as_str()));
                }
                _ => {}
            }
        }
        if self.max_batch_bytes < 1024 {
            return Err("ingest.segment.max_batch_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

/// The message types, as named in the paths (`/v1/track`, short `/v1/t`) and in a batch's `type`.
pub const TYPES: [(&str, &str); 6] =
    [("track", "t"), ("page", "p"), ("screen", "s"), ("identify", "i"), ("group", "g"), ("alias", "a")];

/// The type a path segment names (`track` or `t`), if any.
pub fn type_of_path(segment: &str) -> Option<&'static str> {
    TYPES.iter().find(|(long, short)| *long == segment || *short == segment).map(|(long, _)| *long)
}

/// What one Segment message becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Translated {
    /// A native event (JSON of the README's event format) and its visitor, if it has one.
    Event { json: Vec<u8>, visitor: Option<String> },
    /// What the message says of its visitor (identify, group, alias).
    Identity(Visitor),
    /// A `track` whose event name maps to no kind (counted, not kept).
    Ignored { event: String },
    /// Not a message this API takes: why (kept in `abm.rejected` like any bad input).
    Invalid(Rejection),
}

/// The context a message arrived in.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The type the path names (`/v1/track`), for messages without a `type` of their own.
    pub path_type: Option<&'static str>,
    /// The batch's `sentAt`, for messages without their own.
    pub batch_sent_at: Option<&'a Value>,
    /// RudderStack's `AnonymousId` header, for messages without an `anonymousId`.
    pub anonymous_id: Option<&'a str>,
    /// A browser key sent it: no explicit account (`groupId`) or persona is taken from it.
    pub browser: bool,
    pub received_at: i64,
}

/// The messages of a body: a batch's `batch` (`/v1/batch`, `/v1/import`), else the body itself
/// (`/v1/track`, ...); and the write key the body carries (`writeKey`), if any.
pub fn messages(body: &Value) -> (Vec<&Value>, Option<&str>) {
    let write_key = body.get("writeKey").and_then(Value::as_str);
    match body.get("batch") {
        Some(Value::Array(batch)) => {
            let key = write_key.or_else(|| batch.iter().find_map(|m| m.get("writeKey").and_then(Value::as_str)));
            (batch.iter().collect(), key)
        }
        _ => (vec![body], write_key),
    }
}

fn text<'v>(object: &'v Map<String, Value>, field: &str) -> Option<&'v str> {
    object.get(field).and_then(Value::as_str).filter(|text| !text.is_empty())
}

/// A string id that may arrive as a number (Segment allows both for ids).
fn id(object: &Map<String, Value>, field: &str) -> Option<String> {
    match object.get(field) {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    }
}

fn path<'v>(value: &'v Value, keys: &[&str]) -> Option<&'v Value> {
    keys.iter().try_fold(value, |value, key| value.get(*key))
}

/// The visitor a message belongs to: its `anonymousId` (or the header's), else `user:<userId>`;
/// from a browser key, `web:` before it. Browsers choose these ids, so what a page says of a
/// visitor never reaches a visitor that server keys describe (a page cannot re-point a
/// backend's waiting events, nor inherit the account a backend's `group` gave).
pub fn visitor_of(message: &Map<String, Value>, envelope: &Envelope<'_>) -> Option<String> {
    let visitor = id(message, "anonymousId")
        .or_else(|| envelope.anonymous_id.filter(|id| !id.is_empty()).map(str::to_owned))
        .or_else(|| id(message, "userId").map(|user| format!("user:{user}")))?;
    namespaced(visitor, envelope)
}

/// `visitor` in the sender's namespace (`web:` for browser keys), if it is not too long.
fn namespaced(visitor: String, envelope: &Envelope<'_>) -> Option<String> {
    let visitor = if envelope.browser { format!("web:{visitor}") } else { visitor };
    (visitor.len() <= 256).then_some(visitor)
}

/// The host of a website (`https://www.acme.example/about` → `www.acme.example`).
fn host_of(website: &str) -> Option<String> {
    let rest = website.split_once("://").map_or(website, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?.split(':').next()?.trim();
    (!host.is_empty()).then(|| host.to_lowercase())
}

/// Translates one message.
pub fn translate(message: &Value, envelope: &Envelope<'_>, config: &SegmentConfig) -> Translated {
    let Value::Object(object) = message else {
        return invalid(RejectReason::MalformedJson, "a Segment message must be a JSON object");
    };
    let kind = text(object, "type").or(envelope.path_type).unwrap_or_default();
    let Some(kind) = type_of_path(kind) else {
        return invalid(
            RejectReason::UnknownKind,
            format!("type {kind:?} is not one of track, page, screen, identify, group, alias"),
        );
    };
    let visitor = visitor_of(object, envelope);
    match kind {
        "identify" | "group" | "alias" => identity(kind, object, visitor, envelope),
        _ => event(kind, object, message, visitor, envelope, config),
    }
}

fn identity(kind: &str, object: &Map<String, Value>, visitor: Option<String>, envelope: &Envelope<'_>) -> Translated {
    let traits = object.get("traits").and_then(Value::as_object);
    let trait_text = |field: &str| traits.and_then(|t| text(t, field)).map(str::to_owned);
    let mut observed = Visitor { updated_at: envelope.received_at, ..Visitor::default() };
    match kind {
        "identify" => {
            observed.user_id = id(object, "userId");
            let contact = Contact {
                contact_id: observed.user_id.clone(),
                email: trait_text("email").map(|email| email.trim().to_lowercase()),
                title: trait_text("title"),
                persona: if envelope.browser { None } else { trait_text("persona") },
            };
            if contact != Contact::default() {
                observed.contact = Some(contact);
            }
        }
        "group" => {
            observed.user_id = id(object, "userId");
            if !envelope.browser {
                observed.account_id = id(object, "groupId");
            }
            observed.domain = trait_text("domain")
                .map(|domain| domain.trim().to_lowercase())
                .or_else(|| trait_text("website").as_deref().and_then(host_of));
        }
        _ => {
            // alias: the previous id's visitor is the user's.
            let Some(previous) = id(object, "previousId") else {
                return invalid(RejectReason::MissingField, "alias: previousId is required");
            };
            let Some(previous) = namespaced(previous, envelope) else {
                return invalid(RejectReason::InvalidField, "alias: previousId is longer than 256 bytes");
            };
            let Some(user) = id(object, "userId") else {
                return invalid(RejectReason::MissingField, "alias: userId is required");
            };
            observed.visitor_id = previous;
            observed.user_id = Some(user);
            return Translated::Identity(observed);
        }
    }
    match visitor {
        Some(visitor) => {
            observed.visitor_id = visitor;
            Translated::Identity(observed)
        }
        None => invalid(RejectReason::MissingField, format!("{kind}: anonymousId or userId is required")),
    }
}

fn event(
    kind: &str,
    object: &Map<String, Value>,
    message: &Value,
    visitor: Option<String>,
    envelope: &Envelope<'_>,
    config: &SegmentConfig,
) -> Translated {
    let properties = object.get("properties").and_then(Value::as_object);
    let property = |field: &str| properties.and_then(|p| p.get(field)).filter(|v| !v.is_null());
    let page = |field: &str| property(field).or_else(|| path(message, &["context", "page", field]));
    let (native_kind, native_properties) = match kind {
        "page" => (
            EventKind::WebVisit,
            json!({
                "url": page("url"),
                "referrer": page("referrer").filter(|r| r.as_str().is_some_and(|r| !r.is_empty())),
                "title": page("title").or_else(|| object.get("name")),
            }),
        ),
        "screen" => {
            let name = text(object, "name").or_else(|| property("name").and_then(Value::as_str)).unwrap_or("screen");
            (EventKind::WebVisit, json!({ "url": format!("app://{name}"), "title": name }))
        }
        _ => {
            let name = text(object, "event").unwrap_or_default();
            let Some(track) = config.track.get(name) else {
                return Translated::Ignored { event: name.chars().take(100).collect() };
            };
            let first = |fields: &[&str]| fields.iter().find_map(|field| property(field)).cloned();
            let campaign = path(message, &["context", "campaign"]);
            let properties = match track.kind {
                EventKind::DemoRequest => json!({ "form": first(&["form", "form_id"]).unwrap_or(json!(name)) }),
                EventKind::AdClick => json!({
                    "channel": first(&["channel", "source"]).or_else(|| campaign.and_then(|c| c.get("source")).cloned()),
                    "campaign": first(&["campaign", "campaign_name"]).or_else(|| campaign.and_then(|c| c.get("name")).cloned()),
                    "creative": first(&["creative", "ad_id"]).or_else(|| campaign.and_then(|c| c.get("content")).cloned()),
                }),
                EventKind::Email => json!({
                    "action": track.action,
                    "campaign": first(&["campaign", "campaign_name", "email_subject"]),
                }),
                EventKind::ContentDownload => json!({ "asset": first(&["asset", "name", "title", "url"]) }),
                EventKind::Webinar => {
                    json!({ "webinar_id": first(&["webinar_id", "webinar_name", "name"]), "action": track.action })
                }
                EventKind::Meeting => json!({ "meeting_id": first(&["meeting_id", "id"]).unwrap_or(json!(name)) }),
                EventKind::Intent => json!({ "topic": first(&["topic"]), "strength": first(&["strength"]) }),
                EventKind::WebVisit => {
                    json!({ "url": page("url"), "referrer": page("referrer"), "title": page("title") })
                }
                EventKind::Opportunity | EventKind::Unknown => {
                    return invalid(
                        RejectReason::UnknownKind,
                        format!("track {name:?} maps to kind {}", track.kind.as_str()),
                    );
                }
            };
            (track.kind, properties)
        }
    };
    let mut native = Map::new();
    if let Some(message_id) = id(object, "messageId") {
        native.insert("event_id".into(), json!(message_id));
    }
    native.insert("kind".into(), json!(native_kind.as_str()));
    let occurred_at = object
        .get("originalTimestamp")
        .or_else(|| object.get("timestamp"))
        .filter(|value| !value.is_null())
        .cloned()
        .unwrap_or(json!(envelope.received_at));
    native.insert("occurred_at".into(), occurred_at);
    if let Some(sent_at) = object.get("sentAt").filter(|v| !v.is_null()).or(envelope.batch_sent_at) {
        native.insert("sent_at".into(), sent_at.clone());
    }
    let traits = object.get("traits").or_else(|| path(message, &["context", "traits"])).and_then(Value::as_object);
    let trait_text = |field: &str| traits.and_then(|t| text(t, field));
    let mut contact = Map::new();
    if let Some(user) = id(object, "userId") {
        contact.insert("id".into(), json!(user));
    }
    for field in ["email", "title"] {
        if let Some(value) = trait_text(field) {
            contact.insert(field.into(), json!(value));
        }
    }
    if !envelope.browser
        && let Some(persona) = trait_text("persona")
    {
        contact.insert("persona".into(), json!(persona));
    }
    if !contact.is_empty() {
        native.insert("contact".into(), Value::Object(contact));
    }
    if let Some(agent) = path(message, &["context", "userAgent"]) {
        native.insert("user_agent".into(), agent.clone());
    }
    // Drop nulls: an absent optional property is absent, not a null the validator refuses.
    let properties = match native_properties {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    };
    native.insert("properties".into(), properties);
    Translated::Event { json: serde_json::to_vec(&Value::Object(native)).unwrap_or_default(), visitor }
}

/// The answer to RudderStack's JavaScript SDK's `GET /sourceConfig/?writeKey=...`: a source
/// with no destinations, so the SDK sends everything to this collector.
pub fn source_config(write_key_name: &str) -> Value {
    json!({
        "isHosted": false,
        "source": {
            "id": format!("abm-{write_key_name}"),
            "name": format!("abm collector ({write_key_name})"),
            "enabled": true,
            "config": {},
            "destinations": [],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope<'static> {
        Envelope { path_type: None, batch_sent_at: None, anonymous_id: None, browser: false, received_at: 1_000 }
    }

    fn native(translated: Translated) -> (Value, Option<String>) {
        match translated {
            Translated::Event { json, visitor } => (serde_json::from_slice(&json).expect("JSON"), visitor),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn a_page_is_a_web_visit_with_its_context_page() {
        let message = json!({"type": "page", "messageId": "m1", "anonymousId": "a1", "name": "Pricing",
            "timestamp": "2026-12-01T10:00:00.000Z", "sentAt": "2026-12-01T10:00:01.000Z",
            "context": {"page": {"url": "https://vendor.example/pricing", "referrer": ""}, "userAgent": "Mozilla/5.0"}});
        let (event, visitor) = native(translate(&message, &envelope(), &SegmentConfig::default()));
        assert_eq!(visitor.as_deref(), Some("a1"));
        assert_eq!(
            event,
            json!({"event_id": "m1", "kind": "web_visit", "occurred_at": "2026-12-01T10:00:00.000Z",
                "sent_at": "2026-12-01T10:00:01.000Z", "user_agent": "Mozilla/5.0",
                "properties": {"url": "https://vendor.example/pricing", "title": "Pricing"}})
        );
    }

    #[test]
    fn track_names_map_to_kinds_and_unmapped_ones_are_ignored() {
        let config = SegmentConfig::default();
        let message = json!({"type": "track", "event": "Email Link Clicked", "userId": "u7",
            "properties": {"campaign_name": "Q4"}, "traits": {"email": "CFO@Acme.example", "title": "CFO"}});
        let (event, visitor) = native(translate(&message, &envelope(), &config));
        assert_eq!(visitor.as_deref(), Some("user:u7"));
        assert_eq!(event["kind"], "email");
        assert_eq!(event["properties"], json!({"action": "click", "campaign": "Q4"}));
        assert_eq!(event["contact"], json!({"id": "u7", "email": "CFO@Acme.example", "title": "CFO"}));
        let demo = json!({"type": "track", "event": "Demo Requested", "anonymousId": "a"});
        assert_eq!(native(translate(&demo, &envelope(), &config)).0["properties"], json!({"form": "Demo Requested"}));
        let other = json!({"type": "track", "event": "Button Clicked", "anonymousId": "a"});
        assert_eq!(translate(&other, &envelope(), &config), Translated::Ignored { event: "Button Clicked".into() });
    }

    #[test]
    fn identify_and_group_describe_the_visitor_and_a_browser_gives_no_account_or_persona() {
        let config = SegmentConfig::default();
        let identify = json!({"type": "identify", "anonymousId": "a1", "userId": 42,
            "traits": {"email": " VP@Acme.example ", "title": "VP Sales", "persona": "champion"}});
        let Translated::Identity(visitor) = translate(&identify, &envelope(), &config) else { panic!("identity") };
        assert_eq!((visitor.visitor_id.as_str(), visitor.user_id.as_deref()), ("a1", Some("42")));
        let contact = visitor.contact.expect("contact");
        assert_eq!(contact.email.as_deref(), Some("vp@acme.example"));
        assert_eq!(contact.persona.as_deref(), Some("champion"));
        let browser = Envelope { browser: true, ..envelope() };
        let Translated::Identity(visitor) = translate(&identify, &browser, &config) else { panic!("identity") };
        assert_eq!(visitor.contact.and_then(|c| c.persona), None);

        let group = json!({"type": "group", "anonymousId": "a1", "groupId": "acme",
            "traits": {"website": "https://www.Acme.example/about"}});
        let Translated::Identity(visitor) = translate(&group, &envelope(), &config) else { panic!("identity") };
        assert_eq!(
            (visitor.account_id.as_deref(), visitor.domain.as_deref()),
            (Some("acme"), Some("www.acme.example"))
        );
        let Translated::Identity(visitor) = translate(&group, &browser, &config) else { panic!("identity") };
        assert_eq!((visitor.account_id, visitor.domain.as_deref()), (None, Some("www.acme.example")));
        // A page's visitors are apart from the backend's: the same ids, another namespace.
        assert_eq!(visitor.visitor_id, "web:a1");
        let page = json!({"type": "page", "userId": "42", "properties": {"url": "https://v.example/"}});
        assert_eq!(native(translate(&page, &browser, &config)).1.as_deref(), Some("web:user:42"));
        assert_eq!(native(translate(&page, &envelope(), &config)).1.as_deref(), Some("user:42"));
    }

    #[test]
    fn batches_paths_and_headers_supply_what_messages_leave_out() {
        let body = json!({"batch": [{"type": "page", "properties": {"url": "https://v.example/"}}], "sentAt": 5, "writeKey": "wk"});
        let (messages, key) = messages(&body);
        assert_eq!((messages.len(), key), (1, Some("wk")));
        let header = Envelope { anonymous_id: Some("hdr"), batch_sent_at: body.get("sentAt"), ..envelope() };
        let (event, visitor) = native(translate(messages[0], &header, &SegmentConfig::default()));
        assert_eq!((visitor.as_deref(), &event["sent_at"]), (Some("hdr"), &json!(5)));
        let single = json!({"event": "Ad Clicked", "anonymousId": "a", "context": {"campaign": {"source": "linkedin", "name": "abm"}}});
        let path = Envelope { path_type: type_of_path("t"), ..envelope() };
        let (event, _) = native(translate(&single, &path, &SegmentConfig::default()));
        assert_eq!(event["properties"], json!({"channel": "linkedin", "campaign": "abm"}));
        let reason = |message: Value| match translate(&message, &envelope(), &SegmentConfig::default()) {
            Translated::Invalid(refusal) => refusal.reason,
            other => panic!("not invalid: {other:?}"),
        };
        assert_eq!(reason(json!({"type": "x"})), RejectReason::UnknownKind);
        assert_eq!(reason(json!({"type": "identify"})), RejectReason::MissingField);
        assert_eq!(reason(json!([1])), RejectReason::MalformedJson);
    }
}
