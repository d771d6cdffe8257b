//! The byte codec of the packed logs ([`super::ContactLog`], [`super::RecentLog`]): LEB128
//! lengths, UTF-8 strings, optional strings stored as length plus one.

/// Reads the packed entries of [`ContactLog`] and [`RecentLog`]. Only their own writers
/// produce the bytes, so a read that runs short ends the iteration instead of failing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cursor<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    pub(super) fn varint(&mut self) -> Option<usize> {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let [byte] = self.array::<1>()?;
            value |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
        }
    }

    pub(super) fn str(&mut self) -> Option<&'a str> {
        let len = self.varint()?;
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    /// Steps over a string written with [`write_str`] (or, with `offset` 1, one written with
    /// [`write_optional_str`]) without checking its bytes.
    pub(super) fn skip_str(&mut self, offset: usize) -> Option<()> {
        let len = self.varint()?;
        self.bytes(len.saturating_sub(offset)).map(drop)
    }

    /// A string written with [`write_optional_str`].
    pub(super) fn optional_str(&mut self) -> Option<Option<&'a str>> {
        match self.varint()? {
            0 => Some(None),
            n => Some(Some(std::str::from_utf8(self.bytes(n - 1)?).ok()?)),
        }
    }
}

pub(super) fn varint_len(mut value: usize) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

pub(super) fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(super) fn str_len(text: &str) -> usize {
    varint_len(text.len()) + text.len()
}

pub(super) fn write_str(out: &mut Vec<u8>, text: &str) {
    write_varint(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

pub(super) fn optional_str_len(text: Option<&str>) -> usize {
    text.map_or(1, |text| varint_len(text.len() + 1) + text.len())
}

/// The length plus one, then the bytes; a lone 0 for none.
pub(super) fn write_optional_str(out: &mut Vec<u8>, text: Option<&str>) {
    write_varint(out, text.map_or(0, |text| text.len() + 1));
    out.extend_from_slice(text.unwrap_or_default().as_bytes());
}
