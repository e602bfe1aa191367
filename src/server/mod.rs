//! The daemon's runtime: binds the listeners the configuration names, runs one event loop
//! per core, feeds the delivery pool, and handles signals on the main thread (SIGTERM and
//! SIGINT stop, SIGHUP reloads). Everything that touches a socket lives under this module.

mod conn;
mod event_loop;
mod ids;
mod listener;
mod message;
mod policy;
mod stream;
mod supervise;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::Waker;

use crate::config::{Config, ListenKind, Listener, TlsMode};
use crate::deliver;
use crate::relay;
use crate::smtp::{SessionConfig, TlsPolicy};
use crate::tls::{self, Pkis, TlsError};
use event_loop::{Command, EventLoop, ListenSocket, LoopListener};

/// Counters for `mxctl show stats`.
pub(crate) static STATS: supervise::Stats = supervise::Stats {
    connections: std::sync::atomic::AtomicU64::new(0),
    delivered: std::sync::atomic::AtomicU64::new(0),
    tempfail: std::sync::atomic::AtomicU64::new(0),
    permfail: std::sync::atomic::AtomicU64::new(0),
};

/// Bad commands a session may send before it is dropped with a 421.
const MAX_ERRORS: u32 = 10;
/// OpenSMTPD's session timeout; `MXD_SMTP_TIMEOUT` (seconds) overrides it for tests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Name of the local submission socket in the spool: sendmail(8) talks to it, always bound
/// (as OpenSMTPD's smtpd.sock) whether or not the configuration says `listen on socket`.
pub const SUBMIT_SOCKET: &str = "mxd.sock";

/// What a listener's sessions share: limits, TLS, and the configuration they were born under
/// (a reload gives new sessions the new one; running sessions keep theirs).
pub(crate) struct ListenerRt {
    pub(crate) session: Arc<SessionConfig>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) smtps: bool,
    pub(crate) tag: Option<String>,
    pub(crate) config: Arc<Config>,
}

impl ListenerRt {
    pub(crate) fn hostname(&self) -> &str {
        &self.session.hostname
    }
}

/// Why the daemon could not start.
#[derive(Debug)]
pub enum StartError {
    Tls(TlsError),
    Bind { what: String, source: io::Error },
    Spool { path: PathBuf, source: io::Error },
    Thread(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Bind { what, source } => write!(f, "cannot listen on {what}: {source}"),
            StartError::Spool { path, source } => write!(f, "spool {}: {source}", path.display()),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// How to re-read the configuration on SIGHUP.
pub struct Reloader {
    pub path: PathBuf,
    pub defines: Vec<(String, String)>,
}

struct LoopHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl LoopHandle {
    fn send(&self, cmd: Command) {
        if self.commands.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; returns once every loop has drained and every
/// accepted message is on disk.
pub fn run(config: Config, reloader: Reloader) -> Result<(), StartError> {
    let config = Arc::new(config);
    prepare_spool(&config.spool)?;
    let max_fds = raise_fd_limit();
    let loops = config.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    // Each session needs one descriptor; keep some for listeners, files and the spool.
    let max_sessions = (max_fds.saturating_sub(64) as usize / loops).max(1);
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let hook = deliver::QueueHook { dir: crate::queue::queue_dir(&config.spool), notify: wake_tx.clone() };
    let pool = Arc::new(deliver::Pool::start(deliver::default_threads(), &config.hostname, Some(hook)));
    let shared: relay::SharedConfig = Arc::new(std::sync::Mutex::new(Arc::clone(&config)));
    let relay = relay::Handle::new(wake_tx);
    let relay_thread =
        relay::spawn(&config.spool, Arc::clone(&shared), wake_rx, relay.clone()).map_err(StartError::Thread)?;

    let mut handles = Vec::with_capacity(loops);
    for i in 0..loops {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ev, waker) = EventLoop::new(rx, Arc::clone(&pool), max_sessions).map_err(StartError::Thread)?;
        let thread = std::thread::Builder::new()
            .name(format!("loop-{i}"))
            .spawn(move || ev.run())
            .map_err(StartError::Thread)?;
        handles.push(LoopHandle { commands: tx, waker, thread });
    }
    let mut bound = Bound::default();
    let plan = plan(&config)?;
    bound.apply(plan, &handles)?;
    log::info!("mxd started: {} event loops, {} listeners, hostname {}", loops, bound.keys.len(), config.hostname);

    let (tx, rx) = crossbeam_channel::unbounded();
    supervise::forward_signals(tx.clone()).map_err(StartError::Thread)?;
    supervise::start_control(
        &config.spool,
        supervise::Control { tx, stats: &STATS, spool: config.spool.clone(), relay: relay.clone() },
    );
    let spool = config.spool.clone();
    let _ = std::thread::Builder::new().name("offline".into()).spawn(move || supervise::offline_loop(&spool));
    supervise::supervise(Arc::clone(&config), &reloader, &mut bound, &handles, &rx, &shared);

    for h in &handles {
        h.send(Command::Stop);
    }
    for h in handles {
        let _ = h.thread.join();
    }
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.shutdown(),
        Err(_) => log::warn!("delivery pool still shared at exit"),
    }
    relay.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = relay.wake.try_send(());
    let _ = relay_thread.join();
    log::info!("mxd stopped");
    Ok(())
}

/// The spool, and its offline directory (mode 1777: any user's sendmail may drop a file
/// there while the daemon is down; files are 0600 and owned by their writer).
fn prepare_spool(spool: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(spool).map_err(|source| StartError::Spool { path: spool.to_owned(), source })?;
    crate::submit::offline::offline_dir(spool)
        .map(drop)
        .map_err(|e| StartError::Spool { path: spool.to_owned(), source: std::io::Error::other(e.to_string()) })
}

/// Raises the soft descriptor limit to the hard one: every session is a descriptor.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

fn idle_timeout() -> Duration {
    std::env::var("MXD_SMTP_TIMEOUT").ok().and_then(|s| s.parse::<u64>().ok()).map_or(IDLE_TIMEOUT, Duration::from_secs)
}

/// One socket address to listen on, and the runtime its sessions get.
struct Planned {
    key: String,
    target: Target,
    rt: Arc<ListenerRt>,
}

enum Target {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// Turns the configuration's listeners into addresses and runtimes, loading certificates.
fn plan(config: &Arc<Config>) -> Result<Vec<Planned>, StartError> {
    let pkis = Pkis::load(config.pkis.values().map(|p| (p.name.as_str(), p.cert.as_path(), p.key.as_path())))
        .map_err(StartError::Tls)?;
    let mut out = Vec::new();
    let mut has_socket = false;
    for l in &config.listeners {
        let rt = Arc::new(runtime(config, l, &pkis)?);
        match &l.kind {
            ListenKind::Socket => {
                has_socket = true;
                let path = config.spool.join(SUBMIT_SOCKET);
                out.push(Planned { key: format!("unix:{}", path.display()), target: Target::Unix(path), rt });
            }
            ListenKind::Inet { addrs } => {
                for addr in addrs {
                    out.push(Planned { key: addr.to_string(), target: Target::Tcp(*addr), rt: Arc::clone(&rt) });
                }
            }
        }
    }
    if !has_socket {
        let path = config.spool.join(SUBMIT_SOCKET);
        let rt = Arc::new(ListenerRt {
            session: Arc::new(session_config(config, &config.hostname, TlsPolicy::Unavailable, false)),
            tls: None,
            smtps: false,
            tag: None,
            config: Arc::clone(config),
        });
        out.push(Planned { key: format!("unix:{}", path.display()), target: Target::Unix(path), rt });
    }
    Ok(out)
}

fn session_config(config: &Config, hostname: &str, tls: TlsPolicy, tls_active: bool) -> SessionConfig {
    SessionConfig {
        hostname: hostname.to_owned(),
        max_message_size: config.max_message_size,
        max_rcpt: config.max_rcpt,
        max_errors: MAX_ERRORS,
        idle_timeout: idle_timeout(),
        tls,
        tls_active,
    }
}

fn runtime(config: &Arc<Config>, l: &Listener, pkis: &Pkis) -> Result<ListenerRt, StartError> {
    let hostname = l.hostname.clone().unwrap_or_else(|| config.hostname.clone());
    let (policy, smtps, verify) = match l.tls {
        TlsMode::Plain if l.pki.is_some() => (TlsPolicy::Offer, false, false),
        TlsMode::Plain => (TlsPolicy::Unavailable, false, false),
        TlsMode::StartTls => (TlsPolicy::Offer, false, false),
        TlsMode::Require { verify } => (TlsPolicy::Require, false, verify),
        TlsMode::Smtps => (TlsPolicy::Unavailable, true, false),
    };
    let wants_tls = smtps || policy != TlsPolicy::Unavailable;
    let tls = if wants_tls {
        // OpenSMTPD falls back to the pki named like the listener's hostname.
        let pki = l.pki.clone().unwrap_or_else(|| hostname.clone());
        let ca = match (&l.ca, verify) {
            (Some(name), true) => Some(
                config
                    .cas
                    .get(name)
                    .map(|c| c.cert.clone())
                    .ok_or(StartError::Tls(TlsError::Undefined { kind: "ca", name: name.clone() }))?,
            ),
            _ => None,
        };
        Some(tls::server_config(pkis, &pki, ca.as_deref()).map_err(StartError::Tls)?)
    } else {
        None
    };
    Ok(ListenerRt {
        session: Arc::new(session_config(config, &hostname, policy, smtps)),
        tls,
        smtps,
        tag: l.tag.clone(),
        config: Arc::clone(config),
    })
}

/// The sockets currently handed to the loops, by key.
#[derive(Default)]
struct Bound {
    keys: BTreeMap<String, ()>,
}

impl Bound {
    /// Makes the loops listen on exactly what `plan` says: new addresses are bound, kept ones
    /// get the new runtime, dropped ones are closed.
    fn apply(&mut self, plan: Vec<Planned>, handles: &[LoopHandle]) -> Result<(), StartError> {
        let mut fresh = Vec::new();
        for p in &plan {
            if !self.keys.contains_key(&p.key) {
                fresh.push((p.key.clone(), bind(&p.target, handles.len())?));
            }
        }
        let wanted: BTreeMap<String, ()> = plan.iter().map(|p| (p.key.clone(), ())).collect();
        for key in self.keys.keys().filter(|k| !wanted.contains_key(*k)) {
            for h in handles {
                h.send(Command::Unlisten { key: key.clone() });
            }
            log::info!("listener {key} closed");
        }
        let mut fresh: BTreeMap<String, Vec<ListenSocket>> = fresh.into_iter().collect();
        for p in plan {
            match fresh.remove(&p.key) {
                Some(sockets) => {
                    for (h, socket) in handles.iter().zip(sockets) {
                        h.send(Command::Listen(LoopListener { key: p.key.clone(), socket, rt: Arc::clone(&p.rt) }));
                    }
                    log::info!("listening on {}", p.key);
                }
                None => {
                    for h in handles {
                        h.send(Command::Update { key: p.key.clone(), rt: Arc::clone(&p.rt) });
                    }
                }
            }
        }
        self.keys = wanted;
        Ok(())
    }
}

fn bind(target: &Target, loops: usize) -> Result<Vec<ListenSocket>, StartError> {
    match target {
        Target::Tcp(addr) => listener::bind_tcp(*addr, loops)
            .map(|v| v.into_iter().map(|l| ListenSocket::Tcp(mio::net::TcpListener::from_std(l))).collect())
            .map_err(|source| StartError::Bind { what: addr.to_string(), source }),
        Target::Unix(path) => listener::bind_unix(path, loops)
            .map(|v| v.into_iter().map(|l| ListenSocket::Unix(mio::net::UnixListener::from_std(l))).collect())
            .map_err(|source| StartError::Bind { what: path.display().to_string(), source }),
    }
}
