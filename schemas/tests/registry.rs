//! Confluent framing through `abm_schemas::registry`, with an in-memory schema source standing
//! in for the registry's HTTP API (the real registry is exercised by the services' tests).
//! Each test uses ids of its own: the registry table is one per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use abm_schemas::registry::{self, LookupError, SchemaSource};
use abm_schemas::{Account, AvroRecord, DecodeError, EngagementEvent, Tier};

/// A registry whose answers the test sets, counting the lookups of each id (per id: the tests
/// run in parallel threads and share the one table).
#[derive(Debug, Default)]
struct Source {
    schemas: Mutex<HashMap<u32, Result<String, LookupError>>>,
    lookups: Mutex<HashMap<u32, usize>>,
}

impl Source {
    fn lookups(&self, id: u32) -> usize {
        self.lookups.lock().expect("lock").get(&id).copied().unwrap_or(0)
    }
}

impl SchemaSource for Source {
    fn schema_text(&self, id: u32) -> Result<String, LookupError> {
        *self.lookups.lock().expect("lock").entry(id).or_default() += 1;
        self.schemas.lock().expect("lock").get(&id).cloned().unwrap_or(Err(LookupError::NotFound(id)))
    }
}

fn source() -> Arc<Source> {
    static SOURCE: std::sync::OnceLock<Arc<Source>> = std::sync::OnceLock::new();
    SOURCE
        .get_or_init(|| {
            let source = Arc::new(Source::default());
            registry::install(source.clone());
            source
        })
        .clone()
}

fn account(id: &str) -> Account {
    Account {
        account_id: id.into(),
        name: "Acme".into(),
        domains: vec!["acme.example".into()],
        tier: Tier::Tier2,
        owner: "sdr@example.com".into(),
        industry: Some("software".into()),
        employees: Some(250),
        committee: None,
        updated_at: 1_700_000_000_000,
    }
}

/// `00 | id | datum` of `value`'s single-object message (the same datum, another header).
fn confluent<T: AvroRecord>(id: u32, value: &T) -> Vec<u8> {
    let single = abm_schemas::encode(value).expect("encodes");
    let mut framed = vec![0];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(&single[abm_schemas::codec::SINGLE_OBJECT_HEADER_LEN..]);
    framed
}

#[test]
fn a_topic_registered_for_confluent_framing_is_written_with_its_id_and_read_back() {
    let known = registry::learn(101, Account::SCHEMA_JSON).expect("parses");
    assert_eq!(known.fingerprint, Account::codec().fingerprint(), "the registered schema is the codec's");
    registry::write_confluent("t101.accounts", 101, known.fingerprint);
    let value = account("a-101");
    let single = abm_schemas::encode(&value).expect("encodes");
    let bytes = registry::frame_for("t101.accounts", &single).expect("framed").into_owned();
    assert_eq!(bytes[..5], [0, 0, 0, 0, 101], "magic 0, then the id big-endian");
    assert_eq!(bytes, confluent(101, &value));
    assert_eq!(abm_schemas::decode::<Account>(&bytes), Ok(value.clone()));
    // Another topic keeps single-object framing; both framings read alike.
    let other = registry::frame_for("t101.other", &single).expect("unchanged");
    assert_eq!(other.as_ref(), single.as_slice());
    assert_eq!(abm_schemas::decode::<Account>(&single), Ok(value));
    // A topic registered with one record's schema refuses to frame another record with it.
    let event = EngagementEvent::new("e1", abm_schemas::EventKind::WebVisit, 1, "test");
    let event = abm_schemas::encode(&event).expect("encodes");
    let error = registry::frame_for("t101.accounts", &event).expect_err("wrong record for the topic");
    assert!(error.to_string().contains("registry schema id 101"), "{error}");
    // What is not a single-object message (JSON, say) passes as it is.
    assert_eq!(registry::frame_for("t101.accounts", b"{}").expect("unchanged").as_ref(), b"{}");
}

#[test]
fn an_unseen_id_is_looked_up_once_and_an_unknown_one_is_rejected_not_retried() {
    let source = source();
    source.schemas.lock().expect("lock").insert(202, Ok(Account::SCHEMA_JSON.to_owned()));
    let value = account("a-202");
    for _ in 0..3 {
        assert_eq!(abm_schemas::decode::<Account>(&confluent(202, &value)), Ok(value.clone()));
    }
    assert_eq!(source.lookups(202), 1, "one lookup, then the table");

    for _ in 0..3 {
        let error = abm_schemas::decode::<Account>(&confluent(203, &value)).expect_err("no such id");
        assert_eq!(error, DecodeError::UnknownRegistryId { record: "abm.Account".into(), schema_id: 203 });
        assert!(!error.is_retryable());
    }
    assert_eq!(source.lookups(203), 1, "a missing id is remembered");
}

#[test]
fn a_registry_that_does_not_answer_is_a_retryable_error_until_it_does() {
    let source = source();
    source.schemas.lock().expect("lock").insert(303, Err(LookupError::Unavailable("connection refused".into())));
    let value = account("a-303");
    let error = abm_schemas::decode::<Account>(&confluent(303, &value)).expect_err("registry down");
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("connection refused") && error.to_string().contains("303"), "{error}");
    source.schemas.lock().expect("lock").insert(303, Ok(Account::SCHEMA_JSON.to_owned()));
    assert_eq!(abm_schemas::decode::<Account>(&confluent(303, &value)), Ok(value));
}

#[test]
fn writer_schemas_of_other_producers_are_resolved_to_the_readers() {
    let source = source();
    // Another producer's evolution of Account: one more field (with a default), one field
    // fewer that has a default in ours (industry). Registry-aware readers resolve it.
    let mut evolved: serde_json::Value = serde_json::from_str(Account::SCHEMA_JSON).expect("json");
    let fields = evolved["fields"].as_array_mut().expect("fields");
    fields.retain(|field| field["name"] != "industry");
    fields.push(serde_json::json!({"name": "crm_id", "type": "string", "default": ""}));
    source.schemas.lock().expect("lock").insert(404, Ok(evolved.to_string()));
    // Its datum, written by hand: the fields in the evolved order.
    let mut bytes = vec![0, 0, 0, 1, 148];
    let mut writer = abm_schemas::binary::Writer::new(&mut bytes);
    writer.string("a-404");
    writer.string("Acme");
    writer.array(["acme.example"].into_iter(), |writer, domain| writer.string(domain));
    writer.symbol(2); // tier_2
    writer.string("sdr@example.com");
    writer.long(1); // employees: the int branch
    writer.int(250);
    writer.long(0); // committee: null
    writer.long(1_700_000_000_000);
    writer.string("crm-9");
    let mut expected = account("a-404");
    expected.industry = None;
    assert_eq!(abm_schemas::decode::<Account>(&bytes), Ok(expected));

    // A writer schema this record cannot read (a required field it lacks) is the message's fault.
    let incompatible = r#"{"type":"record","name":"Account","namespace":"abm","fields":[{"name":"x","type":"long"}]}"#;
    source.schemas.lock().expect("lock").insert(405, Ok(incompatible.to_owned()));
    let error = abm_schemas::decode::<Account>(&[0, 0, 0, 1, 149, 2]).expect_err("cannot resolve");
    // (apache-avro finds some incompatibilities when it builds the resolver, others at the read.)
    assert!(
        matches!(error, DecodeError::IncompatibleWriter { schema_id: 405, .. } | DecodeError::Malformed { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("account_id"), "names what is missing: {error}");
    assert!(!error.is_retryable());
}
