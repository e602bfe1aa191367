//! Listen options that shape a connection from outside the protocol core: `mask-src` (the
//! Received header hides the client), `hostnames <t>` (the greeting and Received name chosen
//! by the local address the client reached), and `proxy-v2` (a PROXY header comes first).

use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proxy::{self, Parse};
use super::stream::Stream;
use crate::config::{Config, Listener};
use crate::smtp::SessionConfig;
use crate::table::Table;

/// What a listener's connections need of its options, resolved once at start.
#[derive(Default)]
pub(crate) struct ListenKnobs {
    /// `mask-src`: the Received header names neither the client's HELO, name nor address.
    pub(crate) mask_src: bool,
    /// `hostnames <t>`: local address → this host's name for that address.
    pub(crate) hostnames: Option<Arc<Table>>,
    /// `proxy-v2`: every connection starts with a PROXY header (v2, or v1 beyond OpenSMTPD),
    /// which names the client; one without it is dropped, as OpenSMTPD drops it.
    pub(crate) proxy: bool,
}

impl ListenKnobs {
    pub(crate) fn new(config: &Config, l: &Listener) -> ListenKnobs {
        let o = &l.options;
        ListenKnobs {
            mask_src: o.mask_src,
            hostnames: o.hostnames.as_deref().and_then(|t| config.tables.get(t)).cloned(),
            proxy: o.proxy_v2,
        }
    }

    /// A `hostnames` proc table, which the delivery process asks (`Conn::hostname_question`):
    /// the greeting waits for its answer as for the client's reverse DNS.
    pub(crate) fn hostnames_proc(&self) -> Option<&str> {
        self.hostnames.as_deref().filter(|t| t.is_proc()).map(|t| t.name.as_str())
    }

    /// The session configuration for a client that reached `local`: the listener's, or a
    /// copy naming the host as the `hostnames` table says for that address (OpenSMTPD's
    /// lookup by local address; no entry keeps the listener's name).
    pub(crate) fn session_config(&self, shared: &Arc<SessionConfig>, local: Option<IpAddr>) -> Arc<SessionConfig> {
        let name = self.hostnames.as_ref().zip(local).and_then(|(t, ip)| t.get(&ip.to_string()));
        match name {
            Some(name) if name != shared.hostname => {
                Arc::new(SessionConfig { hostname: name.to_owned(), ..SessionConfig::clone(shared) })
            }
            _ => Arc::clone(shared),
        }
    }
}

/// A connection on a `proxy-v2` listener before its PROXY header has arrived. It holds no
/// buffer: the header is peeked at, and consumed only once it is whole.
pub(crate) struct ProxyWait {
    /// The header must be whole by then (the handshake bound, like a TLS handshake's).
    pub(crate) deadline: Instant,
}

impl ProxyWait {
    pub(crate) fn new(knobs: &ListenKnobs, stream: &Stream, timeout: Duration, now: Instant) -> Option<ProxyWait> {
        let tcp = matches!(stream, Stream::Tcp(_));
        (knobs.proxy && tcp).then(|| ProxyWait { deadline: now + timeout.min(Duration::from_secs(30)) })
    }

    /// `Ok(Some(client))` once the header is read (`client` is `None` when it names no
    /// address: the connection's own stands); `Ok(None)` until more arrives; an error when
    /// the client is gone or sent something else.
    pub(crate) fn read(&mut self, stream: &mut Stream, scratch: &mut [u8]) -> io::Result<Option<Option<proxy::Ends>>> {
        let window = scratch.len().min(proxy::MAX_HEADER);
        let n = match stream.peek(&mut scratch[..window]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the PROXY header")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // A signal: the data is still there, and no new edge would announce it.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.read(stream, scratch),
            Err(e) => return Err(e),
        };
        match proxy::parse(&scratch[..n]) {
            Parse::Incomplete => Ok(None),
            Parse::Invalid(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
            Parse::Done { len, client } => {
                // The peek saw all `len` bytes, so they are in the socket's buffer now.
                let mut left = len;
                while left > 0 {
                    match stream.read(&mut scratch[..left]) {
                        Ok(0) => {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in the PROXY header"))
                        }
                        Ok(k) => left -= k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Some(client))
            }
        }
    }
}
