//! Where each watched file is read from, kept in the data directory across restarts.
//!
//! Files are known by inode, not name: a file renamed by rotation keeps its offset
//! and its topic, and is read to its end; the new file under the old name starts at 0.
//! A file shorter than its offset, or whose first bytes changed, was truncated or
//! replaced and is read again from 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bytes of a file's start remembered to tell a rewritten file from an appended one.
pub const HEAD_BYTES: usize = 64;

/// One file's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffset {
    /// Its name when last seen.
    pub name: String,
    /// The topic of its events, from its name when first seen.
    pub topic: String,
    /// Bytes published (whole lines).
    pub offset: u64,
    /// Lines published, for log messages (`name:line`).
    pub line: u64,
    /// Its first bytes (up to [`HEAD_BYTES`], never past `offset`), hex.
    pub head: String,
    /// Made when the file is first seen or found truncated: its lines' ids hold it, so
    /// that a line read again at an offset another line had is not a duplicate.
    pub tag: String,
}

/// A source's offsets file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    /// By inode.
    pub files: BTreeMap<u64, FileOffset>,
}

/// A file of the directory as listed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub inode: u64,
    pub size: u64,
    /// Its first bytes, up to [`HEAD_BYTES`].
    pub head: Vec<u8>,
    /// Its name matches the source's glob (a known file is followed even after a
    /// rename that no longer matches).
    pub matches: bool,
}

/// What [`Offsets::reconcile`] changed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    New(String),
    Renamed { from: String, to: String },
    Truncated(String),
    Gone(String),
}

impl Offsets {
    /// Brings the offsets in line with `listing`; at most `max_files` are followed.
    pub fn reconcile(
        &mut self,
        listing: &[Listed],
        max_files: usize,
        topic_of: impl Fn(&str) -> String,
        mut fresh_tag: impl FnMut() -> String,
    ) -> Vec<Note> {
        let mut notes = Vec::new();
        let now: BTreeMap<u64, &Listed> = listing.iter().map(|l| (l.inode, l)).collect();
        self.files.retain(|inode, f| {
            let keep = now.contains_key(inode);
            if !keep {
                notes.push(Note::Gone(f.name.clone()));
            }
            keep
        });
        for l in listing {
            let room = self.files.len() < max_files;
            match self.files.get_mut(&l.inode) {
                Some(f) => {
                    if f.name != l.name {
                        notes.push(Note::Renamed {
                            from: std::mem::replace(&mut f.name, l.name.clone()),
                            to: l.name.clone(),
                        });
                    }
                    let head = hex(&l.head);
                    if l.size < f.offset || !head.starts_with(&f.head) {
                        notes.push(Note::Truncated(l.name.clone()));
                        f.offset = 0;
                        f.line = 0;
                        f.head.clear();
                        f.tag = fresh_tag();
                    }
                }
                None if l.matches && room => {
                    notes.push(Note::New(l.name.clone()));
                    self.files.insert(
                        l.inode,
                        FileOffset {
                            name: l.name.clone(),
                            topic: topic_of(&l.name),
                            offset: 0,
                            line: 0,
                            head: String::new(),
                            tag: fresh_tag(),
                        },
                    );
                }
                None => {}
            }
        }
        notes
    }

    /// Records that `inode` was published up to `offset`, `lines` more lines; `head`
    /// is the file's start as read now.
    pub fn advance(&mut self, inode: u64, offset: u64, lines: u64, head: &[u8]) {
        if let Some(f) = self.files.get_mut(&inode) {
            f.offset = offset;
            f.line += lines;
            let keep = head.len().min(HEAD_BYTES).min(offset as usize);
            f.head = hex(&head[..keep]);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, inode: u64, content: &str, matches: bool) -> Listed {
        Listed {
            name: name.into(),
            inode,
            size: content.len() as u64,
            head: content.as_bytes()[..content.len().min(HEAD_BYTES)].to_vec(),
            matches,
        }
    }

    fn topic(name: &str) -> String {
        format!("file.{name}")
    }

    /// Tags numbered in the order they are made.
    fn tags() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            n.to_string()
        }
    }

    #[test]
    fn new_files_rotation_and_truncation() {
        let mut o = Offsets::default();
        let notes = o.reconcile(
            &[
                listed("a.jsonl", 1, "x\n", true),
                listed("b.txt", 2, "", false),
            ],
            10,
            topic,
            tags(),
        );
        assert_eq!(notes, [Note::New("a.jsonl".into())]);
        o.advance(1, 2, 1, b"x\n");
        assert_eq!((o.files[&1].offset, o.files[&1].head.as_str()), (2, "780a"));

        // Appended: nothing to note, the offset stays.
        assert!(o
            .reconcile(&[listed("a.jsonl", 1, "x\ny\n", true)], 10, topic, tags())
            .is_empty());
        assert_eq!(o.files[&1].offset, 2);

        // Rotated: the old inode under a new name keeps its place and topic.
        let notes = o.reconcile(
            &[
                listed("a.jsonl.1", 1, "x\ny\n", false),
                listed("a.jsonl", 3, "", true),
            ],
            10,
            topic,
            tags(),
        );
        assert_eq!(
            notes,
            [
                Note::Renamed {
                    from: "a.jsonl".into(),
                    to: "a.jsonl.1".into()
                },
                Note::New("a.jsonl".into())
            ]
        );
        assert_eq!(
            (o.files[&1].offset, o.files[&1].topic.as_str()),
            (2, "file.a.jsonl")
        );

        // Truncated (shorter), and rewritten (same length or more, other start).
        let notes = o.reconcile(&[listed("a.jsonl.1", 1, "", false)], 10, topic, tags());
        assert_eq!(
            notes,
            [
                Note::Gone("a.jsonl".into()),
                Note::Truncated("a.jsonl.1".into())
            ]
        );
        o.advance(1, 2, 1, b"x\n");
        let notes = o.reconcile(&[listed("a.jsonl.1", 1, "zz\n", false)], 10, topic, tags());
        assert_eq!(notes, [Note::Truncated("a.jsonl.1".into())]);
        assert_eq!(o.files[&1].offset, 0);
        assert_eq!(o.files[&1].tag, "1", "a new tag for each reading from 0");
    }

    #[test]
    fn followed_files_are_bounded() {
        let mut o = Offsets::default();
        let listing: Vec<Listed> = (0..5)
            .map(|i| listed(&format!("{i}"), i, "", true))
            .collect();
        o.reconcile(&listing, 3, topic, tags());
        assert_eq!(o.files.len(), 3);
    }
}
