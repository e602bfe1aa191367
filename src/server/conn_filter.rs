//! A connection's filtering: its `filter::SessionFilter` and what the connection holds
//! while a phase waits for the chain (`Park`). Commands are offered to the session one
//! line at a time; a line whose phase the chain filters is held until the chain decides
//! (proceed: the session gets it, perhaps rewritten; reject or disconnect: the client gets
//! the filter's reply and the session never sees the line). The greeting is held until the
//! connect phase is decided. A finished message streams through the data-line filters
//! and then the commit phase before it goes to delivery; what the last filter wrote is
//! what is stored. Filter replies are written as OpenSMTPD writes them, checked by the
//! engine (a 4xx/5xx code, else `421`).

use std::sync::Arc;
use std::time::Instant;

use super::Conn;
use crate::envelope::Target;
use crate::filter::protocol::{self, Endpoint, EventKind, LinkAuthResult, Report, TxResult};
use crate::filter::{
    Chain, FilterAnswer, FilterDecision, FilterEvent, FilterLink, Id, Limits, Now, Phase, SessionFilter,
};
use crate::server::filters::{Shared, ToHub};
use crate::server::loop_ctx::LoopCtx;
use crate::smtp::command::{self, Command};
use crate::smtp::session::MAX_COMMAND_LINE;
use crate::smtp::Message;

/// Input held while the chain decides, beyond which the connection stops reading.
const MAX_HELD_INPUT: usize = 64 * 1024;

/// What the connection holds while the chain decides.
enum Park {
    None,
    /// The greeting waits for the connect phase.
    Connect,
    /// A command line waits for its phase.
    Command {
        line: Vec<u8>,
    },
    /// The message streams through the data-line filters.
    Data(Message<Vec<Target>>),
    /// The session refused a message that was streaming (too big, say): the chain still
    /// has it, and input waits until the filters are done with it.
    Drain,
    /// The message waits for the commit phase.
    Commit(Message<Vec<Target>>),
}

/// A message streamed through the data-line filters line by line as it arrives (the
/// session keeps its own copy, which the filtered one replaces).
#[derive(Default)]
struct DataStream {
    /// The unfinished last line.
    partial: Vec<u8>,
    /// The client's final dot was seen.
    ended: bool,
    /// The chain refused the message while it streamed (too big).
    refused: Option<String>,
}

pub(crate) struct ConnFilter {
    engine: SessionFilter,
    chain: Arc<Chain>,
    park: Park,
    /// A filter said junk: the message gets `X-Spam: Yes`.
    junk: bool,
    /// A command line the chain let through, for the session next.
    approved: Option<Vec<u8>>,
    /// A message the chain let through, for delivery next.
    ready: Option<Message<Vec<Target>>>,
    /// The transaction number in tx-* reports.
    tx: u32,
    /// The size of the message last handed to delivery, for tx-commit.
    size: usize,
    /// Recipients accepted in this transaction, for tx-envelope ids.
    rcpts: u32,
    /// Octets at the head of the session's output already reported as protocol-server.
    out_mark: usize,
    /// The message streaming through the data-line filters, between DATA's 354 and the end.
    stream: Option<DataStream>,
    /// A MAIL or RCPT line whose reply waits for the delivery process (`server::lookup`).
    parked_line: Option<Vec<u8>>,
    /// A builtin condition's question for a table process, to send (`filter_flush`).
    table_question: Option<crate::filter::TableQuestion>,
}

/// A connection's filtering before its session opens. OpenSMTPD opens the filter session
/// (`link-connect`, with the client's name) once the reverse DNS is known, so this waits
/// with the greeting for the answer or its timeout.
pub(crate) struct PendingFilter {
    chain: Arc<Chain>,
    limits: Limits,
    id: Id,
    link: FilterLink,
}

impl PendingFilter {
    pub(crate) fn new(chain: Arc<Chain>, shared: &Shared, id: Id, link: FilterLink) -> PendingFilter {
        PendingFilter { chain, limits: shared.limits, id, link }
    }

    pub(crate) fn id(&self) -> Id {
        self.id
    }

    /// Opens the filter session with the client's confirmed name, if any. mxd's resolver
    /// only yields forward-confirmed names, so a name means `pass`.
    fn open(self, rdns: Option<&str>) -> ConnFilter {
        let mut link = self.link;
        link.fcrdns = rdns.is_some();
        link.rdns = rdns.map(str::to_owned);
        // Tokens differ between sessions: the session id, shifted past any chain's length.
        let engine =
            SessionFilter::new(Arc::clone(&self.chain), self.id, self.id.0 << 8, self.limits, &link, Now::read());
        ConnFilter {
            engine,
            chain: self.chain,
            park: Park::None,
            junk: false,
            approved: None,
            ready: None,
            tx: 0,
            size: 0,
            rcpts: 0,
            out_mark: 0,
            stream: None,
            parked_line: None,
            table_question: None,
        }
    }
}

impl ConnFilter {
    pub(crate) fn id(&self) -> Id {
        self.engine.id()
    }
}

/// The link as filters see it.
pub(crate) fn link(stream: &super::Stream, unix_path: &str) -> FilterLink {
    let (src, dest) = match stream {
        super::Stream::Tcp(s) => {
            let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            (
                Endpoint::Inet(s.peer_addr().unwrap_or(unspecified)),
                Endpoint::Inet(s.local_addr().unwrap_or(unspecified)),
            )
        }
        super::Stream::Unix(_) => (Endpoint::Unix(unix_path.into()), Endpoint::Unix(unix_path.into())),
    };
    FilterLink { rdns: None, fcrdns: false, src, dest }
}

/// The filter phase of a command line (without its line ending), and its parameter as
/// OpenSMTPD passes it.
fn classify(line: &[u8]) -> Option<(Phase, String)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match command::parse(line).ok()? {
        Command::Helo(n) => Some((Phase::Helo, n.to_string())),
        Command::Ehlo(n) => Some((Phase::Ehlo, n.to_string())),
        Command::Mail { path, .. } => Some((Phase::MailFrom, text(path))),
        Command::Rcpt { path, .. } => Some((Phase::RcptTo, text(path))),
        Command::Data => Some((Phase::Data, String::new())),
        Command::StartTls => Some((Phase::StartTls, String::new())),
        // As OpenSMTPD: the mechanism and any initial response, as the client sent them.
        Command::Auth(args) => Some((Phase::Auth, text(args.trim_ascii_start()))),
        Command::Rset => Some((Phase::Rset, String::new())),
        Command::Quit => Some((Phase::Quit, String::new())),
        Command::Noop => Some((Phase::Noop, String::new())),
        // OpenSMTPD answers HELP without asking its filters; mxd asks those that register it.
        Command::Help => Some((Phase::Help, String::new())),
        _ => None,
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The command with its parameter replaced by a filter's `rewrite`.
fn rewrite(line: &[u8], value: &str) -> Vec<u8> {
    let value: String = value.chars().filter(|c| !c.is_control()).collect();
    let with = |verb: &str, params: &[u8]| {
        let params = String::from_utf8_lossy(params);
        let sep = if params.is_empty() { "" } else { " " };
        format!("{verb}<{value}>{sep}{params}\r\n").into_bytes()
    };
    match command::parse(trim_eol(line)) {
        Ok(Command::Helo(_)) => format!("HELO {value}\r\n").into_bytes(),
        Ok(Command::Ehlo(_)) => format!("EHLO {value}\r\n").into_bytes(),
        Ok(Command::Mail { params, .. }) => with("MAIL FROM:", params),
        Ok(Command::Rcpt { params, .. }) => with("RCPT TO:", params),
        _ => line.to_vec(),
    }
}

/// `n` octets of output were written to the client: what was reported as protocol-server
/// moves with them.
pub(crate) fn consumed(filter: &mut Option<Box<ConnFilter>>, n: usize) {
    if let Some(f) = filter.as_mut() {
        f.out_mark = f.out_mark.saturating_sub(n);
    }
}

/// Streams what the session consumed of the message: each whole line, dot-unstuffed and
/// without its line ending, to the data-line filters, up to the client's final dot. Bytes
/// go as they came (8BITMIME text included), as OpenSMTPD passes them.
fn stream_bytes(f: &mut ConnFilter, bytes: &[u8]) {
    let ConnFilter { stream: Some(s), engine, .. } = f else { return };
    let now = Now::read();
    let mut rest = bytes;
    while !rest.is_empty() && !s.ended {
        let Some(i) = memchr::memchr(b'\n', rest) else {
            s.partial.extend_from_slice(rest);
            break;
        };
        let joined;
        let line = if s.partial.is_empty() {
            &rest[..i]
        } else {
            s.partial.extend_from_slice(&rest[..i]);
            joined = std::mem::take(&mut s.partial);
            &joined[..]
        };
        rest = &rest[i + 1..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"." {
            s.ended = true;
        } else {
            engine.data_line(now, line.strip_prefix(b".").unwrap_or(line));
        }
    }
}

/// protocol-client: a command line as the client sent it, credentials masked as OpenSMTPD
/// masks them.
fn report_client(f: &mut ConnFilter, line: &[u8], in_auth: bool) {
    if !f.engine.reports(EventKind::ProtocolClient) {
        return;
    }
    let shown = if in_auth {
        "********".into()
    } else if line.len() >= 11 && line[..11].eq_ignore_ascii_case(b"AUTH PLAIN ") {
        "AUTH PLAIN ********".into()
    } else {
        String::from_utf8_lossy(line)
    };
    f.engine.report(Now::read(), &Report::ProtocolClient { command: &shown });
}

/// protocol-server: each whole reply line of `out` past what was reported (`all`: a last
/// line without its ending too, as the connection ends).
fn report_server(f: &mut ConnFilter, out: &[u8], all: bool) {
    let fresh = out.get(f.out_mark..).unwrap_or_default();
    if !f.engine.reports(EventKind::ProtocolServer) {
        f.out_mark += fresh.len();
        return;
    }
    let now = Now::read();
    let mut rest = fresh;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None if all => (rest, &rest[rest.len()..]),
            None => break,
        };
        let response = String::from_utf8_lossy(trim_eol(line));
        f.engine.report(now, &Report::ProtocolServer { response: &response });
        f.out_mark += rest.len() - next.len();
        rest = next;
    }
}

/// A filter's reply as one line (the protocol cannot carry more).
fn reply_text(r: &str) -> String {
    r.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

impl Conn {
    pub(crate) fn filter_id(&self) -> Option<Id> {
        self.filter.as_ref().map(|f| f.id()).or(self.filter_pending.as_ref().map(|p| p.id()))
    }

    /// Gives the connection its filtering, once the client's name is known (call after
    /// the rDNS lookup was started, if it was). Behind a proxy, the client is known from
    /// its PROXY header: filtering waits for that too (`filter_proxied`).
    pub(crate) fn attach_filter(&mut self, pending: PendingFilter) {
        if self.awaits_rdns() || matches!(self.phase, super::ConnPhase::Proxy(_)) {
            self.filter_pending = Some(Box::new(pending));
        } else {
            let rdns = self.rdns().map(str::to_owned);
            self.open_filter(pending.open(rdns.as_deref()));
        }
    }

    /// The PROXY header is in: filters see the client it names (`link-connect`, `src`),
    /// not the proxy, once its name is known.
    pub(crate) fn filter_proxied(&mut self, client: Option<crate::server::proxy::Ends>) {
        if let (Some(p), Some(ends)) = (self.filter_pending.as_mut(), client) {
            p.link.src = Endpoint::Inet(ends.src);
            p.link.dest = Endpoint::Inet(ends.dest);
        }
        if !self.awaits_rdns() {
            self.filter_rdns_known();
        }
    }

    /// The rDNS wait is over: the filter session opens, before the greeting is written.
    pub(crate) fn filter_rdns_known(&mut self) {
        if matches!(self.phase, super::ConnPhase::Proxy(_)) {
            return; // the client is not known yet
        }
        if let Some(pending) = self.filter_pending.take() {
            let rdns = self.rdns().map(str::to_owned);
            self.open_filter(pending.open(rdns.as_deref()));
        }
    }

    /// The greeting waits if the chain filters connect.
    fn open_filter(&mut self, mut f: ConnFilter) {
        if f.chain.filters_phase(Phase::Connect) {
            f.engine.begin(Now::read(), Phase::Connect, "");
            f.park = Park::Connect;
        } else {
            let hostname = self.listener.hostname().to_string();
            f.engine.report(Now::read(), &Report::LinkGreeting { hostname: &hostname });
        }
        self.filter = Some(Box::new(f));
        self.filter_events();
    }

    /// The greeting is held back while the connect phase waits.
    pub(crate) fn holds_greeting(&self) -> bool {
        self.filter.as_ref().is_some_and(|f| matches!(f.park, Park::Connect))
    }

    /// Enough input is held while the chain decides: stop reading.
    pub(crate) fn filter_blocks_read(&self) -> bool {
        self.filter.as_ref().is_some_and(|f| !matches!(f.park, Park::None)) && self.inbuf.len() >= MAX_HELD_INPUT
    }

    /// Offers held input to the session a command at a time, parking on filtered phases.
    pub(crate) fn feed_filtered(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        loop {
            if self.input_paused() || !self.session.wants_read() {
                break;
            }
            let Some(f) = self.filter.as_mut() else { break };
            if let Some(line) = f.approved.take() {
                self.pass_line(&line, now);
                progressed = true;
                continue;
            }
            if !matches!(f.park, Park::None) {
                break;
            }
            if self.session.in_data() {
                let n = self.session.handle_input(&self.inbuf, now);
                if f.stream.is_some() {
                    stream_bytes(f, &self.inbuf[..n]);
                    self.inbuf.drain(..n);
                    self.filter_events();
                    if n == 0 {
                        break;
                    }
                    progressed = true;
                    continue;
                }
                self.inbuf.drain(..n);
                if n == 0 {
                    break;
                }
                progressed = true;
                continue;
            }
            if f.stream.as_ref().is_some_and(|s| s.ended) {
                // The message ended but never reached us: the session refused it. The
                // chain finishes it before the session reads on.
                let refused = f.stream.take().is_some_and(|s| s.refused.is_some());
                if !refused {
                    f.engine.data_end(Now::read());
                    f.park = Park::Drain;
                }
                self.filter_events();
                continue;
            }
            let Some(lf) = memchr::memchr(b'\n', &self.inbuf) else {
                if self.inbuf.len() >= MAX_COMMAND_LINE {
                    // Too long for a command: the session answers and discards it.
                    let n = self.session.handle_input(&self.inbuf, now);
                    self.inbuf.drain(..n);
                    progressed |= n > 0;
                }
                break;
            };
            let line: Vec<u8> = self.inbuf.drain(..=lf).collect();
            progressed = true;
            let in_auth = self.session.in_auth();
            report_client(f, trim_eol(&line), in_auth);
            if in_auth {
                // A credential: never a command, never shown.
                self.pass_line(&line, now);
                continue;
            }
            match classify(trim_eol(&line)) {
                Some((phase, param)) if f.chain.filters_phase(phase) => {
                    f.engine.begin(Now::read(), phase, &param);
                    f.park = Park::Command { line };
                    self.filter_events();
                }
                _ => self.pass_line(&line, now),
            }
        }
        if self.inbuf.is_empty() {
            self.inbuf = Vec::new();
        }
        progressed
    }

    /// Gives one command line to the session, then reports what it answered.
    fn pass_line(&mut self, line: &[u8], now: Instant) {
        let was_auth = self.session.in_auth();
        let before = self.session.output().len();
        let n = self.session.handle_input(line, now);
        if n < line.len() {
            // The session stopped reading mid-line (STARTTLS, a full output): keep the rest.
            let rest = line[n..].to_vec();
            self.inbuf.splice(0..0, rest);
        }
        if self.session.awaiting_lookup() {
            // Reported with its reply, once the delivery process answered.
            if let Some(f) = self.filter.as_mut() {
                f.parked_line = Some(line.to_vec());
            }
            return;
        }
        self.report_line(line, was_auth, before);
    }

    /// A MAIL or RCPT the delivery process answered: its reply and tx events, now.
    pub(crate) fn filter_lookup_answered(&mut self, before: usize) {
        if let Some(line) = self.filter.as_mut().and_then(|f| f.parked_line.take()) {
            self.report_line(&line, false, before);
        }
    }

    /// Reports what the session answered to `line` (its reply starts at `before`).
    fn report_line(&mut self, line: &[u8], was_auth: bool, before: usize) {
        let code = self.session.output().get(before).copied();
        let Some(f) = self.filter.as_mut() else { return };
        let result = match code {
            Some(b'2' | b'3') => TxResult::Ok,
            Some(b'4') => TxResult::TempFail,
            _ => TxResult::PermFail,
        };
        let now = Now::read();
        let cmd = if was_auth { None } else { command::parse(trim_eol(line)).ok() };
        // In OpenSMTPD's order: link-identify and tx-reset before the reply, the tx events
        // after it.
        match cmd {
            Some(Command::Helo(n)) | Some(Command::Ehlo(n)) if result == TxResult::Ok => {
                let ehlo = matches!(cmd, Some(Command::Ehlo(_)));
                f.engine.report(now, &Report::LinkIdentify { ehlo, identity: n });
            }
            Some(Command::Rset) => {
                f.engine.report(now, &Report::TxReset { msgid: f.tx });
                f.rcpts = 0;
            }
            _ => {}
        }
        report_server(f, self.session.output(), false);
        match cmd {
            Some(Command::Mail { path, .. }) if result == TxResult::Ok => {
                f.tx = f.tx.wrapping_add(1);
                f.rcpts = 0;
                let address = String::from_utf8_lossy(path);
                f.engine.report(now, &Report::TxBegin { msgid: f.tx });
                f.engine.report(now, &Report::TxMail { msgid: f.tx, result, address: &address });
            }
            Some(Command::Rcpt { path, .. }) => {
                let address = String::from_utf8_lossy(path);
                f.engine.report(now, &Report::TxRcpt { msgid: f.tx, result, address: &address });
                if result == TxResult::Ok {
                    // An envelope per accepted recipient, its id under the transaction's.
                    f.rcpts = f.rcpts.wrapping_add(1);
                    let envelope_id = (u64::from(f.tx) << 32) | u64::from(f.rcpts);
                    f.engine.report(now, &Report::TxEnvelope { msgid: f.tx, envelope_id });
                }
            }
            Some(Command::Data) if result == TxResult::Ok => {
                f.engine.report(now, &Report::TxData { msgid: f.tx, result });
                if f.chain.filters_phase(Phase::DataLine) {
                    // The message streams through the data-line filters as it arrives.
                    f.engine.data_begin(now);
                    f.stream = Some(DataStream::default());
                    self.filter_events();
                }
            }
            _ => {}
        }
    }

    /// The TLS handshake is done: link-tls, as `VERSION:CIPHER:BITS`.
    pub(crate) fn filter_tls(&mut self, tls: &str) {
        if let Some(f) = self.filter.as_mut() {
            f.engine.report(Now::read(), &Report::LinkTls { tls });
        }
    }

    /// The verdict on an AUTH attempt, before the session replies to it.
    pub(crate) fn filter_auth(&mut self, username: &str, result: LinkAuthResult) {
        if let Some(f) = self.filter.as_mut() {
            f.engine.report(Now::read(), &Report::LinkAuth { result, username });
        }
    }

    /// The session timed out (its 421 is reported first).
    pub(crate) fn filter_timed_out(&mut self) {
        if let Some(f) = self.filter.as_mut() {
            report_server(f, self.session.output(), false);
            f.engine.report(Now::read(), &Report::Timeout);
        }
    }

    /// A finished message: through the data-line filters and the commit phase, or
    /// straight to delivery when the chain has neither.
    pub(crate) fn filter_message(&mut self, message: Message<Vec<Target>>) {
        let Some(f) = self.filter.as_mut() else { return };
        let now = Now::read();
        report_client(f, b".", false);
        if let Some(stream) = f.stream.take() {
            if let Some(r) = stream.refused {
                return self.refuse_message(message, &r, false);
            }
            f.engine.data_end(now);
            f.park = Park::Data(message);
        } else if f.chain.filters_phase(Phase::DataLine) {
            f.engine.data_begin(now);
            let body = message.body.strip_suffix(b"\n").unwrap_or(&message.body);
            if !body.is_empty() {
                for line in body.split(|b| *b == b'\n') {
                    f.engine.data_line(now, line);
                }
            }
            f.engine.data_end(now);
            f.park = Park::Data(message);
        } else if f.chain.filters_phase(Phase::Commit) {
            f.engine.begin(now, Phase::Commit, "");
            f.park = Park::Commit(message);
        } else {
            self.message_ready(message);
        }
        self.filter_events();
    }

    /// Lines a filter process wrote for this session, each ended by a newline.
    pub(crate) fn filter_answer(&mut self, proc: &str, lines: &[u8]) {
        let Some(f) = self.filter.as_mut() else { return };
        let now = Now::read();
        for line in lines.split_inclusive(|b| *b == b'\n') {
            // The filter thread checked the line: it parses, and names this session.
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let answer = protocol::parse_output(line).ok().and_then(FilterAnswer::of);
            if let Some((_, token, answer)) = answer {
                if let Err(e) = f.engine.handle_output(now, proc, token, answer) {
                    log::warn!("{} filter {proc}: {e}", self.id);
                }
            }
        }
        self.filter_events();
    }

    /// A filter process of the chain died or was stopped.
    pub(crate) fn filter_proc_failed(&mut self, proc: &str) {
        if let Some(f) = self.filter.as_mut() {
            f.engine.handle_proc_failure(Now::read(), proc);
        }
        self.filter_events();
    }

    /// The filter deadline, checked by the loop's tick.
    pub(crate) fn filter_tick(&mut self) -> bool {
        let Some(f) = self.filter.as_mut() else { return false };
        let now = Now::read();
        if f.engine.poll_timeout().is_some_and(|d| now.mono >= d) {
            f.engine.handle_timeout(now);
            self.filter_events();
            return true;
        }
        false
    }

    /// The delivery verdict, for tx-commit or tx-rollback.
    pub(crate) fn filter_committed(&mut self, ok: bool) {
        if let Some(f) = self.filter.as_mut() {
            let r =
                if ok { Report::TxCommit { msgid: f.tx, size: f.size } } else { Report::TxRollback { msgid: f.tx } };
            f.engine.report(Now::read(), &r);
        }
    }

    /// The connection ends: link-disconnect, and the filter thread forgets the session.
    pub(crate) fn filter_close(&mut self, shared: &Shared) {
        if let Some(p) = self.filter_pending.take() {
            shared.send(ToHub::Close(p.id()));
        }
        let held = self.holds_greeting();
        if let Some(f) = self.filter.as_mut() {
            if !held {
                report_server(f, self.session.output(), true);
            }
            f.engine.report(Now::read(), &Report::LinkDisconnect);
            let id = f.id();
            while let Some(o) = f.engine.poll_send() {
                shared.send(ToHub::Line { session: id, proc: o.proc, line: o.line });
            }
            shared.send(ToHub::Close(id));
        }
    }

    /// Sends the engine's lines, and hands a message the chain let through to delivery.
    pub(crate) fn filter_flush(&mut self, ctx: &mut LoopCtx<'_>) {
        let held = self.holds_greeting();
        let Some(f) = self.filter.as_mut() else { return };
        if !held {
            report_server(f, self.session.output(), false);
        }
        if let Some(shared) = ctx.filters {
            let id = f.id();
            while let Some(o) = f.engine.poll_send() {
                shared.send(ToHub::Line { session: id, proc: o.proc, line: o.line });
            }
        }
        if let Some(m) = f.ready.take() {
            self.submit(m, ctx);
        }
        if let Some(q) = self.filter.as_mut().and_then(|f| f.table_question.take()) {
            let ask = self.filter_table_ask(q);
            ctx.ask_filter_table(self.id, ask);
        }
    }

    /// The question for the delivery process, with what the session knows of its client.
    fn filter_table_ask(&self, q: crate::filter::TableQuestion) -> crate::privsep::frame::LookupAsk {
        use crate::privsep::frame::{LookupAsk, LookupQuestion};
        let question =
            LookupQuestion::FilterTable { table: q.table.name, regex: q.table.regex, kind: q.kind, key: q.key };
        let p = self.session.policy();
        LookupAsk {
            seq: 0,
            question,
            origin: p.origin().clone(),
            tls: false,
            tag: p.tag().map(str::to_owned),
            auth: None,
            mail_from: String::new(),
            helo: String::new(),
            rdns: p.rdns().map(str::to_owned),
        }
    }

    /// The delivery process's answer to a builtin condition's question: the chain goes on
    /// (a failure refuses the phase with a 451).
    pub(crate) fn filter_table_answered(&mut self, verdict: crate::privsep::frame::LookupVerdict) {
        use crate::privsep::frame::LookupVerdict;
        let Some(f) = self.filter.as_mut() else { return };
        let found = match verdict {
            LookupVerdict::Ok => Some(true),
            LookupVerdict::NotAuthorized => Some(false),
            _ => None,
        };
        if found.is_none() {
            log::warn!("{} filter table lookup failed: the phase is refused for now", self.id);
        }
        f.engine.handle_table(Now::read(), found);
        self.filter_events();
    }

    /// Applies what the engine decided.
    fn filter_events(&mut self) {
        loop {
            let Some(f) = self.filter.as_mut() else { return };
            let Some(event) = f.engine.poll_event() else { return };
            match event {
                FilterEvent::Reported { filter, message } => {
                    log::info!("{} filter-report filter={filter} message=\"{}\"", self.id, message.escape_debug())
                }
                FilterEvent::Decided(phase, d) => self.decided(phase, d),
                FilterEvent::Message(body) => self.filtered(body),
                FilterEvent::AskTable(q) => {
                    if let Some(f) = self.filter.as_mut() {
                        f.table_question = Some(q);
                    }
                }
            }
        }
    }

    fn decided(&mut self, phase: Phase, d: FilterDecision) {
        let Some(f) = self.filter.as_mut() else { return };
        let park = std::mem::replace(&mut f.park, Park::None);
        if !matches!(d, FilterDecision::Proceed) {
            log::info!("{} filter phase={} decision={d:?}", self.id, phase.name());
        }
        match (park, d) {
            (Park::Connect, FilterDecision::Reject(r) | FilterDecision::Disconnect(r)) => {
                let held = self.session.output().len();
                self.session.consume_output(held);
                self.refuse(&r, true);
            }
            (Park::Connect, d) => {
                f.junk |= d == FilterDecision::Junk;
                let hostname = self.listener.hostname().to_string();
                f.engine.report(Now::read(), &Report::LinkGreeting { hostname: &hostname });
            }
            (Park::Command { line, .. }, FilterDecision::Proceed) => f.approved = Some(line),
            (Park::Command { line, .. }, FilterDecision::Junk) => {
                f.junk = true;
                f.approved = Some(line);
            }
            (Park::Command { line, .. }, FilterDecision::Rewrite(v)) => f.approved = Some(rewrite(&line, &v)),
            (Park::Command { .. }, FilterDecision::Reject(r)) => self.refuse(&r, false),
            (Park::Command { .. }, FilterDecision::Disconnect(r)) => self.refuse(&r, true),
            (Park::Data(m) | Park::Commit(m), FilterDecision::Reject(r)) => self.refuse_message(m, &r, false),
            (Park::Data(m) | Park::Commit(m), FilterDecision::Disconnect(r)) => self.refuse_message(m, &r, true),
            (Park::Commit(m), _) => self.message_ready(m),
            (Park::Data(m), _) => f.park = Park::Data(m),
            (Park::Drain, FilterDecision::Disconnect(r)) => self.refuse(&r, true),
            // The chain refused a message the session had refused already: it is done.
            (Park::Drain, FilterDecision::Reject(_)) => {}
            (Park::Drain, _) => f.park = Park::Drain,
            (Park::None, FilterDecision::Disconnect(r)) => self.refuse(&r, true),
            (Park::None, FilterDecision::Reject(r)) => {
                // The streaming message was refused (too big): its final dot gets the reply.
                if let Some(s) = f.stream.as_mut() {
                    s.refused = Some(r);
                }
            }
            (Park::None, _) => {}
        }
    }

    /// Data-line filtering is done: the message is what the last filter wrote.
    fn filtered(&mut self, body: Vec<u8>) {
        let Some(f) = self.filter.as_mut() else { return };
        let Park::Data(mut m) = std::mem::replace(&mut f.park, Park::None) else { return };
        self.session.buffers().give(std::mem::replace(&mut m.body, body));
        m.size = m.body.len() as u64;
        if f.chain.filters_phase(Phase::Commit) {
            f.engine.begin(Now::read(), Phase::Commit, "");
            f.park = Park::Commit(m);
        } else {
            self.message_ready(m);
        }
    }

    fn message_ready(&mut self, mut m: Message<Vec<Target>>) {
        let Some(f) = self.filter.as_mut() else { return };
        if f.junk {
            let mut body = Vec::with_capacity(m.body.len() + 13);
            body.extend_from_slice(b"X-Spam: Yes\n");
            body.extend_from_slice(&m.body);
            self.session.buffers().give(std::mem::replace(&mut m.body, body));
            m.size = m.body.len() as u64;
        }
        f.size = m.body.len();
        f.ready = Some(m);
    }

    /// A filter's refusal of a command (or of the session).
    fn refuse(&mut self, reply: &str, close: bool) {
        self.session.push_reply(&reply_text(reply));
        if close {
            self.close("filter");
        }
    }

    fn refuse_message(&mut self, m: Message<Vec<Target>>, reply: &str, close: bool) {
        log::info!("{} smtp refused step=data msgid={} reply=\"{}\"", self.id, m.id, reply_text(reply).escape_debug());
        self.session.refuse_commit(m.id, &reply_text(reply));
        self.session.buffers().give(m.body);
        self.filter_committed(false);
        if close {
            self.close("filter");
        }
    }
}
