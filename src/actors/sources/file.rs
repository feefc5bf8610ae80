//! [`FileSource`]: lines appended to the files of a directory, published in order.
//!
//! Polls the directory: new files are picked up, a rotated file (renamed, same inode)
//! is read to its end, a truncated or rewritten one again from its start
//! (`crate::sources::offsets`). Each poll reads one chunk of one file, publishes its
//! lines, and only then records the new offset in the data directory; a crash in
//! between publishes those lines again under the same ids, as duplicates. A line that
//! is not a JSON object, or is over `limits.max_event_bytes`, is skipped with a log line
//! naming the file and line number, and counted.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;

use super::publish::{Outcome, SourcePublisher};
use crate::auth::glob_matches;
use crate::config::SourceConfig;
use crate::metrics::sources::{SourceState, SourceStatus};
use crate::sources::lines::{self, Piece};
use crate::sources::offsets::{Listed, Note, Offsets, HEAD_BYTES};

/// Files followed at once; more are ignored (and logged).
const MAX_FILES: usize = 1000;
/// Directory entries looked at per poll.
const MAX_ENTRIES: usize = 10_000;
/// How far one poll looks for the end of an over-long line.
const MAX_SKIP_PER_POLL: u64 = 64 << 20;
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct FileSource {
    config: SourceConfig,
    status: Arc<SourceStatus>,
    publisher: SourcePublisher,
    /// Longest line: `limits.max_event_bytes`.
    max_line: usize,
    /// Lines per publish: `limits.max_batch_events`.
    max_lines: usize,
    offsets_path: PathBuf,
    offsets: Option<Offsets>,
    busy: bool,
    retry_at: Option<Instant>,
}

/// One piece of a chunk, in file order, and where it ends.
enum Item {
    Blank,
    Bad(String),
    Event(usize),
}

impl FileSource {
    pub fn new(
        config: SourceConfig,
        status: Arc<SourceStatus>,
        publisher: SourcePublisher,
        data_dir: &std::path::Path,
        max_line: usize,
        max_lines: usize,
    ) -> Self {
        let offsets_path = data_dir
            .join("sources")
            .join(format!("{}.offsets.json", config.name));
        FileSource {
            config,
            status,
            publisher,
            max_line,
            max_lines,
            offsets_path,
            offsets: None,
            busy: false,
            retry_at: None,
        }
    }

    fn fail(&mut self, message: String) {
        if self.status.state() != SourceState::Error(message.clone()) {
            log::error!("source `{}`: {message}", self.config.name);
        }
        self.status.set_state(SourceState::Error(message));
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    fn load(&self) -> Result<Offsets, String> {
        match std::fs::read(&self.offsets_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "offsets file {} is unreadable ({e}); remove it to read every file again \
                     from its start",
                    self.offsets_path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Offsets::default()),
            Err(e) => Err(format!("cannot read {}: {e}", self.offsets_path.display())),
        }
    }

    fn save(&self, offsets: &Offsets) -> Result<(), String> {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.offsets_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.offsets_path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(offsets)?)?;
            std::fs::rename(&tmp, &self.offsets_path)
        };
        write().map_err(|e| format!("cannot write {}: {e}", self.offsets_path.display()))
    }

    /// The directory's files: those the glob matches, and those followed already.
    fn list(&self, offsets: &Offsets) -> Result<Vec<Listed>, String> {
        let dir = &self.config.path;
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let mut listing = Vec::new();
        for entry in entries.take(MAX_ENTRIES).flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue; // gone since the listing
            };
            let matches = glob_matches(&self.config.glob, &name);
            if !meta.is_file() || !(matches || offsets.files.contains_key(&meta.ino())) {
                continue;
            }
            let mut head = Vec::with_capacity(HEAD_BYTES);
            if let Ok(f) = File::open(entry.path()) {
                let _ = f.take(HEAD_BYTES as u64).read_to_end(&mut head);
            }
            listing.push(Listed {
                name,
                inode: meta.ino(),
                size: meta.len(),
                head,
                matches,
            });
        }
        Ok(listing)
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.retry_at = None;
        let mut offsets = match self.offsets.take() {
            Some(o) => o,
            None => match self.load() {
                Ok(o) => o,
                Err(e) => return self.fail(e),
            },
        };
        let listing = match self.list(&offsets) {
            Ok(l) => l,
            Err(e) => {
                self.offsets = Some(offsets);
                return self.fail(e);
            }
        };
        let prefix = self.config.topic.clone();
        let notes = offsets.reconcile(
            &listing,
            MAX_FILES,
            |name| lines::topic_of(&prefix, name),
            || format!("{:08x}", fastrand::u32(..)),
        );
        for note in &notes {
            let name = &self.config.name;
            match note {
                Note::New(f) => log::info!("source `{name}`: reading new file {f}"),
                Note::Renamed { from, to } => {
                    log::info!("source `{name}`: {from} was renamed {to}; reading it to its end")
                }
                Note::Truncated(f) => {
                    log::warn!("source `{name}`: {f} was truncated or replaced; reading it again from its start")
                }
                Note::Gone(f) => log::info!("source `{name}`: {f} is gone"),
            }
        }
        if !notes.is_empty() {
            if let Err(e) = self.save(&offsets) {
                self.offsets = Some(offsets);
                return self.fail(e);
            }
        }
        self.status.set_state(SourceState::Running);
        self.report(&offsets, &listing);
        // Files being read first (a rotated file before its successor), then by name.
        let next = listing
            .iter()
            .filter_map(|l| offsets.files.get(&l.inode).map(|f| (l, f)))
            .filter(|(l, f)| l.size > f.offset)
            .min_by_key(|(l, f)| (f.offset == 0, l.name.clone()))
            .map(|(l, _)| l.clone());
        let Some(file) = next else {
            self.offsets = Some(offsets);
            return;
        };
        match self.read_chunk(&mut offsets, &file) {
            Ok(Some((texts, items, ends))) => {
                self.offsets = Some(offsets);
                self.publish(ctx, file, texts, items, ends);
            }
            Ok(None) => self.offsets = Some(offsets),
            Err(e) => {
                self.offsets = Some(offsets);
                self.fail(e);
            }
        }
    }

    /// Reads one chunk of `file` at its offset: the events of its lines, each piece,
    /// and where each piece ends. `None` when an over-long line was skipped instead.
    #[allow(clippy::type_complexity)]
    fn read_chunk(
        &mut self,
        offsets: &mut Offsets,
        file: &Listed,
    ) -> Result<Option<(Vec<String>, Vec<Item>, Vec<u64>)>, String> {
        let Some(at) = offsets.files.get(&file.inode).cloned() else {
            return Ok(None);
        };
        let path = self.config.path.join(&file.name);
        let io = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let mut f = File::open(&path).map_err(io)?;
        f.seek(SeekFrom::Start(at.offset)).map_err(io)?;
        let mut buf = Vec::new();
        (&mut f)
            .take(self.max_line as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        let split = lines::split(&buf, self.max_line, self.max_lines);
        if split.pieces.is_empty() {
            if split.overlong_tail {
                self.skip_long_line(offsets, file, &mut f, at.offset + buf.len() as u64)?;
            }
            return Ok(None);
        }
        let (mut texts, mut items, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0usize;
        for piece in &split.pieces {
            let line_at = at.offset + start as u64;
            let item = match piece {
                Piece::TooLong => Item::Bad(format!("longer than {} bytes", self.max_line)),
                Piece::Line(range) => {
                    let id = format!("{}:{}:{line_at}", self.config.name, at.tag);
                    match lines::event_of(&buf[range.clone()], &at.topic, &id) {
                        None => Item::Blank,
                        Some(Err(why)) => Item::Bad(why),
                        Some(Ok(text)) => {
                            texts.push(text);
                            Item::Event(texts.len() - 1)
                        }
                    }
                }
            };
            // The piece ends at its `\n`.
            let nl = buf[start..].iter().position(|&b| b == b'\n').unwrap_or(0);
            start += nl + 1;
            items.push(item);
            ends.push(at.offset + start as u64);
        }
        Ok(Some((texts, items, ends)))
    }

    /// Skips a line over the limit whose end was not in the chunk: reads on to its
    /// `\n` (at most [`MAX_SKIP_PER_POLL`] per poll; an unfinished one waits).
    fn skip_long_line(
        &mut self,
        offsets: &mut Offsets,
        file: &Listed,
        f: &mut File,
        mut pos: u64,
    ) -> Result<(), String> {
        let mut chunk = vec![0u8; 64 << 10];
        let limit = pos + MAX_SKIP_PER_POLL;
        while pos < limit {
            let n = f.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(()); // still being written
            }
            if let Some(nl) = chunk[..n].iter().position(|&b| b == b'\n') {
                let end = pos + nl as u64 + 1;
                let line = offsets.files.get(&file.inode).map_or(0, |f| f.line) + 1;
                self.bad_line(
                    &file.name,
                    line,
                    &format!("longer than {} bytes", self.max_line),
                );
                offsets.advance(file.inode, end, 1, &file.head);
                return self.save(offsets);
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn bad_line(&self, file: &str, line: u64, why: &str) {
        log::warn!(
            "source `{}`: {file} line {line} skipped: {why}",
            self.config.name
        );
        self.status.skipped.fetch_add(1, Relaxed);
    }

    fn publish(
        &mut self,
        ctx: &mut Context<Self>,
        file: Listed,
        texts: Vec<String>,
        items: Vec<Item>,
        ends: Vec<u64>,
    ) {
        self.busy = true;
        let publisher = self.publisher.clone();
        ctx.spawn(
            async move { publisher.publish(texts).await }
                .into_actor(self)
                .map(move |outcomes, act, ctx| {
                    act.busy = false;
                    act.published(&file, &items, &ends, &outcomes);
                    if act.retry_at.is_none() {
                        // More may be waiting in this file or another: go on at once.
                        ctx.run_later(Duration::ZERO, |act, ctx| act.poll(ctx));
                    }
                }),
        );
    }

    /// Records what was published, up to the first line to publish again.
    fn published(&mut self, file: &Listed, items: &[Item], ends: &[u64], outcomes: &[Outcome]) {
        let Some(mut offsets) = self.offsets.take() else {
            return;
        };
        let first_line = offsets.files.get(&file.inode).map_or(0, |f| f.line);
        let mut done = 0;
        for (k, item) in items.iter().enumerate() {
            let line = first_line + k as u64 + 1;
            match item {
                Item::Blank => {}
                Item::Bad(why) => self.bad_line(&file.name, line, why),
                Item::Event(i) => match outcomes.get(*i) {
                    Some(Outcome::Published) => {
                        self.status.published.fetch_add(1, Relaxed);
                    }
                    Some(Outcome::Refused(why)) => self.bad_line(&file.name, line, why),
                    Some(Outcome::Retry(_)) | None => {
                        self.retry_at = Some(Instant::now() + Duration::from_millis(50));
                        break;
                    }
                },
            }
            done = k + 1;
        }
        if done > 0 {
            offsets.advance(file.inode, ends[done - 1], done as u64, &file.head);
            if let Err(e) = self.save(&offsets) {
                self.offsets = Some(offsets);
                return self.fail(e);
            }
        }
        self.offsets = Some(offsets);
    }

    /// `/api/sources`: each file's place, and the bytes not yet read.
    fn report(&self, offsets: &Offsets, listing: &[Listed]) {
        let mut lag = 0;
        let mut files = Vec::new();
        for l in listing {
            if let Some(f) = offsets.files.get(&l.inode) {
                lag += l.size.saturating_sub(f.offset);
                files.push(
                    json!({"file": l.name, "offset": f.offset, "line": f.line, "topic": f.topic}),
                );
            }
        }
        self.status.lag.store(lag, Relaxed);
        self.status.set_position(json!({ "files": files }));
    }
}

impl Actor for FileSource {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.poll(ctx);
        let every = Duration::from_millis(self.config.poll_interval_ms);
        ctx.run_interval(every, |act, ctx| act.poll(ctx));
    }
}
