//! mxctl: the control tool, and sendmail(8), send-mail, mailq(8), newaliases(8) and
//! makemap(8) when invoked under those names (a symlink or mailer.conf(5) entry), as
//! OpenSMTPD's smtpctl does.
//!
//! ```text
//! mxctl [-f file] show queue | show stats | schedule all|ID | remove all|ID | reload
//!                 | update table NAME
//! mxctl [-f file] sendmail [sendmail flags] [recipient ...]
//! mxctl encrypt [password]
//! ```
//! The configuration (-f, -C for sendmail, else $MXD_CONF, else /etc/mxd/smtpd.conf) is read
//! only for its `spool` and `hostname` lines. Exit statuses follow sysexits(3).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mxd::auth::Secret;
use mxd::control::{self, ControlError, Verb};
use mxd::submit::{self, args, conf, exit, Submission, Submitter};

const USAGE: &str = "usage: mxctl [-f file] show queue | show stats | schedule all|ID | remove all|ID\n\
                     \x20      | reload | update table NAME\n\
                     \x20      mxctl [-f file] sendmail [-tv] [-f from] [-F name] to ...\n\
                     \x20      mxctl makemap [-U] [-o dbfile] [-t aliases|set] file\n\
                     \x20      mxctl encrypt [password]";

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let name = argv.next().map(|a| program_name(&a)).unwrap_or_default();
    let rest: Vec<OsString> = argv.collect();
    ExitCode::from(match name.as_str() {
        "sendmail" | "send-mail" => sendmail(rest, None),
        "mailq" => run_verb(&conf::conf_path(None), &Verb::ShowQueue),
        "newaliases" => run_verb(&conf::conf_path(None), &Verb::UpdateAliases),
        "makemap" => makemap(rest),
        _ => mxctl(rest),
    })
}

/// The basename of argv[0]: which personality to take.
fn program_name(arg0: &OsString) -> String {
    Path::new(arg0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `mxctl [-f file] VERB…`: the flag, then the verb words.
fn mxctl(rest: Vec<OsString>) -> u8 {
    let mut conf_flag = None;
    let mut words: Vec<String> = Vec::new();
    let mut iter = rest.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        if words.is_empty() && text == "-f" {
            match iter.next() {
                Some(path) => conf_flag = Some(PathBuf::from(path)),
                None => return usage(),
            }
        } else if words.is_empty() && text == "sendmail" {
            return sendmail(iter.collect(), conf_flag);
        } else if words.is_empty() && text == "makemap" {
            return makemap(iter.collect());
        } else if words.is_empty() && text == "encrypt" {
            return encrypt(iter.collect());
        } else {
            words.push(text);
        }
    }
    match Verb::parse(&words.join(" ")) {
        Ok(verb) => run_verb(&conf::conf_path(conf_flag), &verb),
        Err(e) => {
            eprintln!("mxctl: {e}");
            usage()
        }
    }
}

fn usage() -> u8 {
    eprintln!("{USAGE}");
    exit::USAGE
}

/// Sends one control request and prints its output.
fn run_verb(conf_path: &Path, verb: &Verb) -> u8 {
    let spool = conf::spool_from_conf(conf_path);
    match control::request(&spool, verb) {
        Ok(output) => {
            let mut out = std::io::stdout().lock();
            for line in output {
                let _ = writeln!(out, "{line}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("mxctl: {e}");
            match e {
                ControlError::Unreachable { .. } => exit::UNAVAILABLE,
                ControlError::Refused { kind: control::RefusalKind::Denied, .. } => exit::NOPERM,
                _ => 1,
            }
        }
    }
}

/// sendmail(8): flags, then submission or the offline directory.
fn sendmail(rest: Vec<OsString>, conf_flag: Option<PathBuf>) -> u8 {
    let mut a = match args::parse_sendmail_args(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sendmail: {e}\n{}", args::USAGE);
            return exit::USAGE;
        }
    };
    a.conf = a.conf.or(conf_flag);
    let conf_path = conf::conf_path(a.conf.clone());
    match a.mode {
        args::Mode::Newaliases => return run_verb(&conf_path, &Verb::UpdateAliases),
        args::Mode::Mailq => return run_verb(&conf_path, &Verb::ShowQueue),
        args::Mode::Send => {}
    }
    let mut stdout = std::io::stdout();
    let trace: Option<&mut dyn Write> = if a.verbose { Some(&mut stdout) } else { None };
    match submit::sendmail(&a, &Submitter::current(), &mut std::io::stdin().lock(), trace) {
        Ok(Submission::Submitted) => exit::OK,
        Ok(Submission::Offline(path)) => {
            if a.verbose {
                println!(
                    "mail daemon not running or deferring the message; saved in {}, it takes it in within a minute of running",
                    path.display()
                );
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("sendmail: {e}");
            e.exit_code()
        }
    }
}

/// makemap(8): `makemap [-d hash] [-t aliases|set] [-o dbfile] [-U] FILE` builds FILE.db
/// (or dbfile) for a `db:` table, in the Berkeley DB 1.85 hash format OpenBSD's makemap
/// writes; `-U` prints a db file's entries instead.
fn makemap(rest: Vec<OsString>) -> u8 {
    let mut args = rest.into_iter().map(|a| a.to_string_lossy().into_owned());
    let (mut out, mut dump, mut source) = (None, false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-U" => dump = true,
            // The format is read from the file itself: -t only names what makemap checks.
            "-t" if matches!(args.next().as_deref(), Some("aliases" | "set")) => {}
            "-d" if args.next().as_deref() == Some("hash") => {}
            "-o" => out = args.next().map(PathBuf::from),
            _ if source.is_none() && !a.starts_with('-') => source = Some(PathBuf::from(a)),
            _ => {
                eprintln!("usage: makemap [-U] [-d hash] [-o dbfile] [-t aliases|set] file");
                return exit::USAGE;
            }
        }
    }
    let Some(source) = source else {
        eprintln!("usage: makemap [-U] [-d hash] [-o dbfile] [-t aliases|set] file");
        return exit::USAGE;
    };
    if dump {
        return match mxd::table::db::read(&source) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    let text = |b: &[u8]| String::from_utf8_lossy(b.strip_suffix(b"\0").unwrap_or(b)).into_owned();
                    println!("{}\t{}", text(&k), text(&v));
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("makemap: {}: {e}", source.display());
                exit::DATAERR
            }
        };
    }
    let out = out.unwrap_or_else(|| {
        let mut name = source.clone().into_os_string();
        name.push(".db");
        PathBuf::from(name)
    });
    match mxd::table::db::makemap(&source, &out) {
        Ok(_) => exit::OK,
        Err(e) => {
            eprintln!("makemap: {e}");
            exit::DATAERR
        }
    }
}

/// `encrypt [password]`, as `smtpctl encrypt`: a bcrypt `$2b$` hash for an auth table, of
/// the argument, or else of each line of stdin (one hash per line, as encrypt(1) does).
fn encrypt(args: Vec<OsString>) -> u8 {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let input = match args.as_slice() {
        [] => {
            let mut buf = Vec::with_capacity(4096);
            if let Err(e) = std::io::stdin().lock().read_to_end(&mut buf) {
                eprintln!("mxctl: encrypt: cannot read stdin: {e}");
                return exit::IOERR;
            }
            Secret::new(buf)
        }
        [one] => Secret::new(one.as_bytes().to_vec()),
        _ => return usage(),
    };
    let passwords: Vec<&[u8]> = if args.is_empty() {
        let text = input.expose();
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if text.is_empty() {
            return exit::OK;
        }
        text.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect()
    } else {
        vec![input.expose()]
    };
    let mut out = std::io::stdout().lock();
    for password in passwords {
        match mxd::auth::hash::encrypt(password) {
            Ok(hash) => {
                let _ = writeln!(out, "{hash}");
            }
            Err(e) => {
                eprintln!("mxctl: encrypt: {e}");
                return exit::SOFTWARE;
            }
        }
    }
    exit::OK
}
