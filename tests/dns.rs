//! The resolver (src/dns) against a real dnsmasq on loopback, and against a deliberately bad
//! server (tests/dns_util/responder.py) for malformed answers.

mod common;
mod dns_util;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{can_run, Need};
use dns_util::{Dnsmasq, DNSMASQ};
use mxd::dns::service::{DnsAnswer, DnsQuery, Service};
use mxd::dns::{Hosts, Lookup, Mx, ResolvConf, Resolver};

fn needs_dnsmasq(test: &str) -> bool {
    can_run(test, &[Need::File(DNSMASQ, "dnsmasq-base")])
}

fn resolver(server: SocketAddr, timeout_secs: u64) -> Resolver {
    let text = format!("nameserver [{}]:{}\noptions timeout:{timeout_secs} attempts:1\n", server.ip(), server.port());
    Resolver::new(ResolvConf::parse(&text), Hosts::default())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn records() -> Vec<String> {
    [
        "--mx-host=multi.test,mx20.multi.test,20",
        "--mx-host=multi.test,mx10.multi.test,10",
        "--host-record=mx10.multi.test,127.0.0.11,::1",
        "--host-record=mx20.multi.test,127.0.0.12",
        "--mx-host=null.test,.,0",
        "--cname=alias.test,mx20.multi.test",
        "--cname=alias2.test,alias.test",
        "--ptr-record=12.0.0.127.in-addr.arpa,mx20.multi.test",
        "--ptr-record=13.0.0.127.in-addr.arpa,liar.test",
        "--host-record=liar.test,127.0.0.99",
        "--server=/dead.test/127.0.0.1#9",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn lookups_against_dnsmasq() {
    if !needs_dnsmasq("lookups_against_dnsmasq") {
        return;
    }
    let d = Dnsmasq::start("127.0.53.1", &records());
    let r = resolver(d.addr, 2);
    let mut mx = match r.mx("Multi.TEST") {
        Lookup::Ok(mx) => mx,
        other => panic!("{other:?}"),
    };
    mx.sort_by_key(|m| m.preference);
    assert_eq!(
        mx,
        vec![
            Mx { preference: 10, exchange: "mx10.multi.test".into() },
            Mx { preference: 20, exchange: "mx20.multi.test".into() }
        ]
    );
    assert_eq!(r.mx("null.test"), Lookup::Ok(vec![Mx { preference: 0, exchange: String::new() }]));
    assert_eq!(r.mx("nowhere.test"), Lookup::NxDomain);
    assert_eq!(r.mx("mx10.multi.test"), Lookup::NoData);
    assert_eq!(r.addrs("mx10.multi.test"), Lookup::Ok(vec![ip("::1"), ip("127.0.0.11")]));
    assert_eq!(r.a("mx10.multi.test"), Lookup::Ok(vec![ip("127.0.0.11")]));
    assert_eq!(r.aaaa("mx20.multi.test"), Lookup::NoData);
    // Two CNAMEs to an address record.
    assert_eq!(r.a("alias2.test"), Lookup::Ok(vec![ip("127.0.0.12")]));
    assert_eq!(r.ptr(ip("127.0.0.12")), Lookup::Ok(vec!["mx20.multi.test".into()]));
    assert_eq!(r.fcrdns(ip("127.0.0.12")), Lookup::Ok(vec!["mx20.multi.test".into()]));
    // liar.test does not point back at 127.0.0.13: not confirmed.
    assert_eq!(r.ptr(ip("127.0.0.13")), Lookup::Ok(vec!["liar.test".into()]));
    assert_eq!(r.fcrdns(ip("127.0.0.13")), Lookup::NoData);
}

#[test]
fn a_silent_upstream_is_a_temporary_failure_within_the_timeout() {
    if !needs_dnsmasq("a_silent_upstream_is_a_temporary_failure_within_the_timeout") {
        return;
    }
    let d = Dnsmasq::start("127.0.53.2", &records());
    let r = resolver(d.addr, 1);
    let start = Instant::now();
    assert!(matches!(r.mx("dead.test"), Lookup::TempFail(_)));
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());
}

#[test]
fn nobody_listening_is_a_temporary_failure() {
    let port = UdpSocket::bind("127.0.53.3:0").unwrap().local_addr().unwrap().port();
    let r = resolver(SocketAddr::new(ip("127.0.53.3"), port), 1);
    let start = Instant::now();
    assert!(matches!(r.mx("example.test"), Lookup::TempFail(_)));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn hosts_file_comes_first() {
    let port = UdpSocket::bind("127.0.53.3:0").unwrap().local_addr().unwrap().port();
    let conf = ResolvConf::parse(&format!("nameserver [127.0.53.3]:{port}\noptions timeout:1 attempts:1\n"));
    let r = Resolver::new(conf, Hosts::parse("192.0.2.5 files.test\n"));
    assert_eq!(r.addrs("FILES.test."), Lookup::Ok(vec![ip("192.0.2.5")]));
    assert_eq!(r.ptr(ip("192.0.2.5")), Lookup::Ok(vec!["files.test".into()]));
}

struct Responder(Child);

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn responder(addr: &str) -> (Responder, SocketAddr) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dns_util/responder.py");
    for _ in 0..5 {
        let port = UdpSocket::bind((addr, 0)).unwrap().local_addr().unwrap().port();
        let mut child = Command::new("python3")
            .arg(script)
            .arg(addr)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() == "ready" {
            return (Responder(child), SocketAddr::new(ip(addr), port));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("responder did not start");
}

#[test]
fn malformed_answers_never_pass_for_answers() {
    if !can_run("malformed_answers_never_pass_for_answers", &[Need::Program("python3", "python3")]) {
        return;
    }
    let (_r, addr) = responder("127.0.54.1");
    let r = resolver(addr, 1);
    assert_eq!(r.a("ok.x.test"), Lookup::Ok(vec![ip("192.0.2.1")]));
    // The datagram with another id is dropped; the real answer that follows is taken.
    assert_eq!(r.a("wrongid.x.test"), Lookup::Ok(vec![ip("192.0.2.1")]));
    // Truncated over UDP: asked again over TCP, where 300 records (4.8 KB) arrive whole.
    match r.a("tc.x.test") {
        Lookup::Ok(a) => assert_eq!(a.len(), 300),
        other => panic!("{other:?}"),
    }
    for name in ["wrongq.x.test", "loop.x.test", "cut.x.test", "servfail.x.test", "silent.x.test"] {
        let start = Instant::now();
        match r.a(name) {
            Lookup::TempFail(why) => eprintln!("{name}: {why}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(3), "{name} took {:?}", start.elapsed());
    }
}

#[test]
fn the_resolver_thread_answers_through_a_callback() {
    if !needs_dnsmasq("the_resolver_thread_answers_through_a_callback") {
        return;
    }
    let d = Dnsmasq::start("127.0.53.4", &records());
    let service = Service::spawn(Arc::new(resolver(d.addr, 2)), 2).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, req) in [DnsQuery::Fcrdns(ip("127.0.0.12")), DnsQuery::Mx("nowhere.test".into())].into_iter().enumerate() {
        let tx = tx.clone();
        assert!(service.submit(req, move |reply| tx.send((i, reply)).unwrap()));
    }
    let mut got: Vec<(usize, DnsAnswer)> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(got[0].1, DnsAnswer::Names(Lookup::Ok(vec!["mx20.multi.test".into()])));
    assert_eq!(got[1].1, DnsAnswer::Mx(Lookup::NxDomain));
}
