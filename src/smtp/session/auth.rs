//! AUTH PLAIN and LOGIN on the server side (RFC 4954), offered as OpenSMTPD offers them:
//! only on a listener with `auth` or `auth-optional`, only under TLS, only until a login
//! succeeds. The session never checks a password: a complete response becomes an
//! [`AuthRequest`] (`Session::poll_auth`) and the session waits in `AwaitAuth`, reading
//! nothing, until the server's verdict arrives through `Session::handle_auth`.

use std::time::Duration;

use super::{CloseReason, Policy, Session, State, TxStep};
use crate::auth::Secret;
use crate::smtp::reply;
use crate::smtp::sasl::{self, Mechanism, SaslError};

/// What a listener says about AUTH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthPolicy {
    /// No `auth` option: AUTH is neither offered nor accepted.
    Off,
    /// `auth-optional`: offered under TLS; MAIL without it is fine.
    Optional,
    /// `auth`: offered under TLS; MAIL before a login gets `530 5.7.0`.
    Required,
}

/// A listener's AUTH settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    pub policy: AuthPolicy,
    /// Failed logins after which the session answers `421 4.7.0` and closes.
    pub max_failures: u32,
    /// How long the server holds a `Failed` verdict before handing it to `handle_auth`,
    /// so guessing is slow (OpenSMTPD pauses up to a second). The session does not use it:
    /// it has no timer of its own for this, and waiting is the server's business.
    pub failure_delay: Duration,
}

impl AuthConfig {
    pub const OFF: AuthConfig =
        AuthConfig { policy: AuthPolicy::Off, max_failures: 3, failure_delay: Duration::from_secs(1) };

    /// `policy` with the default limits: 3 failures, 1 s delay.
    pub const fn new(policy: AuthPolicy) -> AuthConfig {
        AuthConfig { policy, ..AuthConfig::OFF }
    }
}

/// Names one request of one session, so a late verdict for an earlier one is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AuthId(pub u32);

/// The server's verdict on an [`AuthRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// `235 2.0.0`: the session is authenticated as the request's user.
    Ok,
    /// `535 5.7.8`, counted against `AuthConfig::max_failures`.
    Failed,
    /// `454 4.7.0`: the check could not be made (a table or shadow file unreadable).
    TempFail,
    /// `421 4.7.0` and close: too many failures from this client's address lately, so
    /// the server did not check (a flood limit, kept by the server).
    Blocked,
}

/// Credentials to check. `password` is zeroed when dropped and never printed by `Debug`.
#[derive(Debug)]
pub struct AuthRequest {
    pub id: AuthId,
    pub user: String,
    pub password: Secret,
}

/// Which response the session waits for after its 334.
pub(super) enum AuthStep {
    Plain,
    LoginUser,
    LoginPassword(String),
}

impl<P: Policy> Session<P> {
    /// The listener's AUTH settings; call before feeding input (the default is off).
    pub fn set_auth_config(&mut self, cfg: AuthConfig) {
        self.auth_cfg = cfg;
    }

    /// Credentials the client sent, once per AUTH; the session then waits for `handle_auth`.
    pub fn poll_auth(&mut self) -> Option<AuthRequest> {
        self.auth_request.take()
    }

    /// The server's verdict on the request `id`; anything else is ignored.
    pub fn handle_auth(&mut self, id: AuthId, result: AuthResult) {
        let user = match std::mem::replace(&mut self.state, State::Ready) {
            State::AwaitAuth(waiting, user) if waiting == id => user,
            other => {
                self.state = other;
                return;
            }
        };
        match result {
            AuthResult::Ok => {
                self.reply(&reply::AUTH_OK);
                self.auth = Some(user);
            }
            AuthResult::TempFail => self.refuse(TxStep::Auth, Some(user), reply::AUTH_TEMPFAIL),
            AuthResult::Blocked => {
                self.refuse(TxStep::Auth, Some(user), reply::AUTH_BLOCKED);
                self.close(CloseReason::TooManyAuthFailures);
            }
            AuthResult::Failed => {
                self.auth_failures += 1;
                self.refuse(TxStep::Auth, Some(user.clone()), reply::AUTH_FAILED);
                if self.auth_failures >= self.auth_cfg.max_failures {
                    self.refuse(TxStep::Auth, Some(user), reply::TOO_MANY_AUTH_FAILURES);
                    self.close(CloseReason::TooManyAuthFailures);
                }
            }
        }
    }

    /// EHLO says `AUTH PLAIN LOGIN`: never on a plaintext channel, never twice.
    pub(super) fn offers_auth(&self) -> bool {
        self.auth_cfg.policy != AuthPolicy::Off && self.tls.is_some() && self.auth.is_none()
    }

    /// The AUTH command (OpenSMTPD's order of checks: state, already, offered, arguments).
    pub(super) fn auth(&mut self, arg: &[u8]) {
        if !matches!(self.state, State::Ready) {
            return self.error(reply::AUTH_NOT_NOW);
        }
        if self.auth.is_some() {
            return self.error(reply::AUTH_TWICE);
        }
        if !self.offers_auth() {
            return self.error(reply::NO_AUTH);
        }
        match sasl::parse_auth(arg) {
            Ok((Mechanism::Plain, None)) => {
                self.state = State::Auth(AuthStep::Plain);
                self.reply(&reply::AUTH_PLAIN_GO);
            }
            Ok((Mechanism::Login, None)) => {
                self.state = State::Auth(AuthStep::LoginUser);
                self.reply(&reply::AUTH_USERNAME);
            }
            Ok((Mechanism::Plain, Some(initial))) => self.auth_response(AuthStep::Plain, initial),
            Ok((Mechanism::Login, Some(initial))) => self.auth_response(AuthStep::LoginUser, initial),
            Err(e) => self.sasl_error(e),
        }
    }

    /// A response line (the state is `Ready` again while it is decoded).
    pub(super) fn auth_response(&mut self, step: AuthStep, line: &[u8]) {
        let credentials = match step {
            AuthStep::Plain => sasl::plain(line),
            AuthStep::LoginUser => match sasl::login_user(line) {
                Ok(user) => {
                    self.state = State::Auth(AuthStep::LoginPassword(user));
                    return self.reply(&reply::AUTH_PASSWORD);
                }
                Err(e) => Err(e),
            },
            AuthStep::LoginPassword(user) => sasl::login_password(line).map(|password| (user, password)),
        };
        match credentials {
            Ok((user, password)) => {
                self.next_auth_id = self.next_auth_id.wrapping_add(1);
                let id = AuthId(self.next_auth_id);
                self.state = State::AwaitAuth(id, user.clone());
                self.auth_request = Some(AuthRequest { id, user, password });
            }
            Err(e) => self.sasl_error(e),
        }
    }

    /// Client mistakes, counted like any other (a cancel too: it bounds AUTH/`*` loops).
    fn sasl_error(&mut self, e: SaslError) {
        self.error(match e {
            SaslError::NoMechanism => reply::AUTH_NO_MECHANISM,
            SaslError::UnknownMechanism => reply::AUTH_UNKNOWN_MECHANISM,
            SaslError::Canceled => reply::AUTH_CANCELED,
            SaslError::Syntax => reply::AUTH_SYNTAX,
        });
    }
}
