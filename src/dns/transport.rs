//! One exchange with one nameserver: UDP from a random source port with a random id, and
//! TCP (RFC 1035 §4.2.2, RFC 7766) when the UDP answer is truncated. Blocking, with a
//! deadline: this runs on the relay or resolver thread, never on an event loop.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use super::wire::{self, Answer, Question, WireError};

/// Datagrams that are not our answer (wrong id, wrong question) are dropped; this many end
/// the exchange, so a flood cannot keep the thread past its deadline's spirit.
const MAX_STRAY: usize = 64;
/// Source ports are drawn from here; a port in use is drawn again.
const PORT_RANGE: std::ops::Range<u16> = 1024..u16::MAX;

/// Why an exchange gave no answer; the caller moves on to the next server.
#[derive(Debug)]
pub enum ExchangeError {
    Timeout,
    Io(io::Error),
    Wire(WireError),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Timeout => f.write_str("timed out"),
            ExchangeError::Io(e) => write!(f, "{e}"),
            ExchangeError::Wire(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> ExchangeError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ExchangeError::Timeout,
            _ => ExchangeError::Io(e),
        }
    }
}

/// Random bytes from the system (getrandom(2) / arc4random through ring).
pub fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SystemRandom fails only when the OS has no randomness at all; the id then stays
    // fixed, and the question check still applies.
    let _ = SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

/// Asks `server` over UDP, and over TCP when the answer is truncated.
pub fn exchange(server: SocketAddr, q: &Question, timeout: Duration) -> Result<Answer, ExchangeError> {
    let query = wire::encode(q).map_err(ExchangeError::Wire)?;
    match udp(server, q, &query, timeout)? {
        Answer::Truncated => {
            log::debug!("dns {} {}: truncated over UDP, asking {server} over TCP", q.name, q.rtype);
            tcp(server, q, &query, timeout)
        }
        answer => Ok(answer),
    }
}

fn bind_random(server: SocketAddr) -> io::Result<UdpSocket> {
    let any = match server.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    for _ in 0..8 {
        let port = PORT_RANGE.start + random_u16() % (PORT_RANGE.end - PORT_RANGE.start);
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(any, port)) {
            return Ok(s);
        }
    }
    // Every draw was taken: the kernel's own choice (randomized on Linux and OpenBSD).
    UdpSocket::bind(SocketAddr::new(any, 0))
}

fn udp(server: SocketAddr, q: &Question, query: &[u8], timeout: Duration) -> Result<Answer, ExchangeError> {
    let socket = bind_random(server)?;
    // Connected: the kernel drops datagrams from any other address.
    socket.connect(server)?;
    socket.send(query)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    for _ in 0..MAX_STRAY {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExchangeError::Timeout);
        }
        socket.set_read_timeout(Some(left))?;
        let n = socket.recv(&mut buf)?;
        match wire::decode(q, buf.get(..n).unwrap_or_default()) {
            Err(WireError::Mismatch(why)) => {
                log::debug!("dns {} {}: ignored a datagram from {server}: {why}", q.name, q.rtype)
            }
            other => return other.map_err(ExchangeError::Wire),
        }
    }
    Err(ExchangeError::Wire(WireError::Malformed(format!("more than {MAX_STRAY} stray datagrams"))))
}

fn tcp(server: SocketAddr, q: &Question, query: &[u8], timeout: Duration) -> Result<Answer, ExchangeError> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&server, timeout)?;
    let len =
        u16::try_from(query.len()).map_err(|_| ExchangeError::Wire(WireError::Malformed("query too long".into())))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&framed)?;
    let mut read = |buf: &mut [u8]| -> Result<(), ExchangeError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExchangeError::Timeout);
        }
        s.set_read_timeout(Some(left))?;
        s.read_exact(buf).map_err(ExchangeError::from)
    };
    let mut len = [0u8; 2];
    read(&mut len)?;
    // At most 64 KiB by the framing itself.
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    read(&mut buf)?;
    match wire::decode(q, &buf) {
        Ok(Answer::Truncated) => Err(ExchangeError::Wire(WireError::Malformed("truncated over TCP".into()))),
        Err(WireError::Mismatch(why)) => Err(ExchangeError::Wire(WireError::Malformed(format!("over TCP: {why}")))),
        other => other.map_err(ExchangeError::Wire),
    }
}
