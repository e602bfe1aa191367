//! The filter engine of one SMTP session, sans-IO: the session tells it what happened
//! (`report`) and what it is about to do (`begin` a phase, stream the message with
//! `data_line`/`data_end`); the engine runs the chain in order (builtins at once, proc
//! filters by queuing a request in `poll_send`), takes the processes' answers
//! (`handle_output`, routed here by [`super::Sessions`]) and yields one [`FilterDecision`] per
//! phase, and the filtered message after data-line filtering, through `poll_event`.
//!
//! Never touches a pipe or the clock (time comes in as [`Now`]); never panics on what a
//! filter writes; the filtered message is bounded by `Limits::max_message`. A filter that
//! misbehaves, dies or does not answer in time fails the session closed: `421`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::builtin::{BuiltinAction, Facts};
use super::chain::{Chain, ChainFilterKind};
use super::protocol::{
    valid_refusal, write_dataline_head, write_report, write_request, Endpoint, Fcrdns, Id, Phase, Report, ReporterKind,
    Response, ResponseKind, Timestamp, MAX_LINE,
};
use crate::smtp::reply;

/// The time, both ways the engine needs it: monotonic for deadlines, wall-clock for lines.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Instant,
    pub wall: Timestamp,
}

impl Now {
    /// Reads both clocks; for the I/O layer and tests (the engine itself never calls it).
    pub fn read() -> Now {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Now { mono: Instant::now(), wall: Timestamp(wall) }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a filter may take to answer a request (or, while streaming data, between
    /// two lines of output).
    pub timeout: Duration,
    /// The largest filtered message, in octets of lines plus one newline each.
    pub max_message: usize,
}

/// The connection a session starts with.
#[derive(Clone, Debug)]
pub struct FilterLink {
    pub rdns: Option<String>,
    pub fcrdns: bool,
    pub src: Endpoint,
    pub dest: Endpoint,
}

/// The outcome of a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterDecision {
    Proceed,
    /// Proceed, and the session or transaction is junk: the message gets `X-Spam: Yes`.
    Junk,
    /// Proceed with this parameter instead of the client's.
    Rewrite(String),
    /// Refuse the command with this reply (4xx or 5xx); the session goes on.
    Reject(String),
    /// Send this reply and close the session.
    Disconnect(String),
}

/// What the engine has for the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterEvent {
    Decided(Phase, FilterDecision),
    /// Data-line filtering is done: the message as the last filter wrote it, its bytes as
    /// they came, dot-unstuffed, each line ended by LF (the stored form).
    Message(Vec<u8>),
    /// A filter's `report` (builtin or proc), for the log.
    Reported {
        filter: String,
        message: String,
    },
    /// A builtin condition needs a table process's answer: the chain waits for
    /// `handle_table`.
    AskTable(super::builtin::TableQuestion),
}

/// Lines for a filter process, newlines included: consecutive lines for the same
/// process come as one, so a chunk of the message costs one hand-off, not one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcLine {
    pub proc: Arc<str>,
    pub line: Vec<u8>,
}

/// Why a filter's answer was refused. The session has failed (421) when this is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterSessionError {
    /// The answer names a token the session is not waiting on.
    UnexpectedToken(Id),
    /// A filter-result while the message streams, or a filter-dataline outside of it.
    WrongPhase,
    /// `junk` at the commit phase, too late to mark the message (OpenSMTPD: fatal).
    JunkAfterData,
    /// The filtered message would exceed `Limits::max_message`.
    TooBig,
}

/// The longest message line a data-line filter is given: its answer, the same line behind
/// `filter-dataline|SESSION|TOKEN|` and a little more a filter may add, must stay within
/// what mxd reads back (`MAX_LINE`). OpenSMTPD refuses such lines too (SMTP_LINE_MAX).
pub const MAX_DATA_LINE: usize = MAX_LINE - 1024;

impl fmt::Display for FilterSessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterSessionError::UnexpectedToken(t) => write!(f, "unexpected token {t}"),
            FilterSessionError::WrongPhase => f.write_str("answer out of phase"),
            FilterSessionError::JunkAfterData => f.write_str("junk after DATA"),
            FilterSessionError::TooBig => f.write_str("filtered message too big"),
        }
    }
}

impl std::error::Error for FilterSessionError {}

enum FilterState {
    Idle,
    /// Waiting for the answer of filter `by_phase[phase][pos]`.
    Phase {
        phase: Phase,
        param: String,
        pos: usize,
        deadline: Instant,
    },
    /// The message streams through the data-line filters; stage `i` is
    /// `by_phase[DataLine][i]`, and `closed[i]` says it has written its final dot.
    Data {
        closed: Vec<bool>,
        out: Vec<u8>,
        deadline: Option<Instant>,
    },
    /// Waiting for a table process's answer to a builtin condition of filter
    /// `by_phase[phase][pos]` (`engine_tables.rs`).
    Table {
        phase: Phase,
        param: String,
        pos: usize,
        question: super::builtin::TableQuestion,
        deadline: Instant,
    },
    Failed,
}

pub struct SessionFilter {
    chain: Arc<Chain>,
    id: Id,
    /// Tokens are `token_base + filter index + 1`, so they differ between sessions.
    token_base: u64,
    limits: Limits,
    facts: Facts,
    state: FilterState,
    /// A process of the chain has died: every later phase fails at once.
    broken: bool,
    /// The client's input has ended (`data_end`); stages close as their input does.
    input_closed: bool,
    /// The streaming message is refused once the filters are done with it (a line too long
    /// for them was left out).
    data_refusal: Option<&'static str>,
    sends: VecDeque<ProcLine>,
    events: VecDeque<FilterEvent>,
    now: Now,
    /// The head of the last data-line request, by time and token: the lines of a chunk
    /// share it, so it is formatted once per chunk, not once per line.
    line_head: (Timestamp, Id, Vec<u8>),
    /// Table processes' answers in this phase: `None` when the lookup failed.
    answered: Vec<(super::builtin::TableQuestion, Option<bool>)>,
}

impl SessionFilter {
    /// Starts filtering a session: sends `link-connect` to the processes that want it.
    pub fn new(
        chain: Arc<Chain>,
        id: Id,
        token_base: u64,
        limits: Limits,
        link: &FilterLink,
        now: Now,
    ) -> SessionFilter {
        let facts =
            Facts { rdns: link.rdns.clone(), fcrdns: link.fcrdns, src: link.src.addr_text(), ..Facts::default() };
        let mut s = SessionFilter {
            chain,
            id,
            token_base,
            limits,
            facts,
            state: FilterState::Idle,
            broken: false,
            input_closed: false,
            data_refusal: None,
            sends: VecDeque::new(),
            events: VecDeque::new(),
            now,
            line_head: (Timestamp::default(), Id(0), Vec::new()),
            answered: Vec::new(),
        };
        let rdns = link.rdns.as_deref().unwrap_or("");
        let fcrdns = if link.fcrdns { Fcrdns::Pass } else { Fcrdns::Fail };
        s.report(now, &Report::LinkConnect { rdns, fcrdns, src: &link.src, dest: &link.dest });
        s
    }

    pub fn id(&self) -> Id {
        self.id
    }

    /// Sends a report event to the chain's processes that registered it, and keeps what
    /// builtin conditions need (HELO name, authenticated user).
    pub fn report(&mut self, now: Now, report: &Report<'_>) {
        match report {
            Report::LinkIdentify { identity, .. } => self.facts.helo = Some((*identity).to_string()),
            Report::LinkAuth { result: super::protocol::LinkAuthResult::Pass, username } => {
                self.facts.username = Some((*username).to_string())
            }
            _ => {}
        }
        let kind = report.kind();
        let mut line = String::new();
        let chain = Arc::clone(&self.chain);
        for (name, reg) in &chain.procs {
            if reg.reports(kind) {
                if line.is_empty() {
                    write_report(&mut line, now.wall, self.id, report);
                }
                self.send(name, line.as_bytes());
            }
        }
    }

    /// Queues `line` for `proc`.
    fn send(&mut self, proc: &Arc<str>, line: &[u8]) {
        if let Some(out) = batch(&mut self.sends, proc) {
            out.extend_from_slice(line);
        }
    }

    /// Whether a process of the chain listens to `kind` (spares building lines nobody reads).
    pub fn reports(&self, kind: super::protocol::EventKind) -> bool {
        self.chain.procs.iter().any(|(_, reg)| reg.reports(kind))
    }

    /// Runs the chain for a command phase. `param` is what OpenSMTPD passes: the HELO/EHLO
    /// name, the address of MAIL FROM or RCPT TO without angle brackets, empty otherwise
    /// (for connect the engine builds `RDNS|SRC` itself). The decision comes as
    /// `FilterEvent::Decided`, at once when no process takes part.
    pub fn begin(&mut self, now: Now, phase: Phase, param: &str) {
        self.now = now;
        if phase == Phase::DataLine || !matches!(self.state, FilterState::Idle) {
            return self.fail(now, phase);
        }
        if self.broken {
            return self.fail(now, phase);
        }
        self.answered.clear();
        match phase {
            Phase::Helo | Phase::Ehlo => self.facts.helo = Some(param.to_string()),
            Phase::MailFrom => self.facts.mail_from = Some(param.to_string()),
            _ => {}
        }
        let param = match phase {
            Phase::Connect => format!("{}|{}", self.facts.rdns.as_deref().unwrap_or(""), self.facts.src),
            _ => param.to_string(),
        };
        self.run(now, phase, param, 0);
    }

    /// Runs filters `pos..` of `phase` until one must be waited for or the chain ends.
    fn run(&mut self, now: Now, phase: Phase, param: String, mut pos: usize) {
        let chain = self.chain.clone();
        let entries = &chain.by_phase[phase as usize];
        while let Some(&i) = entries.get(pos) {
            let filter = &chain.filters[i];
            match &filter.kind {
                ChainFilterKind::Proc(_) => {
                    let proc = chain.proc_of[i].map(|p| chain.procs[p].0.clone());
                    let Some(proc) = proc else { return self.fail(now, phase) };
                    let mut line = String::new();
                    write_request(&mut line, now.wall, phase, self.id, self.token(i), &param);
                    self.send(&proc, line.as_bytes());
                    let deadline = now.mono + self.limits.timeout;
                    self.state = FilterState::Phase { phase, param, pos, deadline };
                    return;
                }
                ChainFilterKind::Builtin(rule) => {
                    let rcpt = (phase == Phase::RcptTo).then_some(param.as_str());
                    let fired = match self.fires(rule, rcpt, &*chain.tables) {
                        tables_wait::Fired::Ask(question) => return self.ask_table(now, phase, param, pos, question),
                        tables_wait::Fired::Failed => {
                            let refusal = tables_wait::TABLE_TEMPFAIL.to_string();
                            return self.decide(now, phase, FilterDecision::Reject(refusal));
                        }
                        tables_wait::Fired::Is(fired) => fired,
                    };
                    if fired {
                        let decision = match &rule.action {
                            BuiltinAction::Bypass => FilterDecision::Proceed,
                            BuiltinAction::Junk => FilterDecision::Junk,
                            BuiltinAction::Reject(r) => FilterDecision::Reject(r.clone()),
                            BuiltinAction::Disconnect(r) => FilterDecision::Disconnect(r.clone()),
                            BuiltinAction::Rewrite(v) => FilterDecision::Rewrite(v.clone()),
                            BuiltinAction::Report(m) => {
                                self.filter_report(now, ReporterKind::Builtin, &filter.name, m);
                                pos += 1;
                                continue;
                            }
                        };
                        return self.decide(now, phase, decision);
                    }
                }
            }
            pos += 1;
        }
        self.decide(now, phase, FilterDecision::Proceed);
    }

    fn token(&self, filter: usize) -> Id {
        Id(self.token_base.wrapping_add(filter as u64 + 1))
    }

    fn filter_report(&mut self, now: Now, kind: ReporterKind, name: &str, message: &str) {
        self.report(now, &Report::FilterReport { kind, name, message });
        self.events.push_back(FilterEvent::Reported { filter: name.to_string(), message: message.to_string() });
    }

    /// Ends a phase: refusals are checked as OpenSMTPD checks them (not a 4xx/5xx reply:
    /// `421 Internal server error`; a 421: the session is disconnected), reported as
    /// `filter-response`, and queued for the session.
    fn decide(&mut self, now: Now, phase: Phase, decision: FilterDecision) {
        let decision = match decision {
            FilterDecision::Reject(r) | FilterDecision::Disconnect(r) if !valid_refusal(&r) => {
                FilterDecision::Disconnect(reply::FILTER_INVALID.into())
            }
            FilterDecision::Reject(r) if r.starts_with("421") => FilterDecision::Disconnect(r),
            d => d,
        };
        let (response, param) = match &decision {
            FilterDecision::Proceed => (ResponseKind::Proceed, None),
            FilterDecision::Junk => (ResponseKind::Junk, None),
            FilterDecision::Rewrite(v) => (ResponseKind::Rewrite, Some(v.as_str())),
            FilterDecision::Reject(r) => (ResponseKind::Reject, Some(r.as_str())),
            FilterDecision::Disconnect(r) => (ResponseKind::Disconnect, Some(r.as_str())),
        };
        self.report(now, &Report::FilterResponse { phase, response, param });
        self.state = FilterState::Idle;
        self.events.push_back(FilterEvent::Decided(phase, decision));
    }

    /// Fails the session closed: the phase under way (or the next one) gets 421.
    fn fail(&mut self, now: Now, phase: Phase) {
        self.state = FilterState::Failed;
        self.broken = true;
        let _ = now;
        self.events.push_back(FilterEvent::Decided(phase, FilterDecision::Disconnect(reply::FILTER_FAIL.into())));
    }

    /// The phase being waited on, if any (for the failure decision).
    fn current_phase(&self) -> Option<Phase> {
        match &self.state {
            FilterState::Phase { phase, .. } | FilterState::Table { phase, .. } => Some(*phase),
            FilterState::Data { .. } => Some(Phase::DataLine),
            FilterState::Idle | FilterState::Failed => None,
        }
    }

    /// Starts streaming the message (after the data phase proceeded). The caller then
    /// gives every line with `data_line` and ends with `data_end`.
    pub fn data_begin(&mut self, now: Now) {
        if !matches!(self.state, FilterState::Idle) || self.broken {
            return self.fail(now, Phase::DataLine);
        }
        let stages = self.chain.by_phase[Phase::DataLine as usize].len();
        self.input_closed = false;
        self.data_refusal = None;
        self.state = FilterState::Data { closed: vec![false; stages], out: Vec::new(), deadline: None };
    }

    /// One line of the message, without its line ending and not dot-stuffed: its bytes as
    /// the client sent them (8-bit text included). A line longer than [`MAX_DATA_LINE`] is
    /// left out, and the message is refused (`FilterDecision::Reject`) instead of given
    /// once the filters are done with the rest.
    pub fn data_line(&mut self, now: Now, line: &[u8]) {
        if !matches!(self.state, FilterState::Data { .. }) || self.input_closed {
            return;
        }
        if line.len() > MAX_DATA_LINE {
            self.data_refusal.get_or_insert(reply::FILTER_LINE_TOO_LONG);
            return;
        }
        self.stage_input(now, 0, &stuff(line));
    }

    /// The end of the message (the client's final dot).
    pub fn data_end(&mut self, now: Now) {
        if !matches!(self.state, FilterState::Data { .. }) || self.input_closed {
            return;
        }
        self.input_closed = true;
        self.stage_input(now, 0, b".");
    }

    /// Gives a dot-stuffed line (or the final ".") to stage `stage`, or to the message
    /// when every stage is past.
    fn stage_input(&mut self, now: Now, stage: usize, line: &[u8]) {
        let chain = Arc::clone(&self.chain);
        let entries = &chain.by_phase[Phase::DataLine as usize];
        if let Some(&i) = entries.get(stage) {
            let Some(p) = chain.proc_of[i] else { return };
            let token = self.token(i);
            let (ts, tok, head) = &mut self.line_head;
            if (*ts, *tok) != (now.wall, token) || head.is_empty() {
                head.clear();
                write_dataline_head(head, now.wall, self.id, token);
                (*ts, *tok) = (now.wall, token);
            }
            if let Some(out) = batch(&mut self.sends, &chain.procs[p].0) {
                out.extend_from_slice(head);
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            if let FilterState::Data { deadline, .. } = &mut self.state {
                *deadline = Some(now.mono + self.limits.timeout);
            }
            return;
        }
        let FilterState::Data { out, .. } = &mut self.state else { return };
        if line == b"." {
            let message = std::mem::take(out);
            self.state = FilterState::Idle;
            let event = match self.data_refusal.take() {
                Some(r) => FilterEvent::Decided(Phase::DataLine, FilterDecision::Reject(r.into())),
                None => FilterEvent::Message(message),
            };
            self.events.push_back(event);
            return;
        }
        let line = unstuff(line);
        if out.len() + line.len() + 1 > self.limits.max_message {
            return self.refuse_data(reply::FILTER_TOO_BIG);
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }

    /// The streaming message is refused with `reply`; the chain's later output for it is
    /// dropped.
    fn refuse_data(&mut self, reply: &str) {
        self.state = FilterState::Failed;
        self.events.push_back(FilterEvent::Decided(Phase::DataLine, FilterDecision::Reject(reply.into())));
    }

    /// An answer from `proc` for this session (routed by session id).
    pub fn handle_output(
        &mut self,
        now: Now,
        proc: &str,
        token: Id,
        answer: FilterAnswer<'_>,
    ) -> Result<(), FilterSessionError> {
        let result = self.handle_answer(now, proc, token, answer);
        if let Err(e) = &result {
            if !matches!(self.state, FilterState::Failed) {
                let phase = self.current_phase().unwrap_or(Phase::DataLine);
                self.fail(now, phase);
            }
            log::debug!("{} filter {proc}: {e}", self.id);
        }
        result
    }

    fn handle_answer(
        &mut self,
        now: Now,
        proc: &str,
        token: Id,
        answer: FilterAnswer<'_>,
    ) -> Result<(), FilterSessionError> {
        match (answer, &self.state) {
            (FilterAnswer::Result(response), FilterState::Phase { phase, pos, .. }) => {
                let (phase, pos) = (*phase, *pos);
                let i = self.chain.by_phase[phase as usize][pos];
                if !self.answers(i, token, proc) {
                    return Err(FilterSessionError::UnexpectedToken(token));
                }
                let FilterState::Phase { param, .. } = std::mem::replace(&mut self.state, FilterState::Idle) else {
                    return Ok(());
                };
                match response {
                    Response::Proceed => self.run(now, phase, param, pos + 1),
                    Response::Report(m) => {
                        let name = self.chain.filters[i].name.clone();
                        self.filter_report(now, ReporterKind::Proc, &name, m);
                        self.run(now, phase, param, pos + 1);
                    }
                    Response::Junk if phase == Phase::Commit => {
                        self.fail(now, phase);
                        return Err(FilterSessionError::JunkAfterData);
                    }
                    Response::Junk => self.decide(now, phase, FilterDecision::Junk),
                    Response::Reject(r) => self.decide(now, phase, FilterDecision::Reject(r.to_string())),
                    Response::Disconnect(r) => self.decide(now, phase, FilterDecision::Disconnect(r.to_string())),
                    Response::Rewrite(v) => self.decide(now, phase, FilterDecision::Rewrite(v.to_string())),
                }
                Ok(())
            }
            (FilterAnswer::DataLine(line), FilterState::Data { closed, .. }) => {
                let entries = &self.chain.by_phase[Phase::DataLine as usize];
                let stage = entries.iter().position(|&i| self.answers(i, token, proc));
                let Some(stage) = stage else { return Err(FilterSessionError::UnexpectedToken(token)) };
                if closed[stage] {
                    return Err(FilterSessionError::WrongPhase);
                }
                if let FilterState::Data { closed, deadline, .. } = &mut self.state {
                    if line == b"." {
                        closed[stage] = true;
                    }
                    // Output resets the clock: a filter that streams is alive.
                    *deadline = Some(now.mono + self.limits.timeout);
                }
                self.stage_input(now, stage + 1, line);
                if matches!(self.state, FilterState::Failed) {
                    return Err(FilterSessionError::TooBig);
                }
                Ok(())
            }
            (FilterAnswer::Report(m), _) => {
                let name = proc.to_string();
                self.filter_report(now, ReporterKind::Proc, &name, m);
                Ok(())
            }
            (_, FilterState::Failed) => Ok(()),
            _ => Err(FilterSessionError::WrongPhase),
        }
    }

    /// Whether an answer with `token` from `proc` is filter `filter`'s.
    fn answers(&self, filter: usize, token: Id, proc: &str) -> bool {
        token == self.token(filter) && self.chain.proc_of[filter].is_some_and(|p| &*self.chain.procs[p].0 == proc)
    }

    /// A process died or was killed for misbehaving. If this session uses it, the phase
    /// under way fails now (421) and so will every later one.
    pub fn handle_proc_failure(&mut self, now: Now, proc: &str) {
        if !self.chain.procs.iter().any(|(n, _)| &**n == proc) {
            return;
        }
        self.broken = true;
        if let Some(phase) = self.current_phase() {
            self.fail(now, phase);
        }
    }

    /// When the filter being waited on is late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            FilterState::Phase { deadline, .. } | FilterState::Table { deadline, .. } => Some(*deadline),
            FilterState::Data { deadline, .. } => *deadline,
            FilterState::Idle | FilterState::Failed => None,
        }
    }

    /// Fails the session if the filter it waits on is past its deadline.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.poll_timeout().is_some_and(|d| now.mono >= d) {
            let phase = self.current_phase().unwrap_or(Phase::DataLine);
            log::warn!("{} filter timeout phase={}", self.id, phase.name());
            self.fail(now, phase);
        }
    }

    /// Whether the session waits for a filter.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, FilterState::Phase { .. } | FilterState::Data { .. } | FilterState::Table { .. })
    }

    pub fn poll_send(&mut self) -> Option<ProcLine> {
        self.sends.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<FilterEvent> {
        self.events.pop_front()
    }
}

/// A filter's answer for one session, as routed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterAnswer<'a> {
    Result(Response<'a>),
    DataLine(&'a [u8]),
    Report(&'a str),
}

impl<'a> FilterAnswer<'a> {
    /// A parsed line of a filter's output as an answer, with the session and token it
    /// names; `None` for a register line (which only the handshake takes).
    pub fn of(output: super::protocol::Output<'a>) -> Option<(Id, Id, FilterAnswer<'a>)> {
        use super::protocol::Output;
        match output {
            Output::Register(_) => None,
            Output::Result { session, token, response } => Some((session, token, FilterAnswer::Result(response))),
            Output::DataLine { session, token, line } => Some((session, token, FilterAnswer::DataLine(line))),
            Output::Report { session, message } => Some((session, Id(0), FilterAnswer::Report(message))),
        }
    }
}

/// Where the next line for `proc` goes: after the lines queued for it if they are last
/// (`None` never happens: the batch was just made).
fn batch<'a>(sends: &'a mut VecDeque<ProcLine>, proc: &Arc<str>) -> Option<&'a mut Vec<u8>> {
    if !matches!(sends.back(), Some(last) if last.proc == *proc) {
        sends.push_back(ProcLine { proc: Arc::clone(proc), line: Vec::new() });
    }
    sends.back_mut().map(|last| &mut last.line)
}

/// SMTP dot-stuffing of one line (RFC 5321 §4.5.2), as data-line requests carry it.
fn stuff(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if line.first() == Some(&b'.') {
        let mut v = Vec::with_capacity(line.len() + 1);
        v.push(b'.');
        v.extend_from_slice(line);
        v.into()
    } else {
        line.into()
    }
}

/// The reverse: one leading dot goes (OpenSMTPD's smtp_tx_dataline does the same).
fn unstuff(line: &[u8]) -> &[u8] {
    line.strip_prefix(b".").unwrap_or(line)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[path = "engine_tables.rs"]
mod tables_wait;
