//! The transfer engine: copies files between two [`Pool`]s (local or remote), resuming what is already there,
//! verifying the result, retrying transient failures with backoff, running several files at once and splitting
//! large downloads into segments.
//!
//! A download goes to `NAME.part` and is renamed to `NAME` only once verified, so a file without `.part` is always
//! complete. An upload writes the remote file in place (servers resume with `APPE`/offsets on that file).
//!
//! Resume continues only what was written from the source's current version, so that a changed source never
//! ends up appended to the start of its old version. What is there must not be longer than the source and, where
//! both sides can hash a byte range (ferry's FTP server with `HASH`+`RANG`, local files), must hash like the
//! source's first bytes. Besides:
//! - a `.part` is continued only when its sidecar `NAME.part.source`, written when the part was started, names
//!   the source's current size and modification time;
//! - a remote file that cannot be hashed that way is continued only when it was modified no earlier than the
//!   local file, as a file uploaded from this version is.
//!
//! Otherwise the file starts over from offset 0.
//!
//! A final download that is already there counts as complete only when checksums match or, with no checksum,
//! when it has the source's size and modification time. A remote destination written in place that has the
//! source's full size and may be this version of it (as for resuming) is verified like any transfer and, when it
//! passes, reported as already complete (skipped), as a complete download is. Verification compares the sizes
//! and, where both sides compute one, a checksum of the whole file; a resumed transfer that fails verification is
//! redone from scratch once, then reported as a verification failure.

use std::future::Future;
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use crate::checksum::{common_algorithm, HashAlgorithm};
use crate::error::{ClientError, Result};
use crate::progress::Progress;
use crate::retry::RetryPolicy;
use crate::transport::{local, Entry, Pool, Transport};

/// Suffix of downloads that are not complete and verified yet.
pub const PART_SUFFIX: &str = ".part";
/// Suffix (after [`PART_SUFFIX`]) of the sidecar that names the source version a part was started from.
const SOURCE_SUFFIX: &str = ".source";
/// Suffix (after [`PART_SUFFIX`]) of the sidecar of a segmented download in progress.
const SEGMENTS_SUFFIX: &str = ".segments";
/// Smallest piece a segmented download is split into.
pub const MIN_SEGMENT: u64 = 1024 * 1024;

/// How files are transferred.
#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// Continue from what is already at the destination (the default).
    pub resume: bool,
    /// Compare checksums after the transfer where both sides offer one (sizes are always compared).
    pub verify: bool,
    /// How a file that failed with a transient error is tried again (on new connections, resuming).
    pub retry: RetryPolicy,
    /// Files transferred at once.
    pub parallel: usize,
    /// Connections one large download is split over.
    pub segments: usize,
    /// Bytes per second per file, if limited.
    pub limit_rate: Option<u64>,
    /// Give the copy the source's modification time.
    pub preserve_mtime: bool,
    /// Checksum algorithm to use instead of the best common one.
    pub algorithm: Option<HashAlgorithm>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            resume: true,
            verify: true,
            retry: RetryPolicy::default(),
            parallel: 1,
            segments: 1,
            limit_rate: None,
            preserve_mtime: true,
            algorithm: None,
        }
    }
}

/// One file to copy: paths in each side's form, and the name shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub source: String,
    pub destination: String,
    pub name: String,
    /// Write from offset 0 whatever is there: the destination holds another version of the file, written in
    /// place (a remote file a mirror replaces), so it must not be taken for the start of this one.
    pub fresh: bool,
}

/// How a transferred file was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    /// Same checksum on both sides.
    Checksum,
    /// Same size; no common checksum was available.
    Size,
}

/// What happened to one file; `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    pub path: String,
    pub source: String,
    pub destination: String,
    /// Size of the file.
    pub size: u64,
    /// Bytes moved by this run.
    pub bytes: u64,
    /// Offset the transfer continued from (0: from scratch).
    pub resumed_from: u64,
    pub seconds: f64,
    pub algorithm: Option<String>,
    pub checksum: Option<String>,
    pub verified: Verification,
    /// Already complete at the destination; nothing moved.
    pub skipped: bool,
    pub segments: usize,
}

/// What to do with what is already at the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeDecision {
    /// Nothing there: start from 0.
    Fresh,
    /// Continue from this offset.
    Resume(u64),
    /// The whole file is there already.
    Complete,
    /// What is there cannot be the start of the source: start over.
    Restart(&'static str),
}

/// Decides from the existing part's length, the source's size, whether the part was written from the source's
/// current version (`same_version`) and, when known, whether the part's bytes hash the same as the source's first
/// bytes.
pub fn decide_resume(
    existing: Option<u64>,
    source_size: u64,
    same_version: bool,
    prefix_matches: Option<bool>,
) -> ResumeDecision {
    match existing {
        None | Some(0) => ResumeDecision::Fresh,
        Some(n) if n > source_size => {
            ResumeDecision::Restart("destination is longer than the source")
        }
        Some(_) if prefix_matches == Some(false) => {
            ResumeDecision::Restart("destination differs from the source")
        }
        Some(_) if !same_version => {
            ResumeDecision::Restart("destination may be from another version of the source")
        }
        Some(n) if n == source_size => ResumeDecision::Complete,
        Some(n) => ResumeDecision::Resume(n),
    }
}

/// Whether the remote file `dst` may hold the start of the local file `src` as it is now: it was modified no
/// earlier than `src` (within what its listing can resolve), as a file uploaded from this version is, whether
/// the upload was interrupted (the server's clock at the last write) or finished (given `src`'s time). A file
/// whose time is unknown on either side cannot be told apart from an older version.
pub fn written_after(dst: &Entry, src: &Entry) -> bool {
    let precision = dst.mtime_precision.max(Duration::from_secs(1));
    match (dst.mtime, src.mtime) {
        (Some(d), Some(s)) => d + precision > s,
        _ => false,
    }
}

/// Bytes at the end of an uploaded part that are compared with the source's where no hash can compare the parts.
const TAIL_CHECK: u64 = 64 * 1024;

/// Whether the last bytes of the first `n` (up to [`TAIL_CHECK`]) are the same in `src_path` and `dst_path`. The
/// time rule of [`written_after`] trusts the server's clock; a server whose clock is ahead of ours dates a part
/// left by an older version of the file after the local change, and only its bytes can tell it apart. A read that
/// fails counts as a difference (the upload starts over).
async fn tail_matches(
    src: &mut Box<dyn Transport>,
    src_path: &str,
    dst: &mut Box<dyn Transport>,
    dst_path: &str,
    n: u64,
) -> bool {
    let len = n.min(TAIL_CHECK);
    let offset = n - len;
    let buffer = || Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let (mut theirs, mut ours) = (buffer(), buffer());
    let theirs_read = dst.read(dst_path, offset, Some(len), &mut theirs).await;
    let ours_read = src.read(src_path, offset, Some(len), &mut ours).await;
    matches!((theirs_read, ours_read), (Ok(a), Ok(b)) if a == len && b == len) && theirs == ours
}

/// The version of a source file a `.part` was started from, as its server lists it: size and modification time.
/// Recorded beside the part in `NAME.part.source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceVersion {
    size: u64,
    /// Since the Unix epoch; `None` when the server gives no time (or one before the epoch).
    mtime: Option<Duration>,
}

impl SourceVersion {
    /// The version of the source listed as `entry`.
    pub fn of(entry: &Entry) -> SourceVersion {
        SourceVersion {
            size: entry.size,
            mtime: entry.mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()),
        }
    }

    /// Whether a part started from `recorded` may be continued for this version: same size and the same, known,
    /// modification time. Without a time, two versions of the same size cannot be told apart.
    pub fn continues(&self, recorded: &SourceVersion) -> bool {
        self.mtime.is_some() && self == recorded
    }

    /// `SIZE SECONDS.NANOSECONDS` (`SIZE -` without a time), as the sidecar holds it.
    fn to_note(self) -> String {
        match self.mtime {
            Some(t) => format!("{} {}.{:09}", self.size, t.as_secs(), t.subsec_nanos()),
            None => format!("{} -", self.size),
        }
    }

    fn parse(note: &str) -> Option<SourceVersion> {
        let mut words = note.split_whitespace();
        let size = words.next()?.parse().ok()?;
        let mtime = match words.next()? {
            "-" => None,
            t => {
                let (secs, nanos) = t.split_once('.')?;
                let nanos: u32 = nanos.parse().ok().filter(|n| *n < 1_000_000_000)?;
                Some(Duration::new(secs.parse().ok()?, nanos))
            }
        };
        words
            .next()
            .is_none()
            .then_some(SourceVersion { size, mtime })
    }
}

/// The file whose transfer left `rel` behind (`X` for `X.part`, `X.part.segments`, `X.part.source` and their
/// `.new` temporaries), so that a mirror does not delete what it is about to resume.
pub fn leftover_of(rel: &str) -> Option<&str> {
    let rel = rel.strip_suffix(".new").unwrap_or(rel);
    let rel = rel
        .strip_suffix(SEGMENTS_SUFFIX)
        .or_else(|| rel.strip_suffix(SOURCE_SUFFIX))
        .unwrap_or(rel);
    rel.strip_suffix(PART_SUFFIX)
        .filter(|x| !x.is_empty() && !x.ends_with('/'))
}

/// Splits `[start, end)` into at most `segments` ranges of at least [`MIN_SEGMENT`] bytes (one range when small).
pub fn split_segments(start: u64, end: u64, segments: usize) -> Vec<(u64, u64)> {
    let len = end.saturating_sub(start);
    let by_size = (len / MIN_SEGMENT).max(1);
    let n = (segments.max(1) as u64).min(by_size);
    let step = len / n;
    (0..n)
        .map(|i| {
            let s = start + i * step;
            let e = if i + 1 == n { end } else { s + step };
            (s, e)
        })
        .collect()
}

/// Copies files from one pool to another.
pub struct Engine {
    source: Arc<Pool>,
    destination: Arc<Pool>,
    options: TransferOptions,
    progress: Arc<dyn Progress>,
}

impl Engine {
    pub fn new(
        source: Arc<Pool>,
        destination: Arc<Pool>,
        options: TransferOptions,
        progress: Arc<dyn Progress>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            source,
            destination,
            options,
            progress,
        })
    }

    /// The options in force.
    pub fn options(&self) -> &TransferOptions {
        &self.options
    }

    /// A new allowance for one file's streams, when `--limit-rate` asks for one.
    fn rate_limit(&self) -> Option<RateLimit> {
        self.options.limit_rate.map(RateLimit::new)
    }

    /// Copies every job, `parallel` at a time; results come back in the jobs' order.
    pub async fn run(self: &Arc<Self>, jobs: Vec<Job>) -> Vec<(Job, Result<TransferReport>)> {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.options.parallel.max(1)));
        let mut tasks = Vec::with_capacity(jobs.len());
        for (id, job) in jobs.into_iter().enumerate() {
            let engine = self.clone();
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let result = engine.copy(id, &job).await;
                (job, result)
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!("transfer task failed: {e}"),
            }
        }
        out
    }

    /// Copies one file, retrying transient failures.
    pub async fn copy(&self, id: usize, job: &Job) -> Result<TransferReport> {
        let mut failures = 0u32;
        let mut fresh = job.fresh;
        let result = loop {
            let attempt = self.attempt(id, job, fresh).await;
            match attempt {
                Ok(report) => break Ok(report),
                Err(Failure {
                    error,
                    resumed,
                    retry,
                    ..
                }) => {
                    if matches!(error, ClientError::Verify { .. }) && resumed && !fresh {
                        tracing::info!("{}: {error}; starting over", job.name);
                        fresh = true;
                        continue;
                    }
                    if retry && error.is_transient() && failures < self.options.retry.retries {
                        failures += 1;
                        let delay = self.options.retry.delay(failures);
                        self.progress.retry(id, &error, failures, delay);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    break Err(error);
                }
            }
        };
        self.progress.finish(id, &job.name, &result);
        result
    }

    async fn attempt(&self, id: usize, job: &Job, fresh: bool) -> Result<TransferReport, Failure> {
        // A pool retries its own connection attempts: a connection it could not make is not retried again here.
        let mut src = self.source.get().await.map_err(Failure::last)?;
        let mut dst = match self.destination.get().await {
            Ok(d) => d,
            Err(e) => {
                self.source.put(src);
                return Err(Failure::last(e));
            }
        };
        let result = self.transfer(id, job, fresh, &mut src, &mut dst).await;
        // A connection that failed mid-file is in an unknown state: only healthy ones go back.
        let healthy = match &result {
            Ok(_) => true,
            Err(f) => f.reusable,
        };
        if healthy {
            self.source.put(src);
            self.destination.put(dst);
        }
        result
    }

    async fn transfer(
        &self,
        id: usize,
        job: &Job,
        fresh: bool,
        src: &mut Box<dyn Transport>,
        dst: &mut Box<dyn Transport>,
    ) -> Result<TransferReport, Failure> {
        let started = Instant::now();
        let entry = src
            .stat(&job.source)
            .await
            .map_err(Failure::new)?
            .ok_or_else(|| {
                Failure::new(ClientError::NotFound {
                    path: job.source.clone(),
                })
            })?;
        if entry.is_dir() {
            return Err(Failure::new(ClientError::remote(
                &job.source,
                "is a directory (use -r)",
            )));
        }
        let size = entry.size;
        let local_dst = dst.is_local();
        let part = if local_dst {
            format!("{}{PART_SUFFIX}", job.destination)
        } else {
            job.destination.clone()
        };

        if local_dst {
            repair_segmented_part(&part).await;
        }
        let (decision, known_sum) = if self.options.resume && !fresh {
            match self
                .resume_point(job, &entry, src, dst, &part)
                .await
                .map_err(Failure::new)?
            {
                Start::At(decision, known_sum) => (decision, known_sum),
                Start::Complete(verified, sum) => {
                    self.progress.start(id, &job.name, size, size);
                    return Ok(skipped_report(job, size, started, verified, sum));
                }
            }
        } else {
            (ResumeDecision::Fresh, None)
        };
        if let ResumeDecision::Restart(why) = decision {
            tracing::info!("{}: {why}; starting over", job.name);
        }
        let offset = match decision {
            ResumeDecision::Resume(n) => n,
            ResumeDecision::Complete => size,
            ResumeDecision::Fresh | ResumeDecision::Restart(_) => 0,
        };
        let resumed = offset > 0;
        if local_dst && offset == 0 {
            start_part(&part, &entry).await.map_err(Failure::new)?;
        }
        self.progress.start(id, &job.name, size, offset);

        let mut segments_used = 1;
        let moved = if offset == size && size > 0 {
            segments_used = 0;
            0
        } else if local_dst
            && !self.source.is_local()
            && split_segments(offset, size, self.options.segments).len() > 1
        {
            let ranges = split_segments(offset, size, self.options.segments);
            segments_used = ranges.len();
            self.segmented(id, job, src, &part, offset, ranges)
                .await
                .map_err(|error| Failure::midway(error, resumed))?
        } else {
            self.stream(id, job, src, dst, &part, offset, size)
                .await
                .map_err(|error| Failure::midway(error, resumed))?
        };

        // Verify: size always, checksum where both sides have one.
        let written = dst
            .stat(&part)
            .await
            .map_err(|error| Failure::resumed(error, resumed))?
            .map(|e| e.size);
        if written != Some(size) {
            return Err(Failure::resumed(
                ClientError::Verify {
                    path: job.name.clone(),
                    reason: format!(
                        "destination has {} bytes, source has {size}{}",
                        written.map_or("no".to_owned(), |w| w.to_string()),
                        if local_dst { " (kept as .part)" } else { "" }
                    ),
                },
                resumed,
            ));
        }
        let mut verified = Verification::Size;
        let mut sum = known_sum;
        if sum.is_some() {
            verified = Verification::Checksum;
        } else if self.options.verify {
            match self
                .compare_prefix(src, &job.source, dst, &part, size, size)
                .await
                .map_err(|error| Failure::resumed(error, resumed))?
            {
                Some((true, s)) => {
                    verified = Verification::Checksum;
                    sum = s;
                }
                Some((false, _)) => {
                    return Err(Failure::resumed(
                        ClientError::Verify {
                            path: job.name.clone(),
                            reason: format!(
                                "checksums differ{}",
                                if local_dst { " (kept as .part)" } else { "" }
                            ),
                        },
                        resumed,
                    ));
                }
                None => {}
            }
        }
        if part != job.destination {
            dst.rename(&part, &job.destination)
                .await
                .map_err(|error| Failure::resumed(error, resumed))?;
            let _ = tokio::fs::remove_file(source_sidecar(&part)).await;
        }
        if self.options.preserve_mtime {
            if let Some(mtime) = entry.mtime {
                let _ = dst.set_mtime(&job.destination, mtime).await;
            }
        }
        if decision == ResumeDecision::Complete && !local_dst {
            // A remote file written in place that was whole already: nothing moved, as for a final download.
            return Ok(skipped_report(job, size, started, verified, sum));
        }
        let (algorithm, checksum) = split_sum(sum);
        Ok(TransferReport {
            path: job.name.clone(),
            source: job.source.clone(),
            destination: job.destination.clone(),
            size,
            bytes: moved,
            resumed_from: offset,
            seconds: started.elapsed().as_secs_f64(),
            algorithm,
            checksum,
            verified,
            skipped: false,
            segments: segments_used,
        })
    }

    /// Where to start, from what is at the destination: `part` (the `.part` of a download, else the file itself)
    /// and, for downloads, a final file that may be complete already.
    async fn resume_point(
        &self,
        job: &Job,
        entry: &Entry,
        src: &mut Box<dyn Transport>,
        dst: &mut Box<dyn Transport>,
        part: &str,
    ) -> Result<Start> {
        let size = entry.size;
        let local_dst = dst.is_local();
        let existing = dst.stat(part).await?.filter(|e| !e.is_dir());
        // A part is worth hashing only when it may be from this version of the source.
        let recorded = match &existing {
            Some(_) if local_dst => part_continues(part, entry).await,
            _ => true,
        };
        let prefix = match &existing {
            Some(e) if recorded && e.size > 0 && e.size <= size => {
                self.compare_prefix(src, &job.source, dst, part, e.size, size)
                    .await?
            }
            _ => None,
        };
        let same_version = match &existing {
            Some(_) if local_dst => recorded,
            // Uploads: a hash of the prefix says it all; without one, the times must, and the part's last bytes
            // must be the source's.
            Some(e) => {
                prefix.is_some()
                    || (written_after(e, entry)
                        && e.size <= size
                        && tail_matches(src, &job.source, dst, part, e.size).await)
            }
            None => true,
        };
        let n = existing.as_ref().map(|e| e.size);
        let decision = decide_resume(n, size, same_version, prefix.as_ref().map(|p| p.0));
        if local_dst && existing.is_none() {
            if let Some(done) = self.final_is_complete(job, entry, src, dst).await? {
                return Ok(done);
            }
        }
        let known_sum = match decision {
            ResumeDecision::Complete => prefix.and_then(|p| p.1),
            _ => None,
        };
        Ok(Start::At(decision, known_sum))
    }

    /// Whether the final file of a download (no `.part`) is the source already: same size and equal checksums,
    /// or, where no checksum is available, the source's modification time (which the download gave it).
    async fn final_is_complete(
        &self,
        job: &Job,
        entry: &Entry,
        src: &mut Box<dyn Transport>,
        dst: &mut Box<dyn Transport>,
    ) -> Result<Option<Start>> {
        let size = entry.size;
        let Some(fin) = dst
            .stat(&job.destination)
            .await?
            .filter(|f| !f.is_dir() && f.size == size)
        else {
            return Ok(None);
        };
        let check = self
            .compare_prefix(src, &job.source, dst, &job.destination, size, size)
            .await?;
        Ok(match check {
            Some((true, sum)) => Some(Start::Complete(Verification::Checksum, sum)),
            Some((false, _)) => None,
            None if same_mtime(fin.mtime, entry.mtime) => {
                Some(Start::Complete(Verification::Size, None))
            }
            None => None,
        })
    }

    /// Hashes the first `n` bytes (all of them when `n == size`) on both sides. `None` when the two sides have no
    /// common way to do it; else whether they match, with the checksum when the whole file was hashed.
    async fn compare_prefix(
        &self,
        src: &mut Box<dyn Transport>,
        src_path: &str,
        dst: &mut Box<dyn Transport>,
        dst_path: &str,
        n: u64,
        size: u64,
    ) -> Result<Option<(bool, Option<(HashAlgorithm, String)>)>> {
        let whole = n == size;
        let ranged =
            whole || (src.supports_ranged_checksum().await && dst.supports_ranged_checksum().await);
        if !ranged {
            return Ok(None);
        }
        let ours = src.checksum_algorithms().await;
        if ours.is_empty() {
            return Ok(None);
        }
        let theirs = dst.checksum_algorithms().await;
        let algorithm = match self.options.algorithm {
            Some(a) if ours.contains(&a) && theirs.contains(&a) => Some(a),
            Some(_) => None,
            None => common_algorithm(&ours, &theirs),
        };
        let Some(algorithm) = algorithm else {
            return Ok(None);
        };
        let range = (!whole).then_some(0..n);
        let Some(a) = src.checksum(src_path, algorithm, range.clone()).await? else {
            return Ok(None);
        };
        let Some(b) = dst.checksum(dst_path, algorithm, range).await? else {
            return Ok(None);
        };
        Ok(Some((a == b, whole.then_some((algorithm, a)))))
    }

    /// One stream from `offset` to the end of a file of `size` bytes. A server that sends more than that is cut off
    /// one byte after the end, which fails the file's verification, so that it cannot fill the local disk.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        id: usize,
        job: &Job,
        src: &mut Box<dyn Transport>,
        dst: &mut Box<dyn Transport>,
        part: &str,
        offset: u64,
        size: u64,
    ) -> Result<u64> {
        let counter = Arc::new(AtomicU64::new(0));
        if src.is_local() && !dst.is_local() {
            let mut file = tokio::fs::File::open(&job.source)
                .await
                .map_err(|e| ClientError::local(&job.source, e))?;
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| ClientError::local(&job.source, e))?;
            let mut source = Metered::new(file, id, self, counter.clone());
            return dst
                .write(part, offset, &mut source)
                .await
                .map_err(|e| relabel_local(e, &job.source));
        }
        let limit = size.saturating_sub(offset).saturating_add(1);
        let n = if dst.is_local() {
            let file = local::open_at(part, offset).await?;
            let mut sink = Metered::new(file, id, self, counter.clone());
            let read = src
                .read_at_most(&job.source, offset, limit, &mut sink)
                .await;
            let flushed = sink.inner.flush().await;
            let n = read.map_err(|e| relabel_local(e, part))?;
            flushed.map_err(|e| ClientError::local(part, e))?;
            sink.inner
                .sync_data()
                .await
                .map_err(|e| ClientError::local(part, e))?;
            n
        } else {
            let (reader, writer) = tokio::io::duplex(1024 * 1024);
            let mut writer = Metered::new(writer, id, self, counter.clone());
            let reading = async {
                let r = src
                    .read_at_most(&job.source, offset, limit, &mut writer)
                    .await;
                let _ = writer.inner.shutdown().await;
                drop(writer);
                r
            };
            let writing = async {
                let mut reader = reader;
                let w = dst.write(part, offset, &mut reader).await;
                // Once the writer is done (a refusal such as 553 comes at once), the reader must not wait for
                // room in the pipe until it stalls: dropping the pipe's end fails its next write.
                drop(reader);
                w
            };
            let (r, w) = tokio::join!(reading, writing);
            // The write's error is the cause; the read's is then only the broken pipe.
            w?;
            r?
        };
        if n >= limit {
            return Err(ClientError::Verify {
                path: job.name.clone(),
                reason: format!(
                    "the source sent more than the {size} bytes it listed{}",
                    if dst.is_local() {
                        " (kept as .part)"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(n)
    }

    /// Several ranged reads at once into the local `.part` file. If one fails, the file is cut back to the part
    /// written without gaps from `offset`, so the next run resumes from there.
    async fn segmented(
        &self,
        id: usize,
        job: &Job,
        src: &mut Box<dyn Transport>,
        part: &str,
        offset: u64,
        ranges: Vec<(u64, u64)>,
    ) -> Result<u64> {
        drop(local::open_at(part, offset).await?);
        let counters: Vec<Arc<AtomicU64>> =
            ranges.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let first = ranges[0];
        // `--limit-rate` is per file: every segment draws from the same allowance.
        let limiter = self.rate_limit();
        let mut others = tokio::task::JoinSet::new();
        for (i, &(start, end)) in ranges.iter().enumerate().skip(1) {
            let pool = self.source.clone();
            let path = job.source.clone();
            let part = part.to_owned();
            let counter = counters[i].clone();
            let limiter = limiter.clone();
            let progress = self.progress.clone();
            others.spawn(async move {
                let mut conn = pool.get().await?;
                let result = read_range(
                    &mut conn, &path, &part, start, end, id, progress, counter, limiter,
                )
                .await;
                if result.is_ok() {
                    pool.put(conn);
                }
                result
            });
        }
        let first_result = read_range(
            src,
            &job.source,
            part,
            first.0,
            first.1,
            id,
            self.progress.clone(),
            counters[0].clone(),
            limiter,
        );
        let collect_others = async {
            let mut first_error = None;
            while let Some(joined) = others.join_next().await {
                let r = joined.unwrap_or_else(|e| Err(ClientError::lost(part, e)));
                if let (Err(e), None) = (r, &first_error) {
                    first_error = Some(e);
                }
            }
            first_error
        };
        // While segments run, the part's length says nothing: a sidecar file keeps the length that is known to
        // be written without gaps, in case this process dies before it can cut the part back.
        let sidecar = segments_sidecar(part);
        write_sidecar(&sidecar, &offset.to_string()).await;
        // Stopped between writes, never in the middle of one, so no write lands after the cleanup below.
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let ticker = {
            let (sidecar, ranges, counters) = (sidecar.clone(), ranges.clone(), counters.clone());
            tokio::spawn(async move {
                // Record the previous tick's progress: by now those writes have reached the file.
                let mut previous = offset;
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        () = tokio::time::sleep(SIDECAR_INTERVAL) => {}
                    }
                    write_sidecar(&sidecar, &previous.to_string()).await;
                    previous = contiguous_prefix(offset, &ranges, &counters);
                }
            })
        };
        let (first_result, other_error) = tokio::join!(first_result, collect_others);
        let _ = stop.send(());
        let _ = ticker.await;
        let error = first_result.err().or(other_error);
        if let Some(error) = error {
            let contiguous = contiguous_prefix(offset, &ranges, &counters);
            if let Ok(f) = local::open_existing(part).await {
                let _ = f.set_len(contiguous).await;
            }
            let _ = tokio::fs::remove_file(&sidecar).await;
            return Err(relabel_local(error, part));
        }
        let _ = tokio::fs::remove_file(&sidecar).await;
        Ok(counters.iter().map(|c| c.load(Ordering::Relaxed)).sum())
    }
}

/// How often a segmented download records its progress in the sidecar file.
const SIDECAR_INTERVAL: Duration = Duration::from_millis(500);

/// The sidecar of a `.part` file that a segmented download is writing.
fn segments_sidecar(part: &str) -> String {
    format!("{part}{SEGMENTS_SUFFIX}")
}

/// The sidecar of a `.part` file that names the source version it was started from (see [`SourceVersion`]).
fn source_sidecar(part: &str) -> String {
    format!("{part}{SOURCE_SUFFIX}")
}

/// Writes `note` to the sidecar at `path` (written aside, then renamed over it; links are not followed). Best
/// effort: a sidecar that could not be written only makes a later run cut back more or start over.
async fn write_sidecar(path: &str, note: &str) {
    let tmp = format!("{path}.new");
    let Ok(mut file) = local::open_at(&tmp, 0).await else {
        return;
    };
    let written = file.write_all(note.as_bytes()).await;
    if written.is_ok() && file.flush().await.is_ok() {
        let _ = tokio::fs::rename(&tmp, path).await;
    }
}

/// A `.part` file left by a segmented download that did not end (the process died) may have gaps: cut it back
/// to the length its sidecar says was written without gaps (0 if the sidecar is unreadable).
async fn repair_segmented_part(part: &str) {
    let sidecar = segments_sidecar(part);
    let Some(text) = local::read_note(&sidecar).await else {
        return;
    };
    let safe = text.trim().parse::<u64>().unwrap_or(0);
    if let Ok(f) = local::open_existing(part).await {
        if f.metadata().await.is_ok_and(|m| m.len() > safe) {
            let _ = f.set_len(safe).await;
        }
    }
    let _ = tokio::fs::remove_file(&sidecar).await;
}

/// Whether the sidecar of `part` says it was started from the version of the source listed as `entry`.
async fn part_continues(part: &str, entry: &Entry) -> bool {
    local::read_note(&source_sidecar(part))
        .await
        .and_then(|note| SourceVersion::parse(&note))
        .is_some_and(|recorded| SourceVersion::of(entry).continues(&recorded))
}

/// Starts `part` from nothing for the source listed as `entry`. The part is emptied before its sidecar names the
/// new version, so that no moment pairs old bytes with the new version's name.
async fn start_part(part: &str, entry: &Entry) -> Result<()> {
    drop(local::open_at(part, 0).await?);
    write_sidecar(&source_sidecar(part), &SourceVersion::of(entry).to_note()).await;
    Ok(())
}

/// Whether two modification times are known and the same to the second (the precision of every listing that
/// gives seconds; a copy's time is set from its source's).
fn same_mtime(a: Option<SystemTime>, b: Option<SystemTime>) -> bool {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
    match (a.and_then(secs), b.and_then(secs)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Where a transfer starts, from what is at the destination.
enum Start {
    /// Continue as decided; with the whole file's checksum when a complete part was hashed.
    At(ResumeDecision, Option<(HashAlgorithm, String)>),
    /// The final file is the source already: nothing to move.
    Complete(Verification, Option<(HashAlgorithm, String)>),
}

/// The report of a file found complete at the destination.
fn skipped_report(
    job: &Job,
    size: u64,
    started: Instant,
    verified: Verification,
    sum: Option<(HashAlgorithm, String)>,
) -> TransferReport {
    let (algorithm, checksum) = split_sum(sum);
    TransferReport {
        path: job.name.clone(),
        source: job.source.clone(),
        destination: job.destination.clone(),
        size,
        bytes: 0,
        resumed_from: size,
        seconds: started.elapsed().as_secs_f64(),
        algorithm,
        checksum,
        verified,
        skipped: true,
        segments: 0,
    }
}

/// The length from `offset` that the segments wrote without a gap.
pub fn contiguous_prefix(offset: u64, ranges: &[(u64, u64)], done: &[Arc<AtomicU64>]) -> u64 {
    let mut contiguous = offset;
    for ((start, end), counter) in ranges.iter().zip(done) {
        let written = counter.load(Ordering::Relaxed);
        contiguous = start + written;
        if start + written < *end {
            break;
        }
    }
    contiguous
}

/// Reads `[start, end)` of a remote file into the same range of a local file.
#[allow(clippy::too_many_arguments)]
async fn read_range(
    conn: &mut Box<dyn Transport>,
    path: &str,
    part: &str,
    start: u64,
    end: u64,
    id: usize,
    progress: Arc<dyn Progress>,
    counter: Arc<AtomicU64>,
    limiter: Option<RateLimit>,
) -> Result<u64> {
    let mut file = local::open_existing(part).await?;
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| ClientError::local(part, e))?;
    let mut sink = Metered::with(file, id, progress, counter, limiter);
    let read = conn.read(path, start, Some(end - start), &mut sink).await;
    // tokio writes files from a blocking thread: a write still in flight when the file is dropped would land after
    // the caller cuts the file back. Flush first, whatever happened.
    let flushed = sink.inner.flush().await;
    let n = read.map_err(|e| relabel_local(e, part))?;
    flushed.map_err(|e| ClientError::local(part, e))?;
    if n != end - start {
        return Err(ClientError::lost(
            path,
            format!("segment {start}-{end} ended after {n} bytes"),
        ));
    }
    Ok(n)
}

/// A failed attempt, and whether it had resumed (so a verification failure is worth one fresh try).
struct Failure {
    error: ClientError,
    resumed: bool,
    /// Whether a transient error may be retried (not when retries were used up below).
    retry: bool,
    /// Whether the connections are in a known state and may serve another file.
    reusable: bool,
}

impl Failure {
    fn new(error: ClientError) -> Failure {
        Failure {
            reusable: !error.is_transient(),
            error,
            resumed: false,
            retry: true,
        }
    }

    fn resumed(error: ClientError, resumed: bool) -> Failure {
        Failure {
            resumed,
            ..Failure::new(error)
        }
    }

    /// A failure while data moved: whatever the error, one side may have stopped in the middle of a transfer
    /// (a read cut off when the write was refused), so neither connection is used again.
    fn midway(error: ClientError, resumed: bool) -> Failure {
        Failure {
            reusable: false,
            ..Failure::resumed(error, resumed)
        }
    }

    fn last(error: ClientError) -> Failure {
        Failure {
            retry: false,
            ..Failure::new(error)
        }
    }
}

fn split_sum(sum: Option<(HashAlgorithm, String)>) -> (Option<String>, Option<String>) {
    match sum {
        Some((a, s)) => (Some(a.name().to_owned()), Some(s)),
        None => (None, None),
    }
}

/// Local errors raised inside a transport name the remote path; they are about the local file.
fn relabel_local(e: ClientError, local_path: &str) -> ClientError {
    match e {
        ClientError::Local { source, .. } => ClientError::local(local_path, source),
        other => other,
    }
}

/// Paces the streams of one file to a number of bytes per second, all of them together: the segments of a
/// download share one.
#[derive(Clone)]
struct RateLimit(Arc<std::sync::Mutex<Allowance>>);

/// Bytes sent since a start, at a rate.
struct Allowance {
    rate: u64,
    started: tokio::time::Instant,
    bytes: u64,
}

impl RateLimit {
    fn new(rate: u64) -> RateLimit {
        RateLimit(Arc::new(std::sync::Mutex::new(Allowance {
            rate: rate.max(1),
            started: tokio::time::Instant::now(),
            bytes: 0,
        })))
    }

    /// Counts `n` bytes; returns when the next bytes may go.
    fn account(&self, n: u64) -> Option<tokio::time::Instant> {
        let mut a = self.0.lock().ok()?;
        a.bytes = a.bytes.saturating_add(n);
        let due = a.started + Duration::from_secs_f64(a.bytes as f64 / a.rate as f64);
        (due > tokio::time::Instant::now()).then_some(due)
    }
}

/// Counts bytes through a reader or writer for progress, and paces them with `--limit-rate`.
struct Metered<T> {
    inner: T,
    id: usize,
    progress: Arc<dyn Progress>,
    counter: Arc<AtomicU64>,
    limit: Option<RateLimit>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl<T> Metered<T> {
    /// A stream of a file that is not split, paced on its own.
    fn new(inner: T, id: usize, engine: &Engine, counter: Arc<AtomicU64>) -> Metered<T> {
        Metered::with(
            inner,
            id,
            engine.progress.clone(),
            counter,
            engine.rate_limit(),
        )
    }

    fn with(
        inner: T,
        id: usize,
        progress: Arc<dyn Progress>,
        counter: Arc<AtomicU64>,
        limit: Option<RateLimit>,
    ) -> Metered<T> {
        Metered {
            inner,
            id,
            progress,
            counter,
            limit,
            pause: None,
        }
    }

    fn poll_pause(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sleep) = self.pause.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            self.pause = None;
        }
        Poll::Ready(())
    }

    fn account(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        self.progress.advance(self.id, n as u64);
        if let Some(due) = self.limit.as_ref().and_then(|l| l.account(n as u64)) {
            self.pause = Some(Box::pin(tokio::time::sleep_until(due)));
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pause(cx));
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.account(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pause(cx));
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        this.account(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::transport::local::LocalTransport;
    use proptest::prelude::*;

    #[test]
    fn resume_decisions() {
        let d = |existing, size, same, prefix| decide_resume(existing, size, same, prefix);
        assert_eq!(d(None, 100, true, None), ResumeDecision::Fresh);
        assert_eq!(d(Some(0), 100, false, None), ResumeDecision::Fresh);
        assert_eq!(d(Some(40), 100, true, None), ResumeDecision::Resume(40));
        assert_eq!(
            d(Some(40), 100, true, Some(true)),
            ResumeDecision::Resume(40)
        );
        assert!(matches!(
            d(Some(40), 100, true, Some(false)),
            ResumeDecision::Restart(_)
        ));
        assert!(matches!(
            d(Some(101), 100, true, None),
            ResumeDecision::Restart(_)
        ));
        assert_eq!(d(Some(100), 100, true, None), ResumeDecision::Complete);
        assert!(matches!(
            d(Some(100), 100, true, Some(false)),
            ResumeDecision::Restart(_)
        ));
    }

    #[test]
    fn what_may_be_another_version_is_never_continued_or_complete() {
        for existing in [1, 10, 40, 100] {
            assert!(
                matches!(
                    decide_resume(Some(existing), 100, false, None),
                    ResumeDecision::Restart(_)
                ),
                "{existing}"
            );
        }
    }

    fn listed(mtime: Option<u64>, precision: u64) -> Entry {
        Entry {
            name: "f".to_owned(),
            kind: crate::transport::EntryKind::File,
            size: 10,
            mtime: mtime.map(|s| UNIX_EPOCH + Duration::from_millis(s)),
            mtime_precision: Duration::from_secs(precision),
            mode: None,
        }
    }

    #[test]
    fn a_remote_file_older_than_the_local_one_is_not_its_start() {
        let local = listed(Some(100_500), 1);
        // Interrupted upload: written after the local file changed.
        assert!(written_after(&listed(Some(200_000), 1), &local));
        // Finished upload: given the local time, to the second.
        assert!(written_after(&listed(Some(100_000), 1), &local));
        // An older version, uploaded before the local file changed.
        assert!(!written_after(&listed(Some(99_000), 1), &local));
        // LIST shows minutes.
        assert!(written_after(&listed(Some(60_000), 60), &local));
        assert!(!written_after(&listed(Some(0), 60), &local));
        assert!(!written_after(&listed(None, 1), &local));
        assert!(!written_after(&listed(Some(200_000), 1), &listed(None, 1)));
    }

    #[test]
    fn a_source_version_note_round_trips_and_needs_a_time_to_match() {
        let v = SourceVersion::of(&listed(Some(1_700_000_000_123), 1));
        assert_eq!(SourceVersion::parse(&v.to_note()), Some(v));
        assert!(v.continues(&v));
        let other_time = SourceVersion::of(&listed(Some(1_700_000_001_123), 1));
        assert!(!v.continues(&other_time));
        let mut bigger = listed(Some(1_700_000_000_123), 1);
        bigger.size = 11;
        assert!(!v.continues(&SourceVersion::of(&bigger)));
        let timeless = SourceVersion::of(&listed(None, 1));
        assert_eq!(SourceVersion::parse(&timeless.to_note()), Some(timeless));
        assert!(!timeless.continues(&timeless));
        for bad in ["", "10", "x 1.0", "10 1.0 extra", "10 1.1000000000", "10 1"] {
            assert_eq!(SourceVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn transfer_leftovers_name_their_file() {
        assert_eq!(leftover_of("a/b.bin.part"), Some("a/b.bin"));
        assert_eq!(leftover_of("b.bin.part.segments"), Some("b.bin"));
        assert_eq!(leftover_of("b.bin.part.source"), Some("b.bin"));
        assert_eq!(leftover_of("b.bin.part.source.new"), Some("b.bin"));
        assert_eq!(leftover_of("b.bin.part.segments.new"), Some("b.bin"));
        assert_eq!(leftover_of("b.bin"), None);
        assert_eq!(leftover_of(".part"), None);
        assert_eq!(leftover_of("d/.part"), None);
        assert_eq!(leftover_of("b.source"), None);
    }

    proptest! {
        #[test]
        fn segments_cover_the_range_exactly(start in 0u64..10_000_000, len in 0u64..50_000_000, n in 1usize..16) {
            let ranges = split_segments(start, start + len, n);
            prop_assert!(!ranges.is_empty());
            prop_assert!(ranges.len() <= n);
            prop_assert_eq!(ranges[0].0, start);
            prop_assert_eq!(ranges.last().unwrap().1, start + len);
            for w in ranges.windows(2) {
                prop_assert_eq!(w[0].1, w[1].0);
            }
            if ranges.len() > 1 {
                for r in &ranges {
                    prop_assert!(r.1 - r.0 >= MIN_SEGMENT);
                }
            }
        }

        #[test]
        fn resuming_never_goes_past_the_source(existing in proptest::option::of(0u64..1000), size in 0u64..1000, same in any::<bool>(), matches in proptest::option::of(any::<bool>())) {
            match decide_resume(existing, size, same, matches) {
                ResumeDecision::Resume(n) => {
                    prop_assert!(n > 0 && n < size);
                    prop_assert!(same);
                    prop_assert_ne!(matches, Some(false));
                }
                ResumeDecision::Complete => {
                    prop_assert_eq!(existing, Some(size));
                    prop_assert!(same);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_contiguous_prefix_stops_at_the_first_unfinished_segment() {
        let ranges = [(100, 200), (200, 300), (300, 400)];
        let done = |v: [u64; 3]| v.map(|d| Arc::new(AtomicU64::new(d))).to_vec();
        assert_eq!(contiguous_prefix(100, &ranges, &done([0, 100, 100])), 100);
        assert_eq!(contiguous_prefix(100, &ranges, &done([50, 100, 100])), 150);
        assert_eq!(contiguous_prefix(100, &ranges, &done([100, 20, 100])), 220);
        assert_eq!(contiguous_prefix(100, &ranges, &done([100, 100, 100])), 400);
    }

    #[tokio::test]
    async fn a_part_left_by_a_dead_segmented_download_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("f.part").to_string_lossy().into_owned();
        std::fs::write(&part, vec![7u8; 1000]).unwrap();
        write_sidecar(&segments_sidecar(&part), "300").await;
        repair_segmented_part(&part).await;
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 300);
        assert!(!std::path::Path::new(&segments_sidecar(&part)).exists());
        // No sidecar: the part is left alone.
        repair_segmented_part(&part).await;
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 300);
    }

    /// The local filesystem as if it were remote, and lying: with `checksums`, every checksum it reports is wrong;
    /// with `size`, it lists every file with that size, whatever it holds; with `hashless`, it computes no
    /// checksum (as vsftpd); with `refuse_writes`, every upload is refused at once (as with a 553 reply).
    #[derive(Clone, Copy, Default)]
    struct Liar {
        checksums: bool,
        size: Option<u64>,
        hashless: bool,
        refuse_writes: bool,
    }

    impl Liar {
        /// An engine that copies from this liar to the local filesystem.
        fn engine(self) -> Arc<Engine> {
            Engine::new(
                self.pool(),
                Pool::local(),
                TransferOptions::default(),
                Arc::new(NoProgress),
            )
        }

        /// Connections to this liar.
        fn pool(self) -> Arc<Pool> {
            Pool::custom(Arc::new(move || Box::new(self) as Box<dyn Transport>))
        }
    }

    const HASHLESS: Liar = Liar {
        checksums: false,
        size: None,
        hashless: true,
        refuse_writes: false,
    };

    #[async_trait::async_trait]
    impl Transport for Liar {
        fn describe(&self) -> String {
            "liar".to_owned()
        }
        async fn list(&mut self, dir: &str) -> Result<Vec<crate::transport::Entry>> {
            LocalTransport.list(dir).await
        }
        async fn stat(&mut self, path: &str) -> Result<Option<crate::transport::Entry>> {
            let size = self.size;
            Ok(LocalTransport.stat(path).await?.map(|mut e| {
                e.size = size.unwrap_or(e.size);
                e
            }))
        }
        async fn read(
            &mut self,
            path: &str,
            offset: u64,
            len: Option<u64>,
            sink: crate::transport::Sink<'_>,
        ) -> Result<u64> {
            LocalTransport.read(path, offset, len, sink).await
        }
        async fn write(
            &mut self,
            path: &str,
            offset: u64,
            source: crate::transport::Source<'_>,
        ) -> Result<u64> {
            if self.refuse_writes {
                return Err(ClientError::remote(path, "553 Could not create file."));
            }
            LocalTransport.write(path, offset, source).await
        }
        async fn remove_file(&mut self, path: &str) -> Result<()> {
            LocalTransport.remove_file(path).await
        }
        async fn remove_dir(&mut self, path: &str) -> Result<()> {
            LocalTransport.remove_dir(path).await
        }
        async fn mkdir(&mut self, path: &str) -> Result<()> {
            LocalTransport.mkdir(path).await
        }
        async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
            LocalTransport.rename(from, to).await
        }
        async fn set_mtime(&mut self, path: &str, mtime: std::time::SystemTime) -> Result<bool> {
            LocalTransport.set_mtime(path, mtime).await
        }
        async fn checksum_algorithms(&mut self) -> Vec<HashAlgorithm> {
            if self.hashless {
                Vec::new()
            } else if self.checksums {
                vec![HashAlgorithm::Sha256]
            } else {
                LocalTransport.checksum_algorithms().await
            }
        }
        async fn supports_ranged_checksum(&mut self) -> bool {
            !self.checksums && !self.hashless && LocalTransport.supports_ranged_checksum().await
        }
        async fn checksum(
            &mut self,
            path: &str,
            algorithm: HashAlgorithm,
            range: Option<std::ops::Range<u64>>,
        ) -> Result<Option<String>> {
            if self.checksums {
                Ok(Some("0".repeat(64)))
            } else {
                LocalTransport.checksum(path, algorithm, range).await
            }
        }
        async fn close(&mut self) {}
    }

    #[tokio::test]
    async fn a_checksum_mismatch_is_a_verification_failure_and_keeps_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::write(&src, vec![5u8; 50_000]).unwrap();
        // A part to resume from: the mismatch after a resumed transfer is retried once from scratch.
        std::fs::write(dir.path().join("dst.part"), vec![5u8; 10_000]).unwrap();
        note_part(&dir.path().join("dst.part"), &src).await;
        let engine = Liar {
            checksums: true,
            ..Liar::default()
        }
        .engine();
        let err = engine.copy(0, &job(&src, &dst)).await.unwrap_err();
        assert!(matches!(err, ClientError::Verify { .. }), "{err}");
        assert_eq!(err.exit_code(), crate::error::EXIT_VERIFY);
        assert!(!dst.exists());
        assert_eq!(
            std::fs::metadata(dir.path().join("dst.part"))
                .unwrap()
                .len(),
            50_000
        );
    }

    #[tokio::test]
    async fn a_source_that_sends_more_than_it_listed_is_cut_off_one_byte_after() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::write(&src, vec![3u8; 1_000_000]).unwrap();
        let engine = Liar {
            size: Some(10),
            ..Liar::default()
        }
        .engine();
        let err = engine.copy(0, &job(&src, &dst)).await.unwrap_err();
        assert!(matches!(err, ClientError::Verify { .. }), "{err}");
        assert!(!dst.exists());
        assert_eq!(
            std::fs::metadata(dir.path().join("dst.part"))
                .unwrap()
                .len(),
            11
        );
    }

    #[tokio::test]
    async fn a_part_file_that_is_a_link_is_refused_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        let victim = dir.path().join("victim");
        std::fs::write(&src, b"new content").unwrap();
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("dst.part")).unwrap();
        let err = engine(TransferOptions::default())
            .copy(0, &job(&src, &dst))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Local { .. }), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!dst.exists());
    }

    fn engine(options: TransferOptions) -> Arc<Engine> {
        Engine::new(Pool::local(), Pool::local(), options, Arc::new(NoProgress))
    }

    fn job(src: &std::path::Path, dst: &std::path::Path) -> Job {
        Job {
            source: src.to_string_lossy().into_owned(),
            destination: dst.to_string_lossy().into_owned(),
            name: "f".to_owned(),
            fresh: false,
        }
    }

    /// Records beside `part` that it was started from `src` as it is now.
    async fn note_part(part: &std::path::Path, src: &std::path::Path) {
        let entry = LocalTransport
            .stat(&src.to_string_lossy())
            .await
            .unwrap()
            .unwrap();
        let part = part.to_string_lossy();
        write_sidecar(&source_sidecar(&part), &SourceVersion::of(&entry).to_note()).await;
    }

    /// Gives the file at `path` a modification time `secs` seconds from now.
    fn touch(path: &std::path::Path, secs: i64) {
        let now = SystemTime::now();
        let t = if secs >= 0 {
            now + Duration::from_secs(secs.unsigned_abs())
        } else {
            now - Duration::from_secs(secs.unsigned_abs())
        };
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[tokio::test]
    async fn local_copy_resumes_a_matching_part_and_removes_the_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::write(&src, &data).unwrap();
        std::fs::write(dir.path().join("dst.part"), &data[..100_000]).unwrap();
        note_part(&dir.path().join("dst.part"), &src).await;
        let report = engine(TransferOptions::default())
            .copy(0, &job(&src, &dst))
            .await
            .unwrap();
        assert_eq!(report.resumed_from, 100_000);
        assert_eq!(report.bytes, 200_000);
        assert_eq!(report.verified, Verification::Checksum);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(!dir.path().join("dst.part").exists());
    }

    #[tokio::test]
    async fn a_part_that_differs_from_the_source_is_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::write(&src, b"hello world, this is the source").unwrap();
        std::fs::write(dir.path().join("dst.part"), b"garbage").unwrap();
        let report = engine(TransferOptions::default())
            .copy(0, &job(&src, &dst))
            .await
            .unwrap();
        assert_eq!(report.resumed_from, 0);
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            b"hello world, this is the source"
        );
    }

    #[tokio::test]
    async fn a_complete_destination_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::write(&src, b"same").unwrap();
        std::fs::write(&dst, b"same").unwrap();
        let report = engine(TransferOptions::default())
            .copy(0, &job(&src, &dst))
            .await
            .unwrap();
        assert!(report.skipped);
        assert_eq!(report.bytes, 0);
    }

    #[tokio::test]
    async fn a_missing_source_is_not_found_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("dst");
        let err = engine(TransferOptions::default())
            .copy(0, &job(&dir.path().join("nope"), &dst))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
        assert!(!dst.exists());
        assert!(!dir.path().join("dst.part").exists());
    }

    fn engine_between(source: Arc<Pool>, destination: Arc<Pool>) -> Arc<Engine> {
        Engine::new(
            source,
            destination,
            TransferOptions::default(),
            Arc::new(NoProgress),
        )
    }

    const NEW_VERSION: &[u8] = b"version-B: the local file as it is now, longer than the old one by far, so that \
        appending to the old one would make a file of the right size out of the wrong bytes. The end.\n";

    #[tokio::test]
    async fn a_part_without_a_note_of_its_source_is_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::write(&src, NEW_VERSION).unwrap();
        std::fs::write(dir.path().join("dst.part"), b"old version!!\n").unwrap();
        let report = HASHLESS.engine().copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.resumed_from, 0);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
        assert!(!dir.path().join("dst.part.source").exists());
    }

    #[tokio::test]
    async fn a_part_noted_for_another_version_is_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let part = dir.path().join("dst.part");
        std::fs::write(&src, NEW_VERSION).unwrap();
        touch(&src, -100);
        std::fs::write(&part, b"old version!!\n").unwrap();
        note_part(&part, &src).await;
        // The source changed (same size, new time) since the part was started.
        touch(&src, -50);
        let report = HASHLESS.engine().copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.resumed_from, 0);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
    }

    #[tokio::test]
    async fn a_part_noted_for_this_version_is_resumed_without_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let part = dir.path().join("dst.part");
        std::fs::write(&src, NEW_VERSION).unwrap();
        std::fs::write(&part, &NEW_VERSION[..40]).unwrap();
        note_part(&part, &src).await;
        let report = HASHLESS.engine().copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.resumed_from, 40);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
        assert!(!dir.path().join("dst.part.source").exists());
    }

    #[tokio::test]
    async fn a_download_notes_its_source_so_that_it_can_be_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::write(&src, NEW_VERSION).unwrap();
        // A verification failure keeps the part, and its note.
        let engine = Liar {
            checksums: true,
            ..Liar::default()
        }
        .engine();
        engine.copy(0, &job(&src, &dst)).await.unwrap_err();
        let part = dir.path().join("dst.part");
        assert!(
            part_continues(
                &part.to_string_lossy(),
                &LocalTransport
                    .stat(&src.to_string_lossy())
                    .await
                    .unwrap()
                    .unwrap()
            )
            .await
        );
    }

    #[tokio::test]
    async fn a_final_file_without_checksums_is_complete_only_with_the_source_time() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::write(&src, b"version-B\n").unwrap();
        touch(&src, -50);
        std::fs::write(&dst, b"version-A\n").unwrap();
        touch(&dst, -100);
        let report = HASHLESS.engine().copy(0, &job(&src, &dst)).await.unwrap();
        assert!(!report.skipped);
        assert_eq!(std::fs::read(&dst).unwrap(), b"version-B\n");
        // Downloaded with the source's time: now it is complete.
        let again = HASHLESS.engine().copy(0, &job(&src, &dst)).await.unwrap();
        assert!(again.skipped);
        assert_eq!(again.bytes, 0);
    }

    #[tokio::test]
    async fn an_upload_over_an_older_remote_version_of_the_same_size_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("v.txt"), dir.path().join("remote-v.txt"));
        std::fs::write(&dst, b"version-A\n").unwrap();
        touch(&dst, -100);
        std::fs::write(&src, b"version-B\n").unwrap();
        touch(&src, -50);
        let engine = engine_between(Pool::local(), HASHLESS.pool());
        let report = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.resumed_from, 0);
        assert_eq!(report.bytes, 10);
        assert_eq!(std::fs::read(&dst).unwrap(), b"version-B\n");
    }

    #[tokio::test]
    async fn an_upload_over_an_older_shorter_remote_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("v.txt"), dir.path().join("remote-v.txt"));
        std::fs::write(&dst, b"old version!!\n").unwrap();
        touch(&dst, -100);
        std::fs::write(&src, NEW_VERSION).unwrap();
        touch(&src, -50);
        let engine = engine_between(Pool::local(), HASHLESS.pool());
        let report = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.resumed_from, 0);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
    }

    #[tokio::test]
    async fn an_interrupted_upload_written_after_the_local_file_changed_is_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("v.txt"), dir.path().join("remote-v.txt"));
        std::fs::write(&src, NEW_VERSION).unwrap();
        touch(&src, -50);
        std::fs::write(&dst, &NEW_VERSION[..40]).unwrap();
        let engine = engine_between(Pool::local(), HASHLESS.pool());
        let report = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.resumed_from, 40);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
        // Finished, and given the local time: complete.
        let again = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(
            (again.resumed_from, again.bytes),
            (NEW_VERSION.len() as u64, 0)
        );
    }

    #[tokio::test]
    async fn an_upload_found_complete_is_reported_as_skipped_like_a_download() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("v.txt"), dir.path().join("remote-v.txt"));
        std::fs::write(&src, NEW_VERSION).unwrap();
        let engine = engine_between(Pool::local(), HASHLESS.pool());
        let first = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert!(!first.skipped);
        let again = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert!(again.skipped, "{again:?}");
        assert_eq!((again.bytes, again.segments), (0, 0));
        assert_eq!(again.resumed_from, NEW_VERSION.len() as u64);
        assert_eq!(again.verified, Verification::Size);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
    }

    #[tokio::test]
    async fn an_upload_found_complete_is_still_verified_by_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("v.txt"), dir.path().join("remote-v.txt"));
        std::fs::write(&src, NEW_VERSION).unwrap();
        std::fs::write(&dst, NEW_VERSION).unwrap();
        let engine = engine_between(Pool::local(), Liar::default().pool());
        let report = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert!(report.skipped, "{report:?}");
        assert_eq!(report.verified, Verification::Checksum);
        assert!(report.checksum.is_some());
    }

    #[tokio::test]
    async fn a_remote_file_dated_after_the_change_but_holding_other_bytes_starts_over() {
        // A server clock ahead of ours dates a part of an older version after the local change.
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("v.txt"), dir.path().join("remote-v.txt"));
        std::fs::write(&src, NEW_VERSION).unwrap();
        touch(&src, -50);
        std::fs::write(&dst, b"old version!!\n").unwrap();
        let engine = engine_between(Pool::local(), HASHLESS.pool());
        let report = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.resumed_from, 0);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
    }

    #[tokio::test]
    async fn a_fresh_job_never_continues_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("v.txt"), dir.path().join("remote-v.txt"));
        std::fs::write(&src, NEW_VERSION).unwrap();
        touch(&src, -50);
        // Looks like an interrupted upload (newer than the local file), but is another version.
        std::fs::write(&dst, b"old version!!\n").unwrap();
        let engine = engine_between(Pool::local(), HASHLESS.pool());
        let fresh = Job {
            fresh: true,
            ..job(&src, &dst)
        };
        let report = engine.copy(0, &fresh).await.unwrap();
        assert_eq!(report.resumed_from, 0);
        assert_eq!(std::fs::read(&dst).unwrap(), NEW_VERSION);
    }

    #[tokio::test]
    async fn a_refused_write_between_servers_reports_the_refusal_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("big"), dir.path().join("copy"));
        // More than the pipe between the two sides holds.
        std::fs::write(&src, vec![1u8; 3 * 1024 * 1024]).unwrap();
        let refusing = Liar {
            refuse_writes: true,
            ..HASHLESS
        };
        let engine = engine_between(HASHLESS.pool(), refusing.pool());
        let copied =
            tokio::time::timeout(Duration::from_secs(30), engine.copy(0, &job(&src, &dst)))
                .await
                .expect("the reader kept waiting for room in the pipe");
        let err = copied.unwrap_err();
        assert!(err.to_string().contains("553"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_segments_of_a_file_share_its_rate_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("big"), dir.path().join("copy"));
        std::fs::write(&src, vec![2u8; 4 * MIN_SEGMENT as usize]).unwrap();
        let options = TransferOptions {
            segments: 4,
            limit_rate: Some(MIN_SEGMENT),
            ..TransferOptions::default()
        };
        let engine = Engine::new(
            HASHLESS.pool(),
            Pool::local(),
            options,
            Arc::new(NoProgress),
        );
        // The clock is the runtime's paused one: it moves only as far as the pacing sleeps make it.
        let started = tokio::time::Instant::now();
        let report = engine.copy(0, &job(&src, &dst)).await.unwrap();
        assert_eq!(report.segments, 4);
        // 4 MiB at 1 MiB/s takes (nearly) 4 s however it is split; four allowances would take 1 s.
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
