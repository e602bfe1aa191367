//! The delivery process's side of the hand-off. It trusts nothing the smtp process sends:
//! a frame that does not decode, or a body longer than the configuration allows, ends the
//! link (the stream cannot be resynchronised); a recipient that its own `match` rules and
//! resolution would not have accepted for that envelope fails the message (451) and is
//! logged. Every path, uid and gid comes from this process's own configuration.
//! Logins from the smtp process go to the checkers of [`super::auth`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use super::frame::{self, AuthVerdict, DeliveryVerdict, Head};
use crate::config::Config;
use crate::deliver::{DeliveryResult, Job, Mail, Pool};
use crate::envelope::{Envelope, MsgId, Target};
use crate::resolve;
use crate::rules::{self, Decision};
use crate::users::SystemUsers;

/// Room for the Received header and rounding on top of `max-message-size`.
const BODY_SLACK: u64 = 64 * 1024;

/// Most links one smtp process may hand over (one per event loop).
const MAX_LINKS: usize = 64;

/// What the readers of one smtp process's links share.
struct Shared {
    config: Arc<Config>,
    pool: Pool,
    checker: super::auth::Checker,
    /// Verdicts for the writer: the link's index, the request's sequence number.
    verdicts: Sender<(usize, u64, DeliveryVerdict)>,
    /// Which link each login came on (sequence numbers are unique across an smtp
    /// process's links; a forged duplicate only misroutes that process's own answer).
    logins: Arc<Logins>,
    /// The write ends of the links, by index; 0 is the first link.
    writers: Arc<Writers>,
}

type Logins = Mutex<HashMap<u64, usize>>;
type Writers = Mutex<Vec<Option<UnixStream>>>;

/// Serves one smtp process until it closes its links, then waits for the pool to finish.
/// The first link may carry messages itself, or hand over the event loops' own links
/// (`link.rs`), each then read by a thread of its own.
pub fn serve(stream: UnixStream, config: &Arc<Config>, pool: Pool) {
    let (vtx, vrx) = crossbeam_channel::unbounded::<(usize, u64, DeliveryVerdict)>();
    let (atx, arx) = crossbeam_channel::unbounded::<(u64, AuthVerdict)>();
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return log::error!("delivery: {e}"),
    };
    let shared = Arc::new(Shared {
        config: Arc::clone(config),
        pool,
        checker: super::auth::Checker::start(Arc::clone(config), atx),
        verdicts: vtx,
        logins: Arc::default(),
        writers: Arc::new(Mutex::new(vec![Some(writer)])),
    });
    // Not `shared` itself: its senders must close when the readers and the pool are done.
    let (logins, writers) = (Arc::clone(&shared.logins), Arc::clone(&shared.writers));
    let writer = std::thread::Builder::new()
        .name("verdicts".into())
        .spawn(move || write_verdicts(&writers, &logins, &vrx, &arx));
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
            let Shared { pool, checker, verdicts, .. } = shared;
            pool.shutdown();
            drop((verdicts, checker));
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
        w.push(Some(writer));
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
fn read_link<R: Read + TakeFds>(index: usize, reader: &mut R, shared: &Shared, links: &mut dyn FnMut(Vec<OwnedFd>)) {
    let config = &shared.config;
    // Bodies go back here when their messages are done, for the next ones to fill.
    let buffers = crate::buffers::Buffers::new();
    loop {
        match next_message(reader, config, &buffers) {
            Ok(Some(SmtpFrame::Links)) => links(reader.take_fds()),
            Ok(Some(SmtpFrame::Auth(ask))) => {
                if let Ok(mut l) = shared.logins.lock() {
                    l.insert(ask.seq, index);
                }
                shared.checker.ask(ask);
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
                        let tx = shared.verdicts.clone();
                        let done = Box::new(move |o: DeliveryResult| drop(tx.send((index, seq, verdict(&o)))));
                        shared.pool.submit(Job { mail: Arc::new(mail), targets, done });
                    }
                    Err(why) => {
                        log::warn!("delivery msgid={:08x} refused from the smtp process: {why}", head.msgid);
                        let verdict = if why.permanent {
                            DeliveryVerdict::PermFail("recipient loops through ~/.forward files".into())
                        } else {
                            DeliveryVerdict::TempFail("recipient not accepted by delivery".into())
                        };
                        let _ = shared.verdicts.send((index, seq, verdict));
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
    // Whatever came with descriptors we did not ask for is closed here.
    drop(reader.take_fds());
}

/// Descriptors that came with the bytes read (only the first link takes any).
trait TakeFds {
    fn take_fds(&mut self) -> Vec<OwnedFd>;
}

impl TakeFds for std::io::BufReader<super::link::FdReader> {
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.get_mut().received)
    }
}

impl TakeFds for std::io::BufReader<UnixStream> {
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        Vec::new()
    }
}

/// What the smtp process sends: a message, or a login to check.
enum SmtpFrame {
    Message(Head, Vec<u8>),
    Auth(frame::AuthAsk),
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
        let action = match rules::decide(config, &env) {
            Decision::Deliver(action) => action,
            Decision::Reject | Decision::NoMatch => return Err(format!("<{rcpt}>: no rule accepts it").into()),
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

/// Writes verdicts (messages' and logins') as they come, every one waiting at that moment
/// in one write per link, until both channels are closed.
fn write_verdicts(
    writers: &Writers,
    login_links: &Logins,
    rx: &Receiver<(usize, u64, DeliveryVerdict)>,
    logins: &Receiver<(u64, AuthVerdict)>,
) {
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let (never_m, never_a) = (crossbeam_channel::never(), crossbeam_channel::never());
    let (mut messages_open, mut logins_open) = (true, true);
    let buf_of = |bufs: &mut Vec<Vec<u8>>, i: usize| -> usize {
        // Bounded: the readers' indexes stop at MAX_LINKS.
        if bufs.len() <= i {
            bufs.resize_with(i + 1, Vec::new);
        }
        i
    };
    let login_link = |seq: u64| login_links.lock().ok().and_then(|mut l| l.remove(&seq)).unwrap_or(0);
    while messages_open || logins_open {
        let (m, a) = (if messages_open { rx } else { &never_m }, if logins_open { logins } else { &never_a });
        crossbeam_channel::select! {
            recv(m) -> got => match got {
                Ok((i, seq, v)) => {
                    let i = buf_of(&mut bufs, i);
                    frame::encode_verdict(seq, &v, &mut bufs[i]);
                }
                Err(_) => messages_open = false,
            },
            recv(a) -> got => match got {
                Ok((seq, v)) => {
                    let i = buf_of(&mut bufs, login_link(seq));
                    frame::encode_auth_verdict(seq, v, &mut bufs[i]);
                }
                Err(_) => logins_open = false,
            },
        }
        while let Ok((i, seq, v)) = rx.try_recv() {
            let i = buf_of(&mut bufs, i);
            frame::encode_verdict(seq, &v, &mut bufs[i]);
        }
        while let Ok((seq, v)) = logins.try_recv() {
            let i = buf_of(&mut bufs, login_link(seq));
            frame::encode_auth_verdict(seq, v, &mut bufs[i]);
        }
        for (i, buf) in bufs.iter_mut().enumerate().filter(|(_, b)| !b.is_empty()) {
            let Ok(mut writers) = writers.lock() else { return };
            if let Some(Some(w)) = writers.get_mut(i) {
                if let Err(e) = w.write_all(buf) {
                    log::warn!("delivery: verdicts not sent, the smtp process is gone: {e}");
                    writers[i] = None;
                }
            }
            buf.clear();
        }
    }
}
