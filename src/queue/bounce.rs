//! Delivery status notifications (RFC 3464) for recipients that failed for good or
//! outlived `queue ttl`. A bounce goes to the original sender with the null sender `<>`;
//! a message that itself had the null sender gets none, so bounces never loop.

use std::time::SystemTime;

use crate::headers::rfc5322_date;

/// One failed recipient and why.
pub struct Failure<'a> {
    pub rcpt: &'a str,
    pub status: &'a str,
    pub diagnostic: &'a str,
}

/// The DSN message (LF endings), or `None` when the original sender was `<>`.
pub fn dsn(hostname: &str, sender: &str, failures: &[Failure<'_>], original: &[u8], id: &str) -> Option<Vec<u8>> {
    report(hostname, sender, failures, original, id, &BounceKind::Failed)
}

/// A delay warning (`bounce warn-interval`): the same report with `Action: delayed`, sent
/// while the message stays queued; `n` tells the warnings of one message apart.
pub fn delay_warning(
    hostname: &str,
    sender: &str,
    delayed: &[Failure<'_>],
    original: &[u8],
    id: &str,
    n: usize,
) -> Option<Vec<u8>> {
    report(hostname, sender, delayed, original, id, &BounceKind::Delayed(n))
}

enum BounceKind {
    Failed,
    Delayed(usize),
}

fn report(
    hostname: &str,
    sender: &str,
    failures: &[Failure<'_>],
    original: &[u8],
    id: &str,
    kind: &BounceKind,
) -> Option<Vec<u8>> {
    if sender.is_empty() || failures.is_empty() {
        return None;
    }
    let (subject, msgid, intro, action) = match kind {
        BounceKind::Failed => ("error", format!("{id}.bounce"), "Your message could not be delivered to:", "failed"),
        BounceKind::Delayed(n) => (
            "delay",
            format!("{id}.delay{n}"),
            "Your message has not been delivered yet to the recipients below.\n\
             This is only a warning: delivery will be retried, you need not send it again.",
            "delayed",
        ),
    };
    let boundary = format!("{id}/{hostname}");
    let headers_end = original.windows(2).position(|w| w == b"\n\n").map_or(original.len(), |i| i + 1);
    let mut m = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\nTo: <{sender}>\nSubject: Delivery status notification: {subject}\n\
         Date: {}\nMessage-ID: <{msgid}@{hostname}>\nMIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\n\n\
         This is a MIME-encapsulated message.\n\n--{boundary}\nContent-Type: text/plain; charset=us-ascii\n\n\
         This is the mail system at {hostname}.\n{intro}\n\n",
        rfc5322_date(SystemTime::now())
    );
    for f in failures {
        m.push_str(&format!("  <{}>: {}\n", f.rcpt, f.diagnostic));
    }
    m.push_str(&format!("\n--{boundary}\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; {hostname}\n"));
    for f in failures {
        m.push_str(&format!(
            "\nFinal-Recipient: rfc822; {}\nAction: {action}\nStatus: {}\nDiagnostic-Code: smtp; {}\n",
            f.rcpt, f.status, f.diagnostic
        ));
    }
    m.push_str(&format!("\n--{boundary}\nContent-Type: text/rfc822-headers\n\n"));
    let mut out = m.into_bytes();
    out.extend_from_slice(&original[..headers_end]);
    out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_layout_and_no_bounce_for_bounces() {
        let f = [Failure { rcpt: "x@far.example", status: "5.1.1", diagnostic: "550 5.1.1 no such user" }];
        let m = String::from_utf8(
            dsn("node.test", "root@node.test", &f, b"Subject: s\nFrom: r\n\nbody\n", "abcd").unwrap(),
        )
        .unwrap();
        assert!(m.contains("To: <root@node.test>\n"));
        assert!(m.contains("report-type=delivery-status"));
        assert!(m.contains("Final-Recipient: rfc822; x@far.example\nAction: failed\nStatus: 5.1.1\n"));
        assert!(m.contains("Content-Type: text/rfc822-headers\n\nSubject: s\nFrom: r\n"));
        assert!(!m.contains("body"), "only the original headers are returned");
        assert!(dsn("h", "", &f, b"x", "id").is_none());
    }
}
