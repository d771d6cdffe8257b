//! Any request body through the collector's splitting, validation and resolution (what
//! `POST /v1/events` and the raw topics run): never a panic, every item answered for once,
//! with one output record, and a reason exactly when it is not accepted.
#![no_main]

use abm_schemas::{RejectSource, Transport};
use ingest::pipeline::{prepare, split};
use ingest::resolve::TalIndex;
use ingest::validate::{Arrival, ValidationConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let config = ValidationConfig::default();
    let tal = TalIndex::new(&config.free_mail_domains);
    // The first byte picks the key's scope: a browser key is the stricter path.
    let browser = ingest::keys::BrowserKeyConfig {
        key: "public".into(),
        kinds: vec![abm_schemas::EventKind::WebVisit],
        origins: Vec::new(),
        requests_per_second: 500.0,
        burst: 1000.0,
        client_requests_per_second: 5.0,
        client_burst: 20.0,
    };
    let scope = if body.first().is_some_and(|b| b % 2 == 0) {
        ingest::keys::Scope::Server
    } else {
        ingest::keys::Scope::Browser { name: "site", config: &browser }
    };
    let arrival = Arrival { source: "http:fuzz", received_at: 1_700_000_000_000, default_kind: None, scope };
    let source = RejectSource {
        transport: Transport::Http,
        write_key: Some("fuzz".into()),
        batch_index: Some(0),
        topic: None,
        partition: None,
        offset: None,
    };
    let items = split(body);
    let prepared = prepare(&items, &arrival, &source, &config, &tal).expect("every output encodes");
    assert_eq!(prepared.results.len(), items.len());
    assert_eq!(prepared.records.len(), items.len());
    for (index, result) in prepared.results.iter().enumerate() {
        assert_eq!(result.index, index);
        assert_eq!(result.status == "accepted", result.reason.is_none());
    }
});
