//! The C allocator, tuned for a daemon that holds many small, long-lived
//! objects (one actor and session per server) after a start-up burst.
//!
//! Only glibc is tuned: its defaults are what cost memory here, and the
//! calls used (`mallopt(M_ARENA_MAX)`, `malloc_trim`) are glibc extensions
//! that other C libraries (musl, the BSDs, macOS) do not have. Elsewhere
//! both functions do nothing.

/// Malloc arenas for the whole process. glibc gives every thread that
/// allocates an arena of its own (up to eight per core), each keeping its
/// own free memory: with the arbiter threads each holding a share of the
/// servers, the freed memory of one is never reused by another, and every
/// arena keeps its own high-water mark. One arena keeps a single heap;
/// the threads rarely allocate at the same instant (they are mostly
/// waiting on sockets), so its lock costs nothing measurable.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: nix::libc::c_int = 1;

/// Call first in `main`, before any thread exists: arenas are given to
/// threads as they first allocate, so a later limit would not move the
/// ones already handed out. `MALLOC_ARENA_MAX` in the environment, when
/// set, is left to win (someone measured their own case).
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes the allocator's parameters; no
        // other thread is running yet.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Give the pages of freed memory back to the system. glibc returns only
/// the free space at the top of a heap on its own; what start-up freed in
/// the middle (every server's connect work, the first load's server list)
/// stays resident until this asks for it. Returns whether anything was
/// returned.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the arenas' locks itself; it is safe
        // to call from any thread at any time.
        unsafe { nix::libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn memory_freed_below_the_top_of_the_heap_is_returned() {
        // Blocks small enough to come from the heap (not mmap), freed while
        // a later one keeps the heap's top in use (too large for any hole
        // below them): glibc keeps them resident until asked.
        let blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 32 * 1024]).collect();
        let top = vec![1u8; 96 * 1024];
        drop(blocks);
        assert!(trim(), "the freed blocks' pages were given back");
        assert_eq!(top[0], 1);
    }
}
