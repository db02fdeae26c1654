//! Splits an SSH exec command line into words the way a POSIX shell would for simple commands: whitespace
//! separates words, single quotes keep everything literally, double quotes and backslashes escape. There is no
//! shell behind it, so anything that would make a shell do more (variables, pipes, redirections, command
//! substitution, several commands) is refused instead of being misread. Unquoted wildcards are kept as a glob
//! pattern beside the word, for the one command that expands them (`scp -f`).

/// Longest command line accepted, in bytes.
pub const MAX_COMMAND_LEN: usize = 16 * 1024;

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("command line too long")]
    TooLong,
    #[error("unterminated quote")]
    UnterminatedQuote,
    #[error("{0:?} would need a shell, and this server has none")]
    NeedsShell(char),
}

/// One word of a command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word {
    /// The word as a command receives it when nothing expands its wildcards.
    pub text: String,
    /// For a word with unquoted wildcards (`*`, `?`, `[`): the glob pattern it stands for, in which quoted
    /// wildcard characters are escaped with `\`.
    pub glob: Option<String>,
}

/// Collects one word and its glob pattern.
#[derive(Default)]
struct WordBuilder {
    started: bool,
    text: String,
    pattern: String,
    has_wildcards: bool,
}

impl WordBuilder {
    fn literal(&mut self, c: char) {
        self.started = true;
        self.text.push(c);
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            self.pattern.push('\\');
        }
        self.pattern.push(c);
    }

    fn wildcard(&mut self, c: char) {
        self.unquoted(c);
        self.has_wildcards = true;
    }

    /// An unquoted character that means the same in a pattern (`]`).
    fn unquoted(&mut self, c: char) {
        self.started = true;
        self.text.push(c);
        self.pattern.push(c);
    }

    fn finish(&mut self) -> Option<Word> {
        if !self.started {
            return None;
        }
        let WordBuilder {
            text,
            pattern,
            has_wildcards,
            ..
        } = std::mem::take(self);
        Some(Word {
            text,
            glob: has_wildcards.then_some(pattern),
        })
    }
}

/// Splits `line` into words.
pub fn split(line: &str) -> Result<Vec<Word>, SplitError> {
    if line.len() > MAX_COMMAND_LEN {
        return Err(SplitError::TooLong);
    }
    let mut words = Vec::new();
    let mut word = WordBuilder::default();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.finish()),
            '\'' => {
                word.started = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.literal(c),
                        None => return Err(SplitError::UnterminatedQuote),
                    }
                }
            }
            '"' => {
                word.started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.literal(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.literal('\\');
                                word.literal(c);
                            }
                            None => return Err(SplitError::UnterminatedQuote),
                        },
                        Some(c @ ('$' | '`')) => return Err(SplitError::NeedsShell(c)),
                        Some(c) => word.literal(c),
                        None => return Err(SplitError::UnterminatedQuote),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => word.literal(c),
                None => return Err(SplitError::UnterminatedQuote),
            },
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' => {
                return Err(SplitError::NeedsShell(c));
            }
            '*' | '?' | '[' => word.wildcard(c),
            ']' => word.unquoted(c),
            '#' if !word.started => break,
            c => word.literal(c),
        }
    }
    words.extend(word.finish());
    Ok(words)
}

/// Longest glob pattern accepted, in characters (a file name has at most 255 bytes). Matching costs up to the
/// pattern's length for each character of each name listed, and runs on the session's task.
pub const MAX_PATTERN: usize = 1024;

/// A glob pattern, parsed once: `*`, `?`, `[...]` (with `!` or `^` to negate, and ranges), `\` to escape. As in a
/// shell, a leading `.` in a name must be matched by a `.` in the pattern.
pub struct Glob {
    tokens: Vec<Token>,
    /// The pattern starts with a literal `.`, the only way to match a hidden name.
    dot: bool,
}

impl Glob {
    /// `None` for a pattern longer than [`MAX_PATTERN`] characters.
    pub fn new(pattern: &str) -> Option<Glob> {
        let chars: Vec<char> = pattern.chars().collect();
        if chars.len() > MAX_PATTERN {
            return None;
        }
        let mut tokens = Vec::new();
        let mut at = 0;
        while let Some((token, next)) = token(&chars, at) {
            tokens.push(token);
            at = next;
        }
        Some(Glob {
            tokens,
            dot: pattern.starts_with('.'),
        })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        if name.starts_with('.') && !self.dot {
            return false;
        }
        let name: Vec<char> = name.chars().collect();
        let (mut p, mut n) = (0, 0);
        // Where the last `*` was, and how much of the name it has taken so far.
        let mut star: Option<(usize, usize)> = None;
        loop {
            match (self.tokens.get(p), name.get(n)) {
                (Some(Token::Star), _) => {
                    star = Some((p + 1, n));
                    p += 1;
                    continue;
                }
                (Some(t), Some(&c)) if t.matches(c) => {
                    p += 1;
                    n += 1;
                    continue;
                }
                (None, None) => return true,
                _ => {}
            }
            match star {
                Some((after_star, taken)) if taken < name.len() => {
                    star = Some((after_star, taken + 1));
                    p = after_star;
                    n = taken + 1;
                }
                _ => return false,
            }
        }
    }
}

enum Token {
    Star,
    Any,
    Literal(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Literal(l) => *l == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// The token at `at` in `pattern`, and where the next one starts.
fn token(pattern: &[char], at: usize) -> Option<(Token, usize)> {
    let c = *pattern.get(at)?;
    Some(match c {
        '*' => (Token::Star, at + 1),
        '?' => (Token::Any, at + 1),
        '\\' => match pattern.get(at + 1) {
            Some(&e) => (Token::Literal(e), at + 2),
            None => (Token::Literal('\\'), at + 1),
        },
        '[' => class(pattern, at).unwrap_or((Token::Literal('['), at + 1)),
        c => (Token::Literal(c), at + 1),
    })
}

/// A bracket expression starting at `at`, or `None` if it is not closed (then `[` is a plain character).
fn class(pattern: &[char], at: usize) -> Option<(Token, usize)> {
    let mut i = at + 1;
    let negated = matches!(pattern.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *pattern.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *pattern.get(i)?
        } else {
            c
        };
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some('-'), Some(&hi)) if hi != ']' => {
                ranges.push((lo, hi));
                i += 3;
            }
            _ => {
                ranges.push((lo, lo));
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob_match(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).is_some_and(|glob| glob.matches(name))
    }

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap().into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(words("scp -t -- /a"), ["scp", "-t", "--", "/a"]);
        assert_eq!(
            words("sha256sum 'a b' \"c d\" e\\ f"),
            ["sha256sum", "a b", "c d", "e f"]
        );
        assert_eq!(words("md5sum \"x\\\"y\" ''"), ["md5sum", "x\"y", ""]);
        assert_eq!(words("  pwd  # comment"), ["pwd"]);
        assert_eq!(words("a#b"), ["a#b"]);
        assert_eq!(words("'$HOME'"), ["$HOME"]);
    }

    #[test]
    fn shell_features_are_refused() {
        for line in [
            "ls; rm x",
            "cat a | b",
            "x > y",
            "echo $HOME",
            "echo `id`",
            "\"$(id)\"",
        ] {
            assert!(
                matches!(split(line), Err(SplitError::NeedsShell(_))),
                "{line}"
            );
        }
        assert_eq!(split("'open"), Err(SplitError::UnterminatedQuote));
        assert_eq!(split("x\\"), Err(SplitError::UnterminatedQuote));
        assert_eq!(
            split(&"a".repeat(MAX_COMMAND_LEN + 1)),
            Err(SplitError::TooLong)
        );
    }

    #[test]
    fn unquoted_wildcards_make_a_pattern() {
        let w = split("scp -f 'a b'/*.t\\?t \"[x]\"[0-9]").unwrap();
        assert_eq!(w[1].glob, None);
        assert_eq!(w[2].text, "a b/*.t?t");
        assert_eq!(w[2].glob.as_deref(), Some("a b/*.t\\?t"));
        assert_eq!(w[3].glob.as_deref(), Some("\\[x\\][0-9]"));
    }

    #[test]
    fn globs_match_like_a_shell() {
        for (pattern, name) in [
            ("*.txt", "a.txt"),
            ("*", "x"),
            (".*", ".hidden"),
            ("a[0-9]?", "a5x"),
            ("[!a]*", "bcd"),
            ("[^a]*", "bcd"),
            ("\\*", "*"),
            ("[]]", "]"),
            ("[a-]", "-"),
            ("*a*b*", "xxaxxbxx"),
            ("[", "["),
        ] {
            assert!(glob_match(pattern, name), "{pattern} {name}");
        }
        for (pattern, name) in [
            ("*", ".hidden"),
            ("*.txt", "a.txt.gz"),
            ("\\*", "a"),
            ("[!a]*", "abc"),
            ("a?", "a"),
            ("[a-c]", "d"),
            ("", "a"),
        ] {
            assert!(!glob_match(pattern, name), "{pattern} {name}");
        }
    }

    #[test]
    fn long_patterns_are_refused_and_unclosed_brackets_stay_cheap() {
        let too_long = "a".repeat(MAX_PATTERN + 1);
        assert!(Glob::new(&too_long).is_none());
        // The worst a pattern within the limit does: a thousand unclosed brackets after a star.
        let brackets = format!("*{}", "[".repeat(MAX_PATTERN - 1));
        let glob = Glob::new(&brackets).unwrap();
        assert!(!glob.matches(&"x".repeat(255)));
        assert!(glob.matches(&format!("x{}", "[".repeat(MAX_PATTERN - 1))));
    }

    proptest! {
        #[test]
        fn single_quoting_round_trips(parts in prop::collection::vec("[^']{0,12}", 1..5)) {
            let line = parts.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(" ");
            let words = split(&line).unwrap();
            prop_assert!(words.iter().all(|w| w.glob.is_none()));
            prop_assert_eq!(words.into_iter().map(|w| w.text).collect::<Vec<_>>(), parts);
        }

        #[test]
        fn an_escaped_name_matches_only_itself(name in "[a-z*?\\[\\].]{1,8}", other in "[a-z*?.]{1,8}") {
            // The pattern of a partly quoted word: its quoted wildcards are escaped.
            let word = split(&format!("'{name}'*")).unwrap().remove(0);
            let pattern = word.glob.unwrap();
            let literal = pattern.strip_suffix('*').unwrap();
            prop_assert_eq!(glob_match(literal, &other), name == other);
        }

        #[test]
        fn glob_match_never_panics(pattern in ".{0,16}", name in ".{0,16}") {
            let _ = glob_match(&pattern, &name);
        }

        #[test]
        fn never_panics(line in ".{0,64}") {
            let _ = split(&line);
        }
    }
}
