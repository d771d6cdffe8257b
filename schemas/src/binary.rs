//! Minimal Avro binary writing and reading for hot paths. [`Writer`] encodes straight from a
//! service's own in-memory form, without building a record first (the scorer's changelog);
//! [`Reader`] backs the direct decoders of the busiest records ([`crate::decode`] tries them
//! first and falls back to the codec, which reports every error). The fields go in schema
//! order; a property test next to each must hold it equal to [`crate::Codec`].

/// Appends Avro binary values to a buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buffer: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buffer: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { buffer }
    }

    /// Starts a single-object message of the record whose codec has `fingerprint`.
    pub fn single_object(buffer: &'a mut Vec<u8>, fingerprint: u64) -> Writer<'a> {
        buffer.extend_from_slice(&crate::codec::SINGLE_OBJECT_MAGIC);
        buffer.extend_from_slice(&fingerprint.to_le_bytes());
        Writer { buffer }
    }

    /// `long` (and `int`, `enum` index, lengths): zig-zag, then base-128 varint.
    pub fn long(&mut self, value: i64) {
        let mut n = ((value << 1) ^ (value >> 63)) as u64;
        while n >= 0x80 {
            self.buffer.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.buffer.push(n as u8);
    }

    pub fn int(&mut self, value: i32) {
        self.long(i64::from(value));
    }

    pub fn double(&mut self, value: f64) {
        self.buffer.extend_from_slice(&value.to_le_bytes());
    }

    pub fn boolean(&mut self, value: bool) {
        self.buffer.push(u8::from(value));
    }

    pub fn string(&mut self, value: &str) {
        self.long(value.len() as i64);
        self.buffer.extend_from_slice(value.as_bytes());
    }

    /// An enum symbol by its index in the schema.
    pub fn symbol(&mut self, index: usize) {
        self.long(index as i64);
    }

    /// A `["null", "string"]` union.
    pub fn optional_string(&mut self, value: Option<&str>) {
        match value {
            None => self.long(0),
            Some(text) => {
                self.long(1);
                self.string(text);
            }
        }
    }

    /// A `["null", "long"]` union.
    pub fn optional_long(&mut self, value: Option<i64>) {
        match value {
            None => self.long(0),
            Some(n) => {
                self.long(1);
                self.long(n);
            }
        }
    }

    /// An array of `len` items, each written by `item`: one block with the count (when not
    /// empty), the items, then the empty block that ends the array.
    pub fn array<T>(&mut self, items: impl ExactSizeIterator<Item = T>, mut item: impl FnMut(&mut Self, T)) {
        if items.len() > 0 {
            self.long(items.len() as i64);
            for value in items {
                item(self, value);
            }
        }
        self.long(0);
    }
}

/// Reads Avro binary values from a datum. Every method returns `None` on anything the codec
/// would not accept (truncation, overlong varints, bad UTF-8, out-of-range indexes), so that a
/// direct decoder can give up and let the codec say what is wrong.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn long(&mut self) -> Option<i64> {
        let mut n: u64 = 0;
        for (i, byte) in self.bytes.iter().enumerate().take(10) {
            if i == 9 && *byte > 1 {
                return None; // more than 64 bits
            }
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Some(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        None
    }

    pub fn double(&mut self) -> Option<f64> {
        let (head, rest) = self.bytes.split_first_chunk::<8>()?;
        self.bytes = rest;
        Some(f64::from_le_bytes(*head))
    }

    pub fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.long()?).ok()?;
        // Longer than the codec allows (`codec::MAX_ALLOCATION_BYTES`): the codec refuses it.
        if len > self.bytes.len() || len > crate::codec::MAX_ALLOCATION_BYTES {
            return None;
        }
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        String::from_utf8(text.to_vec()).ok()
    }

    /// An enum symbol's index, below `symbols`.
    pub fn symbol(&mut self, symbols: usize) -> Option<usize> {
        usize::try_from(self.long()?).ok().filter(|index| *index < symbols)
    }

    /// A `["null", T]` union: `Some(None)` for null, `Some(Some(_))` for a `T` read by `read`.
    pub fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.long()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }

    pub fn optional_string(&mut self) -> Option<Option<String>> {
        self.optional(Self::string)
    }

    pub fn optional_long(&mut self) -> Option<Option<i64>> {
        self.optional(Self::long)
    }

    /// An Avro `int`: a varint within 32 bits.
    pub fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    /// One byte, 0 or 1.
    pub fn boolean(&mut self) -> Option<bool> {
        let (byte, rest) = self.bytes.split_first()?;
        let value = match byte {
            0 => false,
            1 => true,
            _ => return None,
        };
        self.bytes = rest;
        Some(value)
    }

    /// An array: blocks of `count` items (a negative count is followed by the block's size in
    /// bytes), ended by an empty block. Every item reads at least one byte, so a count larger
    /// than what is left fails on the bytes, not on memory.
    pub fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut items = Vec::new();
        loop {
            let count = match self.long()? {
                0 => return Some(items),
                count if count < 0 => {
                    self.long()?;
                    count.checked_neg()?
                }
                count => count,
            };
            let count = usize::try_from(count).ok()?;
            // Reserved for at most what a small block needs: a damaged count fails on the bytes
            // before it allocates much.
            items.reserve(count.min(64));
            for _ in 0..count {
                items.push(item(self)?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Writer;

    #[test]
    fn longs_are_zig_zag_varints() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (i64::MAX, &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            (i64::MIN, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ];
        for (value, bytes) in cases {
            let mut buffer = Vec::new();
            Writer::new(&mut buffer).long(*value);
            assert_eq!(&buffer, bytes, "{value}");
        }
    }

    #[test]
    fn the_reader_reads_what_the_writer_writes() {
        let mut buffer = Vec::new();
        let mut writer = Writer::new(&mut buffer);
        for n in [0, -1, 1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN] {
            writer.long(n);
        }
        writer.double(-2.5);
        writer.optional_string(Some("é"));
        writer.optional_string(None);
        writer.symbol(3);
        let mut reader = super::Reader::new(&buffer);
        for n in [0, -1, 1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN] {
            assert_eq!(reader.long(), Some(n));
        }
        assert_eq!(reader.double(), Some(-2.5));
        assert_eq!(reader.optional_string(), Some(Some("é".to_owned())));
        assert_eq!(reader.optional_string(), Some(None));
        assert_eq!(reader.symbol(3), None, "index 3 of 3 symbols");
        assert!(reader.is_empty());
    }

    #[test]
    fn the_reader_refuses_what_the_codec_would() {
        assert_eq!(super::Reader::new(&[0x80]).long(), None, "truncated varint");
        assert_eq!(super::Reader::new(&[0xff; 11]).long(), None, "more than 64 bits");
        assert_eq!(super::Reader::new(&[4, b'a']).string(), None, "shorter than its length");
        assert_eq!(super::Reader::new(&[3]).string(), None, "negative length");
        assert_eq!(super::Reader::new(&[2, 0xff]).string(), None, "not UTF-8");
        assert_eq!(super::Reader::new(&[4]).optional_string(), None, "union index 2");
        assert_eq!(super::Reader::new(&[1, 2, 3]).double(), None, "short double");
    }

    #[test]
    fn strings_unions_and_arrays() {
        let mut buffer = Vec::new();
        let mut writer = Writer::new(&mut buffer);
        writer.string("ab");
        writer.optional_string(None);
        writer.optional_string(Some("c"));
        writer.array([1i64, 2].into_iter(), |w, n| w.long(n));
        writer.array(std::iter::empty::<i64>(), |w, n| w.long(n));
        assert_eq!(buffer, [4, b'a', b'b', 0, 2, 2, b'c', 4, 2, 4, 0, 0]);
    }
}
