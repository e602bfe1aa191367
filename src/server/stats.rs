//! The counters `mxctl show stats` prints, in one page of memory that the parent shares with
//! every smtp process it starts. A process that retires on reload, or crashes, keeps counting
//! into the same page while its last sessions finish, so no count is lost with it.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::sys::mman::{mmap, MapFlags, ProtFlags};

use crate::privsep::frame::DeliveryVerdict;

#[repr(C)]
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) tempfail: AtomicU64,
    pub(crate) permfail: AtomicU64,
}

impl Stats {
    pub(crate) fn count(&self, outcome: &DeliveryVerdict) {
        let c = match outcome {
            DeliveryVerdict::Ok => &self.delivered,
            DeliveryVerdict::TempFail(_) => &self.tempfail,
            DeliveryVerdict::PermFail(_) => &self.permfail,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "smtp.connections={}\ndelivery.ok={}\ndelivery.tempfail={}\ndelivery.permfail={}",
            self.connections.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.tempfail.load(Ordering::Relaxed),
            self.permfail.load(Ordering::Relaxed)
        )
    }
}

static SHARED: OnceLock<&'static Stats> = OnceLock::new();
/// Where a process given no shared page counts (unit tests, a failed mapping).
static LOCAL: Stats = Stats {
    connections: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
    tempfail: AtomicU64::new(0),
    permfail: AtomicU64::new(0),
};

/// This process's counters.
pub(crate) fn get() -> &'static Stats {
    SHARED.get().copied().unwrap_or(&LOCAL)
}

/// The parent's side: a new zeroed page, and the descriptor its children map.
pub(crate) fn create() -> std::io::Result<OwnedFd> {
    let fd = anonymous_file()?;
    nix::unistd::ftruncate(&fd, std::mem::size_of::<Stats>() as i64)?;
    attach(&fd)?;
    Ok(fd)
}

/// Maps the page behind `fd` as this process's counters.
#[allow(unsafe_code)] // mmap(2): the one memory shared between processes, as said below.
pub(crate) fn attach(fd: &impl AsFd) -> std::io::Result<()> {
    let len = NonZeroUsize::new(std::mem::size_of::<Stats>()).expect("Stats is not empty");
    // SAFETY: a fresh shared mapping of a file at least `len` long, never unmapped.
    let page = unsafe { mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, fd, 0)? };
    // SAFETY: page-aligned, `len` bytes, zero-filled by ftruncate; every process touches it
    // only through these atomics; it lives as long as the process.
    let stats: &'static Stats = unsafe { page.cast::<Stats>().as_ref() };
    SHARED.set(stats).map_err(|_| std::io::Error::other("stats mapped twice"))
}

#[cfg(target_os = "linux")]
fn anonymous_file() -> std::io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    Ok(memfd_create(c"mxd-stats", MFdFlags::MFD_CLOEXEC)?)
}

/// Elsewhere a POSIX shared memory object, unlinked at once: only the descriptor names it.
#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> std::io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    use nix::sys::mman::{shm_open, shm_unlink};
    use nix::sys::stat::Mode;
    let name = format!("/mxd-stats-{}", std::process::id());
    let fd = shm_open(name.as_str(), OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL, Mode::S_IRUSR | Mode::S_IWUSR)?;
    shm_unlink(name.as_str())?;
    Ok(fd)
}
