//! The file watcher: turns changes to the watched config files into batches of
//! parsed, secret-masked `FileState`s.
//!
//! Design:
//! - inotify watches the *directories* that hold watched files (never the files:
//!   editors and package managers replace files by rename), the nearest existing
//!   ancestor of directories that do not exist yet, every relevant directory below a
//!   glob's literal base (all of them for `**`), and the real directory of files
//!   reached through a symlink into another directory.
//! - Any event in a directory re-checks every tracked file in it: a `stat` whose
//!   signature (dev, inode, size, mtime, ctime, mode, owner, and the mode of the
//!   directory holding the file) decides whether to read the file again. That catches
//!   in-place writes, truncation, rename-over, delete and recreate, chmod/chown,
//!   Kubernetes-style `..data` symlink swaps, and a chmod of the directory itself (an
//!   `IN_ATTRIB` on the watched directory, with no name) alike.
//! - Events are debounced (`debounce` of quiet, at most ~100 ms after the first one)
//!   and a file is sent only when what would be sent (status, existence, content hash,
//!   size, mode, owner, directory mode, error) differs from what was last sent.
//! - A periodic rescan (stat only; read only on a changed signature) is the safety net
//!   for anything inotify cannot see (queue overflow, watch limits, moved ancestors).
//! - One thread owns the event loop; the state sits behind a mutex shared with
//!   [`FileWatcher::full_scan`]. Dropping the [`FileWatcher`] stops the thread.

mod debounce;
mod inotify;
pub(crate) mod pattern;
mod pending;
mod read;
mod tracker;

#[cfg(test)]
mod tests;

use std::io::{PipeReader, PipeWriter};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use driftwatch_formats::{Limits, Masker};
use driftwatch_proto::v1::FileState;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::{AgentError, Result};
use crate::hostroot::HostRoot;

pub use pattern::WatchPattern;

// `inotify` is our module below; `::inotify` is the crate.
use self::inotify::Wake;
use ::inotify::Inotify;
use debounce::Debounce;
use pattern::Compiled;
use pending::Pending;
use tracker::Tracker;

/// Batches waiting for the consumer.
const CHANNEL_CAPACITY: usize = 64;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub patterns: Vec<WatchPattern>,
    /// Quiet time that ends a burst of events (default 5 ms).
    pub debounce: Duration,
    /// Safety-net rescan period (default 60 s).
    pub rescan_interval: Duration,
    pub limits: Limits,
    /// `path_prefix`: patterns are node paths, watched below the prefix; every state
    /// sent names the node path (`hostroot`).
    pub host_root: HostRoot,
}

/// A batch of real changes, stamped with the scan generation it was computed in.
/// Batches older than the last [`FileWatcher::full_scan`] must be discarded.
#[derive(Debug)]
pub struct ChangeBatch {
    pub generation: u64,
    pub files: Vec<FileState>,
}

/// How much the watcher tracks, published whenever it changes so that a metrics
/// scrape never waits for the tracker (held across file reads).
#[derive(Debug)]
pub struct WatchCounts {
    /// Files tracked (matching a pattern, or named explicitly).
    pub files: AtomicU64,
    /// inotify watches held (directories).
    pub watches: AtomicU64,
    /// True once the first watches are armed: from then on a change is seen.
    pub armed: tokio::sync::watch::Sender<bool>,
    /// The watcher thread has stopped.
    pub stopped: std::sync::atomic::AtomicBool,
}

impl Default for WatchCounts {
    fn default() -> Self {
        Self {
            files: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            armed: tokio::sync::watch::Sender::new(false),
            stopped: Default::default(),
        }
    }
}

impl WatchCounts {
    fn publish(&self, t: &Tracker) {
        self.files.store(t.file_count() as u64, Ordering::Relaxed);
        self.watches.store(t.watch_count() as u64, Ordering::Relaxed);
    }
}

/// Watches the configured paths; changes arrive on the receiver from [`FileWatcher::start`].
pub struct FileWatcher {
    tracker: Arc<Mutex<Tracker>>,
    counts: Arc<WatchCounts>,
    /// Closing this (on drop) wakes and stops the watcher thread.
    _stop: PipeWriter,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").finish_non_exhaustive()
    }
}

/// The watch list's node paths compiled as local ones (`path_prefix`).
fn compile_local(patterns: &[WatchPattern], root: &HostRoot) -> Result<Vec<Compiled>> {
    patterns
        .iter()
        .map(|p| Compiled::new(&WatchPattern { pattern: root.local_text(&p.pattern), format: p.format }))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(AgentError::Watch)
}

impl FileWatcher {
    /// Set up inotify and start the watcher thread (which arms the watches). Does not
    /// read any file: call [`FileWatcher::full_scan`] for the initial state.
    pub fn start(config: WatchConfig, masker: Arc<Masker>) -> Result<(FileWatcher, mpsc::Receiver<ChangeBatch>)> {
        let root = config.host_root.clone();
        let patterns = compile_local(&config.patterns, &root)?;
        let ino = Inotify::init().map_err(|e| {
            AgentError::Watch(format!("cannot start inotify: {e} (is fs.inotify.max_user_instances exhausted?)"))
        })?;
        // Closing the write end (dropping the `FileWatcher`) wakes the thread's `poll`.
        let (stop_rx, stop_tx) =
            std::io::pipe().map_err(|e| AgentError::Watch(format!("cannot create the watcher's pipe: {e}")))?;
        // The tracker adds and removes watches; the thread alone reads events.
        let tracker =
            Arc::new(Mutex::new(Tracker::new(patterns, config.limits.clone(), masker, ino.watches(), root.clone())));
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let t = tracker.clone();
        let counts = Arc::new(WatchCounts::default());
        let c = counts.clone();
        let (debounce, rescan) = (config.debounce, config.rescan_interval.max(Duration::from_millis(10)));
        std::thread::Builder::new()
            .name("driftwatch-watch".into())
            .spawn(move || event_loop(t, c, ino, stop_rx, tx, debounce, rescan))
            .map_err(|e| AgentError::Watch(format!("cannot start the watcher thread: {e}")))?;
        Ok((FileWatcher { tracker, counts, _stop: stop_tx }, rx))
    }

    /// Files tracked and inotify watches held, as last published.
    pub fn counts(&self) -> Arc<WatchCounts> {
        self.counts.clone()
    }

    /// Blocking. Watch `patterns` instead of the current list (a reload); follow with a
    /// full listing ([`FileWatcher::full_scan`]). A pattern that does not compile
    /// changes nothing.
    pub fn set_patterns(&self, patterns: &[WatchPattern]) -> Result<()> {
        let mut t = self.tracker.lock();
        let compiled = compile_local(patterns, t.host_root())?;
        t.set_patterns(compiled);
        self.counts.publish(&t);
        tracing::info!(watches = t.watch_count(), files = t.file_count(), "watch list replaced");
        Ok(())
    }

    /// Blocking. Re-read every matching file (and report every explicit path, present
    /// or not), record them as sent, and start a new generation: batches stamped with
    /// an older generation were computed before this scan and are stale.
    pub fn full_scan(&self) -> (u64, Vec<FileState>) {
        let mut t = self.tracker.lock();
        let (generation, mut files) = t.full_scan();
        self.counts.publish(&t);
        t.to_node_paths(&mut files);
        (generation, files)
    }
}

fn event_loop(
    tracker: Arc<Mutex<Tracker>>,
    counts: Arc<WatchCounts>,
    mut ino: Inotify,
    stop: PipeReader,
    tx: mpsc::Sender<ChangeBatch>,
    debounce: Duration,
    rescan_every: Duration,
) {
    {
        let mut t = tracker.lock();
        if t.generation() == 0 {
            t.discover();
        }
        counts.publish(&t);
        tracing::info!(watches = t.watch_count(), files = t.file_count(), "file watcher started");
    }
    counts.armed.send_replace(true);
    let mut burst = Debounce::new(debounce);
    let mut pending = Pending::default();
    let mut next_rescan = Instant::now() + rescan_every;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let deadline = burst.deadline().map_or(next_rescan, |d| d.min(next_rescan));
        match inotify::wait(ino.as_fd(), stop.as_fd(), deadline.saturating_duration_since(Instant::now())) {
            Wake::Stop => break,
            Wake::Timeout => {}
            Wake::Ready => match inotify::drain(&mut ino, &mut buf, |ev| pending.push(ev.wd, ev.mask, ev.name)) {
                Ok(0) => {}
                Ok(_) => burst.events(Instant::now()),
                Err(e) => {
                    // Not expected; do not spin on it.
                    tracing::error!(error = %e, "cannot read inotify events; relying on the periodic rescan");
                    std::thread::sleep(Duration::from_secs(1));
                }
            },
        }
        if tx.is_closed() {
            break;
        }
        let now = Instant::now();
        let due = burst.take_due(now);
        let rescan_due = now >= next_rescan;
        if !due && !rescan_due {
            continue;
        }
        let (generation, files) = {
            let mut t = tracker.lock();
            let mut files = Vec::new();
            if due && !pending.is_empty() {
                files = t.apply(std::mem::take(&mut pending));
            }
            if rescan_due {
                next_rescan = now + rescan_every;
                files.extend(t.rescan());
            }
            counts.publish(&t);
            t.to_node_paths(&mut files);
            (t.generation(), files)
        };
        if !files.is_empty() && tx.blocking_send(ChangeBatch { generation, files }).is_err() {
            break;
        }
    }
    counts.stopped.store(true, Ordering::Relaxed);
    tracing::debug!("file watcher stopped");
}
