//! One command line → `Command`, borrowing from the line: parsing allocates nothing (the
//! session copies the addresses it keeps). Verbs are case-insensitive (RFC 5321 §2.4).
//! Untrusted input; never panics.

use super::address::{self, AddrError};
use super::reply::{self, Reply};

#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a str),
    Ehlo(&'a str),
    /// Path contents (between the brackets, unchecked) and the parameter text.
    Mail {
        path: &'a [u8],
        params: &'a [u8],
    },
    Rcpt {
        path: &'a [u8],
        params: &'a [u8],
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    /// The arguments: mechanism and optional initial response.
    Auth(&'a [u8]),
    Bdat,
}

/// What was wrong with a command line; each maps to exactly one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    Unknown,
    SyntaxHelo,
    SyntaxMail,
    SyntaxRcpt,
    /// A command that takes no argument got one.
    NoArgument,
    BadParam,
    Sender(AddrError),
    Recipient(AddrError),
}

impl CommandError {
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => reply::UNKNOWN,
            CommandError::SyntaxHelo => reply::SYNTAX_HELO,
            CommandError::SyntaxMail | CommandError::Sender(AddrError::NoBrackets) => reply::SYNTAX_MAIL,
            CommandError::SyntaxRcpt | CommandError::Recipient(AddrError::NoBrackets) => reply::SYNTAX_RCPT,
            CommandError::NoArgument => reply::SYNTAX_NOARG,
            CommandError::BadParam => reply::BAD_PARAM,
            CommandError::Sender(AddrError::EightBit) | CommandError::Recipient(AddrError::EightBit) => {
                reply::NEED_SMTPUTF8
            }
            CommandError::Sender(_) => reply::BAD_SENDER,
            CommandError::Recipient(_) => reply::BAD_RCPT,
        }
    }
}

/// Parses a line without its CRLF.
pub fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let (verb, arg) = match memchr::memchr(b' ', line) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    let no_arg =
        |cmd: Command<'static>| if arg.iter().all(|b| *b == b' ') { Ok(cmd) } else { Err(CommandError::NoArgument) };
    match verb.to_ascii_uppercase().as_slice() {
        b"HELO" => helo_arg(arg).map(Command::Helo),
        b"EHLO" => helo_arg(arg).map(Command::Ehlo),
        b"MAIL" => {
            path_arg(arg, b"FROM:").map(|(path, params)| Command::Mail { path, params }).ok_or(CommandError::SyntaxMail)
        }
        b"RCPT" => {
            path_arg(arg, b"TO:").map(|(path, params)| Command::Rcpt { path, params }).ok_or(CommandError::SyntaxRcpt)
        }
        b"DATA" => no_arg(Command::Data),
        b"RSET" => no_arg(Command::Rset),
        b"QUIT" => no_arg(Command::Quit),
        b"STARTTLS" => no_arg(Command::StartTls),
        b"NOOP" => Ok(Command::Noop),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Ok(Command::Expn),
        b"HELP" => Ok(Command::Help),
        b"AUTH" => Ok(Command::Auth(arg)),
        b"BDAT" => Ok(Command::Bdat),
        _ => Err(CommandError::Unknown),
    }
}

/// A HELO/EHLO name: one token of printable ASCII (a domain or an address literal).
fn helo_arg(arg: &[u8]) -> Result<&str, CommandError> {
    let arg = std::str::from_utf8(arg).map_err(|_| CommandError::SyntaxHelo)?.trim_matches(' ');
    let ok = !arg.is_empty() && arg.len() <= 255 && arg.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(arg)
    } else {
        Err(CommandError::SyntaxHelo)
    }
}

/// "FROM:<path> params" / "TO:<path> params"; a space after the colon is tolerated, as
/// every MTA does.
fn path_arg<'a>(arg: &'a [u8], keyword: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    address::split_path(&arg[keyword.len()..]).ok()
}

/// MAIL FROM parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

pub fn mail_params(params: &[u8]) -> Result<MailParams, CommandError> {
    let mut out = MailParams::default();
    for p in params.split(|b| *b == b' ').filter(|p| !p.is_empty()) {
        let (key, value) = match memchr::memchr(b'=', p) {
            Some(i) => (&p[..i], Some(&p[i + 1..])),
            None => (p, None),
        };
        match (key.to_ascii_uppercase().as_slice(), value) {
            (b"SIZE", Some(v)) => {
                let v = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()).ok_or(CommandError::BadParam)?;
                out.size = Some(v);
            }
            (b"BODY", Some(v)) if v.eq_ignore_ascii_case(b"8BITMIME") => out.eight_bit = true,
            (b"BODY", Some(v)) if v.eq_ignore_ascii_case(b"7BIT") => out.eight_bit = false,
            (b"SMTPUTF8", None) => out.smtputf8 = true,
            _ => return Err(CommandError::BadParam),
        }
    }
    Ok(out)
}

/// RCPT TO parameters: none are advertised, so any is refused (RFC 5321 §4.1.1.11).
pub fn rcpt_params(params: &[u8]) -> Result<(), CommandError> {
    if params.iter().all(|b| *b == b' ') {
        Ok(())
    } else {
        Err(CommandError::BadParam)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let cases: &[(&[u8], Result<Command<'_>, CommandError>)] = &[
            (b"HELO client.test", Ok(Command::Helo("client.test"))),
            (b"ehlo [127.0.0.1]", Ok(Command::Ehlo("[127.0.0.1]"))),
            (b"EHLO", Err(CommandError::SyntaxHelo)),
            (b"EHLO a b", Err(CommandError::SyntaxHelo)),
            (b"EHLO a\x01", Err(CommandError::SyntaxHelo)),
            (b"MAIL FROM:<a@b.c>", Ok(Command::Mail { path: b"a@b.c", params: b"" })),
            (b"mail from: <a@b.c> SIZE=10", Ok(Command::Mail { path: b"a@b.c", params: b"SIZE=10" })),
            (b"MAIL FROM:<>", Ok(Command::Mail { path: b"", params: b"" })),
            (b"MAIL TO:<a@b.c>", Err(CommandError::SyntaxMail)),
            (b"MAIL FROM:a@b.c", Err(CommandError::SyntaxMail)),
            (b"MAIL", Err(CommandError::SyntaxMail)),
            (b"RCPT TO:<x@y.z>", Ok(Command::Rcpt { path: b"x@y.z", params: b"" })),
            (b"RCPT FROM:<x@y.z>", Err(CommandError::SyntaxRcpt)),
            (b"DATA", Ok(Command::Data)),
            (b"DATA x", Err(CommandError::NoArgument)),
            (b"noop anything", Ok(Command::Noop)),
            (b"QUIT", Ok(Command::Quit)),
            (b"STARTTLS", Ok(Command::StartTls)),
            (b"AUTH PLAIN AGpvZQBzZWNyZXQ=", Ok(Command::Auth(b"PLAIN AGpvZQBzZWNyZXQ="))),
            (b"auth", Ok(Command::Auth(b""))),
            (b"GET / HTTP/1.1", Err(CommandError::Unknown)),
            (b"", Err(CommandError::Unknown)),
            (b"\xff\xfe", Err(CommandError::Unknown)),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(line), want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn params() {
        assert_eq!(
            mail_params(b"SIZE=100 BODY=8BITMIME SMTPUTF8"),
            Ok(MailParams { size: Some(100), eight_bit: true, smtputf8: true })
        );
        assert_eq!(mail_params(b"body=7bit"), Ok(MailParams::default()));
        assert_eq!(mail_params(b"SIZE=abc"), Err(CommandError::BadParam));
        assert_eq!(mail_params(b"FOO=1"), Err(CommandError::BadParam));
        assert_eq!(mail_params(b"SIZE=99999999999999999999999"), Err(CommandError::BadParam));
        assert_eq!(rcpt_params(b""), Ok(()));
        assert_eq!(rcpt_params(b"NOTIFY=NEVER"), Err(CommandError::BadParam));
    }
}
