//! `mda "COMMAND"` actions. Their recipients wait in the mda queue (`SPOOL/mda`, root's
//! only), written by the delivery threads in the same group commit as Maildir copies; the
//! parent, which is root and never faces the network, runs a queue runner over it (the
//! relay runner's code: retries, backoff, bounces, `queue ttl`) whose worker runs the
//! command here: `/bin/sh -c COMMAND` with OpenSMTPD's format specifiers and environment,
//! as the user (never root, unless the action's `user` says so), in the user's home, the
//! message on stdin after Return-Path and Delivered-To, within a time limit. Exit 0 is
//! delivered; EX_TEMPFAIL (75), a signal or the time limit is a retry; any other code a
//! bounce, with the last line the command wrote to stderr.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::client::RcptStatus;
use super::worker::{Work, WorkerReport};
use super::{result_name, Handle, SharedConfig};
use crate::config::expand::{expand, ExpandCtx};
use crate::config::{Action, Config, Method};
use crate::envelope::Mailbox;
use crate::forward::ForwardProgram;
use crate::queue;
use crate::users::{SystemUsers, User, UserDb};

/// How long a command may run (`MXD_MDA_TIMEOUT=SECONDS` replaces it, for tests).
const TIME_LIMIT: Duration = Duration::from_secs(600);
/// sysexits.h: "temporary failure; try again later".
const EX_TEMPFAIL: i32 = 75;
/// Of the command's stderr, only this much of the end is kept (for its last line).
const STDERR_KEEP: usize = 4096;

/// The parent's runner's configuration, replaced on reload by [`reconfigure`].
static CONFIG: OnceLock<SharedConfig> = OnceLock::new();

/// The runner's queue directory and handle, for `mailq`, `schedule` and `remove`.
static RUNNER: OnceLock<(PathBuf, Handle)> = OnceLock::new();

/// Starts the mda queue runner (in the parent).
pub fn spawn(config: &Arc<Config>) -> std::io::Result<()> {
    let shared: SharedConfig = Arc::new(Mutex::new(Arc::clone(config)));
    let _ = CONFIG.set(Arc::clone(&shared));
    let (wake, woken) = crossbeam_channel::bounded(1);
    let spool = &config.spool;
    let handle = Handle::new(wake);
    let _ = RUNNER.set((crate::spool::mda_dir(spool), handle.clone()));
    super::spawn_at(spool, crate::spool::mda_dir(spool), "mda", shared, woken, handle).map(drop)
}

/// `mailq`'s lines for the mda queue (the parent's runner knows their retries).
pub fn list() -> String {
    RUNNER.get().map(|(q, h)| super::list_in(q, &h.status)).unwrap_or_default()
}

/// `mxctl schedule all|ID` over the mda queue: how many messages.
pub fn schedule(id: Option<&str>) -> Result<usize, String> {
    let (q, h) = RUNNER.get().ok_or("no mda runner")?;
    h.schedule_in(q, id)
}

/// `mxctl remove all|ID` over the mda queue: how many messages.
pub fn remove(id: Option<&str>) -> Result<usize, String> {
    super::remove_in(&RUNNER.get().ok_or("no mda runner")?.0, id)
}

/// A reloaded configuration: commands and users as it says, from the next attempt on.
pub fn reconfigure(config: &Arc<Config>) {
    if let Some(Ok(mut c)) = CONFIG.get().map(|s| s.lock()) {
        *c = Arc::clone(config);
    }
}

/// Starts the worker of one mda action (the relay worker's counterpart).
pub(super) fn spawn_worker(work: Work, reports: Sender<WorkerReport>) -> std::io::Result<()> {
    std::thread::Builder::new().name("mda-action".into()).spawn(move || {
        if let Some(action) = work.config.actions.get(&work.dest.action) {
            run(&work, action, &reports);
        }
        let _ = reports.send(WorkerReport::Finished(work.dest.clone()));
    })?;
    Ok(())
}

/// Every due recipient's command, one after the other.
fn run(work: &Work, action: &Action, reports: &Sender<WorkerReport>) {
    for item in &work.items {
        // Gone since it was dispatched (`mxctl remove`): nothing to run.
        let Ok(bytes) = crate::queue::seal::read(&work.queue.join("new").join(&item.name)) else { continue };
        let Some((env, message)) = queue::decode(&bytes) else { continue };
        let results = item
            .rcpts
            .iter()
            .map(|rcpt| {
                // A command or file from a ~/.forward or an alias, or the action's command.
                let (r, shown, method) = match (ForwardProgram::from_queue_rcpt(rcpt), &action.method) {
                    (Some(p), _) => {
                        let r = match super::program::command(&work.config, action, &p, &env.sender) {
                            Ok((cmd, user)) => execute(cmd, &user, &env.sender, &p.dest, message),
                            Err(refused) => refused,
                        };
                        (r, p.dest.clone(), p.method())
                    }
                    (None, Method::Mda(command)) => {
                        (deliver(&work.config, action, command, &env.sender, rcpt, message), rcpt.clone(), "mda")
                    }
                    (None, _) => (RcptStatus::Perm("5.3.0 not an mda action".into()), rcpt.clone(), "mda"),
                };
                log::info!("delivery msgid={} to=<{shown}> method={method} result={}", item.id, result_name(&r));
                (rcpt.clone(), r)
            })
            .collect();
        let (ack, acked) = crossbeam_channel::bounded(1);
        let report = WorkerReport::Sent { dest: work.dest.clone(), name: item.name.clone(), results, ack };
        if reports.send(report).is_err() || acked.recv().is_err() {
            return;
        }
    }
}

/// The user a command runs as; `Err` when the userbase could not answer.
fn user_of(config: &Config, action: &Action, name: &str) -> Result<Option<User>, RcptStatus> {
    match &action.user {
        Some(u) => Ok(super::program::action_user(config, action, u)?.or_else(|| SystemUsers.by_name(u))),
        None => super::program::action_user(config, action, name),
    }
}

/// Characters an address may bring into a shell command line through a format specifier.
fn shell_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b"@.-_+=".contains(&b))
}

/// Runs the command for one recipient (`user@domain`, as resolution made it).
fn deliver(config: &Config, action: &Action, command: &str, sender: &str, rcpt: &str, message: &[u8]) -> RcptStatus {
    let local = Mailbox::split(rcpt).local;
    let user = match user_of(config, action, local) {
        Ok(Some(user)) => user,
        Ok(None) => return RcptStatus::Perm(format!("5.1.1 unknown user {local}")),
        Err(status) => return status,
    };
    if user.uid == 0 && action.user.is_none() {
        return RcptStatus::Perm("5.3.0 an mda command never runs as root".into());
    }
    if command.contains('%') && !(shell_safe(sender) && shell_safe(rcpt)) {
        return RcptStatus::Perm("5.1.3 address not safe in an mda command line".into());
    }
    let home = user.home.to_string_lossy().into_owned();
    let ctx = ExpandCtx {
        sender,
        rcpt,
        dest: rcpt,
        user_name: &user.name,
        user_dir: &home,
        sub_addr_delim: config.sub_addr_delim,
    };
    let line = match expand(command, &ctx) {
        Ok(l) => l,
        Err(e) => return RcptStatus::Perm(format!("5.3.5 mda command: {e}")),
    };
    let line = match action.wrapper.as_ref().map(|w| (w, config.knobs.mda_wrappers.get(w))) {
        None => line,
        Some((w, None)) => return RcptStatus::Temp(format!("mda wrapper {w} is not defined")),
        // `%{mda}` in the wrapper is the command, expanded on its own.
        Some((_, Some(wrapper))) => match expand(&wrapper.replace("%{mda}", "\u{1}"), &ctx) {
            Ok(w) => w.replace('\u{1}', &line),
            Err(e) => return RcptStatus::Perm(format!("5.3.5 mda wrapper: {e}")),
        },
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(&line);
    execute(cmd, &user, sender, rcpt, message)
}

/// Runs `cmd` as `user` (when mxd is root) with OpenSMTPD's environment, in the user's
/// home, the message on stdin after Return-Path and Delivered-To (for `rcpt`), within the
/// time limit; its exit status as a recipient's result.
fn execute(mut cmd: Command, user: &User, sender: &str, rcpt: &str, message: &[u8]) -> RcptStatus {
    let Mailbox { local, domain } = Mailbox::split(rcpt);
    let home = user.home.to_string_lossy().into_owned();
    cmd.env_clear()
        .envs([
            ("PATH", "/bin:/usr/bin:/usr/local/bin"),
            ("SHELL", "/bin/sh"),
            ("HOME", &home),
            ("USER", &user.name),
            ("LOGNAME", &user.name),
            ("SENDER", sender),
            ("RECIPIENT", rcpt),
            ("ORIGINAL_RECIPIENT", rcpt),
            ("LOCAL", local),
            ("DOMAIN", domain),
        ])
        .current_dir(if user.home.is_dir() { user.home.as_path() } else { Path::new("/") })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so the time limit kills whatever it started too.
        .process_group(0);
    if nix::unistd::geteuid().is_root() {
        // std drops root's supplementary groups when it changes the uid.
        cmd.uid(user.uid).gid(user.gid);
    }
    // Never while the parent hands descriptors to a child process (they are inheritable then).
    let spawned = {
        let _exclusive = crate::fds::EXEC_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cmd.spawn()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return RcptStatus::Temp(format!("mda: {e}")),
    };
    let (stdin, stderr) = (child.stdin.take(), child.stderr.take());
    let input = [crate::headers::return_path(sender), crate::headers::delivered_to(rcpt), message.to_vec()].concat();
    // Detached, with their own copies: something the command left running may keep its
    // stdin or stderr open, and must not hold this worker once the command is done.
    let _ = std::thread::Builder::new().name("mda-stdin".into()).spawn(move || {
        // A command that does not read its input gets EPIPE here, which is its business.
        if let Some(mut w) = stdin {
            let _ = w.write_all(&input);
        }
    });
    let kept: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (done, finished) = crossbeam_channel::bounded::<()>(1);
    let tail = Arc::clone(&kept);
    let _ = std::thread::Builder::new().name("mda-stderr".into()).spawn(move || {
        tail_of(stderr, &tail);
        drop(done);
    });
    let status = wait(&mut child);
    // Up to a second for the rest of stderr; then what came so far.
    let _ = finished.recv_timeout(Duration::from_secs(1));
    let errors = kept.lock().map(|k| k.clone()).unwrap_or_default();
    let last = String::from_utf8_lossy(&errors).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
    match status {
        None => RcptStatus::Temp(format!("mda timed out after {}s: {last}", time_limit().as_secs())),
        Some(st) => match (st.code(), st.signal()) {
            (Some(0), _) => RcptStatus::Ok,
            (Some(EX_TEMPFAIL), _) => RcptStatus::Temp(format!("mda exited with 75 (EX_TEMPFAIL): {last}")),
            (Some(code), _) => RcptStatus::Perm(format!("5.3.0 mda exited with {code}: {last}")),
            (None, sig) => RcptStatus::Temp(format!("mda killed by signal {}: {last}", sig.unwrap_or(0))),
        },
    }
}

fn time_limit() -> Duration {
    std::env::var("MXD_MDA_TIMEOUT").ok().and_then(|s| s.parse().ok()).map_or(TIME_LIMIT, Duration::from_secs)
}

/// Waits for the command, within the time limit; `None` when it was killed for it.
fn wait(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + time_limit();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                match i32::try_from(child.id()) {
                    Ok(pid) if pid > 0 => {
                        let group = nix::unistd::Pid::from_raw(pid);
                        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    }
                    _ => drop(child.kill()),
                }
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Keeps the end of what `r` yields in `kept`, at most `STDERR_KEEP` bytes of it.
fn tail_of(r: Option<std::process::ChildStderr>, kept: &Mutex<Vec<u8>>) {
    let Some(mut r) = r else { return };
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk) {
        let Ok(mut kept) = kept.lock() else { return };
        if n == 0 {
            return;
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > STDERR_KEEP {
            let excess = kept.len() - STDERR_KEEP;
            kept.drain(..excess);
        }
    }
}
