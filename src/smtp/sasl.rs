//! The client's side of AUTH PLAIN (RFC 4616) and AUTH LOGIN, decoded: base64 lines into a
//! user name and a [`Secret`]. Untrusted input; never panics; every decoded byte that may
//! hold a password lives in a `Secret`, so it is zeroed when dropped.

use base64::Engine;

use crate::auth::Secret;

/// Longest user name taken (OpenSMTPD: a login name, `@` and a host name).
pub const MAX_USER: usize = 320;

/// The mechanisms EHLO offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

/// What was wrong with an AUTH line; each maps to one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// `AUTH` with no mechanism.
    NoMechanism,
    /// A mechanism other than PLAIN and LOGIN.
    UnknownMechanism,
    /// A `*` line: the client gave up (RFC 4954 §4).
    Canceled,
    /// Not base64, or not the shape the mechanism wants.
    Syntax,
}

/// `AUTH` arguments: the mechanism and its initial response, if any.
pub fn parse_auth(arg: &[u8]) -> Result<(Mechanism, Option<&[u8]>), SaslError> {
    let arg = arg.trim_ascii();
    let (name, rest) = match arg.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&arg[..i], Some(arg[i + 1..].trim_ascii())),
        None => (arg, None),
    };
    let mechanism = if name.is_empty() {
        return Err(SaslError::NoMechanism);
    } else if name.eq_ignore_ascii_case(b"PLAIN") {
        Mechanism::Plain
    } else if name.eq_ignore_ascii_case(b"LOGIN") {
        Mechanism::Login
    } else {
        return Err(SaslError::UnknownMechanism);
    };
    Ok((mechanism, rest.filter(|r| !r.is_empty())))
}

/// One base64 line from the client, into a `Secret`.
fn decode(line: &[u8]) -> Result<Secret, SaslError> {
    if line == b"*" {
        return Err(SaslError::Canceled);
    }
    let mut buf = Vec::with_capacity(line.len() / 4 * 3 + 3);
    let decoded = base64::engine::general_purpose::STANDARD.decode_vec(line, &mut buf);
    let secret = Secret::new(buf);
    decoded.map(|()| secret).map_err(|_| SaslError::Syntax)
}

/// PLAIN's response: `authzid NUL authcid NUL passwd`. The authorization identity is
/// ignored, as OpenSMTPD ignores it: the session is the authcid's.
pub fn plain(line: &[u8]) -> Result<(String, Secret), SaslError> {
    let payload = decode(line)?;
    let mut parts = payload.expose().splitn(3, |b| *b == 0);
    let (Some(_authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Syntax);
    };
    Ok((user_name(user)?, checked_password(password)?))
}

/// LOGIN's first response: the user name.
pub fn login_user(line: &[u8]) -> Result<String, SaslError> {
    let user = decode(line)?;
    user_name(user.expose())
}

/// LOGIN's second response: the password.
pub fn login_password(line: &[u8]) -> Result<Secret, SaslError> {
    let password = decode(line)?;
    checked_password(password.expose())
}

/// A user name fit for a table key and a log line: UTF-8, no whitespace or controls.
fn user_name(bytes: &[u8]) -> Result<String, SaslError> {
    let name = std::str::from_utf8(bytes).map_err(|_| SaslError::Syntax)?;
    let ok = !name.is_empty()
        && name.len() <= MAX_USER
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(SaslError::Syntax)
    }
}

/// Not empty, and no NUL, CR or LF (OpenSMTPD refuses those too).
fn checked_password(bytes: &[u8]) -> Result<Secret, SaslError> {
    if bytes.is_empty() || bytes.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        return Err(SaslError::Syntax);
    }
    Ok(Secret::new(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_arguments() {
        assert_eq!(parse_auth(b"PLAIN"), Ok((Mechanism::Plain, None)));
        assert_eq!(parse_auth(b"plain AGpvZQBw"), Ok((Mechanism::Plain, Some(&b"AGpvZQBw"[..]))));
        assert_eq!(parse_auth(b"LOGIN dXNlcg=="), Ok((Mechanism::Login, Some(&b"dXNlcg=="[..]))));
        assert_eq!(parse_auth(b"LOGIN "), Ok((Mechanism::Login, None)));
        assert_eq!(parse_auth(b""), Err(SaslError::NoMechanism));
        assert_eq!(parse_auth(b"CRAM-MD5"), Err(SaslError::UnknownMechanism));
        assert_eq!(parse_auth(b"\xff"), Err(SaslError::UnknownMechanism));
    }

    #[test]
    fn plain_responses() {
        // "\0joseph\0s3cret" and "admin\0joseph\0s3cret"
        let (user, pw) = plain(b"AGpvc2VwaABzM2NyZXQ=").unwrap();
        assert_eq!((user.as_str(), pw.expose()), ("joseph", &b"s3cret"[..]));
        let (user, _) = plain(b"YWRtaW4Aam9zZXBoAHMzY3JldA==").unwrap();
        assert_eq!(user, "joseph");
        let bad: [&[u8]; 8] = [
            b"*",
            b"not base64!",
            b"AGpvc2VwaABzM2NyZXQ",  // padding missing
            b"am9zZXBoAHMzY3JldA==", // one NUL only
            b"AABzM2NyZXQ=",         // empty user
            b"AGpvc2VwaAA=",         // empty password
            b"AGpvIHNlcGgAczNjcmV0", // "jo seph"
            b"AGpvc2VwaABzM2NyZQp0", // LF in the password
        ];
        for line in bad {
            let want = if line == b"*" { SaslError::Canceled } else { SaslError::Syntax };
            assert_eq!(plain(line).map(|_| ()), Err(want), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn login_responses() {
        assert_eq!(login_user(b"am9zZXBo"), Ok("joseph".to_owned()));
        assert_eq!(login_password(b"czNjcmV0").unwrap().expose(), b"s3cret");
        assert_eq!(login_user(b"*"), Err(SaslError::Canceled));
        assert_eq!(login_password(b"").map(|_| ()), Err(SaslError::Syntax));
        assert_eq!(login_user(b"//79"), Err(SaslError::Syntax), "not UTF-8");
    }
}
