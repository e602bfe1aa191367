//! A system user's password (`listen … auth` without a table), for the privileged side.
//!
//! The crate forbids `unsafe`, so instead of getspnam(3) / getpwnam_shadow(3) through FFI
//! this reads the file those calls read: `/etc/shadow` on Linux (the "files" source of
//! nsswitch), `/etc/master.passwd` on OpenBSD and the other BSDs (the text pwd_mkdb(8) builds
//! spwd.db from). Both are readable by root only. Users known only to LDAP, sssd or other
//! NSS sources, and BSD auth styles, are not consulted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::hash::{self, HashError};

/// Where this system keeps its password hashes.
#[cfg(target_os = "linux")]
pub const SHADOW_FILE: &str = "/etc/shadow";
#[cfg(not(target_os = "linux"))]
pub const SHADOW_FILE: &str = "/etc/master.passwd";

/// The layout of a shadow file's lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowFormat {
    /// shadow(5): `name:hash:lastchg:min:max:warn:inactive:expire:` (expire in days since 1970).
    Linux,
    /// master.passwd(5): `name:hash:uid:gid:class:change:expire:gecos:home:shell` (expire in
    /// seconds since 1970).
    Bsd,
}

#[cfg(target_os = "linux")]
pub const SHADOW_FORMAT: ShadowFormat = ShadowFormat::Linux;
#[cfg(not(target_os = "linux"))]
pub const SHADOW_FORMAT: ShadowFormat = ShadowFormat::Bsd;

#[derive(Debug)]
pub enum SystemError {
    /// The file could not be read (not root?): a temporary failure for the client.
    Unreadable(PathBuf, std::io::Error),
    /// The user's hash is in a form mxd cannot check (e.g. MD5-crypt `$1$`).
    Hash(HashError),
}

impl std::fmt::Display for SystemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SystemError::Unreadable(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            SystemError::Hash(e) => write!(f, "system user's {e}"),
        }
    }
}

impl std::error::Error for SystemError {}

/// Checks `user`'s system password. Unknown users, locked accounts (`!`, `*`), empty
/// password fields and expired accounts fail; only the hash forms of [`hash`] are checked.
pub fn check_system_user(user: &str, password: &[u8]) -> Result<bool, SystemError> {
    check_in_file(Path::new(SHADOW_FILE), SHADOW_FORMAT, user, password, SystemTime::now())
}

/// [`check_system_user`] against a given file, format and time.
pub fn check_in_file(
    path: &Path,
    format: ShadowFormat,
    user: &str,
    password: &[u8],
    now: SystemTime,
) -> Result<bool, SystemError> {
    let unreadable = |e| SystemError::Unreadable(path.to_owned(), e);
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut entry = None;
    if valid_name(user) {
        for line in BufReader::new(file).lines() {
            let line = line.map_err(unreadable)?;
            if line.split(':').next() == Some(user) {
                entry = Some(line);
                break;
            }
        }
    }
    let Some(line) = entry else {
        return super::check_table(None, password).map_err(SystemError::Hash);
    };
    let fields: Vec<&str> = line.split(':').collect();
    let hash = fields.get(1).copied().unwrap_or("");
    if hash.is_empty() || hash.starts_with(['!', '*']) || expired(&fields, format, now) {
        return super::check_table(None, password).map_err(SystemError::Hash);
    }
    hash::verify(hash, password).map_err(SystemError::Hash)
}

/// A name that can be a key in the file: not empty, no separator, no control characters.
fn valid_name(user: &str) -> bool {
    !user.is_empty() && !user.contains(':') && !user.chars().any(char::is_control)
}

fn expired(fields: &[&str], format: ShadowFormat, now: SystemTime) -> bool {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (field, now_units) = match format {
        ShadowFormat::Linux => (7, secs / 86_400),
        ShadowFormat::Bsd => (6, secs),
    };
    match fields.get(field).and_then(|f| f.parse::<u64>().ok()) {
        Some(0) | None => false,
        Some(expire) => now_units >= expire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SHA256: &str = "$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM.";

    #[test]
    fn shadow_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shadow");
        let text = format!(
            "root:*:19000:0:99999:7:::\njoseph:{SHA256}:19000:0:99999:7:::\nlocked:!{SHA256}:19000::::::\n\
             old:{SHA256}:19000:0:99999:7::19001:\nnopass::19000::::::\nyes:$y$j9T$a$b:19000::::::\nmd5:$1$a$b:19000::::::\n"
        );
        std::fs::write(&path, text).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400);
        let check = |u: &str, p: &[u8]| check_in_file(&path, ShadowFormat::Linux, u, p, now);
        assert!(check("joseph", b"secret").unwrap());
        assert!(!check("joseph", b"wrong").unwrap());
        for user in ["root", "locked", "old", "nopass", "nobody", "", "joseph:x", "jos\neph"] {
            assert!(!check(user, b"secret").unwrap(), "{user:?}");
        }
        assert!(matches!(check("yes", b"secret"), Err(SystemError::Hash(HashError::Malformed(_)))));
        assert!(matches!(check("md5", b"secret"), Err(SystemError::Hash(HashError::UnknownForm(_)))));
        let early = UNIX_EPOCH + Duration::from_secs(19_000 * 86_400);
        assert!(check_in_file(&path, ShadowFormat::Linux, "old", b"secret", early).unwrap());
        let missing = check_in_file(&dir.path().join("none"), ShadowFormat::Linux, "joseph", b"secret", now);
        assert!(matches!(missing, Err(SystemError::Unreadable(..))));
    }

    #[test]
    fn master_passwd_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.passwd");
        let text = format!(
            "joseph:{SHA256}:1000:1000::0:0:Joseph:/home/joseph:/bin/ksh\n\
             gone:{SHA256}:1001:1001::0:1000:Gone:/home/gone:/bin/ksh\n"
        );
        std::fs::write(&path, text).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(2_000);
        assert!(check_in_file(&path, ShadowFormat::Bsd, "joseph", b"secret", now).unwrap());
        assert!(!check_in_file(&path, ShadowFormat::Bsd, "gone", b"secret", now).unwrap());
    }
}
