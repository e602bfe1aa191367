//! Blocking I/O for the sans-IO client in `smtp::client`: one stream (TCP, a unix socket,
//! or TLS over TCP), read and write timeouts set by the caller, STARTTLS and implicit TLS
//! with a rustls client configuration. For code that may wait: sendmail, mxd-load's
//! sessions, the relay thread. Never used on an event loop.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::smtp::client::{Client, ClientEvent, Step};

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The connection under a client session.
pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.read(buf),
            ClientStream::Unix(s) => s.read(buf),
            ClientStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.write(buf),
            ClientStream::Unix(s) => s.write(buf),
            ClientStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.flush(),
            ClientStream::Unix(s) => s.flush(),
            ClientStream::Tls(s) => s.flush(),
        }
    }
}

/// How to start TLS: the configuration and the name the certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl TlsClient {
    /// Runs the handshake to completion on `tcp`, so that a bad certificate fails here and
    /// not at a later write.
    pub fn connect(&self, mut tcp: TcpStream) -> io::Result<ClientStream> {
        let mut conn = rustls::ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(ClientStream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }
}

/// A client session over a blocking stream.
pub struct Blocking {
    pub client: Client,
    stream: Option<ClientStream>,
    tls: Option<TlsClient>,
    buf: Box<[u8]>,
    /// When the current message's final dot was written.
    data_sent_at: Option<Instant>,
    /// Read timeouts chosen by the step awaited (`set_step_timeouts`).
    step_timeouts: Option<StepTimeouts>,
}

/// A handle of the socket under the stream (TLS included), the timeout of each step, and
/// the step the handle's timeout was last set for.
struct StepTimeouts {
    tcp: TcpStream,
    per_step: fn(Step) -> Duration,
    set_for: Option<Step>,
}

impl Blocking {
    /// `tls` is needed for STARTTLS; with implicit TLS, `stream` is already `Tls`.
    pub fn new(client: Client, stream: ClientStream, tls: Option<TlsClient>) -> Blocking {
        Blocking {
            client,
            stream: Some(stream),
            tls,
            buf: vec![0; 16 * 1024].into_boxed_slice(),
            data_sent_at: None,
            step_timeouts: None,
        }
    }

    /// From now on each read waits as long as `per_step` says for the reply awaited; `tcp`
    /// is a handle (`try_clone`) of the socket under the stream.
    pub fn set_step_timeouts(&mut self, tcp: TcpStream, per_step: fn(Step) -> Duration) {
        self.step_timeouts = Some(StepTimeouts { tcp, per_step, set_for: None });
    }

    /// Starts a transaction (see `Client::send_mail`).
    pub fn send_mail(&mut self, sender: &str, rcpts: &[&str], message: &[u8]) {
        self.data_sent_at = None;
        self.client.send_mail(sender, rcpts, message);
    }

    /// When the current transaction's message went out whole (for latency figures).
    pub fn data_sent_at(&self) -> Option<Instant> {
        self.data_sent_at
    }

    pub fn stream(&mut self) -> Option<&mut ClientStream> {
        self.stream.as_mut()
    }

    /// Sends what the client has to send, and reads until it has something to report:
    /// `Ready`, `Sent`, `Failed` or `Closed` (STARTTLS is handled here). An I/O error or a
    /// timeout is reported as `Err`; the session is then unusable.
    pub fn next_event(&mut self) -> io::Result<ClientEvent> {
        loop {
            self.flush()?;
            match self.client.poll_event() {
                Some(ClientEvent::StartTls) => self.start_tls()?,
                Some(event) => return Ok(event),
                None => self.read()?,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let out = self.client.output();
        if out.is_empty() {
            return Ok(());
        }
        let stream = self.stream.as_mut().ok_or_else(|| io::Error::other("stream gone"))?;
        stream.write_all(out)?;
        stream.flush()?;
        let n = out.len();
        self.client.consume_output(n);
        if self.data_sent_at.is_none() && self.client.message_sent() {
            self.data_sent_at = Some(Instant::now());
        }
        Ok(())
    }

    fn read(&mut self) -> io::Result<()> {
        if let (Some(t), Some(step)) = (self.step_timeouts.as_mut(), self.client.awaiting()) {
            if t.set_for != Some(step) {
                t.tcp.set_read_timeout(Some((t.per_step)(step)))?;
                t.set_for = Some(step);
            }
        }
        let stream = self.stream.as_mut().ok_or_else(|| io::Error::other("stream gone"))?;
        match stream.read(&mut self.buf) {
            Ok(0) => {
                self.client.eof();
                Ok(())
            }
            Ok(n) => {
                self.client.receive(&self.buf[..n]);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn start_tls(&mut self) -> io::Result<()> {
        let tls = self.tls.as_ref().ok_or_else(|| io::Error::other("STARTTLS without a TLS configuration"))?;
        let tcp = match self.stream.take() {
            Some(ClientStream::Tcp(tcp)) => tcp,
            _ => return Err(io::Error::other("STARTTLS on a stream that is not plain TCP")),
        };
        self.stream = Some(tls.connect(tcp)?);
        self.client.tls_started();
        Ok(())
    }
}
