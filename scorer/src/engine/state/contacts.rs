//! An account's engaged contacts, packed in one allocation ([`ContactLog`]).

use super::bytes::{Cursor, optional_str_len, str_len, write_optional_str, write_str};
use super::packed::PackedIter;

/// A contact with a positive-scoring event (kept while inside the breadth window), as read
/// from a [`ContactLog`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contact<'a> {
    pub key: &'a str,
    pub persona: &'a str,
    pub title: Option<&'a str>,
    pub last_engaged_at: i64,
}

impl Contact<'_> {
    fn encoded_len(&self) -> usize {
        8 + str_len(self.key) + str_len(self.persona) + optional_str_len(self.title)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.last_engaged_at.to_le_bytes());
        write_str(out, self.key);
        write_str(out, self.persona);
        write_optional_str(out, self.title);
    }

    /// Steps over one entry without checking its strings; returns its last engagement time.
    fn skip(cursor: &mut Cursor<'_>) -> Option<i64> {
        let time = i64::from_le_bytes(cursor.array()?);
        cursor.skip_str(0)?;
        cursor.skip_str(0)?;
        cursor.skip_str(1)?;
        Some(time)
    }

    fn read<'a>(cursor: &mut Cursor<'a>) -> Option<Contact<'a>> {
        let last_engaged_at = i64::from_le_bytes(cursor.array()?);
        Some(Contact { last_engaged_at, key: cursor.str()?, persona: cursor.str()?, title: cursor.optional_str()? })
    }
}

/// An account's engaged contacts, in order of first engagement, packed in one allocation: a
/// contact as a struct with its own string block costs about three times its text. An entry
/// is the last engagement time (8 bytes, little-endian; updated in place), then the key and
/// persona (LEB128 length, UTF-8) and the title (length plus one; 0 for none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactLog {
    bytes: Box<[u8]>,
}

impl ContactLog {
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = Contact<'a>>) -> ContactLog {
        let mut bytes = Vec::new();
        for entry in entries {
            entry.write(&mut bytes);
        }
        ContactLog { bytes: bytes.into_boxed_slice() }
    }

    pub fn iter(&self) -> PackedIter<'_, Contact<'_>> {
        PackedIter::new(&self.bytes, Contact::read, Contact::skip)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Every contact's last engagement time, without reading their strings (breadth is
    /// evaluated after every event).
    pub(crate) fn engagement_times(&self) -> impl Iterator<Item = i64> + '_ {
        let mut cursor = Cursor { rest: &self.bytes };
        std::iter::from_fn(move || Contact::skip(&mut cursor))
    }

    /// Records that `key` engaged at `t`: a new contact is appended; a known one moves its last
    /// engagement forward (never back) and takes the newer persona and title (a missing title
    /// keeps the old one).
    pub(crate) fn engage(&mut self, key: &str, persona: &str, title: Option<&str>, t: i64) {
        let mut cursor = Cursor { rest: &self.bytes };
        loop {
            let start = self.bytes.len() - cursor.rest.len();
            // Keys are compared as bytes; only the matching entry is read in full.
            let Some(found) = cursor.array::<8>().and_then(|_| {
                let len = cursor.varint()?;
                let matches = cursor.bytes(len)? == key.as_bytes();
                cursor.skip_str(0)?;
                cursor.skip_str(1)?;
                Some(matches)
            }) else {
                break;
            };
            if !found {
                continue;
            }
            let end = self.bytes.len() - cursor.rest.len();
            let Some(contact) = Contact::read(&mut Cursor { rest: &self.bytes[start..end] }) else { break };
            if t < contact.last_engaged_at {
                return;
            }
            let title = title.or(contact.title);
            if contact.persona == persona && contact.title == title {
                if let Some(time) = self.bytes.get_mut(start..start + 8) {
                    time.copy_from_slice(&t.to_le_bytes());
                }
                return;
            }
            let updated = Contact { key, persona, title, last_engaged_at: t };
            let mut out = Vec::with_capacity(self.bytes.len() - (end - start) + updated.encoded_len());
            out.extend_from_slice(&self.bytes[..start]);
            updated.write(&mut out);
            out.extend_from_slice(&self.bytes[end..]);
            self.bytes = out.into_boxed_slice();
            return;
        }
        let added = Contact { key, persona, title, last_engaged_at: t };
        let mut out = Vec::with_capacity(self.bytes.len() + added.encoded_len());
        out.extend_from_slice(&self.bytes);
        added.write(&mut out);
        self.bytes = out.into_boxed_slice();
    }

    /// Drops contacts last engaged at or before `oldest`, then keeps the `max` most recently
    /// engaged (ties: the smaller key). Returns how many the `max` bound dropped.
    pub(crate) fn prune(&mut self, oldest: i64, max: usize) -> u64 {
        let mut count = 0;
        let mut stale = false;
        for time in self.engagement_times() {
            count += 1;
            stale |= time <= oldest;
        }
        if !stale && count <= max {
            return 0;
        }
        let mut kept: Vec<Contact<'_>> = self.iter().filter(|c| c.last_engaged_at > oldest).collect();
        let mut dropped = 0;
        if kept.len() > max {
            kept.sort_by(|a, b| b.last_engaged_at.cmp(&a.last_engaged_at).then_with(|| a.key.cmp(b.key)));
            dropped = (kept.len() - max) as u64;
            kept.truncate(max);
        }
        *self = ContactLog::from_entries(kept);
        dropped
    }

    pub(crate) fn len(&self) -> usize {
        self.engagement_times().count()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The old representation: a list of owned contacts, updated the obvious way.
    #[derive(Debug, Clone, PartialEq)]
    struct ModelContact {
        key: String,
        persona: String,
        title: Option<String>,
        last: i64,
    }

    #[derive(Debug, Clone)]
    enum ContactOp {
        Engage { key: u8, persona: u8, title: Option<u8>, t: i64 },
        Prune { oldest: i64, max: usize },
    }

    fn contact_op() -> impl Strategy<Value = ContactOp> {
        prop_oneof![
            4 => (0u8..6, 0u8..3, proptest::option::of(0u8..3), 0i64..40)
                .prop_map(|(key, persona, title, t)| ContactOp::Engage { key, persona, title, t }),
            1 => (0i64..40, 1usize..5).prop_map(|(oldest, max)| ContactOp::Prune { oldest, max }),
        ]
    }

    proptest! {
        /// The packed contacts behave exactly like a plain list of owned contacts.
        #[test]
        fn contact_log_matches_a_plain_list(ops in proptest::collection::vec(contact_op(), 0..40)) {
            let keys = ["c-0", "c-1", "ü-2", "", "a-much-longer-contact-key-of-more-than-a-few-bytes@example.com", "c-5"];
            let personas = ["economic_buyer", "champion", "unknown"];
            let titles = ["VP Finance", "", "Директор"];
            let mut log = super::ContactLog::default();
            let mut model: Vec<ModelContact> = Vec::new();
            for op in ops {
                match op {
                    ContactOp::Engage { key, persona, title, t } => {
                        let (key, persona) = (keys[usize::from(key)], personas[usize::from(persona)]);
                        let title = title.map(|i| titles[usize::from(i)]);
                        match model.iter_mut().find(|c| c.key == key) {
                            Some(c) if t >= c.last => {
                                let title = title.map(str::to_owned).or(c.title.clone());
                                *c = ModelContact { key: key.into(), persona: persona.into(), title, last: t };
                            }
                            Some(_) => {}
                            None => model.push(ModelContact {
                                key: key.into(),
                                persona: persona.into(),
                                title: title.map(Into::into),
                                last: t,
                            }),
                        }
                        log.engage(key, persona, title, t);
                    }
                    ContactOp::Prune { oldest, max } => {
                        model.retain(|c| c.last > oldest);
                        if model.len() > max {
                            model.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.key.cmp(&b.key)));
                            model.truncate(max);
                        }
                        log.prune(oldest, max);
                    }
                }
                let got: Vec<ModelContact> = log
                    .iter()
                    .map(|c| ModelContact {
                        key: c.key.into(),
                        persona: c.persona.into(),
                        title: c.title.map(Into::into),
                        last: c.last_engaged_at,
                    })
                    .collect();
                prop_assert_eq!(&got, &model);
                prop_assert_eq!(log.iter().len(), model.len());
            }
        }
    }
}
