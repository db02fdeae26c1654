//! `~/.netrc` (or `$NETRC`): FTP logins by host, in the format ftp(1) and curl read.
//!
//! ```text
//! machine files.example.com login alice password s3cret
//! default login anonymous password guest@
//! ```

use std::path::PathBuf;

/// One `machine` (or `default`) entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetrcEntry {
    /// `None` for the `default` entry.
    pub machine: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
}

/// A parsed netrc file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netrc {
    pub entries: Vec<NetrcEntry>,
}

impl Netrc {
    /// Parses netrc text. Unknown tokens are skipped; `macdef` bodies (up to an empty line) are ignored.
    pub fn parse(text: &str) -> Netrc {
        let mut entries: Vec<NetrcEntry> = Vec::new();
        let mut lines = text.lines();
        let mut pending: Vec<String> = Vec::new();
        loop {
            if pending.is_empty() {
                match lines.next() {
                    Some(line) => {
                        let line = line.trim();
                        if line.starts_with('#') {
                            continue;
                        }
                        pending = tokens(line).into_iter().rev().collect();
                        continue;
                    }
                    None => break,
                }
            }
            let Some(token) = pending.pop() else { continue };
            let mut value = |pending: &mut Vec<String>| -> Option<String> {
                if let Some(v) = pending.pop() {
                    return Some(v);
                }
                // A value may sit on the next line.
                for line in lines.by_ref() {
                    let mut t = tokens(line.trim());
                    if !t.is_empty() {
                        let v = t.remove(0);
                        *pending = t.into_iter().rev().collect();
                        return Some(v);
                    }
                }
                None
            };
            match token.as_str() {
                "machine" => entries.push(NetrcEntry {
                    machine: value(&mut pending),
                    ..NetrcEntry::default()
                }),
                "default" => entries.push(NetrcEntry::default()),
                "login" | "user" => {
                    let v = value(&mut pending);
                    if let Some(e) = entries.last_mut() {
                        e.login = v;
                    }
                }
                "password" | "passwd" => {
                    let v = value(&mut pending);
                    if let Some(e) = entries.last_mut() {
                        e.password = v;
                    }
                }
                "account" => {
                    value(&mut pending);
                }
                "macdef" => {
                    pending.clear();
                    for line in lines.by_ref() {
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        Netrc { entries }
    }

    /// Reads `$NETRC`, or `~/.netrc`; an empty set when there is none.
    pub fn load() -> Netrc {
        let path = std::env::var_os("NETRC")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc")));
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| Netrc::parse(&t))
            .unwrap_or_default()
    }

    /// The entry for `host`, else the `default` entry. With `user` given, only an entry with that login (or none)
    /// matches, so a password is never sent for another account.
    pub fn find(&self, host: &str, user: Option<&str>) -> Option<&NetrcEntry> {
        let user_matches =
            |e: &&NetrcEntry| user.is_none() || e.login.is_none() || e.login.as_deref() == user;
        self.entries
            .iter()
            .filter(|e| {
                e.machine
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(host))
            })
            .find(user_matches)
            .or_else(|| {
                self.entries
                    .iter()
                    .filter(|e| e.machine.is_none())
                    .find(user_matches)
            })
    }
}

/// Splits a line into whitespace-separated tokens; double quotes group, backslash escapes.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut token = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => token.extend(chars.next()),
                    c => token.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    token.extend(chars.next());
                } else {
                    token.push(c);
                }
            }
        }
        out.push(token);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_and_default_are_found() {
        let n = Netrc::parse(
            "# comment\nmachine files.example.com login alice password s3cret\n\
             machine other login bob\npassword \"two words\"\ndefault login anonymous password guest@\n",
        );
        let e = n.find("FILES.example.com", None).unwrap();
        assert_eq!(e.login.as_deref(), Some("alice"));
        assert_eq!(e.password.as_deref(), Some("s3cret"));
        let e = n.find("other", None).unwrap();
        assert_eq!(e.login.as_deref(), Some("bob"));
        assert_eq!(e.password.as_deref(), Some("two words"));
        let e = n.find("unknown", None).unwrap();
        assert_eq!(e.machine, None);
        assert_eq!(e.login.as_deref(), Some("anonymous"));
    }

    #[test]
    fn a_given_user_only_matches_its_own_entry() {
        let n = Netrc::parse("machine h login alice password a\nmachine h login bob password b\n");
        assert_eq!(
            n.find("h", Some("bob")).unwrap().password.as_deref(),
            Some("b")
        );
        assert_eq!(n.find("h", Some("carol")), None);
    }

    #[test]
    fn macdef_bodies_are_skipped() {
        let n = Netrc::parse(
            "macdef init\nmachine evil login x password y\n\nmachine h login a password p\n",
        );
        assert_eq!(n.entries.len(), 1);
        assert_eq!(n.find("evil", None), None);
        assert_eq!(n.find("h", None).unwrap().password.as_deref(), Some("p"));
    }

    #[test]
    fn several_entries_on_one_line() {
        let n = Netrc::parse("machine a login x password 1 machine b login y password 2");
        assert_eq!(n.find("b", None).unwrap().password.as_deref(), Some("2"));
        assert_eq!(n.find("a", None).unwrap().password.as_deref(), Some("1"));
    }
}
