//! How a ferry process allocates memory.
//!
//! Every ferry binary uses mimalloc as its global allocator and calls [`set_up`] first thing in
//! `main` (`ferry_connect::service::main` does it for the services). The allocator must be
//! declared in each binary; [`global_allocator!`](crate::global_allocator) does it:
//!
//! ```ignore
//! ferry_runtime::global_allocator!();
//! ```
//!
//! ferry allocates and frees many small buffers across threads (events, rows, log lines):
//! with glibc's malloc about a fifth of its CPU went to the allocator (malloc, free and their
//! consolidation). Measured with `ferry-loadtest fanout --tasks 10000` (BENCHMARKS.md): 0.53-0.60
//! ms of CPU per task with glibc, 0.42-0.44 with mimalloc.
//!
//! mimalloc is built without transparent huge pages (its `no_thp` feature): it asks for them
//! on its arenas otherwise, and where the kernel grants them on request (`madvise` mode) every
//! page touched could bring in 2 MiB: the same run peaked at 120-186 MiB with them, 42 MiB
//! without.

/// Declares ferry's allocator as the binary's `#[global_allocator]`; once, in each binary.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::memory::Allocator = $crate::memory::ALLOCATOR;
    };
}

/// The global allocator of ferry's binaries.
pub type Allocator = mimalloc::MiMalloc;
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` and `purge_delay` options (`mi_option_e` in mimalloc.h; the
/// Rust bindings name neither). A test checks them against their documented defaults.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// glibc's malloc arenas kept by a ferry process (when `MALLOC_ARENA_MAX` does not say
/// otherwise). The C libraries ferry links (SQLite, librdkafka) still allocate with it.
pub const MALLOC_ARENAS: i32 = 2;

/// Sets up the allocators; call it first thing in `main`, before threads start.
///
/// - mimalloc commits arena memory as it is used rather than whole arenas at once, and gives
///   freed memory back at once rather than after a second: `ferry-loadtest fanout --tasks
///   100000` peaked at 101.7 MiB without these, with them at 65.2 MiB, at the same CPU.
///   `MIMALLOC_*` variables in the environment are read before `main` and are overridden here.
/// - glibc's malloc, which SQLite and librdkafka use, keeps at most [`MALLOC_ARENAS`] arenas
///   (unless `MALLOC_ARENA_MAX` says): by default each thread that allocates may get an arena
///   of its own, and memory freed in one is not reused by threads of another.
pub fn set_up() {
    // SAFETY: mi_option_set only stores a setting, which mimalloc reads when it next needs
    // it; it takes no pointer.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The option numbers are the ones meant: their values before any change are mimalloc's
    /// documented defaults (`arena_eager_commit` 2, `purge_delay` 1000 ms in mimalloc 3).
    #[test]
    fn the_option_numbers_name_the_options_meant() {
        #[allow(unsafe_code)]
        // SAFETY: mi_option_get only reads a setting.
        let (eager, delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!(eager, 2, "arena_eager_commit");
        assert_eq!(delay, 1000, "purge_delay");
    }
}
