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

/// The system's password database (getpwnam_r through nix).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemUsers;

impl UserDb for SystemUsers {
    fn by_name(&self, name: &str) -> Option<User> {
        let u = nix::unistd::User::from_name(name).ok()??;
        Some(User { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir })
    }
}

/// A `userbase` table: `name = "uid:gid:home"`.
pub struct Userbase<'a>(pub &'a Table);

impl UserDb for Userbase<'_> {
    fn by_name(&self, name: &str) -> Option<User> {
        parse_entry(name, self.0.get(name)?)
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
