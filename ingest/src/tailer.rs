//! File collectors: tail the files matching a glob into a topic, like Filebeat.
//!
//! * Files are identified by (device, inode), so a rotation by rename-and-recreate
//!   is seen as a new file at the watched path while the renamed one is read to its
//!   end first (its lines come before the new file's). A file whose size drops
//!   below the read offset was truncated in place (copytruncate): it is read again
//!   from the start.
//! * Only complete lines (ending in `\n`) are sent; a partial last line waits.
//! * Checkpoints `{(dev, inode): offset}` are written with write-temp + fsync +
//!   rename + directory fsync, and only after the sink acknowledged the append. So
//!   that a crash between the acknowledgement and the checkpoint write does not
//!   duplicate lines, each batch first writes an *intent* (file, from, to, and the
//!   topic's end offsets before the append); on restart a pending intent is settled
//!   by checking whether the topic grew by the batch's record count. This assumes
//!   the collector is the only writer of its topic while it runs.
//! * Copytruncate has Filebeat's inherent race: lines written between the copy
//!   and the truncate, or a file regrown past the old offset before the next poll,
//!   cannot be told apart from old data.

use crate::glob;
use crate::pipeline::{Pipeline, PipelineConfig, Routed};
use crate::sink::{IngestRecord, Sink, SinkError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Each line is stored as it is (without its newline).
    #[default]
    Lines,
    /// Each line is a JSON event: key, schema and transforms apply.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCollectorConfig {
    /// Unique name; the checkpoint file is named after it. Defaults to topic + path.
    #[serde(default)]
    pub name: String,
    /// Glob of the files to follow (`*`, `?`, `[..]`, `**`).
    pub path: String,
    pub topic: String,
    #[serde(default)]
    pub format: FileFormat,
    #[serde(flatten)]
    pub pipeline: PipelineConfig,
    /// How often files are checked for new data.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Most bytes read per append.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
}

fn default_poll_ms() -> u64 {
    200
}

fn default_batch_bytes() -> usize {
    512 * 1024
}

impl FileCollectorConfig {
    /// Fills the default name and checks the collector can run.
    pub fn normalize(mut self) -> Result<Self, String> {
        if self.path.is_empty() || self.topic.is_empty() {
            return Err("a file collector needs `path` and `topic`".into());
        }
        if self.name.is_empty() {
            self.name = format!("{}-{}", self.topic, self.path);
        }
        self.name = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if self.format == FileFormat::Lines
            && (!self.pipeline.transforms.is_empty() || self.pipeline.schema.is_some())
        {
            return Err(format!(
                "collector {}: transforms and schema need format = \"json\"",
                self.name
            ));
        }
        if self.batch_bytes == 0 {
            self.batch_bytes = default_batch_bytes();
        }
        Pipeline::new(&self.pipeline).map_err(|e| format!("collector {}: {e}", self.name))?;
        Ok(self)
    }
}

type FileId = (u64, u64);

fn id_key(id: FileId) -> String {
    format!("{}:{}", id.0, id.1)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// "dev:inode" -> state.
    pub files: BTreeMap<String, FileState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Intent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileState {
    pub path: PathBuf,
    pub offset: u64,
}

/// A batch being appended: settled on restart by comparing end offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub file: String,
    pub path: PathBuf,
    pub from: u64,
    pub to: u64,
    pub topic: String,
    pub records: u64,
    pub end_offsets_before: Vec<i64>,
}

impl Checkpoint {
    pub fn load(path: &Path) -> Result<Checkpoint, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("checkpoint {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(e) => Err(format!("reading checkpoint {}: {e}", path.display())),
        }
    }

    pub fn store(&self, path: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        write_atomic(path, &bytes)
            .map_err(|e| format!("writing checkpoint {}: {e}", path.display()))
    }
}

/// Write a temp file, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    let tmp = dir.join(name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

struct Tracked {
    path: PathBuf,
    file: File,
    offset: u64,
    /// Not matched by the glob any more (renamed or deleted): read to the end, then dropped.
    gone: bool,
}

pub struct Tailer {
    config: FileCollectorConfig,
    pipeline: Pipeline,
    sink: Arc<dyn Sink>,
    checkpoint_path: PathBuf,
    checkpoint: Checkpoint,
    tracked: BTreeMap<FileId, Tracked>,
}

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollStats {
    pub records: usize,
    pub dead_letters: usize,
    pub skipped: usize,
}

impl Tailer {
    /// Opens the collector's checkpoint and settles a batch left pending by a crash.
    pub fn new(
        config: FileCollectorConfig,
        sink: Arc<dyn Sink>,
        checkpoint_path: PathBuf,
    ) -> Result<Tailer, String> {
        let config = config.normalize()?;
        let pipeline = Pipeline::new(&config.pipeline)?;
        let mut checkpoint = Checkpoint::load(&checkpoint_path)?;
        if let Some(intent) = checkpoint.pending.take() {
            let now = sink
                .end_offsets(&intent.topic)
                .map_err(|e| format!("settling the pending batch: {e}"))?;
            let grown: i64 =
                now.iter().sum::<i64>() - intent.end_offsets_before.iter().sum::<i64>();
            let done = intent.records == 0 || grown >= intent.records as i64;
            tracing::info!(collector = %config.name, done, from = intent.from, to = intent.to, "settled the batch pending at the last stop");
            let offset = if done { intent.to } else { intent.from };
            checkpoint.files.insert(
                intent.file.clone(),
                FileState {
                    path: intent.path.clone(),
                    offset,
                },
            );
            checkpoint.store(&checkpoint_path)?;
        }
        Ok(Tailer {
            config,
            pipeline,
            sink,
            checkpoint_path,
            checkpoint,
            tracked: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &FileCollectorConfig {
        &self.config
    }

    /// Polls until `stop` is set. Sink errors are retried with backoff.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let mut backoff = Duration::from_millis(self.config.poll_ms.max(10));
        while !stop.load(Ordering::Relaxed) {
            match self.poll(&stop) {
                Ok(_) => backoff = Duration::from_millis(self.config.poll_ms.max(10)),
                Err(e) => {
                    tracing::warn!(collector = %self.config.name, error = %e, "file collector: will retry");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            sleep_unless_stopped(backoff, &stop);
        }
    }

    /// Scans the glob, reads every file to its end and appends what it read.
    pub fn poll(&mut self, stop: &AtomicBool) -> Result<PollStats, String> {
        self.scan()?;
        let mut stats = PollStats::default();
        // Renamed-away files first: their lines precede the new file's.
        let mut order: Vec<FileId> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.gone)
            .map(|(id, _)| *id)
            .collect();
        let mut current: Vec<(PathBuf, FileId)> = self
            .tracked
            .iter()
            .filter(|(_, t)| !t.gone)
            .map(|(id, t)| (t.path.clone(), *id))
            .collect();
        current.sort();
        order.extend(current.into_iter().map(|(_, id)| id));
        for id in order {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(stats);
                }
                let read = self.read_batch(id, &mut stats)?;
                if !read {
                    break;
                }
            }
            if self.tracked.get(&id).is_some_and(|t| t.gone) {
                self.tracked.remove(&id);
                self.checkpoint.files.remove(&id_key(id));
                self.checkpoint.store(&self.checkpoint_path)?;
            }
        }
        Ok(stats)
    }

    fn scan(&mut self) -> Result<(), String> {
        let mut seen = Vec::new();
        for path in glob::expand(&self.config.path) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let id = (meta.dev(), meta.ino());
            seen.push(id);
            match self.tracked.get_mut(&id) {
                Some(t) => {
                    t.path = path;
                    t.gone = false;
                    if meta.len() < t.offset {
                        tracing::info!(collector = %self.config.name, path = %t.path.display(), "file truncated: reading it from the start");
                        t.offset = 0;
                    }
                }
                None => {
                    let Ok(file) = File::open(&path) else {
                        continue;
                    };
                    let mut offset = self
                        .checkpoint
                        .files
                        .get(&id_key(id))
                        .map_or(0, |s| s.offset);
                    if meta.len() < offset {
                        offset = 0;
                    }
                    self.tracked.insert(
                        id,
                        Tracked {
                            path,
                            file,
                            offset,
                            gone: false,
                        },
                    );
                }
            }
        }
        for (id, t) in self.tracked.iter_mut() {
            if !seen.contains(id) {
                t.gone = true;
            }
        }
        // Checkpoints of files neither tracked nor present are forgotten.
        let live: Vec<String> = self.tracked.keys().map(|id| id_key(*id)).collect();
        let before = self.checkpoint.files.len();
        self.checkpoint.files.retain(|k, _| live.contains(k));
        if self.checkpoint.files.len() != before {
            self.checkpoint.store(&self.checkpoint_path)?;
        }
        Ok(())
    }

    /// Reads and appends one batch of complete lines; false at the end of the file.
    fn read_batch(&mut self, id: FileId, stats: &mut PollStats) -> Result<bool, String> {
        let Some(t) = self.tracked.get_mut(&id) else {
            return Ok(false);
        };
        // A file truncated in place after it was renamed away, or while being read.
        let len = t
            .file
            .metadata()
            .map_err(|e| format!("{}: {e}", t.path.display()))?
            .len();
        if len < t.offset {
            t.offset = 0;
        }
        if len == t.offset {
            return Ok(false);
        }
        let want = ((len - t.offset) as usize).min(self.config.batch_bytes);
        let mut buf = vec![0u8; want];
        t.file
            .seek(SeekFrom::Start(t.offset))
            .map_err(|e| format!("{}: {e}", t.path.display()))?;
        let mut got = 0;
        while got < want {
            match t.file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{}: {e}", t.path.display())),
            }
        }
        buf.truncate(got);
        let end = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            // One line longer than a batch: send what fits as one record.
            None if got == self.config.batch_bytes => got,
            None => return Ok(false),
        };
        let (from, to, path) = (t.offset, t.offset + end as u64, t.path.clone());
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for line in buf[..end].split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match self.config.format {
                FileFormat::Lines => records.push(IngestRecord {
                    key: None,
                    value: line.to_vec(),
                    partition: None,
                }),
                FileFormat::Json => match serde_json::from_slice(line) {
                    Ok(event) => match self.pipeline.route(event, None, None) {
                        Routed::Record(r) => records.push(r),
                        Routed::DeadLetter(r, _) => dead.push(r),
                        Routed::Rejected(reason) => {
                            stats.skipped += 1;
                            tracing::warn!(collector = %self.config.name, %reason, "event fails the schema and there is no dead-letter topic: skipped");
                        }
                    },
                    Err(e) => {
                        let reason = format!("invalid JSON: {e}");
                        match &self.pipeline.dead_letter_topic {
                            Some(_) => {
                                let v = serde_json::json!({"reason": reason, "record": String::from_utf8_lossy(line)});
                                dead.push(IngestRecord {
                                    key: None,
                                    value: v.to_string().into_bytes(),
                                    partition: None,
                                });
                            }
                            None => {
                                stats.skipped += 1;
                                tracing::warn!(collector = %self.config.name, %reason, "skipped a line");
                            }
                        }
                    }
                },
            }
        }
        let intent = Intent {
            file: id_key(id),
            path: path.clone(),
            from,
            to,
            topic: self.config.topic.clone(),
            records: records.len() as u64,
            end_offsets_before: self
                .sink
                .end_offsets(&self.config.topic)
                .map_err(sink_err)?,
        };
        self.checkpoint.pending = Some(intent);
        self.checkpoint.store(&self.checkpoint_path)?;
        let (n, d) = (records.len(), dead.len());
        if !records.is_empty() {
            self.sink
                .append(&self.config.topic, records)
                .map_err(sink_err)?;
        }
        if let (false, Some(dlq)) = (dead.is_empty(), &self.pipeline.dead_letter_topic) {
            self.sink.append(dlq, dead).map_err(sink_err)?;
        }
        self.checkpoint.pending = None;
        self.checkpoint
            .files
            .insert(id_key(id), FileState { path, offset: to });
        self.checkpoint.store(&self.checkpoint_path)?;
        if let Some(t) = self.tracked.get_mut(&id) {
            t.offset = to;
        }
        stats.records += n;
        stats.dead_letters += d;
        Ok(true)
    }
}

fn sink_err(e: SinkError) -> String {
    e.to_string()
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(50);
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let d = left.min(step);
        std::thread::sleep(d);
        left -= d;
    }
}

#[cfg(test)]
#[path = "tailer_tests.rs"]
mod tests;
