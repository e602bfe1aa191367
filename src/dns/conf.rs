//! The system's resolver configuration: resolv.conf(5) (`nameserver`, `options timeout:N
//! attempts:N`) and hosts(5). Unknown lines are ignored, as the C resolver ignores them.
//! `nameserver [ADDR]:PORT` is OpenBSD's spelling of a nameserver on another port; mxd
//! accepts it everywhere (the tests use it to reach a DNS server on an unprivileged port).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// resolv.conf's defaults (RES_TIMEOUT, RES_DFLRETRY) and its caps (RES_MAXRETRANS, RES_MAXRETRY).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: u32 = 2;
const MAX_TIMEOUT_SECS: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;
/// At most three nameservers are used (MAXNS), as the C resolver does.
const MAX_NAMESERVERS: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    /// Per query and nameserver.
    pub timeout: Duration,
    /// Rounds over all nameservers.
    pub attempts: u32,
}

impl ResolvConf {
    /// Parses resolv.conf text; with no `nameserver` line the local host is asked, as the
    /// C resolver does.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf { nameservers: Vec::new(), timeout: DEFAULT_TIMEOUT, attempts: DEFAULT_ATTEMPTS };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_ascii_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(addr) = words.next().and_then(nameserver) {
                        if conf.nameservers.len() < MAX_NAMESERVERS {
                            conf.nameservers.push(addr);
                        }
                    }
                }
                Some("options") => words.for_each(|o| conf.option(o)),
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        conf
    }

    fn option(&mut self, opt: &str) {
        if let Some(n) = opt.strip_prefix("timeout:").and_then(|n| n.parse::<u64>().ok()) {
            self.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT_SECS));
        } else if let Some(n) = opt.strip_prefix("attempts:").and_then(|n| n.parse::<u32>().ok()) {
            self.attempts = n.clamp(1, MAX_ATTEMPTS);
        }
    }

    /// `MXD_RESOLV_CONF` when set, else /etc/resolv.conf; a missing file means the defaults.
    pub fn load() -> ResolvConf {
        let path = std::env::var_os("MXD_RESOLV_CONF").unwrap_or_else(|| "/etc/resolv.conf".into());
        ResolvConf::parse(&std::fs::read_to_string(Path::new(&path)).unwrap_or_default())
    }
}

/// `ADDR`, or `[ADDR]:PORT` (OpenBSD). A scope (`fe80::1%eth0`) is not supported: skipped.
fn nameserver(word: &str) -> Option<SocketAddr> {
    if let Some(rest) = word.strip_prefix('[') {
        let (addr, port) = rest.split_once("]:")?;
        return Some(SocketAddr::new(addr.parse().ok()?, port.parse().ok()?));
    }
    Some(SocketAddr::new(word.parse().ok()?, 53))
}

/// /etc/hosts: names (lowercase, no trailing dot) to addresses, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    by_name: HashMap<String, Vec<IpAddr>>,
    by_addr: HashMap<IpAddr, String>,
}

impl Hosts {
    pub fn parse(text: &str) -> Hosts {
        let mut hosts = Hosts::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_ascii_whitespace();
            let Some(addr) = words.next().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
            for (i, name) in words.enumerate() {
                let name = normalize(name);
                if i == 0 {
                    hosts.by_addr.entry(addr).or_insert_with(|| name.clone());
                }
                let addrs = hosts.by_name.entry(name).or_default();
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        hosts
    }

    pub fn load() -> Hosts {
        Hosts::parse(&std::fs::read_to_string("/etc/hosts").unwrap_or_default())
    }

    pub fn addrs(&self, name: &str) -> Option<&[IpAddr]> {
        self.by_name.get(&normalize(name)).map(Vec::as_slice)
    }

    pub fn name(&self, addr: IpAddr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }
}

/// Lowercase, without the root's trailing dot: how names are compared.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let c = ResolvConf::parse(
            "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver [127.0.0.9]:5353\n\
             nameserver ::1 ; trailing\nnameserver 192.0.2.4\nnameserver bogus\noptions ndots:2 timeout:1 attempts:9\n",
        );
        assert_eq!(
            c.nameservers,
            vec!["192.0.2.1:53".parse().unwrap(), "127.0.0.9:5353".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.attempts, MAX_ATTEMPTS);
        let empty = ResolvConf::parse("");
        assert_eq!(empty.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!((empty.timeout, empty.attempts), (DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS));
    }

    #[test]
    fn hosts_file() {
        let h =
            Hosts::parse("127.0.0.1 localhost\n::1 localhost ip6-localhost # c\n192.0.2.7 Mail.Test. mail\nbad line\n");
        let want: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(h.addrs("LOCALHOST."), Some(want.as_slice()));
        assert_eq!(h.addrs("mail"), Some(&["192.0.2.7".parse().unwrap()][..]));
        assert_eq!(h.name("192.0.2.7".parse().unwrap()), Some("mail.test"));
        assert_eq!(h.addrs("nowhere"), None);
    }
}
