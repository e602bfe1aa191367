//! Credentials for AUTH on listeners: pure functions that any process may call (the
//! delivery process's checkers do, `privsep::auth`; never an event loop, since a bcrypt
//! check costs tens of milliseconds).
//!
//! - [`hash`]: a table's `user = "HASH"` value against a password: bcrypt (`$2b$`, `$2a$`,
//!   `$2y$`), SHA-512-crypt (`$6$`), SHA-256-crypt (`$5$`); constant-time; any other form is
//!   refused with [`hash::HashError::UnknownForm`]. [`hash::encrypt`] makes `mxctl encrypt`'s hash.
//! - [`system`]: a system user's password, from the shadow database.
//! - [`senders`]: `listen … senders <t> [masquerade]`: may this user send as this address.
//! - [`Secret`]: a password in memory: zeroed on drop, never printed.
//!
//! **Invariant:** no function here logs, prints or returns a password, and no error
//! message quotes a hash.

pub mod hash;
mod secret;
pub mod senders;
pub mod system;

pub use secret::Secret;

/// Checks a password against an auth table's value for the user (`None`: no such user).
/// An unknown user costs one bcrypt check too, so timing does not tell which users exist.
pub fn check_table(value: Option<&str>, password: &[u8]) -> Result<bool, hash::HashError> {
    match value {
        Some(v) => hash::verify(v, password),
        None => {
            let _ = hash::verify(hash::DUMMY, password);
            Ok(false)
        }
    }
}
