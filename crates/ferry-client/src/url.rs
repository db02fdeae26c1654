//! The one URL syntax for every protocol: `scheme://[user[:password]@]host[:port][/path]`.
//!
//! Schemes: `ftp`, `ftps` (explicit TLS via `AUTH TLS`), `ftps+implicit` (TLS from the first byte) and `sftp`.
//! User, password and path are percent-decoded; IPv6 hosts are written in brackets (`sftp://[::1]:2222/x`).
//! Paths follow curl's convention: for FTP the path is relative to the login directory (`ftp://h/a` is `a`,
//! `ftp://h//tmp/a` is `/tmp/a`); for SFTP it is absolute (`sftp://h/tmp/a`), and `/~/` starts it at the home
//! directory (`sftp://h/~/a` is `a`).

use std::fmt;
use std::path::PathBuf;

use crate::error::ClientError;

/// A protocol the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Ftp,
    /// FTP with `AUTH TLS` on the plain port.
    Ftps,
    /// FTP over TLS from the first byte.
    FtpsImplicit,
    Sftp,
}

impl Scheme {
    /// All schemes, as written in URLs.
    pub const NAMES: [&'static str; 4] = ["ftp", "ftps", "ftps+implicit", "sftp"];

    /// Parses a scheme name (case-insensitive).
    pub fn parse(name: &str) -> Option<Scheme> {
        match name.to_ascii_lowercase().as_str() {
            "ftp" => Some(Scheme::Ftp),
            "ftps" | "ftpes" => Some(Scheme::Ftps),
            "ftps+implicit" => Some(Scheme::FtpsImplicit),
            "sftp" => Some(Scheme::Sftp),
            _ => None,
        }
    }

    /// The scheme's name in URLs.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Ftp => "ftp",
            Scheme::Ftps => "ftps",
            Scheme::FtpsImplicit => "ftps+implicit",
            Scheme::Sftp => "sftp",
        }
    }

    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Ftp | Scheme::Ftps => 21,
            Scheme::FtpsImplicit => 990,
            Scheme::Sftp => 22,
        }
    }

    /// Whether this is one of the FTP schemes.
    pub fn is_ftp(self) -> bool {
        !matches!(self, Scheme::Sftp)
    }
}

/// A parsed remote URL. `path` is decoded and in the form the server is given (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl RemoteUrl {
    /// Parses `scheme://[user[:password]@]host[:port][/path]`.
    pub fn parse(input: &str) -> Result<RemoteUrl, ClientError> {
        let shown = redact(input);
        let usage = |why: &str| ClientError::Usage(format!("{shown}: {why}"));
        let (scheme_name, rest) = input
            .split_once("://")
            .ok_or_else(|| usage("not a URL (expected scheme://host/path)"))?;
        let scheme = Scheme::parse(scheme_name).ok_or_else(|| {
            ClientError::Usage(format!(
                "{shown}: unknown scheme \"{scheme_name}\" (ferry speaks {})",
                Scheme::NAMES.join(", ")
            ))
        })?;
        if password_may_hold_slash(rest) {
            return Err(usage(
                "a `/` in a password must be written %2F, and an `@` in the path after a user or port %40",
            ));
        }
        let (authority, raw_path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = percent_decode(u).ok_or_else(|| usage("bad percent-encoding"))?;
                let password = p
                    .map(|p| percent_decode(p).ok_or_else(|| usage("bad percent-encoding")))
                    .transpose()?;
                ((!user.is_empty()).then_some(user), password)
            }
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| usage("bad host or port"))?;
        if host.is_empty() {
            return Err(usage("no host"));
        }
        let decoded = percent_decode(raw_path).ok_or_else(|| usage("bad percent-encoding"))?;
        if decoded.contains('\0') {
            return Err(usage("NUL in path"));
        }
        let path = server_path(scheme, &decoded);
        Ok(RemoteUrl {
            scheme,
            user,
            password,
            host,
            port,
            path,
        })
    }

    /// The port to connect to.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// `scheme://[user@]host:port`, for messages (never shows the password).
    pub fn server(&self) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{}@", percent_encode(u)))
            .unwrap_or_default();
        format!(
            "{}://{user}{}:{}",
            self.scheme.name(),
            bracket_host(&self.host),
            self.port_or_default()
        )
    }

    /// The same server with another path.
    pub fn with_path(&self, path: impl Into<String>) -> RemoteUrl {
        RemoteUrl {
            path: path.into(),
            ..self.clone()
        }
    }

    /// Whether the URL's path ends with `/` (names a directory) or is empty.
    pub fn names_directory(&self) -> bool {
        self.path.is_empty() || self.path.ends_with('/')
    }
}

impl fmt::Display for RemoteUrl {
    /// The URL without its password, with the path as the user wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match (self.scheme, self.path.as_str()) {
            (Scheme::Sftp, p) if p.starts_with('/') => p.to_owned(),
            (Scheme::Sftp, p) => format!("/~/{p}"),
            (_, p) => format!("/{p}"),
        };
        write!(f, "{}{}", self.server(), percent_encode_path(&path))
    }
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteUrl({self})")
    }
}

/// One side of a transfer: a local path or a remote URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote(RemoteUrl),
}

impl Location {
    /// A string with `://` is a URL (and must have a known scheme); anything else is a local path.
    pub fn parse(input: &str) -> Result<Location, ClientError> {
        if input.contains("://") {
            RemoteUrl::parse(input).map(Location::Remote)
        } else if input.is_empty() {
            Err(ClientError::Usage("empty path".to_owned()))
        } else {
            Ok(Location::Local(PathBuf::from(input)))
        }
    }
}

impl fmt::Display for Location {
    /// The local path, or the URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote(u) => write!(f, "{u}"),
        }
    }
}

/// Joins a directory path and a name in a remote path ("" is the login directory).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "." {
        name.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `name`, as a listing gave it, is one plain path component that can be used as a local name: not
/// empty, not `.` or `..`, and without a path separator of this system (`/`, and `\\` on Windows) or NUL. Every
/// name from a listing passes this check before it becomes part of a path: a hostile server could otherwise list
/// `../../.bashrc` or `/etc/cron.d/x`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '\0' || std::path::is_separator(c))
}

/// The last component of a remote path ("" for the root or the login directory).
pub fn file_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// The directory part of a remote path ("" for a name in the login directory, "/" for one in the root).
pub fn parent(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => "/",
        Some(i) => &trimmed[..i],
        None => "",
    }
}

/// `input` with the password of its user information, if any, replaced by `***`: for messages, which must never
/// show a password.
///
/// The user information ends at the last `@` of the authority. A password that holds a `/` (which should have
/// been written `%2F`) makes the authority look as if it ended early (`ftp://bob:se/cret@host/`,
/// `ftp://bob:p@ss/w:rd@host/`): when what comes before the first `/` has a `:`, the user information runs to the
/// last `@` of the whole input, so that no part of such a password is shown (a URL with a port and a path holding
/// `@` is then shown with less than it holds, never more). [`RemoteUrl::parse`] refuses such URLs.
pub fn redact(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_owned();
    };
    let head = authority_as_written(rest);
    let userinfo_end = if may_start_a_password(head) {
        rest.rfind('@')
    } else {
        head.rfind('@')
    };
    let Some(end) = userinfo_end else {
        return input.to_owned();
    };
    let (userinfo, after) = (&rest[..end], &rest[end..]);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{after}"),
        None => input.to_owned(),
    }
}

/// Whether `rest` (what follows `://`) may be a URL whose password holds a bare `/`: the text before the first
/// `/` has a `:` (a password's or a port's) and an `@` comes after that `/`. Such a URL cannot be split safely:
/// read naively, part of the password would become the host (`ftp://bob:p@ss/w:rd@host/` would connect to `ss`)
/// or the port (`ftp://bob:12/34@host/` to `bob:12`), so it is refused before any connection or name lookup.
fn password_may_hold_slash(rest: &str) -> bool {
    let head = authority_as_written(rest);
    may_start_a_password(head) && rest[head.len()..].contains('@')
}

/// What comes before the first `/` of `rest` (what follows `://`): the authority, unless a password holds a `/`.
fn authority_as_written(rest: &str) -> &str {
    &rest[..rest.find('/').unwrap_or(rest.len())]
}

/// Whether `head` (see [`authority_as_written`]) has a `:` that may start a password: any `:` but those of a
/// bracketed IPv6 host written without user information.
fn may_start_a_password(head: &str) -> bool {
    head.contains(':') && !head.starts_with('[')
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    encode_except(s, |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn percent_encode_path(s: &str) -> String {
    encode_except(s, |b| {
        b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b)
    })
}

fn encode_except(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `[::1]` for IPv6 literals, the host itself otherwise.
pub fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with the host percent-decoded; `None` for a malformed one or port 0.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (s, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    let host = percent_decode(host)?;
    if host.contains(['/', '@', ' ']) {
        return None;
    }
    Some((host, port))
}

fn server_path(scheme: Scheme, decoded: &str) -> String {
    match scheme {
        Scheme::Sftp => {
            if decoded == "/~" {
                String::new()
            } else if let Some(rest) = decoded.strip_prefix("/~/") {
                rest.to_owned()
            } else if decoded.is_empty() {
                "/".to_owned()
            } else {
                decoded.to_owned()
            }
        }
        _ => decoded.strip_prefix('/').unwrap_or(decoded).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> RemoteUrl {
        RemoteUrl::parse(s).unwrap()
    }

    #[test]
    fn only_plain_names_are_usable_as_local_names() {
        for name in ["a.txt", ".hidden", "..x", "x..", "a b", "été"] {
            assert!(is_plain_name(name), "{name:?}");
        }
        for name in ["", ".", "..", "../x", "/etc/x", "a/b", "a\0b"] {
            assert!(!is_plain_name(name), "{name:?}");
        }
        // A backslash separates only on Windows; elsewhere it is part of a name.
        assert_eq!(is_plain_name("a\\b"), !cfg!(windows));
    }

    #[test]
    fn every_scheme_parses_with_its_default_port() {
        for (s, scheme, port) in [
            ("ftp://h/x", Scheme::Ftp, 21),
            ("ftps://h/x", Scheme::Ftps, 21),
            ("ftps+implicit://h/x", Scheme::FtpsImplicit, 990),
            ("sftp://h/x", Scheme::Sftp, 22),
            ("FTP://h/x", Scheme::Ftp, 21),
        ] {
            let u = url(s);
            assert_eq!(u.scheme, scheme, "{s}");
            assert_eq!(u.port_or_default(), port, "{s}");
            assert_eq!(u.host, "h");
        }
    }

    #[test]
    fn user_password_host_port_and_path_are_split() {
        let u = url("ftp://alice:s3cret@files.example.com:2121/dir/file.bin");
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.host, "files.example.com");
        assert_eq!(u.port, Some(2121));
        assert_eq!(u.path, "dir/file.bin");
    }

    #[test]
    fn user_without_password_and_at_sign_in_password() {
        let u = url("sftp://bob@h/tmp/x");
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password, None);
        let u = url("ftp://bob:p@ss@h/x");
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn percent_escapes_are_decoded_in_user_password_and_path() {
        let u = url("ftp://a%40b:p%3Aw%2Fd@h/with%20space/%C3%A9t%C3%A9.txt");
        assert_eq!(u.user.as_deref(), Some("a@b"));
        assert_eq!(u.password.as_deref(), Some("p:w/d"));
        assert_eq!(u.path, "with space/été.txt");
    }

    #[test]
    fn ipv6_literals_are_bracketed() {
        let u = url("sftp://alice@[::1]:2222/srv/x");
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, Some(2222));
        assert_eq!(u.path, "/srv/x");
        assert_eq!(u.server(), "sftp://alice@[::1]:2222");
        let u = url("ftp://[fe80::1]/x");
        assert_eq!(u.host, "fe80::1");
        assert_eq!(u.port, None);
    }

    #[test]
    fn ftp_paths_are_relative_to_the_login_directory_unless_doubled() {
        assert_eq!(url("ftp://h/a/b").path, "a/b");
        assert_eq!(url("ftp://h//tmp/a").path, "/tmp/a");
        assert_eq!(url("ftp://h").path, "");
        assert_eq!(url("ftp://h/").path, "");
        assert_eq!(url("ftp://h/dir/").path, "dir/");
    }

    #[test]
    fn sftp_paths_are_absolute_unless_tilde() {
        assert_eq!(url("sftp://h/tmp/a").path, "/tmp/a");
        assert_eq!(url("sftp://h/~/a").path, "a");
        assert_eq!(url("sftp://h/~").path, "");
        assert_eq!(url("sftp://h").path, "/");
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for bad in [
            "http://h/x",
            "gopher://h/",
            "ftp://",
            "ftp://h:99999/x",
            "ftp://h:0/x",
            "ftp://h:port/x",
            "ftp://[::1/x",
            "ftp://[nothex]/x",
            "ftp://h/%zz",
            "ftp://h/%00",
            "ftp://a:b:c:d/x",
        ] {
            let err = RemoteUrl::parse(bad).unwrap_err();
            assert!(matches!(err, ClientError::Usage(_)), "{bad}: {err}");
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        }
        let err = RemoteUrl::parse("http://h/x").unwrap_err();
        assert!(err.to_string().contains("unknown scheme \"http\""), "{err}");
    }

    #[test]
    fn usage_errors_never_show_the_password() {
        for bad in [
            "http://al:s3cret@h/x",
            "ftp://al:s3cret@h:99999/x",
            "ftp://al:s3cret@h/%zz",
            "sftp://al:s3cret@[nothex]/x@y",
        ] {
            let err = RemoteUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("al:***@"), "{err}");
        }
        assert_eq!(
            redact("ftp://h/a:b@c"),
            "ftp://h/a:b@c",
            "a path is not user information"
        );
        assert_eq!(redact("ftp://u@h/x"), "ftp://u@h/x");
        assert_eq!(redact("sftp://[::1]:22/a@b"), "sftp://[::1]:22/a@b");
    }

    #[test]
    fn a_password_holding_a_slash_is_hidden_whole() {
        for (input, shown) in [
            ("ftp://bob:se/cret@host/", "ftp://bob:***@host/"),
            (
                "ftp://bob:se/cr/et@host:21/dir/f",
                "ftp://bob:***@host:21/dir/f",
            ),
            ("ftp://bob:12/34@host/x", "ftp://bob:***@host/x"),
            ("ftp://bob:se/cret@h/a@b", "ftp://bob:***@b"),
            ("ftp://bob:s@cret@host/p", "ftp://bob:***@host/p"),
            (
                "ftp://pct:p@ss/w:rd@127.0.0.1:4121/",
                "ftp://pct:***@127.0.0.1:4121/",
            ),
            (
                "sftp://pct:12/cret@[::1]:2222/x",
                "sftp://pct:***@[::1]:2222/x",
            ),
        ] {
            assert_eq!(redact(input), shown, "{input}");
        }
        let err = RemoteUrl::parse("ftp://bob:se/cret@host/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("se/cret") && !err.contains("cret"), "{err}");
    }

    #[test]
    fn a_url_whose_password_may_hold_a_slash_is_refused_before_use() {
        for scheme in Scheme::NAMES {
            for rest in [
                "pct:p@ss/w:rd@127.0.0.1:4121/",
                "pct:12/cret@127.0.0.1:4121/",
                "pct:se/cret@127.0.0.1:4121/dir/f",
                "pct:a/b/c@[::1]/",
                "pct:a/b@c/d@127.0.0.1",
                "h:2121/mail@archive",
            ] {
                let input = format!("{scheme}://{rest}");
                let err = RemoteUrl::parse(&input).unwrap_err();
                assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{input}");
                let message = err.to_string();
                assert!(message.contains("%2F"), "{message}");
                for fragment in ["p@ss", "ss/", "w:rd", ":12", "cret", "a/b", "/c@"] {
                    assert!(!message.contains(fragment), "{input}: {message}");
                }
            }
        }
    }

    #[test]
    fn an_at_sign_in_the_path_is_kept_where_no_password_can_hide() {
        assert_eq!(url("ftp://h/mail@archive/x").path, "mail@archive/x");
        assert_eq!(url("ftp://u@h/a@b").path, "a@b");
        assert_eq!(url("sftp://[::1]:22/a@b").path, "/a@b");
        let u = url("ftp://u:p%2Fw@h:2121/a%40b");
        assert_eq!(u.password.as_deref(), Some("p/w"));
        assert_eq!(u.path, "a@b");
    }

    #[test]
    fn display_hides_the_password() {
        let u = url("ftp://alice:secret@h:2121/a%20b");
        assert_eq!(u.to_string(), "ftp://alice@h:2121/a%20b");
        assert!(!format!("{u:?}").contains("secret"));
    }

    #[test]
    fn locations_are_local_without_a_scheme() {
        assert_eq!(
            Location::parse("some/file").unwrap(),
            Location::Local(PathBuf::from("some/file"))
        );
        assert!(matches!(
            Location::parse("sftp://h/x").unwrap(),
            Location::Remote(_)
        ));
        assert!(Location::parse("nope://h/x").is_err());
        let shown = Location::parse("sftp://al:s3cret@h/x").unwrap().to_string();
        assert_eq!(shown, "sftp://al@h:22/x");
    }

    #[test]
    fn path_helpers() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("d", "a"), "d/a");
        assert_eq!(join("d/", "a"), "d/a");
        assert_eq!(file_name("d/e/f.txt"), "f.txt");
        assert_eq!(file_name("d/e/"), "e");
        assert_eq!(parent("d/e/f"), "d/e");
        assert_eq!(parent("/f"), "/");
        assert_eq!(parent("f"), "");
    }

    proptest! {
        #[test]
        fn encoded_components_round_trip(
            user in "[a-zA-Z0-9@:/ %._-]{1,12}",
            password in "[ -~]{0,12}",
            path in "[a-zA-Z0-9 ._/é-]{0,20}",
            port in 1u16..,
        ) {
            let s = format!(
                "ftp://{}:{}@host:{port}/{}",
                percent_encode(&user),
                percent_encode(&password),
                percent_encode_path(&path)
            );
            let u = RemoteUrl::parse(&s).unwrap();
            prop_assert_eq!(u.user.as_deref(), Some(user.as_str()));
            prop_assert_eq!(u.password.as_deref(), Some(password.as_str()));
            prop_assert_eq!(u.port, Some(port));
            prop_assert_eq!(u.path, path);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = RemoteUrl::parse(&s);
            let _ = Location::parse(&s);
        }
    }
}
