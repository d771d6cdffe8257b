//! A minimal Avro binary writer for hot paths that encode straight from their own in-memory
//! form, without building a record first (the scorer's changelog). The caller writes the
//! fields in schema order; a test next to each such encoder must compare its bytes with
//! [`crate::Codec::encode`] of the equivalent record.

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
