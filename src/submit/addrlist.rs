//! RFC 5322 §3.4 address lists as sendmail(8) meets them in From:, To:, Cc: and Bcc:, and in
//! recipients given as arguments: extract the bare addr-specs, qualify unqualified ones.
//!
//! Untrusted input (whatever a local program pipes into sendmail); never panics. Comments,
//! quoted display names and groups (`undisclosed-recipients:;`) are understood well enough
//! to pull the addresses out; anything odd is returned as written and judged by
//! [`check_address`] before it reaches an SMTP command line.

/// Why an address cannot be put into `MAIL FROM:<…>` or `RCPT TO:<…>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// A control character (CR, LF, NUL…) or an angle bracket: it would break the command.
    BadCharacter(String),
    /// Longer than RFC 5321 §4.5.3.1.3 allows for a path (256 octets with the brackets).
    TooLong(String),
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressError::BadCharacter(a) => write!(f, "invalid character in address {a:?}"),
            AddressError::TooLong(a) => write!(f, "address too long: {a:?}"),
        }
    }
}

impl std::error::Error for AddressError {}

/// Longest path allowed inside the brackets (RFC 5321 §4.5.3.1.3: 256 with them).
const MAX_PATH: usize = 254;

/// The addr-specs of an address-list field value (the part after `Name:`), in order.
/// Display names, comments and group names are dropped; empty entries are skipped.
pub fn parse_address_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut scan = Scan::default();
    for c in value.chars() {
        if let Some(done) = scan.push(c) {
            out.extend(done);
        }
    }
    out.extend(scan.finish());
    out
}

/// Scanner state for one address list: which nesting we are in, and the text so far.
#[derive(Default)]
struct Scan {
    /// Text outside angle brackets, comments removed, whitespace outside quotes removed.
    bare: String,
    /// The text inside `<…>`, once an angle bracket was seen in this entry.
    angle: Option<String>,
    in_angle: bool,
    in_quote: bool,
    escaped: bool,
    /// Nesting depth of `( … )` comments (RFC 5322 §3.2.2 allows nesting).
    comment: u32,
}

impl Scan {
    /// Feeds one character; returns an address when `c` ends an entry.
    fn push(&mut self, c: char) -> Option<Option<String>> {
        if self.comment > 0 {
            self.push_comment(c);
            return None;
        }
        if self.escaped || self.in_quote {
            self.push_quoted(c);
            return None;
        }
        match c {
            '(' => self.comment = 1,
            '"' => {
                self.in_quote = true;
                self.text().push(c);
            }
            '<' if !self.in_angle => {
                self.in_angle = true;
                self.angle = Some(String::new());
            }
            '>' if self.in_angle => self.in_angle = false,
            // A group's display name ends with ':' (RFC 5322 §3.4); drop it.
            ':' if !self.in_angle && self.angle.is_none() => self.bare.clear(),
            ',' | ';' if !self.in_angle => return Some(self.take()),
            c if c.is_whitespace() => {}
            c => self.text().push(c),
        }
        None
    }

    fn push_comment(&mut self, c: char) {
        if self.escaped {
            self.escaped = false;
            return;
        }
        match c {
            '\\' => self.escaped = true,
            '(' => self.comment += 1,
            ')' => self.comment -= 1,
            _ => {}
        }
    }

    fn push_quoted(&mut self, c: char) {
        if self.escaped {
            self.escaped = false;
        } else if c == '\\' {
            self.escaped = true;
        } else if c == '"' {
            self.in_quote = false;
        }
        self.text().push(c);
    }

    /// Where characters of the current entry go: inside `<…>` or the bare text.
    fn text(&mut self) -> &mut String {
        match (&mut self.angle, self.in_angle) {
            (Some(a), true) => a,
            _ => &mut self.bare,
        }
    }

    /// Ends the current entry: the angle address if there was one, else the bare text.
    fn take(&mut self) -> Option<String> {
        let angle = self.angle.take();
        let bare = std::mem::take(&mut self.bare);
        self.in_angle = false;
        let addr = angle.unwrap_or(bare);
        (!addr.is_empty()).then_some(addr)
    }

    fn finish(mut self) -> Option<String> {
        self.take()
    }
}

/// Appends `@host` to an address without a domain, as OpenSMTPD's enqueue does; the null
/// sender (empty) stays empty.
pub fn qualify(addr: &str, host: &str) -> String {
    if addr.is_empty() || addr.contains('@') {
        addr.to_string()
    } else {
        format!("{addr}@{host}")
    }
}

/// Refuses what cannot stand inside `<…>` on an SMTP command line.
pub fn check_address(addr: &str) -> Result<(), AddressError> {
    if addr.len() > MAX_PATH {
        return Err(AddressError::TooLong(addr.to_string()));
    }
    if addr.chars().any(|c| c.is_control() || c == '<' || c == '>') {
        return Err(AddressError::BadCharacter(addr.to_string()));
    }
    Ok(())
}

/// Strips one pair of enclosing angle brackets (`-f '<root@host>'`), as enqueue does.
pub fn strip_brackets(addr: &str) -> &str {
    addr.strip_prefix('<').and_then(|a| a.strip_suffix('>')).unwrap_or(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("joseph", &["joseph"]),
            (" joseph@a.lan , root", &["joseph@a.lan", "root"]),
            ("Joseph <joseph@a.lan>", &["joseph@a.lan"]),
            ("\"Doe, John\" <jd@x.org>, b@y", &["jd@x.org", "b@y"]),
            ("jd@x.org (John, Doe)", &["jd@x.org"]),
            ("a@b (nested (comment, here)) , c@d", &["a@b", "c@d"]),
            ("undisclosed-recipients:;", &[]),
            ("team: a@x, b@y; c@z", &["a@x", "b@y", "c@z"]),
            ("\"john doe\"@x.org", &["\"john doe\"@x.org"]),
            ("<a@b>", &["a@b"]),
            ("", &[]),
            (",,;", &[]),
            ("Broken <a@b", &["a@b"]),
            ("\"unterminated <a@b>", &["\"unterminated <a@b>"]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_address_list(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn qualify_and_check() {
        assert_eq!(qualify("joseph", "h.lan"), "joseph@h.lan");
        assert_eq!(qualify("j@o.lan", "h.lan"), "j@o.lan");
        assert_eq!(qualify("", "h.lan"), "");
        assert_eq!(strip_brackets("<a@b>"), "a@b");
        assert_eq!(strip_brackets("<>"), "");
        assert_eq!(strip_brackets("<a@b"), "<a@b");
        assert!(check_address("a@b").is_ok());
        assert!(matches!(check_address("a@b>\r\nRCPT TO:<x"), Err(AddressError::BadCharacter(_))));
        assert!(matches!(check_address(&"a".repeat(300)), Err(AddressError::TooLong(_))));
    }
}
