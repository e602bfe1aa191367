//! The real mxctl binary (as itself, as mailq and as newaliases) against a control socket
//! served by `mxd::control::serve` with a recording test handler.

mod common;
mod mxctl_util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};

use mxctl_util::{run, Env};
use mxd::control::{self, ControlHandler, HandlerError, QueueSelection};

const QUEUE: &str = "64f3eab9a1b2c3d4|local|mta|joseph@node.lan|joseph@mx0.lan|1640294612|1640294612|0|1|pending|0|\n\
                     64f3eaba00000001|local|mta|root@node.lan|ops@mx0.lan|1640294613|1640294613|0|2|pending|120|connection refused";

/// Records every call; answers with fixed data.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn note(&self, call: String) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl ControlHandler for Recorder {
    fn show_queue(&self) -> String {
        self.note("show_queue".into());
        QUEUE.to_string()
    }
    fn show_stats(&self) -> String {
        self.note("show_stats".into());
        "queue.envelopes=2\nsmtp.session=7".to_string()
    }
    fn schedule(&self, target: &QueueSelection) -> Result<String, HandlerError> {
        self.note(format!("schedule {target:?}"));
        match target {
            QueueSelection::Id(id) if id == "deadbeef" => Err(HandlerError::not_found("no such message: deadbeef")),
            _ => Ok("1 envelope scheduled".into()),
        }
    }
    fn remove(&self, target: &QueueSelection) -> Result<String, HandlerError> {
        self.note(format!("remove {target:?}"));
        Ok(String::new())
    }
    fn reload(&self) -> Result<String, HandlerError> {
        self.note("reload".into());
        Err(HandlerError::failed("smtpd.conf:3: expected a table name"))
    }
    fn update_table(&self, name: &str) -> Result<String, HandlerError> {
        self.note(format!("update_table {name}"));
        Ok(String::new())
    }
    fn update_aliases(&self) -> Result<String, HandlerError> {
        self.note("update_aliases".into());
        Ok("2 tables updated".into())
    }
}

fn start(env: &Env) -> Arc<Recorder> {
    let handler = Arc::new(Recorder::default());
    let listener = control::bind(&env.spool).expect("bind control socket");
    let h: Arc<dyn ControlHandler> = handler.clone();
    std::thread::spawn(move || control::serve(listener, h));
    handler
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn mailq_and_show_queue_print_the_queue() {
    let env = Env::new();
    let handler = start(&env);
    let mailq = run(env.command("mailq"), "");
    assert!(mailq.status.success(), "{}", text(&mailq.stderr));
    assert_eq!(text(&mailq.stdout), format!("{QUEUE}\n"));
    let mut cmd = env.command("mxctl");
    cmd.env_remove("MXD_CONF").arg("-f").arg(&env.conf).args(["show", "queue"]);
    let show = run(cmd, "");
    assert_eq!(text(&show.stdout), text(&mailq.stdout));
    let mut cmd = env.command("mxctl");
    cmd.args(["show", "stats"]);
    assert_eq!(text(&run(cmd, "").stdout), "queue.envelopes=2\nsmtp.session=7\n");
    assert_eq!(handler.calls(), ["show_queue", "show_queue", "show_stats"]);
}

#[test]
fn verbs_reach_the_handler() {
    let env = Env::new();
    let handler = start(&env);
    // (arguments, exit status, stdout, stderr fragment)
    let cases: &[(&[&str], i32, &str, &str)] = &[
        (&["schedule", "all"], 0, "1 envelope scheduled\n", ""),
        (&["schedule", "64F3EAB9"], 0, "1 envelope scheduled\n", ""),
        (&["schedule", "deadbeef"], 1, "", "no such message: deadbeef"),
        (&["remove", "all"], 0, "", ""),
        (&["reload"], 1, "", "smtpd.conf:3: expected a table name"),
        (&["update", "table", "aliases"], 0, "", ""),
        (&["frobnicate"], 64, "", "unknown command"),
        (&["schedule", "not-hex"], 64, "", "invalid id"),
    ];
    for (args, code, stdout, stderr) in cases {
        let mut cmd = env.command("mxctl");
        cmd.args(*args);
        let out = run(cmd, "");
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), *stdout, "{args:?}");
        assert!(text(&out.stderr).contains(stderr), "{args:?}: {}", text(&out.stderr));
    }
    let newaliases = run(env.command("newaliases"), "");
    assert!(newaliases.status.success(), "{}", text(&newaliases.stderr));
    let mut bi = env.command("sendmail");
    bi.arg("-bi");
    assert!(run(bi, "").status.success());
    assert_eq!(
        handler.calls(),
        [
            "schedule All",
            "schedule Id(\"64f3eab9\")",
            "schedule Id(\"deadbeef\")",
            "remove All",
            "reload",
            "update_table aliases",
            "update_aliases",
            "update_aliases",
        ]
    );
}

#[test]
fn no_daemon_is_reported() {
    let env = Env::new();
    let mut cmd = env.command("mxctl");
    cmd.args(["show", "queue"]);
    let out = run(cmd, "");
    assert_eq!(out.status.code(), Some(69));
    assert!(text(&out.stderr).contains("doesn't seem to be running"), "{}", text(&out.stderr));
    assert!(control::bind(&env.spool).is_ok(), "a stale socket is replaced");
}

#[test]
fn a_second_daemon_cannot_take_the_socket() {
    let env = Env::new();
    let _handler = start(&env);
    let err = control::bind(&env.spool).expect_err("socket in use");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

/// Only as root: another uid may read the queue but not change anything.
#[test]
fn other_users_are_refused_privileged_verbs() {
    if !common::can_run("other_users_are_refused_privileged_verbs", &[common::Need::Root]) {
        return;
    }
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let handler = start(&env);
    let nobody = 65534;
    let mut reload = env.command("mxctl");
    reload.arg("reload").uid(nobody).gid(nobody);
    let out = run(reload, "");
    assert_eq!(out.status.code(), Some(77), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("need root privileges"));
    let mut mailq = env.command("mailq");
    mailq.uid(nobody).gid(nobody);
    assert!(run(mailq, "").status.success());
    assert_eq!(handler.calls(), ["show_queue"], "the refused reload never reached the handler");
}
