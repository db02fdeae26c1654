//! SSH exec requests, answered without a shell: `scp -t`/`scp -f` (see [`crate::scp`]), the checksum commands
//! `md5sum`, `sha1sum`, `sha256sum` and `sha512sum`, and `pwd`. Anything else is refused with a message on stderr.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use ferry_core::checksum::HashAlgorithm;
use ferry_core::error::{CoreError, CoreResult};
use ferry_core::session::Session;
use ferry_core::storage::names;
use ferry_core::vpath::VirtualPath;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::scp::ScpArgs;
use crate::shell_words::{self, SplitError};

/// Exit status of a command that failed.
pub const EXIT_FAILURE: u32 = 1;
/// Exit status of a command the server does not have, as a shell reports it.
pub const EXIT_NOT_FOUND: u32 = 127;

/// The checksum commands and their algorithms.
const CHECKSUM_COMMANDS: [(&str, HashAlgorithm); 4] = [
    ("md5sum", HashAlgorithm::Md5),
    ("sha1sum", HashAlgorithm::Sha1),
    ("sha256sum", HashAlgorithm::Sha256),
    ("sha512sum", HashAlgorithm::Sha512),
];

/// Size of the chunks read from stdin while hashing it.
const STDIN_CHUNK: usize = 64 * 1024;

/// A command this server runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Scp(ScpArgs),
    /// Hash each file (stdin when there is none), printing lines like coreutils' `sha256sum`.
    Checksum {
        program: &'static str,
        algorithm: HashAlgorithm,
        files: Vec<String>,
    },
    Pwd,
}

/// Why a command line is not run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("empty command")]
    Empty,
    #[error("{0}: command not supported (this server runs no shell; it offers sftp, scp, md5sum, sha1sum, sha256sum, sha512sum and pwd)")]
    Unsupported(String),
    #[error("{program}: {message}")]
    Usage {
        program: &'static str,
        message: String,
    },
}

/// Parses an exec request's command line.
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    // As names on disk: a path given in bytes that are not UTF-8 (Latin-1) names the file of those bytes.
    let line = names::from_disk(OsStr::from_bytes(line));
    let words = shell_words::split(&line)?;
    let Some((name, args)) = words.split_first() else {
        return Err(CommandError::Empty);
    };
    let name = name.text.as_str();
    if name == "scp" {
        return ScpArgs::parse(args)
            .map(Command::Scp)
            .map_err(|message| CommandError::Usage {
                program: "scp",
                message,
            });
    }
    if name == "pwd" {
        return Ok(Command::Pwd);
    }
    if let Some(&(program, algorithm)) = CHECKSUM_COMMANDS.iter().find(|(p, _)| *p == name) {
        if args.iter().any(|a| a.glob.is_some()) {
            return Err(CommandError::Usage {
                program,
                message: "wildcards are not expanded here; name the files".into(),
            });
        }
        let mut files = Vec::new();
        let mut options_done = false;
        for arg in args {
            match arg.text.as_str() {
                "--" if !options_done => options_done = true,
                // Binary and text mode are the same thing on this server.
                "-b" | "-t" | "--binary" | "--text" if !options_done => {}
                a if a.starts_with('-') && a != "-" && !options_done => {
                    return Err(CommandError::Usage {
                        program,
                        message: format!("option {a} not supported"),
                    })
                }
                a => files.push(a.to_owned()),
            }
        }
        return Ok(Command::Checksum {
            program,
            algorithm,
            files,
        });
    }
    let shown: String = name.chars().take(64).collect();
    Err(CommandError::Unsupported(shown))
}

/// Resolves a path argument as a shell in the home would: relative paths from the home, `~` as the home.
pub fn resolve_path(arg: &str) -> CoreResult<VirtualPath> {
    let root = VirtualPath::root();
    match arg.strip_prefix('~') {
        Some("") => Ok(root),
        Some(rest) if rest.starts_with('/') => VirtualPath::resolve(&root, rest),
        _ => VirtualPath::resolve(&root, arg),
    }
}

/// Runs a checksum command: one `HEX  NAME` line per file on stdout, errors on stderr. Returns the exit status.
pub async fn checksum<R, W, E>(
    session: &Session,
    program: &str,
    algorithm: HashAlgorithm,
    files: &[String],
    stdin: &mut R,
    stdout: &mut W,
    stderr: &mut E,
) -> std::io::Result<u32>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    if files.is_empty() {
        let hex = hash_stream(algorithm, stdin).await?;
        stdout.write_all(format!("{hex}  -\n").as_bytes()).await?;
        return Ok(0);
    }
    let mut status = 0;
    for name in files {
        let result = if name == "-" {
            hash_stream(algorithm, stdin).await.map_err(CoreError::Io)
        } else {
            match resolve_path(name) {
                Ok(path) => session
                    .checksum(&path, algorithm, 0, None)
                    .await
                    .map(|(hex, _, _)| hex),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(hex) => {
                stdout
                    .write_all(format!("{hex}  {name}\n").as_bytes())
                    .await?
            }
            Err(e) => {
                status = EXIT_FAILURE;
                let message = format!("{program}: {name}: {}\n", error_text(&e));
                stderr.write_all(message.as_bytes()).await?;
            }
        }
    }
    Ok(status)
}

/// The message a Unix tool prints for an error.
pub fn error_text(e: &CoreError) -> String {
    match e {
        CoreError::NotFound => "No such file or directory".to_owned(),
        CoreError::IsADirectory => "Is a directory".to_owned(),
        CoreError::NotADirectory => "Not a directory".to_owned(),
        CoreError::PermissionDenied(_) | CoreError::AccessDenied => "Permission denied".to_owned(),
        other => other.to_string(),
    }
}

async fn hash_stream<R: AsyncRead + Unpin>(
    algorithm: HashAlgorithm,
    input: &mut R,
) -> std::io::Result<String> {
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            return Ok(hasher.finish_hex());
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scp::Direction;
    use proptest::prelude::*;

    #[test]
    fn checksum_commands_take_files_and_ignore_mode_flags() {
        assert_eq!(
            parse(b"sha256sum -b -- 'a b' -x").unwrap(),
            Command::Checksum {
                program: "sha256sum",
                algorithm: HashAlgorithm::Sha256,
                files: vec!["a b".into(), "-x".into()],
            }
        );
        assert!(matches!(
            parse(b"md5sum").unwrap(),
            Command::Checksum { files, .. } if files.is_empty()
        ));
        assert!(matches!(
            parse(b"sha1sum --check sums"),
            Err(CommandError::Usage { .. })
        ));
    }

    #[test]
    fn scp_and_pwd_are_recognised_and_the_rest_refused() {
        assert_eq!(parse(b"pwd").unwrap(), Command::Pwd);
        assert!(matches!(
            parse(b"scp -r -p -t -- /dir").unwrap(),
            Command::Scp(ScpArgs {
                direction: Direction::Sink,
                recursive: true,
                preserve: true,
                ..
            })
        ));
        assert_eq!(
            parse(b"bash -c id"),
            Err(CommandError::Unsupported("bash".into()))
        );
        assert_eq!(parse(b"   "), Err(CommandError::Empty));
        assert!(matches!(parse(b"ls; id"), Err(CommandError::Split(_))));
    }

    #[test]
    fn tilde_is_the_home() {
        assert_eq!(resolve_path("~").unwrap(), VirtualPath::root());
        assert_eq!(resolve_path("~/a/../b").unwrap().as_str(), "/b");
        assert_eq!(resolve_path("x/y").unwrap().as_str(), "/x/y");
        assert_eq!(resolve_path("~x").unwrap().as_str(), "/~x");
        assert_eq!(resolve_path("../../etc").unwrap().as_str(), "/etc");
    }

    proptest! {
        #[test]
        fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&line);
        }
    }
}
