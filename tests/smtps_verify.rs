//! Issue 14, `listen … smtps verify … ca NAME`: the TLS handshake of an smtps listener wants
//! a client certificate signed by the listener's CA. python's ssl without a certificate, or
//! with one from another CA, is refused at the handshake and nothing is delivered; with
//! one from the CA, the message goes through.

mod common;

use std::path::Path;
use std::process::Command;

use common::{python, Mxd};

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().expect("sh");
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// In `dir`: ca.{crt,key} and other-ca.{crt,key}; mx.{crt,key} for the server (self-signed);
/// client.{crt,key} signed by ca, stranger.{crt,key} signed by other-ca.
fn certificates(dir: &Path) {
    sh(&format!(
        "set -e; cd {}; \
         for c in ca other-ca mx; do \
           openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $c.key -out $c.crt -days 30 -subj /CN=$c.test 2>/dev/null; \
         done; \
         printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=clientAuth\\n' > ext; \
         for pair in client:ca stranger:other-ca; do n=${{pair%%:*}}; by=${{pair#*:}}; \
           openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n.test 2>/dev/null; \
           openssl x509 -req -in $n.csr -CA $by.crt -CAkey $by.key -CAcreateserial -days 30 -extfile ext -out $n.crt 2>/dev/null; \
         done; chmod 600 *.key",
        dir.display()
    ));
}

const SEND_SMTPS: &str = r#"
import smtplib, ssl, sys
port, cert = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
if cert != "none":
    ctx.load_cert_chain(cert + ".crt", cert + ".key")
try:
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20) as s:
        s.sendmail("a@example.org", ["joseph@test"], ("Subject: %s\r\n\r\nx\r\n" % sys.argv[3]).encode())
    print("sent")
except Exception as e:
    print("refused", type(e).__name__)
"#;

#[test]
fn smtps_verify_wants_a_client_certificate_from_the_ca() {
    if !common::can_run(
        "smtps_verify_wants_a_client_certificate_from_the_ca",
        &[common::Need::Program("openssl", "openssl"), common::Need::Program("python3", "python3")],
    ) {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let c = certs.path().display().to_string();
    let smtps_port = common::free_port();
    let c0 = c.clone();
    let mxd = Mxd::start_with(
        move |d, p| {
            format!(
                "pki mx.test cert \"{c0}/mx.crt\"\npki mx.test key \"{c0}/mx.key\"\nca clients cert \"{c0}/ca.crt\"\n{}\
                 listen on 127.0.0.1 port {smtps_port} smtps verify pki mx.test ca clients\n",
                common::basic_conf(d, p)
            )
        },
        &[],
    );
    let port = smtps_port.to_string();
    for (cert, subject) in [("none".to_owned(), "anonymous"), (format!("{c}/stranger"), "stranger")] {
        let got = python(SEND_SMTPS, &[&port, &cert, subject]);
        assert!(got.starts_with("refused"), "{subject}: {got}");
    }
    assert!(mxd.messages("joseph").is_empty());
    let got = python(SEND_SMTPS, &[&port, &format!("{c}/client"), "verified"]);
    assert_eq!(got.trim(), "sent", "{}", mxd.log());
    assert_eq!(mxd.messages("joseph").len(), 1);
    assert!(String::from_utf8_lossy(&mxd.messages("joseph")[0]).contains("Subject: verified"));
}
