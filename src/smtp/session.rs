//! The server side of one SMTP session as a state machine: `handle_*` for input, `poll_*`
//! and `output` for what comes out (quinn-proto's shape). States say what they wait for.
//!
//! The final 250 after DATA is sent only by `handle_commit`: the session parks in
//! `AwaitCommit` and reads nothing until the server reports that the message is on disk
//! (OpenSMTPD's wait_queue_commit, as a state). AUTH waits the same way: the session never
//! checks a password; it hands the credentials out (`poll_auth`) and parks in `AwaitAuth`
//! until `handle_auth` (session/auth.rs).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::address;
use super::command::{self, Command, CommandError};
use super::data::{DataDecoder, DataError, DataStatus};
use super::reply::{self, Reply};
use crate::buffers::Buffers;
use crate::envelope::MsgId;

mod auth;
mod rdns;
use auth::AuthStep;
pub use auth::{AuthConfig, AuthId, AuthPolicy, AuthRequest, AuthResult};

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Unsent output beyond which the session stops reading (a client that pipelines without
/// reading its replies must not grow our buffer).
const MAX_OUTPUT: usize = 64 * 1024;

/// Limits and offers of one listener; shared by its sessions.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_rcpt: usize,
    pub max_errors: u32,
    pub idle_timeout: Duration,
    pub tls: TlsPolicy,
    /// TLS from the first byte (smtps): STARTTLS is never offered.
    pub tls_active: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    Unavailable,
    /// STARTTLS advertised.
    Offer,
    /// STARTTLS advertised, and MAIL refused before it (530 5.7.0).
    Require,
}

/// The server's decisions, asked by the session at MAIL and RCPT.
pub trait Policy {
    /// What the server keeps per accepted recipient (e.g. its delivery targets).
    type Rcpt: Send + 'static;
    fn new_msgid(&mut self) -> MsgId;
    fn check_mail(&mut self, ctx: &TxContext<'_>) -> Result<(), Reply>;
    fn check_rcpt(&mut self, ctx: &TxContext<'_>, rcpt: &str) -> Result<Self::Rcpt, Reply>;
    /// A message of this session was committed (its 250 is going out).
    fn committed(&mut self) {}
}

/// What the policy may look at.
#[derive(Clone, Copy, Debug)]
pub struct TxContext<'a> {
    pub helo: &'a str,
    pub esmtp: bool,
    pub tls: bool,
    pub auth: Option<&'a str>,
    pub mail_from: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub bits: u16,
}

/// A complete message, handed to the server; the session then waits for `handle_commit`.
#[derive(Debug)]
pub struct Message<R> {
    pub id: MsgId,
    pub helo: String,
    pub esmtp: bool,
    pub mail_from: String,
    pub rcpts: Vec<(String, R)>,
    /// Dot-unstuffed, LF line endings (the stored form).
    pub body: Vec<u8>,
    pub size: u64,
    pub body_8bit: bool,
    pub smtputf8: bool,
    pub tls: Option<TlsInfo>,
    pub auth: Option<String>,
}

#[derive(Debug)]
pub enum Event<R> {
    /// 220 to STARTTLS is queued: start the handshake once it is sent, and drop any input
    /// that followed the command (RFC 3207 §4.2).
    StartTls,
    Message(Message<R>),
    /// Close once the output is sent.
    Close(CloseReason),
    /// A sender, recipient or message was refused with this reply: for the log.
    Refused(Refusal),
}

/// What the session refused, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub step: TxStep,
    /// The address MAIL or RCPT named, once parsed; for `TxStep::Auth`, the user name.
    pub address: Option<String>,
    pub reply: Reply,
}

/// The transaction step a refusal happened at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStep {
    Mail,
    Rcpt,
    Data,
    /// A login refused (535, 454) or the session closed for too many (421).
    Auth,
}

impl TxStep {
    pub fn as_str(self) -> &'static str {
        match self {
            TxStep::Mail => "mail",
            TxStep::Rcpt => "rcpt",
            TxStep::Data => "data",
            TxStep::Auth => "auth",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Quit,
    Timeout,
    TooManyErrors,
    Eof,
    /// A bare CR or LF in DATA: the dialogue cannot be trusted to be in sync any more.
    Protocol,
    /// `AuthConfig::max_failures` logins failed.
    TooManyAuthFailures,
}

/// The verdict of the delivery layer on a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    TempFail(String),
    PermFail(String),
}

struct Tx<R> {
    id: MsgId,
    mail_from: String,
    rcpts: Vec<(String, R)>,
    eight_bit: bool,
    smtputf8: bool,
}

enum State<R> {
    /// The client's reverse DNS is being looked up; the greeting waits for `handle_rdns`.
    AwaitRdns,
    /// Greeting sent; waiting for HELO/EHLO.
    Greeting,
    Ready,
    /// MAIL accepted; RCPTs accumulate.
    Mail(Tx<R>),
    Data(Tx<R>, DataDecoder),
    AwaitCommit(MsgId),
    /// A 334 challenge sent; the next line is the client's response, not a command.
    Auth(AuthStep),
    /// Credentials handed out (`poll_auth`); input paused until `handle_auth`.
    AwaitAuth(AuthId, String),
    /// 220 to STARTTLS queued; waiting for `handle_tls`.
    StartTls,
    Closing,
}

pub struct Session<P: Policy> {
    cfg: Arc<SessionConfig>,
    policy: P,
    state: State<P::Rcpt>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    /// Who the client is: set by a successful AUTH, or by the server (`set_auth`).
    auth: Option<String>,
    auth_cfg: AuthConfig,
    auth_failures: u32,
    next_auth_id: u32,
    auth_request: Option<AuthRequest>,
    out: Vec<u8>,
    events: VecDeque<Event<P::Rcpt>>,
    errors: u32,
    deadline: Instant,
    /// Inside a command line longer than the limit: drop until its LF, then answer.
    discarding: bool,
    body: Vec<u8>,
    /// Where DATA takes its body buffer and a dropped body goes back (`set_buffers`).
    buffers: Buffers,
}

impl<P: Policy> Session<P> {
    pub fn new(cfg: Arc<SessionConfig>, policy: P, now: Instant) -> Self {
        let mut s = Session {
            deadline: now + cfg.idle_timeout,
            cfg,
            policy,
            state: State::Greeting,
            helo: None,
            esmtp: false,
            tls: None,
            auth: None,
            auth_cfg: AuthConfig::OFF,
            auth_failures: 0,
            next_auth_id: 0,
            auth_request: None,
            out: Vec::new(),
            events: VecDeque::new(),
            errors: 0,
            discarding: false,
            body: Vec::new(),
            buffers: Buffers::new(),
        };
        reply::greeting(&mut s.out, &s.cfg.hostname);
        s
    }

    /// The free list of body buffers this session shares with its loop and the link that
    /// gives bodies back once written (by default, one of its own).
    pub fn set_buffers(&mut self, buffers: Buffers) {
        self.buffers = buffers;
    }

    /// The session's free list of body buffers.
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// This host's name as the session gives it (greeting, Received).
    pub fn hostname(&self) -> &str {
        &self.cfg.hostname
    }

    pub fn policy(&self) -> &P {
        &self.policy
    }

    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The user this session is authenticated as (the local submitter, from the socket's
    /// credentials).
    pub fn set_auth(&mut self, user: String) {
        self.auth = Some(user);
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    pub fn poll_event(&mut self) -> Option<Event<P::Rcpt>> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitCommit(_) | State::AwaitAuth(..) | State::Closing => None,
            _ => Some(self.deadline),
        }
    }

    pub fn wants_read(&self) -> bool {
        !matches!(
            self.state,
            State::AwaitCommit(_) | State::AwaitAuth(..) | State::StartTls | State::Closing | State::AwaitRdns
        ) && self.out.len() < MAX_OUTPUT
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing)
    }

    /// Reading a message's content after DATA's 354 (harnesses check that stream against
    /// the reference decoder).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(..))
    }

    /// An AUTH exchange waits for the client's next line (a credential, never a command).
    pub fn in_auth(&self) -> bool {
        matches!(self.state, State::Auth(_))
    }

    /// Consumes as much of `input` as the current state allows; returns the count.
    pub fn handle_input(&mut self, input: &[u8], now: Instant) -> usize {
        let mut pos = 0;
        while pos < input.len() && self.wants_read() {
            let rest = &input[pos..];
            if let State::Data(_, decoder) = &mut self.state {
                let (n, status) = decoder.feed(rest, &mut self.body);
                pos += n;
                if let DataStatus::End(result) = status {
                    self.end_of_data(result);
                }
                continue;
            }
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                if rest.len() >= MAX_COMMAND_LINE || self.discarding {
                    self.discarding = true;
                    pos = input.len();
                }
                break;
            };
            pos += lf + 1;
            if std::mem::take(&mut self.discarding) || lf + 1 > MAX_COMMAND_LINE {
                self.line_too_long();
                continue;
            }
            let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
            self.command(line);
        }
        if pos > 0 {
            self.deadline = now + self.cfg.idle_timeout;
        }
        pos
    }

    /// The delivery layer's verdict on the message this session waits for.
    pub fn handle_commit(&mut self, id: MsgId, outcome: Outcome) {
        if !matches!(self.state, State::AwaitCommit(waiting) if waiting == id) {
            return;
        }
        self.state = State::Ready;
        match outcome {
            Outcome::Ok => {
                self.policy.committed();
                reply::accepted(&mut self.out, id);
            }
            Outcome::TempFail(_) => self.reply(&reply::TEMPFAIL),
            Outcome::PermFail(_) => self.reply(&reply::PERMFAIL),
        }
    }

    /// A reply decided outside the session (a filter's reject or disconnect), written as
    /// given; CRLF is added.
    pub fn push_reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// The message this session waits for will not be committed: a filter refused it with
    /// `reply`. The transaction is over, as after a delivery failure.
    pub fn refuse_commit(&mut self, id: MsgId, reply: &str) {
        if matches!(self.state, State::AwaitCommit(waiting) if waiting == id) {
            self.state = State::Ready;
            self.push_reply(reply);
        }
    }

    /// TLS is up: forget everything learnt in plaintext (RFC 3207 §4.2).
    pub fn handle_tls(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.esmtp = false;
        // An smtps handshake can end while the greeting still waits for the client's name:
        // that wait goes on, and `handle_rdns` greets.
        if !matches!(self.state, State::Closing | State::AwaitRdns) {
            self.state = State::Greeting;
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.reply(&reply::TIMEOUT);
            self.close(CloseReason::Timeout);
        }
    }

    /// The client went away: any open transaction is dropped, nothing is delivered.
    pub fn handle_eof(&mut self) {
        if !matches!(self.state, State::AwaitCommit(_)) {
            self.buffers.give(std::mem::take(&mut self.body));
            self.close(CloseReason::Eof);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if !matches!(self.state, State::Closing) {
            self.state = State::Closing;
            self.events.push_back(Event::Close(reason));
        }
    }

    fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }

    /// A client mistake: replied, counted, and too many end the session.
    fn error(&mut self, r: Reply) {
        self.reply(&r);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.reply(&reply::TOO_MANY_ERRORS);
            self.close(CloseReason::TooManyErrors);
        }
    }

    /// An over-long line also ends an AUTH exchange: it cannot be a valid response.
    fn line_too_long(&mut self) {
        if matches!(self.state, State::Auth(_)) {
            self.state = State::Ready;
        }
        self.error(reply::LINE_TOO_LONG);
    }

    fn command(&mut self, line: &[u8]) {
        if matches!(self.state, State::Auth(_)) {
            let State::Auth(step) = std::mem::replace(&mut self.state, State::Ready) else { return };
            return self.auth_response(step, line);
        }
        let cmd = match command::parse(line) {
            Ok(cmd) => cmd,
            Err(e) => return self.error(e.reply()),
        };
        match cmd {
            Command::Helo(name) => self.helo(name, false),
            Command::Ehlo(name) => self.helo(name, true),
            Command::Mail { path, params } => self.mail(path, params),
            Command::Rcpt { path, params } => self.rcpt(path, params),
            Command::Data => self.data(),
            Command::Rset => {
                if !matches!(self.state, State::Greeting) {
                    self.state = State::Ready;
                }
                self.reply(&reply::RESET);
            }
            Command::Noop => self.reply(&reply::OK),
            Command::Quit => {
                self.reply(&reply::BYE);
                self.close(CloseReason::Quit);
            }
            Command::Vrfy | Command::Expn => self.reply(&reply::VRFY),
            Command::Help => reply::help(&mut self.out),
            Command::StartTls => self.starttls(),
            Command::Auth(arg) => self.auth(arg),
            Command::Bdat => self.error(reply::NOT_IMPLEMENTED),
        }
    }

    fn helo(&mut self, name: &str, esmtp: bool) {
        self.state = State::Ready;
        self.helo = Some(name.to_owned());
        self.esmtp = esmtp;
        let offer_tls = self.cfg.tls != TlsPolicy::Unavailable && self.tls.is_none() && !self.cfg.tls_active;
        let ext = esmtp.then_some(reply::EhloOffer {
            starttls: offer_tls,
            auth: self.offers_auth(),
            size: self.cfg.max_message_size,
        });
        reply::hello(&mut self.out, &self.cfg.hostname, name, ext);
    }

    fn mail(&mut self, path: &[u8], params: &[u8]) {
        match self.state {
            State::Greeting => return self.error(reply::NEED_HELO),
            State::Mail(_) => return self.error(reply::NESTED_MAIL),
            _ => {}
        }
        if self.cfg.tls == TlsPolicy::Require && self.tls.is_none() {
            return self.refuse(TxStep::Mail, None, reply::TLS_REQUIRED);
        }
        if self.auth_cfg.policy == AuthPolicy::Required && self.auth.is_none() {
            return self.refuse(TxStep::Mail, None, reply::AUTH_REQUIRED);
        }
        let params = match command::mail_params(params) {
            Ok(p) => p,
            Err(e) => return self.error(e.reply()),
        };
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return self.refuse(TxStep::Mail, None, reply::TOO_BIG);
        }
        let mail_from = match address::parse_mailbox(path, params.smtputf8) {
            Ok(a) => a,
            Err(e) => return self.error(CommandError::Sender(e).reply()),
        };
        let ctx = TxContext {
            helo: self.helo.as_deref().unwrap_or(""),
            esmtp: self.esmtp,
            tls: self.tls.is_some(),
            auth: self.auth.as_deref(),
            mail_from: &mail_from,
        };
        let checked = self.policy.check_mail(&ctx);
        if let Err(r) = checked {
            return self.refuse(TxStep::Mail, Some(mail_from), r);
        }
        let id = self.policy.new_msgid();
        self.state = State::Mail(Tx {
            id,
            mail_from,
            rcpts: Vec::new(),
            eight_bit: params.eight_bit,
            smtputf8: params.smtputf8,
        });
        self.reply(&reply::MAIL_OK);
    }

    fn rcpt(&mut self, path: &[u8], params: &[u8]) {
        let State::Mail(tx) = &mut self.state else {
            return self.error(reply::NEED_MAIL);
        };
        if tx.rcpts.len() >= self.cfg.max_rcpt {
            return self.refuse(TxStep::Rcpt, None, reply::TOO_MANY_RCPTS);
        }
        if let Err(e) = command::rcpt_params(params) {
            return self.error(e.reply());
        }
        // RFC 5321 §4.1.1.3: <Postmaster> without a domain must be accepted.
        let rcpt = if path.eq_ignore_ascii_case(b"postmaster") {
            Ok("postmaster".to_owned())
        } else {
            address::parse_mailbox(path, tx.smtputf8)
        };
        let rcpt = match rcpt {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => return self.error(reply::BAD_RCPT),
            Err(e) => return self.error(CommandError::Recipient(e).reply()),
        };
        let ctx = TxContext {
            helo: self.helo.as_deref().unwrap_or(""),
            esmtp: self.esmtp,
            tls: self.tls.is_some(),
            auth: self.auth.as_deref(),
            mail_from: &tx.mail_from,
        };
        match self.policy.check_rcpt(&ctx, &rcpt) {
            Ok(accepted) => {
                tx.rcpts.push((rcpt, accepted));
                self.reply(&reply::RCPT_OK);
            }
            Err(r) => self.refuse(TxStep::Rcpt, Some(rcpt), r),
        }
    }

    /// Replies with a refusal and reports it for the log.
    fn refuse(&mut self, step: TxStep, address: Option<String>, reply: Reply) {
        self.reply(&reply);
        self.events.push_back(Event::Refused(Refusal { step, address, reply }));
    }

    fn data(&mut self) {
        match std::mem::replace(&mut self.state, State::Closing) {
            State::Mail(tx) if !tx.rcpts.is_empty() => {
                self.state = State::Data(tx, DataDecoder::new(self.cfg.max_message_size));
                self.body = self.buffers.take();
                self.reply(&reply::DATA_GO);
            }
            State::Mail(tx) => {
                self.state = State::Mail(tx);
                self.error(reply::NEED_RCPT);
            }
            other => {
                self.state = other;
                let r = if matches!(self.state, State::Greeting) { reply::NEED_HELO } else { reply::NEED_MAIL };
                self.error(r);
            }
        }
    }

    fn end_of_data(&mut self, result: Result<(), DataError>) {
        let State::Data(tx, decoder) = std::mem::replace(&mut self.state, State::Ready) else {
            return;
        };
        let body = std::mem::take(&mut self.body);
        match result {
            Ok(()) => {
                self.state = State::AwaitCommit(tx.id);
                self.events.push_back(Event::Message(Message {
                    id: tx.id,
                    helo: self.helo.clone().unwrap_or_default(),
                    esmtp: self.esmtp,
                    mail_from: tx.mail_from,
                    rcpts: tx.rcpts,
                    size: body.len() as u64,
                    body,
                    body_8bit: tx.eight_bit || decoder.saw_eight_bit(),
                    smtputf8: tx.smtputf8,
                    tls: self.tls.clone(),
                    auth: self.auth.clone(),
                }));
            }
            Err(DataError::TooBig) => self.refuse(TxStep::Data, None, reply::TOO_BIG),
            Err(DataError::BareEol) => {
                self.refuse(TxStep::Data, None, reply::BARE_EOL);
                self.close(CloseReason::Protocol);
            }
        }
    }

    fn starttls(&mut self) {
        if self.tls.is_some() || self.cfg.tls_active {
            return self.error(reply::ALREADY_TLS);
        }
        if self.cfg.tls == TlsPolicy::Unavailable {
            return self.error(reply::NO_TLS);
        }
        if matches!(self.state, State::Mail(_)) {
            return self.error(reply::NESTED_MAIL);
        }
        self.reply(&reply::STARTTLS_GO);
        self.state = State::StartTls;
        self.events.push_back(Event::StartTls);
    }
}

/// A policy that accepts every sender and recipient: for tests and fuzz targets.
#[derive(Debug, Default)]
pub struct AcceptAll {
    next: u32,
}

impl Policy for AcceptAll {
    type Rcpt = ();

    fn new_msgid(&mut self) -> MsgId {
        self.next = self.next.wrapping_add(1);
        MsgId(self.next)
    }

    fn check_mail(&mut self, _ctx: &TxContext<'_>) -> Result<(), Reply> {
        Ok(())
    }

    fn check_rcpt(&mut self, _ctx: &TxContext<'_>, rcpt: &str) -> Result<(), Reply> {
        if rcpt.starts_with("refuse") {
            Err(reply::UNKNOWN_RCPT)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
