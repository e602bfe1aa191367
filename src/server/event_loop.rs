//! One event loop: a mio `Poll` on one thread, owning its listeners and connections.
//! Connections live in a slab indexed by token. Messages and logins go to the delivery
//! process on the loop's own link, registered in this poll; the loop reads their verdicts
//! there and hands each to its session, which alone may then send the 250.
//!
//! Invariant: nothing here blocks except `Poll::poll`; file writes happen on delivery threads.

use std::io::{self, Write};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::envelope::Origin;
use crate::privsep::frame::{AuthVerdict, DeliveryVerdict, LookupVerdict};
use crate::privsep::link::{Answer, LoopLink};
use crate::server::conn::{Conn, Status, Tick};
use crate::server::filters::{FromHub, LoopFilters, ToHub};
use crate::server::loop_ctx::{AuthAnswer, DeliveryReport, LookupAnswer, LoopCtx, Waiter};
use crate::server::stream::Stream;
use crate::server::ListenerRt;
use crate::smtp::{AuthResult, Outcome};

const WAKER: Token = Token(0);
const LISTENER_BASE: usize = 1;
const CONN_BASE: usize = 1 << 16;
/// The link to delivery, below the connections.
const LINK: Token = Token(CONN_BASE - 1);
/// Read buffer shared by every connection of the loop.
const SCRATCH: usize = 64 * 1024;
/// How often idle and handshake deadlines are checked.
const TICK: Duration = Duration::from_secs(1);
/// How long a stopping loop waits for in-flight deliveries before it gives up on them
/// (their clients get no 250, so they retry: nothing is lost).
const DRAIN: Duration = Duration::from_secs(30);

pub(crate) enum ListenSocket {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

/// A listening socket handed to a loop, with what its sessions need.
pub(crate) struct LoopListener {
    pub(crate) key: String,
    pub(crate) socket: ListenSocket,
    pub(crate) rt: Arc<ListenerRt>,
}

pub(crate) enum LoopCommand {
    Listen(LoopListener),
    /// Stop accepting; serve the sessions there are until they end (a newer smtp process
    /// has taken over the listeners).
    Retire,
    Stop,
}

pub(crate) struct EventLoop {
    poll: Poll,
    waker: Arc<Waker>,
    listeners: Vec<Option<LoopListener>>,
    conns: Vec<Option<Slot>>,
    free: Vec<usize>,
    live: usize,
    max_sessions: usize,
    link: LoopLink<Waiter>,
    commands: Receiver<LoopCommand>,
    again: Vec<usize>,
    stopping: Option<Instant>,
    retiring: bool,
    filters: Option<LoopFilters>,
    /// Where this loop's reverse DNS answers arrive.
    rdns: super::rdns::Rdns,
}

struct Slot {
    conn: Conn,
    /// A message of this connection is with the delivery threads.
    inflight: bool,
}

impl EventLoop {
    pub(crate) fn new(
        commands: Receiver<LoopCommand>,
        link: std::os::unix::net::UnixStream,
        seq: Arc<AtomicU64>,
        max_sessions: usize,
    ) -> io::Result<(EventLoop, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let link = LoopLink::new(link, seq, crate::buffers::Buffers::new(), poll.registry(), LINK)?;
        let ev = EventLoop {
            poll,
            waker: Arc::clone(&waker),
            listeners: Vec::new(),
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            max_sessions,
            link,
            commands,
            again: Vec::new(),
            stopping: None,
            retiring: false,
            filters: None,
            rdns: super::rdns::Rdns::new(),
        };
        Ok((ev, waker))
    }

    /// Connects this loop to the filter thread (before it runs).
    pub(crate) fn set_filters(&mut self, filters: LoopFilters) {
        self.filters = Some(filters);
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; SCRATCH];
        let mut next_tick = Instant::now() + TICK;
        loop {
            // Everything this turn submitted goes out together.
            self.link.flush(self.poll.registry());
            if let Some(f) = &self.filters {
                f.shared.wake();
            }
            let timeout = if self.again.is_empty() && !self.link.has_ready() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("event loop poll failed: {e}");
                    return;
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LINK => self.link.read(self.poll.registry()),
                    Token(t) if t >= CONN_BASE => {
                        let slot = t - CONN_BASE;
                        if let Some(Some(s)) = self.conns.get_mut(slot) {
                            s.conn.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                        }
                        self.pump(slot, &mut scratch, now);
                    }
                    Token(t) => self.accept(t - LISTENER_BASE, now),
                }
            }
            self.drain_link(&mut scratch, now);
            self.drain_filters(&mut scratch, now);
            self.drain_rdns(&mut scratch, now);
            if self.drain_commands(now) {
                return;
            }
            for slot in std::mem::take(&mut self.again) {
                self.pump(slot, &mut scratch, now);
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(&mut scratch, now);
            }
            if self.retiring && self.live == 0 {
                return;
            }
            if let Some(since) = self.stopping {
                let waiting = self.conns.iter().flatten().any(|s| s.inflight);
                if !waiting || now.duration_since(since) > DRAIN {
                    self.close_all();
                    return;
                }
            }
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        loop {
            let Some(Some(listener)) = self.listeners.get_mut(index) else {
                return;
            };
            let rt = Arc::clone(&listener.rt);
            let accepted = match &listener.socket {
                ListenSocket::Tcp(l) => l.accept().map(|(s, addr)| (Stream::Tcp(s), Origin::Tcp(addr.ip()))),
                ListenSocket::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), Origin::Socket)),
            };
            match accepted {
                Ok((stream, origin)) => self.admit(stream, origin, rt, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog for the next event.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: Stream, origin: Origin, rt: Arc<ListenerRt>, now: Instant) {
        let id = super::ids::session_id();
        let addr = match &origin {
            Origin::Socket => "local".to_owned(),
            Origin::Tcp(ip) => ip.to_string(),
        };
        if self.live >= self.max_sessions || self.stopping.is_some() || self.retiring {
            log::warn!("{id} smtp disconnected reason=too-many-sessions address={addr}");
            // Best effort on a fresh socket: the reply fits any send buffer.
            let mut bye = Vec::with_capacity(64);
            crate::smtp::reply::TOO_MANY_CONNECTIONS.write_to(&mut bye);
            let _ = stream.write_all(&bye);
            return;
        }
        // On the local socket, who submits is what the kernel says, not what the client claims.
        let user = match &stream {
            Stream::Unix(s) => crate::control::peer_uid(s).ok().and_then(crate::users::SystemUsers::name_of),
            Stream::Tcp(_) => None,
        };
        match &user {
            Some(u) => log::info!("{id} smtp connected address={addr} user={u}"),
            None => log::info!("{id} smtp connected address={addr}"),
        }
        super::stats::get().connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let filter = self.filters.as_ref().and_then(|f| {
            let chain = rt.filter.as_ref().and_then(|n| f.shared.chains.get(n))?;
            let socket = rt.config.spool.join(crate::spool::SUBMIT_SOCKET);
            let link = crate::server::conn::filtering::link(&stream, &socket.display().to_string());
            let fid = crate::filter::Id(id.0);
            Some(crate::server::conn::filtering::PendingFilter::new(Arc::clone(chain), &f.shared, fid, link))
        });
        // Behind a PROXY header the peer is the proxy, not the client: the lookup waits for
        // the header (`Conn::read_proxy`).
        let ip = match &origin {
            Origin::Tcp(ip) if !rt.knobs.proxy => Some(*ip),
            _ => None,
        };
        let mut conn = Conn::new(id, stream, origin, rt, user, now);
        // Bodies come from, and go back to, the list the link gives written ones back to.
        conn.session_mut().set_buffers(self.link.buffers().clone());
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if ip.is_some_and(|ip| self.rdns.start(slot, id, ip, &self.waker)) {
            conn.await_rdns(now);
        }
        if let Some(ask) = conn.hostname_question(now) {
            self.link.ask(ask, Waiter::Hostname { slot, sid: id });
        }
        // After the lookup started: link-connect waits for the client's name.
        if let (Some(cf), Some(f)) = (filter, self.filters.as_mut()) {
            f.slots.insert(cf.id(), slot);
            f.shared.send(ToHub::Open { session: cf.id(), from: f.index });
            conn.attach_filter(cf);
        }
        self.conns[slot] = Some(Slot { conn, inflight: false });
        self.live += 1;
        self.again.push(slot);
    }

    fn pump(&mut self, slot: usize, scratch: &mut [u8], now: Instant) {
        let Some(Some(s)) = self.conns.get_mut(slot) else {
            return;
        };
        let mut ctx = LoopCtx {
            link: &mut self.link,
            slot,
            inflight: false,
            filters: self.filters.as_ref().map(|f| &*f.shared),
            rdns: &self.rdns,
            waker: &self.waker,
        };
        let status = s.conn.pump(scratch, &mut ctx, now);
        s.inflight |= ctx.inflight;
        match status {
            Status::Closed(reason) => self.close(slot, reason),
            Status::Open => {
                if let Err(e) = s.conn.register(self.poll.registry(), Token(CONN_BASE + slot)) {
                    log::warn!("{} smtp register failed: {e}", s.conn.id);
                    self.close(slot, "io-error");
                    return;
                }
                if s.conn.readable && s.conn.session_mut().wants_read() {
                    self.again.push(slot);
                }
            }
        }
    }

    fn close(&mut self, slot: usize, reason: &str) {
        let Some(mut s) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        s.conn.shutdown();
        s.conn.deregister(self.poll.registry());
        if let Some(f) = self.filters.as_mut() {
            if let Some(id) = s.conn.filter_id() {
                f.slots.remove(&id);
                s.conn.filter_close(&f.shared);
            }
        }
        log::info!("{} smtp disconnected reason={reason}", s.conn.id);
        self.live -= 1;
        self.free.push(slot);
    }

    /// Answers from delivery (or failures of a lost link), each to its session; a session
    /// pumped here may submit again, and a lost link answers that at once: until none is left.
    fn drain_link(&mut self, scratch: &mut [u8], now: Instant) {
        while self.link.has_ready() {
            for (waiter, answer) in self.link.take_ready() {
                match (waiter, answer) {
                    (Waiter::Message { slot, sid, msgid }, Answer::Delivery(outcome)) => {
                        self.on_verdict(DeliveryReport { slot, sid, msgid, outcome }, scratch, now);
                    }
                    (Waiter::Login { slot, sid, id, user }, Answer::Auth(verdict)) => {
                        self.on_auth(AuthAnswer { slot, sid, id, user, verdict }, scratch, now);
                    }
                    (Waiter::Lookup { slot, sid, id }, answer) => {
                        let verdict = lookup_verdict(answer);
                        self.on_lookup(LookupAnswer { slot, sid, id, verdict }, scratch, now);
                    }
                    (Waiter::Hostname { slot, sid }, answer) => {
                        let verdict = lookup_verdict(answer);
                        self.on_answer(slot, sid, scratch, now, |c| c.handle_hostname(verdict));
                    }
                    (Waiter::FilterTable { slot, sid }, answer) => {
                        let verdict = lookup_verdict(answer);
                        self.on_answer(slot, sid, scratch, now, |c| {
                            c.readable = true;
                            c.filter_table_answered(verdict);
                        });
                    }
                    (Waiter::Message { slot, sid, msgid }, Answer::Auth(_) | Answer::Lookup(_)) => {
                        let outcome = DeliveryVerdict::TempFail("delivery answered another request".into());
                        self.on_verdict(DeliveryReport { slot, sid, msgid, outcome }, scratch, now);
                    }
                    (Waiter::Login { slot, sid, id, user }, Answer::Delivery(_) | Answer::Lookup(_)) => {
                        let verdict = AuthVerdict::TempFail;
                        self.on_auth(AuthAnswer { slot, sid, id, user, verdict }, scratch, now);
                    }
                }
            }
        }
    }

    /// The connection an answer is for, unless its client left and the slot was reused.
    fn answered(&mut self, slot: usize, sid: crate::envelope::SessionId) -> Option<&mut Slot> {
        self.conns.get_mut(slot)?.as_mut().filter(|s| s.conn.id == sid)
    }

    fn on_verdict(&mut self, v: DeliveryReport, scratch: &mut [u8], now: Instant) {
        let Some(s) = self.answered(v.slot, v.sid) else {
            return;
        };
        s.inflight = false;
        let outcome = match &v.outcome {
            DeliveryVerdict::Ok => Outcome::Ok,
            DeliveryVerdict::TempFail(cause) => Outcome::TempFail(cause.clone()),
            DeliveryVerdict::PermFail(cause) => Outcome::PermFail(cause.clone()),
        };
        log::info!("{} delivery msgid={} result={}", v.sid, v.msgid, result_name(&v.outcome));
        super::stats::get().count(&v.outcome);
        s.conn.readable = true;
        s.conn.filter_committed(matches!(outcome, Outcome::Ok));
        s.conn.session_mut().handle_commit(v.msgid, outcome);
        self.pump(v.slot, scratch, now);
    }

    /// Login verdicts: logged (user and address, never the password), then given to the
    /// session, which replies 235, 535, 454 or 421.
    fn on_auth(&mut self, a: AuthAnswer, scratch: &mut [u8], now: Instant) {
        let Some(s) = self.answered(a.slot, a.sid) else {
            return;
        };
        let (result, name) = match a.verdict {
            AuthVerdict::Ok => (AuthResult::Ok, "ok"),
            AuthVerdict::Failed => (AuthResult::Failed, "permfail"),
            AuthVerdict::TempFail => (AuthResult::TempFail, "tempfail"),
            AuthVerdict::Blocked => (AuthResult::Blocked, "blocked"),
        };
        log::info!("{} smtp authentication user={} address={} result={name}", a.sid, a.user, s.conn.peer());
        s.conn.readable = true;
        let link_auth = match result {
            AuthResult::Ok => crate::filter::protocol::LinkAuthResult::Pass,
            AuthResult::Failed => crate::filter::protocol::LinkAuthResult::Fail,
            _ => crate::filter::protocol::LinkAuthResult::Error,
        };
        s.conn.filter_auth(&a.user, link_auth);
        s.conn.session_mut().handle_auth(a.id, result);
        self.pump(a.slot, scratch, now);
    }

    /// Delivery's answer to a question at MAIL or RCPT: the session replies and reads on.
    fn on_lookup(&mut self, a: LookupAnswer, scratch: &mut [u8], now: Instant) {
        let Some(s) = self.answered(a.slot, a.sid) else {
            return;
        };
        s.conn.readable = true;
        let verdict = super::lookup::reply(a.verdict).map(|()| Vec::new());
        let before = s.conn.session_mut().output().len();
        s.conn.session_mut().handle_lookup(a.id, verdict);
        s.conn.filter_lookup_answered(before);
        self.pump(a.slot, scratch, now);
    }

    /// Delivery's answer to a `hostnames` question (the greeting goes out) or to a builtin
    /// filter condition's (the chain goes on): `give` hands it to the connection.
    fn on_answer(
        &mut self,
        slot: usize,
        sid: crate::envelope::SessionId,
        scratch: &mut [u8],
        now: Instant,
        give: impl FnOnce(&mut Conn),
    ) {
        let Some(s) = self.answered(slot, sid) else {
            return;
        };
        give(&mut s.conn);
        self.pump(slot, scratch, now);
    }

    /// Hands the filter processes' lines to their sessions, and a process's death to all.
    fn drain_filters(&mut self, scratch: &mut [u8], now: Instant) {
        let Some(f) = self.filters.as_mut() else { return };
        let mut touched = Vec::new();
        while let Ok(msg) = f.rx.try_recv() {
            match msg {
                FromHub::Line { session, proc, line } => {
                    let Some(&slot) = f.slots.get(&session) else { continue };
                    if let Some(Some(s)) = self.conns.get_mut(slot) {
                        s.conn.filter_answer(&proc, &line);
                        touched.push(slot);
                    }
                }
                FromHub::Failed(proc) => {
                    for &slot in f.slots.values() {
                        if let Some(Some(s)) = self.conns.get_mut(slot) {
                            s.conn.filter_proc_failed(&proc);
                            touched.push(slot);
                        }
                    }
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for slot in touched {
            if let Some(Some(s)) = self.conns.get_mut(slot) {
                s.conn.readable = true;
            }
            self.pump(slot, scratch, now);
        }
    }

    /// Reverse DNS answers: the session waiting before its greeting goes on.
    fn drain_rdns(&mut self, scratch: &mut [u8], now: Instant) {
        while let Some(a) = self.rdns.try_recv() {
            let Some(s) = self.answered(a.slot, a.sid) else {
                continue;
            };
            s.conn.handle_rdns(a.name);
            self.pump(a.slot, scratch, now);
        }
    }

    /// Returns true when the loop must exit at once.
    fn drain_commands(&mut self, now: Instant) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                LoopCommand::Listen(mut l) => {
                    let index = self.listeners.len();
                    let token = Token(LISTENER_BASE + index);
                    let registered = match &mut l.socket {
                        ListenSocket::Tcp(s) => self.poll.registry().register(s, token, Interest::READABLE),
                        ListenSocket::Unix(s) => self.poll.registry().register(s, token, Interest::READABLE),
                    };
                    match registered {
                        Ok(()) => self.listeners.push(Some(l)),
                        Err(e) => log::error!("listener {}: {e}", l.key),
                    }
                }
                LoopCommand::Retire => {
                    self.unlisten(|_| true);
                    self.retiring = true;
                }
                LoopCommand::Stop => {
                    self.unlisten(|_| true);
                    self.stopping.get_or_insert(now);
                    self.refuse_idle();
                }
            }
        }
        false
    }

    fn unlisten(&mut self, mut which: impl FnMut(&str) -> bool) {
        for entry in self.listeners.iter_mut() {
            if entry.as_ref().is_some_and(|l| which(&l.key)) {
                if let Some(mut l) = entry.take() {
                    let _ = match &mut l.socket {
                        ListenSocket::Tcp(s) => self.poll.registry().deregister(s),
                        ListenSocket::Unix(s) => self.poll.registry().deregister(s),
                    };
                }
            }
        }
    }

    /// At shutdown, every session not waiting for a delivery is told so and closed; those
    /// waiting get their verdict first (the drain in `run`).
    fn refuse_idle(&mut self) {
        let idle: Vec<usize> =
            self.conns.iter().enumerate().filter_map(|(i, s)| s.as_ref().filter(|s| !s.inflight).map(|_| i)).collect();
        for slot in idle {
            if let Some(Some(s)) = self.conns.get_mut(slot) {
                s.conn.notify_shutdown();
            }
            self.close(slot, "shutdown");
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            if let Some(Some(s)) = self.conns.get_mut(slot) {
                s.conn.notify_shutdown();
            }
            self.close(slot, "shutdown");
        }
    }

    fn tick(&mut self, scratch: &mut [u8], now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(Some(s)) = self.conns.get_mut(slot) else {
                continue;
            };
            match s.conn.on_tick(now) {
                Tick::Idle => {}
                Tick::Pump => self.pump(slot, scratch, now),
                Tick::Close => self.close(slot, "timeout"),
            }
        }
    }
}

fn result_name(outcome: &DeliveryVerdict) -> &'static str {
    match outcome {
        DeliveryVerdict::Ok => "Ok",
        DeliveryVerdict::TempFail(_) => "TempFail",
        DeliveryVerdict::PermFail(_) => "PermFail",
    }
}

/// A lookup's verdict; an answer of another kind (a confused link) is a temporary failure.
fn lookup_verdict(answer: Answer) -> LookupVerdict {
    match answer {
        Answer::Lookup(v) => v,
        _ => LookupVerdict::TempFail,
    }
}
