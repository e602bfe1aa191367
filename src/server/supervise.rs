//! The main thread's work once the loops run: signals (SIGTERM/SIGINT stop, SIGHUP
//! reloads), requests from `mxctl` over the control socket, and taking in the mail that
//! `sendmail` left in the offline directory while the daemon was down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{plan, Bound, LoopHandle, Reloader, SUBMIT_SOCKET};
use crate::config::{self, Config};
use crate::control::{self, ControlHandler, HandlerError, Target};
use crate::deliver::Outcome;
use crate::submit;

/// Counters for `mxctl show stats`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) tempfail: AtomicU64,
    pub(crate) permfail: AtomicU64,
}

impl Stats {
    pub(crate) fn count(&self, outcome: &Outcome) {
        let c = match outcome {
            Outcome::Ok => &self.delivered,
            Outcome::TempFail(_) => &self.tempfail,
            Outcome::PermFail(_) => &self.permfail,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the main thread is asked to do.
pub(crate) enum Request {
    Signal(i32),
    Reload(Sender<Result<String, String>>),
    UpdateTable(String, Sender<Result<String, String>>),
    UpdateAliases(Sender<Result<String, String>>),
}

/// Forwards signals into the supervisor's channel, from a thread of its own.
pub(crate) fn forward_signals(tx: Sender<Request>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            if tx.send(Request::Signal(sig)).is_err() || sig != SIGHUP {
                return;
            }
        }
    })?;
    Ok(())
}

/// Runs until SIGTERM or SIGINT, applying reloads as they are asked for.
pub(crate) fn supervise(
    mut config: Arc<Config>,
    reloader: &Reloader,
    bound: &mut Bound,
    handles: &[LoopHandle],
    rx: &Receiver<Request>,
    shared: &crate::relay::SharedConfig,
) {
    while let Ok(req) = rx.recv() {
        let (result, reply) = match req {
            Request::Signal(sig) if sig == signal_hook::consts::SIGHUP => (full_reload(reloader), None),
            Request::Signal(sig) => {
                log::info!("received signal {sig}, stopping");
                return;
            }
            Request::Reload(reply) => (full_reload(reloader), Some(reply)),
            Request::UpdateTable(name, reply) => (config.reload_table(&name).map_err(|e| e.to_string()), Some(reply)),
            Request::UpdateAliases(reply) => (reload_aliases(&config), Some(reply)),
        };
        let applied = result.and_then(|c| {
            let c = Arc::new(c);
            let p = plan(&c).map_err(|e| e.to_string())?;
            bound.apply(p, handles).map_err(|e| e.to_string())?;
            Ok(c)
        });
        let answer = match applied {
            Ok(c) => {
                config = c;
                if let Ok(mut s) = shared.lock() {
                    *s = Arc::clone(&config);
                }
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
    pub(crate) tx: Sender<Request>,
    pub(crate) stats: &'static Stats,
    pub(crate) spool: PathBuf,
    pub(crate) relay: crate::relay::Handle,
}

impl Control {
    fn ask(&self, make: impl FnOnce(Sender<Result<String, String>>) -> Request) -> Result<String, HandlerError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        self.tx.send(make(reply_tx)).map_err(|_| HandlerError::failed("daemon is stopping"))?;
        reply_rx.recv().map_err(|_| HandlerError::failed("daemon is stopping"))?.map_err(HandlerError::failed)
    }
}

impl ControlHandler for Control {
    fn show_queue(&self) -> String {
        crate::relay::list(&self.spool, &self.relay.status)
    }

    fn show_stats(&self) -> String {
        let s = self.stats;
        format!(
            "smtp.connections={}\ndelivery.ok={}\ndelivery.tempfail={}\ndelivery.permfail={}",
            s.connections.load(Ordering::Relaxed),
            s.delivered.load(Ordering::Relaxed),
            s.tempfail.load(Ordering::Relaxed),
            s.permfail.load(Ordering::Relaxed)
        )
    }

    /// Every waiting recipient, or those of one message, is retried now.
    fn schedule(&self, target: &Target) -> Result<String, HandlerError> {
        let n = self.relay.schedule(&self.spool, target_id(target)).map_err(HandlerError::not_found)?;
        Ok(format!("{n} scheduled"))
    }

    fn remove(&self, target: &Target) -> Result<String, HandlerError> {
        let n = crate::relay::remove(&self.spool, target_id(target)).map_err(HandlerError::not_found)?;
        Ok(format!("{n} removed"))
    }

    fn reload(&self) -> Result<String, HandlerError> {
        self.ask(Request::Reload)
    }

    fn update_table(&self, name: &str) -> Result<String, HandlerError> {
        self.ask(|r| Request::UpdateTable(name.to_owned(), r))
    }

    fn update_aliases(&self) -> Result<String, HandlerError> {
        self.ask(Request::UpdateAliases)
    }
}

fn target_id(target: &Target) -> Option<&str> {
    match target {
        Target::All => None,
        Target::Id(id) => Some(id),
    }
}

/// Starts the control socket's thread; a failure to bind is logged, not fatal.
pub(crate) fn start_control(spool: &std::path::Path, control: Control) {
    match control::bind(spool) {
        Ok(listener) => {
            let handler: Arc<dyn ControlHandler> = Arc::new(control);
            let spawned = std::thread::Builder::new().name("control".into()).spawn(move || {
                let e = control::serve(listener, handler);
                log::error!("control socket stopped: {e}");
            });
            if let Err(e) = spawned {
                log::error!("cannot start the control thread: {e}");
            }
        }
        Err(e) => log::error!("control socket in {}: {e}", spool.display()),
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
            Err(e) => {
                log::warn!("offline message {} left in place: {e}", path.display());
                continue;
            }
        };
        let prepared =
            submit::headers::Prepared { sender: msg.sender, recipients: msg.recipients, message: msg.message };
        match submit::client::submit(&socket, &prepared, None) {
            Ok(()) => {
                log::info!("offline message from {} (uid {}) submitted", msg.user, msg.uid);
                if let Err(e) = submit::offline::remove_offline(&path) {
                    log::error!("offline message {}: {e}", path.display());
                }
            }
            Err(e) => log::warn!("offline message {} not submitted, kept: {e}", path.display()),
        }
    }
}
