//! The blocking SMTP client sendmail uses to hand a prepared message to the running daemon
//! over its unix socket (`SPOOL/mxd.sock`): EHLO, MAIL, RCPT…, DATA with CRLF line endings
//! and dot-stuffing (RFC 5321 §4.5.2), then QUIT. No pipelining: one command, one reply, as
//! OpenSMTPD's enqueue does.
//!
//! Guarantee: [`submit`] returns `Ok` only after the 250 that answers the final dot, i.e.
//! once the daemon has durably accepted the message. The caller sends nothing about who it
//! is: the daemon takes the user from the socket's peer credentials.
//!
//! The daemon's replies are bounded (line length, lines per reply); never panics.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::Prepared;

pub use crate::spool::SUBMIT_SOCKET;
/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; allow some slack.
const MAX_REPLY_LINE: u64 = 2048;
const MAX_REPLY_LINES: usize = 100;
/// RFC 5321 §4.5.3.2: 5 minutes per command, 10 minutes for the final dot.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);

/// One SMTP reply: its code and its text lines (without the code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// Why a submission did not end with the final 250.
#[derive(Debug)]
pub enum SubmitError {
    /// The socket could not be reached (absent, refused): the daemon is not running.
    /// Nothing was sent; the message belongs in the offline directory.
    Unreachable(io::Error),
    /// The daemon turned the session away at its greeting with a 4xx (e.g. shutting down).
    /// Nothing was sent; handled like [`SubmitError::Unreachable`].
    Busy(Reply),
    /// The connection broke or timed out before the final reply; the daemon may or may not
    /// have the message. Writing it offline risks one duplicate, never a loss.
    Lost(io::Error),
    /// The daemon answered something unparsable; handled like [`SubmitError::Lost`].
    Protocol(String),
    /// The daemon refused at `stage` ("MAIL FROM", "RCPT TO", "DATA", "end of data"…).
    Refused { stage: &'static str, reply: Reply },
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Unreachable(e) => write!(f, "cannot reach the mail daemon: {e}"),
            SubmitError::Busy(r) => write!(f, "the mail daemon is busy: {r}"),
            SubmitError::Lost(e) => write!(f, "connection to the mail daemon lost: {e}"),
            SubmitError::Protocol(s) => write!(f, "bad reply from the mail daemon: {s}"),
            SubmitError::Refused { stage, reply } => write!(f, "{stage} refused: {reply}"),
        }
    }
}

impl std::error::Error for SubmitError {}

impl SubmitError {
    /// True when the message belongs in the offline directory: the daemon was down, busy
    /// at the greeting, the session broke before the final reply, or the daemon refused it
    /// for now (4xx: a Maildir it cannot write yet). Only a 5xx is final.
    pub fn goes_offline(&self) -> bool {
        !matches!(self, SubmitError::Refused { reply, .. } if reply.code >= 500)
    }
}

/// A connected client; `trace` receives the dialog for `sendmail -v`.
struct Client<'a> {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    trace: Option<&'a mut dyn Write>,
}

/// Submits `msg` to the daemon listening on `socket`; see the module doc.
pub fn submit(socket: &Path, msg: &Prepared, trace: Option<&mut dyn Write>) -> Result<(), SubmitError> {
    let stream = UnixStream::connect(socket).map_err(SubmitError::Unreachable)?;
    let mut c = Client::new(stream, trace)?;
    // A 4xx greeting (mxd stopping, or out of sessions) means nothing was started: the
    // offline directory is the better place than a failure the caller may ignore.
    match c.expect("greeting", 2) {
        Err(SubmitError::Refused { reply, .. }) if reply.code / 100 == 4 => return Err(SubmitError::Busy(reply)),
        other => other?,
    };
    c.command("EHLO localhost", "EHLO", 2)?;
    c.command(&format!("MAIL FROM:<{}>", msg.sender), "MAIL FROM", 2)?;
    for rcpt in &msg.recipients {
        c.command(&format!("RCPT TO:<{rcpt}>"), "RCPT TO", 2)?;
    }
    c.command("DATA", "DATA", 3)?;
    c.send_body(&msg.message)?;
    c.reader.get_ref().set_read_timeout(Some(DATA_END_TIMEOUT)).map_err(SubmitError::Lost)?;
    c.expect("end of data", 2)?;
    // Accepted: the rest is courtesy, its failure changes nothing.
    let _ = c.command("QUIT", "QUIT", 2);
    Ok(())
}

impl<'a> Client<'a> {
    fn new(stream: UnixStream, trace: Option<&'a mut dyn Write>) -> Result<Self, SubmitError> {
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(SubmitError::Lost)?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT)).map_err(SubmitError::Lost)?;
        let writer = BufWriter::new(stream.try_clone().map_err(SubmitError::Lost)?);
        Ok(Client { reader: BufReader::new(stream), writer, trace })
    }

    fn command(&mut self, line: &str, stage: &'static str, class: u16) -> Result<Reply, SubmitError> {
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, ">>> {line}");
        }
        self.writer.write_all(line.as_bytes()).map_err(SubmitError::Lost)?;
        self.writer.write_all(b"\r\n").map_err(SubmitError::Lost)?;
        self.writer.flush().map_err(SubmitError::Lost)?;
        self.expect(stage, class)
    }

    /// Reads one reply and requires its first digit to be `class` (2 or 3).
    fn expect(&mut self, stage: &'static str, class: u16) -> Result<Reply, SubmitError> {
        let reply = read_reply(&mut self.reader)?;
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, "<<< {reply}");
        }
        if reply.code / 100 != class {
            return Err(SubmitError::Refused { stage, reply });
        }
        Ok(reply)
    }

    /// Writes the message with CRLF endings and dot-stuffing, then the final dot.
    fn send_body(&mut self, message: &[u8]) -> Result<(), SubmitError> {
        let w = &mut self.writer;
        let mut body = message;
        if body.last() == Some(&b'\n') {
            body = body.get(..body.len() - 1).unwrap_or(&[]);
        }
        if !message.is_empty() {
            for line in body.split(|&b| b == b'\n') {
                // RFC 5321 §4.5.2: a line starting with '.' gets one more.
                if line.first() == Some(&b'.') {
                    w.write_all(b".").map_err(SubmitError::Lost)?;
                }
                w.write_all(line).map_err(SubmitError::Lost)?;
                w.write_all(b"\r\n").map_err(SubmitError::Lost)?;
            }
        }
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, ">>> [{} bytes of message]\n>>> .", message.len());
        }
        w.write_all(b".\r\n").map_err(SubmitError::Lost)?;
        w.flush().map_err(SubmitError::Lost)
    }
}

/// Reads one possibly multi-line reply (RFC 5321 §4.2.1), bounded in size.
fn read_reply(reader: &mut impl BufRead) -> Result<Reply, SubmitError> {
    let mut lines = Vec::new();
    loop {
        let mut raw = Vec::new();
        reader.by_ref().take(MAX_REPLY_LINE).read_until(b'\n', &mut raw).map_err(SubmitError::Lost)?;
        if raw.is_empty() {
            return Err(SubmitError::Lost(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")));
        }
        if raw.last() != Some(&b'\n') {
            return Err(SubmitError::Protocol("reply line too long or unterminated".into()));
        }
        let text = String::from_utf8_lossy(&raw);
        let text = text.trim_end_matches(['\r', '\n']);
        let (code, more, rest) = parse_reply_line(text).ok_or_else(|| SubmitError::Protocol(text.to_string()))?;
        lines.push(rest.to_string());
        if !more {
            return Ok(Reply { code, lines });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(SubmitError::Protocol("reply has too many lines".into()));
        }
    }
}

/// `"250-text"` → (250, true, "text"); `"250 text"` or `"250"` → (250, false, …).
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let code = line.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    match line.as_bytes().get(3) {
        None => Some((code, false, "")),
        Some(b'-') => Some((code, true, line.get(4..).unwrap_or(""))),
        Some(b' ') => Some((code, false, line.get(4..).unwrap_or(""))),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        let cases = [
            ("250 ok", Some((250, false, "ok"))),
            ("250-PIPELINING", Some((250, true, "PIPELINING"))),
            ("354", Some((354, false, ""))),
            ("25x ok", None),
            ("250xok", None),
            ("999 no", None),
            ("", None),
            ("é50 x", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_reply_line(line), want, "line {line:?}");
        }
    }

    #[test]
    fn multi_line_replies() {
        let mut input: &[u8] = b"250-first\r\n250-second\r\n250 last\r\n421 next\r\n";
        let r = read_reply(&mut input).unwrap();
        assert_eq!(r, Reply { code: 250, lines: vec!["first".into(), "second".into(), "last".into()] });
        assert_eq!(read_reply(&mut input).unwrap().code, 421);
        assert!(matches!(read_reply(&mut input), Err(SubmitError::Lost(_))));
        let mut junk: &[u8] = b"hello\r\n";
        assert!(matches!(read_reply(&mut junk), Err(SubmitError::Protocol(_))));
        let long = format!("250 {}\r\n", "x".repeat(5000));
        assert!(matches!(read_reply(&mut long.as_bytes()), Err(SubmitError::Protocol(_))));
    }
}
