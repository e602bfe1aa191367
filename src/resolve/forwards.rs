//! The ~/.forward and program parts of resolution: a local user's .forward expanded in
//! place of the user (addresses and names resolved again, loops refused), and commands
//! and files (from a .forward, or an alias whose action names a `user`) turned into
//! mda-queue recipients that the parent runs as their user, never as root.

use crate::config::{Action, Method};
use crate::envelope::{Mailbox, Target};
use crate::forward::{self, ForwardEntry, ForwardFile, ForwardKind, ForwardProgram};
use crate::users::User;

use super::{Expander, ResolveError};

/// Marks a user whose .forward is being expanded, among the alias keys (which hold `@`).
fn forward_key(user: &User) -> String {
    format!("~{}", user.name)
}

impl Expander<'_> {
    /// Expands `user`'s ~/.forward in place of the user. `Ok(false)`: there is none to
    /// follow (missing, empty, refused, or the user named in its own), so the caller
    /// delivers to the user's mailbox as the action says.
    pub(super) fn forward(
        &mut self,
        action: &Action,
        user: &User,
        dest: &str,
        depth: usize,
        seen: &mut Vec<String>,
    ) -> Result<bool, ResolveError> {
        let forward_only = matches!(action.method, Method::ForwardOnly | Method::ExpandOnly);
        if !self.read_forwards {
            // The smtp process cannot look; delivery decides before the 250 after DATA.
            self.deferred |= forward_only;
            return Ok(forward_only);
        }
        let key = forward_key(user);
        if let Some(at) = seen.iter().position(|k| *k == key) {
            // `\user` (or an address of the user) in the user's own file: the mailbox.
            if seen[at + 1..].iter().all(|k| !k.starts_with('~')) {
                return Ok(false);
            }
            return Err(ResolveError::Loop(dest.to_owned()));
        }
        let entries = match forward::read(user).and_includes(user) {
            ForwardFile::Missing => return Ok(false),
            ForwardFile::Entries(e) if e.is_empty() => return Ok(false),
            ForwardFile::Entries(e) => e,
            ForwardFile::Refused(why) => {
                log::warn!("forward: {}/.forward of {} refused: {why}", user.home.display(), user.name);
                return Ok(false);
            }
        };
        let domain = Mailbox::domain_of(dest).to_owned();
        let dest = if domain.is_empty() {
            format!("{}@{}", user.name, self.config.hostname)
        } else {
            format!("{}@{domain}", user.name)
        };
        seen.push(key);
        for entry in entries {
            match entry {
                ForwardEntry::Address(text) | ForwardEntry::User(text) => {
                    self.item(action, &text, &domain, depth, seen)?
                }
                ForwardEntry::Pipe(cmd) => self.program(action, ForwardKind::Pipe(cmd), user, &dest)?,
                ForwardEntry::File(path) => self.program(action, ForwardKind::File(path), user, &dest)?,
                // Replaced by their contents in `and_includes`.
                ForwardEntry::Include(_) => {}
            }
        }
        seen.pop();
        Ok(true)
    }

    /// An alias's `|command` or `/file`: only for an action that names the `user` to run
    /// it as (and never root); refused otherwise, as before.
    pub(super) fn alias_program(&mut self, action: &Action, item: &str) -> Result<(), ResolveError> {
        let refused = |why: &str| Err(ResolveError::Unsupported(format!("alias value '{item}' ({why})")));
        let Some(name) = &action.user else { return refused("the action names no user to run it as") };
        let kind = match ForwardEntry::classify(item) {
            Some(ForwardEntry::Pipe(cmd)) => ForwardKind::Pipe(cmd),
            Some(ForwardEntry::File(path)) => ForwardKind::File(path),
            _ => return refused("malformed"),
        };
        let user = self
            .lookup(action, name)
            .or_else(|| self.system.by_name(name))
            .ok_or_else(|| ResolveError::UnknownUser(name.clone()))?;
        if user.uid == 0 {
            return refused("never as root");
        }
        let dest = self.env.rcpt.to_owned();
        self.program(action, kind, &user, &dest)
    }

    fn program(&mut self, action: &Action, kind: ForwardKind, user: &User, dest: &str) -> Result<(), ResolveError> {
        // OpenSMTPD refuses both: root's commands, and anything but addresses on forward-only.
        if user.uid == 0 {
            return Err(ResolveError::Forward(format!("commands and files in {}'s ~/.forward never run", user.name)));
        }
        if matches!(action.method, Method::ForwardOnly) {
            return Err(ResolveError::Forward("a command or file in a .forward on a forward-only action".into()));
        }
        let program = ForwardProgram { kind, user: user.name.clone(), dest: dest.to_owned() };
        let target = Target::Mda { action: action.name.clone(), rcpt: program.to_queue_rcpt() };
        if !self.out.contains(&target) {
            self.out.push(target);
        }
        Ok(())
    }
}

trait Includes {
    fn and_includes(self, user: &User) -> ForwardFile;
}

impl Includes for ForwardFile {
    /// Each `:include:` replaced by its file's entries; a refused file refuses the .forward.
    fn and_includes(self, user: &User) -> ForwardFile {
        let ForwardFile::Entries(entries) = self else { return self };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                ForwardEntry::Include(path) => match forward::read_include(&path, user) {
                    Ok(more) => out.extend(more),
                    Err(why) => return ForwardFile::Refused(why),
                },
                other => out.push(other),
            }
        }
        ForwardFile::Entries(out)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::envelope::{Envelope, Origin, Owner};
    use crate::rules::{self, Decision};
    use crate::users::SystemUsers;

    /// The users' ids: the test's own, or nobody's under root (commands never run as root;
    /// files root owns pass the checks as the user's would).
    fn ids() -> (u32, u32) {
        if nix::unistd::getuid().is_root() {
            (65534, 65534)
        } else {
            (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
        }
    }

    /// joseph, alice and bob with homes in `dir`, and the actions `body` adds.
    fn setup(body: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = ids();
        let d = dir.path().display();
        for u in ["joseph", "alice", "bob"] {
            std::fs::create_dir(dir.path().join(u)).unwrap();
        }
        let text = format!(
            "hostname \"mx.test\"\ntable users {{ joseph = \"{uid}:{gid}:{d}/joseph\", alice = \"{uid}:{gid}:{d}/alice\", \
             bob = \"{uid}:{gid}:{d}/bob\" }}\n{body}"
        );
        let path = dir.path().join("smtpd.conf");
        std::fs::write(&path, text).unwrap();
        let c = crate::config::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        (dir, c)
    }

    fn forward(dir: &Path, user: &str, text: &str) {
        let path = dir.join(user).join(".forward");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn resolve(c: &Config, rcpt: &str, delivering: bool) -> Result<Vec<Target>, ResolveError> {
        let origin = Origin::Tcp("127.0.0.1".parse().unwrap());
        let env = Envelope {
            origin: &origin,
            rdns: None,
            tag: None,
            tls: false,
            auth: None,
            mail_from: "s@example.org",
            rcpt,
            helo: "c.example.org",
        };
        let Decision::Deliver(a) = rules::decide(c, &env) else { panic!("{rcpt}: no rule") };
        if delivering {
            super::super::resolve_delivering(c, a, &env, &SystemUsers)
        } else {
            super::super::resolve(c, a, &env, &SystemUsers)
        }
    }

    fn maildir(dir: &Path, user: &str) -> Target {
        let (uid, gid) = ids();
        Target::Maildir {
            dir: dir.join(user).join("Maildir"),
            owner: Some(Owner { uid, gid }),
            delivered_to: format!("{user}@test"),
        }
    }

    fn program(action: &str, kind: ForwardKind, user: &str) -> Target {
        let p = ForwardProgram { kind, user: user.into(), dest: format!("{user}@test") };
        Target::Mda { action: action.into(), rcpt: p.to_queue_rcpt() }
    }

    const LOCAL: &str = "action local maildir userbase <users>\naction out relay host smtp://192.0.2.1\n\
                         match from any for domain \"test\" action local\nmatch from any for any action out\n";

    #[test]
    fn a_forward_is_read_only_at_delivery() {
        let (dir, c) = setup(LOCAL);
        let d = dir.path();
        forward(d, "joseph", "alice, far@example.org\n\"|/usr/bin/procmail -f-\"\n/tmp/joseph.mbox\n");
        assert_eq!(resolve(&c, "joseph@test", false), Ok(vec![maildir(d, "joseph")]), "at RCPT");
        assert_eq!(
            resolve(&c, "joseph@test", true),
            Ok(vec![
                maildir(d, "alice"),
                Target::Relay { action: "out".into(), rcpt: "far@example.org".into(), orig_rcpt: "joseph@test".into() },
                program("local", ForwardKind::Pipe("/usr/bin/procmail -f-".into()), "joseph"),
                program("local", ForwardKind::File("/tmp/joseph.mbox".into()), "joseph"),
            ])
        );
    }

    #[test]
    fn self_references_loops_and_unsafe_files() {
        let (dir, c) = setup(LOCAL);
        let d = dir.path();
        // `\joseph` keeps a copy in joseph's own mailbox.
        forward(d, "joseph", "\\joseph, bob\n");
        forward(d, "bob", "joseph@test\n");
        assert!(matches!(resolve(&c, "joseph@test", true), Err(ResolveError::Loop(_))));
        forward(d, "bob", "bob@test, alice\n");
        assert_eq!(
            resolve(&c, "joseph@test", true),
            Ok(vec![maildir(d, "joseph"), maildir(d, "bob"), maildir(d, "alice")])
        );
        // Group-writable: refused, and the mail goes to the mailbox as if there were none.
        let path = d.join("joseph/.forward");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "joseph")]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(d.join("joseph"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "joseph")]), "writable home");
        std::fs::set_permissions(d.join("joseph"), std::fs::Permissions::from_mode(0o755)).unwrap();
        // An empty file delivers as if there were none; :include: reads another file.
        forward(d, "joseph", "# nothing\n");
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "joseph")]));
        std::fs::write(d.join("joseph/list"), "alice\nbob\n").unwrap();
        forward(d, "joseph", &format!(":include:{}/joseph/list\n", d.display()));
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "alice"), maildir(d, "bob")]));
        std::fs::set_permissions(d.join("joseph/list"), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "joseph")]), "unsafe include");
        // Never a FIFO or device (opening one as root could block or act on it), never a
        // symlink.
        nix::unistd::mkfifo(&d.join("joseph/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        forward(d, "joseph", &format!(":include:{}/joseph/fifo\n", d.display()));
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "joseph")]), "a FIFO");
        std::fs::write(d.join("joseph/list"), "alice\n").unwrap();
        std::fs::set_permissions(d.join("joseph/list"), std::fs::Permissions::from_mode(0o644)).unwrap();
        forward(d, "joseph", &format!(":include:{}/joseph/list\n", d.display()));
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "alice")]));
        std::fs::remove_file(d.join("joseph/.forward")).unwrap();
        std::os::unix::fs::symlink(d.join("joseph/list"), d.join("joseph/.forward")).unwrap();
        assert_eq!(resolve(&c, "joseph@test", true), Ok(vec![maildir(d, "joseph")]), "a symlinked .forward");
    }

    #[test]
    fn forward_only_and_expand_only() {
        let (dir, c) = setup(
            "action fo forward-only userbase <users>\naction eo expand-only userbase <users>\n\
             match from any for domain \"fo.test\" action fo\nmatch from any for domain \"eo.test\" action eo\n\
             match from any for domain \"test\" action local\naction local maildir userbase <users>\n",
        );
        let d = dir.path();
        // At RCPT a known user is taken (the smtp process cannot look into homes)...
        assert_eq!(resolve(&c, "joseph@fo.test", false), Ok(vec![]));
        assert!(matches!(resolve(&c, "nobody@fo.test", false), Err(ResolveError::UnknownUser(_))));
        // ...and delivery refuses it without a .forward.
        assert!(matches!(resolve(&c, "joseph@fo.test", true), Err(ResolveError::Forward(_))));
        assert!(matches!(resolve(&c, "joseph@eo.test", true), Err(ResolveError::Forward(_))));
        forward(d, "joseph", "alice@test, |/bin/true\n");
        let alice = maildir(d, "alice");
        assert_eq!(
            resolve(&c, "joseph@eo.test", true),
            Ok(vec![
                alice,
                Target::Mda {
                    action: "eo".into(),
                    rcpt: ForwardProgram {
                        kind: ForwardKind::Pipe("/bin/true".into()),
                        user: "joseph".into(),
                        dest: "joseph@eo.test".into()
                    }
                    .to_queue_rcpt()
                }
            ])
        );
        // forward-only takes addresses only, as OpenSMTPD.
        assert!(matches!(resolve(&c, "joseph@fo.test", true), Err(ResolveError::Forward(_))));
        forward(d, "joseph", "alice@test\n");
        assert_eq!(resolve(&c, "joseph@fo.test", true), Ok(vec![maildir(d, "alice")]));
    }

    #[test]
    fn alias_programs_need_the_actions_user() {
        let (_dir, c) = setup(
            "table aliases { prog = \"|/bin/cat\", file = \"/var/tmp/f\" }\n\
             action a maildir alias <aliases> userbase <users>\naction au maildir alias <aliases> user bob userbase <users>\n\
             match from any for domain \"a.test\" action a\nmatch from any for domain \"au.test\" action au\n",
        );
        assert!(matches!(resolve(&c, "prog@a.test", false), Err(ResolveError::Unsupported(_))));
        assert!(matches!(resolve(&c, "file@a.test", true), Err(ResolveError::Unsupported(_))));
        let (_dir, sys) = setup(
            "table aliases { prog = \"|/bin/sh -c 'id -u > /tmp/x'\" }\n\
             action s maildir alias <aliases> user nobody\nmatch from any for any action s\n",
        );
        let r = resolve(&sys, "prog@s.test", false);
        assert!(matches!(&r, Ok(v) if v.len() == 1), "{r:?}");
        let p = |kind| ForwardProgram { kind, user: "bob".into(), dest: "prog@au.test".into() }.to_queue_rcpt();
        assert_eq!(
            resolve(&c, "prog@au.test", false),
            Ok(vec![Target::Mda { action: "au".into(), rcpt: p(ForwardKind::Pipe("/bin/cat".into())) }])
        );
    }
}
