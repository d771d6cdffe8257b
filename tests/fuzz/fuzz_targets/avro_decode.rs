//! Any datum behind a valid single-object header (so decoding gets past the fingerprint),
//! decoded as each record the services read from Kafka: an error or a value, never a panic
//! nor an allocation the size of a forged length. The first byte picks the record.
#![no_main]

use abm_schemas::{
    Account, AccountScore, AccountState, AccountStateChunk, AvroRecord, EngagementEvent, RejectedEvent, SalesAlert,
    ScoreCrossing,
};
use libfuzzer_sys::fuzz_target;

/// The current schema's single-object header (marker and fingerprint) followed by `datum`.
fn message<T: AvroRecord>(datum: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&T::codec().fingerprint().to_le_bytes());
    bytes.extend_from_slice(datum);
    bytes
}

fn decode<T: AvroRecord>(datum: &[u8]) {
    let _ = abm_schemas::decode::<T>(&message::<T>(datum));
    // And as raw bytes, header and all.
    let _ = abm_schemas::decode::<T>(datum);
}

fuzz_target!(|data: &[u8]| {
    let Some((which, datum)) = data.split_first() else { return };
    match which % 8 {
        0 => decode::<EngagementEvent>(datum),
        1 => decode::<Account>(datum),
        2 => decode::<RejectedEvent>(datum),
        3 => decode::<AccountScore>(datum),
        4 => decode::<ScoreCrossing>(datum),
        5 => decode::<SalesAlert>(datum),
        6 => decode::<AccountState>(datum),
        _ => decode::<AccountStateChunk>(datum),
    }
});
