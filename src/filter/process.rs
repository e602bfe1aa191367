//! A `proc-exec` filter process: where its command is found, the user it runs as, and its
//! three pipes, non-blocking, for an event loop to drive (`stdin_source`, `stdout_source`,
//! `stderr_source` are mio sources). Not sans-IO: this is the part that touches the system.
//!
//! Output from the process is untrusted: lines are bounded (`protocol::MAX_LINE`) and so is
//! what waits to be written to a process that stopped reading (`MAX_BACKLOG`).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mio::unix::pipe;

use super::chain::Registration;
use super::protocol::{self, Output, MAX_LINE};

pub use crate::program::LIBEXEC_DIRS;

/// Unwritten lines for one process beyond this mean it has stopped reading: it is hung.
pub const MAX_BACKLOG: usize = 8 * 1024 * 1024;
/// Stderr lines longer than this are cut when logged.
const MAX_STDERR_LINE: usize = 1024;

/// A `proc-exec` (or `proc`) statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSpec {
    /// The filter's or process's name.
    pub name: String,
    /// The command line, run by `/bin/sh -c`.
    pub command: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub chroot: Option<PathBuf>,
}

#[derive(Debug)]
pub enum SpawnError {
    /// The command's program is in none of the places looked at.
    NotFound {
        program: String,
        looked: Vec<PathBuf>,
    },
    /// It exists but is not an executable file.
    NotExecutable(PathBuf),
    EmptyCommand,
    NoSuchUser(String),
    NoSuchGroup(String),
    /// `user`/`group` other than our own, and we are not root.
    NeedRoot(String),
    Io(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NotFound { program, looked } => {
                let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                write!(f, "{program}: not found (looked at {})", looked.join(", "))
            }
            SpawnError::NotExecutable(p) => write!(f, "{}: not an executable file", p.display()),
            SpawnError::EmptyCommand => f.write_str("empty command"),
            SpawnError::NoSuchUser(u) => write!(f, "no such user: {u}"),
            SpawnError::NoSuchGroup(g) => write!(f, "no such group: {g}"),
            SpawnError::NeedRoot(u) => write!(f, "running a filter as {u} needs root"),
            SpawnError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Finds the program of `command` (its first word): see [`crate::program::find_program`].
pub fn find_program(command: &str) -> Result<PathBuf, SpawnError> {
    Ok(crate::program::find_program(command)?)
}

pub fn find_program_in(command: &str, dirs: &[&Path]) -> Result<PathBuf, SpawnError> {
    Ok(crate::program::find_program_in(command, dirs)?)
}

impl From<crate::program::ProgramError> for SpawnError {
    fn from(e: crate::program::ProgramError) -> SpawnError {
        use crate::program::ProgramError;
        match e {
            ProgramError::NotFound { program, looked } => SpawnError::NotFound { program, looked },
            ProgramError::NotExecutable(p) => SpawnError::NotExecutable(p),
            ProgramError::EmptyCommand => SpawnError::EmptyCommand,
        }
    }
}

/// The command line with its program replaced by the path found for it.
fn resolved_command(command: &str, dirs: &[&Path]) -> Result<String, SpawnError> {
    let program = find_program_in(command, dirs)?;
    let trimmed = command.trim_start();
    let rest = &trimmed[trimmed.find(char::is_whitespace).unwrap_or(trimmed.len())..];
    Ok(format!("{}{rest}", program.display()))
}

/// The command line for a chrooted process, its program as seen inside `root`.
fn resolved_chrooted(command: &str, dirs: &[&Path], root: &Path) -> Result<String, SpawnError> {
    let program = crate::program::find_program_chrooted_in(command, dirs, root)?;
    let trimmed = command.trim_start();
    let rest = &trimmed[trimmed.find(char::is_whitespace).unwrap_or(trimmed.len())..];
    Ok(format!("{}{rest}", program.display()))
}

/// `chroot DIR`: the child enters `root`, then becomes `ids` (std would change the ids
/// before any hook of ours runs, and then chroot(2) is refused), then execs `/bin/sh`
/// inside it, as OpenSMTPD does.
fn chroot_then_drop(cmd: &mut Command, root: &Path, ids: Option<(u32, u32)>) -> Result<(), SpawnError> {
    use std::os::unix::ffi::OsStrExt;
    let root = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| SpawnError::Io(io::Error::other("chroot path holds a NUL")))?;
    let hook = move || -> io::Result<()> {
        use nix::unistd::{chdir, chroot, setgid, setgroups, setuid, Gid, Uid};
        chroot(root.as_c_str())?;
        chdir(c"/")?;
        if let Some((uid, gid)) = ids {
            setgroups(&[])?;
            setgid(Gid::from_raw(gid))?;
            setuid(Uid::from_raw(uid))?;
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec; it only makes system calls on memory
    // prepared before the fork (no allocation, no lock), as pre_exec requires.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// The uid and gid a filter runs as, or `None` for "as we are".
///
/// As root, a filter never keeps root unless `user` names root: without `user` it runs as
/// the first of `_mxd`, `mxd`, `nobody` that exists. Not root, it runs as we are, and a
/// `user` or `group` naming someone else is an error.
pub fn run_as(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>, SpawnError> {
    use nix::unistd::{getgid, getuid, Group, User};
    let lookup_user = |n: &str| User::from_name(n).ok().flatten();
    let pw = match user {
        Some(u) => Some(lookup_user(u).ok_or_else(|| SpawnError::NoSuchUser(u.to_string()))?),
        None if getuid().is_root() => {
            let found = ["_mxd", "mxd", "nobody"].into_iter().find_map(lookup_user);
            Some(found.ok_or_else(|| SpawnError::NoSuchUser("nobody".into()))?)
        }
        None => None,
    };
    let gid = match group {
        Some(g) => Some(Group::from_name(g).ok().flatten().ok_or_else(|| SpawnError::NoSuchGroup(g.to_string()))?.gid),
        None => pw.as_ref().map(|p| p.gid),
    };
    if !getuid().is_root() {
        if let Some(p) = &pw {
            if p.uid != getuid() {
                return Err(SpawnError::NeedRoot(p.name.clone()));
            }
        }
        if gid.is_some_and(|g| g != getgid()) {
            return Err(SpawnError::NeedRoot(group.unwrap_or_default().to_string()));
        }
        return Ok(None);
    }
    let uid = pw.map(|p| p.uid).unwrap_or_else(getuid);
    Ok(Some((uid.as_raw(), gid.unwrap_or_else(getgid).as_raw())))
}

/// What reading a process's output found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Everything available was read; more may come.
    Open,
    /// The per-call budget ran out with input left: call again (the pipe will not signal
    /// readiness for what is already there).
    More,
    /// The process closed its output (it exited or crashed).
    Closed,
}

#[derive(Debug)]
pub enum ProcError {
    /// A line longer than `protocol::MAX_LINE`.
    LineTooLong,
    /// More than [`MAX_BACKLOG`] waits to be written: the process does not read.
    Backlog,
    Io(io::Error),
}

impl fmt::Display for ProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcError::LineTooLong => f.write_str("line too long"),
            ProcError::Backlog => f.write_str("not reading its input"),
            ProcError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProcError {}

/// A running filter process.
pub struct FilterProcess {
    name: String,
    child: Child,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    /// The unfinished tail of stdout (never more than a line).
    inbuf: Vec<u8>,
    errbuf: Vec<u8>,
    outbuf: VecDeque<u8>,
}

impl FilterProcess {
    /// Starts `spec` with `/bin/sh -c`, as `run_as` says, and queues `handshake` (the
    /// `config|…` lines) for it.
    pub fn spawn(spec: &ProcSpec, handshake: &str) -> Result<FilterProcess, SpawnError> {
        FilterProcess::spawn_in(spec, handshake, &LIBEXEC_DIRS.map(Path::new))
    }

    /// As `spawn`, looking for bare command names in `dirs`.
    pub fn spawn_in(spec: &ProcSpec, handshake: &str, dirs: &[&Path]) -> Result<FilterProcess, SpawnError> {
        let command = match &spec.chroot {
            Some(root) => resolved_chrooted(&spec.command, dirs, root)?,
            None => resolved_command(&spec.command, dirs)?,
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // A group of its own: stopping the filter reaches the command `sh -c` runs too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let ids = run_as(spec.user.as_deref(), spec.group.as_deref())?;
        if let Some((uid, _)) = ids {
            if let Ok(Some(pw)) = nix::unistd::User::from_uid(uid.into()) {
                cmd.env("HOME", pw.dir).env("USER", &pw.name).env("LOGNAME", &pw.name);
            }
        }
        match (&spec.chroot, ids) {
            (Some(root), ids) => chroot_then_drop(&mut cmd, root, ids)?,
            // std sets the gid, drops supplementary groups (as root) and sets the uid in
            // the child before exec.
            (None, Some((uid, gid))) => {
                cmd.gid(gid).uid(uid);
            }
            (None, None) => {}
        }
        let mut child = cmd.spawn().map_err(SpawnError::Io)?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(i), Some(o), Some(e)) = pipes else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::Io(io::Error::other("missing pipe")));
        };
        let (stdin, stdout, stderr) = (pipe::Sender::from(i), pipe::Receiver::from(o), pipe::Receiver::from(e));
        for r in [stdin.set_nonblocking(true), stdout.set_nonblocking(true), stderr.set_nonblocking(true)] {
            r.map_err(SpawnError::Io)?;
        }
        let mut p = FilterProcess {
            name: spec.name.clone(),
            child,
            stdin,
            stdout,
            stderr,
            inbuf: Vec::new(),
            errbuf: Vec::new(),
            outbuf: VecDeque::new(),
        };
        p.outbuf.extend(handshake.as_bytes());
        Ok(p)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Queues lines (newlines included) for the process; `flush` writes them.
    pub fn queue(&mut self, line: &[u8]) -> Result<(), ProcError> {
        if self.outbuf.len() + line.len() > MAX_BACKLOG {
            return Err(ProcError::Backlog);
        }
        self.outbuf.extend(line);
        Ok(())
    }

    /// Whether lines wait to be written.
    pub fn wants_write(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Writes what it can without blocking.
    pub fn flush(&mut self) -> Result<(), ProcError> {
        while !self.outbuf.is_empty() {
            let (a, _) = self.outbuf.as_slices();
            match self.stdin.write(a) {
                Ok(0) => return Err(ProcError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => drop(self.outbuf.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProcError::Io(e)),
            }
        }
        Ok(())
    }

    /// Reads what is available and calls `line` for each complete line (newline
    /// stripped). At most 256 KiB per call, so a flooding process cannot monopolize a loop.
    pub fn read_lines(&mut self, mut line: impl FnMut(&[u8])) -> Result<ReadStatus, ProcError> {
        let mut chunk = [0u8; 16 * 1024];
        for _ in 0..16 {
            match self.stdout.read(&mut chunk) {
                Ok(0) => return Ok(ReadStatus::Closed),
                Ok(n) => {
                    let mut data = &chunk[..n];
                    while let Some(i) = memchr::memchr(b'\n', data) {
                        if self.inbuf.is_empty() {
                            line(&data[..i]);
                        } else {
                            self.inbuf.extend_from_slice(&data[..i]);
                            line(&self.inbuf);
                            self.inbuf.clear();
                        }
                        data = &data[i + 1..];
                    }
                    self.inbuf.extend_from_slice(data);
                    if self.inbuf.len() > MAX_LINE {
                        return Err(ProcError::LineTooLong);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProcError::Io(e)),
            }
        }
        Ok(ReadStatus::More)
    }

    /// One step of the handshake: writes what waits (the `config|…` lines), reads the
    /// `register|…` lines that came into `reg`. An error says why the process cannot be used.
    pub fn read_registrations(&mut self, reg: &mut Registration) -> Result<(), String> {
        self.flush().map_err(|e| e.to_string())?;
        self.drain_stderr();
        let mut lines = Vec::new();
        let status = self.read_lines(|l| lines.push(l.to_vec())).map_err(|e| e.to_string())?;
        for l in &lines {
            match protocol::parse_output(l) {
                Ok(Output::Register(r)) if !reg.is_ready() => {
                    reg.handle(r);
                }
                Ok(_) => return Err("a line other than register|… before the first request".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
        if status == ReadStatus::Closed && !reg.is_ready() {
            return Err("exited during the handshake".into());
        }
        Ok(())
    }

    /// Reads what the process wrote after its handshake and gives `each` every line with
    /// what it parses to. `Ok(true)`: input was left unread (call again). An error says why
    /// the process must be stopped: it exited, or wrote a line that is malformed or a
    /// register line (the lines before it were given).
    pub fn read_outputs(&mut self, mut each: impl FnMut(&[u8], Output<'_>)) -> Result<bool, String> {
        self.drain_stderr();
        let mut bad = None;
        let status = self.read_lines(|line| {
            if bad.is_some() {
                return;
            }
            match protocol::parse_output(line) {
                Ok(Output::Register(_)) => bad = Some("register line after register|ready".into()),
                Ok(output) => each(line, output),
                Err(e) => {
                    let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                    bad = Some(format!("{e}: {}", shown.escape_debug()));
                }
            }
        });
        if let Some(why) = bad {
            return Err(why);
        }
        match status {
            Ok(ReadStatus::Open) => Ok(false),
            Ok(ReadStatus::More) => Ok(true),
            Ok(ReadStatus::Closed) => Err("exited".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Logs what the process wrote to stderr, a line at a time, as OpenSMTPD does.
    pub fn drain_stderr(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stderr.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    self.errbuf.extend_from_slice(&chunk[..n]);
                    while let Some(i) = memchr::memchr(b'\n', &self.errbuf) {
                        let text = String::from_utf8_lossy(&self.errbuf[..i.min(MAX_STDERR_LINE)]).into_owned();
                        log::warn!("filter {}: {}", self.name, text.escape_debug());
                        self.errbuf.drain(..=i);
                    }
                    if self.errbuf.len() > MAX_STDERR_LINE {
                        self.errbuf.clear();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    pub fn stdin_source(&mut self) -> &mut pipe::Sender {
        &mut self.stdin
    }

    pub fn stdout_source(&mut self) -> &mut pipe::Receiver {
        &mut self.stdout
    }

    pub fn stderr_source(&mut self) -> &mut pipe::Receiver {
        &mut self.stderr
    }

    /// Whether the process has exited (reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FilterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn bare_names_are_looked_up_in_libexec_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("filter-x");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let dirs = [Path::new("/nonexistent"), dir.path()];
        assert_eq!(find_program_in("filter-x -d a", &dirs).unwrap(), exe);
        assert_eq!(resolved_command("  filter-x -d a  -s b", &dirs).unwrap(), format!("{} -d a  -s b", exe.display()));
        assert!(matches!(find_program_in("nope", &dirs), Err(SpawnError::NotFound { .. })));
        assert!(matches!(find_program_in(plain.to_str().unwrap(), &dirs), Err(SpawnError::NotExecutable(_))));
        assert!(matches!(find_program_in("  ", &dirs), Err(SpawnError::EmptyCommand)));
        assert_eq!(find_program_in("/bin/sh -c x", &dirs).unwrap(), PathBuf::from("/bin/sh"));
    }
}
