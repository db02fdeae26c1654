//! The client sub-commands (`ls`, `get`, `put`, `rm`, `mkdir`, `mv`, `cat`, `hash`, `mirror`): argument parsing,
//! progress rendering and exit codes around the `ferry-client` crate.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use crate::output::{self, outln};
use clap::{Args, Subcommand};
use ferry_client::checksum::{HashAlgorithm, Hasher};
use ferry_client::error::{exit_code_for, ClientError, EXIT_OK};
use ferry_client::mirror::{self, Action, Filter, MirrorOptions};
use ferry_client::progress::Progress;
use ferry_client::retry::{RetryNotice, RetryPolicy};
use ferry_client::transfer::{Engine, Job, TransferOptions, TransferReport};
use ferry_client::transport::{
    ConnectOptions, Endpoint, Entry, EntryKind, Pool, Prompter, Transport,
};
use ferry_client::url::{self, Location, RemoteUrl};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncWriteExt;

/// The exit codes, for `ferry help`.
pub const EXIT_CODES_HELP: &str = "\
Client exit codes:
  0  everything done
  1  some files failed (missing, refused, connection lost after retries, local disk full)
  2  usage error (bad flag, bad URL, unknown scheme)
  3  connection or authentication failure (unreachable, wrong password, untrusted host key or certificate)
  4  verification failure (a transferred file does not match the source's checksum or size)

URLs: ftp://, ftps:// (explicit TLS), ftps+implicit://, sftp:// as scheme://[user[:password]@]host[:port]/path.
Passwords also come from FERRY_PASSWORD, ~/.netrc (FTP), ssh-agent and ~/.ssh keys (SFTP), or a prompt.";

/// Client commands.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// List a remote directory (or show one file).
    Ls(Box<LsArgs>),
    /// Download files: `ferry get URL... [LOCAL]` (resumes `.part` files, verifies, then renames).
    Get(Box<GetArgs>),
    /// Upload files: `ferry put LOCAL... URL` (resumes what the server has, verifies).
    Put(Box<PutArgs>),
    /// Remove remote files (`-r` for directories).
    Rm(Box<RmArgs>),
    /// Create remote directories.
    Mkdir(Box<MkdirArgs>),
    /// Rename or move a remote file: `ferry mv URL NEW` (NEW: a URL, an absolute path, or a name in the same
    /// directory).
    Mv(Box<MvArgs>),
    /// Write remote files to standard output.
    Cat(Box<CatArgs>),
    /// Print a remote file's checksum, computed by the server where it can (HASH, sha256sum).
    Hash(Box<HashArgs>),
    /// Make DST a copy of the directory SRC (either may be local or remote).
    Mirror(Box<MirrorArgs>),
}

/// How to reach and trust servers.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Do not verify FTPS certificates.
    #[arg(long, global = true)]
    insecure: bool,
    /// Trust the FTPS certificate with this SHA-256 fingerprint (hex, colons allowed).
    #[arg(long, global = true, value_name = "SHA256")]
    tls_fingerprint: Option<String>,
    /// Extra CA certificates (PEM) for FTPS.
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Record an unknown SSH host key in known_hosts instead of asking (or refusing in a script).
    #[arg(long, global = true)]
    accept_new_host_key: bool,
    /// known_hosts file [default: UserKnownHostsFile from ~/.ssh/config, else ~/.ssh/known_hosts].
    #[arg(long, global = true, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// SSH private key to try first (may repeat).
    #[arg(short = 'i', long = "identity", global = true, value_name = "FILE")]
    identities: Vec<PathBuf>,
    /// Seconds to wait for a connection or a reply.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
    /// Active FTP (the server connects back) instead of passive.
    #[arg(long, global = true)]
    active: bool,
    /// Retries after a transient failure (connection refused or lost, timeout, FTP 4xx), waiting 1 s, 2 s,
    /// 4 s, ... up to 30 s. Logins refused, missing files and untrusted keys are never retried.
    #[arg(long, global = true, default_value_t = 3, value_name = "N")]
    retries: u32,
}

/// How files move.
#[derive(Args, Clone, Debug)]
pub struct TransferArgs {
    /// Start over instead of continuing what is already at the destination.
    #[arg(long)]
    no_resume: bool,
    /// Compare sizes only, not checksums, after each file.
    #[arg(long)]
    no_verify: bool,
    /// Files transferred at once (at least 1).
    #[arg(short = 'j', long = "parallel", default_value_t = 1, value_name = "N", value_parser = parse_count)]
    parallel: usize,
    /// Connections one large download is split over (like lftp's pget; at least 1). Downloads only: put, and
    /// a mirror that does not download, refuse more than 1.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = parse_count)]
    segments: usize,
    /// Bytes per second per file (suffixes k, m, g).
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    limit_rate: Option<u64>,
    /// Checksum algorithm for verification (sha256, sha512, sha1, md5) [default: best both sides offer].
    #[arg(long, value_name = "ALGORITHM", value_parser = parse_algorithm)]
    algorithm: Option<HashAlgorithm>,
}

/// What the command prints.
#[derive(Args, Clone, Debug)]
pub struct OutputArgs {
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// One JSON object per file on standard output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
pub struct LsArgs {
    url: String,
    /// Long format: type and permissions, size, time, name.
    #[arg(short, long)]
    long: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct GetArgs {
    /// Remote URLs (a glob in the last path component selects files), then optionally a local file or directory.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
    /// Download directories recursively.
    #[arg(short, long)]
    recursive: bool,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct PutArgs {
    /// Local files, then the remote URL (a directory when it ends with `/`, exists, or several files are given).
    #[arg(required = true, num_args = 2..)]
    args: Vec<String>,
    /// Upload directories recursively.
    #[arg(short, long)]
    recursive: bool,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct RmArgs {
    #[arg(required = true, num_args = 1..)]
    urls: Vec<String>,
    /// Remove directories and their contents.
    #[arg(short, long)]
    recursive: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct MkdirArgs {
    #[arg(required = true, num_args = 1..)]
    urls: Vec<String>,
    /// Create missing parents; no error if the directory exists.
    #[arg(short, long)]
    parents: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct MvArgs {
    url: String,
    new: String,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct CatArgs {
    #[arg(required = true, num_args = 1..)]
    urls: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct HashArgs {
    #[arg(required = true, num_args = 1..)]
    urls: Vec<String>,
    /// sha256, sha512, sha1 or md5.
    #[arg(long, default_value = "sha256", value_parser = parse_algorithm)]
    algorithm: HashAlgorithm,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
pub struct MirrorArgs {
    /// Source directory: a URL or a local path.
    src: String,
    /// Destination directory: a URL or a local path (created if missing).
    dst: String,
    /// Delete destination files that the source does not have.
    #[arg(long)]
    delete: bool,
    /// Print what would be done, do nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Only files matching this glob (may repeat; `*.txt`, `docs/**/*.md`).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files and directories matching this glob (may repeat); they are never deleted either.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Compare same-sized files by checksum instead of modification time.
    #[arg(long)]
    checksum: bool,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Runs a client command; returns the process exit code.
pub async fn run(command: ClientCommand) -> u8 {
    let result = match command {
        ClientCommand::Ls(a) => ls(*a).await,
        ClientCommand::Get(a) => get(*a).await,
        ClientCommand::Put(a) => put(*a).await,
        ClientCommand::Rm(a) => rm(*a).await,
        ClientCommand::Mkdir(a) => mkdir(*a).await,
        ClientCommand::Mv(a) => mv(*a).await,
        ClientCommand::Cat(a) => cat(*a).await,
        ClientCommand::Hash(a) => hash(*a).await,
        ClientCommand::Mirror(a) => mirror_cmd(*a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e}");
            e.exit_code()
        }
    }
}

type CmdResult = Result<u8, ClientError>;

async fn ls(args: LsArgs) -> CmdResult {
    let url = remote(&args.url)?;
    let pool = connect_pool(&url, &args.connect, &args.output).await?;
    let mut entries = repeatable(&pool, async |conn| {
        let entry = conn
            .stat(&url.path)
            .await?
            .ok_or_else(|| ClientError::NotFound {
                path: url.to_string(),
            })?;
        if entry.is_dir() {
            conn.list(&url.path).await
        } else {
            Ok(vec![entry])
        }
    })
    .await?;
    pool.close().await;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let line = if args.output.json {
            serde_json::json!({
                "name": e.name,
                "type": e.kind,
                "size": e.size,
                "mtime": e.mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                "mode": e.mode.map(|m| format!("{m:o}")),
            })
            .to_string()
        } else if args.long {
            long_line(e)
        } else if e.is_dir() {
            format!("{}/", e.name)
        } else {
            e.name.clone()
        };
        let _ = writeln!(out, "{line}");
    }
    Ok(EXIT_OK)
}

async fn get(args: GetArgs) -> CmdResult {
    let mut raw = args.args.clone();
    let local_dest = match raw.last() {
        Some(last) if raw.len() > 1 && !last.contains("://") => raw.pop().map(PathBuf::from),
        _ => None,
    };
    let urls = raw
        .iter()
        .map(|s| remote(s))
        .collect::<Result<Vec<_>, _>>()?;
    let server = same_server(&urls)?;
    let pool = connect_pool(server, &args.connect, &args.output).await?;

    // Expand sources into (remote path, path relative to the destination).
    let mut files: Vec<(String, String)> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut failures: Vec<ClientError> = Vec::new();
    let mut many = urls.len() > 1;
    for u in &urls {
        match repeatable(&pool, async |conn| {
            expand_remote(conn, &u.path, args.recursive).await
        })
        .await
        {
            Ok(Expanded {
                files: f,
                dirs: d,
                is_tree,
            }) => {
                many |= is_tree || f.len() > 1;
                files.extend(f);
                dirs.extend(d);
            }
            Err(e) => {
                let e = e.with_path(&u.to_string());
                eprintln!("ferry: {e}");
                failures.push(e);
            }
        }
    }
    let into_dir = match &local_dest {
        None => true,
        Some(p) => {
            many || p.to_string_lossy().ends_with('/')
                || tokio::fs::metadata(p).await.is_ok_and(|m| m.is_dir())
        }
    };
    let base = local_dest.clone().unwrap_or_else(|| PathBuf::from("."));
    let jobs: Vec<Job> = files
        .into_iter()
        .map(|(remote_path, rel)| {
            let local = if into_dir {
                base.join(&rel)
            } else {
                base.clone()
            };
            Job {
                name: rel,
                source: remote_path,
                destination: local.to_string_lossy().into_owned(),
                fresh: false,
            }
        })
        .collect();
    refuse_shared_destinations(&jobs)?;
    if into_dir && local_dest.is_some() {
        tokio::fs::create_dir_all(&base)
            .await
            .map_err(|e| ClientError::local(base.display(), e))?;
    }
    for d in &dirs {
        let p = base.join(d);
        tokio::fs::create_dir_all(&p)
            .await
            .map_err(|e| ClientError::local(p.display(), e))?;
    }
    let code = run_jobs(
        pool,
        Pool::local(),
        jobs,
        &args.transfer,
        &args.connect,
        &args.output,
    )
    .await;
    Ok(combine(code, &failures))
}

async fn put(args: PutArgs) -> CmdResult {
    refuse_segments_unless_downloading(&args.transfer, false)?;
    let mut raw = args.args.clone();
    let target = raw.pop().unwrap_or_default();
    let url = remote(&target)?;
    let pool = connect_pool(&url, &args.connect, &args.output).await?;
    let existing = repeatable(&pool, async |conn| conn.stat(&url.path).await).await?;
    let into_dir =
        raw.len() > 1 || url.names_directory() || existing.as_ref().is_some_and(Entry::is_dir);
    let mut jobs = Vec::new();
    let mut failures = Vec::new();
    let mut remote_dirs = Vec::new();
    for local in &raw {
        let path = Path::new(local);
        let meta = match tokio::fs::metadata(path).await {
            Ok(m) => m,
            Err(e) => {
                let e = ClientError::local(local, e);
                eprintln!("ferry: {e}");
                failures.push(e);
                continue;
            }
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| local.clone());
        if meta.is_dir() {
            if !args.recursive {
                let e = ClientError::local(local, std::io::Error::other("is a directory (use -r)"));
                eprintln!("ferry: {e}");
                failures.push(e);
                continue;
            }
            let root = if into_dir || existing.is_some() {
                url::join(url.path.trim_end_matches('/'), &name)
            } else {
                url.path.clone()
            };
            remote_dirs.push(root.clone());
            let mut lt = ferry_client::transport::local::LocalTransport;
            for t in mirror::walk(&mut lt, local, &Filter::default()).await? {
                let remote_path = url::join(&root, &t.rel);
                if t.entry.is_dir() {
                    remote_dirs.push(remote_path);
                } else if t.entry.kind != EntryKind::File {
                    report_skipped(&args.output, &path.join(&t.rel).to_string_lossy(), &t.entry);
                } else {
                    jobs.push(Job {
                        name: format!("{name}/{}", t.rel),
                        source: path.join(&t.rel).to_string_lossy().into_owned(),
                        destination: remote_path,
                        fresh: false,
                    });
                }
            }
        } else {
            let destination = if into_dir {
                url::join(url.path.trim_end_matches('/'), &name)
            } else {
                url.path.clone()
            };
            jobs.push(Job {
                name,
                source: local.clone(),
                destination,
                fresh: false,
            });
        }
    }
    refuse_shared_destinations(&jobs)?;
    if into_dir && existing.is_none() && !url.path.trim_end_matches('/').is_empty() {
        remote_dirs.insert(0, url.path.trim_end_matches('/').to_owned());
    }
    for d in &remote_dirs {
        repeatable(&pool, async |conn| make_parents(conn, d).await).await?;
    }
    let code = run_jobs(
        Pool::local(),
        pool,
        jobs,
        &args.transfer,
        &args.connect,
        &args.output,
    )
    .await;
    Ok(combine(code, &failures))
}

async fn rm(args: RmArgs) -> CmdResult {
    let urls = args
        .urls
        .iter()
        .map(|s| remote(s))
        .collect::<Result<Vec<_>, _>>()?;
    let server = same_server(&urls)?;
    let pool = connect_pool(server, &args.connect, &args.output).await?;
    let mut failures = Vec::new();
    for u in &urls {
        // Not repeated: a removal whose reply was lost would report the file missing.
        let result = once(&pool, async |conn| {
            remove(conn, &u.path, args.recursive).await
        })
        .await;
        match result {
            Ok(()) => say(&args.output, &format!("removed {u}")),
            Err(e) => {
                let e = e.with_path(&u.to_string());
                eprintln!("ferry: {e}");
                failures.push(e);
            }
        }
    }
    pool.close().await;
    Ok(exit_code_for(&failures))
}

async fn remove(conn: &mut dyn Transport, path: &str, recursive: bool) -> Result<(), ClientError> {
    let entry = conn
        .stat(path)
        .await?
        .ok_or_else(|| ClientError::NotFound {
            path: path.to_owned(),
        })?;
    if !entry.is_dir() {
        return conn.remove_file(path).await;
    }
    if !recursive {
        return Err(ClientError::remote(path, "is a directory (use -r)"));
    }
    let tree = mirror::walk(conn, path, &Filter::default()).await?;
    for t in tree.iter().rev() {
        let p = url::join(path, &t.rel);
        if t.entry.is_dir() {
            conn.remove_dir(&p).await?;
        } else {
            conn.remove_file(&p).await?;
        }
    }
    conn.remove_dir(path).await
}

async fn mkdir(args: MkdirArgs) -> CmdResult {
    let urls = args
        .urls
        .iter()
        .map(|s| remote(s))
        .collect::<Result<Vec<_>, _>>()?;
    let server = same_server(&urls)?;
    let pool = connect_pool(server, &args.connect, &args.output).await?;
    let mut failures = Vec::new();
    for u in &urls {
        let path = u.path.trim_end_matches('/');
        // `-p` accepts what exists, so it can be repeated; a plain mkdir whose reply was lost would fail again.
        let result = if args.parents {
            repeatable(&pool, async |conn| make_parents(conn, path).await).await
        } else {
            once(&pool, async |conn| conn.mkdir(path).await).await
        };
        match result {
            Ok(()) => say(&args.output, &format!("created {u}")),
            Err(e) => {
                let e = e.with_path(&u.to_string());
                eprintln!("ferry: {e}");
                failures.push(e);
            }
        }
    }
    pool.close().await;
    Ok(exit_code_for(&failures))
}

async fn make_parents(conn: &mut dyn Transport, path: &str) -> Result<(), ClientError> {
    let mut prefix = String::new();
    for (i, part) in path.split('/').enumerate() {
        if i == 0 && part.is_empty() {
            prefix.push('/');
            continue;
        }
        if part.is_empty() {
            continue;
        }
        prefix = url::join(&prefix, part);
        match conn.stat(&prefix).await? {
            Some(e) if e.is_dir() => {}
            Some(_) => {
                return Err(ClientError::remote(
                    &prefix,
                    "exists and is not a directory",
                ))
            }
            None => conn.mkdir(&prefix).await?,
        }
    }
    Ok(())
}

async fn mv(args: MvArgs) -> CmdResult {
    let from = remote(&args.url)?;
    let to_path = if args.new.contains("://") {
        let to = remote(&args.new)?;
        same_server(&[from.clone(), to.clone()])?;
        to.path
    } else if args.new.starts_with('/') {
        args.new.clone()
    } else {
        url::join(url::parent(&from.path), &args.new)
    };
    let pool = connect_pool(&from, &args.connect, &args.output).await?;
    // Not repeated: a rename whose reply was lost would report the source missing.
    let result = once(&pool, async |conn| {
        if conn.stat(&from.path).await?.is_none() {
            return Err(ClientError::NotFound {
                path: from.to_string(),
            });
        }
        // "mv a dir/" and "mv a existing-dir" move into the directory.
        let target = match conn.stat(&to_path).await? {
            Some(e) if e.is_dir() => {
                url::join(to_path.trim_end_matches('/'), url::file_name(&from.path))
            }
            _ => to_path.clone(),
        };
        conn.rename(&from.path, &target).await.map(|()| target)
    })
    .await;
    pool.close().await;
    let target = result?;
    say(
        &args.output,
        &format!("renamed {from} to {}", from.with_path(target)),
    );
    Ok(EXIT_OK)
}

async fn cat(args: CatArgs) -> CmdResult {
    let urls = args
        .urls
        .iter()
        .map(|s| remote(s))
        .collect::<Result<Vec<_>, _>>()?;
    let server = same_server(&urls)?;
    let pool = connect_pool(server, &args.connect, &args.output).await?;
    let mut stdout = tokio::io::stdout();
    let mut failures = Vec::new();
    for u in &urls {
        // A retry continues after the bytes already written.
        let mut written = 0u64;
        let result = repeatable(&pool, async |conn| match conn.stat(&u.path).await? {
            Some(e) if e.is_dir() => Err(ClientError::remote(u, "is a directory")),
            Some(_) => {
                let offset = written;
                let mut sink = CountingSink {
                    inner: &mut stdout,
                    count: &mut written,
                };
                conn.read(&u.path, offset, None, &mut sink)
                    .await
                    .map(|_| ())
            }
            None => Err(ClientError::NotFound {
                path: u.to_string(),
            }),
        })
        .await;
        match result {
            Ok(()) => {}
            // The reader of the output has gone (`ferry cat URL | head`): stop quietly, as cat does.
            Err(ClientError::Local { source, .. }) if output::is_closed(&source) => break,
            Err(e) => {
                let e = e.with_path(&u.to_string());
                eprintln!("ferry: {e}");
                failures.push(e);
            }
        }
    }
    let _ = stdout.flush().await;
    pool.close().await;
    Ok(exit_code_for(&failures))
}

async fn hash(args: HashArgs) -> CmdResult {
    let urls = args
        .urls
        .iter()
        .map(|s| remote(s))
        .collect::<Result<Vec<_>, _>>()?;
    let server = same_server(&urls)?;
    let pool = connect_pool(server, &args.connect, &args.output).await?;
    let mut failures = Vec::new();
    for u in &urls {
        match repeatable(&pool, async |conn| {
            remote_hash(conn, &u.path, args.algorithm).await
        })
        .await
        {
            Ok((sum, by_server)) => {
                if args.output.json {
                    outln!(
                        "{}",
                        serde_json::json!({
                            "path": u.to_string(),
                            "algorithm": args.algorithm.name(),
                            "checksum": sum,
                            "computed_by": if by_server { "server" } else { "client" },
                        })
                    );
                } else {
                    outln!("{sum}  {}", u.path);
                }
            }
            Err(e) => {
                let e = e.with_path(&u.to_string());
                eprintln!("ferry: {e}");
                failures.push(e);
            }
        }
    }
    pool.close().await;
    Ok(exit_code_for(&failures))
}

/// The server's checksum, or (when it offers none) one computed here by reading the file.
async fn remote_hash(
    conn: &mut dyn Transport,
    path: &str,
    algorithm: HashAlgorithm,
) -> Result<(String, bool), ClientError> {
    match conn.stat(path).await? {
        None => {
            return Err(ClientError::NotFound {
                path: path.to_owned(),
            })
        }
        Some(e) if e.is_dir() => return Err(ClientError::remote(path, "is a directory")),
        Some(_) => {}
    }
    if conn.checksum_algorithms().await.contains(&algorithm) {
        if let Some(sum) = conn.checksum(path, algorithm, None).await? {
            return Ok((sum, true));
        }
    }
    let mut sink = HashingSink(Some(Hasher::new(algorithm)));
    conn.read(path, 0, None, &mut sink).await?;
    let sum = sink.0.take().map(Hasher::finish_hex).unwrap_or_default();
    Ok((sum, false))
}

/// An `AsyncWrite` that hashes what it is given.
struct HashingSink(Option<Hasher>);

impl tokio::io::AsyncWrite for HashingSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(h) = self.0.as_mut() {
            h.update(buf);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// An `AsyncWrite` that passes bytes on to `inner` and counts them.
struct CountingSink<'a, W> {
    inner: &'a mut W,
    count: &'a mut u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountingSink<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            *this.count += n as u64;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

async fn mirror_cmd(args: MirrorArgs) -> CmdResult {
    let src = Location::parse(&args.src)?;
    let dst = Location::parse(&args.dst)?;
    let downloading = matches!((&src, &dst), (Location::Remote(_), Location::Local(_)));
    refuse_segments_unless_downloading(&args.transfer, downloading)?;
    let filter = Filter::new(&args.include, &args.exclude)?;
    let (src_pool, src_root) = side_pool(&src, &args.connect, &args.output).await?;
    let (dst_pool, dst_root) = side_pool(&dst, &args.connect, &args.output).await?;

    let src_tree = repeatable(&src_pool, async |s| {
        if s.stat(&src_root).await?.is_none_or(|e| !e.is_dir()) {
            return Err(ClientError::remote(&src, "not a directory"));
        }
        mirror::walk(s, &src_root, &filter).await
    })
    .await?;
    let dst_tree = repeatable(&dst_pool, async |d| {
        mirror::walk(d, &dst_root, &Filter::default()).await
    })
    .await?;
    for t in mirror::skipped(&src_tree, &filter) {
        report_skipped(&args.output, &t.rel, &t.entry);
    }
    let options = MirrorOptions {
        delete: args.delete,
        checksum: args.checksum,
    };
    let actions = mirror::plan(&src_tree, &dst_tree, &filter, options);

    if args.dry_run {
        for a in &actions {
            if args.output.json {
                outln!("{}", action_json(a));
            } else {
                outln!("{}", action_text(a));
            }
        }
        return Ok(EXIT_OK);
    }
    repeatable(&dst_pool, async |d| {
        if d.stat(&dst_root).await?.is_none() {
            make_parents(d, dst_root.trim_end_matches('/')).await?;
        }
        Ok(())
    })
    .await?;
    let mut s = src_pool.get().await?;
    let mut d = dst_pool.get().await?;
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let mut trailing_deletes = Vec::new();
    let mut copying = false;
    // A changed file at a remote destination is written in place and is not the start of the new version: its
    // copy writes from offset 0 over it. It is not deleted first, which would lose it when the copy is refused
    // (and, on a server that stores uploads atomically, when the copy breaks). A local destination is written
    // through `.part`, whose note of its source says what may be continued.
    let in_place = !dst_pool.is_local();
    for a in &actions {
        match a {
            Action::Delete { rel, is_dir } if copying => trailing_deletes.push((rel, *is_dir)),
            Action::Delete { rel, is_dir } => {
                let deleted = delete_reported(d.as_mut(), &dst_root, rel, *is_dir, &args.output);
                if let Err(e) = deleted.await {
                    failures.push(e);
                }
            }
            Action::Mkdir { rel } => {
                if let Err(e) = d.mkdir(&url::join(&dst_root, rel)).await {
                    eprintln!("ferry: {e}");
                    failures.push(e);
                }
            }
            Action::Copy { rel, reason, .. } => {
                copying = true;
                let changed = *reason != mirror::CopyReason::New;
                jobs.push(mirror_job(&src_root, &dst_root, rel, changed && in_place));
            }
            Action::Compare { rel, .. } => {
                copying = true;
                let (sp, dp) = (url::join(&src_root, rel), url::join(&dst_root, rel));
                let same =
                    checksums_match(s.as_mut(), &sp, d.as_mut(), &dp, args.transfer.algorithm)
                        .await;
                match same {
                    Ok(true) => {}
                    Ok(false) => jobs.push(mirror_job(&src_root, &dst_root, rel, in_place)),
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        failures.push(e);
                    }
                }
            }
        }
    }
    src_pool.put(s);
    dst_pool.put(d);
    let code = run_jobs(
        src_pool.clone(),
        dst_pool.clone(),
        jobs,
        &args.transfer,
        &args.connect,
        &args.output,
    )
    .await;
    if !trailing_deletes.is_empty() {
        let mut d = dst_pool.get().await?;
        for (rel, is_dir) in trailing_deletes {
            let deleted = delete_reported(d.as_mut(), &dst_root, rel, is_dir, &args.output);
            if let Err(e) = deleted.await {
                failures.push(e);
            }
        }
        dst_pool.put(d);
    }
    src_pool.close().await;
    dst_pool.close().await;
    Ok(combine(code, &failures))
}

/// The job that copies `rel`; `fresh` when the destination holds another version of it.
fn mirror_job(src_root: &str, dst_root: &str, rel: &str, fresh: bool) -> Job {
    Job {
        source: url::join(src_root, rel),
        destination: url::join(dst_root, rel),
        name: rel.to_owned(),
        fresh,
    }
}

/// Deletes `rel` at the destination and reports it: in text the dry run's line in the past tense (`deleted
/// NAME`), with `--json` the dry run's object; a failure as for a failed file, and returned.
async fn delete_reported(
    conn: &mut dyn Transport,
    root: &str,
    rel: &str,
    is_dir: bool,
    output: &OutputArgs,
) -> Result<(), ClientError> {
    let result = delete_one(conn, root, rel, is_dir).await;
    match (&result, output.json) {
        (Ok(()), true) => {
            let done = Action::Delete {
                rel: rel.to_owned(),
                is_dir,
            };
            outln!("{}", action_json(&done));
        }
        (Ok(()), false) => say(output, &deleted_text(rel, is_dir)),
        (Err(e), true) => outln!(
            "{}",
            serde_json::json!({"path": rel, "error": e.to_string(), "exit_code": e.exit_code()})
        ),
        (Err(e), false) => eprintln!("ferry: {e}"),
    }
    result
}

/// The line for a deletion done: [`action_text`]'s, in the past tense.
fn deleted_text(rel: &str, is_dir: bool) -> String {
    if is_dir {
        format!("deleted directory {rel}")
    } else {
        format!("deleted {rel}")
    }
}

/// Removes a destination entry; one that is gone already (a `.part` renamed by its finished download) is done.
async fn delete_one(
    conn: &mut dyn Transport,
    root: &str,
    rel: &str,
    is_dir: bool,
) -> Result<(), ClientError> {
    let p = url::join(root, rel);
    let removed = if is_dir {
        conn.remove_dir(&p).await
    } else {
        conn.remove_file(&p).await
    };
    match removed {
        Err(ClientError::NotFound { .. }) => Ok(()),
        // FTP answers 550 both for a missing file and a refusal: only the first is done.
        Err(e @ ClientError::Remote { .. }) => match conn.stat(&p).await {
            Ok(None) => Ok(()),
            _ => Err(e),
        },
        other => other,
    }
}

/// Refuses jobs of which two would write the same destination (`get d1/x d2/x` into one directory): one copy
/// would silently replace the other.
fn refuse_shared_destinations(jobs: &[Job]) -> Result<(), ClientError> {
    let mut first_source: HashMap<&str, &str> = HashMap::new();
    for job in jobs {
        if let Some(other) = first_source.insert(&job.destination, &job.source) {
            return Err(ClientError::Usage(format!(
                "{other} and {} would both be written to {}",
                job.source, job.destination
            )));
        }
    }
    Ok(())
}

async fn checksums_match(
    s: &mut dyn Transport,
    sp: &str,
    d: &mut dyn Transport,
    dp: &str,
    algorithm: Option<HashAlgorithm>,
) -> Result<bool, ClientError> {
    let ours = s.checksum_algorithms().await;
    let theirs = d.checksum_algorithms().await;
    let algorithm = algorithm
        .or_else(|| ferry_client::checksum::common_algorithm(&ours, &theirs))
        .unwrap_or(HashAlgorithm::Sha256);
    let (a, _) = remote_hash(s, sp, algorithm).await?;
    let (b, _) = remote_hash(d, dp, algorithm).await?;
    Ok(a == b)
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Delete { rel, is_dir: true } => format!("delete directory {rel}"),
        Action::Delete { rel, .. } => format!("delete {rel}"),
        Action::Mkdir { rel } => format!("mkdir {rel}"),
        Action::Copy { rel, size, reason } => {
            format!(
                "copy {rel} ({size} bytes, {})",
                serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        }
        Action::Compare { rel, .. } => format!("compare {rel} by checksum"),
    }
}

fn action_json(a: &Action) -> serde_json::Value {
    match a {
        Action::Delete { rel, is_dir } => {
            serde_json::json!({"action": "delete", "path": rel, "dir": is_dir})
        }
        Action::Mkdir { rel } => serde_json::json!({"action": "mkdir", "path": rel}),
        Action::Copy { rel, size, reason } => {
            serde_json::json!({"action": "copy", "path": rel, "size": size, "reason": reason})
        }
        Action::Compare { rel, size } => {
            serde_json::json!({"action": "compare", "path": rel, "size": size})
        }
    }
}

/// Runs jobs through the engine with a progress display; returns the exit code.
async fn run_jobs(
    source: Arc<Pool>,
    destination: Arc<Pool>,
    jobs: Vec<Job>,
    transfer: &TransferArgs,
    connect: &ConnectArgs,
    output: &OutputArgs,
) -> u8 {
    let progress = Arc::new(Renderer::new(output));
    let options = TransferOptions {
        resume: !transfer.no_resume,
        verify: !transfer.no_verify,
        retry: retry_policy(connect),
        parallel: transfer.parallel,
        segments: transfer.segments,
        limit_rate: transfer.limit_rate,
        algorithm: transfer.algorithm,
        ..TransferOptions::default()
    };
    let engine = Engine::new(
        source.clone(),
        destination.clone(),
        options,
        progress.clone(),
    );
    progress.begin(jobs.len(), 0);
    let results = engine.run(jobs).await;
    progress.done();
    source.close().await;
    destination.close().await;
    let errors: Vec<&ClientError> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    exit_code_for(errors)
}

fn combine(code: u8, earlier: &[ClientError]) -> u8 {
    let earlier = exit_code_for(earlier);
    [code, earlier]
        .into_iter()
        .max_by_key(|c| match *c {
            3 => 4,
            2 => 5,
            4 => 3,
            1 => 2,
            _ => 0,
        })
        .unwrap_or(EXIT_OK)
}

struct Expanded {
    /// (remote path, path relative to the destination)
    files: Vec<(String, String)>,
    /// Directories to create, relative to the destination.
    dirs: Vec<String>,
    is_tree: bool,
}

/// A remote path as files to download: the file itself, a directory's tree (with `-r`), or the matches of a glob
/// in the last component.
async fn expand_remote(
    conn: &mut dyn Transport,
    path: &str,
    recursive: bool,
) -> Result<Expanded, ClientError> {
    match conn.stat(path).await? {
        Some(e) if e.is_dir() => {
            if !recursive {
                return Err(ClientError::remote(path, "is a directory (use -r)"));
            }
            let name = url::file_name(path);
            let name = if name.is_empty() { "." } else { name };
            let tree = mirror::walk(conn, path.trim_end_matches('/'), &Filter::default()).await?;
            let prefix = |rel: &str| {
                if name == "." {
                    rel.to_owned()
                } else {
                    format!("{name}/{rel}")
                }
            };
            let mut dirs = vec![name.to_owned()];
            let mut files = Vec::new();
            for t in tree {
                if t.entry.is_dir() {
                    dirs.push(prefix(&t.rel));
                } else if t.entry.kind == EntryKind::File {
                    files.push((
                        url::join(path.trim_end_matches('/'), &t.rel),
                        prefix(&t.rel),
                    ));
                }
            }
            Ok(Expanded {
                files,
                dirs,
                is_tree: true,
            })
        }
        Some(_) => Ok(Expanded {
            files: vec![(path.to_owned(), url::file_name(path).to_owned())],
            dirs: Vec::new(),
            is_tree: false,
        }),
        None if url::file_name(path).contains(['*', '?', '[']) => {
            let dir = url::parent(path);
            let pattern = globset::GlobBuilder::new(url::file_name(path))
                .literal_separator(true)
                .build()
                .map_err(|e| ClientError::Usage(format!("bad glob: {e}")))?
                .compile_matcher();
            // The names become local paths: only plain names, whatever the server lists.
            let mut files: Vec<(String, String)> = conn
                .list(dir)
                .await?
                .into_iter()
                .filter(|e| !e.is_dir() && url::is_plain_name(&e.name) && pattern.is_match(&e.name))
                .map(|e| (url::join(dir, &e.name), e.name))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(ClientError::NotFound {
                    path: path.to_owned(),
                });
            }
            Ok(Expanded {
                files,
                dirs: Vec::new(),
                is_tree: true,
            })
        }
        None => Err(ClientError::NotFound {
            path: path.to_owned(),
        }),
    }
}

async fn side_pool(
    loc: &Location,
    connect: &ConnectArgs,
    output: &OutputArgs,
) -> Result<(Arc<Pool>, String), ClientError> {
    match loc {
        Location::Local(p) => Ok((
            Pool::local(),
            p.to_string_lossy().trim_end_matches('/').to_owned(),
        )),
        Location::Remote(u) => {
            let pool = connect_pool(u, connect, output).await?;
            let root = u.path.trim_end_matches('/');
            let root = if root.is_empty() && u.path.starts_with('/') {
                "/"
            } else {
                root
            };
            Ok((pool, root.to_owned()))
        }
    }
}

/// A pool for the URL's server, with one connection made (and kept) so that login problems show at once.
async fn connect_pool(
    url: &RemoteUrl,
    args: &ConnectArgs,
    output: &OutputArgs,
) -> Result<Arc<Pool>, ClientError> {
    let endpoint = Endpoint::new(url.clone(), connect_options(args, output));
    let pool = Pool::remote(endpoint);
    let conn = pool.get().await?;
    pool.put(conn);
    Ok(pool)
}

/// Runs `op` on a connection from `pool`, and after a transient failure again on a new connection, as the
/// pool's retry policy says. For operations that are safe to repeat. Connecting is retried by the pool itself, so
/// a connection that cannot be made ends this at once.
async fn repeatable<T>(
    pool: &Pool,
    mut op: impl AsyncFnMut(&mut dyn Transport) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let (policy, notice) = match pool.endpoint() {
        Some(endpoint) => (endpoint.options.retry, endpoint.options.on_retry.as_ref()),
        None => (RetryPolicy::default(), None),
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let mut conn = pool.get().await?;
        match op(conn.as_mut()).await {
            // A connection that broke is dropped, never reused.
            Err(e) if e.is_transient() => {
                if !policy.again(&e, tries, notice).await {
                    return Err(e);
                }
            }
            result => {
                pool.put(conn);
                return result;
            }
        }
    }
}

/// Runs `op` once on a connection from `pool`, which gets the connection back unless it broke.
async fn once<T>(
    pool: &Pool,
    mut op: impl AsyncFnMut(&mut dyn Transport) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let mut conn = pool.get().await?;
    let result = op(conn.as_mut()).await;
    if !result.as_ref().is_err_and(ClientError::is_transient) {
        pool.put(conn);
    }
    result
}

fn connect_options(args: &ConnectArgs, output: &OutputArgs) -> ConnectOptions {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let quiet = output.quiet;
    let on_retry: RetryNotice = Arc::new(move |error, retry, wait| {
        if !quiet {
            output::notice(&retry_line(error, retry, wait));
        }
    });
    ConnectOptions {
        insecure: args.insecure,
        tls_fingerprint: args.tls_fingerprint.clone(),
        ca_file: args.ca_file.clone(),
        accept_new_host_key: args.accept_new_host_key,
        known_hosts: args.known_hosts.clone(),
        identities: args.identities.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        ftp_active: args.active,
        prompter: interactive.then(|| Arc::new(TerminalPrompter) as Arc<dyn Prompter>),
        retry: retry_policy(args),
        on_retry: Some(on_retry),
    }
}

fn retry_policy(args: &ConnectArgs) -> RetryPolicy {
    RetryPolicy {
        retries: args.retries,
        ..RetryPolicy::default()
    }
}

/// `ferry: CAUSE; retry N in S s`, for retries of connections and of files.
fn retry_line(error: &ClientError, retry: u32, wait: Duration) -> String {
    format!(
        "ferry: {error}; retry {retry} in {:.1} s",
        wait.as_secs_f32()
    )
}

fn remote(s: &str) -> Result<RemoteUrl, ClientError> {
    match Location::parse(s)? {
        Location::Remote(u) => Ok(u),
        Location::Local(_) => Err(ClientError::Usage(format!(
            "{s}: not a URL (expected ftp://, ftps://, ftps+implicit:// or sftp://)"
        ))),
    }
}

fn same_server(urls: &[RemoteUrl]) -> Result<&RemoteUrl, ClientError> {
    let first = urls
        .first()
        .ok_or_else(|| ClientError::Usage("no URL given".to_owned()))?;
    if urls.iter().any(|u| u.server() != first.server()) {
        return Err(ClientError::Usage(
            "all URLs must name the same server".to_owned(),
        ));
    }
    Ok(first)
}

/// Says that a symbolic link or special file was left out of a recursive upload or a mirror.
fn report_skipped(output: &OutputArgs, path: &str, entry: &Entry) {
    let what = match entry.kind {
        EntryKind::Symlink => "a symbolic link",
        _ => "not a regular file",
    };
    if !output.quiet {
        output::notice(&format!("ferry: {path}: skipped ({what})"));
    }
}

fn say(output: &OutputArgs, line: &str) {
    if !output.quiet && !output.json {
        outln!("{line}");
    }
}

fn long_line(e: &Entry) -> String {
    let kind = match e.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        _ => '-',
    };
    let perms = e
        .mode
        .map(mode_string)
        .unwrap_or_else(|| "?????????".to_owned());
    let time = e
        .mtime
        .map(|t| {
            ferry_core::datetime::utc(t)
                .format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]"
                ))
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "-".repeat(16));
    let name = if e.is_dir() {
        format!("{}/", e.name)
    } else {
        e.name.clone()
    };
    format!("{kind}{perms} {:>12} {time} {name}", e.size)
}

fn mode_string(mode: u32) -> String {
    let bits = ['r', 'w', 'x'];
    (0..9)
        .map(|i| {
            if mode & (1 << (8 - i)) != 0 {
                bits[i % 3]
            } else {
                '-'
            }
        })
        .collect()
}

/// Refuses `--segments` above 1 unless the command downloads: only downloads are split into segments, and a
/// flag that would silently do nothing is a usage error.
fn refuse_segments_unless_downloading(
    transfer: &TransferArgs,
    downloading: bool,
) -> Result<(), ClientError> {
    if transfer.segments > 1 && !downloading {
        return Err(ClientError::Usage(
            "--segments splits downloads only (from a server to local files); uploads are not segmented \
             (-j N transfers N files at once)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Parses a count of at least 1 (`-j`, `--segments`): 0 would transfer nothing.
fn parse_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s}: expected a whole number of at least 1"))
}

/// Parses `1048576`, `512k`, `10m`, `1g` (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s}: expected a size such as 500k or 10m"))
}

fn parse_algorithm(s: &str) -> Result<HashAlgorithm, String> {
    HashAlgorithm::parse(s).ok_or_else(|| format!("{s}: expected sha256, sha512, sha1 or md5"))
}

/// Asks at the terminal.
struct TerminalPrompter;

impl Prompter for TerminalPrompter {
    fn password(&self, target: &str) -> Option<String> {
        rpassword::prompt_password(format!("Password for {target}: ")).ok()
    }

    fn accept_host_key(&self, host: &str, fingerprint: &str) -> bool {
        eprint!(
            "The host key of {host} is not known.\nIts fingerprint is {fingerprint}.\nTrust it and remember it (yes/no)? "
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok() && answer.trim().eq_ignore_ascii_case("yes")
    }
}

/// Renders engine progress: bars on a terminal, a line per file otherwise, JSON with `--json`.
struct Renderer {
    mode: Mode,
    state: Mutex<RenderState>,
}

enum Mode {
    Bars {
        multi: MultiProgress,
        total: ProgressBar,
    },
    Lines,
    Json,
    Quiet,
}

#[derive(Default)]
struct RenderState {
    bars: HashMap<usize, ProgressBar>,
    sizes: HashMap<usize, u64>,
    positions: HashMap<usize, u64>,
    total_size: u64,
}

impl RenderState {
    /// Bytes done over all files. Sizes are what servers claim, so sums saturate rather than overflow.
    fn done(&self) -> u64 {
        self.positions
            .values()
            .fold(0u64, |sum, p| sum.saturating_add(*p))
    }
}

impl Renderer {
    fn new(output: &OutputArgs) -> Renderer {
        let mode = if output.json {
            Mode::Json
        } else if output.quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template(
                    "total {binary_bytes:>10}/{binary_total_bytes:<10} [{bar:30}] {binary_bytes_per_sec:>12} ETA {eta:>4}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            output::draw_notices_above(Some(multi.clone()));
            Mode::Bars { multi, total }
        } else {
            Mode::Lines
        };
        Renderer {
            mode,
            state: Mutex::new(RenderState::default()),
        }
    }

    fn done(&self) {
        if let Mode::Bars { total, .. } = &self.mode {
            total.finish();
            output::draw_notices_above(None);
        }
    }

    fn update_total(&self, state: &RenderState) {
        if let Mode::Bars { total, .. } = &self.mode {
            total.set_length(state.total_size);
            total.set_position(state.done());
        }
    }

    fn summary(report: &TransferReport) -> String {
        if report.skipped {
            return format!("{}: already complete ({} bytes)", report.path, report.size);
        }
        let rate = if report.seconds > 0.0 {
            report.bytes as f64 / report.seconds
        } else {
            0.0
        };
        let resumed = if report.resumed_from > 0 {
            format!(", resumed at {}", report.resumed_from)
        } else {
            String::new()
        };
        let verified = match (&report.algorithm, report.verified) {
            (Some(a), ferry_client::transfer::Verification::Checksum) => format!("verified by {a}"),
            _ => "size checked".to_owned(),
        };
        format!(
            "{}: {} bytes in {:.2} s ({}/s{resumed}), {verified}",
            report.path,
            report.bytes,
            report.seconds,
            indicatif::BinaryBytes(rate as u64),
        )
    }
}

impl Progress for Renderer {
    fn begin(&self, _files: usize, _bytes: u64) {}

    fn start(&self, id: usize, name: &str, size: u64, resumed_from: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if !state.sizes.contains_key(&id) {
            state.total_size = state.total_size.saturating_add(size);
        }
        state.sizes.insert(id, size);
        state.positions.insert(id, resumed_from);
        if let Mode::Bars { multi, total } = &self.mode {
            let bar = state.bars.entry(id).or_insert_with(|| {
                let bar = multi.insert_before(total, ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:30!} {binary_bytes:>10}/{binary_total_bytes:<10} [{bar:30}] {binary_bytes_per_sec:>12} ETA {eta:>4}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(name.to_owned());
                bar
            });
            bar.set_length(size);
            bar.set_position(resumed_from);
            bar.reset_eta();
        }
        self.update_total(&state);
    }

    fn advance(&self, id: usize, bytes: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let position = state.positions.entry(id).or_default();
        *position = position.saturating_add(bytes);
        if let Some(bar) = state.bars.get(&id) {
            bar.inc(bytes);
        }
        if let Mode::Bars { total, .. } = &self.mode {
            total.inc(bytes);
        }
    }

    fn retry(&self, _id: usize, error: &ClientError, attempt: u32, delay: Duration) {
        if !matches!(self.mode, Mode::Quiet) {
            output::notice(&retry_line(error, attempt, delay));
        }
    }

    fn finish(&self, id: usize, name: &str, result: &Result<TransferReport, ClientError>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match &self.mode {
            Mode::Bars { multi, .. } => {
                if let Some(bar) = state.bars.remove(&id) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let line = match result {
                    Ok(r) => Renderer::summary(r),
                    Err(e) => format!("ferry: {e}"),
                };
                let _ = multi.println(line);
            }
            Mode::Lines => match result {
                Ok(r) => outln!("{}", Renderer::summary(r)),
                Err(e) => eprintln!("ferry: {e}"),
            },
            Mode::Json => {
                let value = match result {
                    Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                    Err(e) => serde_json::json!({
                        "path": name,
                        "error": e.to_string(),
                        "exit_code": e.exit_code(),
                    }),
                };
                outln!("{value}");
            }
            Mode::Quiet => {
                if let Err(e) = result {
                    eprintln!("ferry: {e}");
                }
            }
        }
        if let Some(size) = state.sizes.get(&id).copied() {
            if result.is_ok() {
                state.positions.insert(id, size);
            }
        }
        self.update_total(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn counts_must_be_at_least_one() {
        assert_eq!(parse_count("1"), Ok(1));
        assert_eq!(parse_count("16"), Ok(16));
        assert!(parse_count("0").is_err());
        assert!(parse_count("-1").is_err());
        assert!(parse_count("x").is_err());
    }

    #[test]
    fn zero_parallel_or_segments_is_a_usage_error() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            command: ClientCommand,
        }
        for args in [
            &["ferry", "get", "-j", "0", "ftp://h/x"][..],
            &["ferry", "get", "--segments", "0", "ftp://h/x"],
            &["ferry", "mirror", "-j", "0", "a", "ftp://h/b"],
        ] {
            let err = Cli::try_parse_from(args).err().expect("refused");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        assert!(Cli::try_parse_from(["ferry", "get", "-j", "2", "ftp://h/x"]).is_ok());
    }

    #[test]
    fn segments_are_refused_unless_the_command_downloads() {
        let transfer = |segments| TransferArgs {
            no_resume: false,
            no_verify: false,
            parallel: 1,
            segments,
            limit_rate: None,
            algorithm: None,
        };
        assert!(refuse_segments_unless_downloading(&transfer(1), false).is_ok());
        assert!(refuse_segments_unless_downloading(&transfer(4), true).is_ok());
        let err = refuse_segments_unless_downloading(&transfer(4), false).unwrap_err();
        assert_eq!(err.exit_code(), ferry_client::error::EXIT_USAGE);
        assert!(err.to_string().contains("--segments"), "{err}");
    }

    #[test]
    fn deletions_done_read_like_the_plan_in_the_past_tense() {
        assert_eq!(deleted_text("old/x.txt", false), "deleted old/x.txt");
        assert_eq!(deleted_text("old", true), "deleted directory old");
    }

    #[test]
    fn modes_render_like_ls() {
        assert_eq!(mode_string(0o755), "rwxr-xr-x");
        assert_eq!(mode_string(0o640), "rw-r-----");
    }

    #[test]
    fn progress_totals_saturate_on_huge_claimed_sizes() {
        let renderer = Renderer::new(&OutputArgs {
            quiet: true,
            json: false,
        });
        renderer.start(0, "a", u64::MAX - 1, u64::MAX - 1);
        renderer.start(1, "b", 10, 5);
        renderer.advance(1, 3);
        renderer.advance(0, 7);
        let state = renderer.state.lock().unwrap();
        assert_eq!(state.total_size, u64::MAX);
        assert_eq!(state.done(), u64::MAX);
        assert_eq!(state.positions.get(&0), Some(&u64::MAX));
    }

    #[test]
    fn two_sources_for_one_destination_are_refused_by_name() {
        let job = |source: &str, destination: &str| Job {
            source: source.to_owned(),
            destination: destination.to_owned(),
            name: source.to_owned(),
            fresh: false,
        };
        assert!(refuse_shared_destinations(&[job("a/x", "out/x"), job("b/y", "out/y")]).is_ok());
        let err = refuse_shared_destinations(&[
            job("a/x", "out/x"),
            job("b/y", "out/y"),
            job("b/x", "out/x"),
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), ferry_client::error::EXIT_USAGE);
        let text = err.to_string();
        assert!(
            text.contains("a/x") && text.contains("b/x") && text.contains("out/x"),
            "{text}"
        );
    }

    #[test]
    fn exit_codes_combine_by_severity() {
        assert_eq!(combine(0, &[]), 0);
        assert_eq!(combine(1, &[]), 1);
        let missing = ClientError::NotFound { path: "x".into() };
        assert_eq!(combine(0, std::slice::from_ref(&missing)), 1);
        assert_eq!(combine(4, std::slice::from_ref(&missing)), 4);
        assert_eq!(combine(3, &[]), 3);
    }
}
