//! One client connection: its socket, its rustls state when TLS is on, and its sans-IO
//! SMTP session. `pump` moves bytes between the three until the socket would block, the
//! session stops wanting input (a message awaiting commit), or the turn bound is hit.
//!
//! Invariants: input the session has not consumed is at most one read's worth (we stop
//! reading while the session does not want input); plaintext pipelined after STARTTLS is
//! dropped before the handshake starts (RFC 3207 §4.2, CVE-2011-0411).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use crate::envelope::Target;
use crate::envelope::{Origin, SessionId};
use crate::server::policy::ConnPolicy;
use crate::server::stream::Stream;
use crate::server::ListenerRt;
use crate::smtp::{reply, CloseReason, Event, Message, Session, TlsInfo};

#[path = "conn_filter.rs"]
pub(crate) mod filtering;
#[path = "conn_hostname.rs"]
mod hostname;

/// How long a client may take to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Reads per readiness event before other connections get their turn (sōzu's bound).
const MAX_TURNS: usize = 16;

/// What a deadline check asks of the loop.
pub(crate) enum Tick {
    Idle,
    /// The session has something to say (its 421 after an idle timeout).
    Pump,
    Close,
}

/// What a pump asks of the loop.
pub(crate) enum Status {
    Open,
    /// The connection is finished; the loop deregisters and drops it.
    Closed(&'static str),
}

/// Where a connection is, apart from its session's SMTP state: one at a time, so no two
/// flags can disagree. (The wait for the client's reverse DNS is not a phase: it holds the
/// greeting while the PROXY header or a TLS handshake may still run, so it has its own
/// deadline.)
enum ConnPhase {
    /// `proxy-v2`: the PROXY header is still awaited; nothing else is read or written.
    Proxy(super::knobs::ProxyWait),
    /// A TLS handshake (smtps, or after STARTTLS) must end by `deadline`.
    Handshake {
        deadline: Instant,
    },
    /// STARTTLS was answered with 220; TLS begins once that reply is on the wire.
    StartTls,
    Open,
    /// Ending for this reason: at once, or once the last reply is out (`"filter"`, and any
    /// reason but `"eof"` while output is pending).
    Closing(&'static str),
}

enum ReadResult {
    Data(usize),
    WouldBlock,
    Eof,
}

pub(crate) struct Conn {
    pub(crate) id: SessionId,
    stream: Stream,
    /// Boxed so that an idle plaintext connection does not carry rustls's footprint.
    tls: Option<Box<rustls::ServerConnection>>,
    session: Session<ConnPolicy>,
    inbuf: Vec<u8>,
    pub(crate) listener: Arc<ListenerRt>,
    phase: ConnPhase,
    /// Edge-triggered readiness that this connection has not yet drained.
    pub(crate) readable: bool,
    registered: Option<Interest>,
    /// The listener's filter chain, when it has one.
    filter: Option<Box<filtering::ConnFilter>>,
    /// The filtering that opens once the client's reverse DNS is known.
    filter_pending: Option<Box<filtering::PendingFilter>>,
    /// When the greeting stops waiting for the client's reverse DNS.
    rdns_deadline: Option<Instant>,
    /// When the greeting stops waiting for a `hostnames` proc table's name for this host.
    hostname_wait: Option<Instant>,
    /// That name, once given (a session started over behind a PROXY header keeps it).
    hostname_named: Option<String>,
}

impl Conn {
    pub(crate) fn new(
        id: SessionId,
        stream: Stream,
        origin: Origin,
        listener: Arc<ListenerRt>,
        user: Option<String>,
        now: Instant,
    ) -> Conn {
        let policy = ConnPolicy::new(Arc::clone(&listener.config), origin, listener.tag.clone());
        let cfg = listener.knobs.session_config(&listener.session, stream.local_ip());
        let proxy = super::knobs::ProxyWait::new(&listener.knobs, &stream, cfg.idle_timeout, now);
        let mut session = Session::new(cfg, policy, now);
        if let Some(user) = user {
            session.set_auth(user);
        }
        session.set_auth_config(listener.auth.session);
        session.policy_mut().set_senders(listener.auth.senders.clone());
        let mut conn = Conn {
            id,
            stream,
            tls: None,
            session,
            inbuf: Vec::new(),
            listener,
            phase: proxy.map_or(ConnPhase::Open, ConnPhase::Proxy),
            readable: true,
            registered: None,
            filter: None,
            filter_pending: None,
            rdns_deadline: None,
            hostname_wait: None,
            hostname_named: None,
        };
        if conn.listener.smtps && matches!(conn.phase, ConnPhase::Open) {
            conn.start_tls(now);
        }
        conn
    }

    /// This host's name for this client (`hostnames <t>` may choose it by local address).
    pub(crate) fn hostname(&self) -> &str {
        self.session.hostname()
    }

    pub(crate) fn origin(&self) -> &Origin {
        self.session.policy().origin()
    }

    /// The client's forward-confirmed name, if it has one.
    pub(crate) fn rdns(&self) -> Option<&str> {
        self.session.policy().rdns()
    }

    /// The greeting waits for the client's name (a lookup was started), `rdns::WAIT` at most.
    pub(crate) fn await_rdns(&mut self, now: Instant) {
        self.session.await_rdns();
        self.rdns_deadline = Some(now + super::rdns::WAIT);
    }

    /// The greeting still waits for the client's name.
    pub(crate) fn awaits_rdns(&self) -> bool {
        self.rdns_deadline.is_some()
    }

    /// The lookup ended (`None`: no confirmed name, or it failed): greet.
    pub(crate) fn handle_rdns(&mut self, name: Option<String>) {
        if self.rdns_deadline.take().is_none() {
            return; // given up on already: the session went on without it
        }
        log::info!("{} smtp rdns address={} host={}", self.id, self.peer(), name.as_deref().unwrap_or("unknown"));
        self.session.policy_mut().set_rdns(name);
        self.filter_rdns_known();
        self.greet_when_known();
    }

    /// Why the connection is ending, once it is.
    fn close_reason(&self) -> Option<&'static str> {
        match self.phase {
            ConnPhase::Closing(reason) => Some(reason),
            _ => None,
        }
    }

    /// Ends the connection for `reason`, unless it is ending already (the first reason holds).
    fn close(&mut self, reason: &'static str) {
        if !matches!(self.phase, ConnPhase::Closing(_)) {
            self.phase = ConnPhase::Closing(reason);
        }
    }

    /// No input goes to the session: STARTTLS waits for its 220 to leave, or it is closing.
    fn input_paused(&self) -> bool {
        matches!(self.phase, ConnPhase::StartTls | ConnPhase::Closing(_))
    }

    /// The peer as the logs name it: its address, or "local" for the unix socket.
    pub(crate) fn peer(&self) -> String {
        match self.origin() {
            Origin::Socket => "local".to_owned(),
            Origin::Tcp(ip) => ip.to_string(),
        }
    }

    fn start_tls(&mut self, now: Instant) {
        let Some(config) = self.listener.tls.as_ref() else {
            return;
        };
        match rustls::ServerConnection::new(Arc::clone(config)) {
            Ok(tls) => {
                self.tls = Some(Box::new(tls));
                self.phase =
                    ConnPhase::Handshake { deadline: now + HANDSHAKE_TIMEOUT.min(self.listener.session.idle_timeout) };
            }
            Err(e) => {
                log::warn!("{} smtp tls setup failed: {e}", self.id);
                self.phase = ConnPhase::Closing("tls-setup");
            }
        }
    }

    /// Runs the connection as far as it can go without blocking.
    pub(crate) fn pump(&mut self, scratch: &mut [u8], ctx: &mut super::loop_ctx::LoopCtx<'_>, now: Instant) -> Status {
        // A filter's disconnect closes once its reply is out (below).
        if let Some(reason) = self.close_reason().filter(|r| *r != "filter") {
            return Status::Closed(reason);
        }
        if matches!(self.phase, ConnPhase::Proxy(_)) {
            match self.read_proxy(scratch, ctx, now) {
                Ok(true) => {}
                Ok(false) => return Status::Open,
                Err(reason) => return Status::Closed(reason),
            }
        }
        for _ in 0..MAX_TURNS {
            let mut progressed = self.feed_inbuf(now);
            if self.can_read() {
                match self.read(scratch) {
                    Ok(ReadResult::Data(n)) => {
                        self.feed(&scratch[..n], now);
                        progressed = true;
                    }
                    Ok(ReadResult::WouldBlock) => self.readable = false,
                    Ok(ReadResult::Eof) => {
                        self.session.handle_eof();
                        self.readable = false;
                        self.close("eof");
                    }
                    Err(e) => return self.fail("io-error", &e),
                }
            }
            while let Some(event) = self.session.poll_event() {
                self.on_event(event, ctx, now);
            }
            if let Some(req) = self.session.poll_auth() {
                let origin = self.origin().clone();
                ctx.check_auth(self.id, &origin, self.listener.auth.table.as_deref(), req);
            }
            if let Some(req) = self.session.poll_lookup() {
                let p = self.session.policy();
                let client = super::lookup::ClientFacts {
                    origin: p.origin(),
                    tag: p.tag(),
                    rdns: p.rdns(),
                    senders: p.senders(),
                };
                let id = req.id;
                ctx.ask(self.id, id, super::lookup::ask(req, &client));
            }
            self.filter_flush(ctx);
            if let Err(e) = self.flush() {
                return self.fail("io-error", &e);
            }
            if matches!(self.phase, ConnPhase::StartTls) && !self.has_output() {
                self.phase = ConnPhase::Open;
                self.start_tls(now);
                progressed = true;
            }
            if let Some(reason) = self.close_reason() {
                if !self.has_output() || reason == "eof" {
                    return Status::Closed(reason);
                }
            }
            if self.session.is_closing() && !self.has_output() {
                return Status::Closed(self.close_reason().unwrap_or("quit"));
            }
            if !progressed {
                break;
            }
        }
        Status::Open
    }

    /// Reads the PROXY header; once it is whole, the session starts over for the client it
    /// names (greeting, rules and Received see that address) and TLS may begin. `Ok(false)`:
    /// not yet.
    fn read_proxy(
        &mut self,
        scratch: &mut [u8],
        ctx: &super::loop_ctx::LoopCtx<'_>,
        now: Instant,
    ) -> Result<bool, &'static str> {
        let ConnPhase::Proxy(wait) = &mut self.phase else {
            return Ok(true);
        };
        let got = match wait.read(&mut self.stream, scratch) {
            Ok(got) => got,
            Err(e) => {
                log::info!("{} smtp disconnected reason=proxy-error address={} error=\"{e}\"", self.id, self.peer());
                return Err("proxy-error");
            }
        };
        let Some(client) = got else {
            self.readable = false;
            return Ok(false);
        };
        self.phase = ConnPhase::Open;
        if let Some(ends) = client {
            let ip = ends.src.ip();
            log::info!("{} smtp proxy address={ip} via={}", self.id, self.peer());
            let policy = ConnPolicy::new(Arc::clone(&self.listener.config), Origin::Tcp(ip), self.listener.tag.clone());
            let cfg = self.listener.knobs.session_config(&self.listener.session, self.stream.local_ip());
            self.session = Session::new(cfg, policy, now);
            self.hostname_restarted();
            // The client's name, as for any other client: the greeting waits for it.
            if ctx.rdns.start(ctx.slot, self.id, ip, ctx.waker) {
                self.await_rdns(now);
            }
        }
        self.filter_proxied(client);
        if self.listener.smtps {
            self.start_tls(now);
        }
        Ok(true)
    }

    fn fail(&mut self, reason: &'static str, e: &dyn std::fmt::Display) -> Status {
        log::debug!("{} smtp connection error: {e}", self.id);
        Status::Closed(reason)
    }

    fn can_read(&self) -> bool {
        if self.input_paused() {
            return false;
        }
        let handshaking = self.tls.as_ref().is_some_and(|t| t.is_handshaking());
        self.readable && (handshaking || self.session.wants_read()) && !self.filter_blocks_read()
    }

    /// Offers input kept from an earlier turn (a partial line, or commands pipelined behind
    /// a message that was being committed).
    fn feed_inbuf(&mut self, now: Instant) -> bool {
        if self.filter.is_some() {
            return self.feed_filtered(now);
        }
        if self.inbuf.is_empty() || !self.session.wants_read() || matches!(self.phase, ConnPhase::StartTls) {
            return false;
        }
        let n = self.session.handle_input(&self.inbuf, now);
        self.inbuf.drain(..n);
        if self.inbuf.is_empty() {
            // Give back a buffer that a burst grew: idle connections must stay small.
            self.inbuf = Vec::new();
        }
        n > 0
    }

    fn feed(&mut self, data: &[u8], now: Instant) {
        if self.filter.is_some() {
            self.inbuf.extend_from_slice(data);
            self.feed_filtered(now);
            return;
        }
        if self.inbuf.is_empty() {
            let n = self.session.handle_input(data, now);
            if n < data.len() {
                self.inbuf.extend_from_slice(&data[n..]);
            }
        } else {
            self.inbuf.extend_from_slice(data);
            self.feed_inbuf(now);
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<ReadResult> {
        let Some(tls) = self.tls.as_mut() else {
            return match self.stream.read(buf) {
                Ok(0) => Ok(ReadResult::Eof),
                Ok(n) => Ok(ReadResult::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadResult::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadResult::Data(0)),
                Err(e) => Err(e),
            };
        };
        loop {
            match tls.reader().read(buf) {
                Ok(0) => return Ok(ReadResult::Eof),
                Ok(n) => return Ok(ReadResult::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadResult::Eof),
                Err(e) => return Err(e),
            }
            let was_handshaking = tls.is_handshaking();
            match tls.read_tls(&mut self.stream) {
                Ok(0) => return Ok(ReadResult::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadResult::WouldBlock),
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // Send the alert rustls queued, best effort, then give up on this peer.
                let _ = tls.write_tls(&mut self.stream);
                log::info!("{} smtp tls handshake failed address={} error=\"{e}\"", self.id, self.peer());
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if was_handshaking && !tls.is_handshaking() {
                if matches!(self.phase, ConnPhase::Handshake { .. }) {
                    self.phase = ConnPhase::Open;
                }
                let info = crate::tls::describe(tls);
                if let Some((version, cipher, bits)) = info {
                    log::info!("{} smtp tls ciphers={version}:{cipher}:{bits}", self.id);
                    self.filter_tls(&format!("{version}:{cipher}:{bits}"));
                    self.session.handle_tls(TlsInfo { version, cipher, bits });
                }
                // Let the pump see the session's new state before reading on.
                return Ok(ReadResult::Data(0));
            }
        }
    }

    fn has_output(&self) -> bool {
        !matches!(self.phase, ConnPhase::Proxy(_)) && !self.session.output().is_empty()
            || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    fn flush(&mut self) -> io::Result<()> {
        if matches!(self.phase, ConnPhase::Proxy(_)) {
            return Ok(());
        }
        loop {
            let out = if self.holds_greeting() { &[][..] } else { self.session.output() };
            let Some(tls) = self.tls.as_mut() else {
                if out.is_empty() {
                    return Ok(());
                }
                match self.stream.write(out) {
                    Ok(n) => {
                        self.session.consume_output(n);
                        filtering::consumed(&mut self.filter, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            };
            if !out.is_empty() {
                let n = tls.writer().write(out)?;
                self.session.consume_output(n);
                filtering::consumed(&mut self.filter, n);
            }
            if !tls.wants_write() {
                return Ok(());
            }
            match tls.write_tls(&mut self.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn on_event(&mut self, event: Event<Vec<Target>>, ctx: &mut super::loop_ctx::LoopCtx<'_>, now: Instant) {
        match event {
            Event::StartTls => {
                if !matches!(self.phase, ConnPhase::Closing(_)) {
                    self.phase = ConnPhase::StartTls;
                }
                self.inbuf = Vec::new();
                let _ = now;
            }
            Event::Message(message) if self.filter.is_some() => self.filter_message(message),
            Event::Message(message) => self.submit(message, ctx),
            Event::Close(reason) => {
                self.close(close_reason(&reason));
            }
            Event::Refused(r) => {
                let mut reply = Vec::with_capacity(64);
                r.reply.write_to(&mut reply);
                let reply = String::from_utf8_lossy(reply.trim_ascii_end());
                let address = r.address.map(|a| format!(" address=<{a}>")).unwrap_or_default();
                log::info!("{} smtp refused step={}{address} reply=\"{reply}\"", self.id, r.step.as_str());
            }
        }
    }

    fn submit(&mut self, message: Message<Vec<Target>>, ctx: &mut super::loop_ctx::LoopCtx<'_>) {
        let proto = self.proto(&message);
        log::info!(
            "{} smtp message msgid={} size={} nrcpt={} proto={}",
            self.id,
            message.id,
            message.size,
            message.rcpts.len(),
            proto
        );
        let hop = super::message::Hop {
            origin: self.origin(),
            mask_src: self.listener.knobs.mask_src,
            show_auth: self.listener.auth.received_auth,
            rdns: self.rdns(),
            hostname: self.hostname(),
        };
        let received = super::message::received_header(&hop, &message, proto);
        let policy = self.session.policy();
        let (origin, tag) = (policy.origin().clone(), policy.tag().map(str::to_owned));
        let rdns = policy.rdns().map(str::to_owned);
        ctx.submit(self.id, message, received, &origin, tag.as_deref(), rdns);
    }

    fn proto(&self, message: &Message<Vec<Target>>) -> &'static str {
        let tls = message.tls.is_some();
        let auth = message.auth.is_some();
        match (message.esmtp, tls, auth) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    pub(crate) fn session_mut(&mut self) -> &mut Session<ConnPolicy> {
        &mut self.session
    }

    /// Handles idle and handshake deadlines.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Tick {
        if matches!(&self.phase, ConnPhase::Proxy(w) if now >= w.deadline) {
            log::info!("{} smtp disconnected reason=proxy-timeout address={}", self.id, self.peer());
            return Tick::Close;
        }
        if self.rdns_deadline.is_some_and(|d| now >= d) {
            log::info!("{} smtp rdns address={} timed out", self.id, self.peer());
            self.rdns_deadline = None;
            self.filter_rdns_known();
            self.greet_when_known();
            return Tick::Pump;
        }
        if self.hostname_tick(now) {
            return Tick::Pump;
        }
        if matches!(self.phase, ConnPhase::Handshake { deadline } if now >= deadline) {
            log::info!("{} smtp tls handshake timed out address={}", self.id, self.peer());
            return Tick::Close;
        }
        if self.session.poll_timeout().is_some_and(|d| now >= d) {
            self.session.handle_timeout(now);
            if self.session.is_closing() {
                self.filter_timed_out();
            }
            return Tick::Pump;
        }
        if self.filter_tick() {
            return Tick::Pump;
        }
        Tick::Idle
    }

    /// Tells a client that is not mid-delivery that the server is stopping (best effort:
    /// the socket is closed right after).
    pub(crate) fn notify_shutdown(&mut self) {
        let mut bye = Vec::with_capacity(40);
        reply::SHUTTING_DOWN.write_to(&mut bye);
        let bye = bye.as_slice();
        match self.tls.as_mut() {
            Some(tls) if !tls.is_handshaking() => {
                let _ = tls.writer().write_all(bye);
                let _ = tls.write_tls(&mut self.stream);
            }
            Some(_) => {}
            None => {
                let _ = self.stream.write_all(bye);
            }
        }
    }

    /// The readiness this connection needs next.
    pub(crate) fn interest(&self) -> Interest {
        if self.has_output() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let want = self.interest();
        match self.registered {
            Some(have) if have == want => Ok(()),
            Some(_) => {
                self.registered = Some(want);
                registry.reregister(&mut self.stream, token, want)
            }
            None => {
                self.registered = Some(want);
                registry.register(&mut self.stream, token, want)
            }
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        if self.registered.take().is_some() {
            let _ = registry.deregister(&mut self.stream);
        }
    }

    /// Closes politely: a TLS close_notify, best effort, then the socket drops.
    pub(crate) fn shutdown(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.stream);
        }
    }
}

fn close_reason(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Quit => "quit",
        CloseReason::Timeout => "timeout",
        CloseReason::TooManyErrors => "too-many-errors",
        CloseReason::Eof => "eof",
        CloseReason::TooManyAuthFailures => "auth-failures",
        #[allow(unreachable_patterns)]
        _ => "closed",
    }
}
