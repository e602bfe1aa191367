//! Helpers for the mxctl integration tests: a temporary spool with a configuration naming
//! it, symlinks that give the real mxctl binary its personalities (sendmail, mailq,
//! newaliases), and a scripted SMTP server on the spool's submission socket that records
//! what the client sent.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

pub const HOST: &str = "devbox-ntp.home.lan";

/// A temporary spool and configuration; the binary's personalities live in `bin/`.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub spool: PathBuf,
    pub conf: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).expect("mkdir spool");
        let conf = dir.path().join("smtpd.conf");
        let text = format!("# test\nspool \"{}\"\nhostname \"{HOST}\"\nlisten on socket\n", spool.display());
        std::fs::write(&conf, text).expect("write conf");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir bin");
        for name in ["sendmail", "mailq", "newaliases", "makemap"] {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mxctl"), bin.join(name)).expect("symlink");
        }
        Env { dir, spool, conf }
    }

    /// A command running the binary under `name` ("mxctl" for itself), MXD_CONF set.
    pub fn command(&self, name: &str) -> Command {
        let path = match name {
            "mxctl" => PathBuf::from(env!("CARGO_BIN_EXE_mxctl")),
            other => self.dir.path().join("bin").join(other),
        };
        let mut c = Command::new(path);
        c.env("MXD_CONF", &self.conf);
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.spool.join("mxd.sock")
    }
}

/// Runs `cmd` with `stdin` as its input and waits for it.
pub fn run(mut cmd: Command, stdin: &str) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// What the test SMTP server saw in one session.
#[derive(Debug, Default)]
pub struct Dialog {
    /// Command lines, without CRLF.
    pub commands: Vec<String>,
    /// The DATA section exactly as received, up to but excluding the final ".\r\n".
    pub data: Vec<u8>,
}

impl Dialog {
    pub fn data_text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// How the server answers the end of data.
pub enum FinalReply {
    /// Reply with this line at once.
    Line(&'static str),
    /// Tell the test (first channel) that the dot arrived, wait for its go (second), reply 250.
    Gated(mpsc::Sender<()>, mpsc::Receiver<()>),
    /// Close the connection without replying.
    Hangup,
}

/// Serves one SMTP session on `socket` in a thread; returns what it saw.
pub fn smtp_server(socket: &Path, last: FinalReply) -> JoinHandle<Dialog> {
    let listener = UnixListener::bind(socket).expect("bind submission socket");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        session(stream, last)
    })
}

/// Answers one connection with `greeting` (e.g. a 421) and closes it once the client does.
pub fn greeting_only(socket: &Path, greeting: &'static str) -> JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(socket).expect("bind submission socket");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let _ = stream.write_all(greeting.as_bytes());
        BufReader::new(stream).lines().map_while(Result::ok).collect()
    })
}

fn session(stream: UnixStream, last: FinalReply) -> Dialog {
    let mut out = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut dialog = Dialog::default();
    let mut send = |s: &str| {
        let _ = out.write_all(s.as_bytes());
    };
    send("220 test ESMTP mxd-test\r\n");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return dialog;
        }
        let cmd = line.trim_end_matches("\r\n").to_string();
        dialog.commands.push(cmd.clone());
        match cmd.split(' ').next().unwrap_or("") {
            "EHLO" => send("250-test hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            "DATA" => {
                send("354 Enter mail, end with \".\" on a line by itself\r\n");
                dialog.data = read_data(&mut reader);
                match &last {
                    FinalReply::Line(l) => send(l),
                    FinalReply::Gated(arrived, go) => {
                        let _ = arrived.send(());
                        let _ = go.recv();
                        send("250 2.0.0 f55200d4 Message accepted for delivery\r\n");
                    }
                    FinalReply::Hangup => return dialog,
                }
            }
            "QUIT" => {
                send("221 2.0.0 Bye\r\n");
                return dialog;
            }
            _ => send("250 2.0.0 Ok\r\n"),
        }
    }
}

fn read_data(reader: &mut impl BufRead) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 || line == b".\r\n" {
            return data;
        }
        data.extend_from_slice(&line);
    }
}

/// The current user's login name, as sendmail determines it.
pub fn user_name() -> String {
    mxd::submit::Submitter::current().user
}
