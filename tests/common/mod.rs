//! Shared harness for the integration tests: runs the real `mxd` binary on 127.0.0.1 with a
//! configuration and spool in a temporary directory, and reads what lands in its Maildirs.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod dovecot;
pub mod rspamd;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const MXD: &str = env!("CARGO_BIN_EXE_mxd");

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn uid_gid() -> (u32, u32) {
    (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
}

/// What a test needs from the machine beyond cargo: a program on PATH, a file a package
/// installs, or root.
pub enum Need<'a> {
    /// (program, Debian package)
    Program(&'a str, &'a str),
    /// (path, Debian package)
    File(&'a str, &'a str),
    /// (Perl module, Debian package): swaks's TLS needs Net::SSLeay.
    PerlModule(&'a str, &'a str),
    Root,
}

/// Whether `test` can run here. When something is missing it prints one line naming what and
/// how to get it, and the test should return (and pass); with `MXD_TEST_STRICT` set, as
/// .ci/run sets it, a missing need fails the test instead, so CI never skips silently.
pub fn can_run(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .filter_map(|n| match n {
            Need::Program(p, pkg) => (!on_path(p)).then(|| format!("{p} (apt-get install {pkg})")),
            Need::File(f, pkg) => (!Path::new(f).exists()).then(|| format!("{f} (apt-get install {pkg})")),
            Need::PerlModule(m, pkg) => (!Command::new("perl")
                .arg(format!("-M{m}"))
                .arg("-e1")
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()))
            .then(|| format!("perl's {m} (apt-get install {pkg})")),
            Need::Root => (!nix::unistd::geteuid().is_root()).then(|| "root".to_string()),
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let line = format!("SKIPPED {test}: needs {}", missing.join(", "));
    assert!(std::env::var_os("MXD_TEST_STRICT").is_none(), "{line} (MXD_TEST_STRICT is set)");
    // Straight to the descriptor: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "{line}");
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// A running mxd. Dropping it kills the process.
pub struct Mxd {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub conf: PathBuf,
}

/// The usual test configuration: one plain listener on `port`, joseph and alice as users
/// with homes in the temp dir, everything from anywhere delivered to their Maildirs.
pub fn basic_conf(dir: &Path, port: u16) -> String {
    let (uid, gid) = uid_gid();
    let d = dir.display();
    format!(
        r#"spool "{d}/spool"
hostname "mx.test"
table users {{ joseph = "{uid}:{gid}:{d}/home/joseph", alice = "{uid}:{gid}:{d}/home/alice" }}
table aliases {{ root = "joseph", team = "joseph, alice" }}
listen on 127.0.0.1 port {port}
action "local" maildir alias <aliases> userbase <users>
match from any for domain "test" action "local"
match from any for local action "local"
"#
    )
}

/// python3 smtplib: `SEND PORT SENDER RCPT BODY` sends one message whose Message-ID and body
/// are BODY.
pub const SEND: &str = r#"
import smtplib, sys
port, sender, rcpt, body = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with smtplib.SMTP("127.0.0.1", port) as s:
    s.sendmail(sender, rcpt.split(","), ("Message-ID: <%s@relay-test>\r\nSubject: relayed\r\n\r\n%s\r\n" % (body, body)).encode())
"#;

/// A node: joseph is local (for node.test), everything else goes out through
/// `action "out" relay RELAY`; `top` (ca, pki, table lines) comes before the listener.
pub fn node_conf(top: String, relay: String) -> impl FnOnce(&Path, u16) -> String {
    move |d: &Path, p: u16| {
        let (uid, gid) = uid_gid();
        format!(
            "spool \"{d}/spool\"\nhostname \"node.test\"\n{top}\
             table users {{ joseph = \"{uid}:{gid}:{d}/home/joseph\" }}\n\
             listen on 127.0.0.1 port {p}\n\
             action \"local\" maildir userbase <users>\n\
             action \"out\" relay {relay}\n\
             match from any for domain \"node.test\" action \"local\"\n\
             match from any for any action \"out\"\n",
            d = d.display()
        )
    }
}

/// `basic_conf` with alice's home a regular file: no Maildir can be made there, even by
/// root, so every delivery to her fails for now (451).
pub fn conf_alice_unwritable(d: &Path, p: u16) -> String {
    std::fs::write(d.join("alice-home"), "").expect("alice-home");
    basic_conf(d, p).replace(&format!("{}/home/alice", d.display()), &format!("{}/alice-home", d.display()))
}

impl Mxd {
    /// Starts mxd on `conf` (a function of the temp dir and a free port) with extra env vars.
    pub fn start_with(conf: impl FnOnce(&Path, u16) -> String, env: &[(&str, &str)]) -> Mxd {
        Mxd::start_at(free_port(), conf, env)
    }

    /// As `start_with`, on a port chosen by the caller (a relay test's "host that comes back").
    pub fn start_at(port: u16, conf: impl FnOnce(&Path, u16) -> String, env: &[(&str, &str)]) -> Mxd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("smtpd.conf");
        std::fs::write(&path, conf(dir.path(), port)).expect("write conf");
        let log = std::fs::File::create(dir.path().join("mxd.log")).expect("log file");
        // ("ULIMIT_N", n) runs mxd under `ulimit -n n`: the descriptor limit sizes sessions.
        let mut cmd = match env.iter().find(|(k, _)| *k == "ULIMIT_N") {
            Some((_, n)) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(MXD);
                c
            }
            None => Command::new(MXD),
        };
        cmd.arg("-d").arg("-v").arg("-f").arg(&path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        for (k, v) in env.iter().filter(|(k, _)| *k != "ULIMIT_N") {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn mxd");
        let mut mxd = Mxd { child: Some(child), dir, port, conf: path };
        mxd.wait_ready();
        mxd
    }

    /// Starts mxd again on the same configuration and spool (after `kill9` or `stop`).
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "still running");
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("mxd.log")).expect("log");
        let mut cmd = Command::new(MXD);
        cmd.arg("-d").arg("-v").arg("-f").arg(&self.conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn mxd"));
        self.wait_ready();
    }

    pub fn start() -> Mxd {
        Mxd::start_with(basic_conf, &[])
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("mxd exited early with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mxd did not listen on {}:\n{}", self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mxd.log")).unwrap_or_default()
    }

    /// Whether the log has (or gets within 5 s) a line containing `needle`: mxd's log
    /// writer runs on a thread of its own, so a line may follow the reply it belongs to.
    pub fn logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal mxd");
    }

    /// SIGTERM, then wait for the exit status (bounded).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("mxd did not exit in {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(user).join("Maildir")
    }

    /// Every message in `user`'s Maildir new/, sorted by file name.
    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        read_dir_files(&self.maildir(user).join("new"))
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }
}

impl Drop for Mxd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => return Vec::new(),
    };
    names.sort();
    names.iter().map(|p| std::fs::read(p).expect("read message")).collect()
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Messages in `m`'s relay queue.
pub fn queue_files(m: &Mxd) -> usize {
    count_files(&m.path().join("spool/queue/new"))
}

pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// A raw SMTP client for the error paths: sends bytes, reads whole replies.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut c = Client { stream, reader };
        let greeting = c.reply();
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        c
    }

    /// Over a connection made elsewhere; the greeting is left for the caller to read.
    pub fn open(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// One full reply (all its lines), or "" when the server closed the connection.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return all,
                Ok(_) => {}
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// Sends one command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True once the server has closed the connection (EOF, or a reset because our last
    /// command arrived after it closed), within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

/// Runs a python3 script with arguments; returns stdout, panicking with stderr on failure.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3");
    assert!(
        out.status.success(),
        "python3 failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mxctl encrypt PASSWORD`: the hash a user would put in a credentials table.
pub fn mxctl_encrypt(password: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mxctl")).args(["encrypt", password]).output().expect("mxctl");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A self-signed certificate for `mx.test` in `dir`, as a pki block.
pub fn mx_test_pki(dir: &Path) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    let (crt, key) = (dir.join("mx.crt"), dir.join("mx.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!("pki mx.test cert \"{}\"\npki mx.test key \"{}\"\n", crt.display(), key.display())
}

/// A copy of tests/filters/NAME in `dir`, where a filter's user can read it even when the
/// checkout is somewhere it cannot (a root-only home directory).
pub fn filter_script(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filters").join(name), &to).unwrap();
    std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    to
}

/// A temporary directory a filter's user (nobody, when tests run as root) can use.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    dir
}

/// The first line a fresh connection to `port` gets (the greeting, or a filter's refusal).
pub fn first_line(port: u16) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

// The relay tests' builders.

/// A port free on `addr` a moment ago: the MX port of one test (`MXD_MX_PORT`).
pub fn mx_port(addr: &str) -> u16 {
    TcpListener::bind((addr, 0)).and_then(|l| l.local_addr()).expect("port").port()
}

/// A receiving mxd: the harness listener on 127.0.0.1 and an MX listener on `addr`:`port`,
/// offering STARTTLS with a fresh self-signed certificate (`rx.test`) when `tls`; mail for
/// joseph at any domain lands in his Maildir.
pub fn mx_receiver(addr: &'static str, port: u16, tls: bool) -> Mxd {
    Mxd::start_with(
        move |d: &Path, p: u16| {
            let (uid, gid) = uid_gid();
            let (pki, opts) =
                if tls { (self_signed_pki(d, "rx.test"), " tls pki rx.test") } else { (String::new(), "") };
            format!(
                "spool \"{d}/spool\"\nhostname \"rx-{addr}.test\"\n{pki}\
                 table users {{ joseph = \"{uid}:{gid}:{d}/home/joseph\" }}\n\
                 listen on 127.0.0.1 port {p}\nlisten on {addr} port {port}{opts}\n\
                 action \"local\" maildir userbase <users>\nmatch from any for any action \"local\"\n",
                d = d.display()
            )
        },
        &[],
    )
}

/// `pki NAME` lines for a fresh self-signed P-256 certificate for NAME, made by openssl in `d`.
pub fn self_signed_pki(d: &Path, name: &str) -> String {
    let (key, crt) = (d.join(format!("{name}.key")), d.join(format!("{name}.crt")));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {k} 2>/dev/null && chmod 600 {k} \
             && openssl req -x509 -new -key {k} -out {c} -days 30 -subj /CN={name}",
            k = key.display(),
            c = crt.display()
        ))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    format!("pki {name} cert \"{}\"\npki {name} key \"{}\"\n", crt.display(), key.display())
}

/// A message from joseph@node.test to `rcpt` through `node` (`SEND`), with `body`.
pub fn send_via(node: &Mxd, rcpt: &str, body: &str) {
    python(SEND, &[&node.port.to_string(), "joseph@node.test", rcpt, body]);
}

/// How many of joseph's messages at `m` contain `needle`.
pub fn count_with(m: &Mxd, needle: &str) -> usize {
    m.messages("joseph").iter().filter(|b| String::from_utf8_lossy(b).contains(needle)).count()
}

/// `mxctl -f CONF ARGS…` for `m`: its stdout and stderr.
pub fn mxctl(m: &Mxd, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mxctl")).arg("-f").arg(&m.conf).args(args).output().expect("mxctl");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The project's smtpd-tables(7) program (tests/tables/proc_table.py) and its data, in a
/// directory the unprivileged user can read (tables run as `mxd` when the tests run as
/// root): each `(name, text)` file, and a world-writable log of starts, `starts-NAME`, for
/// each of them and for each of `more_starts` (tables whose data file is missing).
pub fn proc_table_dir(files: &[(&str, String)], more_starts: &[&str]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().expect("tempdir");
    let mode = |name: &str, mode: u32| {
        std::fs::set_permissions(t.path().join(name), std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    mode("", 0o755);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tables/proc_table.py");
    std::fs::copy(script, t.path().join("proc_table.py")).expect("copy proc_table.py");
    mode("proc_table.py", 0o755);
    for (name, text) in files {
        std::fs::write(t.path().join(name), text).expect("table data");
        mode(name, 0o644);
    }
    for name in files.iter().map(|(name, _)| *name).chain(more_starts.iter().copied()) {
        let starts = format!("starts-{name}");
        std::fs::write(t.path().join(&starts), "").expect("starts file");
        mode(&starts, 0o666);
    }
    t
}

/// `table NAME "proc-exec:…"`: proc_table.py in `dir` serving `services` from the file
/// `data` (one that is not there makes a process that exits at once), logging its starts
/// to `starts-NAME`.
pub fn proc_table(dir: &Path, name: &str, data: &str, services: &str) -> String {
    let td = dir.display();
    format!("table {name} \"proc-exec:{td}/proc_table.py {td}/{data} {td}/starts-{name} {services}\"\n")
}
