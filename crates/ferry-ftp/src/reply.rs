//! FTP reply codes (RFC 959 section 4.2, RFC 2228, RFC 2428, RFC 3659, RFC 4217) and their wire format.

/// A reply code, by its meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    RestartMarker = 110,
    DataAlreadyOpen = 125,
    FileStatusOk = 150,
    Ok = 200,
    NotNeeded = 202,
    SystemStatus = 211,
    DirectoryStatus = 212,
    FileStatus = 213,
    Help = 214,
    SystemType = 215,
    Ready = 220,
    Closing = 221,
    DataOpenNoTransfer = 225,
    ClosingData = 226,
    EnteringPassive = 227,
    EnteringExtendedPassive = 229,
    LoggedIn = 230,
    AuthOk = 234,
    FileActionOk = 250,
    PathCreated = 257,
    NeedPassword = 331,
    NeedAccount = 332,
    PendingFurtherInfo = 350,
    ServiceUnavailable = 421,
    CantOpenData = 425,
    TransferAborted = 426,
    FileBusy = 450,
    LocalError = 451,
    InsufficientStorage = 452,
    SyntaxError = 500,
    ArgumentError = 501,
    NotImplemented = 502,
    BadSequence = 503,
    ParameterNotImplemented = 504,
    DataProtectionRequired = 521,
    UnsupportedNetworkProtocol = 522,
    NotLoggedIn = 530,
    PolicyDenied = 534,
    ProtLevelNotSupported = 536,
    FileUnavailable = 550,
    PageTypeUnknown = 551,
    QuotaExceeded = 552,
    BadFileName = 553,
    InvalidRestart = 554,
}

impl Code {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

/// A reply: one line, or several (`code-first`, ..., `code last`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: Code,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: Code, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply: the first and last lines carry the code, the ones between are indented by a space.
    pub fn multi(code: Code, lines: Vec<String>) -> Self {
        Reply { code, lines }
    }

    /// The reply as sent: CRLF line endings, CR/LF inside the text replaced so that a file name cannot forge a
    /// reply line.
    pub fn to_wire(&self) -> String {
        let code = self.code.as_u16();
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        match self.lines.as_slice() {
            [] => format!("{code} \r\n"),
            [only] => format!("{code} {}\r\n", clean(only)),
            [first, middle @ .., last] => {
                let mut out = format!("{code}-{}\r\n", clean(first));
                for line in middle {
                    out.push(' ');
                    out.push_str(&clean(line));
                    out.push_str("\r\n");
                }
                out.push_str(&format!("{code} {}\r\n", clean(last)));
                out
            }
        }
    }
}

/// Quotes a path for a 257 reply (RFC 959 appendix II: embedded quotes are doubled).
pub fn quote_path(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_wire_format() {
        assert_eq!(Reply::new(Code::Ok, "ok").to_wire(), "200 ok\r\n");
        let r = Reply::multi(
            Code::SystemStatus,
            vec!["Features:".into(), "UTF8".into(), "End".into()],
        );
        assert_eq!(r.to_wire(), "211-Features:\r\n UTF8\r\n211 End\r\n");
    }

    #[test]
    fn newlines_in_text_cannot_forge_replies() {
        assert_eq!(
            Reply::new(Code::FileUnavailable, "a\r\n230 x").to_wire(),
            "550 a  230 x\r\n"
        );
        assert_eq!(quote_path("/a\"b"), "\"/a\"\"b\"");
    }
}
