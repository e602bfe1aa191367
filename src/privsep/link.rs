//! The smtp process's end of the hand-off to delivery: the loops call [`Link::submit`]
//! with a message's envelope, Received header and body; a writer thread sends each as one
//! frame (the body is written from the loop's buffer, never copied), a reader thread takes
//! the batched verdicts and calls each message's `done`. If the delivery process goes away,
//! every waiting message and every later one gets a temporary failure (451): the client
//! retries, nothing that got a 250 depends on this process.
//!
//! Logins go the same way ([`Link::check_auth`]): delivery checks the password and answers
//! on the same stream; a lost link answers `TempFail` (454).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use zeroize::Zeroize;

use super::frame::{self, AuthAsk, AuthVerdict, DeliveryAnswer, DeliveryVerdict, Head};
use crate::buffers::Buffers;

type Done = Box<dyn FnOnce(DeliveryVerdict) + Send>;
type AuthDone = Box<dyn FnOnce(AuthVerdict) + Send>;
type AuthPending = Arc<Mutex<HashMap<u64, AuthDone>>>;

struct Outgoing {
    head: Vec<u8>,
    body: Vec<u8>,
    /// The head holds a password: zero it once sent.
    wipe: bool,
}

pub struct Link {
    tx: Sender<Outgoing>,
    pending: Arc<Mutex<HashMap<u64, Done>>>,
    auth_pending: AuthPending,
    seq: AtomicU64,
    lost: Arc<AtomicBool>,
    /// Bodies go back here once written, for the sessions' next DATA.
    buffers: Buffers,
}

impl Link {
    /// Starts the writer and reader threads on `stream`, a socketpair end to delivery.
    pub fn start(stream: UnixStream) -> std::io::Result<Link> {
        let (tx, rx) = crossbeam_channel::unbounded::<Outgoing>();
        let pending: Arc<Mutex<HashMap<u64, Done>>> = Arc::default();
        let auth_pending = AuthPending::default();
        let lost = Arc::new(AtomicBool::new(false));
        let buffers = Buffers::new();
        let reader = stream.try_clone()?;
        let (p, l, b) = (Arc::clone(&pending), Arc::clone(&lost), buffers.clone());
        std::thread::Builder::new().name("link-write".into()).spawn(move || write_loop(stream, &rx, &p, &l, &b))?;
        let (p, a, l) = (Arc::clone(&pending), Arc::clone(&auth_pending), Arc::clone(&lost));
        std::thread::Builder::new().name("link-read".into()).spawn(move || read_loop(reader, &p, &a, &l))?;
        Ok(Link { tx, pending, auth_pending, seq: AtomicU64::new(1), lost, buffers })
    }

    /// The free list the sessions take body buffers from: the link gives each back once
    /// written to delivery.
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Hands one message to delivery; `done` is called once, on a link thread.
    pub fn submit(&self, mut head: Head, body: Vec<u8>, done: Done) {
        if self.lost.load(Ordering::Relaxed) {
            self.buffers.give(body);
            return done(DeliveryVerdict::TempFail("delivery process unavailable".into()));
        }
        head.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        head.body_len = body.len() as u64;
        let mut bytes = Vec::with_capacity(256 + head.received.len());
        frame::encode_head(&head, &mut bytes);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(head.seq, done);
        }
        if let Err(e) = self.tx.send(Outgoing { head: bytes, body, wipe: false }) {
            self.buffers.give(e.0.body);
            fail(&self.pending, Some(head.seq), "delivery link closed");
        }
    }

    /// Asks delivery to check a login; `done` is called once, on a link thread.
    pub fn check_auth(&self, mut ask: AuthAsk, done: AuthDone) {
        if self.lost.load(Ordering::Relaxed) {
            return done(AuthVerdict::TempFail);
        }
        ask.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(128);
        frame::encode_auth_ask(&ask, &mut bytes);
        if let Ok(mut p) = self.auth_pending.lock() {
            p.insert(ask.seq, done);
        }
        if let Err(mut e) = self.tx.send(Outgoing { head: bytes, body: Vec::new(), wipe: true }) {
            e.0.head.zeroize();
            fail_auth(&self.auth_pending);
        }
    }
}

/// Answers every waiting login `TempFail`: the link is gone.
fn fail_auth(pending: &Mutex<HashMap<u64, AuthDone>>) {
    let taken: Vec<AuthDone> = pending.lock().map(|mut p| p.drain().map(|(_, d)| d).collect()).unwrap_or_default();
    for done in taken {
        done(AuthVerdict::TempFail);
    }
}

/// Fails one waiting message (`Some(seq)`) or all of them.
fn fail(pending: &Mutex<HashMap<u64, Done>>, seq: Option<u64>, why: &str) {
    let taken: Vec<Done> = match pending.lock() {
        Ok(mut p) => match seq {
            Some(s) => p.remove(&s).into_iter().collect(),
            None => p.drain().map(|(_, d)| d).collect(),
        },
        Err(_) => Vec::new(),
    };
    for done in taken {
        done(DeliveryVerdict::TempFail(why.to_owned()));
    }
}

/// Most frames to write at once: messages that queued up while the last write ran go out
/// together, in one writev(2) when the socket takes them whole.
const MAX_BATCH: usize = 32;

/// Writes every head and body of `batch`, in order.
fn send(stream: &mut UnixStream, batch: &[Outgoing]) -> std::io::Result<()> {
    let mut all: Vec<std::io::IoSlice<'_>> =
        batch.iter().flat_map(|o| [std::io::IoSlice::new(&o.head), std::io::IoSlice::new(&o.body)]).collect();
    let mut slices = &mut all[..];
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_loop(
    mut stream: UnixStream,
    rx: &Receiver<Outgoing>,
    pending: &Mutex<HashMap<u64, Done>>,
    lost: &AtomicBool,
    buffers: &Buffers,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(out) => batch.push(out),
                Err(_) => break,
            }
        }
        let sent = send(&mut stream, &batch);
        for mut out in batch.drain(..) {
            // A login's head holds a password: zero it once written.
            if out.wipe {
                out.head.zeroize();
            }
            buffers.give(out.body);
        }
        if let Err(e) = sent {
            log::error!("delivery link: write failed: {e}");
            lost.store(true, Ordering::Relaxed);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            fail(pending, None, "delivery process unavailable");
            // Later messages are failed by `submit` or here as they come.
            for mut out in rx.iter() {
                out.head.zeroize();
                buffers.give(out.body);
                fail(pending, None, "delivery process unavailable");
            }
            return;
        }
    }
}

fn read_loop(
    stream: UnixStream,
    pending: &Mutex<HashMap<u64, Done>>,
    auth_pending: &Mutex<HashMap<u64, AuthDone>>,
    lost: &AtomicBool,
) {
    // Verdicts come several per write: read them in one go.
    let mut reader = std::io::BufReader::new(stream);
    loop {
        let frame = match frame::read_frame(&mut reader, frame::MAX_SMALL) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                log::error!("delivery link: {e}");
                break;
            }
        };
        let (seq, verdict) = match frame::decode_answer(&frame) {
            Ok(DeliveryAnswer::Delivery(seq, v)) => (seq, v),
            Ok(DeliveryAnswer::Auth(seq, v)) => {
                match auth_pending.lock().ok().and_then(|mut p| p.remove(&seq)) {
                    Some(done) => done(v),
                    None => log::warn!("delivery link: login verdict for unknown request {seq}"),
                }
                continue;
            }
            Err(e) => {
                log::error!("delivery link: refused verdict: {e}");
                break;
            }
        };
        let done = pending.lock().ok().and_then(|mut p| p.remove(&seq));
        match done {
            Some(done) => done(verdict),
            None => log::warn!("delivery link: verdict for unknown message {seq}"),
        }
    }
    log::error!("delivery process gone: waiting messages get 451");
    lost.store(true, Ordering::Relaxed);
    let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
    fail(pending, None, "delivery process unavailable");
    fail_auth(auth_pending);
}
