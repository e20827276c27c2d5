//! The C allocator, tuned for a daemon that holds many small, long-lived
//! objects (one actor and session per server) after a start-up burst.
//!
//! Only glibc is tuned: its defaults are what cost memory here, and the
//! calls used (`mallopt(M_ARENA_MAX)`, `malloc_trim`) are glibc extensions
//! that other C libraries (musl, the BSDs, macOS) do not have; so is
//! `mallinfo2` (glibc 2.33 and later). Elsewhere all of this does nothing.

/// Malloc arenas for the whole process. glibc gives every thread that
/// allocates an arena of its own (up to eight per core), each keeping its
/// own free memory: with the arbiter threads each holding a share of the
/// servers, the freed memory of one is never reused by another, and every
/// arena keeps its own high-water mark. One arena keeps a single heap;
/// the threads rarely allocate at the same instant (they are mostly
/// waiting on sockets, and each has its own cache of small blocks): no
/// CPU cost showed in the benchmarks.
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

/// Gives the pages of freed memory back to the system when enough was
/// freed since the last time. glibc returns only the free space at the top
/// of a heap on its own; what start-up freed in the middle (every server's
/// connect work, the first load's server list) stays resident until
/// `malloc_trim` asks for it. A trim holds the allocator's lock while it
/// walks every free chunk: run every 10 s at 1000 servers it showed in
/// the WORKERS_STATUS p99, so it runs only when the free memory grew.
#[derive(Default)]
pub struct Trimmer {
    /// Free bytes in the heap right after the last trim (a trim does not
    /// change this count: the chunks stay free, their pages are returned).
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    free_after_trim: usize,
}

/// Freed memory that makes a trim worth its pause.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const WORTH_TRIMMING: usize = 1 << 20;

impl Trimmer {
    /// Trim if the heap's free memory grew by [`WORTH_TRIMMING`] since the
    /// last trim. Returns whether a trim ran.
    pub fn trim_if_worth_it(&mut self) -> bool {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let free = free_bytes();
            if free < self.free_after_trim + WORTH_TRIMMING {
                // Reused (or returned at the top) since: the next growth is
                // measured from here.
                self.free_after_trim = self.free_after_trim.min(free);
                return false;
            }
            trim();
            self.free_after_trim = free_bytes();
            true
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        {
            false
        }
    }
}

/// Free bytes held in the heap's chunks (returned pages included).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> usize {
    // SAFETY: mallinfo2 takes the arenas' locks itself and only reads.
    unsafe { nix::libc::mallinfo2() }.fordblks
}

/// Give every free page of the heap back; returns whether any was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes the arenas' locks itself; it is safe to
    // call from any thread at any time.
    unsafe { nix::libc::malloc_trim(0) == 1 }
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
        let mut trimmer = Trimmer::default();
        drop(blocks);
        assert!(trimmer.trim_if_worth_it(), "2 MiB freed: trimmed");
        assert!(!trimmer.trim_if_worth_it(), "nothing freed since");
        assert_eq!(top[0], 1);
    }
}
