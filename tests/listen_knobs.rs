//! Listen options that shape what a client sees and what the Received header says
//! (issue 14): `mask-src`, `hostnames <t>`, and the PROXY header of `proxy-v2` (v2 binary,
//! v1 text), each against the real daemon on loopback.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{basic_conf, wait_for, Mxd};

/// One SMTP dialogue on a raw socket: whatever `prefix` is (a PROXY header) goes first.
struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: &str, port: u16, prefix: &[u8]) -> Raw {
        let mut stream = TcpStream::connect((addr, port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(prefix).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    /// EHLO, one message to joseph@test, QUIT; returns the RCPT reply (and stops there
    /// unless it was a 250).
    fn send_message(&mut self, body: &str) -> String {
        assert!(self.cmd("EHLO client.example").starts_with("250"));
        assert!(self.cmd("MAIL FROM:<sender@example.org>").starts_with("250"));
        let rcpt = self.cmd("RCPT TO:<joseph@test>");
        if !rcpt.starts_with("250") {
            return rcpt;
        }
        assert!(self.cmd("DATA").starts_with("354"));
        let done = self.cmd(&format!("Subject: {body}\r\n\r\n{body}\r\n."));
        assert!(done.starts_with("250"), "{done}");
        self.cmd("QUIT");
        rcpt
    }
}

/// The stored message containing `needle`, once delivered.
fn message_with(mxd: &Mxd, needle: &str) -> String {
    let mut found = None;
    wait_for("the delivered message", Duration::from_secs(10), || {
        found = mxd
            .messages("joseph")
            .into_iter()
            .map(|m| String::from_utf8_lossy(&m).into_owned())
            .find(|m| m.contains(needle));
        found.is_some()
    });
    found.unwrap()
}

fn with_listen(conf: String, port: u16, listen: &str) -> String {
    conf.replace(&format!("listen on 127.0.0.1 port {port}\n"), listen)
}

#[test]
fn mask_src_leaves_the_client_out_of_received() {
    let mxd = Mxd::start_with(
        |d, p| with_listen(basic_conf(d, p), p, &format!("listen on 127.0.0.1 port {p} mask-src\n")),
        &[],
    );
    let mut c = Raw::connect("127.0.0.1", mxd.port, b"");
    assert!(c.reply().starts_with("220 mx.test "));
    c.send_message("masked-1");
    let m = message_with(&mxd, "masked-1");
    // OpenSMTPD's form: "Received: " and at once the "by" line, no HELO, name or address.
    assert!(m.contains("Received: \n\tby mx.test (mxd) with ESMTP id "), "{m}");
    assert!(!m.contains("client.example") && !m.contains("127.0.0.1"), "{m}");
}

#[test]
fn hostnames_picks_the_name_by_local_address() {
    let mxd = Mxd::start_with(
        |d, p| {
            let listen = format!(
                "table names {{ 127.0.0.1 = \"one.test\", 127.0.0.2 = \"two.test\" }}\n\
                 listen on 127.0.0.1 port {p} hostnames <names>\n\
                 listen on 127.0.0.2 port {p} hostnames <names>\n\
                 listen on 127.0.0.3 port {p} hostnames <names>\n"
            );
            with_listen(basic_conf(d, p), p, &listen)
        },
        &[],
    );
    for (addr, name) in [("127.0.0.1", "one.test"), ("127.0.0.2", "two.test"), ("127.0.0.3", "mx.test")] {
        let mut c = Raw::connect(addr, mxd.port, b"");
        let greeting = c.reply();
        assert!(greeting.starts_with(&format!("220 {name} ")), "{addr}: {greeting}");
        let ehlo = c.cmd("EHLO client.example");
        assert!(ehlo.starts_with(&format!("250-{name} ")), "{addr}: {ehlo}");
        c.cmd("QUIT");
    }
    let mut c = Raw::connect("127.0.0.2", mxd.port, b"");
    c.reply();
    c.send_message("named-2");
    let m = message_with(&mxd, "named-2");
    assert!(m.contains("\n\tby two.test (mxd) with ESMTP id "), "{m}");
}

fn proxy_v2(src: [u8; 4], local: bool) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([if local { 0x20 } else { 0x21 }, 0x11, 0, 12]);
    h.extend(src);
    h.extend([127, 0, 0, 1, 0xc3, 0x50, 0, 25]);
    h
}

fn proxy_conf(d: &std::path::Path, p: u16) -> String {
    let conf = with_listen(basic_conf(d, p), p, &format!("listen on 127.0.0.1 port {p} proxy-v2\n"));
    // The rules see the address the header names: this one is turned away.
    conf.replacen("match ", "match from src 203.0.113.9 for any reject\nmatch ", 1)
}

#[test]
fn proxy_v2_and_v1_headers_set_the_client_address() {
    let mxd = Mxd::start_with(proxy_conf, &[]);
    let mut c = Raw::connect("127.0.0.1", mxd.port, &proxy_v2([192, 0, 2, 7], false));
    assert!(c.reply().starts_with("220 mx.test "));
    c.send_message("proxied-v2");
    let m = message_with(&mxd, "proxied-v2");
    assert!(m.contains("Received: from client.example (unknown [192.0.2.7])"), "{m}");
    assert!(mxd.logged("smtp proxy address=192.0.2.7 via=127.0.0.1"), "{}", mxd.log());

    // v1, and the header cut in two writes: the greeting waits for the whole of it.
    let mut c = Raw::connect("127.0.0.1", mxd.port, b"PROXY TCP4 198.51.100.9 ");
    std::thread::sleep(Duration::from_millis(200));
    c.stream.write_all(b"127.0.0.1 40000 25\r\n").unwrap();
    assert!(c.reply().starts_with("220 mx.test "));
    c.send_message("proxied-v1");
    let m = message_with(&mxd, "proxied-v1");
    assert!(m.contains("(unknown [198.51.100.9])"), "{m}");

    // The rules judge the proxied client, not the proxy.
    let mut c = Raw::connect("127.0.0.1", mxd.port, b"PROXY TCP4 203.0.113.9 127.0.0.1 1 25\r\n");
    assert!(c.reply().starts_with("220 "));
    let refused = c.send_message("never");
    assert!(refused.starts_with("550 "), "{refused}");

    // LOCAL (a proxy's health check): the connection's own address stands.
    let mut c = Raw::connect("127.0.0.1", mxd.port, &proxy_v2([0; 4], true));
    assert!(c.reply().starts_with("220 "));
    c.send_message("proxy-local");
    let m = message_with(&mxd, "proxy-local");
    assert!(m.contains("(unknown [127.0.0.1])"), "{m}");
}

#[test]
fn proxy_listener_refuses_a_client_without_a_header() {
    let mxd = Mxd::start_with(proxy_conf, &[]);
    for (what, first) in [
        ("plain SMTP", &b"EHLO direct.example\r\n"[..]),
        ("a forged v1 line", b"PROXY TCP4 not-an-address 127.0.0.1 1 25\r\n"),
        ("an unknown v2 version", b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c000000000000"),
        ("an oversized v2 header", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff"),
    ] {
        let mut c = Raw::connect("127.0.0.1", mxd.port, first);
        let mut got = Vec::new();
        let _ = c.stream.read_to_end(&mut got);
        assert!(got.is_empty(), "{what}: the server said {:?}", String::from_utf8_lossy(&got));
    }
    assert!(mxd.logged("reason=proxy-error address=127.0.0.1"), "{}", mxd.log());
    assert!(mxd.messages("joseph").is_empty());
}

/// `smtp limit max-mails N`: the N+1th transaction of a session is refused with
/// OpenSMTPD's 452; a new session may send again.
#[test]
fn max_mails_bounds_the_messages_of_one_session() {
    let mxd = Mxd::start_with(|d, p| format!("{}smtp limit max-mails 2\n", basic_conf(d, p)), &[]);
    let mut c = Raw::connect("127.0.0.1", mxd.port, b"");
    c.reply();
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    for i in 0..2 {
        assert!(c.cmd("MAIL FROM:<sender@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        assert!(c.cmd(&format!("Subject: m{i}\r\n\r\nbody\r\n.")).starts_with("250"));
    }
    let third = c.cmd("MAIL FROM:<sender@example.org>");
    assert!(third.starts_with("452 4.5.3 "), "{third}");
    c.cmd("QUIT");
    let mut again = Raw::connect("127.0.0.1", mxd.port, b"");
    again.reply();
    assert!(again.send_message("next-session").starts_with("250"));
    message_with(&mxd, "next-session");
}
