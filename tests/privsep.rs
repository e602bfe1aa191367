//! Issue 12, privilege separation, as a user and an attacker see it: the processes and their
//! privileges in /proc, files owned by their users, kill -9 of each child under load, the
//! instance lock, the umask-000 socket hijack, what an unprivileged local user can and
//! cannot do, and the delivery process fed forged frames as a compromised smtp process would.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{can_run, wait_for, Mxd, Need, MXD};
use mxd::envelope::Origin;
use mxd::privsep::frame::{self, DeliveryVerdict, Head};

const MXCTL: &str = env!("CARGO_BIN_EXE_mxctl");
const NOBODY: u32 = 65534;

/// joseph is `nobody` (a real uid that is not root's), alice is root's own.
fn conf(d: &Path, port: u16) -> String {
    let d = d.display();
    format!(
        r#"spool "{d}/spool"
hostname "mx.test"
table users {{ joseph = "{NOBODY}:{NOBODY}:{d}/home/joseph", alice = "0:0:{d}/home/alice" }}
listen on 127.0.0.1 port {port}
action "local" maildir userbase <users>
action "out" relay host smtp://127.0.0.1:1
match from any for domain "test" action "local"
match from local for any action "out"
"#
    )
}

/// Lines of /proc/PID/status by key.
fn status(pid: u32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The daemon's children: (pid, comm).
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if status(pid, "PPid") == parent.to_string() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_owned()));
        }
    }
    out
}

fn child_pid(parent: u32, comm: &str) -> Option<u32> {
    children(parent).into_iter().find(|(_, c)| c == comm).map(|(p, _)| p)
}

/// Socket inodes of TCP listeners on `port` (/proc/net/tcp, state 0A).
fn listening_inodes(port: u16) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16).ok()? == port && f.get(3)? == &"0A")
                .then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

fn holds_socket(pid: u32, inodes: &[String]) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| {
                let l = l.to_string_lossy().into_owned();
                inodes.iter().any(|i| l == format!("socket:[{i}]"))
            })
        })
    })
}

/// One message over SMTP; Ok only once the final 250 arrived.
fn send(port: u16, rcpt: &str, token: &str) -> Result<(), String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut w = s;
    let reply = |r: &mut BufReader<TcpStream>| -> Result<String, String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("closed".into());
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(line);
            }
        }
    };
    let expect = |got: String, code: &str| if got.starts_with(code) { Ok(()) } else { Err(got) };
    expect(reply(&mut r)?, "220")?;
    for (line, code) in [
        ("EHLO load.test".to_owned(), "250"),
        ("MAIL FROM:<load@elsewhere.test>".to_owned(), "250"),
        (format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA".to_owned(), "354"),
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).map_err(|e| e.to_string())?;
        expect(reply(&mut r)?, code)?;
    }
    w.write_all(format!("Subject: {token}\r\n\r\n{token}\r\n.\r\n").as_bytes()).map_err(|e| e.to_string())?;
    expect(reply(&mut r)?, "250")?;
    let _ = w.write_all(b"QUIT\r\n");
    Ok(())
}

fn maildir_text(dir: &Path) -> String {
    common::read_dir_files(&dir.join("new")).iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect()
}

#[test]
fn processes_privileges_and_file_owners() {
    if !can_run("processes_privileges_and_file_owners", &[Need::Root]) {
        return;
    }
    let mxd = Mxd::start_with(conf, &[]);
    let parent = mxd.pid().as_raw() as u32;
    wait_for("three children", Duration::from_secs(10), || children(parent).len() == 3);
    let kids = children(parent);
    let comms: Vec<&str> = kids.iter().map(|(_, c)| c.as_str()).collect();
    for role in ["mxd: smtp", "mxd: delivery", "mxd: relay"] {
        assert!(comms.contains(&role), "{comms:?}");
    }
    assert_eq!(std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap().trim(), "mxd: parent");

    // Every process with the TCP listener but the parent (which never reads from it) is
    // unprivileged: not root, no capabilities, no_new_privs, chrooted into an empty directory.
    let inodes = listening_inodes(mxd.port);
    assert!(!inodes.is_empty());
    let holders: Vec<u32> = kids.iter().map(|(p, _)| *p).filter(|p| holds_socket(*p, &inodes)).collect();
    assert_eq!(holders.len(), 1, "{kids:?}");
    let smtp = holders[0];
    assert_eq!(std::fs::read_to_string(format!("/proc/{smtp}/comm")).unwrap().trim(), "mxd: smtp");
    let uids = status(smtp, "Uid");
    assert!(uids.split(' ').all(|u| u != "0"), "smtp uids {uids}");
    assert_eq!(status(smtp, "CapEff"), "0000000000000000");
    assert_eq!(status(smtp, "CapPrm"), "0000000000000000");
    assert_eq!(status(smtp, "NoNewPrivs"), "1");
    let root = std::fs::read_link(format!("/proc/{smtp}/root")).unwrap();
    assert_eq!(root, mxd.path().join("spool/empty"));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "the chroot is empty");
    let relay = child_pid(parent, "mxd: relay").unwrap();
    assert!(status(relay, "Uid").split(' ').all(|u| u != "0"));
    assert_eq!(status(relay, "CapEff"), "0000000000000000");
    assert_eq!(status(relay, "NoNewPrivs"), "1");

    // Delivery (root) writes each user's files as that user.
    send(mxd.port, "joseph@test", "to-nobody").unwrap();
    send(mxd.port, "alice@test", "to-root").unwrap();
    for (user, uid) in [("joseph", NOBODY), ("alice", 0)] {
        let new = mxd.maildir(user).join("new");
        let files: Vec<PathBuf> = std::fs::read_dir(&new).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 1, "{user}");
        let meta = std::fs::metadata(&files[0]).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (uid, uid, 0o600), "{user}");
        assert_eq!(std::fs::metadata(mxd.maildir(user)).unwrap().uid(), uid);
    }
    // The spool's fixed layout.
    let mode = |p: &str| std::fs::symlink_metadata(mxd.path().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("spool"), 0o711);
    assert_eq!(mode("spool/offline"), 0o1777);
    assert_eq!(mode("spool/queue"), 0o700);
    assert_ne!(std::fs::metadata(mxd.path().join("spool/queue")).unwrap().uid(), 0, "the relay's user owns the queue");
}

#[test]
fn kill9_of_each_child_under_load_loses_nothing_that_got_250() {
    if !can_run("kill9_of_each_child_under_load_loses_nothing_that_got_250", &[Need::Root]) {
        return;
    }
    let mxd = Mxd::start_with(conf, &[]);
    let parent = mxd.pid().as_raw() as u32;
    wait_for("three children", Duration::from_secs(10), || children(parent).len() == 3);
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let (accepted, stop, port) = (Arc::clone(&accepted), Arc::clone(&stop), mxd.port);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 400 {
                    let token = format!("tok-{t}-{n}");
                    if send(port, "joseph@test", &token).is_ok() {
                        accepted.lock().unwrap().push(token);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let count = || accepted.lock().unwrap().len();
    for role in ["mxd: smtp", "mxd: delivery", "mxd: relay"] {
        let before = count();
        wait_for("load", Duration::from_secs(30), || count() >= before + 20);
        let pid = child_pid(parent, role).unwrap_or_else(|| panic!("{role} not running:\n{}", mxd.log()));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        // The parent replaces it, and mail flows again.
        wait_for(&format!("a new {role}"), Duration::from_secs(20), || {
            child_pid(parent, role).is_some_and(|p| p != pid)
        });
        let after = count();
        wait_for("mail after the restart", Duration::from_secs(30), || count() >= after + 10);
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let text = maildir_text(&mxd.maildir("joseph"));
    let accepted = accepted.lock().unwrap();
    for token in accepted.iter() {
        assert!(text.contains(&format!("\n{token}\n")), "{token} got its 250 but is not in the Maildir");
    }
    assert!(mxd.logged("exited"), "{}", mxd.log());
}

#[test]
fn a_second_mxd_on_the_same_spool_exits_1() {
    let mut first = Mxd::start_with(common::basic_conf, &[]);
    let out = Command::new(MXD).arg("-d").arg("-f").arg(&first.conf).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another mxd") && err.contains("is running on this spool"), "{err}");
    // The first is untouched: still serving, its sockets in place.
    first.connect().cmd("QUIT");
    assert!(first.path().join("spool/mxd.sock").exists());
    assert!(first.stop().success());
}

/// Root started mxd under `umask 000` on a fresh spool; a local user then tried to put a
/// socket of their own in place of mxd.sock (the issue's report). That must fail, and
/// root's sendmail must reach the real daemon.
#[test]
fn umask_000_spool_cannot_be_hijacked() {
    if !can_run("umask_000_spool_cannot_be_hijacked", &[Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = common::free_port();
    let conf_path = dir.path().join("smtpd.conf");
    std::fs::write(&conf_path, conf(dir.path(), port)).unwrap();
    std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = std::fs::File::create(dir.path().join("mxd.log")).unwrap();
    let mut daemon = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" -d -f \"$1\"")
        .arg(MXD)
        .arg(&conf_path)
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("mxd", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let spool = dir.path().join("spool");
    for (path, mode) in [("", 0o711), ("offline", 0o1777), ("queue", 0o700), ("mxd.sock", 0o666)] {
        let meta = std::fs::symlink_metadata(spool.join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path}");
    }
    // The attacker: nobody, trying to remove the socket and bind their own in its place.
    let hijack = format!("import os, socket\nos.unlink('{s}/mxd.sock') if True else None\n", s = spool.display());
    let out = Command::new("python3").arg("-c").arg(&hijack).uid(NOBODY).gid(NOBODY).output().unwrap();
    assert!(!out.status.success(), "nobody removed mxd.sock");
    let bind = format!("import socket\nsocket.socket(socket.AF_UNIX).bind('{s}/evil.sock')\n", s = spool.display());
    let out = Command::new("python3").arg("-c").arg(&bind).uid(NOBODY).gid(NOBODY).output().unwrap();
    assert!(!out.status.success(), "nobody created a socket in the spool");
    // root's sendmail still reaches mxd.
    let mut sm = Command::new(MXCTL)
        .arg("-f")
        .arg(&conf_path)
        .args(["sendmail", "alice@test"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    sm.stdin.take().unwrap().write_all(b"Subject: umask\n\nfrom root\n").unwrap();
    assert!(sm.wait().unwrap().success());
    assert!(maildir_text(&dir.path().join("home/alice/Maildir")).contains("from root"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(daemon.wait().unwrap().success());

    // A spool others may write, or that another user owns, is refused before anything starts.
    for (owner, mode, what) in [(0, 0o777, "insecure mode"), (NOBODY, 0o755, "owned by uid 65534")] {
        let bad = tempfile::tempdir().unwrap();
        std::fs::create_dir(bad.path().join("spool")).unwrap();
        std::os::unix::fs::chown(bad.path().join("spool"), Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(bad.path().join("spool"), std::fs::Permissions::from_mode(mode)).unwrap();
        let c = bad.path().join("smtpd.conf");
        std::fs::write(&c, conf(bad.path(), common::free_port())).unwrap();
        let out = Command::new(MXD).arg("-d").arg("-f").arg(&c).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what) && err.contains("refusing to start"), "{err}");
        assert!(!bad.path().join("spool/mxd.sock").exists());
    }
}

fn as_nobody(args: &[&str], conf: &Path, stdin: &str) -> std::process::Output {
    let mut c = Command::new(MXCTL);
    c.arg("-f").arg(conf).args(args).uid(NOBODY).gid(NOBODY).stdin(Stdio::piped()).stdout(Stdio::piped());
    c.stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_local_user_cannot_touch_others_queued_mail_and_can_submit() {
    if !can_run("a_local_user_cannot_touch_others_queued_mail_and_can_submit", &[Need::Root]) {
        return;
    }
    let mut mxd = Mxd::start_with(conf, &[("MXD_RETRY_BASE", "3600")]);
    std::fs::set_permissions(mxd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // root's message waits in the queue (its relay host refuses connections).
    let mut sm = Command::new(MXCTL)
        .arg("-f")
        .arg(&mxd.conf)
        .args(["sendmail", "-f", "root@mx.test", "someone@far.example"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    sm.stdin.take().unwrap().write_all(b"Subject: secret\n\nroot's secret\n").unwrap();
    assert!(sm.wait().unwrap().success());
    wait_for("queued", Duration::from_secs(10), || common::queue_files(&mxd) == 1);
    let queued: Vec<PathBuf> =
        std::fs::read_dir(mxd.path().join("spool/queue/new")).unwrap().flatten().map(|e| e.path()).collect();

    // nobody may not remove or reschedule it, nor read it, nor see it in mailq.
    for verb in [&["remove", "all"][..], &["schedule", "all"][..], &["reload"][..]] {
        let out = as_nobody(verb, &mxd.conf, "");
        assert_eq!(out.status.code(), Some(77), "{verb:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(common::queue_files(&mxd), 1);
    let cat = Command::new("cat").arg(&queued[0]).uid(NOBODY).gid(NOBODY).output().unwrap();
    assert!(!cat.status.success() && !String::from_utf8_lossy(&cat.stdout).contains("secret"));
    let ls = Command::new("ls").arg(mxd.path().join("spool/queue/new")).uid(NOBODY).gid(NOBODY).output().unwrap();
    assert!(!ls.status.success());
    assert!(mxd.logged("control: denied uid=65534 remove all"), "{}", mxd.log());
    assert!(mxd.logged("control: denied uid=65534 schedule all"), "{}", mxd.log());

    // nobody submits with sendmail: locally, and a relayed message that nobody's mailq shows.
    let out = as_nobody(&["sendmail", "joseph@test"], &mxd.conf, "Subject: hi\n\nfrom nobody\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(maildir_text(&mxd.maildir("joseph")).contains("from nobody"));
    assert!(mxd.logged("user=nobody"), "{}", mxd.log());
    let out = as_nobody(&["sendmail", "friend@far.example"], &mxd.conf, "Subject: out\n\nnobody's\n");
    assert!(out.status.success());
    wait_for("queued", Duration::from_secs(10), || common::queue_files(&mxd) == 2);
    let mailq = as_nobody(&["show", "queue"], &mxd.conf, "");
    let text = String::from_utf8_lossy(&mailq.stdout);
    assert!(mailq.status.success() && text.contains("<friend@far.example>"), "{text}");
    assert!(!text.contains("someone@far.example"), "nobody sees root's queued mail: {text}");
    let root_view = Command::new(MXCTL).arg("-f").arg(&mxd.conf).args(["show", "queue"]).output().unwrap();
    let root_text = String::from_utf8_lossy(&root_view.stdout);
    assert!(root_text.contains("someone@far.example") && root_text.contains("friend@far.example"), "{root_text}");

    // With the daemon down, nobody's sendmail still succeeds (offline/), and mxd takes it in.
    assert!(mxd.stop().success());
    let out = as_nobody(&["sendmail", "joseph@test"], &mxd.conf, "Subject: later\n\nwhile down\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offline: Vec<PathBuf> =
        std::fs::read_dir(mxd.path().join("spool/offline")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(offline.len(), 1);
    assert_eq!(std::fs::metadata(&offline[0]).unwrap().uid(), NOBODY);
    mxd.restart(&[("MXD_RETRY_BASE", "3600")]);
    wait_for("offline mail", Duration::from_secs(20), || maildir_text(&mxd.maildir("joseph")).contains("while down"));
    assert!(mxd.logged("offline message from nobody (uid 65534) submitted"), "{}", mxd.log());
}

/// The delivery process, started as the parent would, fed by this test as a compromised
/// smtp process: a recipient no session would accept, then a forged frame.
#[test]
fn delivery_refuses_what_no_session_could_have_accepted() {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf_path = d.join("smtpd.conf");
    let (uid, gid) = common::uid_gid();
    std::fs::write(
        &conf_path,
        format!(
            "spool \"{p}/spool\"\nhostname \"mx.test\"\n\
             table users {{ joseph = \"{uid}:{gid}:{p}/home/joseph\" }}\n\
             listen on 127.0.0.1 port {port}\n\
             action \"local\" maildir userbase <users>\n\
             action \"out\" relay host smtp://127.0.0.1:1\n\
             match from any for domain \"test\" action \"local\"\n\
             match from local for any action \"out\"\n",
            p = d.display(),
            port = common::free_port()
        ),
    )
    .unwrap();
    let user = if nix::unistd::geteuid().is_root() { "mxd" } else { "nobody" };
    if nix::unistd::geteuid().is_root() {
        // The queue must exist, owned as the parent leaves it, for relayed messages.
        let who = mxd::privsep::sandbox::account(user).unwrap();
        mxd::spool::prepare(&d.join("spool"), Some((who.uid, who.gid))).unwrap();
    } else {
        mxd::spool::prepare(&d.join("spool"), None).unwrap();
    }
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let (_parent_end, child_stdin) = UnixStream::pair().unwrap();
    nix::fcntl::fcntl(theirs.as_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let mut child = Command::new(MXD)
        .args(["-x", "delivery", "--parent", &std::process::id().to_string(), "-d", "-u", user, "-f"])
        .arg(&conf_path)
        .args(["--link", &theirs.as_raw_fd().to_string()])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(child_stdin)))
        .stderr(std::fs::File::create(d.join("delivery.log")).unwrap())
        .spawn()
        .unwrap();
    drop(theirs);
    ours.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let log = || std::fs::read_to_string(d.join("delivery.log")).unwrap_or_default();

    let mut seq = 0;
    let mut deliver = |s: &mut UnixStream, origin: Origin, rcpts: &[&str], body: &[u8]| -> DeliveryVerdict {
        seq += 1;
        let head = Head {
            seq,
            msgid: 0x1234_0000 + seq as u32,
            origin,
            tls: false,
            tag: None,
            auth: None,
            mail_from: "x@elsewhere.test".into(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            received: b"Received: forged\n".to_vec(),
            body_len: body.len() as u64,
            helo: "forged.example".into(),
            rdns: None,
        };
        let mut out = Vec::new();
        frame::encode_head(&head, &mut out);
        out.extend_from_slice(body);
        s.write_all(&out).unwrap();
        let f = frame::read_frame(s, frame::MAX_SMALL).unwrap().expect("a verdict");
        let (got, verdict) = frame::decode_verdict(&f).unwrap();
        assert_eq!(got, seq);
        verdict
    };
    let remote: Origin = Origin::Tcp("192.0.2.7".parse().unwrap());
    // What a session would accept is delivered.
    assert_eq!(deliver(&mut ours, remote.clone(), &["joseph@test"], b"Subject: ok\n\nfine\n"), DeliveryVerdict::Ok);
    // Recipients no session would have accepted: path escapes, unknown users, relaying for a
    // remote client, and one bad recipient among good ones.
    for rcpts in [
        &["../../../tmp/pwn@test"][..],
        &["joseph/../../x@test"][..],
        &["nosuchuser@test"][..],
        &["victim@far.example"][..],
        &["joseph@test", "root@far.example"][..],
    ] {
        let v = deliver(&mut ours, remote.clone(), rcpts, b"Subject: forged\n\nforged body\n");
        assert!(matches!(v, DeliveryVerdict::TempFail(_)), "{rcpts:?}: {v:?}");
    }
    // The log is written by a thread of its own: wait for the line, never read it once.
    wait_for("the refusal in the log", Duration::from_secs(10), || log().contains("refused from the smtp process"));
    // Links for the event loops come as descriptors: one that is not a Unix stream socket is
    // refused; a socketpair end is served, its verdicts coming back on it.
    let file = std::fs::File::open(&conf_path).unwrap();
    mxd::privsep::link::hand_over(&ours, &[file]).unwrap();
    wait_for("the refused link in the log", Duration::from_secs(10), || log().contains("refused a link"));
    let (mut loop_end, delivery_end) = UnixStream::pair().unwrap();
    mxd::privsep::link::hand_over(&ours, &[delivery_end]).unwrap();
    loop_end.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let v = deliver(&mut loop_end, remote.clone(), &["joseph@test"], b"Subject: loop\n\nby a loop's link\n");
    assert_eq!(v, DeliveryVerdict::Ok);
    let v = deliver(&mut loop_end, remote.clone(), &["nosuchuser@test"], b"Subject: forged\n\nforged body\n");
    assert!(matches!(v, DeliveryVerdict::TempFail(_)), "{v:?}");
    drop(loop_end);
    // A forged frame (an origin byte no sender writes) ends the link; delivery exits.
    let mut head = Vec::new();
    frame::encode_head(
        &Head {
            seq: 99,
            msgid: 1,
            origin: Origin::Socket,
            tls: false,
            tag: None,
            auth: None,
            mail_from: String::new(),
            rcpts: vec!["joseph@test".into()],
            received: Vec::new(),
            body_len: 0,
            helo: String::new(),
            rdns: None,
        },
        &mut head,
    );
    head[4 + 12] = 9;
    ours.write_all(&head).unwrap();
    let mut rest = Vec::new();
    let _ = ours.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no verdict for a forged frame");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "delivery did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(log().contains("refused input from the smtp process"), "{}", log());

    // Nothing was written anywhere but joseph's Maildir, which has exactly the good message.
    let text = maildir_text(&d.join("home/joseph/Maildir"));
    assert!(text.contains("fine") && text.contains("by a loop's link") && !text.contains("forged body"), "{text}");
    assert!(!Path::new("/tmp/pwn").exists());
    let mut written = Vec::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                written.push(e.path().strip_prefix(d).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    written.retain(|p| !p.starts_with("home/joseph/Maildir/new/"));
    written.sort();
    assert_eq!(written, ["delivery.log", "smtpd.conf"]);
}

#[test]
fn children_die_with_the_parent_and_a_restart_takes_over() {
    let mut mxd = Mxd::start_with(common::basic_conf, &[]);
    let parent = mxd.pid().as_raw() as u32;
    wait_for("three children", Duration::from_secs(10), || children(parent).len() == 3);
    let kids: Vec<u32> = children(parent).into_iter().map(|(p, _)| p).collect();
    mxd.kill9();
    wait_for("the children to exit", Duration::from_secs(10), || {
        // A zombie leader may still have threads exiting, holding the old listeners open
        // (a connection could land there): wait until it is the last one.
        kids.iter().all(|p| {
            !Path::new(&format!("/proc/{p}")).exists()
                || (status(*p, "State").starts_with('Z') && status(*p, "Threads") == "1")
        })
    });
    mxd.restart(&[]);
    let mut c = mxd.connect();
    assert!(c.cmd("QUIT").starts_with("221"));
}

/// A reload starts a new smtp process; a session open on the old one finishes there.
#[test]
fn reload_lets_open_sessions_finish_on_the_old_process() {
    let mut mxd = Mxd::start_with(common::basic_conf, &[]);
    let parent = mxd.pid().as_raw() as u32;
    wait_for("three children", Duration::from_secs(10), || children(parent).len() == 3);
    let old = child_pid(parent, "mxd: smtp").unwrap();
    send(mxd.port, "alice@test", "counted-before").unwrap();
    let mut open = mxd.connect();
    assert!(open.cmd("EHLO old.test").starts_with("250"));
    assert!(open.cmd("MAIL FROM:<a@old.test>").starts_with("250"));
    assert!(open.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    mxd.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("a new smtp process", Duration::from_secs(20), || {
        children(parent).iter().any(|(p, c)| c == "mxd: smtp" && *p != old)
    });
    send(mxd.port, "alice@test", "after-reload").unwrap();
    assert!(open.cmd("DATA").starts_with("354"));
    assert!(open.cmd("Subject: before\r\n\r\nbefore-reload\r\n.").starts_with("250"));
    assert!(open.cmd("QUIT").starts_with("221"));
    assert!(maildir_text(&mxd.maildir("joseph")).contains("before-reload"));
    assert!(maildir_text(&mxd.maildir("alice")).contains("after-reload"));
    // The counters carry over the reload, the old process's last session included.
    let stats = Command::new(MXCTL).arg("-f").arg(&mxd.conf).args(["show", "stats"]).output().unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("delivery.ok=3\n"), "{stats}\n{}", mxd.log());
    // The old process, its last session gone, exits; the daemon stops cleanly.
    wait_for("the old smtp process to exit", Duration::from_secs(20), || {
        !children(parent).iter().any(|(p, _)| *p == old)
    });
    assert!(mxd.stop().success(), "{}", mxd.log());
}
