//! The hand-written decoder of `EngagementEvent` (the scorer's hottest path) against the
//! Avro library's: whatever the datum, when the direct path gives a value the library gives
//! the same one (the direct path may refuse and fall back, never disagree).
#![no_main]

use abm_schemas::{AvroRecord, EngagementEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|datum: &[u8]| {
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&EngagementEvent::codec().fingerprint().to_le_bytes());
    bytes.extend_from_slice(datum);
    let fast = abm_schemas::decode::<EngagementEvent>(&bytes);
    let library = abm_schemas::decode_with_codec::<EngagementEvent>(&bytes);
    match (fast, library) {
        // Compared as printed: a NaN (a legal Avro double) is then equal to itself.
        (Ok(fast), Ok(library)) => {
            assert_eq!(format!("{fast:?}"), format!("{library:?}"), "the direct decoder and the library disagree")
        }
        (Ok(fast), Err(error)) => panic!("the direct decoder accepted what the library refuses ({error}): {fast:?}"),
        (Err(_), _) => {}
    }
});
