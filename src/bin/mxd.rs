//! mxd, the daemon: flags -> configuration -> server. Nothing else lives here.
//!
//! mxd [-dnv] [-f file] [-D name=value]

use std::path::PathBuf;
use std::process::ExitCode;

use mxd::{config, logging, server, tls};

const DEFAULT_CONF: &str = "/etc/mxd/smtpd.conf";

struct Args {
    foreground: bool,
    check_only: bool,
    verbosity: u8,
    file: PathBuf,
    defines: Vec<(String, String)>,
}

fn usage() -> &'static str {
    "usage: mxd [-dnv] [-f file] [-D name=value]"
}

fn parse_args() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut args = Args {
        foreground: false,
        check_only: false,
        verbosity: 0,
        file: std::env::var_os("MXD_CONF").map_or_else(|| PathBuf::from(DEFAULT_CONF), PathBuf::from),
        defines: Vec::new(),
    };
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
            Short('h') | Long("help") => return Err(usage().to_owned()),
            other => return Err(format!("{}\n{}", other.unexpected(), usage())),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
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
    let code = match server::run(config, reloader) {
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
