//! The outbound SMTP and LMTP client for relaying: blocking sockets with timeouts (it runs on
//! the relay thread, never on an event loop), STARTTLS or implicit TLS with rustls,
//! certificate verification against the system's CA bundle or a `ca` unless `tls no-verify`,
//! a client certificate from a `pki`, AUTH PLAIN or LOGIN over TLS only.
//! Server input is untrusted: replies are length-capped and parsed without panicking.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::Verify;

/// Connecting, per address.
const CONNECT: Duration = Duration::from_secs(60);
/// RFC 5321 §4.5.3.2: how long to wait for the greeting and for replies to EHLO, MAIL and
/// RCPT; for the 354 to DATA (and RSET, QUIT); to write a block of data; and for the
/// reply to the final dot.
const GREETING: Duration = Duration::from_secs(300);
const DATA_INIT: Duration = Duration::from_secs(120);
const DATA_BLOCK: Duration = Duration::from_secs(180);
const DATA_END: Duration = Duration::from_secs(600);

/// `MXD_RELAY_TIMEOUT=SECONDS` caps every timeout above, for tests and debugging.
fn limit(t: Duration) -> Duration {
    static CAP: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let cap = CAP
        .get_or_init(|| std::env::var("MXD_RELAY_TIMEOUT").ok().and_then(|s| s.parse().ok()).map(Duration::from_secs));
    cap.map_or(t, |c| t.min(c.max(Duration::from_secs(1))))
}
/// A reply line longer than this is a broken server.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// `smtp+notls://`
    Never,
    /// `smtp://`: STARTTLS when offered.
    Opportunistic,
    /// `smtp+tls://` or `tls`: STARTTLS or fail.
    Required,
    /// `smtps://`
    Implicit,
}

/// Everything needed to open a session to one relay host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// A host name or address; a path (starting with `/`) is a unix socket (`lmtp /path`).
    pub host: String,
    /// Where to connect, in order; empty: the addresses of `host`, from the system.
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    /// `lmtp://`: LHLO, and one reply per recipient after the data (RFC 2033).
    pub lmtp: bool,
    pub tls: TlsMode,
    pub verify: Verify,
    /// The client certificate and key of `relay … pki NAME`.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub src: Option<IpAddr>,
    pub helo: String,
    /// (user, password) for AUTH, only ever sent over TLS.
    pub auth: Option<(String, String)>,
}

/// What the server said about one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptResult {
    Ok,
    Temp(String),
    Perm(String),
}

impl RcptResult {
    fn from_reply(code: u16, text: &str) -> RcptResult {
        let t = format!("{code} {text}");
        match code {
            200..=399 => RcptResult::Ok,
            500..=599 => RcptResult::Perm(t),
            _ => RcptResult::Temp(t),
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Session {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    pipelining: bool,
    lmtp: bool,
    /// `TLSv1.3:TLS13_AES_256_GCM_SHA384:256` once TLS is on, for the log.
    tls: Option<String>,
    /// The address (or socket path) connected to.
    peer: String,
    /// The socket under `stream`, for its timeouts.
    tcp: Socket,
}

/// A TCP connection, or a unix socket (an `lmtp` action's local server).
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(t),
            Socket::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    fn boxed(self) -> Box<dyn Stream> {
        match self {
            Socket::Tcp(s) => Box::new(s),
            Socket::Unix(s) => Box::new(s),
        }
    }

    /// The TCP connection TLS runs over; a unix socket never carries TLS.
    fn tcp(self) -> io::Result<TcpStream> {
        match self {
            Socket::Tcp(s) => Ok(s),
            Socket::Unix(_) => Err(err("no TLS over a unix socket")),
        }
    }
}

fn connect_unix(path: &str) -> io::Result<Socket> {
    let s = UnixStream::connect(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    s.set_read_timeout(Some(limit(GREETING)))?;
    s.set_write_timeout(Some(limit(DATA_BLOCK)))?;
    Ok(Socket::Unix(s))
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn connect(spec: &Spec) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = if spec.addrs.is_empty() {
        (spec.host.as_str(), spec.port).to_socket_addrs()?.collect()
    } else {
        spec.addrs.iter().map(|a| SocketAddr::new(*a, spec.port)).collect()
    };
    let mut last = err(format!("{}: no address", spec.host));
    for addr in addrs {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        if let Some(src) = spec.src {
            socket.bind(&SocketAddr::new(src, 0).into())?;
        }
        match socket.connect_timeout(&addr.into(), limit(CONNECT)) {
            Ok(()) => {
                let s: TcpStream = socket.into();
                s.set_read_timeout(Some(limit(GREETING)))?;
                s.set_write_timeout(Some(limit(DATA_BLOCK)))?;
                return Ok(s);
            }
            Err(e) => {
                log::debug!("relay host={} address={addr}: {e}", spec.host);
                last = io::Error::new(e.kind(), format!("{addr}: {e}"));
            }
        }
    }
    Err(last)
}

impl Session {
    /// Connects, reads the greeting, says EHLO, upgrades to TLS as the spec says, and
    /// authenticates if asked.
    pub fn open(spec: &Spec) -> io::Result<Session> {
        let (tcp, peer) = if spec.host.starts_with('/') {
            (connect_unix(&spec.host)?, spec.host.clone())
        } else {
            let tcp = connect(spec)?;
            let peer = tcp.peer_addr()?.to_string();
            (Socket::Tcp(tcp), peer)
        };
        let mut described = None;
        let stream: Box<dyn Stream> = match spec.tls {
            TlsMode::Implicit => Box::new(tls(tcp.try_clone()?.tcp()?, spec, &mut described)?),
            _ => tcp.try_clone()?.boxed(),
        };
        let mut s = Session {
            stream,
            buf: Vec::new(),
            pipelining: false,
            lmtp: spec.lmtp,
            tls: described,
            peer,
            tcp: tcp.try_clone()?,
        };
        s.expect(220, "greeting")?;
        let mut exts = s.ehlo(&spec.helo)?;
        let offered = exts.iter().any(|e| e.eq_ignore_ascii_case("STARTTLS"));
        let upgrade = match spec.tls {
            TlsMode::Required if !offered => {
                return Err(err(format!("{}: STARTTLS required but not offered", spec.host)))
            }
            TlsMode::Required => true,
            TlsMode::Opportunistic => offered,
            TlsMode::Never | TlsMode::Implicit => false,
        };
        if upgrade {
            s.command(b"STARTTLS\r\n")?;
            s.expect(220, "STARTTLS")?;
            s.stream = Box::new(tls(tcp.tcp()?, spec, &mut s.tls)?);
            s.buf.clear();
            exts = s.ehlo(&spec.helo)?;
        }
        s.pipelining = exts.iter().any(|e| e.eq_ignore_ascii_case("PIPELINING"));
        if let Some((user, pass)) = &spec.auth {
            if !(upgrade || spec.tls == TlsMode::Implicit) {
                return Err(err("AUTH refused without TLS"));
            }
            s.auth(&exts, user, pass)?;
        }
        Ok(s)
    }

    /// How long the next replies may take (RFC 5321 §4.5.3.2).
    fn wait(&self, t: Duration) -> io::Result<()> {
        self.tcp.set_read_timeout(Some(limit(t)))
    }

    /// The TLS version, cipher and bits, once TLS is on.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// AUTH PLAIN, or LOGIN when the server offers LOGIN and not PLAIN.
    fn auth(&mut self, exts: &[String], user: &str, pass: &str) -> io::Result<()> {
        let mechanisms: Vec<String> = exts
            .iter()
            .filter_map(|e| {
                e.get(..5)
                    .filter(|k| k.eq_ignore_ascii_case("AUTH ") || k.eq_ignore_ascii_case("AUTH="))
                    .map(|_| &e[5..])
            })
            .flat_map(|m| m.split_ascii_whitespace().map(str::to_ascii_uppercase))
            .collect();
        if mechanisms.iter().any(|m| m == "LOGIN") && !mechanisms.iter().any(|m| m == "PLAIN") {
            self.command(b"AUTH LOGIN\r\n")?;
            self.expect(334, "AUTH LOGIN")?;
            self.command(format!("{}\r\n", base64(user.as_bytes())).as_bytes())?;
            self.expect(334, "AUTH LOGIN user")?;
            self.command(format!("{}\r\n", base64(pass.as_bytes())).as_bytes())?;
        } else {
            let token = base64(format!("\0{user}\0{pass}").as_bytes());
            self.command(format!("AUTH PLAIN {token}\r\n").as_bytes())?;
        }
        self.expect(235, "AUTH")
    }

    fn ehlo(&mut self, helo: &str) -> io::Result<Vec<String>> {
        let verb = if self.lmtp { "LHLO" } else { "EHLO" };
        self.command(format!("{verb} {helo}\r\n").as_bytes())?;
        let (code, lines) = self.reply()?;
        if code != 250 && self.lmtp {
            return Err(err(format!("LHLO: {code} {}", lines.last().map_or("", String::as_str))));
        }
        if code != 250 {
            // RFC 5321 §3.2: fall back to HELO.
            self.command(format!("HELO {helo}\r\n").as_bytes())?;
            self.expect(250, "HELO")?;
            return Ok(Vec::new());
        }
        Ok(lines.into_iter().skip(1).collect())
    }

    fn command(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn expect(&mut self, code: u16, what: &str) -> io::Result<()> {
        let (got, lines) = self.reply()?;
        if got == code {
            Ok(())
        } else {
            Err(err(format!("{what}: {got} {}", lines.last().map_or("", String::as_str))))
        }
    }

    /// One reply: its code and the text of each line.
    fn reply(&mut self) -> io::Result<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let code =
                line.get(..3).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| err(format!("bad reply {line:?}")))?;
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, lines));
            }
            if lines.len() > 100 {
                return Err(err("reply too long"));
            }
        }
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            if self.buf.len() > MAX_REPLY {
                return Err(err("reply line too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one message to `rcpts`; the message is stored with LF endings and goes out
    /// with CRLF and dot-stuffing. An `Err` means the session is unusable: every
    /// recipient of this message is a temporary failure.
    pub fn send(&mut self, sender: &str, rcpts: &[&str], message: &[u8]) -> io::Result<Vec<RcptResult>> {
        self.wait(GREETING)?;
        let mut cmds = format!("MAIL FROM:<{sender}>\r\n");
        for r in rcpts {
            cmds.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        let (mail_code, mail_text, mut results) = if self.pipelining {
            // RFC 2920: MAIL and every RCPT in one write; DATA waits for their replies.
            self.command(cmds.as_bytes())?;
            let (code, lines) = self.reply()?;
            let mut results = Vec::new();
            for _ in rcpts {
                let (c, l) = self.reply()?;
                results.push(RcptResult::from_reply(c, l.last().map_or("", String::as_str)));
            }
            (code, lines.last().cloned().unwrap_or_default(), results)
        } else {
            let mut lines = cmds.split_inclusive("\r\n");
            self.command(lines.next().unwrap_or_default().as_bytes())?;
            let (code, l) = self.reply()?;
            let mut results = Vec::new();
            if (200..300).contains(&code) {
                for line in lines {
                    self.command(line.as_bytes())?;
                    let (c, l) = self.reply()?;
                    results.push(RcptResult::from_reply(c, l.last().map_or("", String::as_str)));
                }
            }
            (code, l.last().cloned().unwrap_or_default(), results)
        };
        if !(200..300).contains(&mail_code) {
            let all = RcptResult::from_reply(mail_code, &mail_text);
            self.rset()?;
            return Ok(rcpts.iter().map(|_| all.clone()).collect());
        }
        if !results.contains(&RcptResult::Ok) {
            self.rset()?;
            return Ok(results);
        }
        self.command(b"DATA\r\n")?;
        self.wait(DATA_INIT)?;
        let (code, l) = self.reply()?;
        if code != 354 {
            let all = RcptResult::from_reply(code, l.last().map_or("", String::as_str));
            self.rset()?;
            return Ok(results.iter().map(|r| if *r == RcptResult::Ok { all.clone() } else { r.clone() }).collect());
        }
        self.command(&wire_form(message))?;
        self.wait(DATA_END)?;
        // SMTP gives one verdict for the message; LMTP one per accepted recipient, in order.
        let mut verdict = None;
        for r in results.iter_mut().filter(|r| **r == RcptResult::Ok) {
            if verdict.is_none() || self.lmtp {
                let (code, l) = self.reply()?;
                verdict = Some(RcptResult::from_reply(code, l.last().map_or("", String::as_str)));
            }
            *r = verdict.clone().unwrap_or(RcptResult::Ok);
        }
        Ok(results)
    }

    fn rset(&mut self) -> io::Result<()> {
        self.wait(DATA_INIT)?;
        self.command(b"RSET\r\n")?;
        self.reply().map(drop)
    }

    pub fn quit(mut self) {
        if self.wait(DATA_INIT).is_ok() && self.command(b"QUIT\r\n").is_ok() {
            let _ = self.reply();
        }
    }
}

/// LF → CRLF, a dot doubled at the start of a line, and the final ".".
pub fn wire_form(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 40 + 8);
    for line in message.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        if text.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// AUTH PLAIN and LOGIN carry their tokens in base64 (RFC 4954).
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn tls(
    tcp: TcpStream,
    spec: &Spec,
    described: &mut Option<String>,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let identity = spec.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let config = crate::tls::client_config(&spec.verify, identity).map_err(|e| err(e.to_string()))?;
    // An address literal ([192.0.2.1], [IPv6:…]) is presented as an address, not a name.
    let host = spec.host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_prefix("IPv6:").unwrap_or(host).to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| err(e.to_string()))?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| err(e.to_string()))?;
    let mut tcp = tcp;
    // Finish the handshake here, so a bad certificate fails the session, not a later write.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    *described = crate::tls::describe(&conn).map(|(v, c, b)| format!("{v}:{c}:{b}"));
    Ok(rustls::StreamOwned::new(conn, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_and_base64() {
        assert_eq!(wire_form(b"a\n.b\n..c\nend"), b"a\r\n..b\r\n...c\r\nend\r\n.\r\n");
        assert_eq!(base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn reply_classes() {
        assert_eq!(RcptResult::from_reply(250, "ok"), RcptResult::Ok);
        assert!(matches!(RcptResult::from_reply(451, "later"), RcptResult::Temp(_)));
        assert!(matches!(RcptResult::from_reply(550, "no"), RcptResult::Perm(_)));
        assert!(matches!(RcptResult::from_reply(999, "odd"), RcptResult::Temp(_)));
    }
}
