//! What commands print. `println!` panics when standard output is a pipe whose reader has gone
//! (`ferry ls URL | head -1`); here that ends the command quietly, as it ends `ls` or `cat`, and any other write
//! error ends it with a message. Notices on standard error (retries) go above the progress bars while bars are
//! drawn, so that the bars' redrawing neither splits nor erases them.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::MultiProgress;

/// The progress bars being drawn, if any.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// From now on notices go above `bars`; `None` once the bars are done.
pub fn draw_notices_above(bars: Option<MultiProgress>) {
    *BARS.lock().unwrap_or_else(|e| e.into_inner()) = bars;
}

/// Prints a line to standard error, above the progress bars if there are any.
pub fn notice(line: &str) {
    let bars = BARS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bars {
        Some(bars) if bars.println(line).is_ok() => {}
        _ => eprintln!("{line}"),
    }
}

/// Writes to standard output; use through [`outln!`] and [`out!`].
pub fn write(args: fmt::Arguments<'_>) {
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        gone(&e);
    }
}

/// Whether `e` says that the reader of standard output has gone.
pub fn is_closed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

fn gone(e: &io::Error) -> ! {
    if is_closed(e) {
        std::process::exit(0);
    }
    eprintln!("ferry: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// `println!` that ends the command quietly once standard output is closed.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends the command quietly once standard output is closed.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};
