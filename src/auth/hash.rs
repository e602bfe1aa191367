//! Password hashes in the forms crypt(3) and `smtpctl encrypt` write, checked with
//! well-kept pure-Rust crates: `bcrypt` (bcrypt, compares with `subtle`) and RustCrypto's
//! `sha-crypt` (SHA-256/512-crypt, compares with `ctutils`) and `yescrypt` (`$y$`, Debian's
//! default in /etc/shadow, compares with `ctutils`). Every comparison is constant-time; the
//! cost of a check is fixed by the hash, not by the password.

use std::fmt;

/// The bcrypt cost `mxctl encrypt` uses: OpenBSD's `encrypt(1)` and OpenSMTPD's portable
/// `encrypt` both default to 10 for `$2b$`.
pub const ENCRYPT_COST: u32 = 10;

/// The most work one check may cost (about 5 s each on a small machine): a hash asking for
/// more, by mistake or not, would let each login attempt stall the process that checks.
pub const MAX_BCRYPT_COST: u32 = 16;
pub const MAX_SHA_ROUNDS: u64 = 10_000_000;
/// yescrypt's memory per check is 128·N·r·p bytes: at most 256 MiB (Debian's default,
/// `j9T`, is 16 MiB).
pub const MAX_YESCRYPT_MEMORY: u64 = 256 << 20;

/// A valid bcrypt hash of a password nobody has: checked when the user is unknown, so an
/// unknown user costs as much time as a wrong password.
pub(super) const DUMMY: &str = "$2b$10$XHH8w/I0EgGwxd09CPweLuu7C9DdOBM.cT1.J6AbiJ8OzmR3unh9m";

/// The hash forms mxd verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashForm {
    /// `$2b$`, `$2a$`, `$2y$` (OpenBSD's encrypt(1), htpasswd -B, mkpasswd -m bcrypt).
    Bcrypt,
    /// `$6$` (crypt(3) on Linux, `openssl passwd -6`).
    Sha512Crypt,
    /// `$5$` (`openssl passwd -5`).
    Sha256Crypt,
    /// `$y$` (Debian's and Fedora's crypt(3) default, `mkpasswd -m yescrypt`).
    Yescrypt,
}

/// Why a stored value could not be checked. The message names the hash's prefix only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashError {
    /// Not a form listed in [`HashForm`] (DES, MD5 `$1$`, scrypt `$7$`, a plaintext
    /// password…); carries the `$id$` prefix, or nothing when there is none.
    UnknownForm(Option<String>),
    /// The prefix of a known form, but the rest does not parse.
    Malformed(HashForm),
    /// A cost or rounds above [`MAX_BCRYPT_COST`] / [`MAX_SHA_ROUNDS`].
    TooCostly(HashForm),
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::UnknownForm(Some(prefix)) => write!(
                f,
                "unsupported password hash form {prefix} (expected bcrypt $2b$/$2a$/$2y$, SHA-512-crypt $6$ or SHA-256-crypt $5$)"
            ),
            HashError::UnknownForm(None) => f.write_str(
                "not a password hash (expected bcrypt $2b$/$2a$/$2y$, SHA-512-crypt $6$ or SHA-256-crypt $5$; make one with \"mxctl encrypt\")",
            ),
            HashError::Malformed(form) => write!(f, "malformed {form:?} password hash"),
            HashError::TooCostly(form) => write!(
                f,
                "{form:?} password hash too costly to check (at most bcrypt cost {MAX_BCRYPT_COST}, {MAX_SHA_ROUNDS} SHA-crypt rounds, {} MiB for yescrypt)",
                MAX_YESCRYPT_MEMORY >> 20
            ),
        }
    }
}

impl std::error::Error for HashError {}

/// Which form a stored hash is in.
pub fn form(hash: &str) -> Result<HashForm, HashError> {
    let prefix = hash.strip_prefix('$').and_then(|rest| rest.find('$').map(|i| &hash[..i + 2]));
    match prefix {
        Some("$2b$" | "$2a$" | "$2y$") => Ok(HashForm::Bcrypt),
        Some("$6$") => Ok(HashForm::Sha512Crypt),
        Some("$5$") => Ok(HashForm::Sha256Crypt),
        Some("$y$") => Ok(HashForm::Yescrypt),
        Some(p) => Err(HashError::UnknownForm(Some(printable(p)))),
        None => Err(HashError::UnknownForm(None)),
    }
}

/// A prefix fit for a log line: short, printable ASCII.
fn printable(prefix: &str) -> String {
    prefix.chars().take(12).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// Does `password` match `hash`? `Ok(false)` for a wrong password; an error when the hash
/// itself cannot be used (the administrator's problem, to be logged).
pub fn verify(hash: &str, password: &[u8]) -> Result<bool, HashError> {
    let form = form(hash)?;
    if too_costly(form, hash) {
        return Err(HashError::TooCostly(form));
    }
    match form {
        HashForm::Bcrypt => bcrypt::verify(password, hash).map_err(|_| HashError::Malformed(form)),
        HashForm::Sha512Crypt | HashForm::Sha256Crypt => {
            use sha_crypt::{password_hash::Error, PasswordVerifier, ShaCrypt};
            match ShaCrypt::default().verify_password(password, hash) {
                Ok(()) => Ok(true),
                Err(Error::PasswordInvalid) => Ok(false),
                Err(_) => Err(HashError::Malformed(form)),
            }
        }
        HashForm::Yescrypt => {
            use yescrypt::{password_hash::Error, PasswordVerifier, Yescrypt};
            match Yescrypt::default().verify_password(password, hash) {
                Ok(()) => Ok(true),
                Err(Error::PasswordInvalid) => Ok(false),
                Err(_) => Err(HashError::Malformed(form)),
            }
        }
    }
}

/// `$2b$NN$…` with NN over the limit, or `$6$rounds=N$…` with N over it.
fn too_costly(form: HashForm, hash: &str) -> bool {
    let field = hash.split('$').nth(2).unwrap_or("");
    match form {
        HashForm::Bcrypt => field.parse::<u32>().is_ok_and(|cost| cost > MAX_BCRYPT_COST),
        HashForm::Sha512Crypt | HashForm::Sha256Crypt => {
            field.strip_prefix("rounds=").is_some_and(|n| n.parse::<u64>().map_or(true, |n| n > MAX_SHA_ROUNDS))
        }
        HashForm::Yescrypt => yescrypt_memory(field).is_none_or(|m| m > MAX_YESCRYPT_MEMORY),
    }
}

/// The memory a yescrypt check with these encoded parameters takes; `None` when they do
/// not parse. The crate keeps N, r and p private, so they are read from its `Debug` form
/// (a change there reads as `None`: refused, never unbounded).
fn yescrypt_memory(encoded: &str) -> Option<u64> {
    let params: yescrypt::Params = encoded.parse().ok()?;
    let debug = format!("{params:?}");
    let field = |name: &str| -> Option<u64> {
        let at = debug.find(&format!(" {name}: "))? + name.len() + 3;
        debug[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    128u64.checked_mul(field("n")?)?.checked_mul(field("r")?)?.checked_mul(field("p")?)
}

/// Could not make a hash (no randomness from the system).
#[derive(Debug)]
pub struct EncryptError(String);

impl fmt::Display for EncryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot hash the password: {}", self.0)
    }
}

impl std::error::Error for EncryptError {}

/// A new bcrypt `$2b$` hash (cost [`ENCRYPT_COST`], random salt), as `smtpctl encrypt`
/// prints on OpenBSD. Passwords longer than 72 bytes are truncated, as bcrypt always does.
pub fn encrypt(password: &[u8]) -> Result<String, EncryptError> {
    bcrypt::hash_with_result(password, ENCRYPT_COST)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoB))
        .map_err(|e| EncryptError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `openssl passwd -6 -salt saltsaltsaltsalt secret`, `openssl passwd -5 -salt
    // abcdefgh secret`, `mkpasswd -m sha512crypt -R 10000 -S 0123456789abcdef secret` and
    // `htpasswd -nbB -C 10 u secret`; tests/auth_hashes.rs makes fresh ones with the programs.
    const SHA512: &str =
        "$6$saltsaltsaltsalt$ph0yGsyjzqdeFaon7.gJZo8eAG5/rj9/JdzOu1Rl7dKzBYg3xgvl7T2VQ2Rt81bc5AXkdA54r0p8QvC1omD6R1";
    const SHA256: &str = "$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM.";
    const SHA512_ROUNDS: &str = "$6$rounds=10000$0123456789abcdef$gSy5VF5ySG5/uV08PkwjFUoogx1q7gWxnw3f6ykYMdK6EdIpj4shFbc/W.Xg/wXfN3SMqlULJfXnkXcJ0dHu10";
    const BCRYPT_2Y: &str = "$2y$10$AY9kg67chAWNN0AG9Rncf.9XKMkXJCVVdQXuiknjrOFlyXJCInCTS";
    // `mkpasswd -m yescrypt secret` (Debian 13).
    const YESCRYPT: &str = "$y$j9T$fqdt3Lr9jhp9f/KDgg1lt/$dmXSLUtAdpYfY0AbyLYKWQ4aB7jz9r225nHnBOFEbm/";

    #[test]
    fn known_forms_verify_and_wrong_passwords_do_not() {
        for hash in [SHA512, SHA256, SHA512_ROUNDS, BCRYPT_2Y, YESCRYPT] {
            assert_eq!(verify(hash, b"secret"), Ok(true), "{hash}");
            assert_eq!(verify(hash, b"Secret"), Ok(false), "{hash}");
            assert_eq!(verify(hash, b""), Ok(false), "{hash}");
        }
    }

    #[test]
    fn yescrypt_memory_is_read_from_the_parameters() {
        assert_eq!(yescrypt_memory("j9T"), Some(16 << 20), "Debian's default: N=4096, r=32");
        assert_eq!(yescrypt_memory("jBT"), Some(64 << 20));
        assert_eq!(yescrypt_memory("!!"), None);
    }

    #[test]
    fn encrypt_makes_2b_cost_10_that_verifies() {
        let h = encrypt(b"p\xc3\xa4ss word").unwrap();
        assert!(h.starts_with("$2b$10$") && h.len() == 60, "{h}");
        assert_eq!(verify(&h, b"p\xc3\xa4ss word"), Ok(true));
        assert_eq!(verify(&h, b"pass word"), Ok(false));
        assert_ne!(encrypt(b"x").unwrap(), encrypt(b"x").unwrap(), "salted");
    }

    #[test]
    fn unknown_and_malformed_forms_are_refused_by_name() {
        let cases: &[(&str, HashError)] = &[
            ("$1$abc$def", HashError::UnknownForm(Some("$1$".into()))),
            ("$7$abc$def", HashError::UnknownForm(Some("$7$".into()))),
            ("$y$j9T$abc", HashError::Malformed(HashForm::Yescrypt)),
            (
                "$y$jFT$fqdt3Lr9jhp9f/KDgg1lt/$dmXSLUtAdpYfY0AbyLYKWQ4aB7jz9r225nHnBOFEbm/",
                HashError::TooCostly(HashForm::Yescrypt),
            ),
            ("secret", HashError::UnknownForm(None)),
            ("", HashError::UnknownForm(None)),
            ("$6$", HashError::Malformed(HashForm::Sha512Crypt)),
            ("$6$salt$!!!", HashError::Malformed(HashForm::Sha512Crypt)),
            ("$2b$10$short", HashError::Malformed(HashForm::Bcrypt)),
            ("$2b$31$XHH8w/I0EgGwxd09CPweLuu7C9DdOBM.cT1.J6AbiJ8OzmR3unh9m", HashError::TooCostly(HashForm::Bcrypt)),
            ("$6$rounds=999999999$salt$abc", HashError::TooCostly(HashForm::Sha512Crypt)),
            ("$5$rounds=99999999999999999999999$salt$abc", HashError::TooCostly(HashForm::Sha256Crypt)),
        ];
        for (hash, want) in cases {
            assert_eq!(&verify(hash, b"secret").unwrap_err(), want, "{hash}");
        }
        let msg = verify("$1$abc$def", b"x").unwrap_err().to_string();
        assert!(msg.contains("$1$") && !msg.contains("def"), "{msg}");
    }

    #[test]
    fn unknown_user_is_a_plain_failure() {
        assert_eq!(super::super::check_table(None, b"secret"), Ok(false));
        assert_eq!(super::super::check_table(Some(SHA256), b"secret"), Ok(true));
    }
}
