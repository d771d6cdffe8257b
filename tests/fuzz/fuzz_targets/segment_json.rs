//! Any body through the Segment translation (what `/v1/batch` and `/v1/track`... run before
//! validation) and the identity stitcher's merge and settle: never a panic; a browser key's
//! observations never carry an account id or a persona and live under `web:`; every message
//! becomes exactly one of event, identity, ignored or invalid; a settled visitor keeps within
//! its bounds.
#![no_main]

use ingest::resolve::TalIndex;
use ingest::segment::{Envelope, SegmentConfig, Translated, messages, translate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let browser = body.len() % 2 == 1;
    let envelope = Envelope {
        path_type: ingest::segment::type_of_path(["t", "p", "i", "g", "a", "batch"][body.len() % 6]),
        batch_sent_at: value.get("sentAt"),
        anonymous_id: None,
        browser,
        received_at: 1_700_000_000_000,
    };
    let config = SegmentConfig::default();
    let tal = TalIndex::new(&ingest::validate::ValidationConfig::default().free_mail_domains);
    let mut state = abm_schemas::Visitor::default();
    let (list, _) = messages(&value);
    for message in list {
        match translate(message, &envelope, &config) {
            Translated::Identity(visitor) => {
                if browser {
                    assert!(visitor.account_id.is_none(), "a browser named an account");
                    assert!(visitor.contact.as_ref().and_then(|c| c.persona.as_ref()).is_none(), "a browser named a persona");
                    assert!(visitor.visitor_id.starts_with("web:"), "a browser's visitor outside its namespace");
                }
                assert!(visitor.visitor_id.len() <= 256);
                ingest::stitch::merge(&mut state, visitor);
            }
            Translated::Event { json, visitor } => {
                assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok(), "the translation is JSON");
                if let Some(visitor) = visitor {
                    assert!(visitor.len() <= 256 && (!browser || visitor.starts_with("web:")));
                }
            }
            Translated::Ignored { event } => assert!(event.chars().count() <= 100),
            Translated::Invalid(_) => {}
        }
    }
    let _ = ingest::stitch::settle(&mut state, &tal, 3, 16_384);
    assert!(state.events.len() <= 3);
});
