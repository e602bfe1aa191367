//! Issue 14: `listen … hostnames <t>` with a table process (tests/tables/proc_table.py).
//! The delivery process asks it the name for the local address a client reached while the
//! greeting waits: the mapped name in the 220 and the EHLO reply; no entry, a value that is
//! no host name, or a dead table process: the listener's own name, and a log line saying why.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{basic_conf, can_run, Mxd, Need};

/// The greeting and the EHLO reply's first line a client at `addr` gets.
fn greeting_and_ehlo(addr: &str, port: u16) -> (String, String) {
    let stream = TcpStream::connect((addr, port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    (&stream).write_all(b"EHLO client.example\r\n").unwrap();
    let mut ehlo = String::new();
    reader.read_line(&mut ehlo).unwrap();
    let _ = (&stream).write_all(b"QUIT\r\n");
    (greeting, ehlo)
}

/// The table program and its data where the unprivileged user can read them.
fn table_dir() -> tempfile::TempDir {
    let names = "127.0.0.1 one.test\n127.0.0.2 two.test\n127.0.0.4 not a name\n";
    common::proc_table_dir(&[("names", names.to_owned())], &["dead"])
}

#[test]
fn hostnames_from_a_table_process_name_the_greeting() {
    if !can_run("hostnames_from_a_table_process_name_the_greeting", &[Need::Program("python3", "python3")]) {
        return;
    }
    let t = table_dir();
    let mxd = Mxd::start_with(
        |d, p| {
            // `dead` reads a data file that is not there: its process exits at once.
            let listen = format!(
                "{}{}listen on 127.0.0.1 port {p} hostnames <names>\n\
                 listen on 127.0.0.2 port {p} hostnames <names>\n\
                 listen on 127.0.0.3 port {p} hostnames <names>\n\
                 listen on 127.0.0.4 port {p} hostnames <names>\n\
                 listen on 127.0.0.5 port {p} hostnames <dead>\n",
                common::proc_table(t.path(), "names", "names", "addrname"),
                common::proc_table(t.path(), "dead", "missing", "addrname"),
            );
            basic_conf(d, p).replace(&format!("listen on 127.0.0.1 port {p}\n"), &listen)
        },
        &[],
    );
    for (addr, name) in [("127.0.0.1", "one.test"), ("127.0.0.2", "two.test")] {
        let (greeting, ehlo) = greeting_and_ehlo(addr, mxd.port);
        assert!(greeting.starts_with(&format!("220 {name} ")), "{addr}: {greeting}");
        assert!(ehlo.starts_with(&format!("250-{name} ")), "{addr}: {ehlo}");
    }
    assert!(mxd.logged("smtp hostname address=127.0.0.1 name=one.test"), "{}", mxd.log());
    // No entry: the listener's own name, as with a file table.
    let (greeting, ehlo) = greeting_and_ehlo("127.0.0.3", mxd.port);
    assert!(greeting.starts_with("220 mx.test ") && ehlo.starts_with("250-mx.test "), "{greeting}{ehlo}");
    // A value that could not stand in a greeting is not used.
    let (greeting, _) = greeting_and_ehlo("127.0.0.4", mxd.port);
    assert!(greeting.starts_with("220 mx.test "), "{greeting}");
    assert!(mxd.logged("names 127.0.0.4 \"not a name\", not a host name"), "{}", mxd.log());
    // A table process that dies: the listener's own name, and the failure is logged.
    let (greeting, ehlo) = greeting_and_ehlo("127.0.0.5", mxd.port);
    assert!(greeting.starts_with("220 mx.test ") && ehlo.starts_with("250-mx.test "), "{greeting}{ehlo}");
    assert!(mxd.logged("smtp hostname lookup failed"), "{}", mxd.log());
}
