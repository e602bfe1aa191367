//! The daemon's runtime: binds the listeners the configuration names, runs one event loop
//! per core, feeds the delivery pool, and handles signals on the main thread (SIGTERM and
//! SIGINT stop, SIGHUP reloads). Everything that touches a socket lives under this module.

mod auth;
mod conn;
mod event_loop;
mod filter_restart;
mod filters;
mod ids;
mod knobs;
mod listener;
mod lookup;
mod loop_ctx;
mod message;
mod policy;
mod proxy;
mod queues;
mod rdns;
mod stats;
mod stream;
mod supervise;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::Waker;

use crate::config::{Config, ListenKind, Listener, TlsMode};
use crate::control;
use crate::privsep;
use crate::smtp::{SessionConfig, TlsPolicy};
use crate::spool;
use crate::tls::{self, Pkis, TlsError};
use event_loop::{EventLoop, ListenSocket, LoopCommand, LoopListener};

/// Bad commands a session may send before it is dropped with a 421.
const MAX_ERRORS: u32 = 10;
/// OpenSMTPD's session timeout; `MXD_SMTP_TIMEOUT` (seconds) overrides it for tests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Name of the local submission socket in the spool: sendmail(8) talks to it, always bound
/// (as OpenSMTPD's smtpd.sock) whether or not the configuration says `listen on socket`.
pub use crate::spool::SUBMIT_SOCKET;

/// What a listener's sessions share: limits, TLS, and the configuration they were born under
/// (a reload gives new sessions the new one; running sessions keep theirs).
pub(crate) struct ListenerRt {
    pub(crate) session: Arc<SessionConfig>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) smtps: bool,
    pub(crate) tag: Option<String>,
    pub(crate) config: Arc<Config>,
    pub(crate) auth: auth::ListenerAuth,
    /// `listen … filter NAME`: the chain its sessions go through.
    pub(crate) filter: Option<String>,
    /// mask-src, hostnames, proxy-v2.
    pub(crate) knobs: knobs::ListenKnobs,
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
    Bind {
        what: String,
        source: io::Error,
    },
    Spool(spool::SpoolError),
    Thread(io::Error),
    /// The unprivileged user is missing.
    User(String),
    /// chroot, setuid, no_new_privs or pledge failed.
    Privileges(io::Error),
    /// Children kept crashing; the daemon stopped.
    Crashed,
    /// A filter process could not start or register.
    Filter(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Bind { what, source } => write!(f, "cannot listen on {what}: {source}"),
            StartError::Spool(e) => write!(f, "{e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread or process: {e}"),
            StartError::User(e) => write!(f, "{e}"),
            StartError::Privileges(e) => write!(f, "cannot drop privileges: {e}"),
            StartError::Crashed => f.write_str("a child process kept failing: stopped"),
            StartError::Filter(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {}

/// How to re-read the configuration on SIGHUP.
pub struct Reloader {
    pub path: PathBuf,
    pub defines: Vec<(String, String)>,
}

/// How the parent starts its children, and as whom they run.
pub struct Processes {
    pub spawner: privsep::Spawner,
    /// The unprivileged user's name (`-u`, else [`privsep::sandbox::DEFAULT_USER`]).
    pub user: String,
}

struct LoopHandle {
    commands: Sender<LoopCommand>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl LoopHandle {
    fn send(&self, cmd: LoopCommand) {
        if self.commands.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

fn loop_count(config: &Config) -> usize {
    config.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// The parent: runs the daemon until SIGTERM or SIGINT and returns once every child has
/// stopped, every accepted message on disk. It binds, supervises and reloads; it reads no
/// network input.
pub fn run(config: Config, reloader: Reloader, procs: Processes) -> Result<(), StartError> {
    privsep::sandbox::set_name("mxd: parent");
    let config = Arc::new(config);
    let account = if privsep::sandbox::is_root() {
        Some(privsep::sandbox::account(&procs.user).map_err(StartError::User)?)
    } else {
        log::info!("not started as root: every process keeps uid {}", nix::unistd::geteuid());
        None
    };
    // The mda runner may ask a proc `userbase` who a command runs as: as the unprivileged
    // user, on its worker threads (never the main thread).
    if let Some(a) = &account {
        crate::table::proc_io::run_as(a.uid, a.gid);
    }
    crate::table::proc_io::allow_waiting();
    let lock = spool::lock(&config.spool).map_err(StartError::Spool)?;
    spool::prepare(&config.spool, account.as_ref().map(|a| (a.uid, a.gid))).map_err(StartError::Spool)?;
    raise_fd_limit();
    let loops = loop_count(&config);
    let mut bound = Bound::default();
    bound.apply(plan(&config)?, loops)?;
    let control =
        control::bind(&config.spool).map_err(|source| StartError::Bind { what: "control.sock".into(), source })?;
    // Before any child starts: a SIGTERM that comes as soon as the port answers is a clean
    // stop once the start is over, not the default action's death.
    let (tx, rx) = crossbeam_channel::unbounded();
    supervise::forward_signals(tx.clone()).map_err(StartError::Thread)?;
    let current: Arc<supervise::Current> = Arc::default();
    let stats = stats::create().map_err(StartError::Thread)?;
    let mut kids = supervise::Kids::new(procs.spawner, Arc::clone(&current), stats);
    // The relay, then delivery, then smtp, each ready before the next: once the smtp process
    // listens, every process has loaded the configuration.
    kids.start_relay().map_err(StartError::Thread)?;
    kids.start_generation(&bound).map_err(StartError::Thread)?;
    // `mda` commands run from here: root, and never facing the network. Their queue is
    // sealed like the relay queue, so this process holds the key too (in memory only).
    let seal = crate::queue::seal::Seal::of(&config, privsep::stdin_key::parent_key().as_ref())
        .map_err(|e| StartError::Thread(io::Error::other(e.to_string())))?;
    crate::queue::seal::install(seal);
    crate::relay::mda::spawn(&config).map_err(StartError::Thread)?;
    log::info!("mxd started: {} event loops, {} listeners, hostname {}", loops, bound.keys.len(), config.hostname);

    supervise::start_control(
        control,
        supervise::Control { tx, spool: config.spool.clone(), hostname: config.hostname.clone(), current },
    );
    let spool_dir = config.spool.clone();
    let _ = std::thread::Builder::new().name("offline".into()).spawn(move || supervise::offline_loop(&spool_dir));
    let clean = supervise::supervise(config, &reloader, &mut bound, &mut kids, &rx);
    kids.shutdown();
    drop(lock);
    log::info!("mxd stopped");
    if clean {
        Ok(())
    } else {
        Err(StartError::Crashed)
    }
}

/// The smtp process: the event loops behind the listeners the parent bound, handing
/// messages to the delivery process over `link`. Loads what it needs as root, then becomes
/// the unprivileged user in an empty chroot before it accepts anything.
/// Counts into the parent's shared stats page (`--stats FD`).
pub fn attach_stats(fd: std::os::fd::OwnedFd) -> std::io::Result<()> {
    stats::attach(&fd)
}

pub fn run_smtp(
    config: Config,
    link: std::os::unix::net::UnixStream,
    sockets: Vec<(String, Vec<std::os::fd::OwnedFd>)>,
    who: Option<&privsep::sandbox::Account>,
) -> Result<(), StartError> {
    privsep::sandbox::set_name("mxd: smtp");
    let config = Arc::new(config);
    // Before anything can send one: SIGTERM stops, SIGUSR2 retires, ^C and SIGHUP are the
    // parent's to act on.
    let signals = supervise::smtp_signals().map_err(StartError::Thread)?;
    let planned = plan(&config)?;
    if let Err(e) = crate::users::install_snapshot() {
        log::warn!("cannot read /etc/passwd: {e}; local recipients resolve through userbase tables only");
    }
    let max_fds = raise_fd_limit();
    // Reads resolv.conf and hosts: before the chroot, which hides them.
    if let Err(e) = rdns::install() {
        log::warn!("cannot start the resolver threads: {e}; clients are greeted without reverse DNS");
    }
    // One loop per socket of a listener (the parent bound as many as `threads` said; a
    // reload that changed it leaves older listeners with another count: loops share those).
    let loops = sockets.iter().map(|(_, fds)| fds.len()).max().unwrap_or_else(|| loop_count(&config)).max(1);
    let max_sessions = (max_fds.saturating_sub(64) as usize / loops).max(1);
    // Each loop's own link to delivery; `link` only carries their other ends over, and
    // stays open as long as this process lives.
    let (loop_links, ends) = privsep::link::pairs(loops).map_err(StartError::Thread)?;
    privsep::link::hand_over(&link, &ends).map_err(StartError::Thread)?;
    drop(ends);
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut loop_links = loop_links.into_iter();
    // Filter processes start now, while we may still become their users.
    let mut filters = filters::start(&config, loops)?;
    let mut handles = Vec::with_capacity(loops);
    for i in 0..loops {
        let (tx, rx) = crossbeam_channel::unbounded();
        let own = loop_links.next().ok_or_else(|| StartError::Thread(std::io::ErrorKind::NotFound.into()))?;
        let (mut ev, waker) = EventLoop::new(rx, own, Arc::clone(&seq), max_sessions).map_err(StartError::Thread)?;
        if let Some(end) = filters.as_mut().and_then(|f| f.loop_end(i)) {
            ev.set_filters(end);
        }
        let thread = std::thread::Builder::new()
            .name(format!("loop-{i}"))
            .spawn(move || ev.run())
            .map_err(StartError::Thread)?;
        handles.push(LoopHandle { commands: tx, waker, thread });
    }
    // Stopping a misbehaving filter is a kill(2) of another process: pledge's "proc".
    let promises = if filters.is_some() { "stdio inet unix proc" } else { "stdio inet unix" };
    if let Some(f) = filters {
        f.run(handles.iter().map(|h| Arc::clone(&h.waker)).collect())?;
    }
    let empty = spool::empty_dir(&config.spool);
    match who {
        Some(who) => privsep::sandbox::drop_to(who, privsep::sandbox::Jail::Chroot(&empty)),
        None => privsep::sandbox::drop_to_nothing(),
    }
    .map_err(StartError::Privileges)?;
    privsep::sandbox::pledge(promises, true).map_err(StartError::Privileges)?;
    for (key, fds) in sockets {
        let Some(p) = planned.iter().find(|p| p.key == key) else {
            log::error!("listener {key}: not in this configuration, not served");
            continue;
        };
        for (i, fd) in fds.into_iter().enumerate() {
            let h = &handles[i % handles.len()];
            listener::listen(&fd).map_err(|source| StartError::Bind { what: key.clone(), source })?;
            let socket = if key.starts_with("unix:") {
                let l = std::os::unix::net::UnixListener::from(fd);
                ListenSocket::Unix(mio::net::UnixListener::from_std(l))
            } else {
                let l = std::net::TcpListener::from(fd);
                ListenSocket::Tcp(mio::net::TcpListener::from_std(l))
            };
            h.send(LoopCommand::Listen(LoopListener { key: key.clone(), socket, rt: Arc::clone(&p.rt) }));
        }
    }
    // Tells the parent we are up, then answers its questions.
    privsep::serve_parent(|req| match req {
        filters::HEALTH_REQUEST => filters::health(),
        _ => String::new(),
    })
    .map_err(StartError::Thread)?;
    log::info!("smtp process ready: {loops} event loops");
    let loops_of: Vec<(Sender<LoopCommand>, Arc<Waker>)> =
        handles.iter().map(|h| (h.commands.clone(), Arc::clone(&h.waker))).collect();
    supervise::forward_smtp_signals(signals, loops_of).map_err(StartError::Thread)?;
    for h in handles {
        let _ = h.thread.join();
    }
    drop(link);
    Ok(())
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
    target: ListenAddr,
    rt: Arc<ListenerRt>,
}

enum ListenAddr {
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
                out.push(Planned { key: format!("unix:{}", path.display()), target: ListenAddr::Unix(path), rt });
            }
            ListenKind::Inet { addrs } => {
                for addr in addrs {
                    out.push(Planned { key: addr.to_string(), target: ListenAddr::Tcp(*addr), rt: Arc::clone(&rt) });
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
            auth: auth::ListenerAuth::OFF,
            filter: None,
            knobs: knobs::ListenKnobs::default(),
        });
        out.push(Planned { key: format!("unix:{}", path.display()), target: ListenAddr::Unix(path), rt });
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
        TlsMode::Smtps => (TlsPolicy::Unavailable, true, l.options.smtps_verify),
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
        let names = if l.pkis.is_empty() { vec![pki] } else { l.pkis.clone() };
        Some(tls::listener_server_config(pkis, &names, ca.as_deref()).map_err(StartError::Tls)?)
    } else {
        None
    };
    Ok(ListenerRt {
        session: Arc::new(session_config(config, &hostname, policy, smtps)),
        tls,
        smtps,
        tag: l.tag.clone(),
        config: Arc::clone(config),
        auth: auth::ListenerAuth::of(l),
        filter: l.options.filter.clone(),
        knobs: knobs::ListenKnobs::new(config, l),
    })
}

/// The listening sockets the parent holds, by key: one per loop for each address.
#[derive(Default)]
pub(crate) struct Bound {
    keys: BTreeMap<String, Vec<std::os::fd::OwnedFd>>,
}

impl Bound {
    /// Holds exactly what `plan` says: new addresses are bound, dropped ones closed (the
    /// smtp process that served them retires).
    fn apply(&mut self, plan: Vec<Planned>, loops: usize) -> Result<(), StartError> {
        let mut next = BTreeMap::new();
        for p in plan {
            let fds = match self.keys.remove(&p.key) {
                Some(fds) => fds,
                None => {
                    let fds = bind(&p.target, loops)?;
                    log::info!("listening on {}", p.key);
                    fds
                }
            };
            next.insert(p.key, fds);
        }
        for key in self.keys.keys() {
            log::info!("listener {key} closed");
        }
        self.keys = next;
        Ok(())
    }

    /// `--listener KEY FD,FD…` arguments for an smtp process, and the descriptors to pass.
    pub(crate) fn args(&self) -> (Vec<std::ffi::OsString>, Vec<std::os::fd::BorrowedFd<'_>>) {
        use std::os::fd::{AsFd, AsRawFd};
        let mut args = Vec::new();
        let mut pass = Vec::new();
        for (key, fds) in &self.keys {
            let nums: Vec<String> = fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
            args.extend(["--listener".into(), key.into(), nums.join(",").into()]);
            pass.extend(fds.iter().map(|f| f.as_fd()));
        }
        (args, pass)
    }
}

fn bind(target: &ListenAddr, loops: usize) -> Result<Vec<std::os::fd::OwnedFd>, StartError> {
    match target {
        ListenAddr::Tcp(addr) => listener::bind_tcp(*addr, loops)
            .map(|v| v.into_iter().map(std::os::fd::OwnedFd::from).collect())
            .map_err(|source| StartError::Bind { what: addr.to_string(), source }),
        ListenAddr::Unix(path) => listener::bind_unix(path, loops)
            .map(|v| v.into_iter().map(std::os::fd::OwnedFd::from).collect())
            .map_err(|source| StartError::Bind { what: path.display().to_string(), source }),
    }
}
