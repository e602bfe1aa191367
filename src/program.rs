//! Where the program of a `proc-exec` command is found: a path as is, a bare name in
//! OpenSMTPD's libexec directories. Shared by the configuration check (`mxd -n`) and the
//! filter runner, so neither depends on the other for it.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where OpenSMTPD looks for a `proc-exec` command that does not start with `/`: its
/// libexec directory, which filter packages install into. Debian's first, then OpenBSD
/// packages', then OpenSMTPD-portable's default prefix.
pub const LIBEXEC_DIRS: [&str; 3] = ["/usr/libexec/opensmtpd", "/usr/local/libexec/smtpd", "/usr/libexec/smtpd"];

#[derive(Debug)]
pub enum ProgramError {
    /// The command's program is in none of the places looked at.
    NotFound {
        program: String,
        looked: Vec<PathBuf>,
    },
    /// It exists but is not an executable file.
    NotExecutable(PathBuf),
    EmptyCommand,
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgramError::NotFound { program, looked } => {
                let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                write!(f, "{program}: not found (looked at {})", looked.join(", "))
            }
            ProgramError::NotExecutable(p) => write!(f, "{}: not an executable file", p.display()),
            ProgramError::EmptyCommand => f.write_str("empty command"),
        }
    }
}

impl std::error::Error for ProgramError {}

/// Finds the program of `command` (its first word): a path as is, a bare name in
/// [`LIBEXEC_DIRS`]; it must be an executable file. What `mxd -n` checks.
pub fn find_program(command: &str) -> Result<PathBuf, ProgramError> {
    find_program_in(command, &LIBEXEC_DIRS.map(Path::new))
}

pub fn find_program_in(command: &str, dirs: &[&Path]) -> Result<PathBuf, ProgramError> {
    let program = command.split_whitespace().next().ok_or(ProgramError::EmptyCommand)?;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        dirs.iter().map(|d| d.join(program)).collect()
    };
    for c in &candidates {
        if let Ok(meta) = std::fs::metadata(c) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(c.clone());
            }
            return Err(ProgramError::NotExecutable(c.clone()));
        }
    }
    Err(ProgramError::NotFound { program: program.to_string(), looked: candidates })
}

/// [`find_program`] for a command that runs chrooted in `root`: the program (and the
/// `/bin/sh` that runs the command line) are looked for under `root`; the path returned is
/// the program's as the chrooted process sees it.
pub fn find_program_chrooted(command: &str, root: &Path) -> Result<PathBuf, ProgramError> {
    find_program_chrooted_in(command, &LIBEXEC_DIRS.map(Path::new), root)
}

pub fn find_program_chrooted_in(command: &str, dirs: &[&Path], root: &Path) -> Result<PathBuf, ProgramError> {
    let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let program = command.split_whitespace().next().ok_or(ProgramError::EmptyCommand)?;
    let inside: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        dirs.iter().map(|d| d.join(program)).collect()
    };
    let found = inside.iter().find_map(|c| std::fs::metadata(under(c)).ok().map(|m| (c, m)));
    let Some((c, meta)) = found else {
        return Err(ProgramError::NotFound {
            program: program.to_string(),
            looked: inside.iter().map(|c| under(c)).collect(),
        });
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ProgramError::NotExecutable(under(c)));
    }
    let sh = under(Path::new("/bin/sh"));
    if !std::fs::metadata(&sh).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
        return Err(ProgramError::NotFound { program: "/bin/sh".into(), looked: vec![sh] });
    }
    Ok(c.clone())
}
