//! Listening sockets. On Linux each event loop binds its own SO_REUSEPORT socket per address,
//! so the kernel spreads connections across loops; elsewhere (OpenBSD) one socket is bound
//! and each loop polls a duplicate of it, and the first loop to accept wins.
//!
//! The parent binds (ports below 1024 need root) but does not listen: the smtp process calls
//! [`listen`] once it is ready to serve, so a port accepts connections only once a process
//! that will answer them has loaded its configuration.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog as large as the kernel allows: a burst of connections must queue, not fail.
const BACKLOG: i32 = 1024;

/// Starts listening on a socket the parent bound (again, after a reload: harmless).
pub(crate) fn listen(fd: &impl std::os::fd::AsFd) -> io::Result<()> {
    socket2::SockRef::from(fd).listen(BACKLOG)
}

fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // "listen on ::1" must not also claim the IPv4 port.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Binds `addr` once for each of `loops` event loops and returns one listener per loop.
#[cfg(target_os = "linux")]
pub(crate) fn bind_tcp(addr: SocketAddr, loops: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(loops);
    for _ in 0..loops.max(1) {
        let socket = tcp_socket(addr)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        out.push(socket.into());
    }
    Ok(out)
}

/// Portable path: one socket, duplicated for each loop.
#[cfg(not(target_os = "linux"))]
pub(crate) fn bind_tcp(addr: SocketAddr, loops: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = tcp_socket(addr)?;
    socket.bind(&addr.into())?;
    let first: std::net::TcpListener = socket.into();
    let mut out = Vec::with_capacity(loops);
    for _ in 1..loops.max(1) {
        out.push(first.try_clone()?);
    }
    out.push(first);
    Ok(out)
}

/// Binds the local submission socket (`listen on socket`), replacing a stale one left by a
/// crash; the smtp process listens on it. Mode 0666 as OpenSMTPD's smtpd.sock: every local user may submit; who they are is
/// taken from the socket's peer credentials, not from what they claim.
pub(crate) fn bind_unix(path: &Path, loops: usize) -> io::Result<Vec<std::os::unix::net::UnixListener>> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    socket.set_nonblocking(true)?;
    let first: std::os::unix::net::UnixListener = std::os::fd::OwnedFd::from(socket).into();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let mut out = Vec::with_capacity(loops);
    for _ in 1..loops.max(1) {
        out.push(first.try_clone()?);
    }
    out.push(first);
    Ok(out)
}
