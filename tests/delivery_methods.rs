//! Delivery methods (issue 15): a recipient that expands to nothing refused at RCPT; `mda`
//! actions (procmail, scripts that defer, fail or hang, a wrapper) run as the user; and
//! `lmtp` actions into a real Dovecot over TCP and a unix socket, queued and delivered by
//! the relay process.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::dovecot::Dovecot;
use common::{basic_conf, python, queue_files, uid_gid, wait_for, Client, Mxd, SEND};

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().expect("sh");
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_empty_alias_is_refused_at_rcpt() {
    let m = Mxd::start_with(|d, p| basic_conf(d, p).replace("team = ", "void = \"\", nested = \"void\", team = "), &[]);
    let mut c = Client::connect(m.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    for rcpt in ["void@test", "nested@test"] {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with("550 5.1.1 ") && reply.contains("no mailbox"), "{rcpt}: {reply}");
    }
    assert!(c.cmd("RCPT TO:<team@test>").starts_with("250"));
}

#[test]
fn lmtp_actions_deliver_into_dovecot_over_tcp_and_a_unix_socket() {
    if !common::can_run(
        "lmtp_actions_deliver_into_dovecot_over_tcp_and_a_unix_socket",
        &[
            common::Need::Program("dovecot", "dovecot-lmtpd"),
            common::Need::File("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ],
    ) {
        return;
    }
    let dv = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let dovecot = Dovecot::start(dv.path(), port, &["joseph", "alice@lr.test"]);
    let socket = dovecot.socket.display().to_string();
    let sock = socket.clone();
    let m = Mxd::start_with(
        move |d, p| {
            let (uid, gid) = uid_gid();
            format!(
                "spool \"{d}/spool\"\nhostname \"mx.test\"\n\
                 table users {{ joseph = \"{uid}:{gid}:{d}/home/joseph\", alice = \"{uid}:{gid}:{d}/home/alice\", \
                 ghost = \"{uid}:{gid}:{d}/home/ghost\" }}\n\
                 table aliases {{ team = \"joseph, ghost\" }}\n\
                 listen on 127.0.0.1 port {p}\n\
                 action \"local\" maildir userbase <users>\n\
                 action \"tcp\" lmtp \"127.0.0.1:{port}\" alias <aliases> userbase <users>\n\
                 action \"unix\" lmtp \"{sock}\" rcpt-to userbase <users>\n\
                 match from any for domain \"mx.test\" action \"local\"\n\
                 match from any for domain \"lm.test\" action \"tcp\"\n\
                 match from any for domain \"lr.test\" action \"unix\"\n",
                d = d.display()
            )
        },
        &[],
    );
    // Unknown to mxd: refused at RCPT, as for a Maildir.
    let mut c = Client::connect(m.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<nobody@lm.test>").starts_with("550 5.1.1"));
    drop(c);
    // `team` expands to joseph (Dovecot knows him by name) and ghost (Dovecot does not);
    // alice@lr.test goes by address over the unix socket.
    python(SEND, &[&m.port.to_string(), "joseph@mx.test", "team@lm.test,alice@lr.test", "over-lmtp"]);
    let inbox = |u: &str| common::read_dir_files(&dv.path().join("home").join(u).join("Maildir/new"));
    wait_for("joseph's and alice's copies", Duration::from_secs(20), || {
        inbox("joseph").len() == 1 && inbox("alice").len() == 1
    });
    for u in ["joseph", "alice"] {
        let text = String::from_utf8_lossy(&inbox(u)[0]).into_owned();
        assert!(text.contains("by mx.test (mxd) with ESMTP id "), "{text}");
        assert!(text.contains("Return-Path: <joseph@mx.test>"), "{text}");
        assert!(text.ends_with("over-lmtp\n"), "{text}");
    }
    assert!(m.logged("to=<joseph> host=127.0.0.1 address=127.0.0.1:"), "{}", m.log());
    assert!(m.logged(&format!("to=<alice@lr.test> host={socket} address={socket}")), "{}", m.log());
    // Dovecot refuses ghost: the bounce comes back to the sender, joseph's local Maildir.
    wait_for("the bounce", Duration::from_secs(20), || m.messages("joseph").len() == 1);
    let bounce = String::from_utf8_lossy(&m.messages("joseph")[0]).into_owned();
    assert!(bounce.contains("Final-Recipient: rfc822; ghost"), "{bounce}");
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&m) == 0);
}

#[test]
fn an_lmtp_server_that_is_down_defers_and_the_message_stays_queued() {
    if !common::can_run(
        "an_lmtp_server_that_is_down_defers_and_the_message_stays_queued",
        &[
            common::Need::Program("dovecot", "dovecot-lmtpd"),
            common::Need::File("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ],
    ) {
        return;
    }
    let dv = tempfile::tempdir().unwrap();
    let socket = dv.path().join("run/lmtp-test").display().to_string();
    let sock = socket.clone();
    let m = Mxd::start_with(
        move |d, p| {
            let (uid, gid) = uid_gid();
            format!(
                "spool \"{d}/spool\"\nhostname \"mx.test\"\n\
                 table users {{ alice = \"{uid}:{gid}:{d}/home/alice\" }}\n\
                 listen on 127.0.0.1 port {p}\n\
                 action \"unix\" lmtp \"{sock}\" rcpt-to userbase <users>\n\
                 match from any for domain \"lr.test\" action \"unix\"\n",
                d = d.display()
            )
        },
        &[("MXD_RETRY_BASE", "1")],
    );
    python(SEND, &[&m.port.to_string(), "s@example.org", "alice@lr.test", "later"]);
    // Accepted (250) while the server is down: queued, tried, deferred, kept.
    assert!(m.logged(&format!("to=<alice@lr.test> result=TempFail error=\"{socket}")), "{}", m.log());
    assert_eq!(queue_files(&m), 1);
    let _dovecot = Dovecot::start(dv.path(), common::free_port(), &["joseph", "alice@lr.test"]);
    let inbox = || common::read_dir_files(&dv.path().join("home/alice/Maildir/new"));
    wait_for("alice's copy once Dovecot is up", Duration::from_secs(30), || inbox().len() == 1);
    assert!(String::from_utf8_lossy(&inbox()[0]).ends_with("later\n"));
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&m) == 0);
}

/// mda actions for `mduser` (uid 65534, home `d`/home/mduser with a .procmailrc): procmail,
/// a script that records what it got, one that defers, one that fails, one too slow.
fn mda_conf(d: &Path, p: u16) -> String {
    let (uid, gid) = uid_gid();
    let d = d.display();
    sh(&format!(
        "set -e; chmod 755 {d}; mkdir -p {d}/home/mduser; \
         printf 'DEFAULT={d}/home/mduser/Maildir/\\n' > {d}/home/mduser/.procmailrc; \
         chmod 644 {d}/home/mduser/.procmailrc; chown -R 65534:65534 {d}/home/mduser"
    ));
    format!(
        "spool \"{d}/spool\"\nhostname \"mx.test\"\n\
         table users {{ joseph = \"{uid}:{gid}:{d}/home/joseph\", mduser = \"65534:65534:{d}/home/mduser\", root = \"0:0:/root\" }}\n\
         listen on 127.0.0.1 port {p}\n\
         mda wrapper \"marker\" \"echo wrapped > $HOME/wrapped; %{{mda}}\"\n\
         action \"local\" maildir userbase <users>\n\
         action \"wrapped\" mda \"cat > $HOME/got-wrapped\" wrapper \"marker\" userbase <users>\n\
         action \"proc\" mda \"/usr/bin/procmail %{{user.directory}}/.procmailrc\" userbase <users>\n\
         action \"record\" mda \"cat > $HOME/got-%{{rcpt.domain}}; env > $HOME/env; id -u > $HOME/uid\" userbase <users>\n\
         action \"defer\" mda \"echo 'quota exceeded, later' >&2; exit 75\" userbase <users>\n\
         action \"fail\" mda \"echo first >&2; echo 'no such folder' >&2; exit 67\" userbase <users>\n\
         action \"slow\" mda \"sleep 30\" userbase <users>\n\
         action \"lingering\" mda \"(setsid sleep 5 &); echo left >&2; exit 67\" userbase <users>\n\
         match from any for domain \"mx.test\" action \"local\"\n\
         match from any for domain \"proc.test\" action \"proc\"\n\
         match from any for domain \"wrapped.test\" action \"wrapped\"\n\
         match from any for domain \"record.test\" action \"record\"\n\
         match from any for domain \"defer.test\" action \"defer\"\n\
         match from any for domain \"fail.test\" action \"fail\"\n\
         match from any for domain \"slow.test\" action \"slow\"\n\
         match from any for domain \"lingering.test\" action \"lingering\"\n"
    )
}

#[test]
fn mda_commands_run_as_the_user_from_the_queue() {
    if !common::can_run(
        "mda_commands_run_as_the_user_from_the_queue",
        &[common::Need::Program("procmail", "procmail"), common::Need::Root],
    ) {
        return;
    }
    let m = Mxd::start_with(mda_conf, &[("MXD_MDA_TIMEOUT", "2"), ("MXD_RETRY_BASE", "60")]);
    let home = m.path().join("home/mduser");
    // Never as root: refused at RCPT.
    let mut c = Client::connect(m.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<joseph@mx.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<root@record.test>").starts_with("550 5.3.3"));
    drop(c);
    let rcpts =
        "mduser@wrapped.test,mduser@proc.test,mduser@record.test,mduser@defer.test,mduser@fail.test,mduser@slow.test,\
         mduser@lingering.test";
    python(SEND, &[&m.port.to_string(), "joseph@mx.test", rcpts, "through-mda"]);
    // procmail, as the user, into the Maildir its .procmailrc names.
    wait_for("procmail's delivery", Duration::from_secs(20), || {
        common::read_dir_files(&home.join("Maildir/new")).len() == 1
    });
    let got = String::from_utf8_lossy(&common::read_dir_files(&home.join("Maildir/new"))[0]).into_owned();
    assert!(got.contains("Delivered-To: mduser@proc.test") && got.ends_with("through-mda\n"), "{got}");
    // The recording script: stdin, environment, uid.
    // (The shell creates `uid` before `id` writes it: wait for the whole line.)
    wait_for("the recording command", Duration::from_secs(20), || {
        std::fs::read_to_string(home.join("uid")).is_ok_and(|s| s.ends_with('\n'))
    });
    let got = std::fs::read_to_string(home.join("got-record.test")).unwrap();
    assert!(got.starts_with("Return-Path: <joseph@mx.test>\nDelivered-To: mduser@record.test\nReceived: "), "{got}");
    assert!(got.ends_with("through-mda\n"), "{got}");
    let env = std::fs::read_to_string(home.join("env")).unwrap();
    for var in
        ["SENDER=joseph@mx.test", "RECIPIENT=mduser@record.test", "USER=mduser", "LOCAL=mduser", "DOMAIN=record.test"]
    {
        assert!(env.lines().any(|l| l == var), "{var} in {env}");
    }
    assert!(env.contains(&format!("HOME={}", home.display())), "{env}");
    assert_eq!(std::fs::read_to_string(home.join("uid")).unwrap().trim(), "65534");
    // `wrapper NAME`: the wrapper runs, and `%{mda}` in it is the action's command.
    wait_for("the wrapped command", Duration::from_secs(20), || home.join("got-wrapped").exists());
    assert_eq!(std::fs::read_to_string(home.join("wrapped")).unwrap(), "wrapped\n");
    // Exit 75 and the time limit defer; another code bounces with the last stderr line.
    assert!(m.logged("to=<mduser@defer.test> method=mda result=TempFail error=\"mda exited with 75 (EX_TEMPFAIL): quota exceeded, later\""), "{}", m.log());
    assert!(m.logged("to=<mduser@slow.test> method=mda result=TempFail error=\"mda timed out after 2s"), "{}", m.log());
    assert!(
        m.logged("to=<mduser@fail.test> method=mda result=PermFail error=\"5.3.0 mda exited with 67: no such folder\""),
        "{}",
        m.log()
    );
    // What a command leaves behind holding its stderr does not hold the queue.
    assert!(
        m.logged("to=<mduser@lingering.test> method=mda result=PermFail error=\"5.3.0 mda exited with 67: left\""),
        "{}",
        m.log()
    );
    let bounces = || m.messages("joseph").iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<String>();
    wait_for("the bounces", Duration::from_secs(20), || {
        bounces().contains("mduser@lingering.test") && bounces().contains("mduser@fail.test")
    });
    let bounce = bounces();
    assert!(bounce.contains("Final-Recipient: rfc822; mduser@fail.test"), "{bounce}");
    assert!(bounce.contains("no such folder"), "{bounce}");
    assert!(!bounce.contains("mduser@defer.test"), "{bounce}");
    // The deferred recipients keep the message in the mda queue.
    assert_eq!(common::count_files(&m.path().join("spool/mda/new")), 1);
}

#[test]
fn a_wrapper_must_be_declared_and_wrap_an_mda() {
    let dir = tempfile::tempdir().unwrap();
    let check = |body: &str| {
        let path = dir.path().join("smtpd.conf");
        std::fs::write(&path, format!("{body}\nmatch from any for any action \"a\"\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_mxd")).arg("-n").arg("-f").arg(&path).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = check("mda wrapper \"w\" \"nice %{mda}\"\naction \"a\" mda \"procmail\" wrapper \"w\"");
    assert!(ok && !text.contains("wrapper"), "{text}");
    // `mxd -n` names what would stop the daemon's start.
    let (_, text) = check("action \"a\" mda \"procmail\" wrapper \"w\"");
    assert!(text.contains("no 'mda wrapper w \"COMMAND\"' before it (not run: the daemon refuses to start"), "{text}");
    let (_, text) = check("mda wrapper \"w\" \"nice %{mda}\"\naction \"a\" maildir wrapper \"w\"");
    assert!(text.contains("wrappers around mda commands only (not run: the daemon refuses to start"), "{text}");
}

#[test]
fn a_users_table_that_fails_when_the_command_runs_defers_it() {
    if !common::can_run(
        "a_users_table_that_fails_when_the_command_runs_defers_it",
        &[common::Need::Program("python3", "python3"), common::Need::Root],
    ) {
        return;
    }
    // The table answers `parentfails` everywhere but in the parent, which runs mda
    // commands: accepted at RCPT and committed, then the lookup fails when the command is due.
    let t = common::proc_table_dir(&[("pusers", "parentfails 65534:65534:/nonexistent\n".to_owned())], &[]);
    let m = Mxd::start_with(
        |d: &Path, p: u16| {
            format!(
                "{basic}{pusers}action \"cmd\" mda \"cat > /dev/null\" userbase <pusers>\n\
                 match from any for domain \"cmd.test\" action \"cmd\"\n",
                basic = basic_conf(d, p),
                pusers = common::proc_table(t.path(), "pusers", "pusers", "userinfo"),
            )
        },
        &[("MXD_RETRY_BASE", "60")],
    );
    python(SEND, &[&m.port.to_string(), "joseph@mx.test", "parentfails@cmd.test", "kept"]);
    wait_for("the command's attempt", Duration::from_secs(20), || m.logged("to=<parentfails@cmd.test> method=mda"));
    assert!(
        m.logged("to=<parentfails@cmd.test> method=mda result=TempFail error=\"userbase: "),
        "a table that failed is not an unknown user: {}",
        m.log()
    );
    assert!(!m.logged("unknown user"), "{}", m.log());
    // Kept for the next attempt, and no bounce.
    assert_eq!(common::count_files(&m.path().join("spool/mda/new")), 1);
    std::thread::sleep(Duration::from_secs(1));
    assert!(m.messages("joseph").is_empty(), "no bounce");
}
