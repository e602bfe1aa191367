//! Giving up privileges, once per process, before it reads anything from the network:
//! chroot, the unprivileged user, `no_new_privs` on Linux, pledge(2)/unveil(2) on OpenBSD.
//! Linux capabilities need no call of their own: setresuid from root to another uid clears
//! the permitted and effective sets (no SECBIT_KEEP_CAPS is set).

use std::ffi::CString;
use std::io;
use std::path::Path;

use nix::unistd::{Gid, Uid};

/// The unprivileged user the network side runs as, unless `-u` names another.
#[cfg(target_os = "openbsd")]
pub const DEFAULT_USER: &str = "_mxd";
#[cfg(not(target_os = "openbsd"))]
pub const DEFAULT_USER: &str = "mxd";

/// Who to become.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks up `name`; as root a missing user is an error (the install steps create it).
pub fn account(name: &str) -> Result<Account, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Account { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
        Ok(None) => Err(format!(
            "user {name} does not exist: create it (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or name another with -u"
        )),
        Err(e) => Err(format!("user {name}: {e}")),
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What a process keeps of the file system.
pub enum Jail<'a> {
    /// chroot into this (empty) directory.
    Chroot(&'a Path),
    /// chdir here and keep the file system (the relay reads CA bundles and connects out).
    Chdir(&'a Path),
}

/// Becomes `who` inside `jail`. Not root: nothing to give up but no_new_privs (logged once).
pub fn drop_to(who: &Account, jail: Jail<'_>) -> io::Result<()> {
    match jail {
        Jail::Chroot(dir) => {
            nix::unistd::chdir(dir)?;
            if is_root() {
                nix::unistd::chroot(".")?;
                nix::unistd::chdir("/")?;
            }
        }
        Jail::Chdir(dir) => nix::unistd::chdir(dir)?,
    }
    if is_root() {
        let gid = Gid::from_raw(who.gid);
        let uid = Uid::from_raw(who.uid);
        nix::unistd::setgroups(&[gid])?;
        nix::unistd::setresgid(gid, gid, gid)?;
        nix::unistd::setresuid(uid, uid, uid)?;
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(io::Error::other("could regain root after dropping it"));
        }
        // Linux clears the parent-death signal when the uid changes.
        die_with_parent(PARENT.load(std::sync::atomic::Ordering::Relaxed));
    }
    no_new_privs()
}

#[cfg(target_os = "linux")]
fn no_new_privs() -> io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn no_new_privs() -> io::Result<()> {
    Ok(())
}

/// The process name `ps` shows (comm on Linux); argv[0] is set by the parent at exec.
#[cfg(target_os = "linux")]
pub fn set_name(name: &str) {
    if let Ok(c) = CString::new(name) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_name(name: &str) {
    let _ = CString::new(name);
}

static PARENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Dies with the parent (Linux); elsewhere the parent channel's end of file does it.
#[cfg(target_os = "linux")]
pub fn die_with_parent(parent: u32) {
    PARENT.store(parent, std::sync::atomic::Ordering::Relaxed);
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() as u32 != parent {
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(parent: u32) {
    PARENT.store(parent, std::sync::atomic::Ordering::Relaxed);
}

/// pledge(2) with `promises`, and unveil(2) of nothing more when `lock_unveil`.
#[cfg(target_os = "openbsd")]
#[allow(unsafe_code)] // FFI: pledge(2)/unveil(2) take C strings and touch no Rust memory.
pub fn pledge(promises: &str, lock_unveil: bool) -> io::Result<()> {
    let p = CString::new(promises).map_err(io::Error::other)?;
    if lock_unveil {
        // SAFETY: two null pointers lock the unveil list, as unveil(2) documents.
        if unsafe { nix::libc::unveil(std::ptr::null(), std::ptr::null()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `p` is a valid NUL-terminated string alive across the call; execpromises null.
    if unsafe { nix::libc::pledge(p.as_ptr(), std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "openbsd"))]
pub fn pledge(_promises: &str, _lock_unveil: bool) -> io::Result<()> {
    Ok(())
}

/// For a process that keeps its uid (delivery, or anything when not root): it may still
/// never gain privileges through exec.
pub fn drop_to_nothing() -> io::Result<()> {
    no_new_privs()
}
