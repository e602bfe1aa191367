//! Dovecot's LMTP server for the lmtp tests, on 127.0.0.1:PORT and on the unix socket
//! DIR/run/lmtp-test, delivering into Maildirs under DIR/home for the users it is given
//! (each delivered as nobody: Dovecot refuses uid 0). Stopped on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Dovecot {
    conf: PathBuf,
    pub socket: PathBuf,
}

impl Dovecot {
    /// `users`: the names Dovecot knows (a bare user or a whole address); each gets
    /// DIR/home/LOCALPART/Maildir.
    pub fn start(dir: &Path, port: u16, users: &[&str]) -> Dovecot {
        let d = dir.display();
        // Dovecot delivers as nobody: the tree must be reachable.
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("chmod 755 {d} && mkdir -p {d}/home && chown 65534:65534 {d}/home"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "preparing {d}");
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}::65534:65534::{d}/home/{}::\n", u.split('@').next().unwrap_or(u)))
            .collect();
        std::fs::write(dir.join("users"), passwd).unwrap();
        let conf = dir.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {d}/run\nstate_dir = {d}/state\nprotocols = lmtp\nlisten = 127.0.0.1\nlog_path = {d}/dovecot.log\nssl = no\n\
                 default_internal_user = root\ndefault_internal_group = root\ndefault_login_user = root\n\
                 passdb {{\n driver = static\n args = nopassword=y\n}}\n\
                 userdb {{\n driver = passwd-file\n args = {d}/users\n}}\n\
                 mail_location = maildir:~/Maildir\n\
                 service lmtp {{\n inet_listener lmtp {{\n address = 127.0.0.1\n port = {port}\n }}\n\
                 unix_listener lmtp-test {{\n mode = 0666\n }}\n}}\n"
            ),
        )
        .unwrap();
        // The daemon keeps its stdio: a file, not a pipe that would never close.
        let errors = std::fs::File::create(dir.join("dovecot.err")).unwrap();
        let status =
            Command::new("dovecot").arg("-c").arg(&conf).stdout(errors.try_clone().unwrap()).stderr(errors).status();
        let status = status.expect("dovecot (apt-get install dovecot-lmtpd)");
        assert!(status.success(), "dovecot: {}", std::fs::read_to_string(dir.join("dovecot.err")).unwrap_or_default());
        let socket = dir.join("run/lmtp-test");
        super::wait_for("dovecot's LMTP listeners", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && socket.exists()
        });
        Dovecot { conf, socket }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("doveadm").arg("-c").arg(&self.conf).arg("stop").output();
    }
}
