//! FNV-1a, the pipeline's one stable hash: the same value in every process and version, so it
//! may be persisted (the scorer's state keeps event-id and contact-key hashes) and derived ids
//! are reproducible.

/// FNV-1a 64's offset basis.
pub const FNV64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64's prime.
pub const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, starting from `basis` (the offset basis for the standard hash).
pub fn fnv1a_64_from(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(FNV64_PRIME))
}

/// FNV-1a 64 of `text`, as the signed value the Avro records store (`long`).
pub fn stable_hash(text: &str) -> i64 {
    fnv1a_64_from(FNV64_OFFSET_BASIS, text.as_bytes()) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_64_vectors() {
        // The reference values of FNV-1a 64 (Fowler, Noll, Vo).
        assert_eq!(fnv1a_64_from(FNV64_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64_from(FNV64_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64_from(FNV64_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
    }
}
