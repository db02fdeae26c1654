//! The part of `~/.ssh/config` an SFTP client needs: `Host` blocks with `HostName`, `User`, `Port`,
//! `IdentityFile`, `IdentitiesOnly` and `UserKnownHostsFile`. As in OpenSSH, the first value found for a keyword
//! wins, `Host` patterns take `*`, `?` and `!negation`, and `Match` blocks (not supported here) are skipped.

use std::path::{Path, PathBuf};

/// Settings for one host, after applying every matching block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshHostConfig {
    pub host_name: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    pub identities_only: bool,
    pub known_hosts_file: Option<PathBuf>,
}

/// A parsed ssh_config file.
#[derive(Clone, Debug, Default)]
pub struct SshConfig {
    blocks: Vec<Block>,
}

#[derive(Clone, Debug)]
struct Block {
    /// `None` for a `Match` block, which never applies.
    patterns: Option<Vec<String>>,
    options: Vec<(String, String)>,
}

impl SshConfig {
    /// Parses ssh_config text (`Keyword value` or `Keyword=value`, keywords case-insensitive).
    pub fn parse(text: &str) -> SshConfig {
        let mut blocks = vec![Block {
            patterns: Some(vec!["*".to_owned()]),
            options: Vec::new(),
        }];
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, value) = match line.find(|c: char| c.is_whitespace() || c == '=') {
                Some(i) => (
                    &line[..i],
                    line[i..].trim_start_matches(|c: char| c.is_whitespace() || c == '='),
                ),
                None => (line, ""),
            };
            let keyword = keyword.to_ascii_lowercase();
            let value = unquote(value.trim());
            match keyword.as_str() {
                "host" => blocks.push(Block {
                    patterns: Some(value.split_whitespace().map(str::to_owned).collect()),
                    options: Vec::new(),
                }),
                "match" => blocks.push(Block {
                    patterns: None,
                    options: Vec::new(),
                }),
                _ => {
                    if let Some(block) = blocks.last_mut() {
                        block.options.push((keyword, value));
                    }
                }
            }
        }
        SshConfig { blocks }
    }

    /// Reads `~/.ssh/config`; an empty configuration when there is none.
    pub fn load() -> SshConfig {
        home_dir()
            .and_then(|h| std::fs::read_to_string(h.join(".ssh/config")).ok())
            .map(|t| SshConfig::parse(&t))
            .unwrap_or_default()
    }

    /// The settings that apply to `host` (the name as given on the command line).
    pub fn host(&self, host: &str) -> SshHostConfig {
        let mut out = SshHostConfig::default();
        let mut identities_only = None;
        let home = home_dir();
        for block in &self.blocks {
            let Some(patterns) = &block.patterns else {
                continue;
            };
            if !host_matches(host, patterns) {
                continue;
            }
            for (keyword, value) in &block.options {
                match keyword.as_str() {
                    "hostname" if out.host_name.is_none() => {
                        out.host_name = Some(value.replace("%h", host));
                    }
                    "user" if out.user.is_none() => out.user = Some(value.clone()),
                    "port" if out.port.is_none() => out.port = value.parse().ok(),
                    "identityfile" => {
                        out.identity_files
                            .push(expand_path(value, home.as_deref(), host));
                    }
                    "identitiesonly" if identities_only.is_none() => {
                        identities_only = Some(value.eq_ignore_ascii_case("yes"));
                    }
                    "userknownhostsfile" if out.known_hosts_file.is_none() => {
                        out.known_hosts_file = value
                            .split_whitespace()
                            .next()
                            .map(|v| expand_path(v, home.as_deref(), host));
                    }
                    _ => {}
                }
            }
        }
        out.identities_only = identities_only.unwrap_or(false);
        out
    }
}

/// The user's home directory, from `$HOME`.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn host_matches(host: &str, patterns: &[String]) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(negated) = p.strip_prefix('!') {
            if wildcard_match(negated, host) {
                return false;
            }
        } else if wildcard_match(p, host) {
            matched = true;
        }
    }
    matched
}

/// `*` and `?` matching, case-insensitive as OpenSSH's host patterns.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn unquote(v: &str) -> String {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_owned()
}

fn expand_path(value: &str, home: Option<&Path>, host: &str) -> PathBuf {
    let value = value.replace("%h", host);
    let value = match home {
        Some(h) => value.replace("%d", &h.to_string_lossy()),
        None => value,
    };
    match (value.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# global defaults come first only when written first
Host backup
    HostName backup.internal.example.com
    User archiver
    Port 2200
    IdentityFile /keys/backup_ed25519

Host *.example.com !secret.example.com
    User web
    IdentityFile=/keys/web

Match host foo
    User never

Host *
    User fallback
    Port 22
    IdentityFile \"/keys/default key\"
    IdentitiesOnly yes
    UserKnownHostsFile /tmp/kh
";

    #[test]
    fn first_value_wins_and_identity_files_accumulate() {
        let c = SshConfig::parse(CONFIG);
        let h = c.host("backup");
        assert_eq!(h.host_name.as_deref(), Some("backup.internal.example.com"));
        assert_eq!(h.user.as_deref(), Some("archiver"));
        assert_eq!(h.port, Some(2200));
        assert_eq!(
            h.identity_files,
            vec![
                PathBuf::from("/keys/backup_ed25519"),
                PathBuf::from("/keys/default key")
            ]
        );
        assert!(h.identities_only);
        assert_eq!(h.known_hosts_file, Some(PathBuf::from("/tmp/kh")));
    }

    #[test]
    fn wildcards_and_negation() {
        let c = SshConfig::parse(CONFIG);
        assert_eq!(c.host("www.example.com").user.as_deref(), Some("web"));
        assert_eq!(
            c.host("secret.example.com").user.as_deref(),
            Some("fallback")
        );
        assert_eq!(c.host("foo").user.as_deref(), Some("fallback"));
        assert_eq!(c.host("foo").host_name, None);
    }

    #[test]
    fn empty_config_gives_nothing() {
        assert_eq!(SshConfig::parse("").host("h"), SshHostConfig::default());
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("h?st", "HOST"));
        assert!(wildcard_match("*.a.*", "x.a.b"));
        assert!(!wildcard_match("*.a", "x.b"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
    }
}
