//! The SMTP and LMTP client, sans-IO: bytes from the server in ([`Client::receive`]), bytes
//! to send and events out ([`Client::output`], [`Client::poll_event`]). The relay, sendmail's
//! submission and mxd-load all drive this one state machine, each over its own I/O.
//!
//! It covers the greeting, EHLO (HELO when EHLO is refused; LHLO for LMTP, RFC 2033) and the
//! extensions it lists, STARTTLS (the driver runs the handshake when told, RFC 3207), AUTH
//! PLAIN or LOGIN (RFC 4954, only once TLS is on), transactions with PIPELINING when the
//! server offers it (RFC 2920), dot-stuffing (RFC 5321 §4.5.2), and LMTP's reply per
//! recipient. Server input is untrusted: replies are bounded and never panic the parser.
//!
//! Every command sent puts what its reply answers on a queue, so replies to pipelined
//! commands are matched in order whatever was sent together.

use std::collections::VecDeque;
use std::fmt;

use base64::Engine;

/// RFC 5321 §4.5.3.1.5 says 512 octets; servers exceed it in EHLO lines and texts.
const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 100;

/// One reply: its code and the text of each line (after the code and separator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl ServerReply {
    /// The last line's text, which carries the enhanced code and the reason.
    pub fn text(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// The server sent something that is not SMTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    LineTooLong,
    TooManyLines,
    /// A line that does not start with a three-digit code (the line, cut short).
    BadLine(String),
    /// A multi-line reply whose lines carry different codes.
    MixedCodes,
    /// A reply that answers no command.
    Unsolicited(ServerReply),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::LineTooLong => write!(f, "reply line longer than {MAX_LINE} octets"),
            ProtocolError::TooManyLines => write!(f, "reply of more than {MAX_LINES} lines"),
            ProtocolError::BadLine(l) => write!(f, "bad reply line {l:?}"),
            ProtocolError::MixedCodes => write!(f, "reply lines with different codes"),
            ProtocolError::Unsolicited(r) => write!(f, "reply to no command: {r}"),
        }
    }
}

/// Incremental reply parser: push what the socket gave, take whole replies.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    lines: Vec<String>,
    code: Option<u16>,
}

impl ReplyParser {
    /// Adds received bytes; past [`MAX_LINE`] without a line end the server is broken.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.buf.extend_from_slice(bytes);
        match memchr::memrchr(b'\n', &self.buf) {
            None if self.buf.len() > MAX_LINE => Err(ProtocolError::LineTooLong),
            Some(i) if self.buf.len() - i - 1 > MAX_LINE => Err(ProtocolError::LineTooLong),
            _ => Ok(()),
        }
    }

    /// The next complete reply, if the bytes so far hold one.
    pub fn next_reply(&mut self) -> Result<Option<ServerReply>, ProtocolError> {
        let mut start = 0;
        let result = loop {
            let Some(end) = memchr::memchr(b'\n', &self.buf[start..]).map(|i| start + i) else { break Ok(None) };
            let line = &self.buf[start..end];
            start = end + 1;
            if line.len() > MAX_LINE {
                break Err(ProtocolError::LineTooLong);
            }
            let line = String::from_utf8_lossy(line);
            let line = line.trim_end_matches('\r');
            let code = line.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit())).and_then(|c| c.parse().ok());
            let Some(code) = code.filter(|c| (200..600).contains(c)) else {
                break Err(ProtocolError::BadLine(line.chars().take(80).collect()));
            };
            let more = match line.as_bytes().get(3) {
                Some(b'-') => true,
                None | Some(b' ') => false,
                Some(_) => break Err(ProtocolError::BadLine(line.chars().take(80).collect())),
            };
            if *self.code.get_or_insert(code) != code {
                break Err(ProtocolError::MixedCodes);
            }
            self.lines.push(line.get(4..).unwrap_or("").to_owned());
            if !more {
                self.code = None;
                break Ok(Some(ServerReply { code, lines: std::mem::take(&mut self.lines) }));
            }
            if self.lines.len() >= MAX_LINES {
                break Err(ProtocolError::TooManyLines);
            }
        };
        self.buf.drain(..start);
        result
    }

    /// Forgets everything buffered: after STARTTLS, what came in plaintext must not count.
    pub fn clear(&mut self) {
        *self = ReplyParser::default();
    }
}

/// What the server's EHLO (or LHLO) reply offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    /// AUTH mechanisms, upper case.
    pub auth: Vec<String>,
    pub size: Option<u64>,
}

impl Extensions {
    pub fn parse(reply: &ServerReply) -> Extensions {
        let mut ext = Extensions::default();
        // The first line is the greeting part of the reply.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "SIZE" => ext.size = words.next().and_then(|n| n.parse().ok()),
                k if k == "AUTH" || k.starts_with("AUTH=") => {
                    let first = k.strip_prefix("AUTH=").filter(|m| !m.is_empty()).map(str::to_owned);
                    ext.auth.extend(first.into_iter().chain(words.map(str::to_ascii_uppercase)));
                }
                _ => {}
            }
        }
        ext
    }
}

/// How the session wants TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsWant {
    /// Plaintext only (`smtp+notls://`).
    Never,
    /// STARTTLS when offered (`smtp://`).
    Opportunistic,
    /// STARTTLS or fail (`smtp+tls://`).
    Required,
    /// TLS from the first byte (`smtps://`): the driver starts it before any byte is read.
    Implicit,
}

/// A session's settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub helo: String,
    /// LHLO, and a reply per accepted recipient after the data.
    pub lmtp: bool,
    pub tls: TlsWant,
    /// (user, password) for AUTH; never sent over plaintext.
    pub auth: Option<(String, String)>,
    /// How much to send before waiting for replies, when the server offers PIPELINING.
    pub pipelining: Pipelining,
    /// Only send the data when every recipient was accepted (sendmail: a refused recipient
    /// refuses the submission); otherwise send it to those accepted.
    pub all_or_nothing: bool,
    /// Keep a transcript of the dialogue (`sendmail -v`): see [`Client::take_transcript`].
    pub transcript: bool,
}

/// What goes out in one write when the server offers PIPELINING (RFC 2920).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipelining {
    /// One command, one reply (as OpenSMTPD's enqueue talks to its own daemon).
    Never,
    /// MAIL and every RCPT together; DATA once their replies are in.
    Envelope,
    /// MAIL, every RCPT and DATA together (DATA may end a group, §3.1).
    WithData,
}

/// What the server said about one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptResult {
    Ok,
    /// A 4xx (or no verdict): try again later.
    Temp(ServerRefusal),
    /// A 5xx: bounce.
    Perm(ServerRefusal),
}

/// A refusal and the step it came at (MAIL's refusal applies to every recipient).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRefusal {
    pub step: Step,
    pub reply: ServerReply,
}

impl fmt::Display for ServerRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reply)
    }
}

impl RcptResult {
    pub fn from_reply(step: Step, reply: &ServerReply) -> RcptResult {
        let refusal = || ServerRefusal { step, reply: reply.clone() };
        match reply.code {
            200..=399 => RcptResult::Ok,
            500..=599 => RcptResult::Perm(refusal()),
            _ => RcptResult::Temp(refusal()),
        }
    }

    /// Whether these results say only that the session has sent as many messages as the
    /// server takes in one: MAIL refused with 452 and "too many" (OpenSMTPD's `452 4.5.3 Too
    /// many recipients: Too many messages sent` after `smtp limit max-mails`). The message
    /// was not refused: a new session may send it.
    pub fn session_full(results: &[RcptResult]) -> bool {
        let Some(RcptResult::Temp(ServerRefusal { step: Step::Mail, reply })) = results.first() else {
            return false;
        };
        let text = reply.text();
        reply.code == 452 && (text.starts_with("4.5.3") || text.to_ascii_lowercase().contains("too many"))
    }

    /// A temporary failure for a reply that never came (the session ended first).
    fn no_reply(step: Step) -> RcptResult {
        RcptResult::Temp(ServerRefusal { step, reply: ServerReply { code: 451, lines: vec!["4.4.2 no reply".into()] } })
    }
}

/// The step a reply answered, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
    Quit,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Greeting => "greeting",
            Step::Ehlo => "EHLO",
            Step::Helo => "HELO",
            Step::StartTls => "STARTTLS",
            Step::Auth => "AUTH",
            Step::Mail => "MAIL FROM",
            Step::Rcpt => "RCPT TO",
            Step::Data => "DATA",
            Step::EndOfData => "end of data",
            Step::Rset => "RSET",
            Step::Quit => "QUIT",
        }
    }
}

/// Why a session cannot go on: every recipient not yet answered is a temporary failure,
/// unless the reply says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The server refused a session step (greeting, EHLO, STARTTLS, AUTH).
    Refused {
        step: Step,
        reply: ServerReply,
    },
    Protocol(ProtocolError),
    /// TLS is required and the server does not offer STARTTLS.
    NoStartTls,
    /// AUTH is configured and the channel is not encrypted.
    AuthWithoutTls,
    /// AUTH is configured and the server offers neither PLAIN nor LOGIN.
    NoAuthMechanism,
    /// The connection ended before the reply to `step`.
    Closed(Step),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Refused { step, reply } => write!(f, "{}: {reply}", step.as_str()),
            SessionError::Protocol(e) => write!(f, "{e}"),
            SessionError::NoStartTls => write!(f, "STARTTLS required but not offered"),
            SessionError::AuthWithoutTls => write!(f, "AUTH refused without TLS"),
            SessionError::NoAuthMechanism => write!(f, "AUTH: the server offers neither PLAIN nor LOGIN"),
            SessionError::Closed(step) => write!(f, "connection closed before the reply to {}", step.as_str()),
        }
    }
}

impl std::error::Error for SessionError {}

/// What the driver must do or learn.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server agreed to STARTTLS: run the handshake, then call [`Client::tls_started`].
    StartTls,
    /// The session is ready for a transaction ([`Client::send_mail`]) or [`Client::quit`].
    Ready,
    /// A transaction ended: one result per recipient, in order.
    Sent(Vec<RcptResult>),
    /// The session cannot go on; close the connection.
    Failed(SessionError),
    /// QUIT was answered (or the server closed after it).
    Closed,
}

/// What an outstanding reply will answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AuthLoginUser,
    AuthLoginPass,
    AuthDone,
    Mail,
    Rcpt(usize),
    Data,
    /// The final reply; for LMTP, the one for the accepted recipient at this index.
    EndOfData(Option<usize>),
    /// The final dot of an empty data sent because the server said 354 with no recipient.
    Discard,
    Rset,
    Quit,
}

#[derive(Debug)]
struct Transaction {
    rcpts: Vec<String>,
    mail: Option<ServerReply>,
    results: Vec<Option<RcptResult>>,
    /// The message in wire form (CRLF, dot-stuffed, final dot), until it is sent.
    body: Vec<u8>,
    data_sent: bool,
    /// DATA went out pipelined and its reply is still due.
    data_pipelined: bool,
}

/// One client session; see the module doc.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    parser: ReplyParser,
    expect: VecDeque<Expect>,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    ext: Extensions,
    tls_active: bool,
    tx: Option<Transaction>,
    /// STARTTLS was accepted and the handshake has not been reported yet.
    awaiting_tls: bool,
    transcript: Vec<String>,
    done: bool,
}

impl Client {
    /// A session about to read the greeting. With [`TlsWant::Implicit`] the driver has
    /// started TLS already.
    pub fn new(cfg: ClientConfig) -> Client {
        let tls_active = cfg.tls == TlsWant::Implicit;
        Client {
            cfg,
            parser: ReplyParser::default(),
            expect: VecDeque::from([Expect::Greeting]),
            out: Vec::new(),
            events: VecDeque::new(),
            ext: Extensions::default(),
            tls_active,
            tx: None,
            awaiting_tls: false,
            transcript: Vec::new(),
            done: false,
        }
    }

    /// What the server offered in its last EHLO.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The message (its final dot included) is in the output or sent, and its verdict is
    /// due: where a load generator starts the commit's clock.
    pub fn message_sent(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.data_sent)
    }

    /// Whether commands go out in groups: the server offers PIPELINING and we use it.
    fn pipelined(&self) -> bool {
        self.ext.pipelining && self.cfg.pipelining != Pipelining::Never
    }

    /// Bytes to send now.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// The dialogue since the last call, one line per command (`>>> …`, the message as
    /// `>>> [N bytes of message]`) and per reply (`<<< …`); empty unless the configuration
    /// asks for a transcript.
    pub fn take_transcript(&mut self) -> Vec<String> {
        std::mem::take(&mut self.transcript)
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether the session waits for the server (a reply is due).
    /// The step whose reply the session waits for next: a driver picks its read timeout by
    /// it (RFC 5321 §4.5.3.2 gives each step its own).
    pub fn awaiting(&self) -> Option<Step> {
        self.expect.front().copied().map(step_of)
    }

    pub fn wants_read(&self) -> bool {
        !self.done && !self.expect.is_empty() && !self.awaiting_tls
    }

    /// Bytes read from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        if let Err(e) = self.parser.push(bytes) {
            return self.fail(SessionError::Protocol(e));
        }
        loop {
            if self.done || self.awaiting_tls {
                // After STARTTLS's 220 nothing read in plaintext may count (RFC 3207 §4.2).
                return;
            }
            match self.parser.next_reply() {
                Ok(Some(reply)) => self.on_reply(reply),
                Ok(None) => return,
                Err(e) => return self.fail(SessionError::Protocol(e)),
            }
        }
    }

    /// The server closed the connection.
    pub fn eof(&mut self) {
        if self.done {
            return;
        }
        match self.expect.front() {
            Some(Expect::Quit) | None => self.finish(ClientEvent::Closed),
            Some(e) => self.fail(SessionError::Closed(step_of(*e))),
        }
    }

    /// The TLS handshake the driver ran after [`ClientEvent::StartTls`] succeeded.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.awaiting_tls = false;
        self.parser.clear();
        self.hello();
    }

    /// Starts a transaction. Call only after [`ClientEvent::Ready`] or [`ClientEvent::Sent`].
    pub fn send_mail(&mut self, sender: &str, rcpts: &[&str], message: &[u8]) {
        let mut body = Vec::with_capacity(message.len() + message.len() / 32 + 8);
        dot_stuff(message, &mut body);
        let n = rcpts.len();
        self.tx = Some(Transaction {
            rcpts: rcpts.iter().map(|r| (*r).to_owned()).collect(),
            mail: None,
            results: vec![None; n],
            body,
            data_sent: false,
            data_pipelined: false,
        });
        self.command(format_args!("MAIL FROM:<{sender}>"), Expect::Mail);
        if self.pipelined() {
            for (i, r) in rcpts.iter().enumerate() {
                self.command(format_args!("RCPT TO:<{r}>"), Expect::Rcpt(i));
            }
            if self.cfg.pipelining == Pipelining::WithData && n > 0 {
                self.command(format_args!("DATA"), Expect::Data);
                if let Some(tx) = self.tx.as_mut() {
                    tx.data_pipelined = true;
                }
            }
        }
    }

    /// Ends the session politely.
    pub fn quit(&mut self) {
        self.command(format_args!("QUIT"), Expect::Quit);
    }

    fn command(&mut self, line: fmt::Arguments<'_>, expect: Expect) {
        use std::io::Write;
        let start = self.out.len();
        let _ = write!(self.out, "{line}\r\n");
        if self.cfg.transcript {
            let text = match expect {
                // Credentials never reach a transcript.
                Expect::AuthLoginPass | Expect::AuthDone => "[credentials]".into(),
                _ => String::from_utf8_lossy(&self.out[start..self.out.len() - 2]).into_owned(),
            };
            self.transcript.push(format!(">>> {text}"));
        }
        self.expect.push_back(expect);
    }

    fn fail(&mut self, e: SessionError) {
        self.finish(ClientEvent::Failed(e));
    }

    fn finish(&mut self, event: ClientEvent) {
        self.done = true;
        self.expect.clear();
        self.events.push_back(event);
    }

    fn hello(&mut self) {
        let verb = if self.cfg.lmtp { "LHLO" } else { "EHLO" };
        let helo = self.cfg.helo.clone();
        self.command(format_args!("{verb} {helo}"), Expect::Ehlo);
    }

    fn on_reply(&mut self, reply: ServerReply) {
        if self.cfg.transcript {
            self.transcript.push(format!("<<< {reply}"));
        }
        let Some(expect) = self.expect.pop_front() else {
            return self.fail(SessionError::Protocol(ProtocolError::Unsolicited(reply)));
        };
        let refused = |step| SessionError::Refused { step, reply: reply.clone() };
        match expect {
            Expect::Greeting if reply.code / 100 == 2 => self.hello(),
            Expect::Ehlo if reply.code == 250 => {
                self.ext = Extensions::parse(&reply);
                self.after_hello();
            }
            // RFC 5321 §3.2: a server that does not know EHLO gets HELO (not for LMTP).
            Expect::Ehlo if reply.code / 100 == 5 && !self.cfg.lmtp => {
                let helo = self.cfg.helo.clone();
                self.command(format_args!("HELO {helo}"), Expect::Helo);
            }
            Expect::Helo if reply.code == 250 => {
                self.ext = Extensions::default();
                self.after_hello();
            }
            Expect::StartTls if reply.code == 220 => {
                self.awaiting_tls = true;
                self.events.push_back(ClientEvent::StartTls);
            }
            Expect::AuthLoginUser if reply.code == 334 => {
                let user = self.credential(0);
                self.command(format_args!("{user}"), Expect::AuthLoginPass);
            }
            Expect::AuthLoginPass if reply.code == 334 => {
                let pass = self.credential(1);
                self.command(format_args!("{pass}"), Expect::AuthDone);
            }
            Expect::AuthDone if reply.code == 235 => self.events.push_back(ClientEvent::Ready),
            Expect::Greeting => self.fail(refused(Step::Greeting)),
            Expect::Ehlo => self.fail(refused(Step::Ehlo)),
            Expect::Helo => self.fail(refused(Step::Helo)),
            Expect::StartTls => self.fail(refused(Step::StartTls)),
            Expect::AuthLoginUser | Expect::AuthLoginPass | Expect::AuthDone => self.fail(refused(Step::Auth)),
            Expect::Mail => self.on_mail(reply),
            Expect::Rcpt(i) => self.on_rcpt(i, reply),
            Expect::Data => self.on_data(reply),
            Expect::EndOfData(i) => self.on_end_of_data(i, reply),
            Expect::Discard => self.end_tx(),
            Expect::Rset => self.rset_done(),
            Expect::Quit => self.finish(ClientEvent::Closed),
        }
    }

    /// After EHLO or HELO: STARTTLS, AUTH, or ready.
    fn after_hello(&mut self) {
        if !self.tls_active {
            match self.cfg.tls {
                TlsWant::Required | TlsWant::Opportunistic if self.ext.starttls => {
                    return self.command(format_args!("STARTTLS"), Expect::StartTls);
                }
                TlsWant::Required => return self.fail(SessionError::NoStartTls),
                _ => {}
            }
        }
        if self.cfg.auth.is_none() {
            return self.events.push_back(ClientEvent::Ready);
        }
        if !self.tls_active {
            return self.fail(SessionError::AuthWithoutTls);
        }
        let has = |m: &str| self.ext.auth.iter().any(|a| a == m);
        if has("PLAIN") {
            let (user, pass) = self.cfg.auth.clone().unwrap_or_default();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
            self.command(format_args!("AUTH PLAIN {token}"), Expect::AuthDone);
        } else if has("LOGIN") {
            self.command(format_args!("AUTH LOGIN"), Expect::AuthLoginUser);
        } else {
            self.fail(SessionError::NoAuthMechanism);
        }
    }

    /// The user name (0) or password (1), in base64.
    fn credential(&self, which: usize) -> String {
        let (user, pass) = self.cfg.auth.clone().unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(if which == 0 { user } else { pass })
    }

    fn on_mail(&mut self, reply: ServerReply) {
        let pipelined = self.pipelined();
        let Some(tx) = self.tx.as_mut() else { return };
        let ok = reply.code / 100 == 2;
        tx.mail = Some(reply);
        if pipelined && !tx.rcpts.is_empty() {
            return; // the RCPT replies follow
        }
        if ok {
            if let Some(first) = tx.rcpts.first().cloned() {
                return self.command(format_args!("RCPT TO:<{first}>"), Expect::Rcpt(0));
            }
        }
        self.after_rcpts();
    }

    fn on_rcpt(&mut self, i: usize, reply: ServerReply) {
        let pipelined = self.pipelined();
        let Some(tx) = self.tx.as_mut() else { return };
        if let Some(slot) = tx.results.get_mut(i) {
            *slot = Some(RcptResult::from_reply(Step::Rcpt, &reply));
        }
        let last = i + 1 >= tx.rcpts.len();
        if !pipelined && !last {
            let next = tx.rcpts[i + 1].clone();
            return self.command(format_args!("RCPT TO:<{next}>"), Expect::Rcpt(i + 1));
        }
        if last {
            self.after_rcpts();
        }
    }

    /// Every RCPT is answered (or MAIL was refused): DATA, or the end of the transaction.
    fn after_rcpts(&mut self) {
        let all_or_nothing = self.cfg.all_or_nothing;
        let Some(tx) = self.tx.as_mut() else { return };
        let mail = tx.mail.clone();
        let mail_ok = mail.as_ref().is_some_and(|m| m.code / 100 == 2);
        if !mail_ok {
            // Everything shares MAIL's verdict.
            let verdict = mail.map_or(RcptResult::no_reply(Step::Mail), |m| RcptResult::from_reply(Step::Mail, &m));
            tx.results.iter_mut().for_each(|r| *r = Some(verdict.clone()));
        }
        let accepted = tx.results.iter().filter(|r| **r == Some(RcptResult::Ok)).count();
        let go = mail_ok && accepted > 0 && (!all_or_nothing || accepted == tx.rcpts.len());
        if tx.data_pipelined {
            // DATA is out already; its reply decides (see on_data).
            return;
        }
        if go {
            self.command(format_args!("DATA"), Expect::Data);
        } else {
            self.command(format_args!("RSET"), Expect::Rset);
        }
    }

    fn on_data(&mut self, reply: ServerReply) {
        let (lmtp, all_or_nothing) = (self.cfg.lmtp, self.cfg.all_or_nothing);
        let Some(tx) = self.tx.as_mut() else { return };
        let accepted: Vec<usize> = (0..tx.results.len()).filter(|i| tx.results[*i] == Some(RcptResult::Ok)).collect();
        let mail_ok = tx.mail.as_ref().is_some_and(|m| m.code / 100 == 2);
        let wanted = mail_ok && !accepted.is_empty() && (!all_or_nothing || accepted.len() == tx.rcpts.len());
        if reply.code != 354 {
            let verdict = RcptResult::from_reply(Step::Data, &reply);
            for i in accepted {
                tx.results[i] = Some(verdict.clone());
            }
            return self.command(format_args!("RSET"), Expect::Rset);
        }
        if !wanted {
            // 354 to a pipelined DATA nobody should receive: an empty message ends it,
            // and its reply is ignored (RFC 2920 §3.1).
            self.out.extend_from_slice(b".\r\n");
            self.expect.push_back(Expect::Discard);
            return;
        }
        if self.cfg.transcript {
            self.transcript.push(format!(">>> [{} bytes of message]", tx.body.len()));
        }
        self.out.append(&mut tx.body);
        tx.data_sent = true;
        if lmtp {
            self.expect.extend(accepted.into_iter().map(|i| Expect::EndOfData(Some(i))));
        } else {
            self.expect.push_back(Expect::EndOfData(None));
        }
    }

    fn on_end_of_data(&mut self, index: Option<usize>, reply: ServerReply) {
        let Some(tx) = self.tx.as_mut() else { return };
        let verdict = RcptResult::from_reply(Step::EndOfData, &reply);
        match index {
            Some(i) => {
                if let Some(slot) = tx.results.get_mut(i) {
                    *slot = Some(verdict);
                }
            }
            None => {
                for r in tx.results.iter_mut().filter(|r| **r == Some(RcptResult::Ok)) {
                    *r = Some(verdict.clone());
                }
            }
        }
        if !self.expect.iter().any(|e| matches!(e, Expect::EndOfData(_))) {
            self.end_tx();
        }
    }

    fn rset_done(&mut self) {
        if self.tx.is_some() {
            self.end_tx();
        } else {
            self.events.push_back(ClientEvent::Ready);
        }
    }

    fn end_tx(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let results = tx.results.into_iter().map(|r| r.unwrap_or_else(|| RcptResult::no_reply(Step::Rcpt))).collect();
        self.events.push_back(ClientEvent::Sent(results));
    }
}

fn step_of(e: Expect) -> Step {
    match e {
        Expect::Greeting => Step::Greeting,
        Expect::Ehlo => Step::Ehlo,
        Expect::Helo => Step::Helo,
        Expect::StartTls => Step::StartTls,
        Expect::AuthLoginUser | Expect::AuthLoginPass | Expect::AuthDone => Step::Auth,
        Expect::Mail => Step::Mail,
        Expect::Rcpt(_) => Step::Rcpt,
        Expect::Data => Step::Data,
        Expect::EndOfData(_) | Expect::Discard => Step::EndOfData,
        Expect::Rset => Step::Rset,
        Expect::Quit => Step::Quit,
    }
}

/// The message in wire form: every line ending (LF or CRLF) becomes CRLF, a line starting
/// with '.' gets one more (RFC 5321 §4.5.2), a last line without an ending gets one, then
/// the final ".".
pub fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    for line in message.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests;
