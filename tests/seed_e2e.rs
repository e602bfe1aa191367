//! The seed, end to end (issue 5): mx0 and three nodes, each in a network namespace of its
//! own, running conf/seed-mx0.conf and conf/seed-node.conf unchanged (lo0 → lo). Each
//! namespace is a host: its /etc/mail (mailname, aliases), /etc/ssl and /etc/passwd come
//! from /etc/netns/NAME (bind-mounted by `ip netns exec`), and its /var/spool and /home are
//! directories of this test. Nodes reach mx0's vio0 (198.51.100.1) over veth pairs from
//! their own vio0 (198.51.100.11-13); a fourth host (198.51.100.99) is a stranger.
//! `sendmail joseph` runs as joseph on each node with the seed's test message.
//! Needs root (network namespaces, mounts), as CI is.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NODES: [(&str, &str); 3] = [
    ("devbox-ntp.home.lan", "198.51.100.11"),
    ("devbox-svc0.home.lan", "198.51.100.12"),
    ("devbox-wg0.home.lan", "198.51.100.13"),
];
const MX0_IP: &str = "198.51.100.1";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\njoseph:x:1000:1000:Joseph:/home/joseph:/bin/sh\nalice:x:1001:1001:Alice:/home/alice:/bin/sh\nmxd:x:999:999:mxd:/nonexistent:/usr/sbin/nologin\n";

fn conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf").join(name)
}

fn sh(script: &str) -> Output {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// One host: a namespace, its /etc/netns files, its spool and home directories.
struct Host {
    ns: String,
    etc: PathBuf,
    root: PathBuf,
}

impl Host {
    fn new(tag: &str, name: &str, top: &Path) -> Host {
        let ns = format!("mxd-{tag}-{}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&ns);
        let root = top.join(tag);
        for d in ["mail", "ssl/private"] {
            std::fs::create_dir_all(etc.join(d)).unwrap();
        }
        std::fs::write(etc.join("mail/mailname"), format!("{name}\n")).unwrap();
        std::fs::write(etc.join("passwd"), PASSWD).unwrap();
        for d in ["spool", "home/joseph", "home/alice"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        sh(&format!("chown 1000:1000 {0}/home/joseph && chown 1001:1001 {0}/home/alice", root.display()));
        sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        Host { ns, etc, root }
    }

    /// A command run on this host: its own /var/spool and /home.
    fn cmd(&self, script: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "sh", "-c"]).arg(format!(
            "mount --bind {r}/spool /var/spool && mount --bind {r}/home /home && {script}",
            r = self.root.display()
        ));
        c
    }

    fn spawn_mxd(&self, conf: &Path, defines: &[String]) -> Child {
        let log = std::fs::File::create(self.root.join("mxd.log")).unwrap();
        let defs: Vec<String> = defines.iter().map(|d| format!("-D {d}")).collect();
        self.cmd(&format!("exec {} -d -v -f {} {}", common::MXD, conf.display(), defs.join(" ")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("mxd.log")).unwrap_or_default()
    }

    fn maildir_new(&self, user: &str) -> PathBuf {
        self.root.join("home").join(user).join("Maildir/new")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.ns]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Links host `node` (its vio0 at `ip`) to mx0 (whose vio0 holds 198.51.100.1).
fn link(mx0: &Host, node: &Host, ip: &str, i: usize) {
    sh(&format!(
        "ip link add vio0 netns {n} type veth peer name n{i} netns {m} && \
         ip -n {n} addr add {ip}/24 dev vio0 && ip -n {n} link set vio0 up && \
         ip -n {m} link set n{i} up && ip -n {m} route add {ip}/32 dev n{i}",
        n = node.ns,
        m = mx0.ns
    ));
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn files(dir: &Path) -> Vec<String> {
    common::read_dir_files(dir).into_iter().map(|b| String::from_utf8_lossy(&b).into_owned()).collect()
}

/// Python on a host: an SMTP dialogue with mx0's vio0, printing each reply code.
const PROBE: &str = r#"
import smtplib, ssl, sys
tls, rcpt = sys.argv[1] == "tls", sys.argv[2]
s = smtplib.SMTP("198.51.100.1", 25, local_hostname="probe")
s.ehlo()
if tls:
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx); s.ehlo()
print(s.docmd("MAIL FROM:<probe@devbox-ntp.home.lan>")[0], s.docmd("RCPT TO:<%s>" % rcpt)[0])
"#;

#[test]
fn seed_end_to_end() {
    if !common::can_run(
        "seed_end_to_end",
        &[common::Need::Root, common::Need::Program("ip", "iproute2"), common::Need::Program("openssl", "openssl")],
    ) {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    // `ip netns exec` bind-mounts /etc/netns/NAME/mail onto /etc/mail, which must exist.
    let _etc_mail = EtcMail(!Path::new("/etc/mail").exists());
    std::fs::create_dir_all("/etc/mail").unwrap();
    let mx0 = Host::new("mx0", "devbox-mx0.home.lan", top.path());
    let nodes: Vec<Host> =
        NODES.iter().enumerate().map(|(i, (name, _))| Host::new(&format!("n{i}"), name, top.path())).collect();
    let stranger = Host::new("x", "stranger.lan", top.path());
    // mx0's vio0: a veth whose other end stays in mx0; nodes route to its address.
    sh(&format!("ip -n {m} link add vio0 type veth peer name vio0p && ip -n {m} addr add {MX0_IP}/32 dev vio0 && ip -n {m} link set vio0 up && ip -n {m} link set vio0p up", m = mx0.ns));
    for (i, node) in nodes.iter().enumerate() {
        link(&mx0, node, NODES[i].1, i);
    }
    link(&mx0, &stranger, "198.51.100.99", 9);
    // The seed's certificate, made with the seed's commands, where the seed puts it.
    sh(&format!(
        "openssl genrsa -out {e}/ssl/private/mx0.jfc.dev.key 4096 2>/dev/null && chmod 600 {e}/ssl/private/mx0.jfc.dev.key && \
         openssl req -x509 -new -key {e}/ssl/private/mx0.jfc.dev.key -out {e}/ssl/mx0.jfc.dev.crt -days 18250 -subj '/C=US/ST=S/L=L/O=O/OU=/CN=mx0.jfc.dev'",
        e = mx0.etc.display()
    ));
    std::fs::copy(conf("aliases"), mx0.etc.join("mail/aliases")).unwrap();

    let ips: Vec<String> = NODES.iter().enumerate().map(|(i, (_, ip))| format!("SERVER_IP_{}={ip}", i + 1)).collect();
    let _mx0d = Kill(mx0.spawn_mxd(&conf("seed-mx0.conf"), &ips));
    let _noded: Vec<Kill> = nodes
        .iter()
        .map(|n| Kill(n.spawn_mxd(&conf("seed-node.conf"), &[format!("MAIL_SERVER_IP={MX0_IP}")])))
        .collect();
    for h in std::iter::once(&mx0).chain(nodes.iter()) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !h.log().contains("mxd started") {
            assert!(Instant::now() < deadline, "mxd on {} did not start:\n{}", h.ns, h.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // `sendmail joseph` as joseph on each node, with the seed's test message.
    let bin = top.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mxctl"), bin.join("sendmail")).unwrap();
    for node in &nodes {
        let out = node
            .cmd(&format!("printf 'Subject: Test Subject\\n\\nHello, EHLO!\\n' | setpriv --reuid 1000 --regid 1000 --clear-groups {}/sendmail joseph", bin.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sendmail on {}: {}\n{}",
            node.ns,
            String::from_utf8_lossy(&out.stderr),
            node.log()
        );
    }
    wait("three messages for joseph on mx0", Duration::from_secs(60), || {
        common::count_files(&mx0.maildir_new("joseph")) == 3
    });
    let msgs = files(&mx0.maildir_new("joseph"));
    for (name, ip) in NODES {
        let m = msgs
            .iter()
            .find(|m| m.contains(&format!("Return-Path: <joseph@{name}>")))
            .unwrap_or_else(|| panic!("no message from {name}: {msgs:?}"));
        assert!(m.starts_with(&format!("Return-Path: <joseph@{name}>\nDelivered-To: joseph@{name}\nReceived: from {name} (unknown [{ip}])\n\tby devbox-mx0.home.lan (mxd) with ESMTPS id ")), "{m}");
        assert!(m.contains("(TLSv1.3:TLS13_"), "{m}");
        assert!(
            m.contains(&format!("Received: from localhost ({name} [local])\n\tby {name} (mxd) with ESMTPA id ")),
            "{m}"
        );
        assert_eq!(m.matches("Received: ").count(), 2, "{m}");
        assert!(
            m.contains("\nSubject: Test Subject\n") && m.contains("\nDate: ") && m.contains("\nMessage-ID: <"),
            "{m}"
        );
        // sendmail added From: with joseph's GECOS name from the node's /etc/passwd.
        assert!(m.contains(&format!("\nFrom: Joseph <joseph@{name}>\n")), "{m}");
        assert!(m.ends_with("\n\nHello, EHLO!\n"), "{m}");
    }

    // root reaches joseph through mx0's aliases file.
    let out = nodes[0]
        .cmd(&format!("printf 'Subject: for root\\n\\nsecurity report\\n' | {}/sendmail root", bin.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    wait("root's mail in joseph's Maildir", Duration::from_secs(30), || {
        common::count_files(&mx0.maildir_new("joseph")) == 4
    });

    // Refusals on mx0's vio0: a source not in <addresses>, a domain not in <domains>,
    // plaintext MAIL on the tls-require listener.
    let probe = |h: &Host, tls: &str, rcpt: &str| -> String {
        let out = h.cmd(&format!("python3 -c '{}' {tls} {rcpt}", PROBE.replace('\'', "'\\''"))).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    assert_eq!(probe(&stranger, "tls", "joseph@devbox-ntp.home.lan"), "250 550", "stranger refused");
    assert_eq!(probe(&nodes[0], "tls", "joseph@elsewhere.lan"), "250 550", "foreign domain refused");
    assert!(probe(&nodes[0], "plain", "joseph@devbox-ntp.home.lan").starts_with("530 "), "plaintext MAIL refused");

    // Edit mx0's aliases, run newaliases there: root now goes to alice, no restart.
    std::fs::write(mx0.etc.join("mail/aliases"), "root: alice\n").unwrap();
    let out = mx0
        .cmd(&format!(
            "ln -sf {} {}/newaliases && {}/newaliases",
            env!("CARGO_BIN_EXE_mxctl"),
            bin.display(),
            bin.display()
        ))
        .env("MXD_CONF", conf("seed-mx0.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "newaliases: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nodes[1]
        .cmd(&format!("printf 'Subject: again\\n\\nfor root\\n' | {}/sendmail root", bin.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    wait("root's mail in alice's Maildir", Duration::from_secs(30), || {
        common::count_files(&mx0.maildir_new("alice")) == 1
    });
    assert_eq!(common::count_files(&mx0.maildir_new("joseph")), 4, "{}", mx0.log());
}

struct EtcMail(bool);

impl Drop for EtcMail {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::fs::remove_dir("/etc/mail");
        }
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
