//! sendmail(8) command-line flags, as OpenSMTPD's enqueue accepts them: the few that mean
//! something to mxd, and the many that callers (cron, security(8), mail(1), scripts written
//! for Sendmail or Postfix) pass out of habit and that are accepted and ignored.
//!
//! Meaningful: `-t`, `-f`/`-r sender`, `-F fullname`, `-v`, `-C file` (mxd's configuration),
//! `-bi` (act as newaliases), `-bp` (act as mailq). Ignored, with their argument if they take
//! one: `-A x -B x -b x -E[x] -e x -i -J[x] -L x -m -N x -o x -p x -R x -S -V x -x`
//! (so `-oi`, `-odi`, `-oem`, `-B 8BITMIME`, `-N never` all pass). `-q` (run the queue) is
//! refused, as by enqueue. Never panics.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

/// What sendmail was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read a message from stdin and submit it (the default, `-bm`).
    Send,
    /// `-bi`: rebuild the aliases, i.e. newaliases.
    Newaliases,
    /// `-bp`: list the queue, i.e. mailq.
    Mailq,
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendmailArgs {
    pub mode: Mode,
    /// `-C file`: the configuration to read the spool and mail name from.
    pub conf: Option<PathBuf>,
    /// `-f` / `-r`: envelope sender.
    pub sender: Option<String>,
    /// `-F`: full name for an added From: header.
    pub fullname: Option<String>,
    /// `-t`: recipients from the header as well.
    pub extract: bool,
    /// `-v`: print the SMTP dialog.
    pub verbose: bool,
    /// Recipients given as arguments.
    pub recipients: Vec<String>,
}

/// A command line sendmail cannot run; the text goes to stderr with the usage line.
#[derive(Debug)]
pub enum ArgsError {
    /// An unknown flag, a missing argument, a non-UTF-8 value…
    Usage(lexopt::Error),
    /// `-q`: processing the queue from the command line is not supported (see mxctl schedule).
    QueueRun,
}

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgsError::Usage(e) => e.fmt(f),
            ArgsError::QueueRun => f.write_str("-q is not supported; use \"mxctl schedule all\""),
        }
    }
}

impl std::error::Error for ArgsError {}

impl From<lexopt::Error> for ArgsError {
    fn from(e: lexopt::Error) -> Self {
        ArgsError::Usage(e)
    }
}

/// The usage line, OpenSMTPD's.
pub const USAGE: &str = "usage: sendmail [-tv] [-C file] [-f from] [-F name] to ...";

/// Parses sendmail's arguments (without argv[0]).
pub fn parse_sendmail_args<I>(args: I) -> Result<SendmailArgs, ArgsError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut out = SendmailArgs {
        mode: Mode::Send,
        conf: None,
        sender: None,
        fullname: None,
        extract: false,
        verbose: false,
        recipients: Vec::new(),
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Short('t') => out.extract = true,
            Short('v') => out.verbose = true,
            Short('f' | 'r') => out.sender = Some(p.value()?.string()?),
            Short('F') => out.fullname = Some(p.value()?.string()?),
            Short('C') => out.conf = Some(PathBuf::from(p.value()?)),
            Short('b') => match p.value()?.string()?.as_str() {
                "i" => out.mode = Mode::Newaliases,
                "p" => out.mode = Mode::Mailq,
                _ => {}
            },
            Short('q') => return Err(ArgsError::QueueRun),
            Short('A' | 'B' | 'e' | 'L' | 'N' | 'o' | 'p' | 'R' | 'V') => drop(p.value()?),
            Short('E' | 'J') => drop(p.optional_value()),
            Short('i' | 'm' | 'S' | 'x') => {}
            Value(v) => out.recipients.push(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<SendmailArgs, ArgsError> {
        parse_sendmail_args(line.split_whitespace())
    }

    #[test]
    fn accepted_command_lines() {
        // (command line, extract, sender, fullname, recipients, mode)
        type Case = (&'static str, bool, Option<&'static str>, Option<&'static str>, &'static [&'static str], Mode);
        let cases: &[Case] = &[
            ("joseph", false, None, None, &["joseph"], Mode::Send),
            ("-t", true, None, None, &[], Mode::Send),
            // cron(8) on OpenBSD: -FCronDaemon -odi -oem -oi -t
            ("-FCronDaemon -odi -oem -oi -t", true, None, Some("CronDaemon"), &[], Mode::Send),
            ("-f root -F Root -i a b", false, Some("root"), Some("Root"), &["a", "b"], Mode::Send),
            ("-froot@h -ti -- -x", true, Some("root@h"), None, &["-x"], Mode::Send),
            (
                "-r <> -B 8BITMIME -N never -R full -V env -bm -v -S -E -m -x a",
                false,
                Some("<>"),
                None,
                &["a"],
                Mode::Send,
            ),
            ("-bi", false, None, None, &[], Mode::Newaliases),
            ("-bp", false, None, None, &[], Mode::Mailq),
        ];
        for (line, extract, sender, fullname, rcpts, mode) in cases {
            let a = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(a.extract, *extract, "{line}");
            assert_eq!(a.sender.as_deref(), *sender, "{line}");
            assert_eq!(a.fullname.as_deref(), *fullname, "{line}");
            assert_eq!(a.recipients, *rcpts, "{line}");
            assert_eq!(a.mode, *mode, "{line}");
        }
        let c = parse("-C /etc/mxd/x.conf a").unwrap();
        assert_eq!(c.conf, Some(PathBuf::from("/etc/mxd/x.conf")));
        assert!(parse("-v a").unwrap().verbose);
    }

    #[test]
    fn refused_command_lines() {
        for line in ["-q", "-q30m", "-Z", "-f", "--long", "-F"] {
            assert!(parse(line).is_err(), "{line} accepted");
        }
        assert!(matches!(parse("-q"), Err(ArgsError::QueueRun)));
    }
}
