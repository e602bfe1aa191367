//! A real DNS server for the tests: dnsmasq on a loopback address and a port of its own,
//! serving the records a test gives it, and nothing else (`--local=/test/`: names under
//! `test` it does not know are NXDOMAIN). Also a resolv.conf naming it, in OpenBSD's
//! `nameserver [ADDR]:PORT` form that mxd reads.
#![allow(dead_code)] // each test file uses a different part

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on `ip` (a 127.x address of the test's own) with `records`, e.g.
    /// `--mx-host=a.test,mx1.a.test,10`; waits until it answers.
    pub fn start(ip: &str, records: &[String]) -> Dnsmasq {
        let ip: IpAddr = ip.parse().expect("ip");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dnsmasq.log");
        for _ in 0..5 {
            let port = UdpSocket::bind((ip, 0)).and_then(|s| s.local_addr()).expect("free udp port").port();
            let mut child = Command::new(DNSMASQ)
                .args(["--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
                .args(["--log-queries", "--local=/test/", "--user=root", "--pid-file="])
                .arg(format!("--listen-address={ip}"))
                .arg(format!("--port={port}"))
                .arg(format!("--log-facility={}", log.display()))
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let addr = SocketAddr::new(ip, port);
            if wait_answering(&mut child, addr) {
                return Dnsmasq { child, addr, log, _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on {ip}");
    }

    /// A resolv.conf in `dir` naming this server, with `options` (e.g. "timeout:1").
    pub fn resolv_conf(&self, dir: &Path, options: &str) -> PathBuf {
        let path = dir.join("resolv.conf");
        let text = format!("nameserver [{}]:{}\noptions {options}\n", self.addr.ip(), self.addr.port());
        std::fs::write(&path, text).expect("resolv.conf");
        path
    }

    pub fn queries(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// True once dnsmasq answers a query over UDP (any answer), false if it exited.
fn wait_answering(child: &mut Child, addr: SocketAddr) -> bool {
    // A query for "ready.test" A, id 0x0101.
    let mut q = vec![1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = UdpSocket::bind((addr.ip(), 0)).expect("udp");
    s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        let _ = s.send_to(&q, addr);
        let mut buf = [0u8; 512];
        if s.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
