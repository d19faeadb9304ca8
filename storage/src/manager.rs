//! [`LogManager`]: every log under a data directory, plus the background thread that
//! runs interval flushes, fsyncs rolled segments, time-based rolls, retention and
//! compaction.

use crate::cache::{default_open_segments, HandleCache};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{IoContext, Result, StorageError};
use crate::log::{now_ms, Log};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Background schedule of a [`LogManager`].
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// How often the background thread wakes (interval flushes are checked each tick).
    pub tick: Duration,
    pub retention_check: Duration,
    pub compaction_check: Duration,
    /// Cap on segments with open files/maps across all logs.
    pub max_open_segments: usize,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            tick: Duration::from_millis(50),
            retention_check: Duration::from_secs(30),
            compaction_check: Duration::from_secs(15),
            max_open_segments: default_open_segments(),
        }
    }
}

type Key = (String, i32);
type OpenedLogs = Vec<(Key, Arc<Log>)>;

/// Threads opening logs at startup.
const OPEN_THREADS: usize = 8;

struct Shared {
    dir: PathBuf,
    default_config: LogConfig,
    logs: RwLock<HashMap<Key, Arc<Log>>>,
    cache: Arc<HandleCache>,
    stop: Mutex<bool>,
    wake: Condvar,
    /// `<data-dir>/.lock`, held with `flock` so that two managers never share a directory.
    _lock: std::fs::File,
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(StorageError::Io {
            path,
            source: std::io::Error::new(
                source.kind(),
                format!("data directory is in use by another LogManager: {source}"),
            ),
        });
    }
    Ok(file)
}

pub struct LogManager {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Splits `<topic>-<partition>` at the last '-'.
pub fn parse_log_dir_name(name: &str) -> Option<(String, i32)> {
    let (topic, part) = name.rsplit_once('-')?;
    let p: i32 = part.parse().ok()?;
    (!topic.is_empty() && p >= 0).then(|| (topic.to_string(), p))
}

impl LogManager {
    pub fn open(data_dir: &Path, default_config: LogConfig) -> Result<LogManager> {
        LogManager::open_with(data_dir, default_config, ManagerOptions::default())
    }

    pub fn open_with(
        data_dir: &Path,
        default_config: LogConfig,
        options: ManagerOptions,
    ) -> Result<LogManager> {
        std::fs::create_dir_all(data_dir).ctx(data_dir)?;
        let lock = lock_data_dir(data_dir)?;
        let cache = HandleCache::new(options.max_open_segments);
        let mut found = Vec::new();
        for entry in std::fs::read_dir(data_dir).ctx(data_dir)? {
            let entry = entry.ctx(data_dir)?;
            if !entry.file_type().ctx(&entry.path())?.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(parse_log_dir_name) else {
                tracing::warn!(path = %entry.path().display(), "ignoring directory not named <topic>-<partition>");
                continue;
            };
            found.push((key, entry.path()));
        }
        // Opening is mostly file-metadata latency, so a few threads overlap it.
        let threads = OPEN_THREADS.min(found.len()).max(1);
        let per = found.len().div_ceil(threads).max(1);
        let opened: Vec<Result<OpenedLogs>> = std::thread::scope(|s| {
            let handles: Vec<_> = found
                .chunks(per)
                .map(|chunk| {
                    let (config, cache) = (&default_config, &cache);
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|(key, path)| {
                                Ok((
                                    key.clone(),
                                    Arc::new(Log::open_with_cache(
                                        path,
                                        config.clone(),
                                        cache.clone(),
                                    )?),
                                ))
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StorageError::Io {
                            path: data_dir.to_path_buf(),
                            source: std::io::Error::other("log open thread panicked"),
                        })
                    })
                })
                .collect()
        });
        let mut logs = HashMap::new();
        for chunk in opened {
            logs.extend(chunk?);
        }
        let shared = Arc::new(Shared {
            dir: data_dir.to_path_buf(),
            default_config,
            logs: RwLock::new(logs),
            cache,
            stop: Mutex::new(false),
            wake: Condvar::new(),
            _lock: lock,
        });
        let bg = shared.clone();
        let thread = std::thread::Builder::new()
            .name("weir-log-cleaner".into())
            .spawn(move || background(bg, options))
            .map_err(|e| StorageError::Io {
                path: data_dir.to_path_buf(),
                source: e,
            })?;
        Ok(LogManager {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn default_config(&self) -> LogConfig {
        self.shared.default_config.clone()
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<Log>> {
        self.shared
            .logs
            .read()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    pub fn get_or_create(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Arc<Log>> {
        if let Some(l) = self.get(topic, partition) {
            return Ok(l);
        }
        let mut logs = self.shared.logs.write();
        let key = (topic.to_string(), partition);
        if let Some(l) = logs.get(&key) {
            return Ok(l.clone());
        }
        let dir = self.shared.dir.join(format!("{topic}-{partition}"));
        if topic.is_empty() || topic.contains('/') || partition < 0 {
            return Err(StorageError::InvalidLogDir { path: dir });
        }
        let log = Arc::new(Log::open_with_cache(
            &dir,
            config,
            self.shared.cache.clone(),
        )?);
        logs.insert(key, log.clone());
        Ok(log)
    }

    /// Removes the log and deletes its files.
    pub fn remove(&self, topic: &str, partition: i32) -> Result<()> {
        let log = self
            .shared
            .logs
            .write()
            .remove(&(topic.to_string(), partition));
        match log {
            Some(log) => log.delete_in_place(),
            None => Ok(()),
        }
    }

    pub fn logs(&self) -> Vec<((String, i32), Arc<Log>)> {
        self.shared
            .logs
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Segments with open files or maps, across all logs.
    pub fn open_segments(&self) -> usize {
        self.shared.cache.open_segments()
    }

    /// Stops the background thread and closes every log cleanly. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        let mut first_err = None;
        for (_, log) in self.logs() {
            if let Err(e) = log.close() {
                tracing::error!(dir = %log.dir().display(), error = %e, "closing log failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for LogManager {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn background(shared: Arc<Shared>, options: ManagerOptions) {
    let mut last_retention = Instant::now();
    let mut last_compaction = Instant::now();
    loop {
        {
            let mut stop = shared.stop.lock();
            if *stop {
                return;
            }
            shared.wake.wait_for(&mut stop, options.tick);
            if *stop {
                return;
            }
        }
        let logs: Vec<Arc<Log>> = shared.logs.read().values().cloned().collect();
        let now = now_ms();
        let do_retention = last_retention.elapsed() >= options.retention_check;
        let do_compaction = last_compaction.elapsed() >= options.compaction_check;
        for log in &logs {
            let config = log.config();
            let r = (|| -> Result<()> {
                if let FlushPolicy::IntervalMs(ms) = config.flush {
                    if now - log.last_flush_ms.load(Ordering::Relaxed) >= ms as i64
                        && log.durable_offset() < log.log_end_offset()
                    {
                        log.flush()?;
                    }
                }
                log.flush_rolled()?;
                log.maybe_roll_by_time(now)?;
                if do_retention {
                    log.enforce_retention(now)?;
                }
                if do_compaction && config.cleanup_policy.compacts() {
                    log.compact(now)?;
                }
                Ok(())
            })();
            if let Err(e) = r {
                if !matches!(e, StorageError::Closed { .. }) {
                    tracing::error!(dir = %log.dir().display(), error = %e, "background log maintenance failed");
                }
            }
        }
        if do_retention {
            last_retention = Instant::now();
        }
        if do_compaction {
            last_compaction = Instant::now();
        }
    }
}
