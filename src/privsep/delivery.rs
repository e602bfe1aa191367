//! The delivery process's side of the hand-off. It trusts nothing the smtp process sends:
//! a frame that does not decode, or a body longer than the configuration allows, ends the
//! link (the stream cannot be resynchronised); a recipient that its own `match` rules and
//! resolution would not have accepted for that envelope fails the message (451) and is
//! logged. Every path, uid and gid comes from this process's own configuration.
//! Logins from the smtp process go to the checkers of [`super::auth`], questions at RCPT
//! and MAIL to the threads of [`super::lookup`]. At commit, a proc table is asked on the
//! link's reader thread (only a configuration with proc tables waits there).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use super::frame::{self, AuthVerdict, DeliveryVerdict, Head, LookupVerdict};
use crate::config::Config;
use crate::deliver::{BatchEnd, DeliveryResult, Job, Mail, Pool};
use crate::envelope::{Envelope, MsgId, Target};
use crate::resolve;
use crate::rules::{self, Decision};
use crate::users::SystemUsers;

/// Room for the Received header and rounding on top of `max-message-size`.
const BODY_SLACK: u64 = 64 * 1024;

/// Most links one smtp process may hand over (one per event loop).
const MAX_LINKS: usize = 64;

/// Most messages a link's reader holds before handing them to the pool.
const MAX_HELD_JOBS: usize = 64;

/// What the readers of one smtp process's links share.
struct Shared {
    config: Arc<Config>,
    pool: Pool,
    checker: super::auth::Checker,
    lookups: super::lookup::Lookups,
    /// Which link each login or question came on (sequence numbers are unique across an
    /// smtp process's links; a forged duplicate only misroutes that process's own answer).
    logins: Arc<Logins>,
    /// The write ends of the links, by index; 0 is the first link.
    writers: Arc<Writers>,
}

type Logins = Mutex<HashMap<u64, usize>>;
type Writers = Mutex<Vec<Arc<LinkOut>>>;

/// A link's write end. Message verdicts are held until their delivery batch ends
/// ([`BatchEnd`]), then sent in one write by the delivery thread itself: no thread between
/// the group commit and the loop that waits for it.
struct LinkOut(Mutex<Out>);

struct Out {
    /// `None` once a write failed: the smtp process is gone.
    stream: Option<UnixStream>,
    held: Vec<u8>,
}

impl LinkOut {
    fn new(stream: UnixStream) -> Arc<LinkOut> {
        Arc::new(LinkOut(Mutex::new(Out { stream: Some(stream), held: Vec::new() })))
    }

    fn hold(&self, seq: u64, v: &DeliveryVerdict) {
        if let Ok(mut out) = self.0.lock() {
            frame::encode_verdict(seq, v, &mut out.held);
        }
    }

    /// Sends what `encode` writes, with whatever is held.
    fn send(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(mut out) = self.0.lock() {
            encode(&mut out.held);
            out.flush();
        }
    }
}

impl Out {
    fn flush(&mut self) {
        if self.held.is_empty() {
            return;
        }
        if let Some(w) = &mut self.stream {
            if let Err(e) = w.write_all(&self.held) {
                log::warn!("delivery: verdicts not sent, the smtp process is gone: {e}");
                self.stream = None;
            }
        }
        self.held.clear();
    }
}

impl BatchEnd for LinkOut {
    fn batch_end(&self) {
        self.send(|_| {});
    }
}

/// Serves one smtp process until it closes its links, then waits for the pool to finish.
/// The first link may carry messages itself, or hand over the event loops' own links
/// (`link.rs`), each then read by a thread of its own.
pub fn serve(stream: UnixStream, config: &Arc<Config>, pool: Pool) {
    let (atx, arx) = crossbeam_channel::unbounded::<(u64, AuthVerdict)>();
    let (ltx, lrx) = crossbeam_channel::unbounded::<(u64, LookupVerdict)>();
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return log::error!("delivery: {e}"),
    };
    let shared = Arc::new(Shared {
        config: Arc::clone(config),
        pool,
        checker: super::auth::Checker::start(Arc::clone(config), atx),
        lookups: super::lookup::Lookups::start(config, ltx),
        logins: Arc::default(),
        writers: Arc::new(Mutex::new(vec![LinkOut::new(writer)])),
    });
    // Not `shared` itself: its senders must close when the readers and the pool are done.
    let (logins, writers) = (Arc::clone(&shared.logins), Arc::clone(&shared.writers));
    let writer = std::thread::Builder::new()
        .name("verdicts".into())
        .spawn(move || write_verdicts(&writers, &logins, &arx, &lrx));
    let mut readers = Vec::new();
    let mut first = std::io::BufReader::with_capacity(64 * 1024, super::link::FdReader::new(stream));
    read_link(0, &mut first, &shared, &mut |fds| {
        for fd in fds {
            if let Some(r) = adopt_link(fd, &shared, readers.len()) {
                readers.push(r);
            }
        }
    });
    for r in readers {
        let _ = r.join();
    }
    match Arc::try_unwrap(shared) {
        Ok(shared) => {
            let Shared { pool, checker, lookups, .. } = shared;
            pool.shutdown();
            drop((checker, lookups));
        }
        Err(_) => log::error!("delivery: a link reader is still running"),
    }
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

/// Starts the reader of one loop's link, if `fd` is a Unix stream socket and there is room.
fn adopt_link(fd: OwnedFd, shared: &Arc<Shared>, adopted: usize) -> Option<std::thread::JoinHandle<()>> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt::SockType, SockType as T, UnixAddr};
    let is_stream = matches!(getsockopt(&fd, SockType), Ok(T::Stream));
    let is_unix = getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok();
    if !is_stream || !is_unix || adopted >= MAX_LINKS {
        log::error!("delivery: refused a link from the smtp process (not a Unix stream, or too many)");
        return None;
    }
    let stream = UnixStream::from(fd);
    let writer = stream.try_clone().ok()?;
    let index = {
        let mut w = shared.writers.lock().ok()?;
        w.push(LinkOut::new(writer));
        w.len() - 1
    };
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new().name(format!("link-{index}")).spawn(move || {
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, stream);
        read_link(index, &mut reader, &s, &mut |_| log::error!("delivery: links frame on a loop's link, ignored"));
    });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            log::error!("delivery: cannot start a link reader: {e}");
            None
        }
    }
}

/// Takes messages and logins from link `index` until it closes or sends what it may not.
fn read_link<R: Read + LinkRead>(index: usize, reader: &mut R, shared: &Shared, links: &mut dyn FnMut(Vec<OwnedFd>)) {
    let config = &shared.config;
    let Some(out) = shared.writers.lock().ok().and_then(|w| w.get(index).cloned()) else { return };
    // Bodies go back here when their messages are done, for the next ones to fill.
    let buffers = crate::buffers::Buffers::new();
    // The messages of one read (a loop's turn) go to the pool together, so that one
    // delivery thread commits them as one batch. Sent before a read that may block; a
    // frame cut by the socket's buffer is finished first, as the loop is writing it.
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        if reader.buffered() == 0 || jobs.len() >= MAX_HELD_JOBS {
            shared.pool.submit_all(std::mem::take(&mut jobs));
        }
        match next_message(reader, config, &buffers) {
            Ok(Some(SmtpFrame::Links)) => links(reader.take_fds()),
            Ok(Some(SmtpFrame::Auth(ask))) => {
                if let Ok(mut l) = shared.logins.lock() {
                    l.insert(ask.seq, index);
                }
                shared.checker.ask(ask);
            }
            Ok(Some(SmtpFrame::Lookup(ask))) => {
                if let Ok(mut l) = shared.logins.lock() {
                    l.insert(ask.seq, index);
                }
                shared.lookups.ask(ask);
            }
            Ok(Some(SmtpFrame::Message(head, body))) => {
                let seq = head.seq;
                match targets(config, &head) {
                    Ok(targets) => {
                        let mail = Mail {
                            id: MsgId(head.msgid),
                            return_path: head.mail_from,
                            received: head.received,
                            body,
                            recycle: Some(buffers.clone()),
                        };
                        let link = Arc::clone(&out);
                        let done = Box::new(move |o: DeliveryResult| link.hold(seq, &verdict(&o)));
                        let batch_end: Arc<dyn BatchEnd> = out.clone();
                        jobs.push(Job { mail: Arc::new(mail), targets, done, batch_end: Some(batch_end) });
                    }
                    Err(why) => {
                        log::warn!("delivery msgid={:08x} refused from the smtp process: {why}", head.msgid);
                        let verdict = if why.permanent {
                            DeliveryVerdict::PermFail("recipient loops through ~/.forward files".into())
                        } else {
                            DeliveryVerdict::TempFail("recipient not accepted by delivery".into())
                        };
                        out.send(|b| frame::encode_verdict(seq, &verdict, b));
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::error!("delivery: refused input from the smtp process, closing the link: {e}");
                break;
            }
        }
    }
    shared.pool.submit_all(jobs);
    // Whatever came with descriptors we did not ask for is closed here.
    drop(reader.take_fds());
}

/// A link's buffered reader.
trait LinkRead {
    /// Descriptors that came with the bytes read (only the first link takes any).
    fn take_fds(&mut self) -> Vec<OwnedFd>;
    /// Bytes read and not yet taken: none, and the next frame needs a read that may block.
    fn buffered(&self) -> usize;
}

impl LinkRead for std::io::BufReader<super::link::FdReader> {
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.get_mut().received)
    }

    fn buffered(&self) -> usize {
        self.buffer().len()
    }
}

impl LinkRead for std::io::BufReader<UnixStream> {
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        Vec::new()
    }

    fn buffered(&self) -> usize {
        self.buffer().len()
    }
}

/// What the smtp process sends: a message, or a login to check.
enum SmtpFrame {
    Message(Head, Vec<u8>),
    Auth(frame::AuthAsk),
    /// A question at RCPT or MAIL.
    Lookup(frame::LookupAsk),
    /// The event loops' own links (their descriptors came with it).
    Links,
}

fn next_message(
    r: &mut impl Read,
    config: &Config,
    buffers: &crate::buffers::Buffers,
) -> std::io::Result<Option<SmtpFrame>> {
    let Some((kind, mut bytes)) = frame::read_kinded(r, frame::MAX_HEAD)? else {
        return Ok(None);
    };
    if kind == frame::KIND_AUTH {
        let ask = frame::decode_auth_ask(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        let ask = ask.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        return Ok(Some(SmtpFrame::Auth(ask)));
    }
    if kind == frame::KIND_LOOKUP {
        let ask =
            frame::decode_lookup_ask(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        return Ok(Some(SmtpFrame::Lookup(ask)));
    }
    if kind == frame::KIND_LINKS {
        return Ok(Some(SmtpFrame::Links));
    }
    if kind != frame::KIND_HEAD {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, frame::FrameError::Bad("frame kind")));
    }
    let head = frame::decode_head(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if head.body_len > config.max_message_size.saturating_add(BODY_SLACK) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("body of {} bytes", head.body_len)));
    }
    // A buffer a finished message gave back (`Mail`'s drop), so steady traffic reuses them.
    let mut body = buffers.take();
    // Bounded by the check above.
    body.reserve(usize::try_from(head.body_len).unwrap_or(0));
    r.take(head.body_len).read_to_end(&mut body)?;
    if body.len() as u64 != head.body_len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(SmtpFrame::Message(head, body)))
}

/// Why the delivery process does not take a message: what a session would have refused
/// (4xx, the configuration may have changed), or a ~/.forward loop, which only this side
/// can see and which retrying will not mend (5xx).
#[derive(Debug)]
pub struct Unaccepted {
    pub why: String,
    pub permanent: bool,
}

impl std::fmt::Display for Unaccepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl From<String> for Unaccepted {
    fn from(why: String) -> Unaccepted {
        Unaccepted { why, permanent: false }
    }
}

/// Decides every recipient again, as a session of this envelope would have, and returns
/// the distinct targets; the first recipient a real session would have refused fails all.
pub fn targets(config: &Config, head: &Head) -> Result<Vec<Target>, Unaccepted> {
    if head.rcpts.is_empty() {
        return Err(String::from("no recipient").into());
    }
    let mut out: Vec<Target> = Vec::new();
    for rcpt in &head.rcpts {
        let decoded = crate::srs::reverse(config, rcpt).map_err(|e| format!("<{rcpt}>: {e}"))?;
        let rcpt = decoded.as_deref().unwrap_or(rcpt);
        let env = Envelope {
            origin: &head.origin,
            rdns: head.rdns.as_deref(),
            tag: head.tag.as_deref(),
            tls: head.tls,
            auth: head.auth.as_deref(),
            mail_from: &head.mail_from,
            rcpt,
            helo: &head.helo,
        };
        let action = match rules::try_decide(config, &env) {
            Ok(Decision::Deliver(action)) => action,
            Ok(Decision::Reject | Decision::NoMatch) => return Err(format!("<{rcpt}>: no rule accepts it").into()),
            Err(e) => return Err(format!("<{rcpt}>: {e}").into()),
        };
        // Here (root), unlike at RCPT, each local user's ~/.forward is read.
        let found = resolve::resolve_delivering(config, action, &env, &SystemUsers).map_err(|e| Unaccepted {
            why: format!("<{rcpt}>: {e}"),
            permanent: matches!(e, resolve::ResolveError::Loop(_)),
        })?;
        for t in found {
            if !out.iter().any(|o| o.same_place(&t)) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

fn verdict(o: &DeliveryResult) -> DeliveryVerdict {
    match o {
        DeliveryResult::Ok => DeliveryVerdict::Ok,
        DeliveryResult::TempFail(c) => DeliveryVerdict::TempFail(c.to_string()),
        DeliveryResult::PermFail(c) => DeliveryVerdict::PermFail(c.to_string()),
    }
}

/// Writes the answers to logins and questions as they come, until both channels close.
fn write_verdicts(
    writers: &Writers,
    login_links: &Logins,
    logins: &Receiver<(u64, AuthVerdict)>,
    lookups: &Receiver<(u64, LookupVerdict)>,
) {
    let link_of = |seq: u64| {
        let index = login_links.lock().ok().and_then(|mut l| l.remove(&seq)).unwrap_or(0);
        writers.lock().ok().and_then(|w| w.get(index).cloned())
    };
    let (never_a, never_l) = (crossbeam_channel::never(), crossbeam_channel::never());
    let (mut logins_open, mut lookups_open) = (true, true);
    while logins_open || lookups_open {
        let (a, l) = (if logins_open { logins } else { &never_a }, if lookups_open { lookups } else { &never_l });
        crossbeam_channel::select! {
            recv(a) -> got => match got {
                Ok((seq, v)) => if let Some(link) = link_of(seq) {
                    link.send(|b| frame::encode_auth_verdict(seq, v, b));
                },
                Err(_) => logins_open = false,
            },
            recv(l) -> got => match got {
                Ok((seq, v)) => if let Some(link) = link_of(seq) {
                    link.send(|b| frame::encode_lookup_verdict(seq, v, b));
                },
                Err(_) => lookups_open = false,
            },
        }
    }
}
