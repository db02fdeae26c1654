//! The `ferry` binary: parses arguments and wires the crates together. Server, account administration, and
//! (later) client and benchmarks are sub-commands.

mod bench;
mod client;
mod config;
mod output;
mod serve;
mod service;
mod tls_setup;
mod user;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ferry: a fast, safe file-transfer server (FTP/FTPS) and its tools.
#[derive(Parser)]
#[command(name = "ferry", version, about, after_help = client::EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (FTP on port 2121 by default, with explicit FTPS via AUTH TLS).
    Serve(Box<config::ServeArgs>),
    /// Manage accounts (works while the server runs).
    User(Box<user::UserArgs>),
    /// Measure an FTP, FTPS or SFTP server on loopback: sessions, transfers, small files, listings.
    Bench(Box<bench::BenchArgs>),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await.map(|()| ExitCode::SUCCESS),
            Command::User(args) => user::run(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => bench::run(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Client(command) => Ok(ExitCode::from(client::run(command).await)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}
