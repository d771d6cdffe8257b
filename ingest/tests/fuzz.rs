//! Arbitrary bytes and arbitrary JSON through splitting, validation and preparation: never a
//! panic, and every item gets exactly one result and one output record.

use abm_schemas::{RejectSource, Transport};
use ingest::pipeline::{prepare, split};
use ingest::resolve::TalIndex;
use ingest::validate::{Arrival, ValidationConfig};
use proptest::prelude::*;
use serde_json::Value;

const NOW: i64 = 1_700_000_000_000;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof![
            Just("web_visit".to_owned()),
            Just("email".to_owned()),
            Just("2023-11-14T22:13:20Z".to_owned()),
            Just("click".to_owned()),
            ".{0,20}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("kind".to_owned()),
                    Just("occurred_at".to_owned()),
                    Just("sent_at".to_owned()),
                    Just("event_id".to_owned()),
                    Just("contact".to_owned()),
                    Just("properties".to_owned()),
                    Just("url".to_owned()),
                    Just("email".to_owned()),
                    Just("action".to_owned()),
                    Just("strength".to_owned()),
                    "[a-z_]{1,10}"
                ],
                inner,
                0..8
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn check(body: &[u8]) {
    let config = ValidationConfig::default();
    let tal = TalIndex::new(&config.free_mail_domains);
    let arrival =
        Arrival { source: "http:fuzz", received_at: NOW, default_kind: None, scope: ingest::keys::Scope::Server };
    let source = RejectSource {
        transport: Transport::Http,
        write_key: Some("fuzz".into()),
        batch_index: Some(0),
        topic: None,
        partition: None,
        offset: None,
    };
    let items = split(body);
    let prepared = prepare(&items, &arrival, &source, &config, &tal).expect("encodes");
    assert_eq!(prepared.results.len(), items.len());
    assert_eq!(prepared.records.len(), items.len());
    for (index, result) in prepared.results.iter().enumerate() {
        assert_eq!(result.index, index);
        assert_eq!(result.status == "accepted", result.reason.is_none());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(values in proptest::collection::vec(json_value(), 0..6), as_array in any::<bool>()) {
        let body = if as_array {
            serde_json::to_vec(&Value::Array(values)).expect("serialises")
        } else {
            values.iter().map(|v| serde_json::to_string(v).expect("serialises")).collect::<Vec<_>>().join("\n").into_bytes()
        };
        check(&body);
    }

    #[test]
    fn arbitrary_event_shaped_json_never_panics(
        kind in prop_oneof![Just("web_visit"), Just("email"), Just("intent"), Just("demo_request"), Just("nope")],
        occurred in prop_oneof![any::<i64>().prop_map(Value::from), ".{0,30}".prop_map(Value::String)],
        properties in json_value(),
        contact in json_value(),
    ) {
        let event = serde_json::json!({"kind": kind, "occurred_at": occurred, "properties": properties, "contact": contact});
        check(&serde_json::to_vec(&event).expect("serialises"));
    }
}
