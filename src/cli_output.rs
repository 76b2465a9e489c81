//! Standard output for the command line's printers.
//!
//! `println!` panics when the reader of a pipe has gone (`vitalgate status | head -1`: Rust
//! ignores SIGPIPE, so the write fails with EPIPE and the macro turns that into a panic with
//! a backtrace hint on stderr and exit 101). The printers here return the write error
//! instead; `main` ends the command quietly when the only thing that failed is that nobody
//! reads the output any more ([`is_closed_pipe`]). Probes that signal with their exit code
//! (`status`, `doctor`) keep printing into the void with [`ignore_closed_pipe`] and still
//! exit with their verdict.

use std::io::{self, Write};

/// Writes `args` to stdout and flushes, so a reader that has gone shows up here and not at
/// exit (stdout is line-buffered).
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()
}

/// `print!` that returns the write error.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli_output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` that returns the write error.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli_output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// Whether `e`, or any error in its chain, is a write to a pipe whose reader has gone.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A closed pipe is not an error for a printer whose exit code is its answer.
pub fn ignore_closed_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
