//! Splits an SSH exec command line into words the way a POSIX shell would for simple commands: whitespace
//! separates words, single quotes keep everything literally, double quotes and backslashes escape. There is no
//! shell behind it, so anything that would make a shell do more (variables, globs, pipes, redirections,
//! command substitution, several commands) is refused instead of being misread.

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

/// Splits `line` into words.
pub fn split(line: &str) -> Result<Vec<String>, SplitError> {
    if line.len() > MAX_COMMAND_LEN {
        return Err(SplitError::TooLong);
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SplitError::UnterminatedQuote),
                        },
                        Some(c @ ('$' | '`')) => return Err(SplitError::NeedsShell(c)),
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err(SplitError::UnterminatedQuote),
            },
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[' => {
                return Err(SplitError::NeedsShell(c));
            }
            '#' if !in_word => break,
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap()
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
            "ls *.txt",
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

    proptest! {
        #[test]
        fn single_quoting_round_trips(parts in prop::collection::vec("[^']{0,12}", 1..5)) {
            let line = parts.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(split(&line).unwrap(), parts);
        }

        #[test]
        fn never_panics(line in ".{0,64}") {
            let _ = split(&line);
        }
    }
}
