//! One load session: a blocking SMTP client over TCP, optionally TLS (no verification).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::opts::Tls;

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Client {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    pub pipelining: bool,
}

/// A reply: its code and the text of its last line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Client {
    pub fn connect(
        target: &str,
        tls: Tls,
        helo: &str,
        timeout: Duration,
        tls_config: &Arc<rustls::ClientConfig>,
    ) -> io::Result<Client> {
        let tcp = TcpStream::connect(target)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let host = target.rsplit_once(':').map_or(target, |h| h.0).trim_matches(['[', ']']).to_owned();
        let stream: Box<dyn Stream> = match tls {
            Tls::Smtps => Box::new(wrap(tcp.try_clone()?, &host, tls_config)?),
            _ => Box::new(tcp.try_clone()?),
        };
        let mut c = Client { stream, buf: Vec::new(), pipelining: false };
        c.expect(220)?;
        c.ehlo(helo)?;
        if tls == Tls::Starttls {
            c.send(b"STARTTLS\r\n")?;
            c.expect(220)?;
            c.stream = Box::new(wrap(tcp, &host, tls_config)?);
            c.ehlo(helo)?;
        }
        Ok(c)
    }

    fn ehlo(&mut self, helo: &str) -> io::Result<()> {
        self.send(format!("EHLO {helo}\r\n").as_bytes())?;
        let (code, lines) = self.read_reply_lines()?;
        if code != 250 {
            return Err(other(format!("EHLO refused: {code}")));
        }
        self.pipelining = lines.iter().any(|l| l.eq_ignore_ascii_case("PIPELINING"));
        Ok(())
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn expect(&mut self, code: u16) -> io::Result<Reply> {
        let r = self.reply()?;
        if r.code == code {
            Ok(r)
        } else {
            Err(other(format!("expected {code}, got {} {}", r.code, r.text)))
        }
    }

    pub fn reply(&mut self) -> io::Result<Reply> {
        let (code, lines) = self.read_reply_lines()?;
        Ok(Reply { code, text: lines.last().cloned().unwrap_or_default() })
    }

    /// Reads one (possibly multi-line) reply; returns its code and the text of each line.
    fn read_reply_lines(&mut self) -> io::Result<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| other(format!("bad reply line {line:?}")))?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if !more {
                return Ok((code, lines));
            }
        }
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn quit(mut self) {
        let _ = self.send(b"QUIT\r\n");
        let _ = self.reply();
    }
}

fn wrap(
    tcp: TcpStream,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| other(e.to_string()))?;
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| other(e.to_string()))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
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

/// Dot-stuffs a CRLF message and appends the final ".".
pub fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut bol = true;
    for &b in message {
        if bol && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        bol = b == b'\n';
    }
    if !bol {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes_and_stuffing() {
        for size in [200, 201, 202, 203, 500, 4096, 16384, 100_000] {
            let m = message(3, size, "a@b", "c@d");
            assert_eq!(m.len(), size, "size {size}");
            assert!(m.ends_with(b"\r\n"));
            assert!(m.split(|b| *b == b'\n').all(|l| l.len() <= 1000));
        }
        assert_eq!(stuffed(b"a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
    }
}
