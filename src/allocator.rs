//! The process's memory allocator: mimalloc, and how soon it gives freed memory back.
//!
//! Declared here, in the library, so the `portbot` binary, the benchmarks that run the servers
//! in their own process, and the tests all allocate the same way.

/// glibc's allocator took a quarter of the server's CPU under load (many small JSON buffers
/// across threads); mimalloc does the same work in a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (the position of `purge_delay` in `mi_option_e`, in
/// its `mimalloc.h`); libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed memory stays with the process before mimalloc gives it back, in ms.
const PURGE_DELAY_MS: std::ffi::c_long = 50;

/// Has mimalloc give freed memory back to the system after 50 ms instead of its default 1 s.
/// Under load, a second's worth of freed request buffers and store pages is tens of MiB: with
/// 100k runs stored the server held 82-101 MiB at 1 s. At 10 ms it held 66-74 MiB, but memory
/// given back that soon is soon faulted in again: at 50 ms a created and completed run took
/// about a tenth less server CPU (in five of six pairs run in turns) and a third fewer page
/// faults, with a peak of 76-80 MiB (README, "Decisions worth knowing"). `MIMALLOC_PURGE_DELAY` in
/// the environment still decides, when it is set. Call it first thing in `main`.
pub fn purge_freed_memory_sooner() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one word that mimalloc reads when it purges; `main` calls this before it
        // starts any other thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a mimalloc whose options moved: position 15 must hold the purge delay, whose
    /// default is 1,000 ms in mimalloc 3, and setting it must take.
    #[test]
    fn the_purge_delay_option_is_where_mimalloc_3_keeps_it() {
        // SAFETY: reads and sets one option; nothing else in this test binary uses it.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            }
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                PURGE_DELAY_MS
            );
        }
    }
}
