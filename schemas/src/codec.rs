//! The Avro codec: single-object framing around a binary datum, typed records in and out.
//!
//! Every message starts with a header that names its writer schema, so a reader always knows
//! how to decode it:
//!
//! ```text
//! single-object (Avro spec):  C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint | datum
//! Confluent wire format:      00    | 4-byte big-endian registry schema id         | datum
//! ```
//!
//! The codec writes single-object messages; [`crate::registry::frame_for`] turns them into
//! Confluent's framing for the topics written that way, where they are sent. It reads both: a registry id is resolved to its writer
//! schema through [`crate::registry`], then decoded as a fingerprint would be. With no registry
//! configured, a Confluent-framed message is a typed error ([`DecodeError::RegistryFramed`]).
//!
//! A [`Codec`] parses its schemas and resolves them once, when it is built. Decoding a message
//! written with the codec's own schema (the hot path) deserialises straight from the bytes into
//! the Rust struct, with no intermediate `Value`. A message written with another known version
//! of the schema goes through Avro schema resolution to the reader schema, then into the struct.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// First two bytes of an Avro single-object encoded message.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the single-object header: magic plus 8-byte fingerprint.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// First byte of a Confluent-framed message.
pub const CONFLUENT_MAGIC: u8 = 0x00;

/// No single Avro value in this pipeline comes close to this; a length prefix above it is garbage.
/// (apache-avro's own default is 512 MiB, which garbage input would happily try to allocate.)
pub(crate) const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// A schema that could not be used. Raised when a codec is built, never per message.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid Avro schema {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("schema {what} cannot be resolved to reader schema {reader}: {detail}")]
    Incompatible { what: String, reader: String, detail: String },
}

/// Why bytes could not be decoded into a record. Never retryable: the message is bad (or from a
/// schema this build does not know), so the caller should reject or park it, not retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes is too short for an Avro single-object header ({SINGLE_OBJECT_HEADER_LEN} bytes)")]
    Truncated { len: usize },
    #[error("not an Avro single-object message: starts with {found:02x?}, expected [c3, 01]")]
    BadMagic { found: [u8; 2] },
    #[error(
        "Confluent-framed message (registry schema id {schema_id}) but no schema registry is configured (registry.url)"
    )]
    RegistryFramed { schema_id: u32 },
    #[error("{record}: the schema registry has no schema with id {schema_id}")]
    UnknownRegistryId { record: String, schema_id: u32 },
    #[error("{record}: registry schema id {schema_id} cannot be read as this record: {detail}")]
    IncompatibleWriter { record: String, schema_id: u32, detail: String },
    #[error("{record}: registry schema id {schema_id} could not be looked up ({detail}); retry")]
    RegistryUnavailable { record: String, schema_id: u32, detail: String },
    #[error("{record}: writer schema fingerprint {fingerprint:016x} is not a known version of this record")]
    UnknownSchema { record: String, fingerprint: u64 },
    #[error("{record}: malformed datum: {detail}")]
    Malformed { record: String, detail: String },
    #[error("{record}: {trailing} unexpected bytes after the datum")]
    TrailingBytes { record: String, trailing: usize },
}

impl DecodeError {
    /// Whether the message may decode later: only when the schema registry could not be asked.
    /// Every other error is about the message itself, and it should be rejected, not retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable { .. })
    }
}

/// A value that does not fit its schema (a bug in the caller, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("{record}: cannot encode value: {detail}")]
pub struct EncodeError {
    pub record: String,
    pub detail: String,
}

/// The header of a framed message: which schema wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterId {
    /// Avro single-object encoding: CRC-64-AVRO fingerprint of the writer schema.
    Fingerprint(u64),
    /// Confluent wire format: schema id in a registry.
    RegistryId(u32),
}

/// Splits a framed message into its writer id and datum.
pub fn split_header(bytes: &[u8]) -> Result<(WriterId, &[u8]), DecodeError> {
    if bytes.first() == Some(&CONFLUENT_MAGIC) {
        if bytes.len() < 5 {
            return Err(DecodeError::Truncated { len: bytes.len() });
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        return Ok((WriterId::RegistryId(id), &bytes[5..]));
    }
    if bytes.len() < SINGLE_OBJECT_HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(DecodeError::BadMagic { found: [bytes[0], bytes[1]] });
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[2..SINGLE_OBJECT_HEADER_LEN]);
    Ok((WriterId::Fingerprint(u64::from_le_bytes(fingerprint)), &bytes[SINGLE_OBJECT_HEADER_LEN..]))
}

/// CRC-64-AVRO (Rabin) fingerprint of a schema's Parsing Canonical Form, as the Avro
/// specification defines it (and Avro's Java implementation computes it).
///
/// apache-avro 0.22's own canonical form keeps `logicalType` attributes, which the specification
/// strips, so its fingerprint differs from every other implementation for schemas with logical
/// types. We strip them and hash the result ourselves.
pub fn fingerprint(schema: &Schema) -> u64 {
    rabin(strip_logical_types(&schema.canonical_form()).as_bytes())
}

/// The fingerprint apache-avro itself computes (logical types kept). Messages written with it
/// by earlier builds stay readable.
pub fn legacy_fingerprint(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

/// A primitive written as an object (`{"type":"long"}`, which is what apache-avro leaves of
/// `{"type":"long","logicalType":"timestamp-millis"}`) becomes the bare name (`"long"`), as the
/// specification's Parsing Canonical Form has it. A `logicalType` still present is dropped too.
fn strip_logical_types(canonical: &str) -> String {
    const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
    let mut out = String::with_capacity(canonical.len());
    let mut rest = canonical;
    'scan: while let Some(start) = rest.find("{\"type\":\"") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        for primitive in PRIMITIVES {
            let head = format!("{{\"type\":\"{primitive}\"");
            let Some(tail) = after.strip_prefix(head.as_str()) else { continue };
            let end = if let Some(closing) = tail.strip_prefix('}') {
                Some(tail.len() - closing.len())
            } else if let Some(logical) = tail.strip_prefix(",\"logicalType\":\"") {
                logical.find("\"}").filter(|i| !logical[..*i].contains('"')).map(|i| tail.len() - logical.len() + i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                out.push('"');
                out.push_str(primitive);
                out.push('"');
                rest = &tail[end..];
                continue 'scan;
            }
        }
        out.push('{');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
}

/// CRC-64-AVRO, the specification's 64-bit Rabin fingerprint.
fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
            }
            *slot = fp;
        }
        table
    });
    let mut fp = EMPTY;
    for byte in bytes {
        fp = (fp >> 8) ^ TABLE[((fp ^ u64::from(*byte)) & 0xff) as usize];
    }
    fp
}

/// Encoder and decoder of one record type `T` with one reader schema.
///
/// Built once per process (see [`crate::AvroRecord::codec`]); cheap to share across threads.
pub struct Codec<T> {
    record: String,
    schema: &'static Schema,
    fingerprint: u64,
    writer: GenericDatumWriter<'static>,
    /// Decodes messages written with `schema` itself, straight into `T`.
    direct: GenericDatumReader<'static>,
    /// Decodes messages written with another known version, resolved to `schema`.
    resolving: HashMap<u64, GenericDatumReader<'static>>,
    /// apache-avro's own (non-standard) fingerprint of `schema`, written by earlier builds.
    legacy_fingerprint: u64,
    /// Resolvers for writer schemas met through a registry that are none of the known versions
    /// (bounded by [`crate::registry::MAX_SCHEMAS`], as the schemas they borrow).
    foreign: std::sync::RwLock<HashMap<u64, Arc<GenericDatumReader<'static>>>>,
    _record: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("record", &self.record)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .field("other_versions", &self.resolving.len())
            .finish()
    }
}

fn parse_static(what: &str, json: &str) -> Result<&'static Schema, SchemaError> {
    let schema = Schema::parse_str(json)
        .map_err(|error| SchemaError::Invalid { what: what.to_owned(), detail: error.to_string() })?;
    // Schemas live as long as the process: codecs are built once and borrow them.
    Ok(Box::leak(Box::new(schema)))
}

fn schema_name(schema: &Schema) -> String {
    match schema.name() {
        Some(name) => name.fullname(None),
        None => "<unnamed>".to_owned(),
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> {
    /// Builds a codec whose reader and writer schema is `schema_json`, and which can also read
    /// messages written with any of `other_versions` (older or newer versions of the record).
    pub fn new(schema_json: &str, other_versions: &[&str]) -> Result<Self, SchemaError> {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        let schema = parse_static("reader schema", schema_json)?;
        let record = schema_name(schema);
        let build_error = |what: &str, error: apache_avro::Error| SchemaError::Incompatible {
            what: what.to_owned(),
            reader: record.clone(),
            detail: error.to_string(),
        };
        let writer = GenericDatumWriter::builder(schema).build().map_err(|e| build_error("writer", e))?;
        let direct = GenericDatumReader::builder(schema).build().map_err(|e| build_error("reader", e))?;
        let mut resolving = HashMap::new();
        for (index, version_json) in other_versions.iter().enumerate() {
            let what = format!("version #{index} of {record}");
            let version = parse_static(&what, version_json)?;
            let reader = GenericDatumReader::builder(version)
                .reader_schema(schema)
                .build()
                .map_err(|e| build_error(&what, e))?;
            resolving.insert(fingerprint(version), reader);
        }
        Ok(Codec {
            fingerprint: fingerprint(schema),
            legacy_fingerprint: legacy_fingerprint(schema),
            record,
            schema,
            writer,
            direct,
            resolving,
            foreign: std::sync::RwLock::default(),
            _record: PhantomData,
        })
    }

    /// Full name of the record, e.g. `abm.Account`.
    pub fn record_name(&self) -> &str {
        &self.record
    }

    /// CRC-64-AVRO fingerprint of the codec's schema (what its messages carry in the header).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn schema(&self) -> &Schema {
        self.schema
    }

    /// Encodes `value` as an Avro single-object message.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let mut buffer = Vec::with_capacity(128);
        self.encode_into(value, &mut buffer)?;
        Ok(buffer)
    }

    /// Appends the single-object message for `value` to `buffer`.
    pub fn encode_into(&self, value: &T, buffer: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = buffer.len();
        buffer.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        buffer.extend_from_slice(&self.fingerprint.to_le_bytes());
        if let Err(error) = self.writer.write_ser(buffer, value) {
            buffer.truncate(start);
            return Err(EncodeError { record: self.record.clone(), detail: error.to_string() });
        }
        Ok(())
    }

    /// Decodes a framed message into `T`, resolving older or newer schema versions it knows.
    pub fn decode(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let (writer_id, mut datum) = split_header(bytes)?;
        let (fingerprint, registered) = match writer_id {
            WriterId::Fingerprint(fingerprint) => (fingerprint, None),
            WriterId::RegistryId(schema_id) => {
                let known = crate::registry::writer_schema(schema_id, &self.record)?;
                (known.fingerprint, Some((schema_id, known)))
            }
        };
        let malformed = |error: apache_avro::Error| DecodeError::Malformed {
            record: self.record.clone(),
            detail: error.to_string(),
        };
        let resolve = |reader: &GenericDatumReader<'static>, datum: &mut &[u8]| -> Result<T, DecodeError> {
            let value = reader.read_value(datum).map_err(malformed)?;
            apache_avro::from_value::<T>(&value).map_err(malformed)
        };
        let value = if fingerprint == self.fingerprint || fingerprint == self.legacy_fingerprint {
            self.direct.read_deser::<T>(&mut datum).map_err(malformed)?
        } else if let Some(reader) = self.resolving.get(&fingerprint) {
            resolve(reader, &mut datum)?
        } else if let Some((schema_id, known)) = registered {
            resolve(self.foreign_reader(schema_id, known)?.as_ref(), &mut datum)?
        } else {
            return Err(DecodeError::UnknownSchema { record: self.record.clone(), fingerprint });
        };
        if !datum.is_empty() {
            return Err(DecodeError::TrailingBytes { record: self.record.clone(), trailing: datum.len() });
        }
        Ok(value)
    }

    /// The resolver from a registered writer schema that is none of this build's versions
    /// (another producer's evolution of the record) to the codec's schema, built once.
    fn foreign_reader(
        &self,
        schema_id: u32,
        known: crate::registry::Known,
    ) -> Result<Arc<GenericDatumReader<'static>>, DecodeError> {
        if let Some(reader) =
            self.foreign.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&known.fingerprint)
        {
            return Ok(reader.clone());
        }
        let reader = GenericDatumReader::builder(known.schema).reader_schema(self.schema).build().map_err(|error| {
            DecodeError::IncompatibleWriter { record: self.record.clone(), schema_id, detail: error.to_string() }
        })?;
        let reader = Arc::new(reader);
        self.foreign
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(known.fingerprint, reader.clone());
        Ok(reader)
    }
}
