//! This host among a domain's MX hosts (RFC 5321 §5.1): when an MX is this host, mail
//! must go only to MX hosts of a lower preference value (more preferred) than it; sending
//! it to itself or to its own backups would loop. "This host" is the hostname (and the
//! listeners' `hostname`s) and the addresses mxd listens on, a wildcard listener standing
//! for every address of every interface.

use std::net::IpAddr;

use super::mx::{Host, Route};
use crate::config::{Config, ListenKind};

/// The names and addresses that mean this host.
#[derive(Debug, Default)]
pub(super) struct Local {
    names: Vec<String>,
    addrs: Vec<IpAddr>,
}

impl Local {
    pub(super) fn of(config: &Config) -> Local {
        let mut names = vec![norm(&config.hostname)];
        names.extend(config.listeners.iter().filter_map(|l| l.hostname.as_deref()).map(norm));
        let mut addrs = Vec::new();
        let mut wildcard = false;
        for l in &config.listeners {
            if let ListenKind::Inet { addrs: a } = &l.kind {
                wildcard |= a.iter().any(|s| s.ip().is_unspecified());
                addrs.extend(a.iter().map(|s| s.ip()).filter(|ip| !ip.is_unspecified()));
            }
        }
        if wildcard {
            addrs.extend(interface_addrs());
        }
        addrs.sort();
        addrs.dedup();
        Local { names, addrs }
    }

    #[cfg(test)]
    fn new(names: &[&str], addrs: &[&str]) -> Local {
        Local {
            names: names.iter().map(|n| norm(n)).collect(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn is(&self, host: &Host) -> bool {
        self.names.contains(&norm(&host.name)) || host.addrs.iter().any(|a| self.addrs.contains(a))
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Drops this host and every MX of its preference or more from `route`. When nothing is
/// left, this host is the best MX and has nowhere to send the mail: a deferral, as
/// OpenSMTPD's mta says (its `No MX found for destination`), so a DNS fix still delivers
/// it before the queue's ttl bounces it.
pub(super) fn skip_self(route: Route, local: &Local, domain: &str) -> Route {
    let Route::Hosts(mut hosts) = route else { return route };
    let Some(me) = hosts.iter().find(|h| local.is(h)) else { return Route::Hosts(hosts) };
    let (name, cut) = (me.name.clone(), me.preference);
    hosts.retain(|h| h.preference < cut);
    if hosts.is_empty() {
        log::warn!("relay domain={domain}: MX {name} (preference {cut}) is this host and none is more preferred");
        return Route::Defer(format!(
            "No MX found for destination: {domain}: this host ({name}, preference {cut}) is its best MX"
        ));
    }
    log::info!("relay domain={domain}: MX {name} is this host: only MX hosts of preference below {cut} are tried");
    Route::Hosts(hosts)
}

/// Every address of this host's interfaces (for a listener on 0.0.0.0 or ::).
fn interface_addrs() -> Vec<IpAddr> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    list.filter_map(|ifa| {
        let a = ifa.address?;
        a.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())).or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, preference: u16, addr: &str) -> Host {
        Host { name: name.into(), preference, addrs: vec![addr.parse().unwrap()] }
    }

    fn names(r: &Route) -> Vec<&str> {
        match r {
            Route::Hosts(h) => h.iter().map(|h| h.name.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn this_host_and_the_less_preferred_are_dropped() {
        let hosts = vec![
            host("a", 10, "192.0.2.1"),
            host("b", 20, "192.0.2.2"),
            host("me", 20, "192.0.2.9"),
            host("c", 30, "192.0.2.3"),
        ];
        let by_addr = Local::new(&["mx.test"], &["192.0.2.9"]);
        assert_eq!(names(&skip_self(Route::Hosts(hosts.clone()), &by_addr, "d.test")), ["a"]);
        let by_name = Local::new(&["ME."], &[]);
        assert_eq!(names(&skip_self(Route::Hosts(hosts.clone()), &by_name, "d.test")), ["a"]);
        let elsewhere = Local::new(&["mx.test"], &["192.0.2.99"]);
        assert_eq!(names(&skip_self(Route::Hosts(hosts), &elsewhere, "d.test")), ["a", "b", "me", "c"]);
    }

    #[test]
    fn the_best_mx_defers() {
        let hosts = vec![host("me", 10, "192.0.2.9"), host("b", 20, "192.0.2.2")];
        let r = skip_self(Route::Hosts(hosts), &Local::new(&[], &["192.0.2.9"]), "d.test");
        assert!(matches!(&r, Route::Defer(why) if why.starts_with("No MX found for destination")), "{r:?}");
        let bounce = Route::Bounce("5.1.10", "x".into());
        assert_eq!(skip_self(bounce.clone(), &Local::new(&[], &["192.0.2.9"]), "d.test"), bounce);
    }
}
