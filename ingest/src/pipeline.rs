//! From a received body (HTTP) or record (raw topic) to the Kafka records to write, and a
//! result per event. Pure apart from reading the TAL index: the service writes the records.

use abm_schemas::{EngagementEvent, RejectReason, RejectSource, RejectedEvent};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::resolve::{Resolution, TalIndex};
use crate::validate::{Arrival, Rejection, ValidationConfig, reason_code, validate};

/// Rejected originals are kept up to this size (Kafka's default message limit is 1 MB).
pub const MAX_KEPT_ORIGINAL: usize = 512 * 1024;

/// One event of a batch, as bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Item<'a> {
    pub raw: &'a [u8],
    /// Set when the batch framing itself is broken (then `raw` is the whole body).
    pub framing_error: Option<String>,
    /// Set when the event is refused before validation, with its reason (a Segment message
    /// this API does not take).
    pub refused: Option<Rejection>,
    /// The visitor the event belongs to (a Segment message's anonymousId): when it does not
    /// resolve to an account, it waits for its visitor's identity (`abm.identity`) instead of
    /// going to `abm.unresolved`.
    pub visitor: Option<&'a str>,
    /// What to keep when the event is rejected, when `raw` is a translation of it (a Segment
    /// message); `raw` itself otherwise.
    pub original: Option<&'a [u8]>,
}

impl<'a> Item<'a> {
    pub fn of(raw: &'a [u8]) -> Item<'a> {
        Item { raw, ..Item::default() }
    }
}

/// Splits a body into events: a JSON array, a single JSON object, or NDJSON (one per line).
pub fn split(body: &[u8]) -> Vec<Item<'_>> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Vec::new();
    }
    if trimmed[0] == b'[' {
        return match serde_json::from_slice::<Vec<&RawValue>>(trimmed) {
            Ok(elements) => {
                // Each RawValue borrows from `trimmed`: find it to keep the original bytes.
                elements
                    .into_iter()
                    .map(|raw| {
                        let text = raw.get().as_bytes();
                        let start = text.as_ptr() as usize - trimmed.as_ptr() as usize;
                        Item::of(&trimmed[start..start + text.len()])
                    })
                    .collect()
            }
            Err(error) => {
                vec![Item {
                    framing_error: Some(format!("the batch is not a valid JSON array: {error}")),
                    ..Item::of(body)
                }]
            }
        };
    }
    if trimmed[0] == b'{' && serde_json::from_slice::<&RawValue>(trimmed).is_ok() {
        return vec![Item::of(trimmed)];
    }
    trimmed
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.trim_ascii().is_empty())
        .map(Item::of)
        .collect()
}

/// Where a validated event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Engaged,
    Unresolved,
    /// Waiting for its visitor's identity (`abm.identity`, then the stitcher).
    Pending,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Engaged => "engaged",
            Destination::Unresolved => "unresolved",
            Destination::Pending => "pending",
        }
    }
}

/// The result for one event, as reported to the sender.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventResult {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Which topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Engagement,
    Unresolved,
    Rejected,
    /// `abm.identity`: a visitor's observation (a [`abm_schemas::Visitor`]).
    Identity,
}

/// A record to write: topic role, key, Avro payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub output: Output,
    pub key: String,
    pub payload: Vec<u8>,
}

/// What a batch turned into.
#[derive(Debug, Default)]
pub struct Prepared {
    pub results: Vec<EventResult>,
    pub records: Vec<Record>,
}

impl Prepared {
    pub fn accepted(&self) -> usize {
        self.results.iter().filter(|r| r.status == "accepted").count()
    }
    pub fn count(&self, destination: Destination) -> usize {
        self.results.iter().filter(|r| r.destination == Some(destination)).count()
    }
    pub fn rejected(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.results.iter().filter_map(|r| r.reason)
    }
}

/// Validates, resolves and encodes every item. `source` describes where the batch came from;
/// rejected events keep their original bytes, the source and their position.
pub fn prepare(
    items: &[Item<'_>],
    arrival: &Arrival<'_>,
    source: &RejectSource,
    config: &ValidationConfig,
    tal: &TalIndex,
) -> Result<Prepared, abm_schemas::EncodeError> {
    let mut prepared = Prepared::default();
    for (index, item) in items.iter().enumerate() {
        let outcome = match (&item.framing_error, &item.refused) {
            (Some(message), _) => {
                Err(Rejection { reason: RejectReason::MalformedJson, message: message.clone(), event_id: None })
            }
            (None, Some(refused)) => Err(refused.clone()),
            (None, None) => validate(item.raw, arrival, config),
        };
        match outcome {
            Ok(event) => accept(&mut prepared, index, event, item.visitor, arrival.received_at, tal)?,
            Err(rejection) => {
                let mut source = source.clone();
                if source.batch_index.is_some() {
                    source.batch_index = Some(index as i32);
                }
                let whole = item.original.unwrap_or(item.raw);
                let original = &whole[..whole.len().min(MAX_KEPT_ORIGINAL)];
                let message = if original.len() < whole.len() {
                    format!("{} (original truncated to {} of {} bytes)", rejection.message, original.len(), whole.len())
                } else {
                    rejection.message.clone()
                };
                let record = RejectedEvent {
                    reason: rejection.reason,
                    message,
                    source,
                    event_id: rejection.event_id.clone(),
                    received_at: arrival.received_at,
                    original: original.to_vec(),
                };
                prepared.records.push(Record {
                    output: Output::Rejected,
                    key: arrival.source.to_owned(),
                    payload: abm_schemas::encode(&record)?,
                });
                prepared.results.push(EventResult {
                    index,
                    event_id: rejection.event_id,
                    status: "rejected",
                    destination: None,
                    reason: Some(reason_code(rejection.reason)),
                    message: Some(rejection.message),
                });
            }
        }
    }
    Ok(prepared)
}

fn accept(
    prepared: &mut Prepared,
    index: usize,
    mut event: EngagementEvent,
    visitor: Option<&str>,
    received_at: i64,
    tal: &TalIndex,
) -> Result<(), abm_schemas::EncodeError> {
    let (output, destination, key, payload) = match (tal.resolve(&mut event), visitor) {
        (Resolution::Account(account), _) => {
            (Output::Engagement, Destination::Engaged, account, abm_schemas::encode(&event)?)
        }
        (Resolution::Unresolved(_), Some(visitor)) => {
            let observed = abm_schemas::Visitor::waiting(visitor, abm_schemas::encode(&event)?, received_at);
            (Output::Identity, Destination::Pending, visitor.to_owned(), abm_schemas::encode(&observed)?)
        }
        (Resolution::Unresolved(key), None) => {
            (Output::Unresolved, Destination::Unresolved, key, abm_schemas::encode(&event)?)
        }
    };
    prepared.records.push(Record { output, key, payload });
    prepared.results.push(EventResult {
        index,
        event_id: Some(event.event_id),
        status: "accepted",
        destination: Some(destination),
        reason: None,
        message: None,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_single_objects_and_ndjson_split_into_events() {
        let raws = |body: &str| {
            split(body.as_bytes()).into_iter().map(|i| String::from_utf8_lossy(i.raw).into_owned()).collect::<Vec<_>>()
        };
        assert_eq!(raws(r#" [ {"a":1} , {"b":[2]} ] "#), vec![r#"{"a":1}"#, r#"{"b":[2]}"#]);
        assert_eq!(raws("{\n  \"a\": 1\n}\n"), vec!["{\n  \"a\": 1\n}"]);
        assert_eq!(raws("{\"a\":1}\r\n\n{\"b\":2}\nnot json\n"), vec![r#"{"a":1}"#, r#"{"b":2}"#, "not json"]);
        assert!(split(b"  \n ").is_empty());
        let broken = split(b"[{\"a\":1},");
        assert_eq!(broken.len(), 1);
        assert!(broken[0].framing_error.is_some());
    }
}
