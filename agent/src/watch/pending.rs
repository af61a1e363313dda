//! Inotify events gathered between two passes of the watcher, per watched directory
//! and entry name: a burst of events on one file costs one entry, and past a bound
//! the pass becomes a full rescan instead of growing without end.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

use inotify::{EventMask, WatchDescriptor};

/// Distinct file names queued between two passes before we give up and rescan.
const MAX_PENDING_NAMES: usize = 8_192;

/// Events gathered since the last pass, per watch descriptor.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(super) dirs: HashMap<WatchDescriptor, PendingDir>,
    /// Too many events (or the kernel queue overflowed): rescan everything.
    pub(super) overflow: bool,
    names: usize,
}

#[derive(Debug)]
pub(super) struct PendingDir {
    /// Events on the directory itself.
    pub(super) self_mask: EventMask,
    /// Events on entries, by name.
    pub(super) names: HashMap<OsString, EventMask>,
}

// `EventMask` has no `Default`.
impl Default for PendingDir {
    fn default() -> Self {
        Self { self_mask: EventMask::empty(), names: HashMap::new() }
    }
}

impl Pending {
    pub fn push(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<&OsStr>) {
        if self.overflow {
            return;
        }
        if mask.contains(EventMask::Q_OVERFLOW) {
            return self.set_overflow();
        }
        let d = self.dirs.entry(wd).or_default();
        match name {
            None => d.self_mask |= mask,
            Some(n) => match d.names.get_mut(n) {
                Some(m) => *m |= mask,
                None if self.names >= MAX_PENDING_NAMES => self.set_overflow(),
                None => {
                    d.names.insert(n.to_owned(), mask);
                    self.names += 1;
                }
            },
        }
    }

    fn set_overflow(&mut self) {
        self.overflow = true;
        self.dirs.clear();
        self.names = 0;
    }

    pub fn is_empty(&self) -> bool {
        !self.overflow && self.dirs.is_empty()
    }
}
