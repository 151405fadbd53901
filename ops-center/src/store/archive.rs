//! Archives of pruned events: dated, compressed, self-describing files
//! that ordinary tools read, written and fsynced before the rows go.
//!
//! A folder holds `events-KIND-FIRSTDAY-LASTDAY-WRITTENMS-N.jsonl.gz` files
//! (gzip; one JSON object per line, one line per event, in received
//! order) and `manifest.json`, which lists every file with its event
//! count, kind, time range (received order, RFC 3339 and Unix ms), size
//! and SHA-256. Each line has the event's key and times, `event` (the
//! proto3 JSON mapping of `vigil.v1.Event`, .proto field names) and `body`
//! (its protobuf bytes exactly as stored, base64), so a reader needs
//! nothing of Vigil to search it (`zcat … | jq`), and Vigil reads back the
//! exact event (`vigil replay --archive DIR`).
//!
//! Writing order: the file under a temporary name, fsync, rename, fsync the
//! folder; then the manifest the same way; only then are the rows deleted.
//! A crash in between leaves a file the manifest does not list (ignored;
//! its rows are still in the store and archived again by the next pass),
//! never a deleted row without its archive. The manifest is rewritten
//! under an exclusive lock on `DIR/.lock`, so the automatic pruner and a
//! `vigil ops prune` never lose each other's entries.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use base64::Engine as _;
use prost::Message;
use serde::{Deserialize, Serialize};
use vigil_proto::v1::{Event, StoredEvent};

use super::{
    StoreError,
    retention::{Candidate, kind_name},
    sqlite::{from_millis, millis},
};

/// The manifest's file name in an archive folder.
pub const MANIFEST: &str = "manifest.json";
/// What `format` says in a manifest this version writes.
pub const FORMAT: &str = "vigil-event-archive/1";

/// `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub about: String,
    pub files: Vec<FileEntry>,
}

/// One archive file as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its name in the folder.
    pub file: String,
    /// `alarm`, `camera`, `health` or `other`.
    pub kind: String,
    pub events: u64,
    /// Received-order time of its first and last event.
    pub first_received: String,
    pub last_received: String,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Size and SHA-256 (hex) of the file as written.
    pub bytes: u64,
    pub sha256: String,
    /// When it was written.
    pub written_at: String,
}

/// One line of an archive file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub post_id: String,
    pub seq: u64,
    pub kind: String,
    /// Received-order time (Unix ms): the gateway's time, or when stored.
    pub received_ms: i64,
    pub stored_ms: i64,
    /// The event, in the proto3 JSON mapping (for people and tools).
    pub event: serde_json::Value,
    /// The event's protobuf bytes as stored, base64 (what Vigil reads).
    pub body: String,
}

/// An archive folder being written to.
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn rfc3339(ms: i64) -> String {
    let t: time::OffsetDateTime = from_millis(ms).into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

fn day(ms: i64) -> String {
    let t: time::OffsetDateTime = from_millis(ms).into();
    format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day())
}

/// The proto3 JSON of stored event bytes; `null` if they do not decode (the
/// `body` still carries them).
fn event_json(body: &[u8]) -> serde_json::Value {
    vigil_proto::json::bytes_to_json("Event", body, vigil_proto::json::Fields::Set)
        .unwrap_or(serde_json::Value::Null)
}

/// fsyncs a folder, so a rename in it is durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Archive {
    /// Opens (creating) an archive folder.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `rows` (one kind, in received order) as one file, durably,
    /// and lists it in the manifest. Returns the file's name.
    pub fn write(&mut self, kind: i32, rows: &[Candidate]) -> Result<String, StoreError> {
        let first = rows.iter().map(|c| c.key.received_ms).min().unwrap_or(0);
        let last = rows.iter().map(|c| c.key.received_ms).max().unwrap_or(0);
        let kind = kind_name(kind);
        // Named when written (the wall clock, not the pass's `now`, which
        // every file of a pass shares), with a number that makes it new:
        // an archive file is never replaced.
        let written = millis(SystemTime::now());
        let stem = format!("events-{kind}-{}-{}-{written}", day(first), day(last));
        let tmp = self.dir.join(format!(".{stem}.tmp"));
        {
            let file = File::create(&tmp).map_err(io(&tmp))?;
            let mut gz =
                flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
            for c in rows {
                let line = Line {
                    post_id: c.key.post_id.clone(),
                    seq: c.key.seq,
                    kind: kind.to_owned(),
                    received_ms: c.key.received_ms,
                    stored_ms: c.stored_ms,
                    event: event_json(&c.body),
                    body: base64::engine::general_purpose::STANDARD.encode(&c.body),
                };
                serde_json::to_writer(&mut gz, &line).map_err(|e| StoreError::Io {
                    path: tmp.clone(),
                    source: e.into(),
                })?;
                gz.write_all(b"\n").map_err(io(&tmp))?;
            }
            let file = gz
                .finish()
                .map_err(io(&tmp))?
                .into_inner()
                .map_err(|e| StoreError::Io {
                    path: tmp.clone(),
                    source: e.into_error(),
                })?;
            file.sync_all().map_err(io(&tmp))?;
        }
        let (bytes, sha256) = digest(&tmp)?;
        // A hard link fails where a file exists (a rename would replace
        // it): the first free number wins.
        let mut name = String::new();
        for n in 0..10_000u32 {
            let candidate = format!("{stem}-{n}.jsonl.gz");
            match std::fs::hard_link(&tmp, self.dir.join(&candidate)) {
                Ok(()) => {
                    name = candidate;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&self.dir.join(&candidate))(e)),
            }
        }
        if name.is_empty() {
            return Err(StoreError::Io {
                path: self.dir.join(format!("{stem}-N.jsonl.gz")),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "no free archive file name",
                ),
            });
        }
        std::fs::remove_file(&tmp).map_err(io(&tmp))?;
        sync_dir(&self.dir)?;
        self.add_to_manifest(FileEntry {
            file: name.clone(),
            kind: kind.to_owned(),
            events: rows.len() as u64,
            first_received: rfc3339(first),
            last_received: rfc3339(last),
            first_ms: first,
            last_ms: last,
            bytes,
            sha256,
            written_at: rfc3339(written),
        })?;
        Ok(name)
    }

    fn add_to_manifest(&self, entry: FileEntry) -> Result<(), StoreError> {
        let lock_path = self.dir.join(".lock");
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let mut manifest = match read_manifest(&self.dir) {
            Ok(m) => m,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Manifest {
                    format: FORMAT.into(),
                    about: "Events pruned from a Vigil operations center: one gzip file of JSON \
                            lines per entry (post_id, seq, kind, received_ms, stored_ms, event \
                            as proto3 JSON, body as base64 protobuf), in received order."
                        .into(),
                    files: Vec::new(),
                }
            }
            Err(e) => return Err(e),
        };
        manifest.files.push(entry);
        let path = self.dir.join(MANIFEST);
        let tmp = self.dir.join(format!(".{MANIFEST}.tmp"));
        {
            let mut file = File::create(&tmp).map_err(io(&tmp))?;
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Io {
                path: tmp.clone(),
                source: e.into(),
            })?;
            file.write_all(&text).map_err(io(&tmp))?;
            file.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        drop(lock);
        Ok(())
    }
}

/// Size and SHA-256 (hex) of a file.
fn digest(path: &Path) -> Result<(u64, String), StoreError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let read = file.read(&mut buf).map_err(io(path))?;
        if read == 0 {
            break;
        }
        ctx.update(&buf[..read]);
        n += read as u64;
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((n, hex))
}

/// Reads `DIR/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        StoreError::Corrupt(format!("{}: not an archive manifest: {e}", path.display()))
    })?;
    if manifest.format != FORMAT {
        return Err(StoreError::Corrupt(format!(
            "{}: format {:?}, this version reads {FORMAT:?}",
            path.display(),
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Which archived events [`read`] returns: the live replay's filters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArchiveFilter {
    /// Only these posts; empty = all.
    pub post_ids: Vec<String>,
    /// Only these kinds (`EventKind` values); empty = all.
    pub kinds: Vec<i32>,
    /// Received from (inclusive) and to (exclusive), Unix ms.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Seq range, both ends inclusive (with exactly one post).
    pub from_seq: u64,
    pub to_seq: Option<u64>,
    /// At most this many (0 = all).
    pub limit: u64,
}

/// The archived events of `dir` that `filter` selects, in the live
/// replay's order: one post in seq order, anything else in received order
/// (time, post, seq). Every file the manifest lists whose kind and time
/// range can hold a match is checked against its SHA-256 before it is read;
/// a mismatch is an error naming the file.
pub fn read(dir: &Path, filter: &ArchiveFilter) -> Result<Vec<StoredEvent>, StoreError> {
    let manifest = read_manifest(dir)?;
    let kinds: Vec<&str> = filter.kinds.iter().map(|&k| kind_name(k)).collect();
    let mut found: Vec<(i64, String, u64, StoredEvent)> = Vec::new();
    for entry in &manifest.files {
        if !kinds.is_empty() && !kinds.contains(&entry.kind.as_str()) {
            continue;
        }
        if filter.from_ms.is_some_and(|f| entry.last_ms < f)
            || filter.to_ms.is_some_and(|t| entry.first_ms >= t)
        {
            continue;
        }
        if entry.file.contains('/') || entry.file.starts_with('.') {
            return Err(StoreError::Corrupt(format!(
                "{}: file name {:?} is not in the folder",
                dir.join(MANIFEST).display(),
                entry.file
            )));
        }
        let path = dir.join(&entry.file);
        let (bytes, sha256) = digest(&path)?;
        if bytes != entry.bytes || sha256 != entry.sha256 {
            return Err(StoreError::Corrupt(format!(
                "{}: SHA-256 {sha256} ({bytes} bytes) differs from the manifest's {} ({} bytes)",
                path.display(),
                entry.sha256,
                entry.bytes
            )));
        }
        let file = File::open(&path).map_err(io(&path))?;
        let reader = BufReader::new(flate2::read::GzDecoder::new(file));
        for (n, text) in reader.lines().enumerate() {
            let text = text.map_err(io(&path))?;
            let line: Line = serde_json::from_str(&text).map_err(|e| {
                StoreError::Corrupt(format!("{} line {}: {e}", path.display(), n + 1))
            })?;
            if !filter.post_ids.is_empty() && !filter.post_ids.contains(&line.post_id) {
                continue;
            }
            if filter.from_ms.is_some_and(|f| line.received_ms < f)
                || filter.to_ms.is_some_and(|t| line.received_ms >= t)
                || line.seq < filter.from_seq
                || filter.to_seq.is_some_and(|t| line.seq > t)
            {
                continue;
            }
            let body = base64::engine::general_purpose::STANDARD
                .decode(&line.body)
                .map_err(|e| {
                    StoreError::Corrupt(format!("{} line {}: body: {e}", path.display(), n + 1))
                })?;
            let event = Event::decode(&body[..]).map_err(|e| {
                StoreError::Corrupt(format!("{} line {}: body: {e}", path.display(), n + 1))
            })?;
            found.push((
                line.received_ms,
                line.post_id,
                line.seq,
                StoredEvent {
                    event: Some(event),
                    stored_at: Some(from_millis(line.stored_ms).into()),
                    incident_id: String::new(),
                },
            ));
        }
    }
    if filter.post_ids.len() == 1 {
        found.sort_by_key(|a| a.2);
    } else {
        found.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
    }
    // An event archived twice (a pass interrupted after its file, before
    // its manifest entry, then archived again) is read once.
    found.dedup_by(|a, b| a.1 == b.1 && a.2 == b.2);
    let mut out: Vec<StoredEvent> = found.into_iter().map(|f| f.3).collect();
    if filter.limit > 0 {
        out.truncate(usize::try_from(filter.limit).unwrap_or(usize::MAX));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ReceivedKey;

    fn candidate(seq: u64, ms: i64) -> Candidate {
        let event = Event {
            post_id: "p-1".into(),
            seq,
            ..Default::default()
        };
        Candidate {
            key: ReceivedKey {
                received_ms: ms,
                post_id: "p-1".into(),
                seq,
            },
            stored_ms: ms,
            kind: 0,
            body: event.encode_to_vec(),
            incident: None,
            above_watermark: false,
        }
    }

    /// Two files of one pass (same kind, same days, likely the same
    /// millisecond) are two files: the second never replaces the
    /// first, and both read back.
    #[test]
    fn files_of_one_pass_never_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = Archive::open(dir.path()).unwrap();
        let a = archive
            .write(0, &[candidate(1, 1_000), candidate(2, 2_000)])
            .unwrap();
        let b = archive.write(0, &[candidate(3, 3_000)]).unwrap();
        assert_ne!(a, b);
        let manifest = read_manifest(dir.path()).unwrap();
        assert_eq!(manifest.files.len(), 2);
        let all = read(dir.path(), &ArchiveFilter::default()).unwrap();
        let seqs: Vec<u64> = all.iter().map(|e| e.event.as_ref().unwrap().seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        // Nothing temporary is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
