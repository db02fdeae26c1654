//! Standard output for what commands print. `println!` panics when standard output is a pipe whose reader has
//! gone (`ferry ls URL | head -1`); here that ends the command quietly, as it ends `ls` or `cat`, and any other
//! write error ends it with a message.

use std::fmt;
use std::io::{self, Write};

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
