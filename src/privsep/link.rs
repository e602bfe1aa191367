//! The smtp process's end of the hand-off to delivery. Each event loop has a socketpair of
//! its own to the delivery process ([`LoopLink`]), registered in the loop's mio `Poll`: the
//! loop writes its messages' frames itself (everything submitted in one turn of the loop
//! goes out in one writev(2); the body is written from the session's buffer, never copied)
//! and reads the batched verdicts itself, with no thread in between. The loops' ends are
//! created here and handed to delivery over the process's first link ([`hand_over`]).
//!
//! If the delivery process goes away, every waiting message and every later one gets a
//! temporary failure (451): the client retries, nothing that got a 250 depends on this
//! process. Logins go the same way ([`LoopLink::check_auth`]); a lost link answers
//! `TempFail` (454). So do questions at RCPT and MAIL ([`LoopLink::ask`]; lost: 451).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mio::{Interest, Registry, Token};
use zeroize::Zeroize;

use super::frame::{
    self, AuthAsk, AuthVerdict, DeliveryAnswer, DeliveryVerdict, FrameError, Head, LookupAsk, LookupVerdict,
};
use crate::buffers::Buffers;

/// What came back for one waiter.
#[derive(Debug)]
pub enum Answer {
    Delivery(DeliveryVerdict),
    Auth(AuthVerdict),
    Lookup(LookupVerdict),
}

/// What a pending request is, for the answer a lost link gives it.
#[derive(Clone, Copy)]
enum Asked {
    Message,
    Login,
    Lookup,
}

struct Outgoing {
    head: Vec<u8>,
    body: Vec<u8>,
    /// The head holds a password: zero it once sent.
    wipe: bool,
}

impl Outgoing {
    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

/// Most frames in one writev(2) (two slices each).
const MAX_BATCH: usize = 32;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One loop's link to delivery. `W` is what the loop needs to find the waiting session
/// again when its answer comes.
pub struct LoopLink<W> {
    stream: mio::net::UnixStream,
    token: Token,
    /// Frames not yet written, in order; `sent` bytes of the first are already out.
    out: VecDeque<Outgoing>,
    sent: usize,
    /// WRITABLE is asked for: the socket was full.
    blocked: bool,
    inbuf: Vec<u8>,
    /// Who waits for each request, and what it asked.
    pending: HashMap<u64, (Asked, W)>,
    /// Shared by the loops of this process: delivery routes login answers by it.
    seq: Arc<AtomicU64>,
    lost: bool,
    ready: Vec<(W, Answer)>,
    /// Bodies go back here once written, for the sessions' next DATA.
    buffers: Buffers,
}

/// Socketpairs for `n` loops: the loops' ends, and the ends for delivery ([`hand_over`]).
pub fn pairs(n: usize) -> io::Result<(Vec<UnixStream>, Vec<UnixStream>)> {
    let mut ours = Vec::with_capacity(n);
    let mut theirs = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = UnixStream::pair()?;
        ours.push(a);
        theirs.push(b);
    }
    Ok((ours, theirs))
}

/// Sends the delivery ends of the loops' links over the first link, in one links frame
/// (kind [`frame::KIND_LINKS`], empty) that carries them as SCM_RIGHTS.
pub fn hand_over<F: AsRawFd>(first: &UnixStream, ends: &[F]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds: Vec<RawFd> = ends.iter().map(AsRawFd::as_raw_fd).collect();
    let word = (u32::from(frame::KIND_LINKS) << 24).to_be_bytes();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        match sendmsg::<()>(first.as_raw_fd(), &[IoSlice::new(&word)], &cmsg, MsgFlags::empty(), None) {
            Ok(4) => return Ok(()),
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The descriptors a links frame brought: whatever came as SCM_RIGHTS with the bytes read.
pub struct FdReader {
    stream: UnixStream,
    pub received: Vec<OwnedFd>,
}

impl FdReader {
    pub fn new(stream: UnixStream) -> FdReader {
        FdReader { stream, received: Vec::new() }
    }
}

/// Most descriptors taken from one read; more are closed by the kernel (MSG_CTRUNC).
const MAX_FDS: usize = 16;

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [io::IoSliceMut::new(buf)];
        loop {
            match recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(msg) => {
                    let n = msg.bytes;
                    for c in msg.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            self.received.extend(fds.into_iter().map(own));
                        }
                    }
                    return Ok(n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A descriptor that came in SCM_RIGHTS.
#[allow(unsafe_code)] // the kernel just installed it in this process for us; nothing else owns it.
fn own(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: as above: open, and owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl<W> LoopLink<W> {
    /// One loop's end of a socketpair to delivery, registered in the loop's poll as `token`.
    pub fn new(
        stream: UnixStream,
        seq: Arc<AtomicU64>,
        buffers: Buffers,
        registry: &Registry,
        token: Token,
    ) -> io::Result<LoopLink<W>> {
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::UnixStream::from_std(stream);
        registry.register(&mut stream, token, Interest::READABLE)?;
        Ok(LoopLink {
            stream,
            token,
            out: VecDeque::new(),
            sent: 0,
            blocked: false,
            inbuf: Vec::new(),
            pending: HashMap::new(),
            seq,
            lost: false,
            ready: Vec::new(),
            buffers,
        })
    }

    /// The free list the sessions take body buffers from: the link gives each back once
    /// written to delivery.
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Queues one message for delivery; its answer comes from [`LoopLink::take_ready`]. The
    /// frame goes out at the loop's next [`LoopLink::flush`].
    pub fn submit(&mut self, mut head: Head, body: Vec<u8>, waiter: W) {
        if self.lost {
            self.buffers.give(body);
            let why = "delivery process unavailable".to_owned();
            return self.ready.push((waiter, Answer::Delivery(DeliveryVerdict::TempFail(why))));
        }
        head.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        head.body_len = body.len() as u64;
        let mut bytes = Vec::with_capacity(256 + head.received.len());
        frame::encode_head(&head, &mut bytes);
        self.pending.insert(head.seq, (Asked::Message, waiter));
        self.out.push_back(Outgoing { head: bytes, body, wipe: false });
    }

    /// Queues a login for delivery to check.
    pub fn check_auth(&mut self, mut ask: AuthAsk, waiter: W) {
        if self.lost {
            return self.ready.push((waiter, Answer::Auth(AuthVerdict::TempFail)));
        }
        ask.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(128);
        frame::encode_auth_ask(&ask, &mut bytes);
        self.pending.insert(ask.seq, (Asked::Login, waiter));
        self.out.push_back(Outgoing { head: bytes, body: Vec::new(), wipe: true });
    }

    /// Queues a question at RCPT or MAIL for delivery to answer.
    pub fn ask(&mut self, mut ask: LookupAsk, waiter: W) {
        if self.lost {
            return self.ready.push((waiter, Answer::Lookup(LookupVerdict::TempFail)));
        }
        ask.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(256);
        frame::encode_lookup_ask(&ask, &mut bytes);
        self.pending.insert(ask.seq, (Asked::Lookup, waiter));
        self.out.push_back(Outgoing { head: bytes, body: Vec::new(), wipe: false });
    }

    /// Answers waiting for the loop (verdicts read, or failures of a lost link).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn take_ready(&mut self) -> Vec<(W, Answer)> {
        std::mem::take(&mut self.ready)
    }

    /// Messages and logins sent and not yet answered, or not yet sent.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Writes what the socket takes; asks the poll for WRITABLE while some is left.
    pub fn flush(&mut self, registry: &Registry) {
        if self.lost || (self.out.is_empty() && !self.blocked) {
            return;
        }
        match self.write_out() {
            Ok(()) => {}
            Err(e) => return self.lose(registry, &format!("write failed: {e}")),
        }
        let blocked = !self.out.is_empty();
        if blocked != self.blocked {
            let interest = if blocked { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if let Err(e) = registry.reregister(&mut self.stream, self.token, interest) {
                return self.lose(registry, &format!("register failed: {e}"));
            }
            self.blocked = blocked;
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * MAX_BATCH);
            let mut skip = self.sent;
            for o in self.out.iter().take(MAX_BATCH) {
                for part in [&o.head[..], &o.body[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                    } else {
                        slices.push(IoSlice::new(&part[skip..]));
                        skip = 0;
                    }
                }
            }
            let mut n = match self.stream.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            drop(slices);
            // Whole frames written go: a body back to the free list, a password zeroed.
            while let Some(first) = self.out.front() {
                let left = first.len() - self.sent;
                if n < left {
                    self.sent += n;
                    break;
                }
                n -= left;
                self.sent = 0;
                if let Some(done) = self.out.pop_front() {
                    self.recycle(done);
                }
            }
        }
        Ok(())
    }

    fn recycle(&self, mut o: Outgoing) {
        if o.wipe {
            o.head.zeroize();
        }
        self.buffers.give(o.body);
    }

    /// Reads every verdict there is (the socket is edge-triggered: until it would block).
    pub fn read(&mut self, registry: &Registry) {
        if self.lost {
            return;
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return self.lose(registry, "delivery process gone"),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.lose(registry, &format!("read failed: {e}")),
            }
            // Frames are taken as they complete: what waits here is at most one frame.
            if let Err(e) = self.take_frames() {
                return self.lose(registry, &format!("refused verdict: {e}"));
            }
        }
    }

    fn take_frames(&mut self) -> Result<(), FrameError> {
        let mut at = 0;
        let result = loop {
            let rest = &self.inbuf[at..];
            let Some(word) = rest.first_chunk::<4>() else { break Ok(()) };
            let len = u32::from_be_bytes(*word) as usize;
            if len > frame::MAX_SMALL {
                break Err(FrameError::TooLong(len));
            }
            let Some(bytes) = rest.get(4..4 + len) else { break Ok(()) };
            let answer = frame::decode_answer(bytes);
            at += 4 + len;
            let (seq, answer) = match answer {
                Ok(DeliveryAnswer::Delivery(seq, v)) => (seq, Answer::Delivery(v)),
                Ok(DeliveryAnswer::Auth(seq, v)) => (seq, Answer::Auth(v)),
                Ok(DeliveryAnswer::Lookup(seq, v)) => (seq, Answer::Lookup(v)),
                Err(e) => break Err(e),
            };
            match self.pending.remove(&seq) {
                Some((_, w)) => self.ready.push((w, answer)),
                None => log::warn!("delivery link: verdict for unknown request {seq}"),
            }
        };
        self.inbuf.drain(..at);
        result
    }

    /// The link is gone: everything waiting, and everything later, gets a temporary failure.
    fn lose(&mut self, registry: &Registry, why: &str) {
        log::error!("delivery link: {why}: waiting messages get 451");
        self.lost = true;
        let _ = registry.deregister(&mut self.stream);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        while let Some(o) = self.out.pop_front() {
            self.recycle(o);
        }
        self.inbuf = Vec::new();
        for (_, (asked, w)) in self.pending.drain() {
            let failed = match asked {
                Asked::Login => Answer::Auth(AuthVerdict::TempFail),
                Asked::Lookup => Answer::Lookup(LookupVerdict::TempFail),
                Asked::Message => Answer::Delivery(DeliveryVerdict::TempFail("delivery process unavailable".into())),
            };
            self.ready.push((w, failed));
        }
    }
}
