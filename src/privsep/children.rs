//! The parent's side of its children: start one by re-executing this binary with a hidden
//! role argument (never fork alone: the parent has threads), pass it the descriptors it must
//! have, ask it questions over its channel (its stdin, a socketpair), signal and reap it.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{fds, frame, Role};

/// What a child says once it is ready.
const READY: &str = "ready";

/// Longest answer read from a child (a long `show queue`).
const MAX_ANSWER: usize = 16 << 20;

/// How to start children: this binary and the flags they share with the parent.
pub struct Spawner {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// A child's request channel, shared by the threads that ask it something.
pub struct Chan {
    stream: Mutex<UnixStream>,
}

impl Chan {
    /// Sends `request` and waits (bounded) for the answer.
    pub fn ask(&self, request: &str) -> io::Result<String> {
        let mut s = self.stream.lock().map_err(|_| io::Error::other("channel poisoned"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(&frame::encode_text(request))?;
        let answer = frame::read_frame(&mut *s, MAX_ANSWER)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

/// A running child.
pub struct Child {
    pub role: Role,
    pub chan: Arc<Chan>,
    proc: std::process::Child,
}

impl Spawner {
    /// Starts `role` with `extra` arguments; `pass` are the descriptors it inherits (their
    /// numbers are in `extra`). Called from the main thread only: on Linux a child dies with
    /// the thread that started it.
    pub fn spawn(&self, role: Role, extra: Vec<OsString>, pass: &[BorrowedFd<'_>]) -> io::Result<Child> {
        let (ours, theirs) = UnixStream::pair()?;
        let _exclusive = fds::EXEC_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for fd in pass {
            fds::inherit(*fd, true)?;
        }
        // `queue encryption stdin`: the processes that touch queue files get the key.
        let key = match role {
            Role::Delivery | Role::Relay => super::stdin_key::pipe_for_child()?,
            Role::Smtp => None,
        };
        let mut cmd = Command::new(&self.exe);
        if let Some((fd, (name, value))) = &key {
            fds::inherit(fd.as_fd(), true)?;
            cmd.env(name, value);
        }
        cmd.arg0(format!("mxd: {}", role.name()))
            .arg("-x")
            .arg(role.name())
            .arg("--parent")
            .arg(std::process::id().to_string())
            .args(&self.args)
            .args(extra)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null());
        let spawned = cmd.spawn();
        for fd in pass {
            let _ = fds::inherit(*fd, false);
        }
        let proc = spawned?;
        log::info!("{} process started, pid {}", role.name(), proc.id());
        Ok(Child { role, chan: Arc::new(Chan { stream: Mutex::new(ours) }), proc })
    }
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Waits (up to `limit`) for the child to say it is ready; a child that exits or says
    /// nothing in time is killed and reported.
    pub fn wait_ready(&mut self, limit: Duration) -> io::Result<()> {
        let said = self.chan.stream.lock().map_err(|_| io::Error::other("channel poisoned")).and_then(|mut s| {
            s.set_read_timeout(Some(limit))?;
            frame::read_frame(&mut *s, frame::MAX_SMALL)
        });
        match said {
            Ok(Some(f)) if f == READY.as_bytes() => Ok(()),
            other => {
                let _ = self.proc.kill();
                let status = self.proc.wait().map(|s| s.to_string()).unwrap_or_default();
                let why = match other {
                    Err(e) => e.to_string(),
                    _ => "no ready".into(),
                };
                Err(io::Error::other(format!("{} process did not start ({status}; {why})", self.role.name())))
            }
        }
    }

    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.proc.id() as i32), sig);
    }

    /// Reaps the child if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the child to exit, then kills it.
    pub fn wait_or_kill(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!("{} process {} did not stop in {limit:?}: killed", self.role.name(), self.pid());
        let _ = self.proc.kill();
        self.proc.wait().ok()
    }
}

/// The child's end: says `ready` (its configuration loaded, its privileges dropped), then
/// answers the parent's requests on stdin with `answer`, on a thread. The end of that
/// stream means the parent is gone; the child then exits at once.
pub fn serve_parent(answer: impl Fn(&str) -> String + Send + 'static) -> io::Result<()> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    let mut s = UnixStream::from(fd);
    s.write_all(&frame::encode_text(READY))?;
    std::thread::Builder::new().name("parent".into()).spawn(move || loop {
        match frame::read_frame(&mut s, frame::MAX_SMALL) {
            Ok(Some(req)) => {
                let reply = answer(&String::from_utf8_lossy(&req));
                if s.write_all(&frame::encode_text(&reply)).is_err() {
                    std::process::exit(1);
                }
            }
            _ => {
                log::warn!("parent process gone: exiting");
                std::process::exit(1);
            }
        }
    })?;
    Ok(())
}
