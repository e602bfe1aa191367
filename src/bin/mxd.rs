//! mxd, the daemon: flags -> configuration -> server. Nothing else lives here.
//!
//! mxd [-dnv] [-f file] [-D name=value] [-u user]
//!
//! The same binary runs every process of the daemon: the parent re-executes it with a
//! hidden `-x ROLE` (and `--parent PID`, `--link FD`, `--stats FD`, `--listener KEY FDS`) for
//! each child, and, as a ~/.forward's or alias's user, with `--append-mbox PATH SENDER` for a
//! `/file`.

use std::path::PathBuf;
use std::process::ExitCode;

use mxd::privsep::{self, sandbox, Role};
use mxd::{config, logging, server, tls};

const DEFAULT_CONF: &str = "/etc/mxd/smtpd.conf";

struct Args {
    foreground: bool,
    check_only: bool,
    verbosity: u8,
    file: PathBuf,
    defines: Vec<(String, String)>,
    user: Option<String>,
    /// Set in a child: its role and what the parent handed it.
    role: Option<Role>,
    parent: u32,
    link: Option<i32>,
    stats: Option<i32>,
    listeners: Vec<(String, Vec<i32>)>,
}

fn usage() -> &'static str {
    "usage: mxd [-dnv] [-f file] [-D name=value] [-u user]"
}

fn parse_args() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut args = Args {
        foreground: false,
        check_only: false,
        verbosity: 0,
        file: std::env::var_os("MXD_CONF").map_or_else(|| PathBuf::from(DEFAULT_CONF), PathBuf::from),
        defines: Vec::new(),
        user: None,
        role: None,
        parent: 0,
        link: None,
        stats: None,
        listeners: Vec::new(),
    };
    let fd = |s: &str| s.parse::<i32>().map_err(|_| format!("bad descriptor {s:?}"));
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('d') => args.foreground = true,
            Short('n') => args.check_only = true,
            Short('v') => args.verbosity = args.verbosity.saturating_add(1),
            Short('f') => args.file = parser.value().map_err(|e| e.to_string())?.into(),
            Short('D') => {
                let def = parser.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())?;
                let (name, value) = def.split_once('=').ok_or_else(|| format!("-D {def}: expected name=value"))?;
                args.defines.push((name.to_owned(), value.to_owned()));
            }
            Short('u') => {
                args.user = Some(parser.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())?)
            }
            Short('x') => {
                let v = parser.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())?;
                args.role = Some(Role::parse(&v).ok_or_else(|| format!("unknown role {v}"))?);
            }
            Long("parent") => {
                args.parent =
                    fd(&parser.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())?)? as u32
            }
            Long("link") => {
                args.link =
                    Some(fd(&parser.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())?)?)
            }
            Long("stats") => {
                args.stats =
                    Some(fd(&parser.value().map_err(|e| e.to_string())?.string().map_err(|e| e.to_string())?)?)
            }
            Long("listener") => {
                let mut vals = parser.values().map_err(|e| e.to_string())?;
                let key = vals.next().and_then(|v| v.into_string().ok()).ok_or("--listener KEY FDS")?;
                let fds = vals.next().and_then(|v| v.into_string().ok()).ok_or("--listener KEY FDS")?;
                let fds = fds.split(',').map(fd).collect::<Result<Vec<_>, _>>()?;
                args.listeners.push((key, fds));
            }
            Short('h') | Long("help") => return Err(usage().to_owned()),
            other => return Err(format!("{}\n{}", other.unexpected(), usage())),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == mxd::forward::APPEND_FLAG) {
        return append_mbox();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("mxd: {msg}");
            return ExitCode::from(2);
        }
    };
    // -n reports what loads but is not run (notices); the daemon refuses such a file.
    let loaded = if args.check_only {
        config::check(&args.file, &args.defines)
    } else {
        config::load(&args.file, &args.defines)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(role) = args.role {
        return child(role, &args, config);
    }
    if args.check_only {
        // Certificates and keys are part of the configuration: check that they load.
        let pkis = config.pkis.values().map(|p| (p.name.as_str(), p.cert.as_path(), p.key.as_path()));
        if let Err(e) = tls::Pkis::load(pkis) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        for n in &config.notices {
            let how = if n.blocking { "not run: the daemon refuses to start with it" } else { "notice" };
            eprintln!("{n} ({how})");
        }
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    if matches!(config.knobs.queue_encryption, Some(config::QueueKey::Stdin | config::QueueKey::Ask)) {
        if let Err(e) = privsep::stdin_key::read_from_stdin() {
            eprintln!("mxd: {e}");
            return ExitCode::FAILURE;
        }
    }
    let sink = if args.foreground { logging::Sink::Stderr } else { logging::Sink::Syslog };
    if !args.foreground {
        // Before any thread exists: fork(2) keeps only the calling thread.
        if let Err(e) = nix::unistd::daemon(true, false) {
            eprintln!("mxd: cannot daemonize: {e}");
            return ExitCode::FAILURE;
        }
    }
    logging::init(sink, args.verbosity, "mxd");
    let reloader = server::Reloader { path: args.file.clone(), defines: args.defines.clone() };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            log::error!("fatal: cannot find my own executable to start the other processes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let user = args.user.clone().unwrap_or_else(|| sandbox::DEFAULT_USER.to_owned());
    let mut shared: Vec<std::ffi::OsString> =
        vec!["-f".into(), args.file.clone().into(), "-u".into(), user.clone().into()];
    for (n, v) in &args.defines {
        shared.extend(["-D".into(), format!("{n}={v}").into()]);
    }
    if args.foreground {
        shared.push("-d".into());
    }
    shared.extend((0..args.verbosity).map(|_| "-v".into()));
    let procs = server::Processes { spawner: privsep::Spawner { exe, args: shared }, user };
    let code = match server::run(config, reloader, procs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
            if !args.foreground {
                eprintln!("mxd: {e}");
            }
            ExitCode::FAILURE
        }
    };
    // Lines still queued for the log writer thread.
    log::logger().flush();
    code
}

/// `mxd --append-mbox PATH SENDER`: the message on stdin appended to PATH as mbox, with
/// this process's rights (the mda runner starts it as a ~/.forward's or alias's user).
/// Exit 0 delivered, 75 (EX_TEMPFAIL) retry, 73 (EX_CANTCREAT) refused by permissions.
fn append_mbox() -> ExitCode {
    use std::io::Read;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let [path, sender] = argv.as_slice() else {
        eprintln!("usage: mxd {} PATH SENDER", mxd::forward::APPEND_FLAG);
        return ExitCode::from(64);
    };
    let mut message = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut message) {
        eprintln!("mxd: reading the message: {e}");
        return ExitCode::from(75);
    }
    let sender = sender.to_string_lossy();
    match mxd::deliver::append_file(std::path::Path::new(path), &sender, &message) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxd: {e}");
            let denied = matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound);
            ExitCode::from(if denied { 73 } else { 75 })
        }
    }
}

/// A child process of the daemon: its role, on the configuration it read as root.
fn child(role: Role, args: &Args, config: config::Config) -> ExitCode {
    sandbox::die_with_parent(args.parent);
    let sink = if args.foreground { logging::Sink::Stderr } else { logging::Sink::Syslog };
    logging::init(sink, args.verbosity, role.ident());
    let user = args.user.clone().unwrap_or_else(|| sandbox::DEFAULT_USER.to_owned());
    let who = if sandbox::is_root() {
        match sandbox::account(&user) {
            Ok(a) => Some(a),
            Err(e) => return fail(role, &e),
        }
    } else {
        None
    };
    let link = match args.link.map(privsep::fds::adopt) {
        Some(Ok(fd)) => Some(std::os::unix::net::UnixStream::from(fd)),
        Some(Err(e)) => return fail(role, &e),
        None => None,
    };
    let result = match (role, link) {
        (Role::Smtp, Some(link)) => {
            let mut sockets = Vec::new();
            for (key, fds) in &args.listeners {
                match fds.iter().map(|f| privsep::fds::adopt(*f)).collect::<Result<Vec<_>, _>>() {
                    Ok(owned) => sockets.push((key.clone(), owned)),
                    Err(e) => return fail(role, &e),
                }
            }
            if let Some(fd) = args.stats {
                if let Err(e) = privsep::fds::adopt(fd).and_then(server::attach_stats) {
                    return fail(role, &e);
                }
            }
            server::run_smtp(config, link, sockets, who.as_ref()).map_err(|e| e.to_string())
        }
        (Role::Delivery, Some(link)) => privsep::run_delivery(config, link, who.as_ref()),
        (Role::Relay, _) => privsep::run_relay(config, who.as_ref()),
        (_, None) => Err("no --link given".into()),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(role, &e),
    };
    log::logger().flush();
    code
}

fn fail(role: Role, e: &dyn std::fmt::Display) -> ExitCode {
    log::error!("{} process: fatal: {e}", role.name());
    log::logger().flush();
    eprintln!("mxd: {} process: {e}", role.name());
    ExitCode::FAILURE
}
