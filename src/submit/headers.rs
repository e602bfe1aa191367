//! Turns what a local program piped into sendmail(8) into a message ready for submission,
//! the way OpenSMTPD's enqueue and smtpd do it together (the seed's last listing):
//! - line endings normalized to LF (CRLF, LF and a lone CR all end a line);
//! - a leading mbox `From ` line and any `Return-Path:` are dropped (RFC 5321 §4.4: the
//!   final delivery adds Return-Path), `Bcc:` is always removed;
//! - `From:` and `Date:` are prepended when missing, `Message-ID:` appended to the header;
//! - a body line too long for SMTP (RFC 5321 §4.5.3.1.6) makes the body quoted-printable
//!   (RFC 2045 §6.7) when the message has no Content-Transfer-Encoding of its own;
//! - the envelope: sender from -f, else the From: header, else the user; recipients from the
//!   arguments and, with -t, from To:/Cc:/Bcc:; unqualified addresses get `@hostname`.
//!
//! Pure: the clock and the random Message-ID token come in through [`Options`]. Never
//! panics on any input; output size is linear in the input.

use super::addrlist::{self, check_address, parse_address_list, qualify, AddressError};

/// OpenSMTPD's LINESPLIT: a line this long (with its newline) is re-encoded, leaving room
/// for dot-stuffing and CRLF under the 1000-octet SMTP line limit.
const LINESPLIT: usize = 990;
/// RFC 2045 §6.7 (5): encoded lines are at most 76 characters.
const QP_LINE: usize = 76;

/// What sendmail knows besides the message: who runs it, its flags, the clock.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The mail name used to qualify addresses and in the Message-ID.
    pub hostname: String,
    /// Login name of the submitting user (from the password database, not from $USER).
    pub user: String,
    /// The user's GECOS field, for the From: display name (`&` means the capitalized login).
    pub gecos: Option<String>,
    /// `-f` / `-r`: the envelope sender; `<>` or empty means the null sender.
    pub sender: Option<String>,
    /// `-F`: the full name for an added From: header.
    pub fullname: Option<String>,
    /// `-t`: take recipients from To:, Cc: and Bcc: as well.
    pub extract: bool,
    /// Recipients given as arguments; each may hold several, comma-separated.
    pub recipients: Vec<String>,
    /// Seconds since the Unix epoch, for Date:.
    pub now: u64,
    /// Random token for Message-ID: `<%016x@hostname>` as OpenSMTPD writes it.
    pub unique: u64,
}

/// A message ready to submit: envelope plus the message with LF line endings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// Envelope sender, qualified; empty for the null sender.
    pub sender: String,
    /// Envelope recipients, qualified, duplicates removed, in order of first appearance.
    pub recipients: Vec<String>,
    /// Header and body, every line ending in LF.
    pub message: Vec<u8>,
}

/// Why the input cannot be submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareError {
    /// No recipient in the arguments (nor in the header with -t): "no recipients".
    NoRecipients,
    /// An address that cannot be sent in an SMTP command.
    Address(AddressError),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::NoRecipients => f.write_str("no recipients"),
            PrepareError::Address(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PrepareError {}

impl From<AddressError> for PrepareError {
    fn from(e: AddressError) -> Self {
        PrepareError::Address(e)
    }
}

/// One header field: its lowercased name and the lines it spans (continuations included).
struct Field<'a> {
    name: String,
    lines: &'a [&'a [u8]],
}

impl Field<'_> {
    /// The unfolded value after `Name:` (RFC 5322 §2.2.3), lossily decoded.
    fn value(&self) -> String {
        let mut v = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let text = String::from_utf8_lossy(line);
            let part = if i == 0 { text.split_once(':').map_or("", |(_, v)| v).to_string() } else { text.into_owned() };
            v.push_str(&part);
            v.push(' ');
        }
        v
    }
}

/// Prepares `input` for submission; see the module doc for what changes.
pub fn prepare(input: &[u8], opts: &Options) -> Result<Prepared, PrepareError> {
    let mut lines = split_lines(input);
    if lines.first().is_some_and(|l| l.starts_with(b"From ")) {
        lines.remove(0);
    }
    let header_len = header_block_len(&lines);
    let fields = group_fields(lines.get(..header_len).unwrap_or(&[]));
    // The blank line that ends the header is ours to write; skip the input's own.
    let body_start = header_len + usize::from(lines.get(header_len).is_some_and(|l| l.is_empty()));
    let body = lines.get(body_start..).unwrap_or(&[]);

    let sender = envelope_sender(&fields, opts)?;
    let recipients = envelope_recipients(&fields, opts)?;
    let qp = needs_qp(&fields, body);
    let mut out = Vec::with_capacity(input.len() + 256);
    write_header(&mut out, &fields, &sender, qp, opts);
    out.push(b'\n');
    for line in body {
        if qp {
            qp_encode_line(&mut out, line);
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    Ok(Prepared { sender, recipients, message: out })
}

/// Splits on CRLF, LF or a lone CR; a last line without terminator still counts.
fn split_lines(input: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = input;
    while let Some(pos) = memchr::memchr2(b'\r', b'\n', rest) {
        let (line, tail) = rest.split_at(pos);
        lines.push(line);
        let skip = if tail.starts_with(b"\r\n") { 2 } else { 1 };
        rest = tail.get(skip..).unwrap_or(&[]);
    }
    if !rest.is_empty() {
        lines.push(rest);
    }
    lines
}

/// RFC 5322 §2.2: field-name is printable US-ASCII except ':', then ':'.
fn is_field_line(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line.iter().take(colon).all(|&b| (33..=126).contains(&b)),
        _ => false,
    }
}

/// How many leading lines form the header: fields and their continuation lines.
fn header_block_len(lines: &[&[u8]]) -> usize {
    let mut n = 0;
    for line in lines {
        let continuation = n > 0 && matches!(line.first(), Some(b' ' | b'\t'));
        if !(continuation || is_field_line(line)) {
            break;
        }
        n += 1;
    }
    n
}

fn group_fields<'a>(header: &'a [&'a [u8]]) -> Vec<Field<'a>> {
    let mut fields = Vec::new();
    let mut start = 0;
    for i in 1..=header.len() {
        let next_is_new = header.get(i).is_none_or(|l| !matches!(l.first(), Some(b' ' | b'\t')));
        if next_is_new {
            let lines = header.get(start..i).unwrap_or(&[]);
            let first = lines.first().copied().unwrap_or(&[]);
            let name_len = first.iter().position(|&b| b == b':').unwrap_or(0);
            let name = String::from_utf8_lossy(first.get(..name_len).unwrap_or(&[])).to_ascii_lowercase();
            fields.push(Field { name, lines });
            start = i;
        }
    }
    fields
}

fn has(fields: &[Field<'_>], name: &str) -> bool {
    fields.iter().any(|f| f.name == name)
}

fn envelope_sender(fields: &[Field<'_>], opts: &Options) -> Result<String, PrepareError> {
    let raw = match &opts.sender {
        Some(s) => addrlist::strip_brackets(s).to_string(),
        // OpenSMTPD: "using From: as envelope sender is not sendmail compatible, but I really
        // want it that way".
        None => fields
            .iter()
            .filter(|f| f.name == "from")
            .find_map(|f| parse_address_list(&f.value()).into_iter().next())
            .unwrap_or_else(|| opts.user.clone()),
    };
    let sender = qualify(&raw, &opts.hostname);
    check_address(&sender)?;
    Ok(sender)
}

fn envelope_recipients(fields: &[Field<'_>], opts: &Options) -> Result<Vec<String>, PrepareError> {
    let mut raw: Vec<String> = opts
        .recipients
        .iter()
        .flat_map(|arg| arg.split(',').map(|a| a.trim().to_string()))
        .filter(|a| !a.is_empty())
        .collect();
    if opts.extract {
        for f in fields.iter().filter(|f| matches!(f.name.as_str(), "to" | "cc" | "bcc")) {
            raw.extend(parse_address_list(&f.value()));
        }
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for addr in raw {
        let addr = qualify(addrlist::strip_brackets(&addr), &opts.hostname);
        check_address(&addr)?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(PrepareError::NoRecipients);
    }
    Ok(out)
}

/// Re-encode the body only when a line is too long and the message has not chosen an
/// encoding itself; a multipart body cannot be re-encoded as a whole.
fn needs_qp(fields: &[Field<'_>], body: &[&[u8]]) -> bool {
    let long = body.iter().any(|l| l.len() + 1 >= LINESPLIT);
    let multipart = fields.iter().any(|f| {
        f.name == "content-type" && {
            let v = f.value().trim_start().to_ascii_lowercase();
            v.starts_with("multipart/") || v.starts_with("message/")
        }
    });
    long && !multipart && !has(fields, "content-transfer-encoding")
}

fn write_header(out: &mut Vec<u8>, fields: &[Field<'_>], sender: &str, qp: bool, opts: &Options) {
    if !has(fields, "from") {
        let name = display_name(opts);
        let sep = if name.is_some() { " " } else { "" };
        let line = format!("From: {}{sep}<{sender}>\n", name.unwrap_or_default());
        out.extend_from_slice(line.as_bytes());
    }
    if !has(fields, "date") {
        out.extend_from_slice(
            format!(
                "Date: {}\n",
                crate::headers::rfc5322_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(opts.now))
            )
            .as_bytes(),
        );
    }
    if qp {
        let mime: [(&str, &str); 3] = [
            ("mime-version", "MIME-Version: 1.0\n"),
            ("content-type", "Content-Type: text/plain; charset=unknown-8bit\n"),
            ("content-disposition", "Content-Disposition: inline\n"),
        ];
        for (_, line) in mime.iter().filter(|(name, _)| !has(fields, name)) {
            out.extend_from_slice(line.as_bytes());
        }
        out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\n");
    }
    for f in fields.iter().filter(|f| f.name != "bcc" && f.name != "return-path") {
        for line in f.lines {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    if !has(fields, "message-id") {
        out.extend_from_slice(format!("Message-ID: <{:016x}@{}>\n", opts.unique, opts.hostname).as_bytes());
    }
}

/// The From: display name: -F, else (without -f) the GECOS full name as enqueue builds it;
/// an empty GECOS gives the seed's `From:  <joseph@…>` (two spaces).
fn display_name(opts: &Options) -> Option<String> {
    if let Some(name) = &opts.fullname {
        return Some(name.clone());
    }
    if opts.sender.is_some() {
        return None;
    }
    let gecos = opts.gecos.as_deref()?;
    let full = gecos.split(',').next().unwrap_or("");
    // BSD convention: '&' in GECOS stands for the login name, capitalized.
    Some(match full.split_once('&') {
        Some((before, after)) => {
            let mut login = opts.user.chars();
            let cap: String = login.next().map(|c| c.to_uppercase().chain(login).collect()).unwrap_or_default();
            format!("{before}{cap}{after}")
        }
        None => full.to_string(),
    })
}

/// RFC 2045 §6.7: one body line as quoted-printable, with soft breaks at 76 characters.
fn qp_encode_line(out: &mut Vec<u8>, line: &[u8]) {
    let mut width = 0;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        // Rule 3: whitespace is encoded only at the end of a line; rule 2: printables stay.
        let literal = match b {
            b' ' | b'\t' => !last,
            33..=60 | 62..=126 => true,
            _ => false,
        };
        let size = if literal { 1 } else { 3 };
        if width + size + 1 > QP_LINE {
            out.extend_from_slice(b"=\n");
            width = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        }
        width += size;
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            hostname: "devbox-ntp.home.lan".into(),
            user: "joseph".into(),
            gecos: Some(String::new()),
            recipients: vec!["joseph".into()],
            now: 1_640_294_612,
            unique: 0x6579_236d_ae00_ceb2,
            ..Options::default()
        }
    }

    fn text(p: &Prepared) -> &str {
        std::str::from_utf8(&p.message).unwrap_or("<not utf-8>")
    }

    #[test]
    fn seed_message() {
        let p = prepare(b"Subject: Test Subject\n\nHello, EHLO!\n", &opts()).unwrap();
        assert_eq!(p.sender, "joseph@devbox-ntp.home.lan");
        assert_eq!(p.recipients, ["joseph@devbox-ntp.home.lan"]);
        assert_eq!(
            text(&p),
            "From:  <joseph@devbox-ntp.home.lan>\n\
             Date: Thu, 23 Dec 2021 21:23:32 +0000\n\
             Subject: Test Subject\n\
             Message-ID: <6579236dae00ceb2@devbox-ntp.home.lan>\n\
             \n\
             Hello, EHLO!\n"
        );
    }

    #[test]
    fn header_rewrites() {
        // (input, options change, expected message)
        type Tweak = fn(&mut Options);
        let none: Tweak = |_| {};
        let cases: &[(&str, Tweak, &str)] = &[
            // No header at all: a blank line separates the added header from the body.
            ("Hello\r\nworld", none, "From:  <j>\nDate: D\nMessage-ID: <M>\n\nHello\nworld\n"),
            // Existing From/Date/Message-ID are kept; Bcc and Return-Path go.
            (
                "From: a@x\nDate: today\nMessage-Id: <1@x>\nBcc: secret@x\nReturn-Path: <z>\n\nb\n",
                none,
                "From: a@x\nDate: today\nMessage-Id: <1@x>\n\nb\n",
            ),
            // mbox From_ line dropped; folded header kept whole; lone CR ends a line.
            (
                "From joe Mon\nSubject: a\n  b\rc\n",
                none,
                "From:  <j>\nDate: D\nSubject: a\n  b\nMessage-ID: <M>\n\nc\n",
            ),
            ("x\n", |o| o.fullname = Some("Joe Q".into()), "From: Joe Q <j>\nDate: D\nMessage-ID: <M>\n\nx\n"),
            ("x\n", |o| o.sender = Some("r@y".into()), "From: <j>\nDate: D\nMessage-ID: <M>\n\nx\n"),
            ("x\n", |o| o.gecos = Some("& Doe,Room 1".into()), "From: Joseph Doe <j>\nDate: D\nMessage-ID: <M>\n\nx\n"),
            ("", none, "From:  <j>\nDate: D\nMessage-ID: <M>\n\n"),
        ];
        for (input, tweak, want) in cases {
            let mut o = opts();
            tweak(&mut o);
            let p = prepare(input.as_bytes(), &o).unwrap();
            let got = text(&p)
                .replace(&format!("<{}>", p.sender), "<j>")
                .replace("Thu, 23 Dec 2021 21:23:32 +0000", "D")
                .replace("6579236dae00ceb2@devbox-ntp.home.lan", "M");
            assert_eq!(got, *want, "input {input:?}");
        }
    }

    #[test]
    fn envelope() {
        type Tweak = fn(&mut Options);
        let cases: &[(&str, Tweak, &str, &[&str])] = &[
            ("From: Root <root>\n\nx", |_| {}, "root@devbox-ntp.home.lan", &["joseph@devbox-ntp.home.lan"]),
            ("x", |o| o.sender = Some("<>".into()), "", &["joseph@devbox-ntp.home.lan"]),
            (
                "x",
                |o| o.recipients = vec!["a, b@c".into(), "a".into()],
                "joseph@devbox-ntp.home.lan",
                &["a@devbox-ntp.home.lan", "b@c"],
            ),
            (
                "To: A <a@x>, b\nCc: c@y (C)\nBcc: d@z\n\nx",
                |o| {
                    o.extract = true;
                    o.recipients.clear();
                },
                "joseph@devbox-ntp.home.lan",
                &["a@x", "b@devbox-ntp.home.lan", "c@y", "d@z"],
            ),
        ];
        for (input, tweak, sender, rcpts) in cases {
            let mut o = opts();
            tweak(&mut o);
            let p = prepare(input.as_bytes(), &o).unwrap();
            assert_eq!(p.sender, *sender, "input {input:?}");
            assert_eq!(p.recipients, *rcpts, "input {input:?}");
            assert!(!text(&p).contains("Bcc"), "Bcc kept in {input:?}");
        }
    }

    #[test]
    fn refusals() {
        let mut o = opts();
        o.recipients.clear();
        assert_eq!(prepare(b"To: a@b\n\nx", &o), Err(PrepareError::NoRecipients));
        o.recipients = vec!["a@b>\rRCPT TO:<c".into()];
        assert!(matches!(prepare(b"x", &o), Err(PrepareError::Address(_))));
        let mut o = opts();
        o.extract = true;
        assert!(matches!(prepare(b"To: \"x\x01\"@y\n\nx", &o), Err(PrepareError::Address(_))));
    }

    #[test]
    fn long_lines_become_quoted_printable() {
        let long = format!("{}\u{e9} \n", "a".repeat(1200));
        let p = prepare(format!("Subject: s\n\n{long}.short\n").as_bytes(), &opts()).unwrap();
        let t = text(&p);
        assert!(t.contains("Content-Transfer-Encoding: quoted-printable\n"));
        assert!(t.contains("MIME-Version: 1.0\n"));
        assert!(t.lines().all(|l| l.len() <= QP_LINE), "{t}");
        assert!(t.contains("=C3=A9=20\n"), "{t}");
        assert!(t.ends_with("\n.short\n"));
        // Decoding gives back the original line.
        let body = t.split_once("\n\n").map(|(_, b)| b).unwrap_or("");
        let joined = body.replace("=\n", "");
        assert!(joined.starts_with(&"a".repeat(1200)));
        // A message with its own encoding is left alone.
        let own = format!("Content-Transfer-Encoding: 8bit\n\n{long}");
        let p = prepare(own.as_bytes(), &opts()).unwrap();
        assert!(text(&p).contains(&long));
    }
}
