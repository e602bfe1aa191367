//! Makes the runner's removals durable off its thread. The runner unlinks a delivered
//! message's queue file and lets its session go on at once: a kill -9 cannot undo an
//! unlink, so only a power cut could bring the file back (and the message be sent again),
//! and then only what was removed since this thread's last sync of the queue directory,
//! at most [`SYNC_EVERY`] ago. Syncs are spaced because each one commits the file
//! system's journal, and every unlink in the queue waits for that commit (strace: 4–25 ms
//! an unlink during one, 0.1 ms otherwise). A message's state file goes only after the
//! sync, so no crash ever leaves a queue file without the recipients already done.
//! (Postfix and OpenSMTPD never sync a removal.)

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::queue;

/// The removals of this long share one sync.
const SYNC_EVERY: Duration = Duration::from_millis(200);

pub(super) struct DirSync {
    /// Names whose state files go after the next sync (often none: a sync alone).
    requests: Option<Sender<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl DirSync {
    pub(super) fn spawn(queue_dir: PathBuf) -> DirSync {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<String>>();
        let thread = std::thread::Builder::new()
            .name("relay-sync".into())
            .spawn(move || {
                let mut last: Option<Instant> = None;
                while let Ok(mut names) = rx.recv() {
                    if let Some(last) = last {
                        std::thread::sleep((last + SYNC_EVERY).saturating_duration_since(Instant::now()));
                    }
                    while let Ok(more) = rx.try_recv() {
                        names.extend(more);
                    }
                    if let Err(e) = queue::remove_states(&queue_dir, &names) {
                        log::error!("queue: syncing removals: {e}");
                    }
                    last = Some(Instant::now());
                }
            })
            .map_err(|e| log::error!("relay: no sync thread, syncing on the runner: {e}"))
            .ok();
        let requests = thread.is_some().then_some(tx);
        DirSync { requests, thread }
    }

    /// Syncs the queue directory soon, then removes the state files of `names`; without
    /// the thread, here and now.
    pub(super) fn request(&self, queue_dir: &std::path::Path, names: Vec<String>) {
        let names = match &self.requests {
            Some(tx) => match tx.send(names) {
                Ok(()) => return,
                Err(e) => e.into_inner(),
            },
            None => names,
        };
        if let Err(e) = queue::remove_states(queue_dir, &names) {
            log::error!("queue: syncing removals: {e}");
        }
    }

    /// Waits for the syncs requested so far (the runner is stopping).
    pub(super) fn finish(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn state_files_go_once_their_removals_are_synced() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("new")).unwrap();
        queue::write_done(t.path(), "m1", &BTreeSet::from(["x@y".to_owned()])).unwrap();
        queue::write_done(t.path(), "m2", &BTreeSet::from(["x@y".to_owned()])).unwrap();
        let mut sync = DirSync::spawn(t.path().to_owned());
        sync.request(t.path(), vec!["m1".into()]);
        sync.request(t.path(), Vec::new());
        sync.finish();
        assert!(queue::read_done(t.path(), "m1").is_empty(), "m1's state removed");
        assert_eq!(queue::read_done(t.path(), "m2").len(), 1, "m2's state kept");
    }
}
