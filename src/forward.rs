//! ~/.forward as OpenSMTPD reads it: comma-separated entries on lines, `#` comments, `\`
//! escapes and quotes; an entry is an address (`user@domain`, decided by the rules again),
//! a local name (`user`, `\user`), a command (`|cmd`, or `"|cmd with spaces"`), a file
//! (`/path`, appended as mbox) or `:include:/path` (more entries from that file).
//!
//! Read only by the delivery process (root), never by the chrooted smtp process. A file is
//! used only when it, and every directory from it up to the home, is owned by the user or
//! root and not group- or world-writable, it is a regular file (not a symlink) under 4 KiB,
//! and the home is not sticky; otherwise it is refused with a reason the caller logs. An
//! `:include:` file passes the same checks (OpenSMTPD ignores includes in .forward; a file
//! a user owns, or root's, is as safe to read as the .forward itself).
//!
//! Commands and files found here, or in an alias, become [`ForwardProgram`]s: mda-queue recipients
//! run by the parent as their user, never as root.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::users::User;

/// OpenSMTPD's limit: a larger file is refused.
pub const MAX_SIZE: u64 = 4 * 1024;
/// Entries one file may hold.
const MAX_ENTRIES: usize = 100;

/// One entry of a .forward (or an alias value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardEntry {
    /// `user@domain`: decided by the rules again.
    Address(String),
    /// A local name: the same action's aliases and user (`\name` escapes it).
    User(String),
    /// `|command`: run by `/bin/sh -c` as the user, the message on stdin.
    Pipe(String),
    /// `/path`: the message appended to it in mbox format, as the user.
    File(String),
    /// `:include:/path`: more entries from that file.
    Include(PathBuf),
}

impl ForwardEntry {
    /// One entry as OpenSMTPD's text_to_expandnode classifies it; `None` for a form mxd
    /// does not take (`error:`) or a malformed one.
    pub fn classify(text: &str) -> Option<ForwardEntry> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("error:") {
            return None;
        }
        for prefix in [":include:", "include:"] {
            if lower.starts_with(prefix) {
                let path = text[prefix.len()..].trim();
                return path.starts_with('/').then(|| ForwardEntry::Include(PathBuf::from(path)));
            }
        }
        if let Some(cmd) = text.strip_prefix("\"|") {
            return cmd.strip_suffix('"').filter(|c| !c.trim().is_empty()).map(|c| ForwardEntry::Pipe(c.to_owned()));
        }
        if let Some(cmd) = text.strip_prefix('|') {
            return (!cmd.trim().is_empty()).then(|| ForwardEntry::Pipe(cmd.to_owned()));
        }
        if text.starts_with('/') {
            return Some(ForwardEntry::File(text.to_owned()));
        }
        if text.contains('@') {
            return (text.len() >= 3 && !text.contains(char::is_whitespace))
                .then(|| ForwardEntry::Address(text.to_owned()));
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "_.-+".contains(c);
        (!text.is_empty() && text.chars().all(name_ok)).then(|| ForwardEntry::User(text.to_owned()))
    }
}

/// Why a .forward (or an included file) is not used.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardRefusal {
    Insecure(String),
    TooLarge,
    Syntax(usize),
    TooMany,
    Io(String),
}

impl fmt::Display for ForwardRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardRefusal::Insecure(why) => write!(f, "insecure: {why}"),
            ForwardRefusal::TooLarge => write!(f, "larger than {MAX_SIZE} bytes"),
            ForwardRefusal::Syntax(line) => write!(f, "syntax error on line {line}"),
            ForwardRefusal::TooMany => write!(f, "more than {MAX_ENTRIES} entries"),
            ForwardRefusal::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A user's .forward, as found.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardFile {
    /// No file: deliver as if there were no .forward.
    Missing,
    /// The entries, in order (none: an empty file, which also delivers as if missing).
    Entries(Vec<ForwardEntry>),
    /// A file that exists but is not used, and why (logged by the caller).
    Refused(ForwardRefusal),
}

/// Splits a file's text into entries: `#` starts a comment, `\` escapes the next
/// character, commas inside quotes do not split.
pub fn parse(text: &str) -> Result<Vec<ForwardEntry>, ForwardRefusal> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for item in split_line(line).ok_or(ForwardRefusal::Syntax(n + 1))? {
            if item.trim().is_empty() {
                continue;
            }
            out.push(ForwardEntry::classify(&item).ok_or(ForwardRefusal::Syntax(n + 1))?);
            if out.len() > MAX_ENTRIES {
                return Err(ForwardRefusal::TooMany);
            }
        }
    }
    Ok(out)
}

/// The items of an alias value: split at commas and blanks, as tables list them, unless
/// it holds a command or quotes (`|/bin/sh -c 'a b'`): then at commas only, as OpenSMTPD
/// splits alias lines.
pub fn alias_items(value: &str) -> Vec<String> {
    let plain = || crate::table::split_list(value).into_iter().map(str::to_owned).collect();
    if !value.contains(['|', '"']) {
        return plain();
    }
    match split_line(value) {
        Some(items) => items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()).map(str::to_owned).collect(),
        None => plain(),
    }
}

/// One line's items, escapes removed and comments cut; `None` for an open quote or a
/// trailing backslash.
fn split_line(line: &str) -> Option<Vec<String>> {
    let (mut items, mut cur) = (Vec::new(), String::new());
    let (mut esc, mut dq, mut sq) = (false, false, false);
    for c in line.chars() {
        if esc {
            cur.push(c);
            esc = false;
            continue;
        }
        match c {
            '\\' => esc = true,
            '#' if !dq && !sq => break,
            ',' if !dq && !sq => items.push(std::mem::take(&mut cur)),
            _ => {
                cur.push(c);
                if c == '"' && !sq {
                    dq = !dq;
                }
                if c == '\'' && !dq {
                    sq = !sq;
                }
            }
        }
    }
    if esc || dq || sq {
        return None;
    }
    items.push(cur);
    Some(items)
}

/// Reads `~/.forward` of `user` (as root: the checks stand in for the user's rights).
pub fn read(user: &User) -> ForwardFile {
    let home = &user.home;
    let path = home.join(".forward");
    // Most users have none, and every message asks: one lstat answers that, where the
    // checked open below walks every directory from `/`. A file created meanwhile is the
    // same race as one created just after the walk.
    if matches!(std::fs::symlink_metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        return ForwardFile::Missing;
    }
    match std::fs::metadata(home) {
        Ok(m) if m.mode() & 0o1000 != 0 => {
            return ForwardFile::Refused(ForwardRefusal::Insecure(format!("{} is sticky", home.display())))
        }
        Ok(_) => {}
        Err(_) => return ForwardFile::Missing,
    }
    match read_checked(&path, user) {
        Ok(None) => ForwardFile::Missing,
        Ok(Some(text)) => match parse(&text) {
            Ok(entries) => ForwardFile::Entries(entries),
            Err(r) => ForwardFile::Refused(r),
        },
        Err(r) => ForwardFile::Refused(r),
    }
}

/// The entries of an `:include:` file named in `user`'s .forward (no further includes).
pub fn read_include(path: &Path, user: &User) -> Result<Vec<ForwardEntry>, ForwardRefusal> {
    let text =
        read_checked(path, user)?.ok_or_else(|| ForwardRefusal::Io(format!("{}: no such file", path.display())))?;
    let entries = parse(&text)?;
    if entries.iter().any(|e| matches!(e, ForwardEntry::Include(_))) {
        return Err(ForwardRefusal::Insecure(format!("{}: nested :include:", path.display())));
    }
    Ok(entries)
}

/// The text of `path` once it passes OpenSMTPD's secure_file checks for `user`; `None`
/// when it does not exist.
fn read_checked(path: &Path, user: &User) -> Result<Option<String>, ForwardRefusal> {
    let insecure = |why: String| ForwardRefusal::Insecure(format!("{}: {why}", path.display()));
    let Some(mut file) = open_without_links(path).map_err(insecure)? else { return Ok(None) };
    let meta = file.metadata().map_err(|e| ForwardRefusal::Io(e.to_string()))?;
    if !meta.is_file() {
        return Err(insecure("not a regular file".into()));
    }
    owner_and_mode(&meta, user).map_err(insecure)?;
    if meta.len() >= MAX_SIZE {
        return Err(ForwardRefusal::TooLarge);
    }
    // Every directory from the file up to the home (or to / outside it).
    let real = std::fs::canonicalize(path.parent().unwrap_or(path)).map_err(|e| ForwardRefusal::Io(e.to_string()))?;
    let home = std::fs::canonicalize(&user.home).ok();
    let mut dir = Some(real.as_path());
    while let Some(d) = dir {
        let m = std::fs::metadata(d).map_err(|e| ForwardRefusal::Io(e.to_string()))?;
        owner_and_mode(&m, user).map_err(|why| ForwardRefusal::Insecure(format!("{}: {why}", d.display())))?;
        if home.as_deref() == Some(d) {
            break;
        }
        dir = d.parent();
    }
    let mut text = String::new();
    file.by_ref()
        .take(MAX_SIZE)
        .read_to_string(&mut text)
        .map_err(|e| ForwardRefusal::Io(format!("{}: {e}", path.display())))?;
    Ok(Some(text))
}

/// Opens `path` as root may for a user: its directory as found now (symlinks above
/// resolved), then walked down from `/` without following any symlink, so a directory
/// swapped for a link meanwhile is refused; the file itself must be a regular file before
/// it is opened (never a device or a FIFO: opening one as root can act on it). `None` when
/// it does not exist.
fn open_without_links(path: &Path) -> Result<Option<std::fs::File>, String> {
    use nix::errno::Errno;
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{fstatat, Mode, SFlag};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("not a file path".into());
    };
    let parent = match std::fs::canonicalize(parent) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = open("/", dir_flags, Mode::empty()).map_err(|e| e.to_string())?;
    for part in parent.components().skip(1) {
        dir = match openat(&dir, part.as_os_str(), dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err("a symbolic link in its path".into()),
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
    }
    let st = match fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => {}
        SFlag::S_IFLNK => return Err("a symbolic link".into()),
        _ => return Err("not a regular file".into()),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    match openat(&dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(std::fs::File::from(fd))),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) => Err("a symbolic link".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn owner_and_mode(meta: &std::fs::Metadata, user: &User) -> Result<(), String> {
    if meta.uid() != user.uid && meta.uid() != 0 {
        return Err(format!("owned by uid {}, not {} or root", meta.uid(), user.name));
    }
    if meta.mode() & 0o022 != 0 {
        return Err("group- or world-writable".into());
    }
    Ok(())
}

/// A command or a file to deliver to as a user: an mda-queue recipient, run by the parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardProgram {
    pub kind: ForwardKind,
    /// Who runs it (the .forward's owner, or the alias action's `user`).
    pub user: String,
    /// The address it stands for (`%{dest}`, `RECIPIENT`).
    pub dest: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardKind {
    Pipe(String),
    File(String),
}

const QUEUE_PREFIX: &str = "program:";

/// The hidden flag of mxd that appends stdin to a file as mbox, run as the file's user by
/// the mda runner (`src/bin/mxd.rs`, [`crate::deliver::append_file`]).
pub const APPEND_FLAG: &str = "--append-mbox";

impl ForwardProgram {
    /// Its queue-file form: one word (the queue's recipient field has no spaces).
    pub fn to_queue_rcpt(&self) -> String {
        let (kind, value) = match &self.kind {
            ForwardKind::Pipe(c) => ("pipe", c),
            ForwardKind::File(p) => ("file", p),
        };
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
        format!("{QUEUE_PREFIX}{kind}:{}:{value}:{}", self.user, self.dest)
    }

    /// The program a queue recipient names, if it names one (an mda action's recipient is
    /// an address, which never starts so).
    pub fn from_queue_rcpt(rcpt: &str) -> Option<ForwardProgram> {
        let mut parts = rcpt.strip_prefix(QUEUE_PREFIX)?.splitn(4, ':');
        let (kind, user, value, dest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value).ok()?;
        let value = String::from_utf8(value).ok()?;
        let kind = match kind {
            "pipe" => ForwardKind::Pipe(value),
            "file" => ForwardKind::File(value),
            _ => return None,
        };
        Some(ForwardProgram { kind, user: user.to_owned(), dest: dest.to_owned() })
    }
}

/// How bounces and warnings name a queue recipient: a program by its address.
pub fn shown_rcpt(rcpt: &str) -> String {
    ForwardProgram::from_queue_rcpt(rcpt).map_or_else(|| rcpt.to_owned(), |p| p.dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_as_opensmtpd_reads_them() {
        let text = "# a comment\njoseph@example.org, \\alice\n\"|/usr/bin/procmail -f-\" # keep\n\
                    /home/a/mbox, :include:/etc/list\n|cat>x\n";
        assert_eq!(
            parse(text),
            Ok(vec![
                ForwardEntry::Address("joseph@example.org".into()),
                ForwardEntry::User("alice".into()),
                ForwardEntry::Pipe("/usr/bin/procmail -f-".into()),
                ForwardEntry::File("/home/a/mbox".into()),
                ForwardEntry::Include("/etc/list".into()),
                ForwardEntry::Pipe("cat>x".into()),
            ])
        );
        assert_eq!(parse("\"open quote\n"), Err(ForwardRefusal::Syntax(1)));
        assert_eq!(parse("ok\nerror:550 no\n"), Err(ForwardRefusal::Syntax(2)));
        assert_eq!(parse("a b\n"), Err(ForwardRefusal::Syntax(1)));
        assert_eq!(parse("\n  \n"), Ok(vec![]));
        assert_eq!(parse(&"u,".repeat(MAX_ENTRIES + 1)), Err(ForwardRefusal::TooMany));
    }

    #[test]
    fn read_checks_what_is_there_and_only_that() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let user = User { name: "joseph".into(), uid: me, gid: me, home: home.clone() };
        assert!(matches!(read(&user), ForwardFile::Missing));
        // A sticky home with no .forward: nothing to refuse, no warning per message.
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o1755)).unwrap();
        assert!(matches!(read(&user), ForwardFile::Missing));
        std::fs::write(home.join(".forward"), "alice\n").unwrap();
        assert!(matches!(read(&user), ForwardFile::Refused(ForwardRefusal::Insecure(_))));
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(read(&user), ForwardFile::Entries(e) if e == vec![ForwardEntry::User("alice".into())]));
        // A symlink is there too, and refused: never followed.
        std::fs::remove_file(home.join(".forward")).unwrap();
        std::fs::write(t.path().join("elsewhere"), "bob\n").unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), home.join(".forward")).unwrap();
        assert!(matches!(read(&user), ForwardFile::Refused(ForwardRefusal::Insecure(_))));
    }

    #[test]
    fn programs_survive_the_queue_file() {
        let p = ForwardProgram {
            kind: ForwardKind::Pipe("/bin/sh -c 'a b'\n".into()),
            user: "joseph".into(),
            dest: "joseph@example.org".into(),
        };
        let rcpt = p.to_queue_rcpt();
        assert!(!rcpt.contains(char::is_whitespace), "{rcpt}");
        assert_eq!(ForwardProgram::from_queue_rcpt(&rcpt), Some(p));
        assert_eq!(ForwardProgram::from_queue_rcpt("joseph@example.org"), None);
        assert_eq!(ForwardProgram::from_queue_rcpt("program:exec:a:b:c"), None);
    }
}
