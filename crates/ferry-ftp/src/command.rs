//! Parsing of control-connection lines into [`Command`]s. Parsing never panics and never allocates more than the
//! line it is given; every malformed line becomes a [`ParseError`] that maps to a 500/501/502/504 reply.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::checksum::HashAlgorithm;

/// Representation type (RFC 959 TYPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferType {
    Ascii,
    Binary,
}

/// Data channel protection level (RFC 4217 PROT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtLevel {
    Clear,
    Private,
}

/// Arguments of OPTS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opts {
    Utf8(bool),
    /// The list of MLST facts to show.
    Mlst(Vec<String>),
    Hash(Option<HashAlgorithm>),
    Other(String),
}

/// SITE sub-commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Site {
    Help,
    Chmod { mode: u32, path: String },
    Other(String),
}

/// One control-connection command. Every command ferry knows is here, so that the compiler lists each place a new
/// one must be handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(String),
    Acct(String),
    Rein,
    Quit,
    Cwd(String),
    Cdup,
    Pwd,
    Mkd(String),
    Rmd(String),
    Dele(String),
    Rnfr(String),
    Rnto(String),
    Retr(String),
    Stor(String),
    Stou,
    Appe(String),
    Rest(u64),
    Allo,
    Abor,
    List(Option<String>),
    Nlst(Option<String>),
    Mlsd(Option<String>),
    Mlst(Option<String>),
    Stat(Option<String>),
    Type(TransferType),
    Stru(char),
    Mode(char),
    Syst,
    Noop,
    Help,
    Site(Site),
    Feat,
    Opts(Opts),
    Size(String),
    Mdtm(String),
    Mfmt {
        time: SystemTime,
        path: String,
    },
    Pasv,
    /// EPSV, or `EPSV ALL` when `true`; a requested network protocol is checked by the handler.
    Epsv {
        all: bool,
        protocol: Option<u8>,
    },
    Port(SocketAddr),
    Eprt(SocketAddr),
    Auth(String),
    Pbsz(u64),
    Prot(ProtLevel),
    Hash(String),
    /// RANG start end; `None` resets the range.
    Rang(Option<(u64, u64)>),
    /// XMD5/XSHA1/XSHA256/XSHA512/XCRC with an optional byte range.
    LegacyHash {
        algorithm: HashAlgorithm,
        path: String,
        range: Option<(u64, Option<u64>)>,
    },
    Avbl(Option<String>),
}

/// Why a line is not a valid command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("{0} is not implemented")]
    NotImplemented(String),
    #[error("{0}")]
    BadArgument(String),
    #[error("{0}: parameter not implemented")]
    ParameterNotImplemented(String),
    #[error("Network protocol not supported, use (1,2)")]
    NetworkProtocolNotSupported,
}

impl Command {
    /// Commands that may be used before login.
    pub fn allowed_before_login(&self) -> bool {
        matches!(
            self,
            Command::User(_)
                | Command::Pass(_)
                | Command::Acct(_)
                | Command::Rein
                | Command::Quit
                | Command::Syst
                | Command::Noop
                | Command::Help
                | Command::Feat
                | Command::Opts(_)
                | Command::Auth(_)
                | Command::Pbsz(_)
                | Command::Prot(_)
        )
    }

    /// Commands answered at once even while a transfer runs; the others wait for it to end.
    pub fn runs_during_transfer(&self) -> bool {
        matches!(
            self,
            Command::Abor | Command::Stat(None) | Command::Noop | Command::Quit
        )
    }

    /// The verb, for logs; never includes arguments (PASS must not be logged).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Acct(_) => "ACCT",
            Command::Rein => "REIN",
            Command::Quit => "QUIT",
            Command::Cwd(_) => "CWD",
            Command::Cdup => "CDUP",
            Command::Pwd => "PWD",
            Command::Mkd(_) => "MKD",
            Command::Rmd(_) => "RMD",
            Command::Dele(_) => "DELE",
            Command::Rnfr(_) => "RNFR",
            Command::Rnto(_) => "RNTO",
            Command::Retr(_) => "RETR",
            Command::Stor(_) => "STOR",
            Command::Stou => "STOU",
            Command::Appe(_) => "APPE",
            Command::Rest(_) => "REST",
            Command::Allo => "ALLO",
            Command::Abor => "ABOR",
            Command::List(_) => "LIST",
            Command::Nlst(_) => "NLST",
            Command::Mlsd(_) => "MLSD",
            Command::Mlst(_) => "MLST",
            Command::Stat(_) => "STAT",
            Command::Type(_) => "TYPE",
            Command::Stru(_) => "STRU",
            Command::Mode(_) => "MODE",
            Command::Syst => "SYST",
            Command::Noop => "NOOP",
            Command::Help => "HELP",
            Command::Site(_) => "SITE",
            Command::Feat => "FEAT",
            Command::Opts(_) => "OPTS",
            Command::Size(_) => "SIZE",
            Command::Mdtm(_) => "MDTM",
            Command::Mfmt { .. } => "MFMT",
            Command::Pasv => "PASV",
            Command::Epsv { .. } => "EPSV",
            Command::Port(_) => "PORT",
            Command::Eprt(_) => "EPRT",
            Command::Auth(_) => "AUTH",
            Command::Pbsz(_) => "PBSZ",
            Command::Prot(_) => "PROT",
            Command::Hash(_) => "HASH",
            Command::Rang(_) => "RANG",
            Command::LegacyHash { .. } => "XHASH",
            Command::Avbl(_) => "AVBL",
        }
    }
}

/// Verbs of RFC 959 and its extensions that ferry deliberately does not implement (502).
const UNIMPLEMENTED: &[&str] = &[
    "SMNT", "REIN2", "CCC", "ADAT", "MIC", "CONF", "ENC", "LPRT", "LPSV", "XRCP", "XRSQ",
];

/// Parses one line (without CRLF, Telnet sequences already removed).
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let (verb, arg) = match line.split_once(' ') {
        Some((verb, arg)) => (verb, arg),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let arg_opt = || (!arg.is_empty()).then(|| arg.to_owned());
    let required = || -> Result<String, ParseError> {
        if arg.is_empty() {
            Err(ParseError::BadArgument(format!("{verb} needs an argument")))
        } else {
            Ok(arg.to_owned())
        }
    };
    let no_arg = |cmd: Command| -> Result<Command, ParseError> { Ok(cmd) };
    match verb.as_str() {
        "USER" => required().map(Command::User),
        "PASS" => Ok(Command::Pass(arg.to_owned())),
        "ACCT" => required().map(Command::Acct),
        "REIN" => no_arg(Command::Rein),
        "QUIT" => no_arg(Command::Quit),
        "CWD" | "XCWD" => required().map(Command::Cwd),
        "CDUP" | "XCUP" => no_arg(Command::Cdup),
        "PWD" | "XPWD" => no_arg(Command::Pwd),
        "MKD" | "XMKD" => required().map(Command::Mkd),
        "RMD" | "XRMD" => required().map(Command::Rmd),
        "DELE" => required().map(Command::Dele),
        "RNFR" => required().map(Command::Rnfr),
        "RNTO" => required().map(Command::Rnto),
        "RETR" => required().map(Command::Retr),
        "STOR" => required().map(Command::Stor),
        "STOU" => no_arg(Command::Stou),
        "APPE" => required().map(Command::Appe),
        "REST" => parse_u64(&required()?).map(Command::Rest),
        "ALLO" => no_arg(Command::Allo),
        "ABOR" => no_arg(Command::Abor),
        "LIST" => Ok(Command::List(list_target(arg))),
        "NLST" => Ok(Command::Nlst(list_target(arg))),
        "MLSD" => Ok(Command::Mlsd(arg_opt())),
        "MLST" => Ok(Command::Mlst(arg_opt())),
        "STAT" => Ok(Command::Stat(list_target(arg))),
        "TYPE" => parse_type(&required()?),
        "STRU" => parse_single_char(&required()?, 'F', "STRU").map(Command::Stru),
        "MODE" => parse_single_char(&required()?, 'S', "MODE").map(Command::Mode),
        "SYST" => no_arg(Command::Syst),
        "NOOP" => no_arg(Command::Noop),
        "HELP" => no_arg(Command::Help),
        "SITE" => parse_site(&required()?),
        "FEAT" => no_arg(Command::Feat),
        "OPTS" => parse_opts(&required()?),
        "SIZE" => required().map(Command::Size),
        "MDTM" => required().map(Command::Mdtm),
        "MFMT" => parse_mfmt(&required()?),
        "PASV" => no_arg(Command::Pasv),
        "EPSV" => parse_epsv(arg),
        "PORT" => parse_port(&required()?).map(Command::Port),
        "EPRT" => parse_eprt(&required()?).map(Command::Eprt),
        "AUTH" => required().map(|a| Command::Auth(a.to_ascii_uppercase())),
        "PBSZ" => parse_u64(&required()?).map(Command::Pbsz),
        "PROT" => match required()?.to_ascii_uppercase().as_str() {
            "C" => Ok(Command::Prot(ProtLevel::Clear)),
            "P" => Ok(Command::Prot(ProtLevel::Private)),
            "S" | "E" => Err(ParseError::ParameterNotImplemented("PROT".into())),
            other => Err(ParseError::BadArgument(format!(
                "unknown protection level {other:?}"
            ))),
        },
        "HASH" => required().map(Command::Hash),
        "RANG" => parse_rang(&required()?),
        "XMD5" => parse_legacy_hash(HashAlgorithm::Md5, &required()?),
        "XSHA" | "XSHA1" => parse_legacy_hash(HashAlgorithm::Sha1, &required()?),
        "XSHA256" => parse_legacy_hash(HashAlgorithm::Sha256, &required()?),
        "XSHA512" => parse_legacy_hash(HashAlgorithm::Sha512, &required()?),
        "XCRC" => parse_legacy_hash(HashAlgorithm::Crc32, &required()?),
        "AVBL" => Ok(Command::Avbl(arg_opt())),
        v if UNIMPLEMENTED.contains(&v) => Err(ParseError::NotImplemented(verb.clone())),
        _ => Err(ParseError::Unknown(truncate(&verb, 16))),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn parse_u64(s: &str) -> Result<u64, ParseError> {
    s.trim()
        .parse()
        .map_err(|_| ParseError::BadArgument(format!("{:?} is not a number", truncate(s, 32))))
}

/// Drops `ls` style options (`LIST -la dir`), which many clients send.
fn list_target(arg: &str) -> Option<String> {
    let mut rest = arg.trim_start();
    while rest.starts_with('-') {
        match rest.split_once(' ') {
            Some((_, tail)) => rest = tail.trim_start(),
            None => rest = "",
        }
    }
    (!rest.is_empty()).then(|| rest.to_owned())
}

fn parse_type(arg: &str) -> Result<Command, ParseError> {
    let mut words = arg.split_whitespace();
    let kind = words.next().unwrap_or("").to_ascii_uppercase();
    let format = words.next().map(str::to_ascii_uppercase);
    match (kind.as_str(), format.as_deref()) {
        ("A", None | Some("N")) => Ok(Command::Type(TransferType::Ascii)),
        ("I", None) | ("L", Some("8")) => Ok(Command::Type(TransferType::Binary)),
        ("A" | "E", Some(_)) | ("E", None) | ("L", _) => {
            Err(ParseError::ParameterNotImplemented("TYPE".into()))
        }
        _ => Err(ParseError::BadArgument(format!(
            "unknown type {:?}",
            truncate(arg, 16)
        ))),
    }
}

fn parse_single_char(arg: &str, supported: char, verb: &str) -> Result<char, ParseError> {
    let mut chars = arg.trim().chars();
    match (chars.next().map(|c| c.to_ascii_uppercase()), chars.next()) {
        (Some(c), None) if c == supported => Ok(c),
        (Some(c), None) if c.is_ascii_alphabetic() => {
            Err(ParseError::ParameterNotImplemented(verb.into()))
        }
        _ => Err(ParseError::BadArgument(format!("bad {verb} argument"))),
    }
}

fn parse_site(arg: &str) -> Result<Command, ParseError> {
    let (sub, rest) = arg.split_once(' ').unwrap_or((arg, ""));
    match sub.to_ascii_uppercase().as_str() {
        "HELP" => Ok(Command::Site(Site::Help)),
        "CHMOD" => {
            let (mode, path) = rest
                .trim_start()
                .split_once(' ')
                .ok_or_else(|| ParseError::BadArgument("usage: SITE CHMOD mode path".into()))?;
            let mode = u32::from_str_radix(mode, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    ParseError::BadArgument(format!("bad mode {:?}", truncate(mode, 8)))
                })?;
            Ok(Command::Site(Site::Chmod {
                mode,
                path: path.to_owned(),
            }))
        }
        _ => Ok(Command::Site(Site::Other(
            truncate(sub, 16).to_ascii_uppercase(),
        ))),
    }
}

fn parse_opts(arg: &str) -> Result<Command, ParseError> {
    let (name, value) = arg.split_once(' ').unwrap_or((arg, ""));
    match name.to_ascii_uppercase().as_str() {
        "UTF8" | "UTF-8" => match value.trim().to_ascii_uppercase().as_str() {
            "ON" | "" => Ok(Command::Opts(Opts::Utf8(true))),
            "OFF" => Ok(Command::Opts(Opts::Utf8(false))),
            _ => Err(ParseError::BadArgument("OPTS UTF8 takes ON or OFF".into())),
        },
        "MLST" => Ok(Command::Opts(Opts::Mlst(
            value
                .split(';')
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .collect(),
        ))),
        "HASH" => {
            let value = value.trim();
            if value.is_empty() {
                Ok(Command::Opts(Opts::Hash(None)))
            } else {
                value
                    .parse()
                    .map(|a| Command::Opts(Opts::Hash(Some(a))))
                    .map_err(|()| {
                        ParseError::BadArgument(format!(
                            "unknown algorithm {:?}",
                            truncate(value, 16)
                        ))
                    })
            }
        }
        other => Ok(Command::Opts(Opts::Other(truncate(other, 16)))),
    }
}

/// Parses an RFC 3659 time value `YYYYMMDDHHMMSS[.sss]` (UTC).
pub fn parse_time_val(s: &str) -> Option<SystemTime> {
    let (main, _fraction) = s.split_once('.').unwrap_or((s, ""));
    if main.len() != 14 || !main.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| main.get(r).and_then(|x| x.parse::<u32>().ok());
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(8..10)?).ok()?,
        u8::try_from(num(10..12)?).ok()?,
        u8::try_from(num(12..14)?).ok()?,
    )
    .ok()?;
    let secs = date.with_time(t).assume_utc().unix_timestamp();
    Some(if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    })
}

fn parse_mfmt(arg: &str) -> Result<Command, ParseError> {
    let (time, path) = arg
        .split_once(' ')
        .ok_or_else(|| ParseError::BadArgument("usage: MFMT YYYYMMDDHHMMSS path".into()))?;
    let time =
        parse_time_val(time).ok_or_else(|| ParseError::BadArgument("bad time value".into()))?;
    if path.is_empty() {
        return Err(ParseError::BadArgument(
            "usage: MFMT YYYYMMDDHHMMSS path".into(),
        ));
    }
    Ok(Command::Mfmt {
        time,
        path: path.to_owned(),
    })
}

fn parse_epsv(arg: &str) -> Result<Command, ParseError> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Ok(Command::Epsv {
            all: false,
            protocol: None,
        });
    }
    if arg.eq_ignore_ascii_case("ALL") {
        return Ok(Command::Epsv {
            all: true,
            protocol: None,
        });
    }
    let protocol = arg
        .parse()
        .map_err(|_| ParseError::BadArgument("EPSV takes 1, 2 or ALL".into()))?;
    Ok(Command::Epsv {
        all: false,
        protocol: Some(protocol),
    })
}

/// `h1,h2,h3,h4,p1,p2`
fn parse_port(arg: &str) -> Result<SocketAddr, ParseError> {
    let bad = || ParseError::BadArgument("usage: PORT h1,h2,h3,h4,p1,p2".into());
    let nums: Vec<u8> = arg
        .trim()
        .split(',')
        .map(|n| n.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let [a, b, c, d, p1, p2] = nums[..] else {
        return Err(bad());
    };
    Ok(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        u16::from(p1) << 8 | u16::from(p2),
    ))
}

/// `|proto|address|port|` with any delimiter character (RFC 2428).
fn parse_eprt(arg: &str) -> Result<SocketAddr, ParseError> {
    let bad = || ParseError::BadArgument("usage: EPRT |proto|address|port|".into());
    let delim = arg.chars().next().ok_or_else(bad)?;
    if !(33..=126).contains(&(delim as u32)) {
        return Err(bad());
    }
    let parts: Vec<&str> = arg.split(delim).collect();
    let [_, proto, addr, port, ""] = parts[..] else {
        return Err(bad());
    };
    if !matches!(proto, "1" | "2") {
        return Err(ParseError::NetworkProtocolNotSupported);
    }
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    match (proto, ip) {
        ("1", IpAddr::V4(_)) | ("2", IpAddr::V6(_)) => Ok(SocketAddr::new(ip, port)),
        _ => Err(bad()),
    }
}

fn parse_rang(arg: &str) -> Result<Command, ParseError> {
    let bad = || ParseError::BadArgument("usage: RANG start end".into());
    let (start, end) = arg.trim().split_once(' ').ok_or_else(bad)?;
    let (start, end) = (parse_u64(start)?, parse_u64(end.trim())?);
    if start == 1 && end == 0 {
        return Ok(Command::Rang(None));
    }
    if end < start {
        return Err(bad());
    }
    Ok(Command::Rang(Some((start, end))))
}

/// `XSHA256 path` or `XSHA256 path start [end]`; a trailing number pair is a range only when both parse.
fn parse_legacy_hash(algorithm: HashAlgorithm, arg: &str) -> Result<Command, ParseError> {
    let words: Vec<&str> = arg.rsplitn(3, ' ').collect();
    let range = match words[..] {
        [end, start, path] => match (start.parse::<u64>(), end.parse::<u64>()) {
            (Ok(s), Ok(e)) if e >= s => Some((path, (s, Some(e)))),
            _ => None,
        },
        _ => None,
    };
    Ok(match range {
        Some((path, range)) => Command::LegacyHash {
            algorithm,
            path: path.to_owned(),
            range: Some(range),
        },
        None => Command::LegacyHash {
            algorithm,
            path: arg.to_owned(),
            range: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn verbs_are_case_insensitive_and_aliases_map() {
        assert_eq!(parse("user alice"), Ok(Command::User("alice".into())));
        assert_eq!(parse("XPWD"), Ok(Command::Pwd));
        assert_eq!(parse("xmkd a b"), Ok(Command::Mkd("a b".into())));
        assert_eq!(parse("PASS"), Ok(Command::Pass(String::new())));
    }

    #[test]
    fn missing_arguments_are_501() {
        assert!(matches!(parse("RETR"), Err(ParseError::BadArgument(_))));
        assert!(matches!(parse("MKD"), Err(ParseError::BadArgument(_))));
        assert!(matches!(parse("REST x"), Err(ParseError::BadArgument(_))));
    }

    #[test]
    fn unknown_and_unimplemented() {
        assert_eq!(parse("FOO bar"), Err(ParseError::Unknown("FOO".into())));
        assert_eq!(
            parse("SMNT x"),
            Err(ParseError::NotImplemented("SMNT".into()))
        );
        assert!(matches!(
            parse("STRU R"),
            Err(ParseError::ParameterNotImplemented(_))
        ));
        assert!(matches!(
            parse("MODE B"),
            Err(ParseError::ParameterNotImplemented(_))
        ));
        assert!(matches!(
            parse("PROT S"),
            Err(ParseError::ParameterNotImplemented(_))
        ));
    }

    #[test]
    fn port_and_eprt() {
        assert_eq!(
            parse("PORT 127,0,0,1,4,1"),
            Ok(Command::Port("127.0.0.1:1025".parse().unwrap()))
        );
        assert!(parse("PORT 127,0,0,1,4").is_err());
        assert!(parse("PORT 300,0,0,1,4,1").is_err());
        assert_eq!(
            parse("EPRT |2|::1|5000|"),
            Ok(Command::Eprt("[::1]:5000".parse().unwrap()))
        );
        assert_eq!(
            parse("EPRT !1!10.0.0.1!21!"),
            Ok(Command::Eprt("10.0.0.1:21".parse().unwrap()))
        );
        assert!(parse("EPRT |1|::1|5000|").is_err());
        assert_eq!(
            parse("EPRT |3|x|1|"),
            Err(ParseError::NetworkProtocolNotSupported)
        );
    }

    #[test]
    fn list_options_are_ignored() {
        assert_eq!(parse("LIST -la"), Ok(Command::List(None)));
        assert_eq!(
            parse("LIST -a -l dir x"),
            Ok(Command::List(Some("dir x".into())))
        );
        assert_eq!(parse("NLST"), Ok(Command::Nlst(None)));
    }

    #[test]
    fn mfmt_and_time_values() {
        let Ok(Command::Mfmt { time, path }) = parse("MFMT 20231114221320 a b") else {
            panic!()
        };
        assert_eq!(path, "a b");
        assert_eq!(time, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert!(parse("MFMT 2023 x").is_err());
        assert!(parse_time_val("20231340000000").is_none());
    }

    #[test]
    fn hash_related() {
        assert_eq!(
            parse("OPTS HASH SHA-512"),
            Ok(Command::Opts(Opts::Hash(Some(HashAlgorithm::Sha512))))
        );
        assert!(parse("OPTS HASH FOO").is_err());
        assert_eq!(parse("RANG 10 20"), Ok(Command::Rang(Some((10, 20)))));
        assert_eq!(parse("RANG 1 0"), Ok(Command::Rang(None)));
        assert_eq!(
            parse("XMD5 my file 0 99"),
            Ok(Command::LegacyHash {
                algorithm: HashAlgorithm::Md5,
                path: "my file".into(),
                range: Some((0, Some(99)))
            })
        );
        assert_eq!(
            parse("XCRC file"),
            Ok(Command::LegacyHash {
                algorithm: HashAlgorithm::Crc32,
                path: "file".into(),
                range: None
            })
        );
    }

    #[test]
    fn site_chmod() {
        assert_eq!(
            parse("SITE CHMOD 644 f g"),
            Ok(Command::Site(Site::Chmod {
                mode: 0o644,
                path: "f g".into()
            }))
        );
        assert!(parse("SITE CHMOD 999 f").is_err());
        assert!(parse("SITE CHMOD 644").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(line in "\\PC{0,200}") {
            let _ = parse(&line);
        }

        #[test]
        fn parse_never_panics_on_known_verbs(verb in "(PORT|EPRT|EPSV|REST|TYPE|SITE|OPTS|MFMT|RANG|XMD5|PROT|PBSZ|STRU|MODE|LIST) ?", arg in "\\PC{0,60}") {
            let _ = parse(&format!("{verb}{arg}"));
        }
    }
}
