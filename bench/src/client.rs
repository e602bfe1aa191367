//! One load session: mxd's own SMTP client (`mxd::smtp::client`, the one the relay and
//! sendmail use) over blocking TCP, optionally TLS without verification.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use mxd::client_io::{Blocking, ClientStream, TlsClient};
use mxd::smtp::client::{Client, ClientConfig, ClientEvent, Pipelining, TlsWant};

use crate::opts::Tls;

/// Opens a session: greeting, EHLO, STARTTLS or smtps as asked, EHLO again.
pub fn connect(
    target: &str,
    tls: Tls,
    helo: &str,
    timeout: Duration,
    pipelining: bool,
    tls_config: &Arc<rustls::ClientConfig>,
) -> io::Result<Blocking> {
    let tcp = TcpStream::connect(target)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let host = target.rsplit_once(':').map_or(target, |h| h.0).trim_matches(['[', ']']).to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| io::Error::other(e.to_string()))?;
    let tls_client = TlsClient { config: Arc::clone(tls_config), name };
    let (stream, want) = match tls {
        Tls::Smtps => (tls_client.connect(tcp)?, TlsWant::Implicit),
        Tls::Starttls => (ClientStream::Tcp(tcp), TlsWant::Required),
        Tls::None => (ClientStream::Tcp(tcp), TlsWant::Never),
    };
    let cfg = ClientConfig {
        helo: helo.to_owned(),
        lmtp: false,
        tls: want,
        auth: None,
        // `--pipelining`: MAIL, RCPTs and DATA in one write, as the heaviest client would.
        pipelining: if pipelining { Pipelining::WithData } else { Pipelining::Never },
        all_or_nothing: false,
        transcript: false,
    };
    let mut session = Blocking::new(Client::new(cfg), stream, Some(tls_client));
    match session.next_event()? {
        ClientEvent::Ready => Ok(session),
        ClientEvent::Failed(e) => Err(io::Error::other(e.to_string())),
        other => Err(io::Error::other(format!("unexpected {other:?}"))),
    }
}

/// Ends a session politely; errors change nothing.
pub fn quit(mut session: Blocking) {
    session.client.quit();
    let _ = session.next_event();
}

/// No certificate verification: a load generator measures, it does not authenticate.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    mxd::tls::client_config(&mxd::tls::Verify::Nothing, None)
        .unwrap_or_else(|e| panic!("TLS client configuration: {e}"))
}

/// A message of exactly `size` octets (CRLF lines, before dot-stuffing), with a unique
/// Message-ID; some body lines start with '.', to exercise dot-stuffing.
pub fn message(n: u64, size: usize, from: &str, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: mxd-load {n}\r\nDate: Thu, 1 Jan 1970 00:00:00 +0000\r\nMessage-ID: <{n}.{}@mxd-load>\r\n\r\n",
        std::process::id()
    )
    .into_bytes();
    let mut i = 0u64;
    while m.len() + 2 < size {
        let room = size - m.len() - 2;
        let len = room.min(76);
        // Never leave a remainder too small for another line.
        let len = if room - len > 0 && room - len < 3 { len - 3 + (room - len) } else { len };
        let start = m.len();
        m.extend((0..len).map(|k| b'a' + ((k as u64 + i) % 26) as u8));
        if i % 50 == 7 && len > 0 {
            m[start] = b'.';
        }
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes() {
        for size in [200, 201, 202, 203, 500, 4096, 16384, 100_000] {
            let m = message(3, size, "a@b", "c@d");
            assert_eq!(m.len(), size, "size {size}");
            assert!(m.ends_with(b"\r\n"));
            assert!(m.split(|b| *b == b'\n').all(|l| l.len() <= 1000));
        }
    }
}
