//! Validation and normalisation of one tracker event (JSON) into an `EngagementEvent`.
//!
//! Pure: no Kafka, no clock (the receive time is an argument). Every way an event can be bad
//! maps to one reason code of [`RejectReason`] and a message that says what and where.
//! The JSON format is documented in the README ("Event format").

use abm_schemas::{
    AdClick, Contact, ContentDownload, DemoRequest, EmailAction, EmailEvent, EngagementEvent, EventKind, Intent,
    Meeting, Opportunity, OpportunityStage, RejectReason, WebVisit, Webinar,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `[ingest.validation]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest accepted event, in bytes of JSON (default 32768).
    pub max_event_bytes: usize,
    /// Events more than this far in the future (after clock-skew correction) are rejected
    /// `too_far_in_future` (default 600000 ms = 10 minutes).
    pub max_future_ms: i64,
    /// Events older than this are rejected `too_old` (default 90 days).
    pub max_age_days: i64,
    /// Reject events whose `user_agent` contains one of `bot_user_agents` (default true).
    pub filter_bots: bool,
    /// Case-insensitive substrings of known bot user agents.
    pub bot_user_agents: Vec<String>,
    /// Email domains that never resolve to an account (consumer mail providers).
    pub free_mail_domains: Vec<String>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_event_bytes: 32 * 1024,
            max_future_ms: 10 * 60 * 1000,
            max_age_days: 90,
            filter_bots: true,
            bot_user_agents: [
                "bot",
                "crawler",
                "spider",
                "slurp",
                "headlesschrome",
                "phantomjs",
                "facebookexternalhit",
                "bingpreview",
                "lighthouse",
                "pingdom",
                "uptimerobot",
                "python-requests",
                "curl/",
                "wget/",
                "go-http-client",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            free_mail_domains: [
                "gmail.com",
                "googlemail.com",
                "yahoo.com",
                "ymail.com",
                "hotmail.com",
                "outlook.com",
                "live.com",
                "msn.com",
                "aol.com",
                "icloud.com",
                "me.com",
                "mac.com",
                "proton.me",
                "protonmail.com",
                "gmx.com",
                "gmx.de",
                "gmx.net",
                "web.de",
                "mail.com",
                "mail.ru",
                "yandex.ru",
                "yandex.com",
                "qq.com",
                "163.com",
                "126.com",
                "zoho.com",
                "fastmail.com",
                "hey.com",
                "tutanota.com",
                "orange.fr",
                "free.fr",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

/// Why one event was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
    pub event_id: Option<String>,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Rejection {
        Rejection { reason, message: message.into(), event_id: None }
    }
}

/// Where an event came from, and when it arrived.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    /// `http:<write key name>` or `kafka:<topic>`.
    pub source: &'a str,
    pub received_at: i64,
    /// The kind to assume when the event has none (raw topics are per kind).
    pub default_kind: Option<EventKind>,
    /// What the sender may send (a browser key's scope is narrower).
    pub scope: crate::keys::Scope<'a>,
}

/// Reason codes as spelled in metrics and API responses.
pub fn reason_code(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::Other => "other",
        RejectReason::MalformedJson => "malformed_json",
        RejectReason::UnknownKind => "unknown_kind",
        RejectReason::MissingField => "missing_field",
        RejectReason::InvalidField => "invalid_field",
        RejectReason::BadTimestamp => "bad_timestamp",
        RejectReason::TooFarInFuture => "too_far_in_future",
        RejectReason::TooOld => "too_old",
        RejectReason::Oversized => "oversized",
        RejectReason::Bot => "bot",
        RejectReason::NotAllowed => "not_allowed",
    }
}

/// Every reason code ingest can give, for docs and tests.
pub const REASONS: [RejectReason; 10] = [
    RejectReason::MalformedJson,
    RejectReason::UnknownKind,
    RejectReason::MissingField,
    RejectReason::InvalidField,
    RejectReason::BadTimestamp,
    RejectReason::TooFarInFuture,
    RejectReason::TooOld,
    RejectReason::Oversized,
    RejectReason::Bot,
    RejectReason::NotAllowed,
];

/// The kinds an event may name, for error messages: `web_visit, ad_click, ...`.
fn known_kinds() -> String {
    let kinds: Vec<&str> =
        EventKind::ALL.into_iter().filter(|kind| *kind != EventKind::Unknown).map(EventKind::as_str).collect();
    kinds.join(", ")
}

fn parse_kind(text: &str) -> Option<EventKind> {
    EventKind::ALL.into_iter().find(|kind| *kind != EventKind::Unknown && kind.as_str() == text)
}

/// Parses an RFC 3339 string or an integer of epoch milliseconds.
fn parse_time(value: &Value, field: &str) -> Result<i64, Rejection> {
    let bad = |detail: &str| Rejection::new(RejectReason::BadTimestamp, format!("{field}: {detail}"));
    match value {
        Value::Number(number) => match number.as_i64() {
            Some(ms) if (0..=253_402_300_799_999).contains(&ms) => Ok(ms),
            _ => Err(bad("epoch milliseconds must be a non-negative integer before year 10000")),
        },
        Value::String(text) => {
            let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| bad(&format!("{text:?} is not RFC 3339 ({e})")))?;
            Ok((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        _ => Err(bad("must be an RFC 3339 string or epoch milliseconds")),
    }
}

fn optional_string(object: &Map<String, Value>, field: &str, path: &str) -> Result<Option<String>, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.len() <= 2048 => Ok(Some(text.clone())),
        Some(Value::String(_)) => {
            Err(Rejection::new(RejectReason::InvalidField, format!("{path}{field}: longer than 2048 bytes")))
        }
        Some(_) => Err(Rejection::new(RejectReason::InvalidField, format!("{path}{field}: must be a string"))),
    }
}

fn required_string(object: &Map<String, Value>, field: &str, path: &str) -> Result<String, Rejection> {
    match optional_string(object, field, path)? {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(Rejection::new(RejectReason::MissingField, format!("{path}{field} is required"))),
    }
}

/// Two FNV-1a 64 hashes of `bytes` as hex (128 bits): a deterministic id for events that carry none.
fn derived_id(bytes: &[u8]) -> String {
    use abm_schemas::hash::{FNV64_OFFSET_BASIS, fnv1a_64_from};
    // Two 64-bit FNV-1a hashes from two bases (the second a fixed constant) make 128 bits.
    format!("d-{:016x}{:016x}", fnv1a_64_from(FNV64_OFFSET_BASIS, bytes), fnv1a_64_from(0x6c62_272e_07bb_0142, bytes))
}

/// Validates one event. On success the event has every field but the account resolution.
pub fn validate(raw: &[u8], arrival: &Arrival<'_>, config: &ValidationConfig) -> Result<EngagementEvent, Rejection> {
    if raw.len() > config.max_event_bytes {
        return Err(Rejection::new(
            RejectReason::Oversized,
            format!(
                "event is {} bytes; the limit is {} (ingest.validation.max_event_bytes)",
                raw.len(),
                config.max_event_bytes
            ),
        ));
    }
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, format!("not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Rejection::new(RejectReason::MalformedJson, "an event must be a JSON object"));
    };
    let event_id = match object.get("event_id") {
        None | Some(Value::Null) => {
            // Deterministic: the same event sent again (even with a new sent_at) gets the same id.
            let mut canonical = object.clone();
            canonical.remove("sent_at");
            derived_id(&serde_json::to_vec(&canonical).unwrap_or_default())
        }
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 256 => id.clone(),
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "event_id: must be a non-empty string of at most 256 bytes",
            ));
        }
    };
    let event = validate_object(&object, &event_id, arrival, config).and_then(|event| {
        arrival.scope.allows(&event)?;
        Ok(event)
    });
    event.map_err(|mut rejection| {
        rejection.event_id = Some(event_id.clone());
        rejection
    })
}

fn validate_object(
    object: &Map<String, Value>,
    event_id: &str,
    arrival: &Arrival<'_>,
    config: &ValidationConfig,
) -> Result<EngagementEvent, Rejection> {
    let kind = match object.get("kind") {
        None | Some(Value::Null) => {
            arrival.default_kind.ok_or_else(|| Rejection::new(RejectReason::MissingField, "kind is required"))?
        }
        Some(Value::String(text)) => parse_kind(text).ok_or_else(|| {
            Rejection::new(RejectReason::UnknownKind, format!("kind {text:?} is not one of {}", known_kinds()))
        })?,
        Some(_) => return Err(Rejection::new(RejectReason::InvalidField, "kind: must be a string")),
    };

    let occurred_at = match object.get("occurred_at") {
        None | Some(Value::Null) => return Err(Rejection::new(RejectReason::MissingField, "occurred_at is required")),
        Some(value) => parse_time(value, "occurred_at")?,
    };
    // Clock-skew correction (as Segment and Snowplow do): shift by received_at - sent_at.
    let occurred_at = match object.get("sent_at") {
        None | Some(Value::Null) => occurred_at,
        Some(value) => occurred_at.saturating_add(arrival.received_at - parse_time(value, "sent_at")?),
    };
    if occurred_at > arrival.received_at + config.max_future_ms {
        return Err(Rejection::new(
            RejectReason::TooFarInFuture,
            format!(
                "occurred_at is {} s after it was received (limit {} s, ingest.validation.max_future_ms)",
                (occurred_at - arrival.received_at) / 1000,
                config.max_future_ms / 1000
            ),
        ));
    }
    if occurred_at < arrival.received_at - config.max_age_days * 86_400_000 {
        return Err(Rejection::new(
            RejectReason::TooOld,
            format!(
                "occurred_at is {} days before it was received (limit {} days, ingest.validation.max_age_days)",
                (arrival.received_at - occurred_at) / 86_400_000,
                config.max_age_days
            ),
        ));
    }

    if let Some(agent) = optional_string(object, "user_agent", "")?
        && config.filter_bots
    {
        let lower = agent.to_lowercase();
        if let Some(pattern) = config.bot_user_agents.iter().find(|p| lower.contains(&p.to_lowercase())) {
            return Err(Rejection::new(RejectReason::Bot, format!("user_agent matches the bot pattern {pattern:?}")));
        }
    }

    let mut event = EngagementEvent::new(event_id, kind, occurred_at, arrival.source);
    event.received_at = arrival.received_at;
    event.account_id = optional_string(object, "account_id", "")?.filter(|id| !id.is_empty());
    if event.account_id.as_deref().is_some_and(|id| id.chars().any(char::is_control)) {
        return Err(Rejection::new(RejectReason::InvalidField, "account_id: must not contain control characters"));
    }
    event.domain = optional_string(object, "domain", "")?.map(|d| normalise_domain(&d)).filter(|d| !d.is_empty());
    event.contact = match object.get("contact") {
        None | Some(Value::Null) => None,
        Some(Value::Object(contact)) => {
            let email = optional_string(contact, "email", "contact.")?.map(|e| e.trim().to_lowercase());
            if let Some(email) = &email
                && email_domain(email).is_none()
            {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!("contact.email: {email:?} is not an email address"),
                ));
            }
            Some(Contact {
                contact_id: optional_string(contact, "id", "contact.")?,
                email,
                title: optional_string(contact, "title", "contact.")?,
                persona: optional_string(contact, "persona", "contact.")?,
            })
        }
        Some(_) => return Err(Rejection::new(RejectReason::InvalidField, "contact: must be an object")),
    };

    let empty = Map::new();
    let properties = match object.get("properties") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(properties)) => properties,
        Some(_) => return Err(Rejection::new(RejectReason::InvalidField, "properties: must be an object")),
    };
    let p = "properties.";
    match kind {
        EventKind::WebVisit => {
            event.web_visit = Some(WebVisit {
                url: required_string(properties, "url", p)?,
                referrer: optional_string(properties, "referrer", p)?,
                title: optional_string(properties, "title", p)?,
            });
        }
        EventKind::AdClick => {
            event.ad_click = Some(AdClick {
                channel: required_string(properties, "channel", p)?.to_lowercase(),
                campaign: optional_string(properties, "campaign", p)?,
                creative: optional_string(properties, "creative", p)?,
            });
        }
        EventKind::Email => {
            let action = required_string(properties, "action", p)?;
            let action = match action.as_str() {
                "delivered" => EmailAction::Delivered,
                "open" => EmailAction::Open,
                "click" => EmailAction::Click,
                "reply" => EmailAction::Reply,
                "bounce" => EmailAction::Bounce,
                "unsubscribe" => EmailAction::Unsubscribe,
                other => {
                    return Err(Rejection::new(
                        RejectReason::InvalidField,
                        format!(
                            "properties.action {other:?} is not one of delivered, open, click, reply, bounce, unsubscribe"
                        ),
                    ));
                }
            };
            event.email = Some(EmailEvent { action, campaign: optional_string(properties, "campaign", p)? });
        }
        EventKind::DemoRequest => {
            event.demo_request = Some(DemoRequest { form: required_string(properties, "form", p)? })
        }
        EventKind::ContentDownload => {
            event.content_download = Some(ContentDownload { asset: required_string(properties, "asset", p)? });
        }
        EventKind::Webinar => {
            event.webinar = Some(Webinar {
                webinar_id: required_string(properties, "webinar_id", p)?,
                action: required_string(properties, "action", p)?,
            });
        }
        EventKind::Meeting => {
            event.meeting = Some(Meeting { meeting_id: required_string(properties, "meeting_id", p)? })
        }
        EventKind::Intent => {
            let topic = required_string(properties, "topic", p)?;
            let strength = match properties.get("strength") {
                None | Some(Value::Null) => {
                    return Err(Rejection::new(RejectReason::MissingField, "properties.strength is required"));
                }
                Some(Value::Number(n)) => n.as_f64().filter(|s| (0.0..=1.0).contains(s)).ok_or_else(|| {
                    Rejection::new(RejectReason::InvalidField, "properties.strength: must be a number from 0 to 1")
                })?,
                Some(_) => {
                    return Err(Rejection::new(
                        RejectReason::InvalidField,
                        "properties.strength: must be a number from 0 to 1",
                    ));
                }
            };
            event.intent = Some(Intent { topic, strength });
        }
        EventKind::Opportunity => event.opportunity = Some(opportunity(properties)?),
        EventKind::Unknown => return Err(Rejection::new(RejectReason::UnknownKind, "kind unknown")),
    }
    Ok(event)
}

/// An `opportunity`'s properties: `opportunity_id`, `stage` (open, closed_won, closed_lost),
/// optional `stage_name`, `amount` (a finite number, not negative) and `currency` (three
/// letters, ISO 4217; upper-cased).
fn opportunity(properties: &Map<String, Value>) -> Result<Opportunity, Rejection> {
    let p = "properties.";
    let opportunity_id = required_string(properties, "opportunity_id", p)?;
    let stage = match required_string(properties, "stage", p)?.as_str() {
        "open" => OpportunityStage::Open,
        "closed_won" => OpportunityStage::ClosedWon,
        "closed_lost" => OpportunityStage::ClosedLost,
        other => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("properties.stage {other:?} is not one of open, closed_won, closed_lost"),
            ));
        }
    };
    let amount = match properties.get("amount") {
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectReason::MissingField, "properties.amount is required"));
        }
        Some(Value::Number(n)) => n.as_f64().filter(|a| a.is_finite() && *a >= 0.0),
        Some(_) => None,
    }
    .ok_or_else(|| Rejection::new(RejectReason::InvalidField, "properties.amount: must be a number, 0 or more"))?;
    let currency = required_string(properties, "currency", p)?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("properties.currency {currency:?} is not a three-letter ISO 4217 code"),
        ));
    }
    Ok(Opportunity {
        opportunity_id,
        stage,
        stage_name: optional_string(properties, "stage_name", p)?,
        amount,
        currency: currency.to_ascii_uppercase(),
    })
}

/// Lower-case, without a leading `www.` or trailing dot.
pub fn normalise_domain(domain: &str) -> String {
    let lower = domain.trim().trim_end_matches('.').to_lowercase();
    lower.strip_prefix("www.").map(str::to_owned).unwrap_or(lower)
}

/// The domain of an email address, if it looks like one.
pub fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.rsplit_once('@')?;
    (!local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.contains(char::is_whitespace))
        .then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn arrival() -> Arrival<'static> {
        Arrival { source: "http:test", received_at: NOW, default_kind: None, scope: crate::keys::Scope::Server }
    }

    fn check(json: &str) -> Result<EngagementEvent, Rejection> {
        validate(json.as_bytes(), &arrival(), &ValidationConfig::default())
    }

    fn reason(json: &str) -> RejectReason {
        check(json).expect_err("should be rejected").reason
    }

    #[test]
    fn a_full_web_visit_is_accepted_and_normalised() {
        let event = check(
            r#"{"event_id":"e1","kind":"web_visit","occurred_at":"2023-11-14T22:13:19Z","domain":"WWW.Acme.com",
               "contact":{"id":"c1","email":"Jane@Acme.com","title":"CFO"},"properties":{"url":"https://v.example/pricing"}}"#,
        )
        .expect("accepted");
        assert_eq!(event.event_id, "e1");
        assert_eq!(event.kind, EventKind::WebVisit);
        assert_eq!(event.occurred_at, 1_699_999_999_000);
        assert_eq!(event.received_at, NOW);
        assert_eq!(event.domain.as_deref(), Some("acme.com"));
        assert_eq!(event.contact.as_ref().and_then(|c| c.email.as_deref()), Some("jane@acme.com"));
        assert_eq!(event.web_visit.as_ref().map(|w| w.url.as_str()), Some("https://v.example/pricing"));
    }

    #[test]
    fn every_reason_code_has_a_trigger() {
        let ok_props = r#""properties":{"url":"/"}"#;
        assert_eq!(reason("{not json"), RejectReason::MalformedJson);
        assert_eq!(reason("[1,2]"), RejectReason::MalformedJson);
        assert_eq!(reason(&format!(r#"{{"kind":"fax","occurred_at":{NOW}}}"#)), RejectReason::UnknownKind);
        assert_eq!(reason(&format!(r#"{{"occurred_at":{NOW},{ok_props}}}"#)), RejectReason::MissingField);
        assert_eq!(reason(&format!(r#"{{"kind":"web_visit","occurred_at":{NOW}}}"#)), RejectReason::MissingField);
        assert_eq!(reason(r#"{"kind":"web_visit","properties":{"url":"/"}}"#), RejectReason::MissingField);
        assert_eq!(
            reason(&format!(r#"{{"kind":"web_visit","occurred_at":{NOW},"contact":{{"email":"nope"}},{ok_props}}}"#)),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(&format!(r#"{{"kind":"email","occurred_at":{NOW},"properties":{{"action":"forward"}}}}"#)),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(&format!(r#"{{"kind":"web_visit","occurred_at":"yesterday",{ok_props}}}"#)),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(&format!(r#"{{"kind":"web_visit","occurred_at":{},{ok_props}}}"#, NOW + 3_600_000)),
            RejectReason::TooFarInFuture
        );
        assert_eq!(
            reason(&format!(r#"{{"kind":"web_visit","occurred_at":{},{ok_props}}}"#, NOW - 91 * 86_400_000)),
            RejectReason::TooOld
        );
        let big =
            format!(r#"{{"kind":"web_visit","occurred_at":{NOW},"properties":{{"url":"/{}"}}}}"#, "x".repeat(40_000));
        assert_eq!(reason(&big), RejectReason::Oversized);
        assert_eq!(
            reason(&format!(
                r#"{{"kind":"web_visit","occurred_at":{NOW},"user_agent":"Mozilla/5.0 (compatible; Googlebot/2.1)",{ok_props}}}"#
            )),
            RejectReason::Bot
        );
    }

    #[test]
    fn an_opportunity_is_accepted_and_normalised_and_every_bad_property_has_a_reason() {
        let event = check(&format!(
            r#"{{"event_id":"o1","kind":"opportunity","occurred_at":{NOW},"account_id":"acc-1","properties":
               {{"opportunity_id":"006A","stage":"closed_won","stage_name":"Closed Won","amount":48000.5,"currency":"eur"}}}}"#
        ))
        .expect("accepted");
        assert_eq!(event.kind, EventKind::Opportunity);
        assert_eq!(
            event.opportunity,
            Some(Opportunity {
                opportunity_id: "006A".into(),
                stage: OpportunityStage::ClosedWon,
                stage_name: Some("Closed Won".into()),
                amount: 48_000.5,
                currency: "EUR".into(),
            })
        );
        let with =
            |properties: &str| format!(r#"{{"kind":"opportunity","occurred_at":{NOW},"properties":{{{properties}}}}}"#);
        let ok = r#""opportunity_id":"o","stage":"open","amount":0,"currency":"USD""#;
        assert!(check(&with(ok)).is_ok(), "amount 0 and no stage_name are fine");
        for (properties, expected) in [
            (r#""stage":"open","amount":1,"currency":"USD""#, RejectReason::MissingField),
            (r#""opportunity_id":"o","amount":1,"currency":"USD""#, RejectReason::MissingField),
            (r#""opportunity_id":"o","stage":"won","amount":1,"currency":"USD""#, RejectReason::InvalidField),
            (r#""opportunity_id":"o","stage":"other","amount":1,"currency":"USD""#, RejectReason::InvalidField),
            (r#""opportunity_id":"o","stage":"open","currency":"USD""#, RejectReason::MissingField),
            (r#""opportunity_id":"o","stage":"open","amount":-1,"currency":"USD""#, RejectReason::InvalidField),
            (r#""opportunity_id":"o","stage":"open","amount":"100","currency":"USD""#, RejectReason::InvalidField),
            (r#""opportunity_id":"o","stage":"open","amount":1e999,"currency":"USD""#, RejectReason::InvalidField),
            (r#""opportunity_id":"o","stage":"open","amount":1"#, RejectReason::MissingField),
            (r#""opportunity_id":"o","stage":"open","amount":1,"currency":"US""#, RejectReason::InvalidField),
            (r#""opportunity_id":"o","stage":"open","amount":1,"currency":"U$D""#, RejectReason::InvalidField),
            (
                r#""opportunity_id":"o","stage":"open","amount":1,"currency":"USD","stage_name":7"#,
                RejectReason::InvalidField,
            ),
        ] {
            let json = with(properties);
            // 1e999 is not valid JSON for serde_json (out of range): malformed, still refused.
            let got = reason(&json);
            if properties.contains("1e999") {
                assert!(
                    matches!(got, RejectReason::InvalidField | RejectReason::MalformedJson),
                    "{properties}: {got:?}"
                );
            } else {
                assert_eq!(got, expected, "{properties}");
            }
        }
    }

    #[test]
    fn sent_at_corrects_the_sender_clock() {
        // The sender's clock is 1 hour behind: it says it sent at NOW - 1h, we received at NOW.
        let event = check(&format!(
            r#"{{"kind":"web_visit","occurred_at":{},"sent_at":{},"properties":{{"url":"/"}}}}"#,
            NOW - 3_600_000 - 5_000,
            NOW - 3_600_000
        ))
        .expect("accepted");
        assert_eq!(event.occurred_at, NOW - 5_000);
    }

    #[test]
    fn missing_event_ids_are_derived_deterministically_ignoring_sent_at() {
        let a =
            check(&format!(r#"{{"kind":"web_visit","occurred_at":{NOW},"sent_at":{NOW},"properties":{{"url":"/"}}}}"#))
                .expect("ok");
        let b = check(&format!(
            r#"{{"sent_at":{},"occurred_at":{NOW},"properties":{{"url":"/"}},"kind":"web_visit"}}"#,
            NOW - 7
        ))
        .expect("ok");
        let c =
            check(&format!(r#"{{"kind":"web_visit","occurred_at":{NOW},"properties":{{"url":"/x"}}}}"#)).expect("ok");
        assert!(a.event_id.starts_with("d-"));
        assert_eq!(a.event_id, b.event_id, "same content, other key order and sent_at: same id");
        assert_ne!(a.event_id, c.event_id);
    }

    #[test]
    fn raw_topics_supply_the_kind() {
        let arrival = Arrival {
            source: "kafka:abm.raw.ad-clicks",
            received_at: NOW,
            default_kind: Some(EventKind::AdClick),
            scope: crate::keys::Scope::Server,
        };
        let event = validate(
            format!(r#"{{"occurred_at":{NOW},"properties":{{"channel":"LinkedIn"}}}}"#).as_bytes(),
            &arrival,
            &ValidationConfig::default(),
        )
        .expect("accepted");
        assert_eq!(event.kind, EventKind::AdClick);
        assert_eq!(event.ad_click.map(|a| a.channel).as_deref(), Some("linkedin"));
    }
}
