//! The delivery process's side of the hand-off. It trusts nothing the smtp process sends:
//! a frame that does not decode, or a body longer than the configuration allows, ends the
//! link (the stream cannot be resynchronised); a recipient that its own `match` rules and
//! resolution would not have accepted for that envelope fails the message (451) and is
//! logged. Every path, uid and gid comes from this process's own configuration.
//! Logins from the smtp process go to the checkers of [`super::auth`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::frame::{self, AuthVerdict, DeliveryVerdict, Head};
use crate::config::Config;
use crate::deliver::{DeliveryResult, Job, Mail, Pool};
use crate::envelope::{Envelope, MsgId, Target};
use crate::resolve;
use crate::rules::{self, Decision};
use crate::users::SystemUsers;

/// Room for the Received header and rounding on top of `max-message-size`.
const BODY_SLACK: u64 = 64 * 1024;

/// Serves one smtp process until it closes its end, then waits for the pool to finish.
pub fn serve(stream: UnixStream, config: &Arc<Config>, pool: Pool) {
    let (vtx, vrx) = crossbeam_channel::unbounded::<(u64, DeliveryVerdict)>();
    let (atx, arx) = crossbeam_channel::unbounded::<(u64, AuthVerdict)>();
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return log::error!("delivery: {e}"),
    };
    let writer = std::thread::Builder::new().name("verdicts".into()).spawn(move || write_verdicts(writer, &vrx, &arx));
    let checker = super::auth::Checker::start(Arc::clone(config), atx);
    // Buffered: a small message's length, head and body usually come in one read.
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, stream);
    // Bodies go back here when their messages are done, for the next ones to fill.
    let buffers = crate::buffers::Buffers::new();
    loop {
        match next_message(&mut reader, config, &buffers) {
            Ok(Some(SmtpFrame::Auth(ask))) => checker.ask(ask),
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
                        let tx = vtx.clone();
                        let done = Box::new(move |o: DeliveryResult| drop(tx.send((seq, verdict(&o)))));
                        pool.submit(Job { mail: Arc::new(mail), targets, done });
                    }
                    Err(why) => {
                        log::warn!("delivery msgid={:08x} refused from the smtp process: {why}", head.msgid);
                        let verdict = if why.permanent {
                            DeliveryVerdict::PermFail("recipient loops through ~/.forward files".into())
                        } else {
                            DeliveryVerdict::TempFail("recipient not accepted by delivery".into())
                        };
                        let _ = vtx.send((seq, verdict));
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
    pool.shutdown();
    drop(vtx);
    drop(checker);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

/// What the smtp process sends: a message, or a login to check.
enum SmtpFrame {
    Message(Head, Vec<u8>),
    Auth(frame::AuthAsk),
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
            if !out.contains(&t) {
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
/// in one write, until both channels are closed.
fn write_verdicts(mut w: UnixStream, rx: &Receiver<(u64, DeliveryVerdict)>, logins: &Receiver<(u64, AuthVerdict)>) {
    let mut buf = Vec::new();
    let (never_m, never_a) = (crossbeam_channel::never(), crossbeam_channel::never());
    let (mut messages_open, mut logins_open) = (true, true);
    while messages_open || logins_open {
        buf.clear();
        let (m, a) = (if messages_open { rx } else { &never_m }, if logins_open { logins } else { &never_a });
        crossbeam_channel::select! {
            recv(m) -> got => match got {
                Ok((seq, v)) => frame::encode_verdict(seq, &v, &mut buf),
                Err(_) => messages_open = false,
            },
            recv(a) -> got => match got {
                Ok((seq, v)) => frame::encode_auth_verdict(seq, v, &mut buf),
                Err(_) => logins_open = false,
            },
        }
        while let Ok((seq, v)) = rx.try_recv() {
            frame::encode_verdict(seq, &v, &mut buf);
        }
        while let Ok((seq, v)) = logins.try_recv() {
            frame::encode_auth_verdict(seq, v, &mut buf);
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = w.write_all(&buf) {
            log::warn!("delivery: verdicts not sent, the smtp process is gone: {e}");
            return;
        }
    }
}
