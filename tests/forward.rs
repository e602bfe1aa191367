//! ~/.forward (issue 15) with real users made by the test (useradd, removed after): to
//! another address, to a command and to a file (both run as the user: the files they make
//! are the user's), `:include:`, a group-writable file refused, a loop; `forward-only` and
//! `expand-only` actions; an alias command run as the action's `user`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{can_run, python, wait_for, Client, Mxd, Need, SEND};

/// System users made for one test, removed (with their mail spool) on drop.
struct Users(Vec<String>);

impl Users {
    /// `n` user names unique to this process and `test` (two letters).
    fn names(test: &str, letters: &str) -> Users {
        let pid = std::process::id() % 100_000;
        Users(letters.chars().map(|c| format!("mxf{test}{pid}{c}")).collect())
    }

    fn name(&self, i: usize) -> &str {
        &self.0[i]
    }

    /// Makes each user with its home `dir`/NAME (0755, its own).
    fn create(&self, dir: &Path) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in &self.0 {
            let _ = Command::new("userdel").arg(name).stderr(Stdio::null()).status();
            let home = dir.join(name);
            let ok = Command::new("useradd")
                .args(["--no-create-home", "--shell", "/bin/sh", "--home-dir"])
                .arg(&home)
                .arg(name)
                .status()
                .unwrap()
                .success();
            assert!(ok, "useradd {name}");
            std::fs::create_dir(&home).unwrap();
            let status = Command::new("chown").arg(format!("{name}:")).arg(&home).status().unwrap();
            assert!(status.success());
        }
    }

    fn uid(&self, i: usize) -> u32 {
        nix::unistd::User::from_name(self.name(i)).unwrap().unwrap().uid.as_raw()
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("userdel").arg(name).stderr(Stdio::null()).status();
        }
    }
}

fn needs(test: &str) -> bool {
    can_run(test, &[Need::Root, Need::Program("useradd", "passwd"), Need::Program("python3", "python3")])
}

/// System users (no userbase): maildir for `test`, forward-only for `fo.test`,
/// expand-only for `eo.test`, and `prog.test` whose aliases run a command as `user`.
fn conf(users: &Users) -> impl FnOnce(&Path, u16) -> String + '_ {
    move |d: &Path, p: u16| {
        users.create(d);
        let runner = users.name(0);
        format!(
            "spool \"{d}/spool\"\nhostname \"mx.test\"\nlisten on 127.0.0.1 port {p}\n\
             table aliases {{ prog = \"|/bin/sh -c 'id -u > {d}/{runner}/alias-uid'\", plain = \"|/bin/true\" }}\n\
             action \"local\" maildir\naction \"fo\" forward-only\naction \"eo\" expand-only\n\
             action \"prog\" maildir alias <aliases> user {runner}\naction \"noprog\" maildir alias <aliases>\n\
             match from any for domain \"fo.test\" action \"fo\"\nmatch from any for domain \"eo.test\" action \"eo\"\n\
             match from any for domain \"prog.test\" action \"prog\"\nmatch from any for domain \"noprog.test\" action \"noprog\"\n\
             match from any for domain \"test\" action \"local\"\nmatch from any for local action \"local\"\n",
            d = d.display()
        )
    }
}

fn write_forward(home: &Path, text: &str, mode: u32) {
    let path = home.join(".forward");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn maildir_count(home: &Path) -> usize {
    common::count_files(&home.join("Maildir/new"))
}

/// One message to `rcpt` over a raw session: the reply to the final dot.
fn send_one(port: u16, rcpt: &str, body: &str) -> String {
    let mut c = Client::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    if !reply.starts_with("250") {
        return reply;
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.cmd(&format!("Subject: {body}\r\n\r\n{body}\r\n."))
}

#[test]
fn forward_files_to_addresses_commands_files_and_includes() {
    if !needs("forward_files_to_addresses_commands_files_and_includes") {
        return;
    }
    // a: to b and to c's address; c: a command; d: a file; e: group-writable; f: :include:
    let users = Users::names("a", "abcdef");
    let m = Mxd::start_with(conf(&users), &[("MXD_RETRY_BASE", "60")]);
    let home = |i: usize| -> PathBuf { m.path().join(users.name(i)) };
    let (b, c) = (users.name(1), users.name(2));
    write_forward(&home(0), &format!("# copies\n{b}, {c}@test\n"), 0o644);
    std::fs::write(home(2).join("deliver.sh"), "#!/bin/sh\nid -u > \"$HOME/piped-uid\"\ncat > \"$HOME/piped\"\n")
        .unwrap();
    std::fs::set_permissions(home(2).join("deliver.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_forward(&home(2), &format!("\"|{}/deliver.sh\"\n", home(2).display()), 0o644);
    let mbox = home(3).join("copies.mbox");
    write_forward(&home(3), &format!("{}\n", mbox.display()), 0o600);
    let status = Command::new("chown").arg(users.name(3)).arg(home(3).join(".forward")).status().unwrap();
    assert!(status.success(), "the user's own .forward");
    write_forward(&home(4), &format!("{b}\n"), 0o664);
    let list = home(5).join("list");
    std::fs::write(&list, format!("{b}\n\\{}\n", users.name(5))).unwrap();
    write_forward(&home(5), &format!(":include:{}\n", list.display()), 0o644);

    // a: b's Maildir, and c's command (c's own .forward) as c.
    python(SEND, &[&m.port.to_string(), "s@example.org", &format!("{}@test", users.name(0)), "to-a"]);
    wait_for("b's copy", Duration::from_secs(20), || maildir_count(&home(1)) == 1);
    wait_for("c's command", Duration::from_secs(20), || {
        home(2).join("piped").exists() || m.log().contains("method=command") || m.log().contains("refused")
    });
    assert!(home(2).join("piped").exists(), "{}", m.log());
    wait_for("c's command to finish", Duration::from_secs(20), || {
        std::fs::read_to_string(home(2).join("piped")).is_ok_and(|t| t.ends_with("to-a\n"))
    });
    let piped = std::fs::read_to_string(home(2).join("piped")).unwrap();
    assert!(piped.starts_with("Return-Path: <s@example.org>\nDelivered-To: "), "{piped}");
    assert_eq!(std::fs::metadata(home(2).join("piped")).unwrap().uid(), users.uid(2), "made as c");
    assert_eq!(std::fs::read_to_string(home(2).join("piped-uid")).unwrap().trim(), users.uid(2).to_string());
    assert_eq!(maildir_count(&home(0)), 0, "a forwarded everything");
    assert_eq!(maildir_count(&home(2)), 0, "c's command took it");

    // d: appended to the file as mbox, by d.
    python(SEND, &[&m.port.to_string(), "s@example.org", &format!("{}@test", users.name(3)), "to-d"]);
    wait_for("d's mbox", Duration::from_secs(20), || {
        std::fs::read_to_string(&mbox).is_ok_and(|t| t.ends_with("to-d\n\n"))
    });
    let text = std::fs::read_to_string(&mbox).unwrap();
    assert!(text.starts_with("From s@example.org "), "{text}");
    assert!(text.contains("\nReturn-Path: <s@example.org>\n"), "{text}");
    let meta = std::fs::metadata(&mbox).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (users.uid(3), 0o600), "d's own file");
    assert!(m.logged(&format!("to=<{}@test> method=file result=Ok", users.name(3))), "{}", m.log());

    // e: group-writable, so refused and logged; the mail stays in e's own Maildir.
    python(SEND, &[&m.port.to_string(), "s@example.org", &format!("{}@test", users.name(4)), "to-e"]);
    wait_for("e's copy", Duration::from_secs(20), || maildir_count(&home(4)) == 1);
    assert!(m.logged("group- or world-writable"), "{}", m.log());
    assert_eq!(maildir_count(&home(1)), 1, "nothing more for b");

    // f: :include: — b, and f itself (`\f`).
    python(SEND, &[&m.port.to_string(), "s@example.org", &format!("{}@test", users.name(5)), "to-f"]);
    wait_for("f's copies", Duration::from_secs(20), || maildir_count(&home(1)) == 2 && maildir_count(&home(5)) == 1);
}

#[test]
fn loops_forward_only_expand_only_and_alias_commands() {
    if !needs("loops_forward_only_expand_only_and_alias_commands") {
        return;
    }
    // a and b forward to each other; c has no .forward; d forwards to c.
    let users = Users::names("b", "abcd");
    let m = Mxd::start_with(conf(&users), &[("MXD_RETRY_BASE", "60")]);
    let home = |i: usize| -> PathBuf { m.path().join(users.name(i)) };
    let (a, b, c, d) = (users.name(0), users.name(1), users.name(2), users.name(3));
    write_forward(&home(0), &format!("{b}@test\n"), 0o644);
    write_forward(&home(1), &format!("{a}@test\n"), 0o644);
    write_forward(&home(3), &format!("{c}@test\n"), 0o644);

    // The loop is found before the 250: the message is refused (5xx), nothing delivered.
    let reply = send_one(m.port, &format!("{a}@test"), "looping");
    assert!(reply.starts_with("554 "), "{reply}");
    assert!(m.logged("alias loop or too deep"), "{}", m.log());
    assert_eq!(maildir_count(&home(0)) + maildir_count(&home(1)), 0);

    // forward-only: an unknown user, and a user without a .forward (the session asks the
    // delivery process, which reads homes), are refused at RCPT, the latter with
    // OpenSMTPD's temporary 424; one with a .forward is forwarded.
    assert!(send_one(m.port, "nobody-here@fo.test", "x").starts_with("550 5.1.1"));
    let reply = send_one(m.port, &format!("{c}@fo.test"), "no-forward");
    assert!(reply.starts_with("424 4.2.4 Mailing list expansion problem"), "{reply}");
    assert!(send_one(m.port, &format!("{d}@fo.test"), "forwarded").starts_with("250"));
    wait_for("c's copy through d", Duration::from_secs(20), || maildir_count(&home(2)) == 1);
    // expand-only: the same, for the aliases-and-forwards-only action, refused for good.
    assert!(send_one(m.port, &format!("{c}@eo.test"), "x").starts_with("524 5.2.4"));
    assert!(send_one(m.port, &format!("{d}@eo.test"), "expanded").starts_with("250"));
    wait_for("c's second copy", Duration::from_secs(20), || maildir_count(&home(2)) == 2);

    // An alias command: refused at RCPT unless the action names a user, then run as it.
    let reply = send_one(m.port, "plain@noprog.test", "x");
    assert!(reply.starts_with("550 5.3.3"), "{reply}");
    let reply = send_one(m.port, "prog@prog.test", "alias");
    assert!(reply.starts_with("250"), "{reply}\n{}", m.log());
    wait_for("the alias command", Duration::from_secs(20), || home(0).join("alias-uid").exists());
    wait_for("its output", Duration::from_secs(20), || {
        std::fs::read_to_string(home(0).join("alias-uid")).is_ok_and(|t| t.ends_with('\n'))
    });
    assert_eq!(std::fs::read_to_string(home(0).join("alias-uid")).unwrap().trim(), users.uid(0).to_string());
}

fn mxctl(m: &Mxd, as_user: Option<&str>, args: &[&str]) -> String {
    let mxctl = env!("CARGO_BIN_EXE_mxctl");
    let mut cmd = match as_user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", mxctl]);
            c
        }
        None => Command::new(mxctl),
    };
    let out = cmd.arg("-f").arg(&m.conf).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn mailq_schedule_and_remove_act_on_the_mda_queue() {
    if !needs("mailq_schedule_and_remove_act_on_the_mda_queue")
        || !can_run("mailq_schedule_and_remove_act_on_the_mda_queue", &[Need::Program("runuser", "util-linux")])
    {
        return;
    }
    // a's command defers until the file `go` exists; b is another local user.
    let users = Users::names("c", "ab");
    let m = Mxd::start_with(conf(&users), &[("MXD_RETRY_BASE", "600")]);
    let (a, b) = (users.name(0), users.name(1));
    let home = m.path().join(a);
    let script = home.join("deliver.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ -f \"$HOME/go\" ] || { echo 'not yet' >&2; exit 75; }\ncat >> \"$HOME/got\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_forward(&home, &format!("|{}\n", script.display()), 0o644);

    python(SEND, &[&m.port.to_string(), &format!("{a}@mx.test"), &format!("{a}@test"), "first"]);
    let listing = || mxctl(&m, None, &["show", "queue"]);
    wait_for("the deferral in mailq", Duration::from_secs(20), || listing().contains("state=deferred"));
    assert!(m.logged(&format!("to=<{a}@test> method=command result=TempFail")), "{}", m.log());
    let line = listing().lines().find(|l| l.contains(&format!("<{a}@test>"))).expect("listed").to_owned();
    assert!(line.contains("action=local via=command") && line.contains("not yet"), "{line}");
    let id = line.split(' ').next().unwrap()[..8].to_owned();
    // The sender sees its own message; another user does not.
    assert!(mxctl(&m, Some(a), &["show", "queue"]).contains(&id));
    assert!(!mxctl(&m, Some(b), &["show", "queue"]).contains(&id));

    // schedule ID runs it now (not in 600 s).
    std::fs::write(home.join("go"), "").unwrap();
    assert_eq!(mxctl(&m, None, &["schedule", &id]).trim(), "1 scheduled");
    wait_for("the scheduled delivery", Duration::from_secs(20), || {
        std::fs::read_to_string(home.join("got")).is_ok_and(|t| t.ends_with("first\n"))
    });
    wait_for("the queue to empty", Duration::from_secs(20), || {
        common::count_files(&m.path().join("spool/mda/new")) == 0
    });

    // remove ID drops a deferred one.
    std::fs::remove_file(home.join("go")).unwrap();
    python(SEND, &[&m.port.to_string(), &format!("{a}@mx.test"), &format!("{a}@test"), "second"]);
    wait_for("the second deferral", Duration::from_secs(20), || listing().contains("state=deferred"));
    let line = listing().lines().find(|l| l.contains(&format!("<{a}@test>"))).expect("listed").to_owned();
    let id = line.split(' ').next().unwrap()[..8].to_owned();
    assert_eq!(mxctl(&m, None, &["remove", &id]).trim(), "1 removed");
    assert_eq!(common::count_files(&m.path().join("spool/mda/new")), 0);
    wait_for("the runner to forget it", Duration::from_secs(20), || !listing().contains(&id));
    assert!(mxctl(&m, None, &["remove", &id]).contains("no such message"));

    // A command that fails bounces to the sender, naming the address it stands for.
    write_forward(&home, "\"|/bin/sh -c 'echo broken >&2; exit 67'\"\n", 0o644);
    python(SEND, &[&m.port.to_string(), &format!("{b}@mx.test"), &format!("{a}@test"), "third"]);
    let b_home = m.path().join(b);
    wait_for("the bounce", Duration::from_secs(20), || maildir_count(&b_home) == 1);
    let bounce = String::from_utf8_lossy(&common::read_dir_files(&b_home.join("Maildir/new"))[0]).into_owned();
    assert!(bounce.contains(&format!("Final-Recipient: rfc822; {a}@test\n")), "{bounce}");
    assert!(bounce.contains("mda exited with 67: broken"), "{bounce}");
}
