//! Keep the agent's resident memory small (its budget is 10 MiB on every host).
//!
//! glibc gives every thread that allocates its own malloc arena and rarely hands
//! freed arena pages back to the kernel. The agent's big allocations are
//! one-offs (a full scan of every watched file), done on whichever blocking-pool
//! thread ran them, so their memory would stay resident for good. The agent has
//! no allocation contention worth an arena per thread: one arena, and a trim
//! after each full scan.

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
