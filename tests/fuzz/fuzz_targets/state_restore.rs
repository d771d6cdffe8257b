//! A changelog as the scorer restores it after a restart: any sequence of (key, value or
//! tombstone) records through `changelog::Restorer`, heads and chunks mixed. Bad records are
//! counted and skipped; never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use scorer::changelog::Restorer;
use scorer::engine::{Engine, ScoringConfig};

static ENGINE: LazyLock<Engine> = LazyLock::new(|| Engine::new(ScoringConfig::default()).expect("the default config is valid"));

fuzz_target!(|data: &[u8]| {
    // Records: [flags][key length][key][value length: 2 bytes][value]...; flags bit 0 marks a
    // tombstone, bit 1 a chunk key (they start with NUL), bit 2 a value behind the current
    // AccountState header.
    let mut restorer = Restorer::default();
    let mut rest = data;
    while let [flags, key_len, tail @ ..] = rest {
        let key_len = usize::from(*key_len % 32).min(tail.len());
        let (key, tail) = tail.split_at(key_len);
        let mut key = key.to_vec();
        if flags & 2 != 0 {
            key.insert(0, 0);
        }
        let (value_len, tail) = match tail {
            [a, b, tail @ ..] => (usize::from(u16::from_le_bytes([*a, *b])).min(tail.len()), tail),
            _ => (0, &[][..]),
        };
        let (value, tail) = tail.split_at(value_len);
        let mut framed = Vec::new();
        if flags & 4 != 0 {
            use abm_schemas::AvroRecord as _;
            framed.extend_from_slice(&[0xC3, 0x01]);
            let fingerprint = if flags & 2 != 0 {
                abm_schemas::AccountStateChunk::codec().fingerprint()
            } else {
                abm_schemas::AccountState::codec().fingerprint()
            };
            framed.extend_from_slice(&fingerprint.to_le_bytes());
        }
        framed.extend_from_slice(value);
        restorer.record(&key, (flags & 1 == 0).then_some(framed.as_slice()), &ENGINE);
        rest = tail;
    }
    let _ = restorer.finish(&ENGINE);
});
