//! Who a local recipient is: the system password database, or a `userbase` table whose
//! values are `uid:gid:home` (OpenSMTPD's format).

use std::path::PathBuf;

use crate::table::Table;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub trait UserDb {
    fn by_name(&self, name: &str) -> Option<User>;
}

/// The system's password database (getpwnam_r through nix), or its snapshot once one is
/// installed: the chrooted smtp process cannot read /etc/passwd, and its loops must never
/// block on a lookup.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemUsers;

impl UserDb for SystemUsers {
    fn by_name(&self, name: &str) -> Option<User> {
        if let Some(snap) = SNAPSHOT.get() {
            return snap.iter().find(|u| u.name == name).cloned();
        }
        let u = nix::unistd::User::from_name(name).ok()??;
        Some(User { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir })
    }
}

impl SystemUsers {
    /// The login name of `uid` (the local socket's peer), from the snapshot when installed.
    pub fn name_of(uid: u32) -> Option<String> {
        if let Some(snap) = SNAPSHOT.get() {
            return snap.iter().find(|u| u.uid == uid).map(|u| u.name.clone());
        }
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()?.map(|u| u.name)
    }
}

static SNAPSHOT: std::sync::OnceLock<Vec<User>> = std::sync::OnceLock::new();

/// Reads /etc/passwd once and answers every later lookup of this process from that copy.
/// For a process that is about to lose access to it (chroot); users added later are seen
/// by the next smtp process (a reload starts one).
pub fn install_snapshot() -> std::io::Result<usize> {
    let text = std::fs::read_to_string("/etc/passwd")?;
    let users: Vec<User> = text.lines().filter_map(parse_passwd_line).collect();
    let n = users.len();
    let _ = SNAPSHOT.set(users);
    Ok(n)
}

fn parse_passwd_line(line: &str) -> Option<User> {
    let f: Vec<&str> = line.split(':').collect();
    if line.starts_with('#') || f.len() < 7 || f[0].is_empty() {
        return None;
    }
    Some(User { name: f[0].to_owned(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: PathBuf::from(f[5]) })
}

/// A `userbase` table: `name = "uid:gid:home"` (a proc table's `userinfo`, where this
/// process may wait for it).
pub struct Userbase<'a>(pub &'a Table);

impl Userbase<'_> {
    /// The user, `None` when the table has no such user, or why the table could not say
    /// (a proc table that failed: a temporary failure, never "no such user").
    pub fn lookup(&self, name: &str) -> Result<Option<User>, crate::table::LookupError> {
        let value = self.0.lookup_value(crate::table::proc::TableService::Userinfo, name)?;
        Ok(value.and_then(|v| parse_entry(name, &v)))
    }
}

pub fn parse_entry(name: &str, value: &str) -> Option<User> {
    let mut parts = value.splitn(3, ':');
    let uid = parts.next()?.trim().parse().ok()?;
    let gid = parts.next()?.trim().parse().ok()?;
    let home = parts.next()?.trim();
    if home.is_empty() {
        return None;
    }
    Some(User { name: name.to_owned(), uid, gid, home: PathBuf::from(home) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userbase_entries() {
        assert_eq!(
            parse_entry("joseph", "1000:1000:/home/joseph"),
            Some(User { name: "joseph".into(), uid: 1000, gid: 1000, home: "/home/joseph".into() })
        );
        assert_eq!(parse_entry("x", "1000:/home"), None);
        assert_eq!(parse_entry("x", "a:b:/home"), None);
        assert!(SystemUsers.by_name("root").is_some());
        assert!(SystemUsers.by_name("no-such-user-here").is_none());
    }
}
