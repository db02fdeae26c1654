//! `ferry serve` settings: command-line flags, `FERRY_*` environment variables and a TOML file, in that order of
//! precedence over the built-in defaults. Flags and environment are merged by clap; the file fills what is left.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ferry_core::limits::Limits;
use ferry_core::transfer::UploadMode;
use serde::Deserialize;

/// Where `ferry serve` and `ferry user` keep their state when not told otherwise.
pub const DEFAULT_DATA_DIR: &str = "ferry-data";
const DEFAULT_FTP: &str = "0.0.0.0:2121";
const DEFAULT_SFTP: &str = "0.0.0.0:2222";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The longest timeout or grace period accepted, in seconds: 7 days. Anything longer is a mistake, and values near
/// `u64::MAX` would overflow the deadlines computed from them.
const MAX_SECONDS: u64 = 7 * 24 * 60 * 60;
/// The longest pause after a failed login, in milliseconds: 1 minute.
const MAX_FAILED_LOGIN_DELAY_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadModeArg {
    Direct,
    Atomic,
}

/// Flags of `ferry serve`. Every one may also come from `FERRY_<NAME>` or the `--config` file.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeArgs {
    /// TOML configuration file; its keys are the flag names with underscores.
    #[arg(long, env = "FERRY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for the account database, files and generated keys [default: ./ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// FTP listener (explicit FTPS via AUTH TLS on the same port) [default: 0.0.0.0:2121].
    #[arg(long, env = "FERRY_FTP")]
    pub ftp: Option<String>,
    /// Implicit FTPS listener (TLS from the first byte), off by default.
    #[arg(long, env = "FERRY_FTPS")]
    pub ftps: Option<String>,
    /// SSH listener for SFTP, SCP and checksum commands [default: 0.0.0.0:2222].
    #[arg(long, env = "FERRY_SFTP")]
    pub sftp: Option<String>,
    /// Passive data ports, e.g. 50000-51000 [default: the system's ephemeral ports].
    #[arg(long, env = "FERRY_PASSIVE_PORTS")]
    pub passive_ports: Option<String>,
    /// Address advertised in PASV replies, for servers behind NAT.
    #[arg(long, env = "FERRY_PASSIVE_HOST")]
    pub passive_host: Option<String>,
    /// Enable read-only anonymous login (user anonymous or ftp) rooted at DIR.
    #[arg(long, env = "FERRY_ANONYMOUS")]
    pub anonymous: Option<PathBuf>,
    /// TLS certificate chain (PEM), read again with the key on SIGHUP [default: generated in DATA_DIR/tls].
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse logins and data transfers without TLS (anonymous excepted).
    #[arg(long, env = "FERRY_REQUIRE_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub require_tls: Option<bool>,
    /// Refuse TLS data connections that do not resume the control connection's TLS session.
    #[arg(long, env = "FERRY_REQUIRE_TLS_RESUMPTION", num_args = 0..=1, default_missing_value = "true")]
    pub require_tls_resumption: Option<bool>,
    /// Most connections at once, all protocols [default: 20000].
    #[arg(long, env = "FERRY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most connections at once from one address, an IPv6 /64 counting as one; 0: unlimited [default: 256].
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Seconds a session may stay idle, 1 to 604800 (7 days) [default: 300].
    #[arg(long, env = "FERRY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// Seconds from connecting to a successful login, 1 to 604800 [default: 60].
    #[arg(long, env = "FERRY_LOGIN_TIMEOUT")]
    pub login_timeout: Option<u64>,
    /// Seconds to open a data connection, that a data connection may stall, and that a client may leave a reply
    /// untaken before its control connection is closed, 1 to 604800 [default: 60].
    #[arg(long, env = "FERRY_DATA_TIMEOUT")]
    pub data_timeout: Option<u64>,
    /// Milliseconds of delay after a failed login, 0 to 60000 [default: 1000].
    #[arg(long, env = "FERRY_FAILED_LOGIN_DELAY_MS")]
    pub failed_login_delay_ms: Option<u64>,
    /// Failed logins after which the connection is closed; 0: no limit per connection [default: 3].
    #[arg(long, env = "FERRY_MAX_LOGIN_FAILURES")]
    pub max_login_failures: Option<u32>,
    /// Failed password logins from one address (an IPv6 /64) within --failure-window after which that address is
    /// refused until the window ends, whatever connection it uses; 0: no limit [default: 20].
    #[arg(long, env = "FERRY_MAX_FAILURES_PER_IP")]
    pub max_failures_per_ip: Option<u32>,
    /// Seconds over which --max-failures-per-ip counts, 1 to 604800 [default: 300].
    #[arg(long, env = "FERRY_FAILURE_WINDOW")]
    pub failure_window: Option<u64>,
    /// How uploads reach their final name [default: direct].
    #[arg(long, env = "FERRY_UPLOAD_MODE", value_enum)]
    pub upload_mode: Option<UploadModeArg>,
    /// Write completed transfers to FILE in xferlog format (reopened on SIGHUP, after log rotation).
    #[arg(long, env = "FERRY_XFERLOG")]
    pub xferlog: Option<PathBuf>,
    /// Log format on stderr [default: text].
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Seconds running transfers get to finish after SIGTERM or Ctrl-C, 0 to 604800 [default: 30].
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
}

/// The merged settings `ferry serve` runs with.
#[derive(Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub ftp: SocketAddr,
    pub ftps: Option<SocketAddr>,
    pub sftp: SocketAddr,
    pub passive_ports: Option<RangeInclusive<u16>>,
    pub passive_host: Option<IpAddr>,
    pub anonymous: Option<PathBuf>,
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub require_tls: bool,
    pub require_tls_resumption: bool,
    pub limits: Limits,
    /// Whether `limits.max_connections` was set (flag, environment or file) rather than defaulted: a set cap that
    /// the open-file limit cannot hold is worth a warning, the default lowered to fit is not.
    pub max_connections_set: bool,
    pub upload_mode: UploadMode,
    pub xferlog: Option<PathBuf>,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    /// Fills every setting not given by flag or environment from `other` (the file).
    fn or(self, other: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            data_dir: self.data_dir.or(other.data_dir),
            ftp: self.ftp.or(other.ftp),
            ftps: self.ftps.or(other.ftps),
            sftp: self.sftp.or(other.sftp),
            passive_ports: self.passive_ports.or(other.passive_ports),
            passive_host: self.passive_host.or(other.passive_host),
            anonymous: self.anonymous.or(other.anonymous),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            require_tls: self.require_tls.or(other.require_tls),
            require_tls_resumption: self.require_tls_resumption.or(other.require_tls_resumption),
            max_connections: self.max_connections.or(other.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(other.max_connections_per_ip),
            idle_timeout: self.idle_timeout.or(other.idle_timeout),
            login_timeout: self.login_timeout.or(other.login_timeout),
            data_timeout: self.data_timeout.or(other.data_timeout),
            failed_login_delay_ms: self.failed_login_delay_ms.or(other.failed_login_delay_ms),
            max_login_failures: self.max_login_failures.or(other.max_login_failures),
            max_failures_per_ip: self.max_failures_per_ip.or(other.max_failures_per_ip),
            failure_window: self.failure_window.or(other.failure_window),
            upload_mode: self.upload_mode.or(other.upload_mode),
            xferlog: self.xferlog.or(other.xferlog),
            log_format: self.log_format.or(other.log_format),
            shutdown_grace: self.shutdown_grace.or(other.shutdown_grace),
        }
    }

    /// Merges flags and environment with the config file and the defaults, and checks every value.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let merged = match &self.config {
            Some(path) => {
                let file = load_file(path)?;
                self.or(file)
            }
            None => self,
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_connections: merged.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_ip: merged
                .max_connections_per_ip
                .unwrap_or(defaults.max_connections_per_ip),
            idle_timeout: seconds("idle-timeout", merged.idle_timeout, 1)?
                .unwrap_or(defaults.idle_timeout),
            login_timeout: seconds("login-timeout", merged.login_timeout, 1)?
                .unwrap_or(defaults.login_timeout),
            data_timeout: seconds("data-timeout", merged.data_timeout, 1)?
                .unwrap_or(defaults.data_timeout),
            failed_login_delay: failed_login_delay(merged.failed_login_delay_ms)?
                .unwrap_or(defaults.failed_login_delay),
            max_login_failures: merged
                .max_login_failures
                .unwrap_or(defaults.max_login_failures),
            max_failures_per_ip: merged
                .max_failures_per_ip
                .unwrap_or(defaults.max_failures_per_ip),
            failure_window: seconds("failure-window", merged.failure_window, 1)?
                .unwrap_or(defaults.failure_window),
            ..defaults
        };
        let tls_files = match (merged.tls_cert, merged.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        Ok(ServeConfig {
            data_dir: merged
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            ftp: parse_addr(merged.ftp.as_deref().unwrap_or(DEFAULT_FTP)).context("--ftp")?,
            ftps: merged
                .ftps
                .as_deref()
                .map(parse_addr)
                .transpose()
                .context("--ftps")?,
            sftp: parse_addr(merged.sftp.as_deref().unwrap_or(DEFAULT_SFTP)).context("--sftp")?,
            passive_ports: merged
                .passive_ports
                .as_deref()
                .map(parse_port_range)
                .transpose()?,
            passive_host: merged
                .passive_host
                .as_deref()
                .map(resolve_host)
                .transpose()?,
            anonymous: merged.anonymous,
            tls_files,
            require_tls: merged.require_tls.unwrap_or(false),
            require_tls_resumption: merged.require_tls_resumption.unwrap_or(false),
            limits,
            max_connections_set: merged.max_connections.is_some(),
            upload_mode: match merged.upload_mode {
                Some(UploadModeArg::Atomic) => UploadMode::Atomic,
                Some(UploadModeArg::Direct) | None => UploadMode::Direct,
            },
            xferlog: merged.xferlog,
            log_format: merged.log_format.unwrap_or(LogFormat::Text),
            shutdown_grace: seconds("shutdown-grace", merged.shutdown_grace, 0)?
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        })
    }
}

/// A timeout in whole seconds, checked to lie in `min..=MAX_SECONDS`.
fn seconds(option: &str, value: Option<u64>, min: u64) -> anyhow::Result<Option<Duration>> {
    match value {
        Some(v) if !(min..=MAX_SECONDS).contains(&v) => {
            bail!("--{option} {v}: expected {min} to {MAX_SECONDS} seconds (7 days)")
        }
        v => Ok(v.map(Duration::from_secs)),
    }
}

fn failed_login_delay(value: Option<u64>) -> anyhow::Result<Option<Duration>> {
    match value {
        Some(v) if v > MAX_FAILED_LOGIN_DELAY_MS => bail!(
            "--failed-login-delay-ms {v}: expected 0 to {MAX_FAILED_LOGIN_DELAY_MS} milliseconds (1 minute)"
        ),
        v => Ok(v.map(Duration::from_millis)),
    }
}

fn load_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// `127.0.0.1:2121`, `[::]:2121`, or a bare port (all IPv4 interfaces).
fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse()
        .with_context(|| format!("{s:?} is not an address like 127.0.0.1:2121 or [::]:2121"))
}

fn parse_port_range(s: &str) -> anyhow::Result<RangeInclusive<u16>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--passive-ports {s:?}: expected A-B"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .with_context(|| format!("--passive-ports {s:?}: {p:?} is not a port number"))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a == 0 || b < a {
        bail!("--passive-ports {s:?}: expected A-B with 1 <= A <= B <= 65535");
    }
    Ok(a..=b)
}

fn resolve_host(s: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Ok(ip);
    }
    use std::net::ToSocketAddrs;
    (s, 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --passive-host {s}"))?
        .map(|a| a.ip())
        .find(IpAddr::is_ipv4)
        .with_context(|| format!("--passive-host {s} has no IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("ferry.toml");
        std::fs::write(
            &file,
            "ftp = \"127.0.0.1:2999\"\nidle_timeout = 30\nmax_connections = 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            max_connections: Some(7),
            ..ServeArgs::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.ftp, "127.0.0.1:2999".parse().unwrap());
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.limits.login_timeout, Limits::default().login_timeout);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("ferry.toml");
        std::fs::write(&file, "idle_timout = 30\n").unwrap();
        assert!(ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        }
        .resolve()
        .is_err());
    }

    #[test]
    fn addresses_and_ranges() {
        assert_eq!(parse_addr("2121").unwrap(), "0.0.0.0:2121".parse().unwrap());
        assert_eq!(parse_addr("[::1]:0").unwrap(), "[::1]:0".parse().unwrap());
        assert!(parse_addr("nope").is_err());
        assert_eq!(parse_port_range("50000-50010").unwrap(), 50000..=50010);
        assert!(parse_port_range("5-1").is_err());
    }

    fn resolve_error(args: ServeArgs) -> String {
        format!("{:#}", args.resolve().unwrap_err())
    }

    #[test]
    fn timeouts_outside_one_second_to_seven_days_are_refused_naming_the_option() {
        for value in [0, MAX_SECONDS + 1, u64::MAX] {
            let cases = [
                (
                    "--idle-timeout",
                    ServeArgs {
                        idle_timeout: Some(value),
                        ..ServeArgs::default()
                    },
                ),
                (
                    "--login-timeout",
                    ServeArgs {
                        login_timeout: Some(value),
                        ..ServeArgs::default()
                    },
                ),
                (
                    "--data-timeout",
                    ServeArgs {
                        data_timeout: Some(value),
                        ..ServeArgs::default()
                    },
                ),
            ];
            for (option, args) in cases {
                let error = resolve_error(args);
                assert!(
                    error.contains(option) && error.contains(&value.to_string()),
                    "{error}"
                );
            }
        }
        let c = ServeArgs {
            idle_timeout: Some(MAX_SECONDS),
            login_timeout: Some(1),
            data_timeout: Some(MAX_SECONDS),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(MAX_SECONDS));
        assert_eq!(c.limits.login_timeout, Duration::from_secs(1));
    }

    #[test]
    fn shutdown_grace_may_be_zero_but_not_huge() {
        let grace = |v| ServeArgs {
            shutdown_grace: Some(v),
            ..ServeArgs::default()
        };
        assert_eq!(grace(0).resolve().unwrap().shutdown_grace, Duration::ZERO);
        assert!(resolve_error(grace(u64::MAX)).contains("--shutdown-grace"));
    }

    #[test]
    fn failed_login_delay_may_be_zero_but_not_huge() {
        let delay = |v| ServeArgs {
            failed_login_delay_ms: Some(v),
            ..ServeArgs::default()
        };
        assert_eq!(
            delay(0).resolve().unwrap().limits.failed_login_delay,
            Duration::ZERO
        );
        assert!(resolve_error(delay(u64::MAX)).contains("--failed-login-delay-ms"));
    }

    #[test]
    fn the_per_address_failure_limit_is_configurable() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("ferry.toml");
        std::fs::write(&file, "max_failures_per_ip = 0\nfailure_window = 60\n").unwrap();
        let limits = ServeArgs {
            config: Some(file),
            max_failures_per_ip: Some(5),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap()
        .limits;
        assert_eq!(limits.max_failures_per_ip, 5);
        assert_eq!(limits.failure_window, Duration::from_secs(60));
        let error = resolve_error(ServeArgs {
            failure_window: Some(0),
            ..ServeArgs::default()
        });
        assert!(error.contains("--failure-window"), "{error}");
    }

    #[test]
    fn timeouts_from_the_file_are_checked_too() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("ferry.toml");
        std::fs::write(&file, "data_timeout = 18446744073709551615\n").unwrap();
        let error = resolve_error(ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        });
        assert!(error.contains("--data-timeout"), "{error}");
    }

    #[test]
    fn bad_passive_ports_name_the_option_and_the_value() {
        for bad in ["5000-x", "x-5000", "5000-70000"] {
            let error = resolve_error(ServeArgs {
                passive_ports: Some(bad.to_owned()),
                ..ServeArgs::default()
            });
            assert!(
                error.contains("--passive-ports") && error.contains(bad),
                "{error}"
            );
        }
    }
}
