//! What mxctl and sendmail need from smtpd.conf: the spool directory (where the sockets and
//! the offline directory live) and the mail name, through the daemon's own lexer and parser
//! (`config::spool_and_hostname`: macros and includes as mxd reads them, nothing loaded).
//! A statement with an error is skipped, so sendmail keeps working even when the file has
//! an error the daemon would refuse (the message then waits in the offline directory).
//!
//! Never panics; an unreadable file gives the defaults.

use std::path::{Path, PathBuf};

pub use crate::spool::DEFAULT_SPOOL;
/// The configuration file when neither -f/-C nor MXD_CONF names one.
pub const DEFAULT_CONF: &str = "/etc/mxd/smtpd.conf";

/// The two settings sendmail reads from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalConf {
    /// `spool "DIR"`, else [`DEFAULT_SPOOL`].
    pub spool: PathBuf,
    /// `hostname "NAME"`, if the file has one.
    pub hostname: Option<String>,
}

/// The configuration path: the command line's, else `$MXD_CONF`, else [`DEFAULT_CONF`].
pub fn conf_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("MXD_CONF").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from(DEFAULT_CONF))
}

/// Reads the file at `path`; a missing or unreadable file gives the defaults.
pub fn load_local_conf(path: &Path) -> LocalConf {
    let (spool, hostname) = crate::config::spool_and_hostname(path);
    LocalConf { spool: spool.unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL)), hostname }
}

/// The spool directory named by the configuration at `path`.
pub fn spool_from_conf(path: &Path) -> PathBuf {
    load_local_conf(path).spool
}

/// The mail name: the configuration's `hostname`, else the first line of
/// /etc/mail/mailname, else the system host name, else "localhost".
pub fn mail_name(conf: &LocalConf) -> String {
    conf.hostname.clone().unwrap_or_else(crate::config::default_hostname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_name_prefers_the_configuration() {
        let conf = LocalConf { spool: PathBuf::from("/s"), hostname: Some("mx0.lan".into()) };
        assert_eq!(mail_name(&conf), "mx0.lan");
        let none = LocalConf { hostname: None, ..conf };
        assert!(!mail_name(&none).is_empty());
    }
}
