//! Iterating a packed log's entries.

use super::bytes::Cursor;

/// The entries of a packed log, in order. Counts them first, for the Avro writer's arrays.
#[derive(Debug)]
pub struct PackedIter<'a, T> {
    cursor: Cursor<'a>,
    read: fn(&mut Cursor<'a>) -> Option<T>,
    count: usize,
}

impl<'a, T> PackedIter<'a, T> {
    pub(super) fn new(
        bytes: &'a [u8],
        read: fn(&mut Cursor<'a>) -> Option<T>,
        skip: fn(&mut Cursor<'_>) -> Option<i64>,
    ) -> PackedIter<'a, T> {
        let mut scan = Cursor { rest: bytes };
        let mut count = 0;
        while skip(&mut scan).is_some() {
            count += 1;
        }
        PackedIter { cursor: Cursor { rest: bytes }, read, count }
    }
}

impl<T> Iterator for PackedIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.count == 0 {
            return None;
        }
        let entry = (self.read)(&mut self.cursor)?;
        self.count -= 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.count, Some(self.count))
    }
}

impl<T> ExactSizeIterator for PackedIter<'_, T> {}
