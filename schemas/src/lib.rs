//! The Avro schemas of the ABM pipeline and the one crate that knows Avro.
//!
//! - `schemas/avro/*.avsc` — the schemas, one file per record, self-contained (every named type
//!   it uses is defined inline, so its fingerprint is that of its canonical form in any language).
//! - [`records`] — the typed Rust records, one per schema.
//! - [`codec`] — single-object framing and the [`Codec`] that encodes and decodes a record type.
//! - [`hash`] — FNV-1a, the stable hash persisted in records and used for derived ids.
//! - [`AvroRecord`] — ties each record to its schema and a process-wide codec, so services call
//!   [`encode`] and [`decode`] and never see a schema.
//!
//! Evolution rules (tested): a new field needs a default; every enum has a default symbol, so an
//! older reader maps a newer symbol to it. When a schema changes, its previous version is kept in
//! `schemas/avro/history/` and listed in [`AvroRecord`]'s implementation, so messages already in
//! Kafka stay readable.

pub mod binary;
pub mod codec;
mod direct;
pub mod hash;
pub mod records;
pub mod registry;

use std::sync::LazyLock;

pub use codec::{Codec, DecodeError, EncodeError, SchemaError, WriterId};
pub use records::*;

/// A record with a schema in `schemas/avro/` and a codec built once per process.
pub trait AvroRecord: serde::Serialize + serde::de::DeserializeOwned + Sized + 'static {
    /// The schema's file name in `schemas/avro/`.
    const SCHEMA_FILE: &'static str;
    /// The schema's JSON text.
    const SCHEMA_JSON: &'static str;
    /// The codec for this record, built on first use.
    fn codec() -> &'static Codec<Self>;
    /// A direct decoder of datums written with the current schema, for the busiest records;
    /// `None` means "ask the codec" (other versions, errors, or no direct decoder).
    fn decode_direct(_datum: &[u8]) -> Option<Self> {
        None
    }
}

/// Encodes a record as an Avro single-object message.
pub fn encode<T: AvroRecord>(value: &T) -> Result<Vec<u8>, EncodeError> {
    T::codec().encode(value)
}

/// Decodes a message in either framing (single-object, or Confluent's with a registry id)
/// into a record.
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> Result<T, DecodeError> {
    let codec = T::codec();
    let fingerprint = match codec::split_header(bytes) {
        Ok((codec::WriterId::Fingerprint(fingerprint), datum)) => Some((fingerprint, datum)),
        Ok((codec::WriterId::RegistryId(id), datum)) => registry::known_fingerprint(id).map(|f| (f, datum)),
        Err(_) => None,
    };
    if let Some((fingerprint, datum)) = fingerprint
        && fingerprint == codec.fingerprint()
        && let Some(value) = T::decode_direct(datum)
    {
        return Ok(value);
    }
    codec.decode(bytes)
}

/// [`decode`], waiting out a schema registry that does not answer (the one retryable error):
/// tried again every second for up to `patience`. For readers that cannot rewind, such as the
/// followers of compacted tables and restores; blocks the calling thread meanwhile.
pub fn decode_patiently<T: AvroRecord>(bytes: &[u8], patience: std::time::Duration) -> Result<T, DecodeError> {
    let started = std::time::Instant::now();
    loop {
        match decode(bytes) {
            Err(error) if error.is_retryable() && started.elapsed() < patience => {
                std::thread::sleep(std::time::Duration::from_secs(1).min(patience));
            }
            outcome => return outcome,
        }
    }
}

/// How long the readers that cannot rewind wait for the schema registry before they count a
/// message as undecodable ([`decode_patiently`]).
pub const REGISTRY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// [`decode`] through the codec only (what the direct decoders are tested against).
pub fn decode_with_codec<T: AvroRecord>(bytes: &[u8]) -> Result<T, DecodeError> {
    T::codec().decode(bytes)
}

macro_rules! avro_record {
    ($record:ty, $file:literal $(, history: [$($old:literal),* $(,)?])? $(, direct: $direct:path)?) => {
        impl AvroRecord for $record {
            $(fn decode_direct(datum: &[u8]) -> Option<Self> {
                $direct(datum)
            })?
            const SCHEMA_FILE: &'static str = $file;
            const SCHEMA_JSON: &'static str = include_str!(concat!("../avro/", $file));
            fn codec() -> &'static Codec<Self> {
                static CODEC: LazyLock<Codec<$record>> = LazyLock::new(|| {
                    let history: &[&str] = &[$($(include_str!(concat!("../avro/history/", $old))),*)?];
                    // The schemas are compiled in and covered by tests: failing here is a build defect.
                    Codec::new(<$record as AvroRecord>::SCHEMA_JSON, history)
                        .expect(concat!("embedded schema ", $file, " must parse"))
                });
                &CODEC
            }
        }
    };
}

avro_record!(Account, "account.avsc", history: ["account.v1.avsc"]);
avro_record!(EngagementEvent, "engagement_event.avsc", history: ["engagement_event.v1.avsc"], direct: direct::engagement_event);
avro_record!(RejectedEvent, "rejected_event.avsc", history: ["rejected_event.v1.avsc"]);
avro_record!(AccountScore, "account_score.avsc", history: ["account_score.v1.avsc", "account_score.v2.avsc"]);
avro_record!(ScoreCrossing, "score_crossing.avsc", history: ["score_crossing.v1.avsc", "score_crossing.v2.avsc"]);
avro_record!(SalesAlert, "sales_alert.avsc", history: ["sales_alert.v1.avsc", "sales_alert.v2.avsc"]);
avro_record!(AccountState, "account_state.avsc", history: ["account_state.v1.avsc", "account_state.v2.avsc", "account_state.v3.avsc", "account_state.v4.avsc"], direct: direct::account_state);
avro_record!(AccountProgram, "account_program.avsc");
avro_record!(JourneyTransition, "journey_transition.avsc");
avro_record!(Visitor, "visitor.avsc");
avro_record!(AccountStateChunk, "account_state_chunk.avsc", history: ["account_state_chunk.v1.avsc"]);
