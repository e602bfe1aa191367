//! What `listen on X` means, as OpenSMTPD resolves it: an address; an interface (every
//! address on it, IPv6 link-local excepted; OpenBSD's `lo0` is `lo` on Linux); an interface
//! group (`all`: every interface; `egress`: the interfaces of the default routes; on OpenBSD
//! any group ifconfig(8) knows); else a host name resolved now, at load (`localhost`), of
//! which the addresses this host has are kept. A name without a dot is looked up in
//! /etc/hosts only, so a mistyped interface name never waits on DNS.

use std::net::{IpAddr, ToSocketAddrs};

/// The addresses `on` stands for, or `None` when it names nothing on this host.
pub(super) fn resolve(on: &str) -> Option<Vec<IpAddr>> {
    if let Ok(ip) = on.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    let ifaces = interfaces();
    let addrs_of = |names: &[String]| -> Vec<IpAddr> {
        ifaces.iter().filter(|(n, _)| names.contains(n)).filter_map(|(_, ip)| *ip).collect()
    };
    let has = |name: &str| ifaces.iter().any(|(n, _)| n == name);
    if has(on) {
        return Some(addrs_of(&[on.to_owned()]));
    }
    if cfg!(target_os = "linux") && on == "lo0" && has("lo") {
        return Some(addrs_of(&["lo".to_owned()]));
    }
    let group = match on {
        "all" => ifaces.iter().map(|(n, _)| n.clone()).collect(),
        "egress" => egress(),
        _ => group_members(on),
    };
    if !group.is_empty() {
        return Some(addrs_of(&group));
    }
    let local: Vec<IpAddr> = ifaces.iter().filter_map(|(_, ip)| *ip).collect();
    let found: Vec<IpAddr> =
        if on.contains('.') { (on, 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect() } else { etc_hosts(on) };
    let mut ips: Vec<IpAddr> = found.into_iter().filter(|ip| local.contains(ip)).collect();
    ips.sort();
    ips.dedup();
    (!ips.is_empty()).then_some(ips)
}

/// The addresses /etc/hosts gives `name` (any of a line's names, case-insensitively).
fn etc_hosts(name: &str) -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// (interface name, address) for every interface; `None` for an entry without an address
/// mail can use (link-local IPv6, non-IP families), so an interface without addresses still
/// shows up by name.
fn interfaces() -> Vec<(String, Option<IpAddr>)> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.map(|ifa| {
        let ip = ifa.address.and_then(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                // Link-local addresses need a scope to bind; mail never travels on them.
                a.as_sockaddr_in6().map(|v6| v6.ip()).filter(|ip| ip.segments()[0] & 0xffc0 != 0xfe80).map(IpAddr::V6)
            }
        });
        (ifa.interface_name, ip)
    })
    .collect()
}

/// The interfaces of the default routes (IPv4 and IPv6).
#[cfg(target_os = "linux")]
fn egress() -> Vec<String> {
    let mut out = Vec::new();
    // /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask …, hex.
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                out.push(f[0].to_owned());
            }
        }
    }
    // /proc/net/ipv6_route: dest prefixlen src srcprefixlen nexthop metric ref use flags iface.
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let default = f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            if default && f[9] != "lo" {
                out.push(f[9].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(not(target_os = "linux"))]
fn egress() -> Vec<String> {
    group_members("egress")
}

/// Linux has no interface groups.
#[cfg(target_os = "linux")]
fn group_members(_group: &str) -> Vec<String> {
    Vec::new()
}

/// OpenBSD: `ifconfig GROUP` lists the group's interfaces, one `name: flags=…` line each.
#[cfg(not(target_os = "linux"))]
fn group_members(group: &str) -> Vec<String> {
    if group.is_empty() || !group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Vec::new();
    }
    let Ok(out) = std::process::Command::new("/sbin/ifconfig").arg(group).output() else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split_once(": ").map(|(name, _)| name.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_interfaces_groups_and_names() {
        assert_eq!(resolve("192.0.2.7"), Some(vec!["192.0.2.7".parse().unwrap()]));
        assert_eq!(resolve("[::1]"), Some(vec!["::1".parse().unwrap()]));
        let lo = resolve("lo").expect("lo exists");
        assert!(lo.contains(&"127.0.0.1".parse().unwrap()));
        assert_eq!(resolve("lo0"), Some(lo.clone()), "lo0 is lo on Linux");
        assert!(resolve("all").expect("all").contains(&"127.0.0.1".parse().unwrap()));
        let localhost = resolve("localhost").expect("localhost resolves");
        assert!(localhost.contains(&"127.0.0.1".parse().unwrap()), "{localhost:?}");
        assert!(localhost.iter().all(|ip| ip.is_loopback()));
        assert_eq!(resolve("no-such-interface-or-host.invalid"), None);
    }
}
