//! Names on disk that are not UTF-8, as virtual paths. A local file name is any bytes but `/` and NUL, and names
//! left by other servers or clients (Latin-1 `caf\xe9.txt`) need not be UTF-8, while virtual paths are `String`s.
//! The bytes are decoded reversibly, with the scheme known as OPTU-8 (MirBSD): each byte that is not part of a
//! valid UTF-8 character is shown as the private-use character U+EF00 + byte (U+EF80..=U+EFFF), and so are the
//! bytes of a character already in that range on disk, so that every escape stands for a byte.
//!
//! Virtual paths thus stay `String`s, and such a name is listed, and used in every command, by every client and
//! protocol, as any other. An escape only ever stands for a byte of 0x80 or more, never for `/`, `.`, NUL, CR or LF,
//! so confinement and the checks on names see the same path components they would without it. Only
//! [canonical](to_disk) strings are accepted back: escapes spelling valid UTF-8 would be a second name for a file
//! whose name is UTF-8, and reach it past the permission rules written for its name.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The name or path `name`, read from disk, as a string: borrowed when it is UTF-8 and has no character in
/// U+EF80..=U+EFFF (the common case), otherwise with each byte that is not part of a valid UTF-8 character, and
/// each byte of a character in that range, replaced by the character U+EF00 + byte.
pub fn from_disk(name: &OsStr) -> Cow<'_, str> {
    let bytes = name.as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) if !has_escapes(s) => Cow::Borrowed(s),
        _ => Cow::Owned(escape(bytes)),
    }
}

/// The name or path `path` as it is on disk, each character in U+EF80..=U+EFFF back to the byte it stands for:
/// borrowed when there is none. A path that [`from_disk`] would not give back as it is, one with escapes that spell
/// a UTF-8 character, is refused with `InvalidFilename`.
pub fn to_disk(path: &str) -> io::Result<Cow<'_, OsStr>> {
    if !has_escapes(path) {
        return Ok(Cow::Borrowed(OsStr::new(path)));
    }
    let mut bytes = Vec::with_capacity(path.len());
    for c in path.chars() {
        match escaped_byte(c) {
            Some(b) => bytes.push(b),
            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    let name = OsString::from_vec(bytes);
    if from_disk(&name) != path {
        return Err(io::Error::new(
            io::ErrorKind::InvalidFilename,
            "escaped bytes that spell UTF-8",
        ));
    }
    Ok(Cow::Owned(name))
}

/// Whether `s` has a character in U+EF80..=U+EFFF, which UTF-8 encodes as EE BE xx or EE BF xx.
fn has_escapes(s: &str) -> bool {
    s.as_bytes()
        .windows(2)
        .any(|pair| pair[0] == 0xEE && pair[1] >= 0xBE)
}

/// The byte the character `c` stands for, if it is an escape.
fn escaped_byte(c: char) -> Option<u8> {
    match u32::from(c) {
        c @ 0xEF80..=0xEFFF => u8::try_from(c - 0xEF00).ok(),
        _ => None,
    }
}

/// The escape standing for `byte` (0x80 or more: a byte below is always a character of its own).
fn escape_of(byte: u8) -> char {
    debug_assert!(byte >= 0x80);
    char::from_u32(0xEF00 + u32::from(byte)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if escaped_byte(c).is_some() {
                out.extend(c.encode_utf8(&mut [0; 4]).bytes().map(escape_of));
            } else {
                out.push(c);
            }
        }
        out.extend(chunk.invalid().iter().copied().map(escape_of));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn disk(bytes: &[u8]) -> &OsStr {
        OsStr::from_bytes(bytes)
    }

    fn ascii(bytes: &[u8]) -> Vec<u8> {
        bytes.iter().copied().filter(u8::is_ascii).collect()
    }

    #[test]
    fn escapes_stand_for_the_bytes_0x80_to_0xff() {
        for b in 0x80..=0xFF {
            assert_eq!(escaped_byte(escape_of(b)), Some(b));
        }
        for c in ['\u{EF7F}', '\u{F000}', 'a', '\u{80}', '\u{FF}'] {
            assert_eq!(escaped_byte(c), None);
        }
    }

    #[test]
    fn utf8_names_are_borrowed_both_ways() {
        for name in [
            "",
            "file.txt",
            "caf\u{e9}",
            "\u{EF7F}\u{F000}",
            "a/b/\u{1F600}",
        ] {
            assert!(matches!(from_disk(disk(name.as_bytes())), Cow::Borrowed(n) if n == name));
            assert!(
                matches!(to_disk(name).unwrap(), Cow::Borrowed(n) if n.as_bytes() == name.as_bytes())
            );
        }
    }

    #[test]
    fn invalid_bytes_are_escaped_one_by_one() {
        assert_eq!(from_disk(disk(b"caf\xe9.txt")), "caf\u{EFE9}.txt");
        // A truncated sequence, then a lone continuation byte, each next to valid characters.
        assert_eq!(
            from_disk(disk(b"\xe2\x82x\x80\xc3\xa9\xff")),
            "\u{EFE2}\u{EF82}x\u{EF80}\u{e9}\u{EFFF}"
        );
        assert_eq!(&*to_disk("caf\u{EFE9}.txt").unwrap(), disk(b"caf\xe9.txt"));
    }

    #[test]
    fn characters_of_the_escape_range_on_disk_are_escaped_too() {
        // U+EFE9 is EE BF A9 on disk.
        assert_eq!(
            from_disk(disk("caf\u{EFE9}".as_bytes())),
            "caf\u{EFEE}\u{EFBF}\u{EFA9}"
        );
        assert_eq!(
            &*to_disk("caf\u{EFEE}\u{EFBF}\u{EFA9}").unwrap(),
            disk("caf\u{EFE9}".as_bytes())
        );
        // Written directly, it would name the file caf\xe9, not this one.
        assert_eq!(&*to_disk("caf\u{EFE9}").unwrap(), disk(b"caf\xe9"));
    }

    #[test]
    fn escapes_spelling_utf8_are_refused() {
        // C3 A9 is "é": the same file as "caf\u{e9}", under another name.
        for alias in [
            "caf\u{EFC3}\u{EFA9}",
            "\u{EFE2}\u{EF82}\u{EFAC}",
            "d/\u{EFC3}\u{EFA9}/f",
        ] {
            let e = to_disk(alias).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidFilename, "{alias:?}");
        }
    }

    proptest! {
        #[test]
        fn every_disk_name_comes_back_as_it_was(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let name = from_disk(disk(&bytes));
            let back = to_disk(&name).unwrap();
            prop_assert_eq!(back.as_bytes(), &bytes[..]);
        }

        #[test]
        fn ascii_bytes_are_never_escaped(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            // Every ASCII byte (`/`, `.`, NUL, CR, LF among them) is left as the character it is.
            let name = from_disk(disk(&bytes));
            prop_assert_eq!(ascii(name.as_bytes()), ascii(&bytes));
        }

        #[test]
        fn strings_are_refused_or_canonical(s in prop_oneof![
            any::<String>(),
            "([a/.\u{e9}\u{20ac}\u{EF7F}\u{F000}]|[\u{EF80}-\u{EFFF}]){0,12}",
        ]) {
            if let Ok(bytes) = to_disk(&s) {
                prop_assert_eq!(from_disk(&bytes), s.as_str());
                // Escapes give bytes of 0x80 or more only: the ASCII of the path is the string's own.
                prop_assert_eq!(ascii(bytes.as_bytes()), ascii(s.as_bytes()));
            }
        }

        #[test]
        fn strings_without_escapes_are_canonical(s in any::<String>()) {
            prop_assume!(!s.chars().any(|c| escaped_byte(c).is_some()));
            let bytes = to_disk(&s).unwrap();
            prop_assert!(matches!(bytes, Cow::Borrowed(_)));
            prop_assert_eq!(from_disk(&bytes), s.as_str());
        }
    }
}
