//! The server under test, named by URL: `ftp://user:password@127.0.0.1:2121/dir`, `ftps://...` (explicit TLS,
//! `AUTH TLS` then `PROT P`), or `sftp://user:password@127.0.0.1:2222/dir`. Only loopback addresses are accepted:
//! a load generator must never be pointed at someone else's machine by a typo.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use ferry_client::url::{percent_decode, redact, split_host_port};

use crate::Error;

/// The protocol spoken to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Ftp,
    /// FTP with explicit TLS on the control and data connections.
    Ftps,
    Sftp,
}

/// A parsed target URL. `dir` is relative to the login directory (as in curl: `ftp://host/a/` means `a` there);
/// empty for the login directory itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    pub dir: String,
    /// The SSH cipher to insist on for `sftp://` (default [`crate::sftp::CIPHER`]).
    pub ssh_cipher: String,
}

impl Target {
    /// `name` inside the target directory, as a path relative to the login directory.
    pub fn path(&self, name: &str) -> String {
        if self.dir.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.dir)
        }
    }

    /// The URL without the password, for reports.
    pub fn display_url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Ftp => "ftp",
            Scheme::Ftps => "ftps",
            Scheme::Sftp => "sftp",
        };
        format!("{scheme}://{}@{}/{}", self.user, self.addr, self.dir)
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_url())
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Error::Url {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| fail("expected SCHEME://USER:PASSWORD@HOST:PORT/DIR"))?;
        let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "ftp" => (Scheme::Ftp, 21),
            "ftps" => (Scheme::Ftps, 21),
            "sftp" => (Scheme::Sftp, 22),
            _ => return Err(fail("the scheme must be ftp, ftps or sftp")),
        };
        let (authority, dir) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, host_port) = authority
            .rsplit_once('@')
            .ok_or_else(|| fail("credentials are required: USER:PASSWORD@"))?;
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let user = percent_decode(user).ok_or_else(|| fail("bad percent-encoding in the user"))?;
        let password =
            percent_decode(password).ok_or_else(|| fail("bad percent-encoding in the password"))?;
        if user.is_empty() {
            return Err(fail("the user is empty"));
        }
        let (host, port) = split_host_port(host_port).ok_or_else(|| fail("bad HOST:PORT"))?;
        let ip = match host.as_str() {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            literal => literal
                .parse::<IpAddr>()
                .map_err(|_| fail("the host must be an IP address or localhost"))?,
        };
        if !ip.is_loopback() {
            return Err(fail("only loopback targets (127.0.0.0/8, ::1) are allowed"));
        }
        let port = port.unwrap_or(default_port);
        let dir = percent_decode(dir.trim_end_matches('/'))
            .ok_or_else(|| fail("bad percent-encoding in the path"))?;
        Ok(Target {
            scheme,
            addr: SocketAddr::new(ip, port),
            user,
            password,
            dir,
            ssh_cipher: crate::sftp::CIPHER.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftp_url_with_port_and_dir() {
        let t: Target = "ftp://alice:secret@127.0.0.1:2121/bench/".parse().unwrap();
        assert_eq!(t.scheme, Scheme::Ftp);
        assert_eq!(t.addr, "127.0.0.1:2121".parse().unwrap());
        assert_eq!((t.user.as_str(), t.password.as_str()), ("alice", "secret"));
        assert_eq!(t.dir, "bench");
        assert_eq!(t.path("f1"), "bench/f1");
    }

    #[test]
    fn default_ports_and_login_dir() {
        let t: Target = "sftp://bob:pw@localhost".parse().unwrap();
        assert_eq!(t.scheme, Scheme::Sftp);
        assert_eq!(t.addr.port(), 22);
        assert_eq!(t.dir, "");
        assert_eq!(t.path("f1"), "f1");
        let t: Target = "ftps://bob:pw@[::1]/".parse().unwrap();
        assert_eq!(t.addr, "[::1]:21".parse().unwrap());
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let t: Target = "ftp://a%40b:p%3Aw%2F@127.0.0.1:21/".parse().unwrap();
        assert_eq!(t.user, "a@b");
        assert_eq!(t.password, "p:w/");
    }

    #[test]
    fn only_loopback_is_a_target() {
        for url in [
            "ftp://a:b@10.0.0.1:21/",
            "ftp://a:b@192.168.1.2/",
            "ftp://a:b@example.com/",
            "sftp://a:b@[2001:db8::1]:22/",
        ] {
            assert!(url.parse::<Target>().is_err(), "{url} was accepted");
        }
        assert!("ftp://a:b@127.0.0.9:21/".parse::<Target>().is_ok());
    }

    #[test]
    fn malformed_urls_are_rejected_without_showing_the_password() {
        for url in [
            "http://a:b@127.0.0.1/",
            "ftp://127.0.0.1/",
            "ftp://:pw@127.0.0.1/",
            "ftp://a:b@127.0.0.1:99999/",
            "ftp://a:b%zz@127.0.0.1/",
        ] {
            let err = url.parse::<Target>().unwrap_err().to_string();
            assert!(!err.contains(":b@"), "{err}");
        }
    }

    #[test]
    fn display_hides_the_password() {
        let t: Target = "ftp://alice:secret@127.0.0.1:2121/x".parse().unwrap();
        assert_eq!(t.display_url(), "ftp://alice@127.0.0.1:2121/x");
        assert!(!format!("{t:?}").contains("secret"));
    }
}
