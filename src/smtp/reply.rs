//! Every reply mxd sends, in one place, with OpenSMTPD's wording and RFC 3463 enhanced codes.

use std::borrow::Cow;
use std::io::Write;

/// One SMTP reply: code, enhanced status code, text. Multi-line replies (EHLO, HELP) are
/// built by the session directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with a fixed text.
    pub const fn fixed(code: u16, enhanced: &'static str, text: &'static str) -> Reply {
        Reply { code, enhanced, text: Cow::Borrowed(text) }
    }

    /// A reply with a computed text (e.g. a refusal reason from the server's policy).
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply { code, enhanced, text: text.into() }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form. CR and LF in the text cannot split the reply.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "{} ", self.code);
        if !self.enhanced.is_empty() {
            out.extend_from_slice(self.enhanced.as_bytes());
            out.push(b' ');
        }
        out.extend(self.text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        out.extend_from_slice(b"\r\n");
    }
}

pub const OK: Reply = Reply::fixed(250, "2.0.0", "Ok");
pub const MAIL_OK: Reply = Reply::fixed(250, "2.1.0", "Ok");
pub const RCPT_OK: Reply = Reply::fixed(250, "2.1.5", "Destination address valid: Recipient ok");
pub const RESET: Reply = Reply::fixed(250, "2.0.0", "Reset state");
pub const DATA_GO: Reply = Reply::fixed(354, "", "Enter mail, end with \".\" on a line by itself");
pub const BYE: Reply = Reply::fixed(221, "2.0.0", "Bye");
pub const VRFY: Reply = Reply::fixed(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
pub const STARTTLS_GO: Reply = Reply::fixed(220, "2.0.0", "Ready to start TLS");

pub const UNKNOWN: Reply = Reply::fixed(500, "5.5.1", "Invalid command: Command unrecognized");
pub const LINE_TOO_LONG: Reply = Reply::fixed(500, "5.5.1", "Invalid command: Line too long");
pub const NEED_HELO: Reply = Reply::fixed(503, "5.5.1", "Invalid command: Polite people say HELO first");
pub const NESTED_MAIL: Reply = Reply::fixed(503, "5.5.1", "Invalid command: Only one MAIL FROM allowed");
pub const NEED_MAIL: Reply = Reply::fixed(503, "5.5.1", "Invalid command: No MAIL FROM command issued");
pub const NEED_RCPT: Reply = Reply::fixed(503, "5.5.1", "Invalid command: No recipient specified");
pub const ALREADY_TLS: Reply = Reply::fixed(503, "5.5.1", "Invalid command: TLS already active");
pub const NO_TLS: Reply = Reply::fixed(502, "5.5.1", "Invalid command: STARTTLS not available");
pub const NO_AUTH: Reply = Reply::fixed(503, "5.5.1", "Invalid command: Command not supported");
pub const NOT_IMPLEMENTED: Reply = Reply::fixed(502, "5.5.1", "Invalid command: Command not implemented");
pub const SYNTAX_HELO: Reply = Reply::fixed(501, "5.5.4", "Syntax: HELO/EHLO hostname");
pub const SYNTAX_MAIL: Reply = Reply::fixed(501, "5.5.4", "Syntax: MAIL FROM:<address>");
pub const SYNTAX_RCPT: Reply = Reply::fixed(501, "5.5.4", "Syntax: RCPT TO:<address>");
pub const SYNTAX_NOARG: Reply = Reply::fixed(501, "5.5.4", "Syntax: command takes no parameters");
pub const BAD_SENDER: Reply = Reply::fixed(553, "5.1.7", "Sender address syntax error");
pub const BAD_RCPT: Reply = Reply::fixed(553, "5.1.3", "Recipient address syntax error");
pub const BAD_PARAM: Reply = Reply::fixed(555, "5.5.4", "Unsupported option");
pub const NEED_SMTPUTF8: Reply = Reply::fixed(553, "5.6.7", "SMTPUTF8 is required for 8-bit addresses");
pub const TOO_BIG: Reply = Reply::fixed(552, "5.3.4", "Message size exceeds fixed maximum message size");
pub const BARE_EOL: Reply = Reply::fixed(554, "5.5.2", "Message refused: bare CR or LF in DATA is not allowed");
pub const TOO_MANY_RCPTS: Reply = Reply::fixed(452, "4.5.3", "Too many recipients");
pub const TLS_REQUIRED: Reply = Reply::fixed(530, "5.7.0", "Must issue a STARTTLS command first");
pub const TOO_MANY_ERRORS: Reply = Reply::fixed(421, "4.7.0", "Too many errors, closing connection");
pub const TIMEOUT: Reply = Reply::fixed(421, "4.4.2", "Timeout exceeded, closing connection");
pub const TEMPFAIL: Reply = Reply::fixed(451, "4.3.0", "Temporary failure, try again later");
pub const PERMFAIL: Reply = Reply::fixed(554, "5.0.0", "Transaction failed");

// AUTH (RFC 4954): OpenSMTPD's texts where it has one; the enhanced codes of RFC 4954 §6.
pub const AUTH_OK: Reply = Reply::fixed(235, "2.0.0", "Authentication succeeded");
pub const AUTH_FAILED: Reply = Reply::fixed(535, "5.7.8", "Authentication failed");
pub const AUTH_TEMPFAIL: Reply = Reply::fixed(454, "4.7.0", "Temporary authentication failure");
/// PLAIN without an initial response: an empty challenge.
pub const AUTH_PLAIN_GO: Reply = Reply::fixed(334, "", "");
pub const AUTH_USERNAME: Reply = Reply::fixed(334, "", "VXNlcm5hbWU6");
pub const AUTH_PASSWORD: Reply = Reply::fixed(334, "", "UGFzc3dvcmQ6");
pub const AUTH_CANCELED: Reply = Reply::fixed(501, "5.7.0", "Authentication canceled");
pub const AUTH_SYNTAX: Reply = Reply::fixed(501, "5.5.2", "Syntax error: malformed AUTH response");
pub const AUTH_NO_MECHANISM: Reply = Reply::fixed(501, "5.5.4", "Invalid command arguments: No parameters given");
pub const AUTH_UNKNOWN_MECHANISM: Reply =
    Reply::fixed(504, "5.7.4", "Security features not supported: AUTH method not supported");
pub const AUTH_NOT_NOW: Reply = Reply::fixed(503, "5.5.1", "Invalid command: Command not allowed at this point.");
pub const AUTH_TWICE: Reply = Reply::fixed(503, "5.5.1", "Invalid command: Already authenticated");
pub const AUTH_REQUIRED: Reply = Reply::fixed(530, "5.7.0", "Must issue an AUTH command first");
pub const TOO_MANY_AUTH_FAILURES: Reply =
    Reply::fixed(421, "4.7.0", "Too many authentication failures, closing connection");
/// The server's flood limit: this client's address failed too often lately.
pub const AUTH_BLOCKED: Reply =
    Reply::fixed(421, "4.7.0", "Too many authentication failures from your address, try again later");
/// `senders <t>`: MAIL FROM is not one of the authenticated user's addresses
/// (`auth::senders::sender_allowed` said no).
pub const SENDER_NOT_ALLOWED: Reply =
    Reply::fixed(550, "5.7.1", "Sender rejected: not an address of the authenticated user");

// Recipient and sender policy (server/policy.rs): OpenSMTPD's texts.
/// `smtp limit max-mails`: OpenSMTPD's reply, which pretends too many recipients.
pub const TOO_MANY_MAILS: Reply = Reply::fixed(452, "4.5.3", "Too many recipients: Too many messages sent");
/// A bounce to an SRS address of ours whose signature or age does not hold.
pub const BAD_SRS: Reply = Reply::fixed(550, "5.7.1", "Invalid SRS address, message refused");
/// No `match` rule accepts the recipient, or one rejects it.
pub const NOT_AUTHORIZED: Reply = Reply::fixed(550, "5.7.1", "Delivery not authorized, message refused");
pub const UNKNOWN_RCPT: Reply = Reply::fixed(550, "5.1.1", "Invalid recipient");
pub const ALIAS_LOOP: Reply = Reply::fixed(550, "5.4.6", "Alias loop or expansion too deep");
pub const UNSAFE_MAILBOX: Reply = Reply::fixed(550, "5.1.3", "Invalid recipient: unsafe mailbox name");
pub const METHOD_UNSUPPORTED: Reply = Reply::fixed(550, "5.3.3", "Delivery method not supported");
pub const EMPTY_EXPANSION: Reply = Reply::fixed(550, "5.1.1", "Invalid recipient: expands to no mailbox");
/// OpenSMTPD's replies when a ~/.forward cannot be used at RCPT: a `forward-only` user
/// without one (or with a command or file in it, or in root's) is temporary, an
/// `expand-only` user without one permanent.
pub const FORWARD_TEMPFAIL: Reply = Reply::fixed(424, "4.2.4", "Mailing list expansion problem");
pub const FORWARD_PERMFAIL: Reply = Reply::fixed(524, "5.2.4", "Mailing list expansion problem");

// Filter refusals as whole lines: a filter's decision carries its reply as text
// (smtpd-filters(7)), so the server's own ones are text too.
/// A filter failed, misbehaved or timed out: fail closed (smtpd.conf(5)), the client retries later.
pub const FILTER_FAIL: &str = "421 4.3.0 Filter failure, try again later";
/// What OpenSMTPD substitutes for a reject or disconnect message that is not a 4xx/5xx reply.
pub const FILTER_INVALID: &str = "421 Internal server error";
/// Data-line filters made the message larger than the limit.
pub const FILTER_TOO_BIG: &str = "552 5.3.4 Message too big after filtering";
/// A message line longer than data-line filters can be given and answer (`MAX_DATA_LINE`).
pub const FILTER_LINE_TOO_LONG: &str = "554 5.6.0 Message refused: a line is too long for this listener's filters";

pub const SHUTTING_DOWN: Reply = Reply::fixed(421, "4.3.0", "Server shutting down");
pub const TOO_MANY_CONNECTIONS: Reply = Reply::fixed(421, "4.3.2", "Too many connections, try again later");

/// The greeting: `220 HOST ESMTP mxd`.
pub fn greeting(out: &mut Vec<u8>, host: &str) {
    let _ = write!(out, "220 {host} ESMTP mxd\r\n");
}

/// The final 250 after DATA, once every copy is durable.
pub fn accepted(out: &mut Vec<u8>, id: impl std::fmt::Display) {
    let _ = write!(out, "250 2.0.0 {id} Message accepted for delivery\r\n");
}

pub fn help(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"214-2.0.0 This is mxd\r\n214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS\r\n214 2.0.0 End of HELP info\r\n",
    );
}

/// The answer to HELO (`ehlo: None`) or EHLO, with the extensions it offers.
pub fn hello(out: &mut Vec<u8>, host: &str, name: &str, ehlo: Option<EhloOffer>) {
    let Some(ext) = ehlo else {
        let _ = write!(out, "250 {host} Hello {name}, pleased to meet you\r\n");
        return;
    };
    let _ = write!(out, "250-{host} Hello {name}, pleased to meet you\r\n");
    if ext.starttls {
        out.extend_from_slice(b"250-STARTTLS\r\n");
    }
    if ext.auth {
        out.extend_from_slice(b"250-AUTH PLAIN LOGIN\r\n");
    }
    let _ = write!(
        out,
        "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE {}\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250 HELP\r\n",
        ext.size
    );
}

/// What EHLO offers beyond the fixed extensions.
#[derive(Clone, Copy, Debug)]
pub struct EhloOffer {
    pub starttls: bool,
    /// `AUTH PLAIN LOGIN`: only on an auth listener, under TLS, before a login succeeded.
    pub auth: bool,
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_and_no_line_breaks_from_text() {
        let mut out = Vec::new();
        RCPT_OK.write_to(&mut out);
        assert_eq!(out, b"250 2.1.5 Destination address valid: Recipient ok\r\n");
        out.clear();
        Reply::new(550, "5.1.1", "bad\r\n250 fake").write_to(&mut out);
        assert_eq!(out, b"550 5.1.1 bad  250 fake\r\n");
        out.clear();
        DATA_GO.write_to(&mut out);
        assert!(out.starts_with(b"354 Enter"));
    }
}
