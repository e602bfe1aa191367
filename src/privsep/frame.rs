//! The framed protocol between mxd's processes. Sans-IO: encoders append to a `Vec<u8>`,
//! decoders read a byte slice and never trust it (every length is checked against what is
//! left and against a cap); the blocking readers at the bottom only move bytes.
//!
//! smtp → delivery, one message: `u32 head_len`, the head, then `body_len` raw body bytes.
//! The head carries only what a client chose or could have produced: the listener's tag,
//! where it came from, TLS, the authenticated (or local) user, sender, recipients as
//! addresses, this hop's Received header; never a path, uid or action.
//! ```text
//! head: u64 seq | u32 msgid | u8 origin (0 socket, 4 + 4 bytes v4, 6 + 16 bytes v6) | u8 tls
//!       | str tag | str auth | str mail_from | u16 n, n × str rcpt | bytes received | u64 body_len
//!       | str helo
//!       | str rdns (the client's forward-confirmed name, for `match from rdns`)
//! str: u16 len (0xffff = none) + UTF-8;  bytes: u32 len + bytes
//! ```
//! delivery → smtp, verdicts, several per write: `u32 len`, `u64 seq | u8 kind | UTF-8 text`.
//! parent ↔ child requests and answers: `u32 len` + UTF-8 text.
//!
//! Logins (`listen … auth`) cross the same link: smtp → delivery, a frame whose length
//! word carries kind 1 in its top byte (heads are kind 0: never 2^24 bytes long), then
//! `u64 seq | origin | str table | str user | str password`; delivery → smtp, a verdict
//! frame of kind 16 + [`AuthVerdict`] and no text. The password is zeroed on both sides.
//!
//! Questions at RCPT and MAIL that only delivery can answer (a proc table, a ~/.forward:
//! `privsep::lookup`) cross it too: smtp → delivery, kind 3, `u64 seq | u8 question (0
//! recipient, 1 sender, 2 sender with masquerade) | str subject (the recipient, or the
//! `senders` table) | origin | u8 tls | str tag | str auth | str mail_from | str helo | str
//! rdns`; delivery → smtp, a verdict frame of kind 32 + [`LookupVerdict`] and no text.
//! A `hostnames <t>` question (3) names the table as its subject and adds the local address
//! the client reached (an origin) after `rdns`; its answer, [`LookupVerdict::Name`], is the
//! verdict kind 44 followed by the name. A builtin filter's condition on a table process
//! (4) names the table too, and adds `u8 kind (filter::LookupKind, +128 for regex) | str
//! key` after `rdns`; its answer is `Ok` (the key is in the table), `NotAuthorized` (it is
//! not) or `TempFail`.
//!
//! The smtp process's first frame is an empty one of kind 2 carrying, as SCM_RIGHTS, one
//! socketpair end per event loop; messages, logins and their verdicts then go over those
//! (`link.rs`), in the frames above.

use std::fmt;
use std::io::{self, Read};
use std::net::IpAddr;

use zeroize::Zeroize;

use crate::auth::Secret;
use crate::envelope::Origin;
use crate::filter::LookupKind;

/// Largest head accepted: 1000 recipients of 256 octets, a Received header, slack.
pub const MAX_HEAD: usize = 1 << 20;
/// Largest verdict or request frame.
pub const MAX_SMALL: usize = 1 << 20;
const NONE: u16 = u16::MAX;

/// A message's envelope as it crosses from the smtp process to delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub msgid: u32,
    pub origin: Origin,
    pub tls: bool,
    pub tag: Option<String>,
    pub auth: Option<String>,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub received: Vec<u8>,
    pub body_len: u64,
    /// The client's HELO/EHLO name: delivery re-runs `match helo` on it.
    pub helo: String,
    /// The client's forward-confirmed reverse DNS name, when it has one.
    pub rdns: Option<String>,
}

/// A delivery verdict on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryVerdict {
    Ok,
    TempFail(String),
    PermFail(String),
}

/// Bytes that are not a frame of this protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its fields say.
    Truncated,
    /// Longer than the cap, or bytes after the last field.
    TooLong(usize),
    /// A field with a value no sender of ours writes.
    Bad(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("truncated frame"),
            FrameError::TooLong(n) => write!(f, "frame too long ({n} bytes)"),
            FrameError::Bad(what) => write!(f, "bad frame field: {what}"),
        }
    }
}

impl std::error::Error for FrameError {}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        // Longer strings are cut: no field of ours comes near 64 KiB.
        Some(s) => {
            let b = &s.as_bytes()[..s.len().min(usize::from(NONE) - 1)];
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&NONE.to_be_bytes()),
    }
}

/// Appends `head`, with its length prefix, to `out`; the body follows on the wire.
pub fn encode_head(head: &Head, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&head.seq.to_be_bytes());
    out.extend_from_slice(&head.msgid.to_be_bytes());
    put_origin(out, &head.origin);
    out.push(u8::from(head.tls));
    put_str(out, head.tag.as_deref());
    put_str(out, head.auth.as_deref());
    put_str(out, Some(&head.mail_from));
    out.extend_from_slice(&(head.rcpts.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    for r in head.rcpts.iter().take(usize::from(u16::MAX)) {
        put_str(out, Some(r));
    }
    out.extend_from_slice(&(head.received.len() as u32).to_be_bytes());
    out.extend_from_slice(&head.received);
    out.extend_from_slice(&head.body_len.to_be_bytes());
    put_str(out, Some(&head.helo));
    put_str(out, head.rdns.as_deref());
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Reads fields off a byte slice, refusing anything short.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn opt_str(&mut self) -> Result<Option<String>, FrameError> {
        let n = self.u16()?;
        if n == NONE {
            return Ok(None);
        }
        let b = self.take(usize::from(n))?;
        std::str::from_utf8(b).map(|s| Some(s.to_owned())).map_err(|_| FrameError::Bad("string is not UTF-8"))
    }
    fn str(&mut self) -> Result<String, FrameError> {
        self.opt_str()?.ok_or(FrameError::Bad("missing string"))
    }
    /// An origin as `put_origin` writes it.
    fn origin(&mut self) -> Result<Origin, FrameError> {
        match self.u8()? {
            0 => Ok(Origin::Socket),
            4 => Ok(Origin::Tcp(IpAddr::from(self.array::<4>()?))),
            6 => Ok(Origin::Tcp(IpAddr::from(self.array::<16>()?))),
            _ => Err(FrameError::Bad("origin")),
        }
    }
    /// The TLS byte: 0 or 1.
    fn tls(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FrameError::Bad("tls flag")),
        }
    }
}

/// Decodes a head (without its length prefix).
pub fn decode_head(bytes: &[u8]) -> Result<Head, FrameError> {
    if bytes.len() > MAX_HEAD {
        return Err(FrameError::TooLong(bytes.len()));
    }
    let mut c = Cursor(bytes);
    let seq = c.u64()?;
    let msgid = c.u32()?;
    let origin = c.origin()?;
    let tls = c.tls()?;
    let tag = c.opt_str()?;
    let auth = c.opt_str()?;
    let mail_from = c.str()?;
    let n = c.u16()?;
    let rcpts = (0..n).map(|_| c.str()).collect::<Result<Vec<_>, _>>()?;
    let rlen = c.u32()? as usize;
    let received = c.take(rlen)?.to_vec();
    let body_len = c.u64()?;
    let helo = c.str()?;
    let rdns = c.opt_str()?;
    if !c.0.is_empty() {
        return Err(FrameError::TooLong(bytes.len()));
    }
    Ok(Head { seq, msgid, origin, tls, tag, auth, mail_from, rcpts, received, body_len, helo, rdns })
}

/// Appends one verdict frame to `out` (several are written at once).
pub fn encode_verdict(seq: u64, verdict: &DeliveryVerdict, out: &mut Vec<u8>) {
    let (kind, text) = match verdict {
        DeliveryVerdict::Ok => (0u8, ""),
        DeliveryVerdict::TempFail(t) => (1, t.as_str()),
        DeliveryVerdict::PermFail(t) => (2, t.as_str()),
    };
    let text = &text.as_bytes()[..text.len().min(4096)];
    out.extend_from_slice(&((9 + text.len()) as u32).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(text);
}

/// Decodes a verdict frame (without its length prefix).
pub fn decode_verdict(bytes: &[u8]) -> Result<(u64, DeliveryVerdict), FrameError> {
    let mut c = Cursor(bytes);
    let seq = c.u64()?;
    let kind = c.u8()?;
    let text = String::from_utf8_lossy(c.0).into_owned();
    let v = match kind {
        0 => DeliveryVerdict::Ok,
        1 => DeliveryVerdict::TempFail(text),
        2 => DeliveryVerdict::PermFail(text),
        _ => return Err(FrameError::Bad("verdict kind")),
    };
    Ok((seq, v))
}

/// A length-prefixed text frame (parent ↔ child requests and answers).
pub fn encode_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + text.len());
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// The 4-byte word that starts a frame; `Ok(None)` at a clean end of stream before it.
fn read_word(r: &mut impl Read) -> io::Result<Option<[u8; 4]>> {
    let mut word = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut word[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(word))
}

/// Reads one length-prefixed frame of at most `max` bytes. `Ok(None)` is a clean end of
/// stream between frames; a stream cut inside a frame is `UnexpectedEof`.
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = read_word(r)? else { return Ok(None) };
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, FrameError::TooLong(len)));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// The kinds of smtp → delivery frames, in the top byte of the length word.
pub const KIND_HEAD: u8 = 0;
pub const KIND_AUTH: u8 = 1;
/// The loops' own links (empty; their delivery ends come with it as SCM_RIGHTS).
pub const KIND_LINKS: u8 = 2;
/// Longest user name or password a login frame carries (the session's line limit is 512).
const MAX_CREDENTIAL: usize = 1024;
/// Verdict kinds from here on are login verdicts.
const AUTH_VERDICT_BASE: u8 = 16;

pub const KIND_LOOKUP: u8 = 3;
/// Largest lookup frame: its fields come from command lines (512 octets each), names and
/// the rDNS name; a bigger one is forged, and the queue of questions stays small.
const MAX_LOOKUP: usize = 16 * 1024;
/// Verdict kinds from here on answer lookups.
const LOOKUP_VERDICT_BASE: u8 = 32;

/// What a lookup asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupQuestion {
    /// May this recipient be accepted (and who takes it)?
    Rcpt(String),
    /// May the authenticated user send as `mail_from` (`senders <table> [masquerade]`)?
    Sender { table: String, masquerade: bool },
    /// `listen … hostnames <table>`: this host's name for the local address `local`.
    Hostname { table: String, local: IpAddr },
    /// A builtin filter's condition: is `key` in `table` (compared as `kind`, or as regular
    /// expressions)?
    FilterTable { table: String, regex: bool, kind: LookupKind, key: String },
}

/// [`LookupKind`]s by their number on the wire.
const LOOKUP_KINDS: [LookupKind; 4] =
    [LookupKind::Domain, LookupKind::NetAddr, LookupKind::String, LookupKind::MailAddr];

/// A question at RCPT or MAIL, smtp → delivery, with the envelope as the session has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupAsk {
    pub seq: u64,
    pub question: LookupQuestion,
    pub origin: Origin,
    pub tls: bool,
    pub tag: Option<String>,
    pub auth: Option<String>,
    pub mail_from: String,
    pub helo: String,
    pub rdns: Option<String>,
}

/// Delivery's answer to a [`LookupAsk`]: accepted, or which refusal the session replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupVerdict {
    Ok,
    /// A table process failed or timed out (451 4.3.0).
    TempFail,
    UnknownUser,
    NotAuthorized,
    Loop,
    UnsafeMailbox,
    Unsupported,
    Empty,
    SenderNotAllowed,
    BadSrs,
    /// A `forward-only` user's ~/.forward cannot be used (424 4.2.4).
    ForwardTempFail,
    /// An `expand-only` user has no usable ~/.forward (524 5.2.4).
    ForwardPermFail,
    /// The `hostnames` table's name for the address (checked by [`host_name_ok`]); no
    /// entry is `Empty`.
    Name(String),
}

/// Verdict kind of [`LookupVerdict::Name`]: after the fixed ones.
const NAME_VERDICT: u8 = LOOKUP_VERDICT_BASE + LOOKUP_VERDICTS.len() as u8;

/// A name a table process gave may stand in a greeting: letters, digits, `-`, `.`, `_`.
pub fn host_name_ok(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

const LOOKUP_VERDICTS: [LookupVerdict; 12] = [
    LookupVerdict::Ok,
    LookupVerdict::TempFail,
    LookupVerdict::UnknownUser,
    LookupVerdict::NotAuthorized,
    LookupVerdict::Loop,
    LookupVerdict::UnsafeMailbox,
    LookupVerdict::Unsupported,
    LookupVerdict::Empty,
    LookupVerdict::SenderNotAllowed,
    LookupVerdict::BadSrs,
    LookupVerdict::ForwardTempFail,
    LookupVerdict::ForwardPermFail,
];

/// Appends a lookup frame, with its kind and length word, to `out`.
pub fn encode_lookup_ask(ask: &LookupAsk, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&ask.seq.to_be_bytes());
    let (q, subject) = match &ask.question {
        LookupQuestion::Rcpt(r) => (0u8, r),
        LookupQuestion::Sender { table, masquerade } => (1 + u8::from(*masquerade), table),
        LookupQuestion::Hostname { table, .. } => (3, table),
        LookupQuestion::FilterTable { table, .. } => (4, table),
    };
    out.push(q);
    put_str(out, Some(subject));
    put_origin(out, &ask.origin);
    out.push(u8::from(ask.tls));
    put_str(out, ask.tag.as_deref());
    put_str(out, ask.auth.as_deref());
    put_str(out, Some(&ask.mail_from));
    put_str(out, Some(&ask.helo));
    put_str(out, ask.rdns.as_deref());
    match &ask.question {
        LookupQuestion::Hostname { local, .. } => put_origin(out, &Origin::Tcp(*local)),
        LookupQuestion::FilterTable { regex, kind, key, .. } => {
            let k = LOOKUP_KINDS.iter().position(|x| x == kind).unwrap_or(0) as u8;
            out.push(k | u8::from(*regex) << 7);
            put_str(out, Some(key));
        }
        _ => {}
    }
    let len = (out.len() - start - 4) as u32 | u32::from(KIND_LOOKUP) << 24;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decodes a lookup frame (without its length word).
pub fn decode_lookup_ask(bytes: &[u8]) -> Result<LookupAsk, FrameError> {
    if bytes.len() > MAX_LOOKUP {
        return Err(FrameError::TooLong(bytes.len()));
    }
    let mut c = Cursor(bytes);
    let seq = c.u64()?;
    let q = c.u8()?;
    let subject = c.str()?;
    let mut question = match q {
        0 => LookupQuestion::Rcpt(subject),
        1 | 2 => LookupQuestion::Sender { table: subject, masquerade: q == 2 },
        3 => LookupQuestion::Hostname { table: subject, local: IpAddr::from([0, 0, 0, 0]) },
        4 => LookupQuestion::FilterTable { table: subject, regex: false, kind: LookupKind::String, key: String::new() },
        _ => return Err(FrameError::Bad("lookup question")),
    };
    let origin = c.origin()?;
    let tls = c.tls()?;
    let tag = c.opt_str()?;
    let auth = c.opt_str()?;
    let mail_from = c.str()?;
    let helo = c.str()?;
    let rdns = c.opt_str()?;
    match &mut question {
        LookupQuestion::Hostname { local, .. } => {
            let Origin::Tcp(ip) = c.origin()? else { return Err(FrameError::Bad("local address")) };
            *local = ip;
        }
        LookupQuestion::FilterTable { regex, kind, key, .. } => {
            let k = c.u8()?;
            *kind = *LOOKUP_KINDS.get(usize::from(k & 0x7f)).ok_or(FrameError::Bad("lookup kind"))?;
            *regex = k & 0x80 != 0;
            *key = c.str()?;
        }
        _ => {}
    }
    if !c.0.is_empty() {
        return Err(FrameError::TooLong(bytes.len()));
    }
    Ok(LookupAsk { seq, question, origin, tls, tag, auth, mail_from, helo, rdns })
}

/// Appends one lookup verdict frame to `out`.
pub fn encode_lookup_verdict(seq: u64, verdict: LookupVerdict, out: &mut Vec<u8>) {
    if let LookupVerdict::Name(name) = &verdict {
        out.extend_from_slice(&(9 + name.len() as u32).to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.push(NAME_VERDICT);
        out.extend_from_slice(name.as_bytes());
        return;
    }
    let index = LOOKUP_VERDICTS.iter().position(|v| *v == verdict).unwrap_or(1) as u8;
    out.extend_from_slice(&9u32.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(LOOKUP_VERDICT_BASE + index);
}

/// A login to check, smtp → delivery. `table` is the listener's `auth <t>`; `None` asks
/// for the system's users. `origin` is the client, for the flood limit.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthAsk {
    pub seq: u64,
    pub origin: Origin,
    pub table: Option<String>,
    pub user: String,
    pub password: Secret,
}

/// Delivery's answer to an [`AuthAsk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthVerdict {
    Ok,
    Failed,
    /// The check could not be made (shadow unreadable, the checkers saturated).
    TempFail,
    /// Too many failures from this client's address lately: not checked.
    Blocked,
}

/// What delivery sends back: a message's verdict or a login's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryAnswer {
    Delivery(u64, DeliveryVerdict),
    Auth(u64, AuthVerdict),
    Lookup(u64, LookupVerdict),
}

fn put_origin(out: &mut Vec<u8>, origin: &Origin) {
    match origin {
        Origin::Socket => out.push(0),
        Origin::Tcp(IpAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        Origin::Tcp(IpAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
}

/// Appends a login frame, with its kind and length word, to `out` (which the caller wipes).
pub fn encode_auth_ask(ask: &AuthAsk, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&ask.seq.to_be_bytes());
    put_origin(out, &ask.origin);
    put_str(out, ask.table.as_deref());
    put_str(out, Some(&ask.user[..ask.user.len().min(MAX_CREDENTIAL)]));
    let password = &ask.password.expose()[..ask.password.len().min(MAX_CREDENTIAL)];
    out.extend_from_slice(&(password.len() as u16).to_be_bytes());
    out.extend_from_slice(password);
    let len = (out.len() - start - 4) as u32 | u32::from(KIND_AUTH) << 24;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decodes a login frame (without its length word).
pub fn decode_auth_ask(bytes: &[u8]) -> Result<AuthAsk, FrameError> {
    let mut c = Cursor(bytes);
    let seq = c.u64()?;
    let origin = c.origin()?;
    let table = c.opt_str()?;
    let user = c.str()?;
    let n = usize::from(c.u16()?);
    if user.len() > MAX_CREDENTIAL || n > MAX_CREDENTIAL {
        return Err(FrameError::Bad("credential length"));
    }
    let password = Secret::new(c.take(n)?.to_vec());
    if !c.0.is_empty() {
        return Err(FrameError::TooLong(bytes.len()));
    }
    Ok(AuthAsk { seq, origin, table, user, password })
}

/// Appends one login verdict frame to `out`.
pub fn encode_auth_verdict(seq: u64, verdict: AuthVerdict, out: &mut Vec<u8>) {
    out.extend_from_slice(&9u32.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(AUTH_VERDICT_BASE + verdict as u8);
}

/// Decodes a delivery → smtp frame: a message verdict or a login verdict.
pub fn decode_answer(bytes: &[u8]) -> Result<DeliveryAnswer, FrameError> {
    match bytes.get(8) {
        Some(&NAME_VERDICT) => {
            let name = std::str::from_utf8(&bytes[9..]).map_err(|_| FrameError::Bad("host name is not UTF-8"))?;
            if !host_name_ok(name) {
                return Err(FrameError::Bad("host name"));
            }
            let seq = Cursor(bytes).u64()?;
            Ok(DeliveryAnswer::Lookup(seq, LookupVerdict::Name(name.to_owned())))
        }
        Some(&k) if k >= LOOKUP_VERDICT_BASE => {
            let mut c = Cursor(bytes);
            let seq = c.u64()?;
            let verdict = LOOKUP_VERDICTS
                .get(usize::from(c.u8()? - LOOKUP_VERDICT_BASE))
                .cloned()
                .ok_or(FrameError::Bad("lookup verdict kind"))?;
            if !c.0.is_empty() {
                return Err(FrameError::TooLong(bytes.len()));
            }
            Ok(DeliveryAnswer::Lookup(seq, verdict))
        }
        Some(&k) if k >= AUTH_VERDICT_BASE => {
            let mut c = Cursor(bytes);
            let seq = c.u64()?;
            let verdict = match c.u8()? - AUTH_VERDICT_BASE {
                0 => AuthVerdict::Ok,
                1 => AuthVerdict::Failed,
                2 => AuthVerdict::TempFail,
                3 => AuthVerdict::Blocked,
                _ => return Err(FrameError::Bad("login verdict kind")),
            };
            if !c.0.is_empty() {
                return Err(FrameError::TooLong(bytes.len()));
            }
            Ok(DeliveryAnswer::Auth(seq, verdict))
        }
        _ => decode_verdict(bytes).map(|(seq, v)| DeliveryAnswer::Delivery(seq, v)),
    }
}

/// Reads one smtp → delivery frame: its kind and its bytes (at most `max`). `Ok(None)` is
/// a clean end of stream between frames.
pub fn read_kinded(r: &mut impl Read, max: usize) -> io::Result<Option<(u8, Vec<u8>)>> {
    let Some(word) = read_word(r)? else { return Ok(None) };
    let word = u32::from_be_bytes(word);
    let (kind, len) = ((word >> 24) as u8, (word & 0x00ff_ffff) as usize);
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, FrameError::TooLong(len)));
    }
    let mut buf = vec![0; len];
    if let Err(e) = r.read_exact(&mut buf) {
        buf.zeroize();
        return Err(e);
    }
    Ok(Some((kind, buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            seq: 7,
            msgid: 0x64f3_eab9,
            origin: Origin::Tcp("::1".parse().unwrap()),
            tls: true,
            tag: Some("MX".into()),
            auth: None,
            mail_from: String::new(),
            rcpts: vec!["joseph@test".into(), "alice@test".into()],
            received: b"Received: from x\n".to_vec(),
            body_len: 12,
            helo: "client.example".into(),
            rdns: Some("client.test".into()),
        }
    }

    #[test]
    fn heads_and_verdicts_round_trip() {
        let mut out = Vec::new();
        encode_head(&head(), &mut out);
        let frame = read_frame(&mut &out[..], MAX_HEAD).unwrap().unwrap();
        assert_eq!(decode_head(&frame), Ok(head()));
        let mut v = Vec::new();
        encode_verdict(9, &DeliveryVerdict::TempFail("disk full".into()), &mut v);
        encode_verdict(10, &DeliveryVerdict::Ok, &mut v);
        let mut r = &v[..];
        let a = read_frame(&mut r, MAX_SMALL).unwrap().unwrap();
        let b = read_frame(&mut r, MAX_SMALL).unwrap().unwrap();
        assert_eq!(decode_verdict(&a), Ok((9, DeliveryVerdict::TempFail("disk full".into()))));
        assert_eq!(decode_verdict(&b), Ok((10, DeliveryVerdict::Ok)));
        assert!(read_frame(&mut r, MAX_SMALL).unwrap().is_none());
    }

    #[test]
    fn every_truncation_and_forgery_is_refused() {
        let mut out = Vec::new();
        encode_head(&head(), &mut out);
        let full = &out[4..];
        for n in 0..full.len() {
            assert!(decode_head(&full[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        let mut longer = full.to_vec();
        longer.push(0);
        assert!(decode_head(&longer).is_err());
        let mut bad_origin = full.to_vec();
        bad_origin[12] = 5;
        assert_eq!(decode_head(&bad_origin), Err(FrameError::Bad("origin")));
        // A length past the cap is refused before anything is allocated for it.
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &huge[..], MAX_HEAD).is_err());
        assert!(read_frame(&mut &out[..10], MAX_HEAD).is_err());
    }

    fn ask() -> AuthAsk {
        AuthAsk {
            seq: 3,
            origin: Origin::Tcp("192.0.2.7".parse().unwrap()),
            table: Some("creds".into()),
            user: "joseph".into(),
            password: Secret::new(b"s3cret pass".to_vec()),
        }
    }

    #[test]
    fn logins_share_the_link_with_messages() {
        let mut out = Vec::new();
        encode_head(&head(), &mut out);
        encode_auth_ask(&ask(), &mut out);
        let mut r = &out[..];
        let (k, a) = read_kinded(&mut r, MAX_HEAD).unwrap().unwrap();
        assert_eq!((k, decode_head(&a)), (KIND_HEAD, Ok(head())));
        let (k, b) = read_kinded(&mut r, MAX_HEAD).unwrap().unwrap();
        assert_eq!((k, decode_auth_ask(&b)), (KIND_AUTH, Ok(ask())));
        for n in 0..b.len() {
            assert!(decode_auth_ask(&b[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        let mut v = Vec::new();
        encode_verdict(9, &DeliveryVerdict::PermFail("no".into()), &mut v);
        encode_auth_verdict(3, AuthVerdict::Blocked, &mut v);
        encode_auth_verdict(4, AuthVerdict::Ok, &mut v);
        let mut r = &v[..];
        let mut next = || decode_answer(&read_frame(&mut r, MAX_SMALL).unwrap().unwrap());
        assert_eq!(next(), Ok(DeliveryAnswer::Delivery(9, DeliveryVerdict::PermFail("no".into()))));
        assert_eq!(next(), Ok(DeliveryAnswer::Auth(3, AuthVerdict::Blocked)));
        assert_eq!(next(), Ok(DeliveryAnswer::Auth(4, AuthVerdict::Ok)));
        let mut bad = v[..13].to_vec();
        bad[12] = 16 + 9;
        assert!(decode_answer(&bad[4..]).is_err());
    }

    #[test]
    fn lookups_round_trip_and_refuse_forgeries() {
        let ask = LookupAsk {
            seq: 11,
            question: LookupQuestion::Sender { table: "senders".into(), masquerade: true },
            origin: Origin::Tcp("192.0.2.7".parse().unwrap()),
            tls: true,
            tag: None,
            auth: Some("joseph".into()),
            mail_from: "joseph@example.org".into(),
            helo: "c.example".into(),
            rdns: None,
        };
        let rcpt = LookupAsk { seq: 12, question: LookupQuestion::Rcpt("a@b".into()), tls: false, ..ask.clone() };
        let local = "::1".parse().unwrap();
        let host =
            LookupAsk { seq: 13, question: LookupQuestion::Hostname { table: "names".into(), local }, ..ask.clone() };
        let question = LookupQuestion::FilterTable {
            table: "bad".into(),
            regex: true,
            kind: LookupKind::MailAddr,
            key: "x@y".into(),
        };
        let filter = LookupAsk { seq: 14, question, ..ask.clone() };
        let mut out = Vec::new();
        encode_lookup_ask(&ask, &mut out);
        encode_lookup_ask(&rcpt, &mut out);
        encode_lookup_ask(&host, &mut out);
        encode_lookup_ask(&filter, &mut out);
        let mut r = &out[..];
        for want in [&ask, &rcpt, &host, &filter] {
            let (k, b) = read_kinded(&mut r, MAX_HEAD).unwrap().unwrap();
            assert_eq!((k, decode_lookup_ask(&b).as_ref()), (KIND_LOOKUP, Ok(want)));
            for n in 0..b.len() {
                assert!(decode_lookup_ask(&b[..n]).is_err(), "prefix of {n} bytes accepted");
            }
        }
        let mut v = Vec::new();
        let mut verdicts = LOOKUP_VERDICTS.to_vec();
        verdicts.push(LookupVerdict::Name("mx-1.example.org".into()));
        for (i, verdict) in verdicts.iter().enumerate() {
            encode_lookup_verdict(i as u64, verdict.clone(), &mut v);
        }
        encode_auth_verdict(99, AuthVerdict::Ok, &mut v);
        let mut r = &v[..];
        for (i, verdict) in verdicts.iter().enumerate() {
            let got = decode_answer(&read_frame(&mut r, MAX_SMALL).unwrap().unwrap());
            assert_eq!(got, Ok(DeliveryAnswer::Lookup(i as u64, verdict.clone())));
        }
        assert_eq!(
            decode_answer(&read_frame(&mut r, MAX_SMALL).unwrap().unwrap()),
            Ok(DeliveryAnswer::Auth(99, AuthVerdict::Ok))
        );
        let mut bad = v[..13].to_vec();
        bad[12] = 32 + 12;
        assert!(decode_answer(&bad[4..]).is_err());
        // A name that could not stand in a greeting (a line break, a space) is refused.
        for forged in ["mx\r\n250 x", "a b", ""] {
            let mut f = Vec::new();
            encode_lookup_verdict(1, LookupVerdict::Name(forged.into()), &mut f);
            assert!(decode_answer(&f[4..]).is_err(), "{forged:?}");
        }
    }
}
