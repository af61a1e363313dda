//! Keep the agent's resident memory small (its budget is 10 MiB on every host).
//!
//! glibc gives every thread that allocates its own malloc arena and rarely hands
//! freed arena pages back to the kernel. The agent's big allocations are
//! one-offs (a full scan of every watched file, read back and encoded for the
//! stream), done on whichever blocking-pool thread ran them, so their memory would
//! stay resident for good. The agent has no allocation contention worth an arena
//! per thread: one arena, a trim shortly after each full listing went out and on
//! every heartbeat, and blocking-pool threads that do not linger (see
//! [`BLOCKING_KEEP_ALIVE`]).

use std::time::Duration;

/// How long an idle blocking-pool thread waits for more work before it exits.
///
/// A parked thread keeps its malloc thread cache: up to 7 freed chunks per size
/// class, still "in use" for `malloc_trim`, each able to pin a page of otherwise
/// free heap. The agent's blocking work comes in short bursts seconds apart (a
/// sample, a spool append, an ack), so a thread is cheap to start again.
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How long after a full listing went out its freed memory is handed back: past
/// [`BLOCKING_KEEP_ALIVE`], so the threads that built it have exited and freed
/// their caches.
pub const TRIM_AFTER_LISTING: Duration = Duration::from_secs(2);

/// Use a single malloc arena. Call before any thread starts.
pub fn single_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Return freed heap pages to the kernel (blocking: may take a few milliseconds).
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
