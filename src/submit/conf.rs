//! What mxctl and sendmail need from smtpd.conf: the spool directory (where the sockets and
//! the offline directory live) and the mail name. A deliberately small line scan, not the
//! configuration parser: it looks only at top-level `spool "DIR"` and `hostname "NAME"`
//! lines, so sendmail keeps working even when the file has an error the daemon would
//! refuse (the message then waits in the offline directory). mxd's own parser (src/config)
//! defines these keywords; this scan must agree with it on them and nothing else.
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

/// Scans the file at `path`; a missing or unreadable file gives the defaults.
pub fn load_local_conf(path: &Path) -> LocalConf {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    scan(&text)
}

/// The spool directory named by the configuration at `path`.
pub fn spool_from_conf(path: &Path) -> PathBuf {
    load_local_conf(path).spool
}

fn scan(text: &str) -> LocalConf {
    let mut conf = LocalConf { spool: PathBuf::from(DEFAULT_SPOOL), hostname: None };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let value = unquote(value);
        match key {
            "spool" if !value.is_empty() => conf.spool = PathBuf::from(value),
            "hostname" if !value.is_empty() => conf.hostname = Some(value.to_string()),
            _ => {}
        }
    }
    conf
}

fn unquote(word: &str) -> &str {
    word.strip_prefix('"').and_then(|w| w.strip_suffix('"')).unwrap_or(word)
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
    fn scans_top_level_keywords_only() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("", DEFAULT_SPOOL, None),
            ("spool \"/tmp/s\"\nhostname \"mx.lan\"\n", "/tmp/s", Some("mx.lan")),
            ("  spool /var/q  # comment\n", "/var/q", None),
            ("listen on lo0 hostname other.lan\n# spool \"/no\"\n", DEFAULT_SPOOL, None),
            ("spool\nhostname \"\"\n", DEFAULT_SPOOL, None),
        ];
        for (text, spool, host) in cases {
            let conf = scan(text);
            assert_eq!(conf.spool, PathBuf::from(spool), "text {text:?}");
            assert_eq!(conf.hostname.as_deref(), *host, "text {text:?}");
        }
    }

    #[test]
    fn mail_name_prefers_the_configuration() {
        let conf = LocalConf { spool: PathBuf::from("/s"), hostname: Some("mx0.lan".into()) };
        assert_eq!(mail_name(&conf), "mx0.lan");
        let none = LocalConf { hostname: None, ..conf };
        assert!(!mail_name(&none).is_empty());
    }
}
