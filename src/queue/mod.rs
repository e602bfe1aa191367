//! The persistent relay queue: `SPOOL/queue` is laid out like a Maildir (`tmp/`, `new/`),
//! and a queued message is written exactly as a Maildir copy is (delivery threads, group
//! commit, fsync before rename, directory fsync), so the 250 after DATA covers it too.
//!
//! A queue file is an envelope header, a line ".", then the message (LF endings):
//! ```text
//! mxd-queue 1
//! id 6c1f0a33
//! sender joseph@node.example
//! created 1700000000
//! rcpt relay_to_mx0 joseph@node.example joseph@node.example
//! rcpt relay_to_mx0 alice@far.example list@lists.example
//! .
//! Received: …
//! ```
//! A `rcpt` line's last word is the recipient the client gave, before an alias or a
//! .forward led to the one before it: the SRS domain of forwarded mail. Files written before
//! it was recorded have lines of two words, and are read as they are.
//! Recipients already delivered are listed in `state/NAME` (written tmp+fsync+rename), so a
//! restart never sends them twice; a file is removed once every recipient is done.

pub mod bounce;
pub mod seal;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::spool::QUEUE_DIR;

/// Who sent a queued message, when, and to whom (by relay action).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// The message id of the receive log (`smtp message msgid=…`): what the relay's log
    /// lines, `mailq`, `mxctl schedule ID` and `remove ID` name the message by. Empty in
    /// files written before it was recorded (see [`message_id`]).
    pub id: String,
    pub sender: String,
    pub created: u64,
    /// (action name, recipient address)
    pub rcpts: Vec<(String, String)>,
    /// For each of `rcpts`, in order: the recipient the client gave (RCPT TO), which an
    /// alias or a .forward expanded to that one; the same address when nothing did. `None`
    /// where not recorded: the mda queue, and files from before it was.
    pub orig_rcpts: Vec<Option<String>>,
}

pub fn queue_dir(spool: &Path) -> PathBuf {
    crate::spool::queue_dir(spool)
}

/// The id of the message in queue file `name`: its recorded message id, or for a file
/// from before ids were recorded, [`id_of`] its name.
pub fn message_id(env: &QueuedEnvelope, name: &str) -> String {
    if env.id.is_empty() {
        id_of(name)
    } else {
        env.id.clone()
    }
}

/// A stable 16-hex-digit id for queue file `name` (FNV-1a of the name), for files that
/// carry no message id.
pub fn id_of(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// The header written before the message. Values come from validated addresses and action
/// names, which contain no spaces or line breaks; anything else is replaced.
pub fn encode(env: &QueuedEnvelope) -> Vec<u8> {
    let clean =
        |s: &str| -> String { s.chars().map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c }).collect() };
    let mut out = String::from("mxd-queue 1\n");
    if !env.id.is_empty() {
        out.push_str(&format!("id {}\n", clean(&env.id)));
    }
    out.push_str(&format!("sender {}\ncreated {}\n", clean(&env.sender), env.created));
    for (i, (action, rcpt)) in env.rcpts.iter().enumerate() {
        out.push_str(&format!("rcpt {} {}", clean(action), clean(rcpt)));
        if let Some(Some(orig)) = env.orig_rcpts.get(i) {
            out.push_str(&format!(" {}", clean(orig)));
        }
        out.push('\n');
    }
    out.push_str(".\n");
    out.into_bytes()
}

/// Splits a queue file into its envelope and message; `None` for anything malformed (a
/// file is only ever in new/ whole, so this means corruption, logged by the caller).
pub fn decode(file: &[u8]) -> Option<(QueuedEnvelope, &[u8])> {
    let end = file.windows(3).position(|w| w == b"\n.\n")?;
    let head = std::str::from_utf8(&file[..end]).ok()?;
    let mut lines = head.lines();
    if lines.next()? != "mxd-queue 1" {
        return None;
    }
    let mut env = QueuedEnvelope {
        id: String::new(),
        sender: String::new(),
        created: 0,
        rcpts: Vec::new(),
        orig_rcpts: Vec::new(),
    };
    for line in lines {
        match line.split_once(' ')? {
            ("id", s) => env.id = s.to_owned(),
            ("sender", s) => env.sender = s.to_owned(),
            ("created", n) => env.created = n.parse().ok()?,
            ("rcpt", rest) => {
                let (action, rcpt) = rest.split_once(' ')?;
                let (rcpt, orig) = match rcpt.split_once(' ') {
                    Some((rcpt, orig)) => (rcpt, Some(orig.to_owned())),
                    None => (rcpt, None),
                };
                env.rcpts.push((action.to_owned(), rcpt.to_owned()));
                env.orig_rcpts.push(orig);
            }
            _ => return None,
        }
    }
    if env.rcpts.is_empty() {
        return None;
    }
    Some((env, &file[end + 3..]))
}

fn state_path(queue: &Path, name: &str) -> PathBuf {
    queue.join(crate::spool::QUEUE_STATE).join(name)
}

/// Recipients of `name` already delivered (or bounced).
pub fn read_done(queue: &Path, name: &str) -> BTreeSet<String> {
    std::fs::read_to_string(state_path(queue, name)).map(|s| s.lines().map(str::to_owned).collect()).unwrap_or_default()
}

/// Records the finished recipients durably, before anything else relies on it.
pub fn write_done(queue: &Path, name: &str, done: &BTreeSet<String>) -> std::io::Result<()> {
    let dir = queue.join(crate::spool::QUEUE_STATE);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    for r in done {
        writeln!(f, "{r}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, state_path(queue, name))?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Removes a finished message: its file first, then its state.
pub fn remove(queue: &Path, name: &str) -> std::io::Result<()> {
    std::fs::remove_file(queue.join("new").join(name))?;
    std::fs::File::open(queue.join("new"))?.sync_all()?;
    match std::fs::remove_file(state_path(queue, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unlinks a finished message's file without syncing: [`remove_states`] makes a batch of
/// these durable at once.
pub fn unlink(queue: &Path, name: &str) -> std::io::Result<()> {
    std::fs::remove_file(queue.join("new").join(name))
}

/// Syncs the removals of [`unlink`], then removes those messages' state (as [`remove`]:
/// the file first, so a crash never leaves a message without its done recipients).
pub fn remove_states(queue: &Path, names: &[String]) -> std::io::Result<()> {
    std::fs::File::open(queue.join("new"))?.sync_all()?;
    for name in names {
        match std::fs::remove_file(state_path(queue, name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let env = QueuedEnvelope {
            id: "6c1f0a33".into(),
            sender: "a@b".into(),
            created: 42,
            rcpts: vec![("out".into(), "x@y".into()), ("out".into(), "z@y".into())],
            orig_rcpts: vec![Some("list@l".into()), Some("z@y".into())],
        };
        let mut file = encode(&env);
        file.extend_from_slice(b"Subject: s\n\nbody\n.\nmore\n");
        let (back, msg) = decode(&file).unwrap();
        assert_eq!(back, env);
        assert_eq!(msg, b"Subject: s\n\nbody\n.\nmore\n");
        assert!(decode(b"mxd-queue 1\nsender a\n").is_none(), "truncated");
        let (old, _) = decode(b"mxd-queue 1\nsender a\ncreated 1\nrcpt o r\n.\nm").unwrap();
        assert_eq!(message_id(&old, "name"), id_of("name"), "a file without an id");
        assert_eq!((old.rcpts, old.orig_rcpts), (vec![("o".into(), "r".into())], vec![None]), "nor given recipients");
        assert!(decode(b"mxd-queue 2\nrcpt a b\n.\nx").is_none());
        assert!(decode(b"mxd-queue 1\nsender a\n.\nx").is_none(), "no recipient");
        let odd = encode(&QueuedEnvelope {
            id: String::new(),
            sender: "a b\nrcpt x y".into(),
            created: 1,
            rcpts: vec![("o".into(), "r".into())],
            orig_rcpts: Vec::new(),
        });
        assert_eq!(decode(&[odd, b"m".to_vec()].concat()).unwrap().0.rcpts.len(), 1);
    }

    #[test]
    fn done_state_survives() {
        let t = tempfile::tempdir().unwrap();
        let mut done = BTreeSet::new();
        done.insert("x@y".to_owned());
        write_done(t.path(), "m1", &done).unwrap();
        assert_eq!(read_done(t.path(), "m1"), done);
        assert!(read_done(t.path(), "m2").is_empty());
    }
}
