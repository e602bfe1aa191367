//! `queue compression` and `queue encryption` (issue 14): a message waiting in the relay
//! queue leaves none of its plaintext on disk, `mailq` still reads it, and once the next
//! hop is up it arrives whole. The key comes from the configuration, or from standard input
//! (then it is nowhere on disk at all).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{python, queue_files, wait_for, Mxd, MXD, SEND};

const KEY: &str = "6d78642d746573742d6b65792d3332206279746573206c6f6e6720656e6f7567";

fn node(to: u16, queue: &str) -> impl FnOnce(&Path, u16) -> String {
    let queue = queue.to_owned();
    move |d: &Path, p: u16| {
        format!("{queue}{}", common::node_conf(String::new(), format!("host smtp://127.0.0.1:{to}"))(d, p))
    }
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn mailq(m: &Mxd) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_mxctl")).arg("-f").arg(&m.conf).args(["show", "queue"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends a message for alice@test through `node` while its next hop (`port`) is down,
/// checks the spool holds none of it in the clear, then brings the hop up and checks it
/// arrives whole.
fn queued_without_plaintext_then_relayed(node: &Mxd, port: u16) {
    let marker = "Plaintext-Marker-4f1c";
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "alice@test", marker]);
    wait_for("a failed attempt", Duration::from_secs(15), || node.log().contains("result=TempFail"));
    assert_eq!(queue_files(node), 1);
    let spool = node.path().join("spool");
    for (path, bytes) in files(&spool) {
        for needle in [marker.as_bytes(), b"alice@test", b"joseph@node.test", b"Received:"] {
            assert!(
                memchr::memmem::find(&bytes, needle).is_none(),
                "{} holds {:?} in the clear",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    // The relay process opens it: mailq lists it.
    assert!(mailq(node).contains("<joseph@node.test> <alice@test> action=out"), "{}", mailq(node));
    let mx0 = Mxd::start_at(port, common::basic_conf, &[]);
    wait_for("the relayed message", Duration::from_secs(30), || mx0.messages("alice").len() == 1);
    let text = String::from_utf8_lossy(&mx0.messages("alice")[0]).into_owned();
    assert!(text.contains(&format!("Message-ID: <{marker}@relay-test>")), "{text}");
    assert!(text.contains(&format!("\n\n{marker}\n")), "{text}");
    assert!(text.contains("by node.test (mxd) with ESMTP id "), "{text}");
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(node) == 0);
}

#[test]
fn encrypted_and_compressed_queue_with_key_in_the_configuration() {
    let port = common::free_port();
    let node = Mxd::start_with(
        node(port, &format!("queue compression\nqueue encryption {KEY}\n")),
        &[("MXD_RETRY_BASE", "1")],
    );
    queued_without_plaintext_then_relayed(&node, port);
}

#[test]
fn compressed_queue() {
    let port = common::free_port();
    let node = Mxd::start_with(node(port, "queue compression\n"), &[("MXD_RETRY_BASE", "1")]);
    queued_without_plaintext_then_relayed(&node, port);
}

#[test]
fn encryption_key_read_from_stdin() {
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let listen = common::free_port();
    let conf = dir.path().join("smtpd.conf");
    std::fs::write(&conf, node(port, "queue encryption stdin\n")(dir.path(), listen)).unwrap();
    let log = std::fs::File::create(dir.path().join("mxd.log")).unwrap();
    let mut child = Command::new(MXD)
        .args(["-d", "-v", "-f"])
        .arg(&conf)
        .env("MXD_RETRY_BASE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{KEY}\n").as_bytes()).unwrap();
    let node = Mxd { child: Some(child), dir, port: listen, conf };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", listen)).is_err() {
        assert!(Instant::now() < deadline, "mxd did not start:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The key is in no file mxd can see: not in the configuration, not in the spool.
    let hex = KEY.as_bytes();
    for (path, bytes) in files(node.path()) {
        assert!(memchr::memmem::find(&bytes, hex).is_none(), "{} holds the key", path.display());
    }
    queued_without_plaintext_then_relayed(&node, port);
}

#[test]
fn a_bad_key_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("smtpd.conf");
    std::fs::write(&conf, "listen on 127.0.0.1 port 2599\nqueue encryption tooshort\n").unwrap();
    let out = Command::new(MXD).arg("-n").arg("-f").arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("smtpd.conf:2: invalid queue encryption key 'tooshort'"), "{err}");
}

/// The mda queue (`SPOOL/mda/`, run by the parent) is sealed too: a message whose command
/// defers (exit 75) waits there with none of its plaintext on disk, and the parent, which
/// holds the key in memory, gives it whole to the command once it accepts.
#[test]
fn encrypted_mda_queue() {
    let node = Mxd::start_with(
        |d: &Path, p: u16| {
            let root = nix::unistd::geteuid().is_root();
            // An mda never runs as root: as root, the mda user is nobody.
            let (uid, gid) = if root { (65534, 65534) } else { common::uid_gid() };
            let dd = d.display();
            std::fs::create_dir_all(d.join("home/mduser")).unwrap();
            if root {
                nix::unistd::chown(&d.join("home/mduser"), Some(uid.into()), Some(gid.into())).unwrap();
                std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            }
            format!(
                "spool \"{dd}/spool\"\nhostname \"mx.test\"\nqueue compression\nqueue encryption {KEY}\n\
                 table users {{ mduser = \"{uid}:{gid}:{dd}/home/mduser\" }}\n\
                 listen on 127.0.0.1 port {p}\n\
                 action \"mda\" mda \"test -e {dd}/go || exit 75; cat > $HOME/got\" userbase <users>\n\
                 match from any for domain \"mx.test\" action \"mda\"\n"
            )
        },
        &[("MXD_RETRY_BASE", "1")],
    );
    let marker = "Plaintext-Marker-mda-77a0";
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "mduser@mx.test", marker]);
    wait_for("a deferral", Duration::from_secs(15), || node.log().contains("result=TempFail"));
    let spool = node.path().join("spool");
    assert_eq!(common::count_files(&spool.join("mda/new")), 1, "{}", node.log());
    for (path, bytes) in files(&spool) {
        for needle in [marker.as_bytes(), b"mduser@mx.test", b"joseph@node.test", b"Received:"] {
            assert!(
                memchr::memmem::find(&bytes, needle).is_none(),
                "{} holds {:?} in the clear",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    std::fs::write(node.path().join("go"), "").unwrap();
    let got = node.path().join("home/mduser/got");
    wait_for("the command's copy", Duration::from_secs(30), || {
        std::fs::read_to_string(&got).is_ok_and(|t| t.contains(marker))
    });
    let text = std::fs::read_to_string(&got).unwrap();
    assert!(text.contains(&format!("\n\n{marker}\n")) && text.contains("by mx.test (mxd) with ESMTP id "), "{text}");
    wait_for("an empty mda queue", Duration::from_secs(10), || common::count_files(&spool.join("mda/new")) == 0);
}
