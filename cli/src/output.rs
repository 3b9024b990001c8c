//! What the `ferry` command writes, and how.
//!
//! - Task output is someone else's text: [`visible`] shows its terminal control sequences as
//!   text (`\x1b[31m`), so that a task cannot move the cursor, recolour, retitle or clear the
//!   terminal of whoever reads its logs, nor forge lines with `\r`. `--raw` passes it unchanged.
//! - A reader that goes away (`ferry logs JOB | head -1`) ends the command quietly: [`outln!`]
//!   returns [`Closed`] instead of panicking as `println!` does, and the command exits with
//!   [`EXIT_CLOSED`]. Messages on stderr never panic either ([`errln!`]).

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

pub use ferry_runtime::text::visible;

/// The exit status after the reader of stdout went away: a shell's for a process ended by
/// SIGPIPE (128 + 13).
pub const EXIT_CLOSED: i32 = 141;

/// Stdout was closed by its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the output was closed by its reader")
    }
}

impl std::error::Error for Closed {}

/// Whether an error chain ends in the reader of stdout going away.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Closed>())
}

/// Writes a line to stdout. Any failure to write stdout (the reader went away, the disk is
/// full) ends the output: it is [`Closed`].
pub fn line(args: fmt::Arguments<'_>) -> Result<(), Closed> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|_| Closed)
}

/// Flushes stdout; see [`line`].
pub fn flush() -> Result<(), Closed> {
    std::io::stdout().flush().map_err(|_| Closed)
}

/// Writes a line to stderr; if stderr is gone there is nobody to tell.
pub fn error_line(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` that returns [`Closed`] rather than panic when stdout's reader went away.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    () => { $crate::output::error_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::error_line(format_args!($($arg)*)) };
}

/// [`visible`] unless `raw`.
pub fn task_text(text: &str, raw: bool) -> Cow<'_, str> {
    if raw { Cow::Borrowed(text) } else { visible(text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_output_is_shown_as_text_unless_raw() {
        assert_eq!(task_text("\x1b[1mbold\r", false), "\\x1b[1mbold\\x0d");
        assert_eq!(task_text("\x1b[1mbold\r", true), "\x1b[1mbold\r");
    }
}
