//! Issue 16: `filter NAME proc-exec "CMD" chroot DIR`: the filter's `/bin/sh -c CMD` runs
//! inside DIR (as OpenSMTPD runs it), still as its unprivileged user. The chroot holds a
//! copy of /bin/sh and the libraries `ldd` names, and a filter of shell builtins that only
//! proceeds where /inside-chroot exists.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{basic_conf, can_run, Mxd, Need};

/// A directory holding /bin/sh, its libraries, the test filter and the marker file.
fn chroot_dir(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let copy = |from: &Path| {
        let to = root.join(from.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    };
    copy(Path::new("/bin/sh"));
    let ldd = Command::new("ldd").arg("/bin/sh").output().expect("ldd");
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            copy(Path::new(word));
        }
    }
    let filter = root.join("filter.sh");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filters/chrooted.sh"), &filter).unwrap();
    std::fs::write(root.join("inside-chroot"), "").unwrap();
    for d in [dir, root.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

#[test]
fn a_chrooted_filter_runs_inside_its_directory_as_its_user() {
    let needs = [Need::Root, Need::Program("ldd", "libc-bin")];
    if !can_run("a_chrooted_filter_runs_inside_its_directory_as_its_user", &needs) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = chroot_dir(dir.path());
    let top = format!("filter \"c\" proc-exec \"/filter.sh\" chroot \"{}\"\n", root.display());
    let m = Mxd::start_with(
        move |d: &Path, p: u16| {
            let listen = format!("listen on 127.0.0.1 port {p}\n");
            let conf = basic_conf(d, p).replace(&listen, &format!("listen on 127.0.0.1 port {p} filter \"c\"\n"));
            format!("{top}{conf}")
        },
        &[],
    );
    // Proceeding at connect is the filter saying it sees /inside-chroot.
    let mut c = m.connect();
    assert!(c.cmd("EHLO client.test").starts_with("250"), "{}", m.log());
    assert!(m.logged("filter c started pid="));
    let log = m.log();
    let pid = log.split("filter c started pid=").nth(1).and_then(|t| t.split(' ').next()).unwrap();
    let proc_dir = PathBuf::from("/proc").join(pid);
    assert_eq!(std::fs::read_link(proc_dir.join("root")).unwrap(), root);
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u != "0"), "the filter runs as root: {uid}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(!groups.split_whitespace().skip(1).any(|g| g == "0"), "root's groups kept: {groups}");

    // `mxd -n` looks for the program inside the chroot.
    let conf = dir.path().join("check.conf");
    std::fs::write(&conf, format!("filter \"c\" proc-exec \"/nowhere.sh\" chroot \"{}\"\n", root.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mxd")).arg("-n").arg("-f").arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "check.conf:1: filter 'c': /nowhere.sh: not found (looked at {}/nowhere.sh)",
            root.display()
        )),
        "{err}"
    );
}
