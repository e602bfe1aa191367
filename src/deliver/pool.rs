//! The delivery threads and their group commit. A thread takes one job, then whatever else
//! is waiting (up to `MAX_BATCH`), and:
//! 1. writes every copy of every job into its tmp/ (a job whose copy fails is undone whole);
//! 2. makes the batch durable: one syncfs(2) per file system on Linux, one fsync(2) per file
//!    elsewhere;
//! 3. renames every copy into new/ and fsyncs each distinct new/ directory once;
//! 4. reports each job's verdict, then tells each distinct `batch_end` of the batch once.
//!
//! So the fsync latency is paid once per batch, not once per message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::maildir::{self, Staged};
use super::mbox::{self, Appended};
use super::{Cause, DeliveryResult, Job, Mail};
use crate::envelope::Target;
use crate::headers;
use crate::queue;

/// Jobs per batch: bounds the latency a batch adds and the descriptors it holds open.
const MAX_BATCH: usize = 128;

pub struct Pool {
    /// Jobs come in groups ([`Pool::submit_all`]), each taken whole by one thread.
    tx: Option<Sender<Vec<Job>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Where relay targets go: the queue directory, and who to tell when something is queued.
#[derive(Clone)]
pub struct QueueHook {
    pub dir: PathBuf,
    pub notify: Sender<()>,
    /// Owner of queue files: the relay process's user, which reads and removes them.
    pub owner: Option<crate::envelope::Owner>,
}

struct Ctx {
    host: Arc<str>,
    queue: Option<QueueHook>,
}

impl Pool {
    pub fn start(threads: usize, hostname: &str, queue: Option<QueueHook>) -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<Job>>();
        let ctx = Arc::new(Ctx { host: maildir::safe_host(hostname).into(), queue });
        let threads = (0..threads.max(1))
            .filter_map(|i| {
                let (rx, ctx) = (rx.clone(), Arc::clone(&ctx));
                std::thread::Builder::new().name(format!("deliver-{i}")).spawn(move || run(&rx, &ctx)).ok()
            })
            .collect();
        Pool { tx: Some(tx), threads }
    }

    /// Queues jobs that one thread takes together, in one batch (more if it has room). The
    /// channel is unbounded, but each session has at most one message in flight, so what
    /// waits here is bounded by the number of sessions.
    pub fn submit_all(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let refused = match &self.tx {
            Some(tx) => tx.send(jobs).err().map(|e| e.0),
            None => Some(jobs),
        };
        for job in refused.into_iter().flatten() {
            (job.done)(DeliveryResult::TempFail(Cause::new("submit", "", std::io::Error::other("delivery stopped"))));
        }
    }

    /// Finishes every queued job, then joins the threads.
    pub fn shutdown(mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run(rx: &Receiver<Vec<Job>>, ctx: &Ctx) {
    while let Ok(mut batch) = rx.recv() {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(jobs) => batch.extend(jobs),
                Err(_) => break,
            }
        }
        deliver_batch(batch, ctx);
    }
}

/// One job's progress through the batch.
struct Pending {
    job: Job,
    /// One of the staged copies is a queue file (relay targets).
    queued: bool,
    staged: Vec<Staged>,
    appended: Vec<Appended>,
    failed: Option<Cause>,
}

impl Pending {
    fn fail(&mut self, cause: Cause) {
        for s in self.staged.drain(..) {
            s.discard();
        }
        for a in &mut self.appended {
            a.rollback();
        }
        self.failed.get_or_insert(cause);
    }
}

fn deliver_batch(batch: Vec<Job>, ctx: &Ctx) {
    let mut opened = maildir::Opened::default();
    let mut pending: Vec<Pending> = batch.into_iter().map(|job| stage_job(job, ctx, &mut opened)).collect();
    make_durable(&mut pending);
    publish(&mut pending);
    let queued = pending.iter().any(|p| p.failed.is_none() && p.queued);
    if let (true, Some(q)) = (queued, &ctx.queue) {
        let _ = q.notify.try_send(());
    }
    let mut ends: Vec<Arc<dyn super::BatchEnd>> = Vec::new();
    for p in pending {
        if let Some(end) = &p.job.batch_end {
            if !ends.iter().any(|e| Arc::ptr_eq(e, end)) {
                ends.push(Arc::clone(end));
            }
        }
        let outcome = match p.failed {
            None => DeliveryResult::Ok,
            Some(cause) => {
                log::warn!("delivery msgid={} failed: {cause}", p.job.mail.id);
                DeliveryResult::TempFail(cause)
            }
        };
        (p.job.done)(outcome);
    }
    for end in ends {
        end.batch_end();
    }
}

fn stage_job(job: Job, ctx: &Ctx, opened: &mut maildir::Opened) -> Pending {
    let mut p = Pending { staged: Vec::new(), appended: Vec::new(), failed: None, queued: false, job };
    let mail: &Mail = &p.job.mail;
    let return_path = headers::return_path(&mail.return_path);
    let mut relay = Vec::new();
    let mut relay_orig = Vec::new();
    let mut mda = Vec::new();
    for target in &p.job.targets {
        let result = match target {
            Target::Maildir { dir, owner, delivered_to } => {
                let dt = headers::delivered_to(delivered_to);
                opened
                    .stage(dir, *owner, &[&return_path, &dt, &mail.received, &mail.body], &ctx.host)
                    .map(|s| p.staged.push(s))
            }
            Target::Mbox { path, owner, delivered_to } => {
                let dt = headers::delivered_to(delivered_to);
                mbox::append(path, *owner, &mail.return_path, &[&return_path, &dt, &mail.received, &mail.body])
                    .map(|a| p.appended.push(a))
            }
            Target::Relay { action, rcpt, orig_rcpt } => {
                relay.push((action.clone(), rcpt.clone()));
                relay_orig.push(Some(orig_rcpt.clone()));
                Ok(())
            }
            Target::Mda { action, rcpt } => {
                mda.push((action.clone(), rcpt.clone()));
                Ok(())
            }
        };
        if let Err(cause) = result {
            p.fail(cause);
            return p;
        }
    }
    if !relay.is_empty() {
        let Some(queue) = &ctx.queue else {
            p.fail(Cause::new("relay", "", std::io::Error::other("no relay queue")));
            return p;
        };
        // One queue file per message holds every relayed recipient (one envelope each).
        let file = match QueueFile::new(mail, relay, relay_orig) {
            Ok(f) => f,
            Err(cause) => {
                p.fail(cause);
                return p;
            }
        };
        match opened.stage(&queue.dir, queue.owner, &file.parts(mail), &ctx.host) {
            Ok(s) => {
                p.staged.push(s);
                p.queued = true;
            }
            Err(cause) => p.fail(cause),
        }
    }
    if !mda.is_empty() && p.failed.is_none() {
        // Beside the relay queue, owned by root: the parent runs these commands.
        let mail = Arc::clone(&p.job.mail);
        let Some(spool) = ctx.queue.as_ref().and_then(|q| q.dir.parent()) else {
            p.fail(Cause::new("mda", "", std::io::Error::other("no mda queue")));
            return p;
        };
        let file = match QueueFile::new(&mail, mda, Vec::new()) {
            Ok(f) => f,
            Err(cause) => {
                p.fail(cause);
                return p;
            }
        };
        match opened.stage(&crate::spool::mda_dir(spool), None, &file.parts(&mail), &ctx.host) {
            Ok(s) => p.staged.push(s),
            Err(cause) => p.fail(cause),
        }
    }
    p
}

/// A relay or mda queue file: its envelope (the message's id and sender, now, and
/// `(action, recipient)` pairs), then the Received header and the body; or all of it
/// sealed (`queue compression`, `queue encryption`).
struct QueueFile {
    head: Vec<u8>,
    sealed: Option<Vec<u8>>,
}

impl QueueFile {
    fn new(mail: &Mail, rcpts: Vec<(String, String)>, orig_rcpts: Vec<Option<String>>) -> Result<QueueFile, Cause> {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (id, sender) = (mail.id.to_string(), mail.return_path.clone());
        let envelope = queue::QueuedEnvelope { id, sender, created, rcpts, orig_rcpts };
        let head = queue::encode(&envelope);
        let sealed = queue::seal::current().seal(&[&head, &mail.received, &mail.body]).transpose();
        Ok(QueueFile { sealed: sealed.map_err(|e| Cause::new("seal", "", e))?, head })
    }

    fn parts<'a>(&'a self, mail: &'a Mail) -> Vec<&'a [u8]> {
        match &self.sealed {
            Some(bytes) => vec![bytes],
            None => vec![&self.head, &mail.received, &mail.body],
        }
    }
}

/// Step 2: the data of every staged copy reaches the disk.
fn make_durable(pending: &mut [Pending]) {
    #[cfg(target_os = "linux")]
    {
        // One syncfs per file system covers every file of the batch on it.
        let mut by_dev: BTreeMap<u64, Result<(), String>> = BTreeMap::new();
        for p in pending.iter() {
            for s in &p.staged {
                by_dev.entry(s.dev()).or_insert_with(|| s.syncfs().map_err(|c| c.to_string()));
            }
        }
        for p in pending.iter_mut() {
            let err = p.staged.iter().find_map(|s| match by_dev.get(&s.dev()) {
                Some(Err(e)) => Some(Cause::new("syncfs", s.path(), std::io::Error::other(e.clone()))),
                _ => None,
            });
            if let Some(cause) = err {
                p.fail(cause);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    for p in pending.iter_mut() {
        if let Some(cause) = p.staged.iter().find_map(|s| s.fsync_file().err()) {
            p.fail(cause);
        }
    }
}

/// Step 3: rename into new/, then one fsync per distinct new/ directory.
fn publish(pending: &mut [Pending]) {
    for p in pending.iter_mut() {
        if let Some(cause) = p.staged.iter().find_map(|s| s.publish().err()) {
            // Renames within one directory practically cannot fail once the data is on disk;
            // if one does, copies already in new/ stay (the client's retry may duplicate
            // them) and the rest are removed, and the client gets a 451.
            p.fail(cause);
        }
    }
    let mut synced: BTreeMap<(u64, u64), bool> = BTreeMap::new();
    for p in pending.iter_mut() {
        let mut err = None;
        for s in &p.staged {
            let ok = *synced.entry(s.new_id()).or_insert_with(|| s.fsync_new_dir().is_ok());
            if !ok && err.is_none() {
                err = Some(Cause::new("fsync", s.path(), std::io::Error::other("directory fsync failed")));
            }
        }
        if let Some(cause) = err {
            p.failed.get_or_insert(cause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MsgId;
    use std::path::Path;
    use std::time::Duration;

    fn mail(body: &str) -> Arc<Mail> {
        Arc::new(Mail {
            id: MsgId(7),
            return_path: "a@example.org".into(),
            received: b"Received: x\n".to_vec(),
            body: body.as_bytes().to_vec(),
            recycle: None,
        })
    }

    fn maildir(dir: &Path) -> Target {
        Target::Maildir { dir: dir.to_owned(), owner: None, delivered_to: "j@example.org".into() }
    }

    fn deliver(pool: &Pool, mail: Arc<Mail>, targets: Vec<Target>) -> DeliveryResult {
        let (tx, rx) = crossbeam_channel::bounded(1);
        pool.submit_all(vec![Job { mail, targets, done: Box::new(move |o| drop(tx.send(o))), batch_end: None }]);
        rx.recv_timeout(Duration::from_secs(20)).expect("verdict")
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    }

    #[test]
    fn two_maildirs_byte_exact_and_private() {
        let t = tempfile::tempdir().unwrap();
        let pool = Pool::start(2, "host/x:y", None);
        let (a, b) = (t.path().join("a/Maildir"), t.path().join("b/Maildir"));
        assert!(matches!(
            deliver(&pool, mail("Subject: s\n\nbody\n"), vec![maildir(&a), maildir(&b)]),
            DeliveryResult::Ok
        ));
        for dir in [&a, &b] {
            let new = files(&dir.join("new"));
            assert_eq!(new.len(), 1);
            let content = std::fs::read(&new[0]).unwrap();
            assert_eq!(
                content,
                b"Return-Path: <a@example.org>\nDelivered-To: j@example.org\nReceived: x\nSubject: s\n\nbody\n"
            );
            let name = new[0].file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.ends_with(".host\\057x\\072y"), "{name}");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&new[0]).unwrap().permissions().mode() & 0o777, 0o600);
            assert!(files(&dir.join("tmp")).is_empty());
            assert!(dir.join("cur").is_dir());
        }
        pool.shutdown();
    }

    #[test]
    fn symlinked_new_is_refused_and_nothing_is_written() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("Maildir");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir_all(md.join("tmp")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, md.join("new")).unwrap();
        let pool = Pool::start(1, "h", None);
        assert!(matches!(deliver(&pool, mail("x\n"), vec![maildir(&md)]), DeliveryResult::TempFail(_)));
        assert!(files(&elsewhere).is_empty());
        assert!(files(&md.join("tmp")).is_empty());
        // A symlinked Maildir itself is refused too.
        let md2 = t.path().join("Maildir2");
        std::os::unix::fs::symlink(&elsewhere, &md2).unwrap();
        assert!(matches!(deliver(&pool, mail("x\n"), vec![maildir(&md2)]), DeliveryResult::TempFail(_)));
        assert!(files(&elsewhere).is_empty());
    }

    #[test]
    fn one_failing_recipient_leaves_nothing_for_any() {
        let t = tempfile::tempdir().unwrap();
        let good = t.path().join("good/Maildir");
        // A file where a directory must be: unwritable even for root.
        std::fs::write(t.path().join("blocked"), "").unwrap();
        let bad = t.path().join("blocked/Maildir");
        let pool = Pool::start(1, "h", None);
        let outcome = deliver(&pool, mail("x\n"), vec![maildir(&good), maildir(&bad)]);
        assert!(
            matches!(&outcome, DeliveryResult::TempFail(c) if c.path.starts_with(t.path().join("blocked"))),
            "{outcome:?}"
        );
        assert!(files(&good.join("new")).is_empty());
        assert!(files(&good.join("tmp")).is_empty());
    }

    #[test]
    fn many_jobs_from_many_threads_land_once() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("Maildir");
        let pool = Arc::new(Pool::start(3, "h", None));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (pool, md) = (Arc::clone(&pool), md.clone());
                std::thread::spawn(move || {
                    for j in 0..25 {
                        assert!(matches!(
                            deliver(&pool, mail(&format!("n {i} {j}\n")), vec![maildir(&md)]),
                            DeliveryResult::Ok
                        ));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let mut bodies: Vec<String> =
            files(&md.join("new")).iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 200);
    }

    #[test]
    fn mbox_append_and_rollback_on_failure() {
        let t = tempfile::tempdir().unwrap();
        let mbox = t.path().join("joseph");
        let target = Target::Mbox { path: mbox.clone(), owner: None, delivered_to: "joseph@h".into() };
        let pool = Pool::start(1, "h", None);
        assert!(matches!(deliver(&pool, mail("From me\nbody\n"), vec![target.clone()]), DeliveryResult::Ok));
        let first = std::fs::read_to_string(&mbox).unwrap();
        assert!(first.starts_with("From a@example.org ") && first.contains("\n>From me\nbody\n\n"), "{first}");
        std::fs::write(t.path().join("blocked"), "").unwrap();
        let outcome = deliver(&pool, mail("second\n"), vec![target, maildir(&t.path().join("blocked/M"))]);
        assert!(matches!(outcome, DeliveryResult::TempFail(_)));
        assert_eq!(std::fs::read_to_string(&mbox).unwrap(), first, "failed message rolled back");
    }
}
