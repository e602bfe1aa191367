//! The PROXY protocol header (haproxy's proxy-protocol.txt): version 2, binary, as
//! OpenSMTPD's `proxy-v2` reads it, and version 1, text, which OpenSMTPD does not. SANS-IO:
//! bytes in, the client's address out.
//!
//! Untrusted input: never panics; a header is at most `MAX_HEADER` bytes, so a connection
//! waiting for one holds a bounded buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// v2: 16 fixed bytes and the addresses, plus TLVs a proxy may add (haproxy's unique id,
/// TLS facts); anything longer is refused rather than buffered.
pub(crate) const MAX_HEADER: usize = 16 + 1024;
/// v1: "a 108-byte buffer is always enough" (proxy-protocol.txt §2.1), CRLF included.
const MAX_V1: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The connection as the proxy received it: the client's address and port, and the
/// address and port the client connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ends {
    pub(crate) src: SocketAddr,
    pub(crate) dest: SocketAddr,
}

/// What the start of a connection says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// Not all of the header yet.
    Incomplete,
    /// A whole header of `len` bytes; `client` is the connection it names, or `None` for v2
    /// LOCAL, v1 UNKNOWN and families other than TCP over IPv4/IPv6 (the connection's own
    /// addresses stand, as the specification says).
    Done { len: usize, client: Option<Ends> },
    /// Not a PROXY header: the connection is dropped.
    Invalid(&'static str),
}

pub(crate) fn parse(buf: &[u8]) -> Parse {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() { Parse::Incomplete } else { parse_v2(buf) };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Parse::Incomplete } else { parse_v1(buf) };
    }
    Parse::Invalid("no PROXY header")
}

fn parse_v2(buf: &[u8]) -> Parse {
    let [ver_cmd, family, hi, lo] = match buf.get(12..16) {
        Some(&[a, b, c, d]) => [a, b, c, d],
        _ => return Parse::Incomplete,
    };
    if ver_cmd >> 4 != 2 {
        return Parse::Invalid("PROXY v2: unknown version");
    }
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_HEADER {
        return Parse::Invalid("PROXY v2: header too long");
    }
    let Some(body) = buf.get(16..len) else {
        return Parse::Incomplete;
    };
    match ver_cmd & 0x0f {
        0 => return Parse::Done { len, client: None }, // LOCAL: the proxy's own health check
        1 => {}
        _ => return Parse::Invalid("PROXY v2: unknown command"),
    }
    // Source and destination addresses, then their ports.
    let ends = |n: usize, ip: fn(&[u8]) -> IpAddr| {
        let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
        Ends {
            src: SocketAddr::new(ip(&body[..n]), port(2 * n)),
            dest: SocketAddr::new(ip(&body[n..2 * n]), port(2 * n + 2)),
        }
    };
    let v4 = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    let v6 = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or_default()));
    let client = match family {
        // TCP or UDP over IPv4 or IPv6.
        0x11 | 0x12 if body.len() >= 12 => Some(ends(4, v4)),
        0x11 | 0x12 => return Parse::Invalid("PROXY v2: short IPv4 addresses"),
        0x21 | 0x22 if body.len() >= 36 => Some(ends(16, v6)),
        0x21 | 0x22 => return Parse::Invalid("PROXY v2: short IPv6 addresses"),
        _ => None,
    };
    Parse::Done { len, client }
}

fn parse_v1(buf: &[u8]) -> Parse {
    let Some(end) = memchr::memmem::find(&buf[..buf.len().min(MAX_V1)], b"\r\n") else {
        return if buf.len() >= MAX_V1 { Parse::Invalid("PROXY v1: line too long") } else { Parse::Incomplete };
    };
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parse::Invalid("PROXY v1: not text");
    };
    let len = end + 2;
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Parse::Done { len, client: None },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let addr = |s: &str| s.parse::<IpAddr>().ok().filter(|ip| ip.is_ipv4() == v4);
            let port = |s: &str| s.parse::<u16>().ok().filter(|_| !(s.len() > 1 && s.starts_with('0')));
            match (addr(src), addr(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => {
                    let client = Ends { src: SocketAddr::new(s, sp), dest: SocketAddr::new(d, dp) };
                    Parse::Done { len, client: Some(client) }
                }
                _ => Parse::Invalid("PROXY v1: bad addresses"),
            }
        }
        _ => Parse::Invalid("PROXY v1: bad line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(src: &str, dest: &str) -> Ends {
        Ends { src: src.parse().unwrap(), dest: dest.parse().unwrap() }
    }

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20 | cmd, family]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    #[test]
    fn version_2() {
        let mut body = vec![192, 0, 2, 7, 127, 0, 0, 1, 0x30, 0x39, 0, 25];
        let h = v2(1, 0x11, &body);
        assert_eq!(parse(&h), Parse::Done { len: 28, client: Some(ends("192.0.2.7:12345", "127.0.0.1:25")) });
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Parse::Incomplete, "{cut}");
        }
        body.extend([0x04, 0, 1, b'x']); // a TLV is skipped
        assert!(matches!(parse(&v2(1, 0x11, &body)), Parse::Done { len: 32, .. }));
        let mut six = vec![0x20, 1, 0xd, 0xb8];
        six.resize(36, 0);
        assert_eq!(parse(&v2(1, 0x21, &six)), Parse::Done { len: 52, client: Some(ends("[2001:db8::]:0", "[::]:0")) });
        assert_eq!(parse(&v2(0, 0, &[])), Parse::Done { len: 16, client: None });
        assert_eq!(parse(&v2(1, 0x31, &[0; 216])), Parse::Done { len: 232, client: None });
        assert!(matches!(parse(&v2(1, 0x11, &[1, 2, 3])), Parse::Invalid(_)));
        assert!(matches!(parse(&v2(5, 0x11, &[0; 12])), Parse::Invalid(_)));
        assert!(matches!(parse(&v2(1, 0x11, &[0; 2000])), Parse::Invalid(_)));
    }

    #[test]
    fn version_1() {
        let line = b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 25\r\nEHLO x\r\n";
        assert_eq!(parse(line), Parse::Done { len: 44, client: Some(ends("198.51.100.9:40000", "127.0.0.1:25")) });
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 ::1 1 25\r\n"),
            Parse::Done { len: 33, client: Some(ends("[2001:db8::1]:1", "[::1]:25")) }
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parse::Done { len: 15, client: None });
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Parse::Incomplete);
        assert_eq!(parse(b"PRO"), Parse::Incomplete);
        for bad in [
            &b"PROXY TCP4 ::1 127.0.0.1 1 25\r\n"[..],
            b"PROXY TCP4 1.2.3.4 127.0.0.1 1 99999\r\n",
            b"PROXY TCP4 1.2.3.4 127.0.0.1 1\r\n",
            b"EHLO example.org\r\n",
            b"\xff\xfe",
        ] {
            assert!(matches!(parse(bad), Parse::Invalid(_)), "{bad:?}");
        }
        assert!(matches!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(30)), Parse::Invalid(_)));
    }
}
