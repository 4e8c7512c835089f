//! The log files (`log.file`, `log.access_file`): each is written by a thread of its own from a
//! bounded queue, so a request never waits on a disk (a full queue drops the line and counts
//! it); reopened at the configured path on SIGUSR1, after a rotation moved the old file away;
//! drained before the process exits. Fed by the process logger, driven by the signal loop,
//! read by the metrics scrape.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;
use thiserror::Error;

/// Lines one file's queue holds; past it new lines are dropped (and counted).
pub const QUEUE_LINES: usize = 8192;

/// Bytes one file's queue holds (lines with captured bodies are large); past it new lines
/// are dropped (and counted).
pub const QUEUE_BYTES: usize = 8 << 20;

/// Most bytes the writer hands the kernel in one call: the lines queued while it wrote last.
const BATCH_BYTES: usize = 256 << 10;

/// Mode of a log file warden creates, before the umask: owner and group read it, only warden
/// writes it (request lines name clients, hosts and paths).
const FILE_MODE: u32 = 0o640;

/// The compiled destinations of the `log` section, paths resolved against the config's
/// folder. `None` is standard error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFiles {
    /// `log.file`: operational lines, and request lines too unless `access_file` is set.
    pub file: Option<PathBuf>,
    /// `log.access_file`: request (canonical) lines.
    pub access_file: Option<PathBuf>,
}

impl LogFiles {
    /// Where request lines go: `log.access_file`, else `log.file`, else standard error.
    pub fn access(&self) -> Option<&Path> {
        self.access_file.as_deref().or(self.file.as_deref())
    }
}

/// A destination for the log message: its path, or `stderr`.
pub fn describe(path: Option<&Path>) -> String {
    path.map_or_else(|| "stderr".to_string(), |p| p.display().to_string())
}

/// A log file warden cannot open (or whose writer it cannot start), naming its key.
#[derive(Debug, Error)]
#[error("{key}: cannot open {} for appending: {source}{hint}", path.display())]
pub struct LogFileError {
    /// `log.file` or `log.access_file`.
    pub key: &'static str,
    /// The resolved path.
    pub path: PathBuf,
    source: std::io::Error,
    hint: String,
}

/// Opens `path` for appending, creating it (mode 0640) if absent; never truncates.
fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

enum Message {
    Line(Vec<u8>),
    /// Nothing to write: look at the reopen flag now rather than at the next line.
    Wake,
}

/// What the writer thread and the loggers share.
struct State {
    key: &'static str,
    label: &'static str,
    path: PathBuf,
    /// Bytes sent and not yet taken off the queue.
    pending_bytes: AtomicUsize,
    /// Lines sent.
    queued: AtomicU64,
    dropped: AtomicU64,
    reopen: AtomicBool,
    /// Lines taken off the queue and written (or lost to a write error).
    done: Mutex<u64>,
    progress: Condvar,
}

/// One log file and its writer thread. The thread ends when the sink is dropped.
pub(super) struct FileSink {
    state: Arc<State>,
    tx: SyncSender<Message>,
}

impl FileSink {
    /// Opens the file at `path` (the value of `key`) and starts its writer; `label` is its
    /// `file` label in `warden_log_lines_dropped_total`. Fails when the file cannot be opened
    /// for appending: a missing or unwritable directory, a path that is a directory.
    pub(super) fn open(
        key: &'static str,
        label: &'static str,
        path: &Path,
    ) -> Result<Arc<FileSink>, LogFileError> {
        let fail = |source: std::io::Error| {
            let hint = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                    format!(" (the directory {} must exist)", dir.display())
                }
                _ => String::new(),
            };
            LogFileError {
                key,
                path: path.to_path_buf(),
                source,
                hint,
            }
        };
        let file = open_append(path).map_err(fail)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let state = Arc::new(State {
            key,
            label,
            path: path.to_path_buf(),
            pending_bytes: AtomicUsize::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            done: Mutex::new(0),
            progress: Condvar::new(),
        });
        let writer = state.clone();
        std::thread::Builder::new()
            .name(format!("warden-{label}-log"))
            .spawn(move || write_loop(&rx, file, &writer))
            .map_err(fail)?;
        Ok(Arc::new(FileSink { state, tx }))
    }

    /// Queues one whole line (newline included) without waiting: when the queue is full
    /// (in lines or bytes) the line is dropped and counted.
    pub(super) fn send(&self, line: Vec<u8>) {
        let len = line.len();
        let s = &self.state;
        if s.pending_bytes.fetch_add(len, Ordering::SeqCst) + len > QUEUE_BYTES {
            s.pending_bytes.fetch_sub(len, Ordering::SeqCst);
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(Message::Line(line)) {
            Ok(()) => {
                s.queued.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                s.pending_bytes.fetch_sub(len, Ordering::SeqCst);
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to reopen the path before it writes its next lines; returns at once.
    pub(super) fn reopen(&self) {
        self.state.reopen.store(true, Ordering::SeqCst);
        // A full queue means the writer is busy and sees the flag after its current batch.
        let _ = self.tx.try_send(Message::Wake);
    }

    /// Waits until every line queued before the call is written, or until `deadline`
    /// (a writer stuck on a dead disk must not hold the exit forever). Returns whether it
    /// caught up.
    pub(super) fn flush(&self, deadline: Instant) -> bool {
        let s = &self.state;
        let target = s.queued.load(Ordering::SeqCst);
        let mut done = s.done.lock().unwrap_or_else(PoisonError::into_inner);
        while *done < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = s
                .progress
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Lines dropped since start: the queue was full, or a write failed.
    pub(super) fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// The `file` label: `log` or `access`.
    pub(super) fn label(&self) -> &'static str {
        self.state.label
    }

    /// The config key: `log.file` or `log.access_file`.
    pub(super) fn key(&self) -> &'static str {
        self.state.key
    }
}

/// The writer thread: takes what is queued (up to [`BATCH_BYTES`]), reopens the file if asked,
/// writes the batch in one call. Returns when every sender is gone.
fn write_loop(rx: &Receiver<Message>, mut file: File, s: &State) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut lines = 0u64;
        let mut next = Some(first);
        while let Some(message) = next {
            if let Message::Line(line) = message {
                s.pending_bytes.fetch_sub(line.len(), Ordering::SeqCst);
                batch.extend_from_slice(&line);
                lines += 1;
            }
            next = if batch.len() < BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if s.reopen.swap(false, Ordering::SeqCst) {
            match open_append(&s.path) {
                Ok(reopened) => file = reopened,
                // Through the logger: the old file (or the other one) still takes lines.
                Err(e) => log::error!(
                    "{}: reopening {} failed, still writing the file open before: {e}",
                    s.key,
                    s.path.display()
                ),
            }
        }
        if !batch.is_empty() {
            match file.write_all(&batch) {
                Ok(()) => failing = false,
                Err(e) => {
                    s.dropped.fetch_add(lines, Ordering::Relaxed);
                    // Once per run of failures, and not into the file that fails.
                    if !failing {
                        eprintln!(
                            "warden: {}: writing {} failed, lines are dropped until it works again: {e}",
                            s.key,
                            s.path.display()
                        );
                    }
                    failing = true;
                }
            }
            batch.clear();
        }
        *s.done.lock().unwrap_or_else(PoisonError::into_inner) += lines;
        s.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn wait() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn lines_are_appended_whole_and_flush_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "kept\n").unwrap();
        let sink = FileSink::open("log.file", "log", &path).unwrap();
        for i in 0..1000 {
            sink.send(format!("line {i}\n").into_bytes());
        }
        assert!(sink.flush(wait()));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1001);
        assert_eq!(lines[0], "kept", "appended, never truncated");
        assert_eq!(lines[1000], "line 999");
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn a_created_file_is_not_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.log");
        let _sink = FileSink::open("log.access_file", "access", &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "{mode:o}");
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
    }

    #[test]
    fn reopen_moves_later_lines_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let rotated = dir.path().join("a.log.1");
        let sink = FileSink::open("log.file", "log", &path).unwrap();
        sink.send(b"before\n".to_vec());
        assert!(sink.flush(wait()));
        std::fs::rename(&path, &rotated).unwrap();
        sink.reopen();
        sink.send(b"after\n".to_vec());
        assert!(sink.flush(wait()));
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "before\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_key_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("a.log");
        let Err(e) = FileSink::open("log.access_file", "access", &path) else {
            panic!("opened a file in a missing directory");
        };
        let text = e.to_string();
        assert!(text.starts_with("log.access_file: cannot open "), "{text}");
        assert!(text.contains("must exist"), "{text}");
    }

    #[test]
    fn lines_past_the_byte_bound_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let sink = FileSink::open("log.file", "log", &path).unwrap();
        // Larger than the whole queue: never queued, whatever the writer does.
        sink.send(vec![b'x'; QUEUE_BYTES + 1]);
        assert_eq!(sink.dropped(), 1);
        assert!(sink.flush(wait()));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
