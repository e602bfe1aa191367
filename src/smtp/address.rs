//! Mailbox syntax (RFC 5321 §4.1.2, RFC 6531 for UTF-8): local-part "@" domain, as a path in
//! angle brackets. Untrusted input; never panics. Only what a later layer can safely carry
//! passes: no control characters, no CR/LF/NUL, lengths within §4.5.3.1.

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrError {
    /// Missing `<` … `>`.
    NoBrackets,
    /// Not local-part@domain, or a character that may not appear there.
    Syntax,
    /// Local part over 64, domain over 255 or path over 256 octets.
    TooLong,
    /// 8-bit octets without SMTPUTF8 (or not valid UTF-8).
    EightBit,
}

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// Splits `<path> params` into the path (without brackets) and the parameter text.
pub fn split_path(arg: &[u8]) -> Result<(&[u8], &[u8]), AddrError> {
    let arg = trim(arg);
    if arg.first() != Some(&b'<') {
        return Err(AddrError::NoBrackets);
    }
    // A quoted local part may contain '>', so find the closing bracket outside quotes.
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in arg.iter().enumerate().skip(1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Ok((&arg[1..i], trim(&arg[i + 1..]))),
            _ => {}
        }
    }
    Err(AddrError::NoBrackets)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

/// Validates a path's contents (between the brackets). Empty means the null path `<>`.
/// Returns the address as a string.
pub fn parse_mailbox(path: &[u8], utf8: bool) -> Result<String, AddrError> {
    if path.is_empty() {
        return Ok(String::new());
    }
    if path.len() > MAX_PATH {
        return Err(AddrError::TooLong);
    }
    // RFC 5321 §4.1.2 source routes ("@a,@b:user@host") are accepted and ignored (§C).
    let path = match (path.first(), memchr::memchr(b':', path)) {
        (Some(b'@'), Some(colon)) => &path[colon + 1..],
        _ => path,
    };
    if !path.is_ascii() && !utf8 {
        return Err(AddrError::EightBit);
    }
    let text = std::str::from_utf8(path).map_err(|_| AddrError::EightBit)?;
    let at = text.rfind('@').ok_or(AddrError::Syntax)?;
    let (local, domain) = (&text[..at], &text[at + 1..]);
    if local.len() > MAX_LOCAL || domain.len() > MAX_DOMAIN {
        return Err(AddrError::TooLong);
    }
    if !valid_local(local) || !valid_domain(domain) {
        return Err(AddrError::Syntax);
    }
    Ok(text.to_owned())
}

/// RFC 5321 atext, plus non-ASCII characters (only reachable with SMTPUTF8).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_text(c)
}

/// A non-ASCII character that is not a control: the C1 controls (U+0080–U+009F) are valid
/// UTF-8 but have no business in an address that ends up in headers and file names.
fn is_utf8_text(c: char) -> bool {
    !c.is_ascii() && !c.is_control()
}

fn valid_local(local: &str) -> bool {
    if local.is_empty() {
        return false;
    }
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        return valid_quoted(inner);
    }
    local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// qcontent: printable characters except `"` and `\`, or a backslash pair (§4.1.2).
fn valid_quoted(inner: &str) -> bool {
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) if (' '..='~').contains(&n) => {}
                _ => return false,
            },
            '"' => return false,
            c if (' '..='~').contains(&c) || is_utf8_text(c) => {}
            _ => return false,
        }
    }
    true
}

fn valid_domain(domain: &str) -> bool {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || is_utf8_text(c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes() {
        let cases: &[(&str, bool, Result<&str, AddrError>)] = &[
            ("", false, Ok("")),
            ("joseph@devbox-ntp.home.lan", false, Ok("joseph@devbox-ntp.home.lan")),
            ("a.b+tag@example.org", false, Ok("a.b+tag@example.org")),
            ("@relay.example,@r2.example:user@example.org", false, Ok("user@example.org")),
            ("\"john doe\"@example.org", false, Ok("\"john doe\"@example.org")),
            ("user@[127.0.0.1]", false, Ok("user@[127.0.0.1]")),
            ("user@[IPv6:::1]", false, Ok("user@[IPv6:::1]")),
            ("a/b@test", false, Ok("a/b@test")),
            ("../../x@test", false, Err(AddrError::Syntax)),
            ("..@test", false, Err(AddrError::Syntax)),
            ("noat", false, Err(AddrError::Syntax)),
            ("user@", false, Err(AddrError::Syntax)),
            ("@example.org", false, Err(AddrError::Syntax)),
            ("us er@example.org", false, Err(AddrError::Syntax)),
            ("user@exa mple.org", false, Err(AddrError::Syntax)),
            ("user@-bad.org", false, Err(AddrError::Syntax)),
            ("user@[1.2.3]", false, Err(AddrError::Syntax)),
            ("a\u{0}b@example.org", false, Err(AddrError::Syntax)),
            ("\"a\rb\"@example.org", false, Err(AddrError::Syntax)),
            ("jörg@example.org", false, Err(AddrError::EightBit)),
            ("jörg@example.org", true, Ok("jörg@example.org")),
            // C1 controls are UTF-8 too, and refused (found by the address fuzz target).
            ("r@r\u{81}", true, Err(AddrError::Syntax)),
            ("r\u{9b}x@example.org", true, Err(AddrError::Syntax)),
            ("\"a\u{85}\"@example.org", true, Err(AddrError::Syntax)),
        ];
        for (input, utf8, want) in cases {
            let got = parse_mailbox(input.as_bytes(), *utf8);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{input:?}");
        }
        let long_local = format!("{}@example.org", "a".repeat(65));
        assert_eq!(parse_mailbox(long_local.as_bytes(), false), Err(AddrError::TooLong));
    }

    #[test]
    fn split() {
        assert_eq!(split_path(b"<a@b.c> SIZE=10"), Ok((&b"a@b.c"[..], &b"SIZE=10"[..])));
        assert_eq!(split_path(b" <> "), Ok((&b""[..], &b""[..])));
        assert_eq!(split_path(b"<\"x>y\"@b.c>"), Ok((&b"\"x>y\"@b.c"[..], &b""[..])));
        assert_eq!(split_path(b"a@b.c"), Err(AddrError::NoBrackets));
        assert_eq!(split_path(b"<a@b.c"), Err(AddrError::NoBrackets));
    }
}
