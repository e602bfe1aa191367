//! A real rspamd on 127.0.0.1 for the filter tests: one scanning worker, state in a
//! temporary directory, no DNS.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RSPAMD: &str = "/usr/bin/rspamd";
pub const FILTER: &str = "/usr/libexec/opensmtpd/filter-rspamd";
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

pub struct Rspamd {
    child: Child,
    pub port: u16,
}

impl Rspamd {
    /// Starts rspamd with `actions` as its local.d/actions.conf (greylisting, which needs
    /// redis, must be off) and waits until it listens. Loading its rules takes a while on a
    /// loaded machine; a start that fails (the free port taken meanwhile) is tried once more.
    pub fn start(dir: &Path, actions: &str) -> Rspamd {
        let mut last = String::new();
        for attempt in 0..2 {
            let dir = dir.join(format!("try{attempt}"));
            match Self::try_start(&dir, actions) {
                Ok(r) => return r,
                Err(why) => last = why,
            }
        }
        panic!("rspamd did not listen: {last}");
    }

    fn try_start(dir: &Path, actions: &str) -> Result<Rspamd, String> {
        for d in ["local/local.d", "db", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let port = super::free_port();
        let d = dir.display();
        let conf = format!(
            r#".include "$CONFDIR/common.conf"
options {{
    .include "$CONFDIR/options.inc"
    pidfile = "{d}/run/rspamd.pid";
    dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }}
}}
logging {{ type = "console"; level = "error"; }}
worker "normal" {{
    .include "$CONFDIR/worker-normal.inc"
    bind_socket = "127.0.0.1:{port}";
    count = 1;
}}
"#
        );
        std::fs::write(dir.join("rspamd.conf"), conf).unwrap();
        std::fs::write(dir.join("local/local.d/actions.conf"), actions).unwrap();
        let log_path = dir.join("rspamd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(RSPAMD)
            .args(["-f", "-i", "-c"])
            .arg(dir.join("rspamd.conf"))
            .arg(format!("--var=DBDIR={d}/db"))
            .arg(format!("--var=RUNDIR={d}/run"))
            .arg(format!("--var=LOCAL_CONFDIR={d}/local"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut r = Rspamd { child, port };
        let limit = Instant::now() + Duration::from_secs(150);
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(format!("rspamd exited ({status}): {}", log()));
            }
            if Instant::now() > limit {
                return Err(format!("not within 150 s: {}", log()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(r)
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its workers.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let _ = self.child.wait();
    }
}
