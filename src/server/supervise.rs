//! The parent's work once the children run: signals (SIGTERM/SIGINT stop, SIGHUP reloads),
//! watching its children (a crashed one is replaced), requests from `mxctl` over the
//! control socket, and taking in the mail that `sendmail` left in the offline directory
//! while the daemon was down.
//!
//! A reload or a crash starts a new generation: a fresh smtp process and its delivery
//! process, on the same listening sockets (connections wait in the kernel's backlog in the
//! meantime); the old smtp process stops accepting and serves its sessions to their end,
//! its delivery process finishes what it was given and exits. More than
//! [`MAX_RESTARTS`] crashes within a minute bring the daemon down instead.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::Signal;

use super::{plan, Bound, Reloader, SUBMIT_SOCKET};
use crate::config::{self, Config};
use crate::control::{self, ControlHandler, HandlerError, QueueSelection};
use crate::privsep::{Chan, Child, Role, Spawner};
use crate::submit;

/// How long a new child may take to load its configuration and say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Crashes tolerated within [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The smtp process's signals, registered first thing.
pub(crate) fn smtp_signals() -> std::io::Result<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    signal_hook::iterator::Signals::new([SIGTERM, SIGUSR2, SIGINT, SIGHUP])
}

/// SIGTERM stops the loops (in-flight messages get their verdict, idle sessions a 421);
/// SIGUSR2 retires them (no more accepting; sessions end on their own); a retired process
/// still stops on SIGTERM.
pub(crate) fn forward_smtp_signals(
    mut signals: signal_hook::iterator::Signals,
    loops: Vec<(Sender<super::LoopCommand>, Arc<mio::Waker>)>,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGTERM, SIGUSR2};
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            let stop = match sig {
                SIGTERM => true,
                SIGUSR2 => false,
                _ => continue,
            };
            for (tx, waker) in &loops {
                let cmd = if stop { super::LoopCommand::Stop } else { super::LoopCommand::Retire };
                if tx.send(cmd).is_ok() {
                    let _ = waker.wake();
                }
            }
        }
    })?;
    Ok(())
}

/// The children the control thread may ask something.
#[derive(Default)]
pub(crate) struct Current {
    smtp: Mutex<Option<Arc<Chan>>>,
    relay: Mutex<Option<Arc<Chan>>>,
}

/// The parent's children: the current generation, retired ones still finishing, the relay.
pub(crate) struct Kids {
    spawner: Spawner,
    current: Arc<Current>,
    /// The shared counters' page, mapped by every smtp process (`stats.rs`).
    stats: std::os::fd::OwnedFd,
    smtp: Option<Child>,
    delivery: Option<Child>,
    relay: Option<Child>,
    retired: Vec<Child>,
    crashes: Vec<Instant>,
}

impl Kids {
    pub(crate) fn new(spawner: Spawner, current: Arc<Current>, stats: std::os::fd::OwnedFd) -> Kids {
        Kids {
            spawner,
            current,
            stats,
            smtp: None,
            delivery: None,
            relay: None,
            retired: Vec::new(),
            crashes: Vec::new(),
        }
    }

    /// A delivery process and an smtp process joined by a socketpair; the previous pair
    /// retires.
    pub(crate) fn start_generation(&mut self, bound: &Bound) -> std::io::Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        let mut delivery = self.spawner.spawn(
            Role::Delivery,
            vec!["--link".into(), b.as_raw_fd().to_string().into()],
            &[b.as_fd()],
        )?;
        delivery.wait_ready(READY_WITHIN)?;
        let (mut args, mut pass) = bound.args();
        args.extend(["--link".into(), a.as_raw_fd().to_string().into()]);
        pass.push(a.as_fd());
        args.extend(["--stats".into(), self.stats.as_raw_fd().to_string().into()]);
        pass.push(self.stats.as_fd());
        // The old pair keeps serving until the new one is up: a new process that cannot
        // start (a configuration file broken on disk since the parent read it) changes nothing.
        let smtp = self.spawner.spawn(Role::Smtp, args, &pass).and_then(|mut s| s.wait_ready(READY_WITHIN).map(|()| s));
        let smtp = match smtp {
            Ok(s) => s,
            Err(e) => {
                // The delivery process exits when its link closes (here, with `b`).
                self.retired.push(delivery);
                return Err(e);
            }
        };
        if let Some(old) = self.smtp.take() {
            old.signal(Signal::SIGUSR2);
            self.retired.push(old);
        }
        self.retired.extend(self.delivery.take());
        if let Ok(mut c) = self.current.smtp.lock() {
            *c = Some(Arc::clone(&smtp.chan));
        }
        self.smtp = Some(smtp);
        self.delivery = Some(delivery);
        Ok(())
    }

    /// Asks the current smtp process something; `None` when there is none or it did not
    /// answer.
    pub(crate) fn ask_smtp(&self, request: &str) -> Option<String> {
        self.smtp.as_ref().and_then(|c| c.chan.ask(request).ok())
    }

    /// Starts the relay process, after the previous one has stopped: two relay runners on
    /// one queue could send a message twice.
    pub(crate) fn start_relay(&mut self) -> std::io::Result<()> {
        if let Some(mut old) = self.relay.take() {
            old.signal(Signal::SIGTERM);
            old.wait_or_kill(Duration::from_secs(30));
        }
        let mut relay = self.spawner.spawn(Role::Relay, Vec::new(), &[])?;
        relay.wait_ready(READY_WITHIN)?;
        if let Ok(mut c) = self.current.relay.lock() {
            *c = Some(Arc::clone(&relay.chan));
        }
        self.relay = Some(relay);
        Ok(())
    }

    /// Reaps exited children; a current one that died is replaced. False when they crash
    /// too often: the daemon must stop.
    fn watch(&mut self, bound: &Bound) -> bool {
        self.retired.retain_mut(|c| c.exited().is_none());
        let mut generation = false;
        for slot in [&mut self.smtp, &mut self.delivery] {
            if let Some(c) = slot.as_mut() {
                if let Some(status) = c.exited() {
                    log::error!(
                        "{} process {} exited ({status}): starting new smtp and delivery processes",
                        c.role.name(),
                        c.pid()
                    );
                    generation = true;
                    *slot = None;
                }
            }
        }
        // A relay that died, or that could not be started last time, is started again.
        let relay_died = match self.relay.as_mut().map(|c| (c.pid(), c.exited())) {
            Some((pid, Some(status))) => {
                log::error!("relay process {pid} exited ({status}): starting a new one");
                self.relay = None;
                true
            }
            Some((_, None)) => false,
            None => true,
        };
        if !generation && !relay_died {
            return true;
        }
        let now = Instant::now();
        self.crashes.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        self.crashes.push(now);
        if self.crashes.len() > MAX_RESTARTS {
            log::error!("{} child crashes within {RESTART_WINDOW:?}: stopping", self.crashes.len());
            return false;
        }
        if generation {
            // The survivor of the pair retires with it (start_generation).
            if let Err(e) = self.start_generation(bound) {
                log::error!("cannot start smtp and delivery processes: {e}");
                return false;
            }
        }
        if relay_died {
            if let Err(e) = self.start_relay() {
                log::error!("cannot start the relay process: {e}");
            }
        }
        true
    }

    /// Stops everything in order: smtp processes first (their in-flight messages get their
    /// verdicts), then delivery (which exits once its links are closed and its work
    /// written), then the relay.
    pub(crate) fn shutdown(&mut self) {
        let mut smtps: Vec<Child> = self.smtp.take().into_iter().collect();
        let mut rest = Vec::new();
        for c in self.retired.drain(..) {
            if c.role == Role::Smtp {
                smtps.push(c);
            } else {
                rest.push(c);
            }
        }
        for c in &smtps {
            c.signal(Signal::SIGTERM);
        }
        for mut c in smtps {
            c.wait_or_kill(Duration::from_secs(45));
        }
        rest.extend(self.delivery.take());
        for mut c in rest {
            c.wait_or_kill(Duration::from_secs(60));
        }
        if let Some(mut r) = self.relay.take() {
            r.signal(Signal::SIGTERM);
            r.wait_or_kill(Duration::from_secs(30));
        }
    }
}

/// What the main thread is asked to do.
pub(crate) enum SupervisorRequest {
    Signal(i32),
    Reload(Sender<Result<String, String>>),
    UpdateTable(String, Sender<Result<String, String>>),
    UpdateAliases(Sender<Result<String, String>>),
}

/// Forwards signals into the supervisor's channel, from a thread of its own.
pub(crate) fn forward_signals(tx: Sender<SupervisorRequest>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            if tx.send(SupervisorRequest::Signal(sig)).is_err() || sig != SIGHUP {
                return;
            }
        }
    })?;
    Ok(())
}

/// Runs until SIGTERM or SIGINT (true) or until children crash too often (false),
/// applying reloads as they are asked for.
pub(crate) fn supervise(
    mut config: Arc<Config>,
    reloader: &Reloader,
    bound: &mut Bound,
    kids: &mut Kids,
    rx: &Receiver<SupervisorRequest>,
) -> bool {
    let mut filter_restarts = super::filter_restart::FilterRestarts::new(&config);
    loop {
        let req = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(req) => req,
            Err(RecvTimeoutError::Timeout) => {
                if !kids.watch(bound) {
                    return false;
                }
                if filter_restarts.check(|q| kids.ask_smtp(q)) {
                    if let Err(e) = kids.start_generation(bound) {
                        log::error!("cannot restart the filters: {e}");
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return true,
        };
        let (result, reply) = match req {
            SupervisorRequest::Signal(sig) if sig == signal_hook::consts::SIGHUP => (full_reload(reloader), None),
            SupervisorRequest::Signal(sig) => {
                log::info!("received signal {sig}, stopping");
                return true;
            }
            SupervisorRequest::Reload(reply) => (full_reload(reloader), Some(reply)),
            SupervisorRequest::UpdateTable(name, reply) => {
                (config.reload_table(&name).map_err(|e| e.to_string()), Some(reply))
            }
            SupervisorRequest::UpdateAliases(reply) => (reload_aliases(&config), Some(reply)),
        };
        let applied = result.and_then(|c| {
            let c = Arc::new(c);
            let p = plan(&c).map_err(|e| e.to_string())?;
            bound.apply(p, super::loop_count(&c)).map_err(|e| e.to_string())?;
            // The children read the files again themselves, as root, before giving it up.
            kids.start_generation(bound).map_err(|e| e.to_string())?;
            kids.start_relay().map_err(|e| e.to_string())?;
            Ok(c)
        });
        let answer = match applied {
            Ok(c) => {
                crate::relay::mda::reconfigure(&c);
                filter_restarts = super::filter_restart::FilterRestarts::new(&c);
                config = c;
                log::info!("configuration reloaded from {}", config.file.display());
                Ok("configuration reloaded".to_owned())
            }
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: {e}");
                Err(e)
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

/// newaliases: every table used as an `alias` table, read again.
fn reload_aliases(config: &Config) -> Result<Config, String> {
    let names: std::collections::BTreeSet<&str> = config.actions.values().filter_map(|a| a.alias.as_deref()).collect();
    let mut names = names.into_iter();
    let first = names.next().ok_or("no action uses an alias table")?;
    let mut next = config.reload_table(first).map_err(|e| e.to_string())?;
    for name in names {
        next = next.reload_table(name).map_err(|e| e.to_string())?;
    }
    Ok(next)
}

fn full_reload(reloader: &Reloader) -> Result<Config, String> {
    config::load(&reloader.path, &reloader.defines).map_err(|e| e.to_string())
}

/// The control socket's handler: asks the supervisor and waits for its answer.
pub(crate) struct Control {
    pub(crate) tx: Sender<SupervisorRequest>,
    pub(crate) spool: std::path::PathBuf,
    pub(crate) hostname: String,
    pub(crate) current: Arc<Current>,
}

impl Control {
    fn ask(
        &self,
        make: impl FnOnce(Sender<Result<String, String>>) -> SupervisorRequest,
    ) -> Result<String, HandlerError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        self.tx.send(make(reply_tx)).map_err(|_| HandlerError::failed("daemon is stopping"))?;
        reply_rx.recv().map_err(|_| HandlerError::failed("daemon is stopping"))?.map_err(HandlerError::failed)
    }
}

impl ControlHandler for Control {
    /// The relay process knows each recipient's retries; without it, the queue files alone.
    fn show_queue(&self) -> String {
        let relay = self.current.relay.lock().ok().and_then(|c| c.clone());
        let text = match relay.map(|c| c.ask("queue")) {
            Some(Ok(text)) => text,
            _ => crate::relay::list(&self.spool, &crate::relay::RetryTable::default()),
        };
        super::queues::show(text)
    }

    fn show_queue_for(&self, user: &str) -> String {
        control::own_lines(&self.show_queue(), user, Some(&self.hostname))
    }

    /// Every smtp process since start counts into the page the parent shares with them.
    fn show_stats(&self) -> String {
        super::stats::get().text()
    }

    /// Every waiting recipient, or those of one message, is retried now: the relay process
    /// does it, and says how many messages that is.
    fn schedule(&self, target: &QueueSelection) -> Result<String, HandlerError> {
        let relay = self.current.relay.lock().ok().and_then(|c| c.clone());
        let request = match target_id(target) {
            None => "schedule".to_string(),
            Some(id) => format!("schedule {id}"),
        };
        let answer = relay
            .ok_or_else(|| HandlerError::failed("the relay process is not running"))
            .and_then(|r| r.ask(&request).map_err(|e| HandlerError::failed(e.to_string())));
        let relayed = answer.and_then(|answer| match answer.strip_prefix("error ") {
            Some(e) => Err(HandlerError::not_found(e)),
            None => Ok(answer),
        });
        // And the mda queue's, whose runner is in this process.
        super::queues::schedule(relayed, target_id(target))
    }

    fn remove(&self, target: &QueueSelection) -> Result<String, HandlerError> {
        super::queues::remove(crate::relay::remove(&self.spool, target_id(target)), target_id(target))
    }

    fn reload(&self) -> Result<String, HandlerError> {
        self.ask(SupervisorRequest::Reload)
    }

    fn update_table(&self, name: &str) -> Result<String, HandlerError> {
        self.ask(|r| SupervisorRequest::UpdateTable(name.to_owned(), r))
    }

    fn update_aliases(&self) -> Result<String, HandlerError> {
        self.ask(SupervisorRequest::UpdateAliases)
    }
}

fn target_id(target: &QueueSelection) -> Option<&str> {
    match target {
        QueueSelection::All => None,
        QueueSelection::Id(id) => Some(id),
    }
}

/// Starts the control socket's thread.
pub(crate) fn start_control(listener: std::os::unix::net::UnixListener, control: Control) {
    let handler: Arc<dyn ControlHandler> = Arc::new(control);
    let spawned = std::thread::Builder::new().name("control".into()).spawn(move || {
        let e = control::serve(listener, handler);
        log::error!("control socket stopped: {e}");
    });
    if let Err(e) = spawned {
        log::error!("cannot start the control thread: {e}");
    }
}

/// Takes in the offline directory at start and then every minute (`MXD_RETRY_BASE` seconds
/// in tests): sendmail leaves a message there when the daemon is down or answers 4xx.
pub(crate) fn offline_loop(spool: &Path) {
    let every = std::env::var("MXD_RETRY_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    loop {
        pick_up_offline(spool);
        std::thread::sleep(every);
    }
}

/// Submits every message sendmail left offline through the daemon's own local socket, and
/// removes each file only after its 250: a crash in between submits it again (at most one
/// duplicate), never loses it.
fn pick_up_offline(spool: &Path) {
    let waiting = match submit::offline::take_offline(spool) {
        Ok(w) => w,
        Err(e) => return log::error!("offline directory: {e}"),
    };
    if waiting.is_empty() {
        return;
    }
    let socket = spool.join(SUBMIT_SOCKET);
    for (path, msg) in waiting {
        let msg = match msg {
            Ok(m) => m,
            Err(e) if e.is_permanent() => {
                match submit::offline::set_aside(spool, &path) {
                    Ok(to) => log::warn!("offline message refused and set aside in {}: {e}", to.display()),
                    Err(moving) => log::error!("offline message refused ({e}) and not set aside: {moving}"),
                }
                continue;
            }
            Err(e) => {
                log::warn!("offline message {} left in place: {e}", path.display());
                continue;
            }
        };
        let prepared =
            submit::headers::Prepared { sender: msg.sender, recipients: msg.recipients, message: msg.message };
        match submit::client::submit(&socket, &prepared, None) {
            Ok(()) => {
                // The name from the file's owner (read_offline checked uid against it), never
                // the one the file claims.
                let name = crate::users::SystemUsers::name_of(msg.uid).unwrap_or_else(|| format!("#{}", msg.uid));
                log::info!("offline message from {name} (uid {}) submitted", msg.uid);
                if let Err(e) = submit::offline::remove_offline(&path) {
                    log::error!("offline message {}: {e}", path.display());
                }
            }
            Err(e) => log::warn!("offline message {} not submitted, kept: {e}", path.display()),
        }
    }
}
