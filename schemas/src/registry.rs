//! Confluent's wire format: the schema ids of a Confluent-compatible schema registry.
//!
//! A Confluent-framed message is `00 | 4-byte big-endian schema id | datum`; the id names the
//! writer schema in a registry. This module is the process's view of that registry, in two
//! halves:
//!
//! - **Writing**: [`write_confluent`] records, once at start-up, that a topic is written in
//!   Confluent framing with a given id (the id under which the record's schema was registered
//!   as `<topic>-value`); [`frame_for`], where messages are sent, then swaps the single-object
//!   header the codec wrote for `00 | id` (the datum is the same bytes in both framings).
//! - **Reading**: every reader accepts both framings. A registry id is looked up once, through
//!   the [`SchemaSource`] the service installs (an HTTP client of the registry, in the runtime),
//!   parsed, fingerprinted and kept; the codec then decodes the datum as it does a
//!   single-object message with that fingerprint, or resolves a writer schema it has never seen
//!   against its own (Avro schema resolution), as any registry-aware reader does.
//!
//! The ids of one registry are global to it, so one table serves every record type. It is
//! bounded ([`MAX_SCHEMAS`] schemas); an id the registry does not know is remembered as missing
//! for [`MISSING_RETRY`] so that a stream of bad ids cannot turn into a stream of lookups.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use apache_avro::Schema;

use crate::codec::{DecodeError, EncodeError, WriterId, fingerprint, split_header};

/// At most this many distinct writer schemas are kept (a real topic sees a handful).
pub const MAX_SCHEMAS: usize = 1024;
/// An id the registry said it does not know is not asked for again before this.
pub const MISSING_RETRY: Duration = Duration::from_secs(60);

/// Why a schema id could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The registry answered that it has no schema with this id (HTTP 404): the message is bad.
    #[error("the schema registry has no schema with id {0}")]
    NotFound(u32),
    /// The registry did not answer, or answered an error: the message may be fine, try again.
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
}

/// Where the text of a registered schema comes from. Called at most once per id (more only
/// after an error); may block for as long as the registry's timeout.
pub trait SchemaSource: Send + Sync + std::fmt::Debug {
    fn schema_text(&self, id: u32) -> Result<String, LookupError>;
}

/// A writer schema known by its registry id.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// CRC-64-AVRO fingerprint of the schema's canonical form (what single-object messages carry).
    pub fingerprint: u64,
    /// The parsed schema; kept for the life of the process (bounded by [`MAX_SCHEMAS`]).
    pub schema: &'static Schema,
}

#[derive(Default)]
struct Table {
    source: RwLock<Option<Arc<dyn SchemaSource>>>,
    known: RwLock<HashMap<u32, Known>>,
    missing: RwLock<HashMap<u32, Instant>>,
    /// Topic name → (schema id, fingerprint of the schema registered under it).
    writing: RwLock<HashMap<String, (u32, u64)>>,
    /// Whether any topic is written in Confluent framing: the single-object path skips the lookup.
    any_writing: AtomicBool,
}

static TABLE: LazyLock<Table> = LazyLock::new(Table::default);

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Installs the source of schema texts: without one, a Confluent-framed message whose id was
/// not [`learn`]ed is [`DecodeError::RegistryFramed`].
pub fn install(source: Arc<dyn SchemaSource>) {
    *write(&TABLE.source) = Some(source);
}

/// Records that the registry holds `schema_json` under `id` (at start-up: what the service
/// registered or prefetched), and returns its fingerprint.
pub fn learn(id: u32, schema_json: &str) -> Result<Known, String> {
    if let Some(known) = read(&TABLE.known).get(&id) {
        return Ok(*known);
    }
    let schema = Schema::parse_str(schema_json).map_err(|error| format!("schema id {id} does not parse: {error}"))?;
    let mut known = write(&TABLE.known);
    if let Some(existing) = known.get(&id) {
        return Ok(*existing);
    }
    if known.len() >= MAX_SCHEMAS {
        return Err(format!("more than {MAX_SCHEMAS} distinct writer schemas: schema id {id} is not kept"));
    }
    let entry = Known { fingerprint: fingerprint(&schema), schema: Box::leak(Box::new(schema)) };
    known.insert(id, entry);
    write(&TABLE.missing).remove(&id);
    Ok(entry)
}

/// The fingerprint of schema `id` if it is already known (no lookup): the hot path's check.
pub fn known_fingerprint(id: u32) -> Option<u64> {
    read(&TABLE.known).get(&id).map(|known| known.fingerprint)
}

/// The writer schema registered under `id`, looked up through the installed source if it is
/// not known yet. `record` names the record being decoded, for the error.
pub fn writer_schema(id: u32, record: &str) -> Result<Known, DecodeError> {
    if let Some(known) = read(&TABLE.known).get(&id) {
        return Ok(*known);
    }
    let Some(source) = read(&TABLE.source).clone() else {
        return Err(DecodeError::RegistryFramed { schema_id: id });
    };
    if read(&TABLE.missing).get(&id).is_some_and(|since| since.elapsed() < MISSING_RETRY) {
        return Err(DecodeError::UnknownRegistryId { record: record.to_owned(), schema_id: id });
    }
    match source.schema_text(id) {
        Ok(text) => learn(id, &text).map_err(|detail| DecodeError::Malformed { record: record.to_owned(), detail }),
        Err(LookupError::NotFound(_)) => {
            let mut missing = write(&TABLE.missing);
            if missing.len() >= MAX_SCHEMAS {
                missing.retain(|_, since| since.elapsed() < MISSING_RETRY);
            }
            if missing.len() < MAX_SCHEMAS {
                missing.insert(id, Instant::now());
            }
            Err(DecodeError::UnknownRegistryId { record: record.to_owned(), schema_id: id })
        }
        Err(LookupError::Unavailable(detail)) => {
            Err(DecodeError::RegistryUnavailable { record: record.to_owned(), schema_id: id, detail })
        }
    }
}

/// Records that `topic` is written in Confluent framing with schema `id`, whose schema has
/// `fingerprint` (the codec refuses to frame a record of another schema with it).
pub fn write_confluent(topic: &str, id: u32, fingerprint: u64) {
    write(&TABLE.writing).insert(topic.to_owned(), (id, fingerprint));
    TABLE.any_writing.store(true, Ordering::Release);
}

/// The schema id and fingerprint `topic` is written with, if it is written in Confluent framing.
pub fn writing(topic: &str) -> Option<(u32, u64)> {
    if !TABLE.any_writing.load(Ordering::Acquire) {
        return None;
    }
    read(&TABLE.writing).get(topic).copied()
}

/// The message to send to `topic`: `payload` itself, unless `topic` is written in Confluent
/// framing and `payload` is a single-object message, whose header is then replaced by
/// `00 | schema id`. A single-object message of another schema than the one registered for
/// the topic is an error (a record sent to the wrong topic); other payloads (JSON, tombstones'
/// absence of one) pass unchanged.
pub fn frame_for<'a>(topic: &str, payload: &'a [u8]) -> Result<Cow<'a, [u8]>, EncodeError> {
    let Some((id, registered)) = writing(topic) else {
        return Ok(Cow::Borrowed(payload));
    };
    match split_header(payload) {
        Ok((WriterId::Fingerprint(fingerprint), datum)) if fingerprint == registered => {
            let mut framed = Vec::with_capacity(5 + datum.len());
            framed.push(crate::codec::CONFLUENT_MAGIC);
            framed.extend_from_slice(&id.to_be_bytes());
            framed.extend_from_slice(datum);
            Ok(Cow::Owned(framed))
        }
        Ok((WriterId::Fingerprint(fingerprint), _)) => Err(EncodeError {
            record: format!("schema {fingerprint:016x}"),
            detail: format!(
                "topic {topic} is written with registry schema id {id} ({registered:016x}), not this record's schema"
            ),
        }),
        _ => Ok(Cow::Borrowed(payload)),
    }
}
