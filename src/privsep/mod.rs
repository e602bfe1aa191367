//! Privilege separation: mxd runs as four processes with one job each (ARCHITECTURE.md,
//! "Process map"). The parent starts the others by re-executing this binary with a hidden
//! `-x ROLE` argument and the descriptors each must have; each child loads the
//! configuration while it is still root, then gives up what its role does not need:
//! - `smtp`: the event loops, rustls, sessions; chrooted into SPOOL/empty as the
//!   unprivileged user, no capabilities, no_new_privs (pledge "stdio inet unix" on OpenBSD).
//! - `delivery`: stays root to write as the users; takes only envelopes and bytes from smtp
//!   and derives every target itself ([`delivery`]).
//! - `relay`: the relay runner, as the unprivileged user, in SPOOL.

pub mod auth;
mod children;
pub mod delivery;
pub use crate::fds;
pub mod frame;
pub mod link;
pub mod lookup;
pub mod sandbox;
pub mod stdin_key;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use children::{serve_parent, Chan, Child, Spawner};

use crate::config::{Config, Method};
use crate::deliver::{self, Pool, QueueHook};
use crate::envelope::Owner;
use crate::relay;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Smtp,
    Delivery,
    Relay,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Smtp => "smtp",
            Role::Delivery => "delivery",
            Role::Relay => "relay",
        }
    }

    /// The syslog ident of the role's log lines.
    pub fn ident(self) -> &'static str {
        match self {
            Role::Smtp => "mxd/smtp",
            Role::Delivery => "mxd/delivery",
            Role::Relay => "mxd/relay",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Smtp, Role::Delivery, Role::Relay].into_iter().find(|r| r.name() == s)
    }
}

/// Signals a child waits for on its main thread; SIGINT (a terminal's ^C reaches the whole
/// process group) and SIGHUP are caught and ignored: the parent decides.
fn wait_signal(wanted: &[i32]) -> i32 {
    use signal_hook::consts::{SIGHUP, SIGINT};
    let mut all: Vec<i32> = wanted.to_vec();
    all.extend([SIGINT, SIGHUP]);
    match signal_hook::iterator::Signals::new(&all) {
        Ok(mut s) => s.forever().find(|sig| wanted.contains(sig)).unwrap_or(0),
        Err(e) => {
            log::error!("signals: {e}");
            0
        }
    }
}

/// The delivery process: the pool of delivery threads behind the link from smtp.
pub fn run_delivery(config: Config, link: UnixStream, relay_user: Option<&sandbox::Account>) -> Result<(), String> {
    let config = Arc::new(config);
    sandbox::set_name("mxd: delivery");
    crate::queue::seal::install(queue_seal(&config)?);
    let (notify, queued) = crossbeam_channel::bounded(1);
    wake_relay_on(queued, crate::spool::queue_dir(&config.spool).join(crate::spool::QUEUE_WAKE));
    let hook = QueueHook {
        dir: crate::spool::queue_dir(&config.spool),
        notify,
        owner: relay_user.map(|a| Owner { uid: a.uid, gid: a.gid }),
    };
    let pool = Pool::start(deliver::default_threads(), &config.hostname, Some(hook));
    // Stays root (it writes as every user) but may never gain more.
    sandbox::drop_to_nothing().map_err(|e| format!("no_new_privs: {e}"))?;
    if let Some(a) = relay_user {
        // proc tables run as the unprivileged user, never as this root process.
        crate::table::proc_io::run_as(a.uid, a.gid);
    }
    // Questions at RCPT and MAIL, and the commit, may wait for table processes here.
    crate::table::proc_io::allow_waiting();
    let promises = if config.has_proc_tables() {
        "stdio rpath wpath cpath fattr chown flock getpw unix proc exec id"
    } else {
        "stdio rpath wpath cpath fattr chown flock getpw unix"
    };
    sandbox::pledge(promises, false).map_err(|e| e.to_string())?;
    // Stop comes from the smtp process closing the link; a signal is not enough, because
    // in-flight messages must still be written.
    let mut ignored = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || ignored.forever().for_each(drop))
        .map_err(|e| e.to_string())?;
    serve_parent(|_| String::new()).map_err(|e| e.to_string())?;
    delivery::serve(link, &config, pool);
    log::info!("delivery process stopped");
    Ok(())
}

/// Tells the relay process, through its datagram socket, each time delivery queued
/// something; a relay that is down or restarting misses nothing, it scans every second.
fn wake_relay_on(queued: crossbeam_channel::Receiver<()>, socket: std::path::PathBuf) {
    let spawned = std::thread::Builder::new().name("wake-relay".into()).spawn(move || {
        let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else { return };
        let _ = s.set_nonblocking(true);
        for () in queued.iter() {
            let _ = s.send_to(b"w", &socket);
        }
    });
    if let Err(e) = spawned {
        log::warn!("relay wake-up thread: {e}");
    }
}

/// The relay process's end: each datagram on `SPOOL/queue/wake` wakes the runner.
fn listen_for_wake(wake: crossbeam_channel::Sender<()>) {
    let path = Path::new(crate::spool::QUEUE_DIR).join(crate::spool::QUEUE_WAKE);
    let _ = std::fs::remove_file(&path);
    let socket = match std::os::unix::net::UnixDatagram::bind(&path) {
        Ok(s) => s,
        Err(e) => return log::warn!("relay: {}: {e}; new mail waits for the next scan", path.display()),
    };
    let _ = std::thread::Builder::new().name("wake".into()).spawn(move || {
        let mut buf = [0u8; 16];
        while socket.recv(&mut buf).is_ok() {
            let _ = wake.try_send(());
        }
    });
}

/// The relay process: the relay runner, unprivileged, in the spool.
/// How queue files are sealed (`queue compression`, `queue encryption`); the key given on
/// the parent's standard input reaches a child only through a pipe (`stdin_key`).
fn queue_seal(config: &Config) -> Result<crate::queue::seal::Seal, String> {
    let stdin_key = stdin_key::take();
    crate::queue::seal::Seal::of(config, stdin_key.as_ref()).map_err(|e| e.to_string())
}

pub fn run_relay(config: Config, who: Option<&sandbox::Account>) -> Result<(), String> {
    sandbox::set_name("mxd: relay");
    crate::queue::seal::install(queue_seal(&config)?);
    let spool = config.spool.clone();
    // Client certificates and CAs of relay actions: read now, while we may.
    let mut files: Vec<&Path> = Vec::new();
    for a in config.actions.values() {
        if let Method::Relay(r) = &a.method {
            if let Some(p) = r.pki.as_ref().and_then(|n| config.pkis.get(n)) {
                files.extend([p.cert.as_path(), p.key.as_path()]);
            }
            if let Some(c) = r.ca.as_ref().and_then(|n| config.cas.get(n)) {
                files.push(c.cert.as_path());
            }
        }
    }
    crate::tls::preload(files);
    match who {
        Some(who) => sandbox::drop_to(who, sandbox::Jail::Chdir(&spool)),
        None => sandbox::drop_to_nothing().and_then(|()| nix::unistd::chdir(&spool).map_err(Into::into)),
    }
    .map_err(|e| format!("cannot drop privileges: {e}"))?;
    let promises = if config.has_proc_tables() {
        "stdio rpath wpath cpath fattr flock inet dns unix proc exec"
    } else {
        "stdio rpath wpath cpath fattr flock inet dns unix"
    };
    sandbox::pledge(promises, false).map_err(|e| e.to_string())?;
    let shared: relay::SharedConfig = Arc::new(std::sync::Mutex::new(Arc::new(config)));
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    listen_for_wake(wake_tx.clone());
    let handle = relay::Handle::new(wake_tx);
    // Paths relative to the spool, our working directory: its parents may be closed to us.
    let thread = relay::spawn(Path::new("."), shared, wake_rx, handle.clone()).map_err(|e| e.to_string())?;
    let h = handle.clone();
    serve_parent(move |req| match req {
        "queue" => relay::list(Path::new("."), &h.status),
        // `schedule` or `schedule ID`: "N scheduled", or "error WHY".
        req if req == "schedule" || req.starts_with("schedule ") => {
            let id = req.strip_prefix("schedule ").filter(|id| !id.is_empty());
            match h.schedule(Path::new("."), id) {
                Ok(n) => format!("{n} scheduled"),
                Err(e) => format!("error {e}"),
            }
        }
        _ => String::new(),
    })
    .map_err(|e| e.to_string())?;
    wait_signal(&[signal_hook::consts::SIGTERM]);
    handle.stop.store(true, Ordering::Relaxed);
    let _ = handle.wake.try_send(());
    let _ = thread.join();
    log::info!("relay process stopped");
    Ok(())
}
