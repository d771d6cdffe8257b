//! The schemas agree with each other and with the Rust records, so that a change made in one
//! place and forgotten in another fails here (ARCHITECTURE.md, "Common changes").
//!
//! Every `.avsc` file is self-contained: a named type it uses (`EventKind`, `Tier`,
//! `RecentEvent`, ...) is defined inline in it, so the same type is written out in several
//! files. These tests hold every copy equal, the enums equal to the Rust enums' symbol lists,
//! and `EngagementEvent` with one detail field per event kind.

use std::collections::BTreeMap;

use abm_schemas::{AvroRecord, EmailAction, EventKind, JourneyStage, OpportunityStage, Tier};
use serde_json::{Map, Value};

/// Every schema file the crate compiles in, as (file name, JSON text).
fn schema_files() -> Vec<(&'static str, &'static str)> {
    use abm_schemas::*;
    vec![
        (Account::SCHEMA_FILE, Account::SCHEMA_JSON),
        (AccountProgram::SCHEMA_FILE, AccountProgram::SCHEMA_JSON),
        (AccountScore::SCHEMA_FILE, AccountScore::SCHEMA_JSON),
        (AccountState::SCHEMA_FILE, AccountState::SCHEMA_JSON),
        (AccountStateChunk::SCHEMA_FILE, AccountStateChunk::SCHEMA_JSON),
        (EngagementEvent::SCHEMA_FILE, EngagementEvent::SCHEMA_JSON),
        (JourneyTransition::SCHEMA_FILE, JourneyTransition::SCHEMA_JSON),
        (RejectedEvent::SCHEMA_FILE, RejectedEvent::SCHEMA_JSON),
        (SalesAlert::SCHEMA_FILE, SalesAlert::SCHEMA_JSON),
        (ScoreCrossing::SCHEMA_FILE, ScoreCrossing::SCHEMA_JSON),
        (Visitor::SCHEMA_FILE, Visitor::SCHEMA_JSON),
    ]
}

/// Walks a schema: returns it with docs removed and named references replaced by the type
/// they name (so an inline definition and a reference compare equal), and records every named
/// type it defines in `defined`.
fn normalize(schema: &Value, defined: &mut Vec<(String, Value)>) -> Value {
    match schema {
        Value::String(name) => {
            defined.iter().find(|(n, _)| n == name).map_or_else(|| schema.clone(), |(_, definition)| definition.clone())
        }
        Value::Array(branches) => Value::Array(branches.iter().map(|b| normalize(b, defined)).collect()),
        Value::Object(object) => {
            let mut out = Map::new();
            for (key, value) in object {
                let value = match key.as_str() {
                    "doc" => continue,
                    "type" | "items" | "values" => normalize(value, defined),
                    "fields" => Value::Array(
                        value
                            .as_array()
                            .expect("fields is an array")
                            .iter()
                            .map(|field| normalize(field, defined))
                            .collect(),
                    ),
                    _ => value.clone(),
                };
                out.insert(key.clone(), value);
            }
            let out = Value::Object(out);
            let named = matches!(object.get("type").and_then(Value::as_str), Some("record" | "enum" | "fixed"));
            if let (true, Some(name)) = (named, object.get("name").and_then(Value::as_str)) {
                defined.push((name.to_owned(), out.clone()));
            }
            out
        }
        _ => schema.clone(),
    }
}

/// Every named type of every file: name → [(file, normalized definition)].
fn definitions() -> BTreeMap<String, Vec<(&'static str, Value)>> {
    let mut all: BTreeMap<String, Vec<(&'static str, Value)>> = BTreeMap::new();
    for (file, json) in schema_files() {
        let schema: Value = serde_json::from_str(json).expect("schema is JSON");
        let mut defined = Vec::new();
        normalize(&schema, &mut defined);
        for (name, definition) in defined {
            all.entry(name).or_default().push((file, definition));
        }
    }
    all
}

fn symbols(definition: &Value) -> Vec<&str> {
    definition["symbols"].as_array().expect("an enum").iter().map(|s| s.as_str().expect("symbol")).collect()
}

#[test]
fn every_copy_of_a_named_type_is_the_same_in_every_file() {
    let all = definitions();
    assert!(all["EventKind"].len() >= 5, "EventKind is inlined in every schema that uses it");
    for (name, copies) in &all {
        let (first_file, first) = &copies[0];
        for (file, definition) in &copies[1..] {
            assert_eq!(
                definition, first,
                "{name} differs between {first_file} and {file}: a change to a shared type goes into every file that defines it"
            );
        }
    }
}

#[test]
fn the_schema_enums_list_the_rust_enums_symbols_in_order() {
    let all = definitions();
    let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(symbols(&all["EventKind"][0].1), kinds, "EventKind::ALL and the schema's symbols");
    let actions: Vec<&str> = EmailAction::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(symbols(&all["EmailAction"][0].1), actions, "EmailAction::ALL and the schema's symbols");
    let stages: Vec<&str> = JourneyStage::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(symbols(&all["JourneyStage"][0].1), stages, "JourneyStage::ALL and the schema's symbols");
    let tiers: Vec<&str> = Tier::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(symbols(&all["Tier"][0].1), tiers, "Tier::ALL and the schema's symbols");
    let stages: Vec<&str> = OpportunityStage::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(symbols(&all["OpportunityStage"][0].1), stages, "OpportunityStage::ALL and the schema's symbols");
    for stage in OpportunityStage::ALL {
        assert_eq!(serde_json::to_value(stage).expect("serializes"), Value::String(stage.as_str().to_owned()));
    }
    // The serde names of the Rust enums are the schema's symbols too (the codec goes through serde).
    for kind in EventKind::ALL {
        assert_eq!(serde_json::to_value(kind).expect("serializes"), Value::String(kind.as_str().to_owned()));
    }
}

#[test]
fn the_engagement_event_has_one_detail_field_per_kind() {
    let schema: Value = serde_json::from_str(abm_schemas::EngagementEvent::SCHEMA_JSON).expect("JSON");
    let fields: Vec<&str> =
        schema["fields"].as_array().expect("fields").iter().map(|f| f["name"].as_str().expect("name")).collect();
    for kind in EventKind::ALL.into_iter().filter(|k| *k != EventKind::Unknown) {
        assert!(fields.contains(&kind.as_str()), "EngagementEvent has no `{}` field for its kind", kind.as_str());
    }
}
