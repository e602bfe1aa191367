//! `mxd -n` on every configuration under conf/ and on broken ones (issue 2), and the
//! quickstart configuration run for real, through the binary a user runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::MXD;

fn conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf").join(name)
}

fn mxd_n(args: &[&str]) -> Output {
    Command::new(MXD).arg("-n").args(args).env_remove("MXD_CONF").output().expect("run mxd -n")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn shipped_configurations_check_ok() {
    let conf_dir = conf("");
    let example_dir = format!("EXAMPLE_DIR={}", conf_dir.display());
    let cases: [(&str, &[&str]); 3] = [
        ("quickstart.conf", &[]),
        ("example.conf", &["-D", &example_dir]),
        ("seed-node.conf", &["-D", "MAIL_SERVER_IP=192.0.2.10"]),
    ];
    for (name, extra) in cases {
        let path = conf(name);
        let mut args = vec!["-f", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = mxd_n(&args);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration OK\n");
    }
}

#[test]
fn seed_node_needs_its_macro() {
    let out = mxd_n(&["-f", conf("seed-node.conf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("seed-node.conf:3: macro 'MAIL_SERVER_IP' not defined"), "{}", text(&out));
}

/// The seed's mx0 configuration, unchanged but for lo0 → lo, checked on a host that has
/// its interface (vio0, in a network namespace of ours) and its files (/etc/ssl, /etc/mail,
/// bind-mounted from /etc/netns/NAME by `ip netns exec`). Needs root, as CI is.
#[test]
fn seed_mx0_checks_ok_on_a_host_with_vio0() {
    if !common::can_run(
        "seed_mx0_checks_ok_on_a_host_with_vio0",
        &[common::Need::Root, common::Need::Program("ip", "iproute2"), common::Need::Program("openssl", "openssl")],
    ) {
        return;
    }
    let ns = format!("mxd-cfg-{}", std::process::id());
    let etc = PathBuf::from("/etc/netns").join(&ns);
    // `ip netns exec` bind-mounts /etc/netns/NAME/mail onto /etc/mail, which must exist.
    let made_etc_mail = !Path::new("/etc/mail").exists();
    std::fs::create_dir_all("/etc/mail").unwrap();
    let _cleanup = Cleanup(ns.clone(), etc.clone(), made_etc_mail);
    std::fs::create_dir_all(etc.join("ssl/private")).unwrap();
    std::fs::create_dir_all(etc.join("mail")).unwrap();
    std::fs::copy(conf("aliases"), etc.join("mail/aliases")).unwrap();
    let key = etc.join("ssl/private/mx0.jfc.dev.key");
    let crt = etc.join("ssl/mx0.jfc.dev.crt");
    sh(&format!(
        "openssl genrsa -out {k} 2048 2>/dev/null && chmod 600 {k} && openssl req -x509 -new -key {k} -out {c} -days 18250 -subj '/C=US/ST=S/L=L/O=O/OU=/CN=mx0.jfc.dev'",
        k = key.display(),
        c = crt.display()
    ));
    sh(&format!("ip netns add {ns} && ip -n {ns} link add vio0 type veth peer name vio0p && ip -n {ns} addr add 198.51.100.1/24 dev vio0 && ip -n {ns} link set lo up"));
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, MXD, "-n", "-f"])
        .arg(conf("seed-mx0.conf"))
        .args(["-D", "SERVER_IP_1=198.51.100.2", "-D", "SERVER_IP_2=198.51.100.3", "-D", "SERVER_IP_3=198.51.100.4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Outside that host, vio0 does not exist: the error names the line.
    let out = mxd_n(&[
        "-f",
        conf("seed-mx0.conf").to_str().unwrap(),
        "-D",
        "SERVER_IP_1=1.2.3.4",
        "-D",
        "SERVER_IP_2=1.2.3.5",
        "-D",
        "SERVER_IP_3=1.2.3.6",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("seed-mx0.conf:10: no interface or address 'vio0'"), "{}", text(&out));
}

struct Cleanup(String, PathBuf, bool);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        let _ = std::fs::remove_dir_all(&self.1);
        if self.2 {
            let _ = std::fs::remove_dir("/etc/mail");
        }
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out));
}

#[test]
fn broken_configs_name_file_and_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("inc.conf");
    std::fs::write(&inc, "listen on lo\n\naction a maildir alias <missing>\n").unwrap();
    let main = dir.path().join("smtpd.conf");
    std::fs::write(
        &main,
        format!("# first line\ninclude \"{}\"\nmatch from any for any action nowhere\n", inc.display()),
    )
    .unwrap();
    let out = mxd_n(&["-f", main.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3: table 'missing' is not defined", inc.display())), "{err}");
    assert!(err.contains(&format!("{}:3: action 'nowhere' is not defined", main.display())), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn mxd_conf_variable_names_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.conf");
    std::fs::write(&path, "listen on 127.0.0.1 port 2599\n").unwrap();
    let out = Command::new(MXD).arg("-n").env("MXD_CONF", &path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&path, "listen on\n").unwrap();
    let out = Command::new(MXD).arg("-n").env("MXD_CONF", &path).output().unwrap();
    assert!(text(&out).contains("x.conf:1: syntax error: expected an interface"), "{}", text(&out));
    let out = Command::new(MXD).arg("-n").env("MXD_CONF", dir.path().join("absent.conf")).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("absent.conf"), "{}", text(&out));
}

/// The README's first command, in a scratch directory: mail to joseph lands in
/// ./mail/joseph/Maildir/new, mail to a stranger is refused at RCPT.
#[test]
fn quickstart_runs_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(conf("quickstart.conf"), dir.path().join("quickstart.conf")).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child =
        Command::new(MXD).args(["-d", "-f", "quickstart.conf"]).current_dir(dir.path()).stderr(log).spawn().unwrap();
    let ready = (0..1200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        std::net::TcpStream::connect("127.0.0.1:2525").is_ok()
    });
    let script = r#"
import smtplib
with smtplib.SMTP("127.0.0.1", 2525) as s:
    print(s.sendmail("me@example.org", ["joseph@mxd.quickstart", "root@mxd.quickstart", "nobody@mxd.quickstart"], b"Subject: hello\r\n\r\nHello, EHLO!\r\n"))
"#;
    let out = if ready { Some(Command::new("python3").arg("-c").arg(script).output().unwrap()) } else { None };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let out = out.unwrap_or_else(|| panic!("quickstart did not listen on 127.0.0.1:2525:\n{log}"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("'nobody@mxd.quickstart': (550"), "{}", text(&out));
    assert!(status.success(), "exit on SIGINT: {status:?}\n{log}");
    let new = dir.path().join("mail/joseph/Maildir/new");
    let files = common::read_dir_files(&new);
    assert_eq!(files.len(), 1, "one copy for joseph and root, deduplicated\n{log}");
    assert!(String::from_utf8_lossy(&files[0]).ends_with("\n\nHello, EHLO!\n"));
}
