//! The legacy SCP protocol (`scp -O`), run on an exec channel instead of a remote `scp` process.
//!
//! The client runs `scp -t TARGET` to upload (this side is the *sink*) or `scp -f PATH...` to download (this side
//! is the *source*). Both sides then exchange header lines (`C0644 SIZE NAME` for a file, `D0755 0 NAME` ... `E`
//! for a directory with `-r`, `TMTIME 0 ATIME 0` before either with `-p`), the file data, and one-byte replies:
//! `\0` for success, `\x01message\n` for an error that skips one item, `\x02message\n` for a fatal one.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::error::CoreError;
use ferry_core::session::Session;
use ferry_core::storage::{names, FileKind, Metadata, WriteMode};
use ferry_core::transfer::Download;
use ferry_core::vpath::VirtualPath;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::exec::{error_text, resolve_path, EXIT_FAILURE};
use crate::shell_words::{Glob, Word};

/// Longest header line accepted, in bytes (OpenSSH's scp uses a 2 KiB buffer).
pub const MAX_LINE: usize = 2048;
/// Deepest directory nesting a client may send or a download may descend into.
pub const MAX_DEPTH: usize = 64;
/// Size of the chunks file data is moved in.
const CHUNK: usize = 64 * 1024;
/// Names a recursive download holds at once, over all the directories it is inside (each directory's names are
/// read before its entries are sent, so that no directory stays open meanwhile).
const MAX_HELD_NAMES: usize = 1_000_000;

const OK: u8 = 0;
const WARNING: u8 = 1;
const FATAL: u8 = 2;

/// Which way the files go, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `scp -t`: the client uploads.
    Sink,
    /// `scp -f`: the client downloads.
    Source,
}

/// The arguments of a remote `scp` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpArgs {
    pub direction: Direction,
    /// `-r`: directories too.
    pub recursive: bool,
    /// `-p`: keep modification times and modes.
    pub preserve: bool,
    /// `-d`: the target must be a directory.
    pub target_is_dir: bool,
    /// The target (sink, exactly one, taken as written) or the sources (source, at least one; wildcards in their
    /// last component are expanded as a shell would, and a pattern that matches nothing is taken as written).
    pub paths: Vec<Word>,
}

impl ScpArgs {
    /// Parses the words after `scp`, as OpenSSH's client sends them (`-r -p -d -t -- PATH`).
    pub fn parse(args: &[Word]) -> Result<ScpArgs, String> {
        let mut direction = None;
        let (mut recursive, mut preserve, mut target_is_dir) = (false, false, false);
        let mut paths = Vec::new();
        let mut options_done = false;
        for arg in args {
            match arg.text.strip_prefix('-') {
                Some("-") if !options_done => options_done = true,
                Some(flags) if !options_done && !flags.is_empty() => {
                    for flag in flags.chars() {
                        match flag {
                            't' | 'f' => {
                                let d = if flag == 't' {
                                    Direction::Sink
                                } else {
                                    Direction::Source
                                };
                                if direction.replace(d).is_some_and(|old| old != d) {
                                    return Err("-t and -f exclude each other".into());
                                }
                            }
                            'r' => recursive = true,
                            'p' => preserve = true,
                            'd' => target_is_dir = true,
                            // Verbose and quiet modes change nothing here.
                            'v' | 'q' => {}
                            other => return Err(format!("option -{other} not supported")),
                        }
                    }
                }
                _ => paths.push(arg.clone()),
            }
        }
        let Some(direction) = direction else {
            return Err("this server only runs scp as a remote end (-t or -f)".into());
        };
        match (direction, paths.len()) {
            (Direction::Sink, 1) | (Direction::Source, 1..) => Ok(ScpArgs {
                direction,
                recursive,
                preserve,
                target_is_dir,
                paths,
            }),
            (Direction::Sink, _) => Err("expected exactly one target".into()),
            (Direction::Source, _) => Err("expected a file to send".into()),
        }
    }
}

/// One control line sent to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// `T<mtime> <usec> <atime> <usec>`: times for the next file or directory.
    Times { mtime: u64, atime: u64 },
    /// `C<mode> <size> <name>`: a file's data follows.
    File { mode: u32, size: u64, name: String },
    /// `D<mode> 0 <name>`: a directory's entries follow, up to the matching `E`.
    Dir { mode: u32, name: String },
    /// `E`: the end of a directory.
    EndDir,
}

/// A header line sent to a sink: `start` (`C0644 SIZE `, `D0755 0 `), then `name` as it is on disk (a name that is
/// not UTF-8 reaches the client in its own bytes, as from sshd), then the newline.
fn header(start: String, name: &str) -> Vec<u8> {
    let mut line = start.into_bytes();
    // Names come from listings, which only give names `to_disk` takes back.
    let name = names::to_disk(name).unwrap_or(Cow::Borrowed(OsStr::new(name)));
    line.extend_from_slice(name.as_bytes());
    line.push(b'\n');
    line
}

/// Parses a header line (without its newline). Names that are not a single plain component are refused.
pub fn parse_header(line: &str) -> Result<Header, String> {
    let mut chars = line.chars();
    let kind = chars.next().ok_or("empty line")?;
    let rest = chars.as_str();
    match kind {
        'E' if rest.is_empty() => Ok(Header::EndDir),
        'T' => {
            let fields: Vec<&str> = rest.split(' ').collect();
            let [mtime, mtime_usec, atime, atime_usec] = fields.as_slice() else {
                return Err("bad times line".into());
            };
            let number = |s: &str| s.parse::<u64>().map_err(|_| "bad time".to_owned());
            let usec = |s: &str| match number(s)? {
                n if n < 1_000_000 => Ok(n),
                _ => Err("bad time".to_owned()),
            };
            usec(mtime_usec)?;
            usec(atime_usec)?;
            Ok(Header::Times {
                mtime: number(mtime)?,
                atime: number(atime)?,
            })
        }
        'C' | 'D' => {
            let mut fields = rest.splitn(3, ' ');
            let (Some(mode), Some(size), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err("bad file line".into());
            };
            let mode = u32::from_str_radix(mode, 8)
                .ok()
                .filter(|m| {
                    *m <= 0o7777 && !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_digit())
                })
                .ok_or("bad mode")?;
            let size = size
                .parse::<u64>()
                .ok()
                .filter(|_| size.bytes().all(|b| b.is_ascii_digit()))
                .ok_or("bad size")?;
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(format!("unexpected filename {name:?}"));
            }
            let name = name.to_owned();
            Ok(if kind == 'C' {
                Header::File { mode, size, name }
            } else {
                Header::Dir { mode, name }
            })
        }
        _ => Err("unknown line".into()),
    }
}

/// Runs the remote end of `scp` for `args` over the channel's stdin and stdout; returns the exit status.
pub async fn run<R, W>(session: &Session, args: &ScpArgs, input: R, output: W) -> u32
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut scp = Scp {
        session,
        args,
        input,
        output,
        failed: false,
        sending: Vec::new(),
        held_names: 0,
    };
    let result = match args.direction {
        Direction::Sink => scp.sink().await,
        Direction::Source => scp.source().await,
    };
    let _ = scp.output.flush().await;
    match result {
        Ok(()) if !scp.failed => 0,
        Ok(()) => EXIT_FAILURE,
        Err(e) => {
            tracing::debug!(error = %e, "scp ended");
            EXIT_FAILURE
        }
    }
}

/// Why an SCP exchange stopped.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client reported: {0}")]
    ClientFatal(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// What the other side answered to one item.
enum Reply {
    Ok,
    /// The other side skips the item (its message is already shown to the user).
    Skip,
}

type StepResult<'a> = Pin<Box<dyn Future<Output = Result<(), Stop>> + Send + 'a>>;

struct Scp<'s, R, W> {
    session: &'s Session,
    args: &'s ScpArgs,
    input: R,
    output: W,
    /// Whether an item failed (the exit status is then non-zero).
    failed: bool,
    /// The directories a recursive download is inside, by identity: a link back to one of them is a cycle.
    sending: Vec<u128>,
    /// Names read and not yet sent, in all the directories being sent.
    held_names: usize,
}

impl<'s, R, W> Scp<'s, R, W>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    async fn ok(&mut self) -> Result<(), Stop> {
        self.output.write_all(&[OK]).await?;
        Ok(self.output.flush().await?)
    }

    /// Reports a failed item to the client, which shows the message and goes on.
    async fn warn(&mut self, message: &str) -> Result<(), Stop> {
        self.failed = true;
        let line = format!(
            "{}scp: {}\n",
            char::from(WARNING),
            message.replace('\n', " ")
        );
        self.output.write_all(line.as_bytes()).await?;
        Ok(self.output.flush().await?)
    }

    async fn fatal(&mut self, message: &str) -> Stop {
        self.failed = true;
        let line = format!("{}scp: {}\n", char::from(FATAL), message.replace('\n', " "));
        if self.output.write_all(line.as_bytes()).await.is_ok() {
            let _ = self.output.flush().await;
        }
        Stop::Protocol(message.to_owned())
    }

    /// Reads a line of at most [`MAX_LINE`] bytes; `None` at the end of the input.
    async fn read_line(&mut self) -> Result<Option<String>, Stop> {
        let mut line = Vec::new();
        loop {
            let buf = self.input.fill_buf().await?;
            if buf.is_empty() {
                return if line.is_empty() {
                    Ok(None)
                } else {
                    Err(Stop::Protocol("unexpected end of input".into()))
                };
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(buf.get(..take).unwrap_or_default());
            self.input.consume(take);
            if line.len() > MAX_LINE {
                return Err(self.fatal("line too long").await);
            }
            if done {
                line.pop();
                return Ok(Some(
                    names::from_disk(OsStr::from_bytes(&line)).into_owned(),
                ));
            }
        }
    }

    /// Reads the other side's one-byte reply to what was just sent.
    async fn reply(&mut self) -> Result<Reply, Stop> {
        let mut byte = [0u8; 1];
        if self.input.read(&mut byte).await? == 0 {
            return Err(Stop::Protocol("connection closed".into()));
        }
        match byte {
            [OK] => Ok(Reply::Ok),
            [code] => {
                let message = self.read_line().await?.unwrap_or_default();
                if code == WARNING {
                    self.failed = true;
                    Ok(Reply::Skip)
                } else {
                    Err(Stop::ClientFatal(message))
                }
            }
        }
    }

    // ---- sink: the client uploads ----

    async fn sink(&mut self) -> Result<(), Stop> {
        let Some(target) = self.args.paths.first() else {
            return Err(self.fatal("no target").await);
        };
        // A target ending in a slash must be a directory, as with -d (a file `dir` is not made for `host:dir/`).
        let must_be_dir = self.args.target_is_dir || VirtualPath::names_dir(&target.text);
        let target = match resolve_path(&target.text) {
            Ok(t) => t,
            Err(e) => return Err(self.fatal(&e.to_string()).await),
        };
        let found = self.session.metadata(&target).await;
        let is_dir = found.as_ref().is_ok_and(|m| m.is_dir());
        if must_be_dir && !is_dir {
            let reason = match found {
                Err(CoreError::NotFound) => "No such file or directory",
                _ => "Not a directory",
            };
            return Err(self.fatal(&format!("{target}: {reason}")).await);
        }
        self.ok().await?;
        self.receive(target, is_dir, 0).await
    }

    /// Receives items into `dir` (when `is_dir`) or as `dir` itself, until `E` or the end of the input.
    fn receive(&mut self, dir: VirtualPath, is_dir: bool, depth: usize) -> StepResult<'_> {
        Box::pin(async move {
            let mut times = None;
            while let Some(line) = self.read_line().await? {
                if let Some(message) = line.strip_prefix(['\x01', '\x02']) {
                    // The client could not read a file; it goes on with the next one (or stops, for \x02).
                    tracing::debug!(message, "scp client error");
                    self.failed = true;
                    if line.starts_with('\x02') {
                        return Err(Stop::ClientFatal(message.to_owned()));
                    }
                    continue;
                }
                let header = match parse_header(&line) {
                    Ok(header) => header,
                    Err(e) => return Err(self.fatal(&e).await),
                };
                let target = |name: &str| {
                    if is_dir {
                        dir.join(name)
                    } else {
                        Ok(dir.clone())
                    }
                };
                match header {
                    Header::Times { mtime, .. } => {
                        let Some(time) = UNIX_EPOCH.checked_add(Duration::from_secs(mtime)) else {
                            return Err(self.fatal("modification time out of range").await);
                        };
                        times = Some(time);
                        self.ok().await?;
                    }
                    Header::EndDir => {
                        self.ok().await?;
                        return Ok(());
                    }
                    Header::Dir { mode, name } => {
                        if !self.args.recursive {
                            return Err(self.fatal("received a directory without -r").await);
                        }
                        if depth >= MAX_DEPTH {
                            return Err(self.fatal("directories nested too deeply").await);
                        }
                        let path = match target(&name) {
                            Ok(path) => path,
                            Err(e) => return Err(self.fatal(&e.to_string()).await),
                        };
                        let created = match make_dir(self.session, &path).await {
                            Ok(created) => created,
                            Err(e) => {
                                self.warn(&format!("{path}: {}", error_text(&e))).await?;
                                times = None;
                                continue;
                            }
                        };
                        self.ok().await?;
                        self.receive(path.clone(), true, depth + 1).await?;
                        let created = created.then_some(FileKind::Dir);
                        self.finish_item(&path, mode, times.take(), created).await?;
                    }
                    Header::File { mode, size, name } => {
                        let path = match target(&name) {
                            Ok(path) => path,
                            Err(e) => return Err(self.fatal(&e.to_string()).await),
                        };
                        self.receive_file(&path, mode, size, times.take()).await?;
                    }
                }
            }
            Ok(())
        })
    }

    async fn receive_file(
        &mut self,
        path: &VirtualPath,
        mode: u32,
        size: u64,
        mtime: Option<SystemTime>,
    ) -> Result<(), Stop> {
        let existed = self.session.metadata(path).await.is_ok();
        let mut upload = match self.session.open_write(path, WriteMode::Truncate).await {
            Ok(upload) => upload,
            Err(e) => return self.warn(&format!("{path}: {}", error_text(&e))).await,
        };
        self.ok().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut remaining = size;
        let mut write_error = None;
        while remaining > 0 {
            let want = upload
                .buffer_size(buf.len())
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let n = match self
                .input
                .read(buf.get_mut(..want).unwrap_or_default())
                .await
            {
                Ok(0) => {
                    upload.fail("the client went away").await;
                    return Err(Stop::Protocol("connection closed during a file".into()));
                }
                Ok(n) => n,
                Err(e) => {
                    upload.fail(&e).await;
                    return Err(e.into());
                }
            };
            remaining -= n as u64;
            // After a failed write, the rest of the data is read and dropped to stay in step with the client.
            if write_error.is_none() {
                if let Err(e) = upload.write(buf.get(..n).unwrap_or_default()).await {
                    write_error = Some(e);
                }
            }
        }
        let client_ok = matches!(self.reply().await?, Reply::Ok);
        if let Some(e) = write_error {
            upload.fail(&e).await;
            return self.warn(&format!("{path}: {}", error_text(&e))).await;
        }
        if !client_ok {
            // The client could not read all of its file (it shrank, a read failed) and sent padding, then said so:
            // what arrived is kept, and the file is acknowledged as OpenSSH's sink does, for the client to go on.
            upload.fail("the client could not read the file").await;
            return self.ok().await;
        }
        if let Err(e) = upload.finish().await {
            return self.warn(&format!("{path}: {}", error_text(&e))).await;
        }
        let created = (!existed).then_some(FileKind::File);
        self.finish_item(path, mode, mtime, created).await
    }

    /// Applies mode and time after a file or directory arrived, then acknowledges it. The mode is applied with
    /// `-p`, and to what this upload `created` (as a local `scp` would create it with that mode; a directory keeps
    /// its owner's access, as OpenSSH's `mkdir(mode | S_IRWXU)`), where failing to set it is not an error; with
    /// `-p`, an account without the chmod permission keeps the server's mode and still gets the time.
    async fn finish_item(
        &mut self,
        path: &VirtualPath,
        mode: u32,
        mtime: Option<SystemTime>,
        created: Option<FileKind>,
    ) -> Result<(), Stop> {
        let mut result = Ok(());
        if self.args.preserve {
            result = match self.session.set_mode(path, mode & 0o777).await {
                Err(CoreError::PermissionDenied(_)) => Ok(()),
                other => other,
            };
            if let Some(mtime) = mtime {
                let timed = self.session.set_modified(path, mtime).await;
                result = result.and(timed);
            }
        } else if let Some(kind) = created {
            let mode = if kind == FileKind::Dir {
                mode | 0o700
            } else {
                mode
            };
            let _ = self.session.set_creation_mode(path, mode, kind).await;
        }
        match result {
            Ok(()) => self.ok().await,
            Err(e) => self.warn(&format!("{path}: {}", error_text(&e))).await,
        }
    }

    // ---- source: the client downloads ----

    async fn source(&mut self) -> Result<(), Stop> {
        if let Reply::Skip = self.reply().await? {
            return Ok(());
        }
        for arg in self.args.paths.clone() {
            let literal = || resolve_path(&arg.text).map(|p| vec![p]);
            let paths = match &arg.glob {
                None => literal(),
                // As sh without `failglob`: a pattern that matches nothing is the word as written.
                Some(pattern) => match expand(self.session, pattern).await {
                    Err(CoreError::NotFound) => literal(),
                    expanded => expanded,
                },
            };
            let paths = match paths {
                Ok(paths) => paths,
                Err(e) => {
                    self.warn(&format!("{}: {}", arg.text, error_text(&e)))
                        .await?;
                    continue;
                }
            };
            for path in paths {
                match self.session.metadata(&path).await {
                    Ok(meta) => self.send(&path, &meta, 0).await?,
                    Err(e) => {
                        // The path as given; for a pattern, the match, not the pattern that found it.
                        let shown = match arg.glob {
                            Some(_) => path.to_string(),
                            None => arg.text.clone(),
                        };
                        self.warn(&format!("{shown}: {}", error_text(&e))).await?
                    }
                }
            }
        }
        Ok(())
    }

    fn send<'a>(
        &'a mut self,
        path: &'a VirtualPath,
        meta: &'a Metadata,
        depth: usize,
    ) -> StepResult<'a> {
        Box::pin(async move {
            // The home itself (`host:~`, `host:/`) goes by the account's name, as `~` is named for OpenSSH's sshd
            // by the home's last component: clients refuse `.` as a name.
            let name = path
                .file_name()
                .unwrap_or(self.session.username())
                .to_owned();
            if meta.is_dir() {
                if !self.args.recursive {
                    return self.warn(&format!("{path}: not a regular file")).await;
                }
                if depth >= MAX_DEPTH {
                    return self
                        .warn(&format!("{path}: directories nested too deeply"))
                        .await;
                }
                return self.send_dir(path, &name, meta, depth).await;
            }
            if !meta.is_file() {
                return self.warn(&format!("{path}: not a regular file")).await;
            }
            self.send_file(path, &name, meta).await
        })
    }

    async fn send_times(&mut self, meta: &Metadata) -> Result<Reply, Stop> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let line = format!("T{} 0 {} 0\n", secs(meta.modified), secs(meta.accessed));
        self.output.write_all(line.as_bytes()).await?;
        self.output.flush().await?;
        self.reply().await
    }

    async fn send_file(
        &mut self,
        path: &VirtualPath,
        name: &str,
        meta: &Metadata,
    ) -> Result<(), Stop> {
        let download = match self.session.open_read(path, 0).await {
            Ok(download) => download,
            Err(e) => return self.warn(&format!("{path}: {}", error_text(&e))).await,
        };
        if self.args.preserve {
            if let Reply::Skip = self.send_times(meta).await? {
                return Ok(());
            }
        }
        let size = download.size();
        let line = header(format!("C{:04o} {size} ", meta.mode & 0o7777), name);
        self.output.write_all(&line).await?;
        self.output.flush().await?;
        if let Reply::Skip = self.reply().await? {
            download.fail("refused by the client");
            return Ok(());
        }
        let read_error = self.stream_file(download, size).await?;
        match read_error {
            None => self.ok().await?,
            Some(e) => self.warn(&format!("{path}: {}", error_text(&e))).await?,
        }
        self.reply().await.map(drop)
    }

    /// Sends exactly `size` bytes of the file; if it cannot be read that far, pads with zeros to keep the protocol
    /// in step and returns the error.
    async fn stream_file(
        &mut self,
        mut download: Download,
        size: u64,
    ) -> Result<Option<CoreError>, Stop> {
        let mut buf = vec![0u8; CHUNK];
        let mut remaining = size;
        let mut error = None;
        while remaining > 0 {
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let chunk = buf.get_mut(..want).unwrap_or_default();
            let n = if error.is_some() {
                chunk.fill(0);
                want
            } else {
                match download.read(chunk).await {
                    Ok(0) => {
                        error = Some(CoreError::InvalidArgument(
                            "file shrank while being sent".into(),
                        ));
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        error = Some(e);
                        continue;
                    }
                }
            };
            if let Err(e) = self
                .output
                .write_all(buf.get(..n).unwrap_or_default())
                .await
            {
                download.fail(&e);
                return Err(e.into());
            }
            remaining -= n as u64;
        }
        match &error {
            None => download.finish(),
            Some(e) => download.fail(e),
        }
        Ok(error)
    }

    async fn send_dir(
        &mut self,
        path: &VirtualPath,
        name: &str,
        meta: &Metadata,
        depth: usize,
    ) -> Result<(), Stop> {
        if self.sending.contains(&meta.unique_id) {
            return self
                .warn(&format!("{path}: a link to a directory above it, skipped"))
                .await;
        }
        let names = match self.read_names(path).await? {
            Some(names) => names,
            None => return Ok(()),
        };
        let held = names.len();
        self.held_names += held;
        self.sending.push(meta.unique_id);
        let result = self.send_dir_entries(path, name, meta, depth, names).await;
        self.sending.pop();
        self.held_names -= held;
        result
    }

    /// The names in directory `path`, counted against [`MAX_HELD_NAMES`]; `None` (after a warning) if it cannot be
    /// listed or holds too many.
    async fn read_names(&mut self, path: &VirtualPath) -> Result<Option<Vec<String>>, Stop> {
        // Names only, so that no directory handle stays open while the files below it are sent.
        let mut names = Vec::new();
        let mut entries = match self.session.list(path).await {
            Ok(entries) => entries,
            Err(e) => {
                self.warn(&format!("{path}: {}", error_text(&e))).await?;
                return Ok(None);
            }
        };
        while let Some(entry) = entries.next().await {
            match entry {
                Ok(entry) => names.push(entry.name),
                Err(e) => {
                    let e = CoreError::from(e);
                    self.warn(&format!("{path}: {}", error_text(&e))).await?;
                }
            }
            if self.held_names + names.len() > MAX_HELD_NAMES {
                self.warn(&format!(
                    "{path}: too many entries in the directories being sent"
                ))
                .await?;
                return Ok(None);
            }
        }
        Ok(Some(names))
    }

    /// Sends directory `path` (named `name`), whose entries are `names`.
    async fn send_dir_entries(
        &mut self,
        path: &VirtualPath,
        name: &str,
        meta: &Metadata,
        depth: usize,
        mut names: Vec<String>,
    ) -> Result<(), Stop> {
        if self.args.preserve {
            if let Reply::Skip = self.send_times(meta).await? {
                return Ok(());
            }
        }
        let line = header(format!("D{:04o} 0 ", meta.mode & 0o7777), name);
        self.output.write_all(&line).await?;
        self.output.flush().await?;
        if let Reply::Skip = self.reply().await? {
            return Ok(());
        }
        names.sort();
        for child in names {
            let child = match path.join(&child) {
                Ok(child) => child,
                Err(_) => continue,
            };
            match self.session.metadata(&child).await {
                Ok(meta) => self.send(&child, &meta, depth + 1).await?,
                Err(e) => self.warn(&format!("{child}: {}", error_text(&e))).await?,
            }
        }
        self.output.write_all(b"E\n").await?;
        self.output.flush().await?;
        self.reply().await.map(drop)
    }
}

/// The paths a glob pattern names, sorted, as a shell would expand it; wildcards are expanded in the last component
/// only. No match is `NotFound`.
async fn expand(session: &Session, pattern: &str) -> Result<Vec<VirtualPath>, CoreError> {
    let (dir, name) = match pattern.rfind('/') {
        Some(i) => (
            pattern.get(..i).unwrap_or_default(),
            pattern.get(i + 1..).unwrap_or_default(),
        ),
        None => ("", pattern),
    };
    let glob = Glob::new(name).ok_or_else(|| {
        CoreError::InvalidArgument(format!(
            "a pattern of more than {} characters",
            crate::shell_words::MAX_PATTERN
        ))
    })?;
    let dir = unescape_directory(dir)?;
    let dir = if dir.is_empty() && pattern.starts_with('/') {
        VirtualPath::root()
    } else {
        resolve_path(if dir.is_empty() { "." } else { &dir })?
    };
    let mut entries = session.list(&dir).await?;
    let mut matched = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        if glob.matches(&entry.name) {
            matched.push(dir.join(&entry.name)?);
        }
    }
    if matched.is_empty() {
        return Err(CoreError::NotFound);
    }
    matched.sort();
    Ok(matched)
}

/// The directory part of a pattern as a plain path; wildcards there are not expanded.
fn unescape_directory(dir: &str) -> Result<String, CoreError> {
    let mut out = String::with_capacity(dir.len());
    let mut chars = dir.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '*' | '?' | '[' => {
                return Err(CoreError::InvalidArgument(
                    "wildcards are expanded in the last path component only".into(),
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Makes the directory a `D` line names, unless it exists already.
/// Makes the directory `path` unless it exists; returns whether it made it.
async fn make_dir(session: &Session, path: &VirtualPath) -> Result<bool, CoreError> {
    match session.metadata(path).await {
        Ok(meta) if meta.is_dir() => Ok(false),
        Ok(_) => Err(CoreError::NotADirectory),
        Err(CoreError::NotFound) => session.mkdir(path).await.map(|()| true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(s: &str) -> Vec<Word> {
        crate::shell_words::split(s).unwrap()
    }

    fn texts(paths: &[Word]) -> Vec<&str> {
        paths.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn openssh_command_lines_parse() {
        let a = ScpArgs::parse(&words("-r -p -d -t -- /dir")).unwrap();
        assert_eq!(a.direction, Direction::Sink);
        assert!(a.recursive && a.preserve && a.target_is_dir);
        assert_eq!(texts(&a.paths), ["/dir"]);
        let a = ScpArgs::parse(&words("-f -- -odd a")).unwrap();
        assert_eq!(a.direction, Direction::Source);
        assert_eq!(texts(&a.paths), ["-odd", "a"]);
        let a = ScpArgs::parse(&words("-f logs/*.txt")).unwrap();
        assert_eq!(a.paths[0].glob.as_deref(), Some("logs/*.txt"));
        // A target is taken as written, wildcards included (photos[2024].txt).
        let a = ScpArgs::parse(&words("-t photos[2024].txt")).unwrap();
        assert_eq!(a.paths[0].text, "photos[2024].txt");
        assert!(ScpArgs::parse(&words("-t a b")).is_err());
        assert!(ScpArgs::parse(&words("-t -f a")).is_err());
        assert!(ScpArgs::parse(&words("a b")).is_err());
        assert!(ScpArgs::parse(&words("-S prog -t a")).is_err());
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("C0644 12 a b.txt"),
            Ok(Header::File {
                mode: 0o644,
                size: 12,
                name: "a b.txt".into()
            })
        );
        assert_eq!(
            parse_header("D0755 0 dir"),
            Ok(Header::Dir {
                mode: 0o755,
                name: "dir".into()
            })
        );
        assert_eq!(
            parse_header("T1700000000 0 1700000001 0"),
            Ok(Header::Times {
                mtime: 1_700_000_000,
                atime: 1_700_000_001
            })
        );
        assert_eq!(parse_header("E"), Ok(Header::EndDir));
    }

    #[test]
    fn hostile_headers_are_refused() {
        for line in [
            "C0644 1 ../x",
            "C0644 1 a/b",
            "C0644 1 ..",
            "C0644 1 .",
            "C0644 1 ",
            "C0644 -1 x",
            "C0644 +1 x",
            "C99999 1 x",
            "C-644 1 x",
            "C0644 18446744073709551616 x",
            "T1 2000000 3 0",
            "T1 0 3",
            "Ex",
            "X",
            "",
        ] {
            assert!(parse_header(line).is_err(), "{line:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn parsed_names_are_single_components(line in "[CDTE][0-9 a-z./]{0,24}") {
            if let Ok(Header::File { name, .. } | Header::Dir { name, .. }) = parse_header(&line) {
                prop_assert!(!name.contains('/') && name != ".." && name != "." && !name.is_empty());
            }
        }

        #[test]
        fn parse_header_never_panics(line in "\\PC{0,64}") {
            let _ = parse_header(&line);
        }
    }
}
