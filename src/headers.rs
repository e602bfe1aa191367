//! The header lines mxd writes, in the stored form (LF endings): Received (OpenSMTPD's
//! layout), Return-Path, Delivered-To, and RFC 5322 dates. Pure functions.
//!
//! Untrusted input: HELO names, addresses and TLS names come from the network. Nothing from
//! them reaches the output except printable characters that cannot end a header line or
//! close the comment they sit in.

use std::fmt::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::MsgId;

/// Where the message came from, as the `[…]` part of the Received header shows it.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    Ip(IpAddr),
    /// The local submission socket (OpenSMTPD writes `[local]`).
    Local,
    /// `mask-src`: OpenSMTPD leaves the whole `from …` clause out.
    Masked,
}

#[derive(Clone, Copy, Debug)]
pub struct ReceivedInfo<'a> {
    pub helo: &'a str,
    pub rdns: Option<&'a str>,
    pub peer: Peer,
    /// This host's name.
    pub by: &'a str,
    /// "SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA".
    pub proto: &'a str,
    pub id: MsgId,
    /// (version, cipher, bits) of the client's TLS session.
    pub tls: Option<(&'a str, &'a str, u16)>,
    /// The recipient, named only when the message has exactly one.
    pub rcpt: Option<&'a str>,
    pub date: SystemTime,
}

/// A hostname-like token: letters, digits and `.-_:[]`; anything else becomes `?`.
fn token(s: &str) -> String {
    let cleaned: String =
        s.chars().take(255).map(|c| if c.is_ascii_alphanumeric() || ".-_:[]".contains(c) { c } else { '?' }).collect();
    if cleaned.is_empty() {
        "unknown".to_owned()
    } else {
        cleaned
    }
}

/// An address inside `<…>`: printable characters only, no angle brackets or line breaks.
fn address(s: &str) -> String {
    s.chars().take(256).map(|c| if c.is_control() || c == '<' || c == '>' { '?' } else { c }).collect()
}

/// An authenticated user's name in a header: printable, no space, nothing that would end
/// the header or its comment.
fn user_name(s: &str) -> String {
    s.chars()
        .take(255)
        .map(|c| if c.is_control() || c.is_whitespace() || "()<>;\\\"".contains(c) { '?' } else { c })
        .collect()
}

pub fn received(r: &ReceivedInfo<'_>) -> Vec<u8> {
    received_with_auth(r, None)
}

/// `received` for a `received-auth` listener: `Some(user)` (`None` when the session did not
/// log in). As OpenSMTPD, `auth=yes user=NAME` or `auth=no` follows the TLS details, under
/// TLS only.
pub fn received_with_auth(r: &ReceivedInfo<'_>, received_auth: Option<Option<&str>>) -> Vec<u8> {
    let mut h = String::with_capacity(256);
    let from = match r.peer {
        Peer::Local => format!("{} [local]", token(r.by)),
        Peer::Ip(ip) => format!("{} [{ip}]", r.rdns.map_or_else(|| "unknown".to_owned(), token)),
        Peer::Masked => String::new(),
    };
    h.push_str("Received: ");
    if !matches!(r.peer, Peer::Masked) {
        let _ = write!(h, "from {} ({from})", token(r.helo));
    }
    let _ = write!(h, "\n\tby {} (mxd) with {} id {}", token(r.by), token(r.proto), r.id);
    if let Some((version, cipher, bits)) = r.tls {
        let _ = write!(h, " ({}:{}:{bits}:NO)", token(version), token(cipher));
        match received_auth {
            Some(Some(user)) => {
                let _ = write!(h, " auth=yes user={}", user_name(user));
            }
            Some(None) => h.push_str(" auth=no"),
            None => {}
        }
    }
    if let Some(rcpt) = r.rcpt {
        let _ = write!(h, "\n\tfor <{}>", address(rcpt));
    }
    let _ = write!(h, ";\n\t{}\n", rfc5322_date(r.date));
    h.into_bytes()
}

pub fn return_path(sender: &str) -> Vec<u8> {
    format!("Return-Path: <{}>\n", address(sender)).into_bytes()
}

pub fn delivered_to(rcpt: &str) -> Vec<u8> {
    format!("Delivered-To: {}\n", address(rcpt)).into_bytes()
}

/// "Thu, 23 Dec 2021 21:23:47 +0000": UTC, so no time-zone database is needed.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days.rem_euclid(7)) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(at(0)), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(at(1_640_294_627)), "Thu, 23 Dec 2021 21:23:47 +0000");
        assert_eq!(rfc5322_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(at(4_107_542_400)), "Mon, 1 Mar 2100 00:00:00 +0000");
    }

    #[test]
    fn received_layout_like_opensmtpd() {
        let h = received(&ReceivedInfo {
            helo: "devbox-ntp.home.lan",
            rdns: None,
            peer: Peer::Ip("192.0.2.7".parse().unwrap()),
            by: "devbox-mx0.home.lan",
            proto: "ESMTPS",
            id: MsgId(0x64f3eab9),
            tls: Some(("TLSv1.3", "TLS13_AES_256_GCM_SHA384", 256)),
            rcpt: Some("joseph@devbox-ntp.home.lan"),
            date: at(1_640_294_627),
        });
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Received: from devbox-ntp.home.lan (unknown [192.0.2.7])\n\tby devbox-mx0.home.lan (mxd) with ESMTPS id 64f3eab9 (TLSv1.3:TLS13_AES_256_GCM_SHA384:256:NO)\n\tfor <joseph@devbox-ntp.home.lan>;\n\tThu, 23 Dec 2021 21:23:47 +0000\n"
        );
    }

    #[test]
    fn masked_source_like_opensmtpd() {
        let h = received(&ReceivedInfo {
            helo: "secret-laptop",
            rdns: None,
            peer: Peer::Masked,
            by: "mx.example.org",
            proto: "ESMTP",
            id: MsgId(0x1234),
            tls: None,
            rcpt: None,
            date: at(0),
        });
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Received: \n\tby mx.example.org (mxd) with ESMTP id 00001234;\n\tThu, 1 Jan 1970 00:00:00 +0000\n"
        );
    }

    #[test]
    fn hostile_values_cannot_inject_headers() {
        let h = received(&ReceivedInfo {
            helo: "x\r\nBcc: evil@example.org",
            rdns: Some("a)(b\n"),
            peer: Peer::Local,
            by: "host",
            proto: "ESMTPA",
            id: MsgId(1),
            tls: Some(("TLS\n", "x)y", 1)),
            rcpt: Some("a>\r\nX-Evil: 1@b"),
            date: at(0),
        });
        let text = String::from_utf8(h).unwrap();
        assert_eq!(text.matches('\n').count(), 4, "{text}");
        assert!(text.lines().skip(1).all(|l| l.starts_with('\t')), "{text}");
        assert!(!text.contains("Bcc: "), "{text}");
        assert_eq!(return_path("a\nb"), b"Return-Path: <a?b>\n");
        assert_eq!(delivered_to("x\r\ny"), b"Delivered-To: x??y\n");
    }

    #[test]
    fn received_auth_names_the_user_after_the_tls_details() {
        let info = ReceivedInfo {
            helo: "laptop",
            rdns: None,
            peer: Peer::Ip("192.0.2.7".parse().unwrap()),
            by: "mx.test",
            proto: "ESMTPSA",
            id: MsgId(1),
            tls: Some(("TLSv1.3", "TLS13_AES_256_GCM_SHA384", 256)),
            rcpt: None,
            date: at(0),
        };
        let h = String::from_utf8(received_with_auth(&info, Some(Some("joseph@example.org")))).unwrap();
        assert!(
            h.contains("id 00000001 (TLSv1.3:TLS13_AES_256_GCM_SHA384:256:NO) auth=yes user=joseph@example.org;"),
            "{h}"
        );
        let h = String::from_utf8(received_with_auth(&info, Some(Some("a)b\nX-Evil: 1")))).unwrap();
        assert!(h.contains("user=a?b?X-Evil:?1;") && h.lines().count() == 3, "{h}");
        let h = String::from_utf8(received_with_auth(&info, Some(None))).unwrap();
        assert!(h.contains(":NO) auth=no;"), "{h}");
        let plain = ReceivedInfo { tls: None, ..info };
        assert!(!String::from_utf8(received_with_auth(&plain, Some(Some("joseph")))).unwrap().contains("auth="));
    }
}
