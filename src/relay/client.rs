//! The outbound SMTP and LMTP session of a relay worker: the project's one client state
//! machine (`smtp::client`: replies, EHLO extensions, STARTTLS, AUTH PLAIN or LOGIN over TLS
//! only, pipelining, dot-stuffing, LMTP's reply per recipient) driven over blocking sockets
//! (`client_io`) with RFC 5321's timeouts per step; it runs on a worker thread, never on an
//! event loop. Here: connecting (source address, each address in turn), TLS with rustls
//! (verification against the system's CA bundle or a `ca` unless `tls no-verify`, a client
//! certificate from a `pki`), and the relay's view of each recipient's result.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client_io::{Blocking, ClientStream, TlsClient};
use crate::smtp::client::{self as smtp, Client, ClientConfig, ClientEvent, Pipelining, Step, TlsWant};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayTls {
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
    pub tls: RelayTls,
    pub verify: Verify,
    /// The client certificate and key of `relay … pki NAME`.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub src: Option<IpAddr>,
    pub helo: String,
    /// `helo-src <t>`: the HELO name by the connection's local address, instead of `helo`.
    pub helo_src: Option<Vec<(IpAddr, String)>>,
    /// (user, password) for AUTH, only ever sent over TLS.
    pub auth: Option<(String, String)>,
}

/// What the server said about one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptStatus {
    Ok,
    Temp(String),
    Perm(String),
}

impl RcptStatus {
    /// The client's verdict, as `CODE TEXT` of the reply that decided it.
    fn from_client(r: smtp::RcptResult) -> RcptStatus {
        match r {
            smtp::RcptResult::Ok => RcptStatus::Ok,
            smtp::RcptResult::Temp(e) => RcptStatus::Temp(e.reply.to_string()),
            smtp::RcptResult::Perm(e) => RcptStatus::Perm(e.reply.to_string()),
        }
    }
}

/// What became of one message in a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// One verdict per recipient, in order.
    Results(Vec<RcptStatus>),
    /// MAIL was refused because this session has sent as many messages as the server
    /// takes in one (its reply): nothing was decided, a new session sends it.
    SessionFull(String),
}

pub struct RelaySession {
    io: Blocking,
    /// `TLSv1.3:TLS13_AES_256_GCM_SHA384:256` once TLS is on, for the log.
    tls: Option<String>,
    /// The address (or socket path) connected to.
    peer: String,
}

/// A local LMTP server's socket (an `lmtp` action's DEST): no TLS, one timeout for every step.
fn connect_unix(path: &str) -> io::Result<UnixStream> {
    let s = UnixStream::connect(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    s.set_read_timeout(Some(limit(DATA_END)))?;
    s.set_write_timeout(Some(limit(DATA_BLOCK)))?;
    Ok(s)
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
                // Each write is a whole group (commands, or the message): nothing to gain
                // from Nagle's wait for the previous segment's ACK.
                s.set_nodelay(true)?;
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

/// RFC 5321 §4.5.3.2: how long each reply may take.
fn step_timeout(step: Step) -> Duration {
    limit(match step {
        Step::Data | Step::Rset | Step::Quit => DATA_INIT,
        Step::EndOfData => DATA_END,
        _ => GREETING,
    })
}

impl RelaySession {
    /// Connects, reads the greeting, says EHLO (LHLO), upgrades to TLS as the spec says, and
    /// authenticates if asked.
    pub fn open(spec: &Spec) -> io::Result<RelaySession> {
        let unix = spec.host.starts_with('/');
        let tls = match spec.tls {
            _ if unix => None,
            RelayTls::Never => None,
            _ => Some(tls_client(spec)?),
        };
        let mut helo = spec.helo.clone();
        let (stream, peer, handle) = if unix {
            (ClientStream::Unix(connect_unix(&spec.host)?), spec.host.clone(), None)
        } else {
            let tcp = connect(spec)?;
            let peer = tcp.peer_addr()?.to_string();
            if let Some(names) = &spec.helo_src {
                // OpenSMTPD fails the session when the table has no name for the source.
                let local = tcp.local_addr()?.ip();
                helo = names
                    .iter()
                    .find(|(a, _)| *a == local)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| err(format!("{}: helo-src has no HELO name for source {local}", spec.host)))?;
            }
            let handle = tcp.try_clone()?;
            let stream = match (&tls, spec.tls) {
                (Some(t), RelayTls::Implicit) => t.connect(tcp)?,
                _ => ClientStream::Tcp(tcp),
            };
            (stream, peer, Some(handle))
        };
        let client = Client::new(ClientConfig {
            helo,
            lmtp: spec.lmtp,
            tls: match spec.tls {
                _ if unix => TlsWant::Never,
                RelayTls::Never => TlsWant::Never,
                RelayTls::Opportunistic => TlsWant::Opportunistic,
                RelayTls::Required => TlsWant::Required,
                RelayTls::Implicit => TlsWant::Implicit,
            },
            auth: spec.auth.clone(),
            // RFC 2920: MAIL, every RCPT and DATA in one write (§3.1: DATA may end a
            // group), so a message costs two round trips, not three.
            pipelining: Pipelining::WithData,
            all_or_nothing: false,
            transcript: false,
        });
        let mut io = Blocking::new(client, stream, tls);
        if let Some(handle) = handle {
            io.set_step_timeouts(handle, step_timeout);
        }
        match io.next_event()? {
            ClientEvent::Ready => {}
            ClientEvent::Failed(e) => return Err(err(format!("{}: {e}", spec.host))),
            other => return Err(err(format!("{}: unexpected {other:?}", spec.host))),
        }
        let tls = match io.stream() {
            Some(ClientStream::Tls(s)) => crate::tls::describe(&s.conn).map(|(v, c, b)| format!("{v}:{c}:{b}")),
            _ => None,
        };
        Ok(RelaySession { io, tls, peer })
    }

    /// The TLS version, cipher and bits, once TLS is on.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends one message to `rcpts`; the message is stored with LF endings and goes out
    /// with CRLF and dot-stuffing. An `Err` means the session is unusable: every
    /// recipient of this message is a temporary failure.
    pub fn send(&mut self, sender: &str, rcpts: &[&str], message: &[u8]) -> io::Result<Sent> {
        self.io.send_mail(sender, rcpts, message);
        match self.io.next_event()? {
            ClientEvent::Sent(results) if smtp::RcptResult::session_full(&results) => {
                let reply = match results.into_iter().next() {
                    Some(smtp::RcptResult::Temp(f)) => f.to_string(),
                    _ => String::new(),
                };
                Ok(Sent::SessionFull(reply))
            }
            ClientEvent::Sent(results) => Ok(Sent::Results(results.into_iter().map(RcptStatus::from_client).collect())),
            ClientEvent::Failed(e) => Err(err(e.to_string())),
            other => Err(err(format!("unexpected {other:?}"))),
        }
    }

    pub fn quit(mut self) {
        self.io.client.quit();
        let _ = self.io.next_event();
    }
}

/// Client configurations by (verification, client certificate), built once per relay
/// process (a reload starts a new one): the CA bundle is parsed once, and rustls's session
/// cache in each configuration lets later sessions to a host resume TLS.
type ConfigKey = (Verify, Option<(PathBuf, PathBuf)>);
static CONFIGS: Mutex<Vec<(ConfigKey, Arc<rustls::ClientConfig>)>> = Mutex::new(Vec::new());

fn client_config(spec: &Spec) -> io::Result<Arc<rustls::ClientConfig>> {
    let key = (spec.verify.clone(), spec.identity.clone());
    let mut configs = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = configs.iter().find(|(k, _)| *k == key) {
        return Ok(Arc::clone(c));
    }
    let identity = spec.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let config = crate::tls::client_config(&spec.verify, identity).map_err(|e| err(e.to_string()))?;
    configs.push((key, Arc::clone(&config)));
    Ok(config)
}

/// The rustls client of this spec, and the name its certificate must carry: an address
/// literal (`[192.0.2.1]`, `[IPv6:…]`) is presented as an address, not a name.
fn tls_client(spec: &Spec) -> io::Result<TlsClient> {
    let config = client_config(spec)?;
    let host = spec.host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_prefix("IPv6:").unwrap_or(host).to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| err(e.to_string()))?;
    Ok(TlsClient { config, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::{ServerRefusal, ServerReply};

    #[test]
    fn results_carry_the_deciding_reply() {
        let reply = |code, text: &str| ServerReply { code, lines: vec![text.into()] };
        let refusal = |code, text| ServerRefusal { step: Step::Rcpt, reply: reply(code, text) };
        assert_eq!(RcptStatus::from_client(smtp::RcptResult::Ok), RcptStatus::Ok);
        assert_eq!(
            RcptStatus::from_client(smtp::RcptResult::Temp(refusal(451, "4.3.0 later"))),
            RcptStatus::Temp("451 4.3.0 later".into())
        );
        assert_eq!(
            RcptStatus::from_client(smtp::RcptResult::Perm(refusal(550, "5.1.1 no"))),
            RcptStatus::Perm("550 5.1.1 no".into())
        );
    }

    #[test]
    fn each_step_has_its_rfc_5321_timeout() {
        // Without MXD_RELAY_TIMEOUT set (the unit tests never set it).
        if std::env::var_os("MXD_RELAY_TIMEOUT").is_none() {
            assert_eq!(step_timeout(Step::Mail), GREETING);
            assert_eq!(step_timeout(Step::Data), DATA_INIT);
            assert_eq!(step_timeout(Step::EndOfData), DATA_END);
        }
    }
}
