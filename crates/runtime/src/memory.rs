//! How the process's C allocator is set up.

/// glibc's malloc arenas kept by a ferry process (when `MALLOC_ARENA_MAX` does not say
/// otherwise).
pub const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc at [`MALLOC_ARENAS`] arenas. By default each thread that allocates may
/// get an arena of its own, up to eight per core, and memory freed in one arena is not reused
/// by threads of another: the short-lived blocking threads that start tasks and plan jobs then
/// leave the process holding memory nobody uses. Measured with `ferry-loadtest fanout --tasks
/// 100000`: 110 MiB peak with glibc's default, 86 MiB with two arenas, throughput and CPU
/// unchanged (BENCHMARKS.md).
///
/// Call it first thing in `main`, before threads start. A `MALLOC_ARENA_MAX` in the
/// environment wins. Does nothing where the C library is not glibc.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a setting of the allocator, which glibc reads under
        // its own lock; it takes no pointer.
        #[allow(unsafe_code)]
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}
