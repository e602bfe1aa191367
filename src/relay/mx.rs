//! Where mail for a domain goes (RFC 5321 §5.1): its MX hosts by preference, equal
//! preferences in random order; without MX, the domain itself (implicit MX); a null MX
//! (RFC 7505) or a domain that does not exist bounces at once; a DNS failure defers.

use std::net::IpAddr;

use crate::dns::{transport::random_u16, Lookup, Mx, Resolver};

/// One host to try, with its addresses in the order to try them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The MX name (or the domain, for an implicit MX): what TLS checks and logs name.
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

/// What the DNS says about a recipient domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Try these in order, the next on a connection failure or a 4xx greeting.
    Hosts(Vec<Host>),
    /// Fails for good: (enhanced status, why).
    Bounce(&'static str, String),
    /// Try again later: why.
    Defer(String),
}

/// MX hosts named by address literals are skipped; more than this many are not tried.
const MAX_HOSTS: usize = 10;

pub fn route(resolver: &Resolver, domain: &str) -> Route {
    if let Some(addr) = address_literal(domain) {
        return Route::Hosts(vec![Host { name: domain.to_owned(), preference: 0, addrs: vec![addr] }]);
    }
    match resolver.mx(domain) {
        Lookup::Ok(mxs) => hosts(resolver, domain, mxs),
        Lookup::NoData => implicit(resolver, domain),
        Lookup::NxDomain => Route::Bounce("5.1.10", format!("domain {domain} does not exist (NXDOMAIN)")),
        Lookup::TempFail(e) => Route::Defer(format!("MX lookup for {domain}: {e}")),
    }
}

/// RFC 5321 §5.1: no MX, so the domain's own address records, as an MX of preference 0.
fn implicit(resolver: &Resolver, domain: &str) -> Route {
    match resolver.addrs(domain) {
        Lookup::Ok(addrs) => {
            log::debug!("relay domain={domain}: no MX, using its addresses (implicit MX)");
            Route::Hosts(vec![Host { name: domain.to_owned(), preference: 0, addrs }])
        }
        Lookup::NxDomain => Route::Bounce("5.1.10", format!("domain {domain} does not exist (NXDOMAIN)")),
        Lookup::NoData => Route::Bounce("5.1.10", format!("domain {domain} has no MX and no address")),
        Lookup::TempFail(e) => Route::Defer(format!("address lookup for {domain}: {e}")),
    }
}

fn hosts(resolver: &Resolver, domain: &str, mut mxs: Vec<Mx>) -> Route {
    // RFC 7505 §3: a null MX means the domain takes no mail.
    if mxs.iter().any(|m| m.exchange.is_empty()) {
        return Route::Bounce("5.1.10", format!("domain {domain} accepts no mail (null MX)"));
    }
    order(&mut mxs);
    let mut out = Vec::new();
    let mut temp = None;
    for mx in mxs.into_iter().take(MAX_HOSTS) {
        if mx.exchange.parse::<IpAddr>().is_ok() {
            // RFC 5321 §5.1 wants a name there; Exim and Postfix skip such records too.
            log::warn!("relay domain={domain}: MX {} is an address literal, not a host name: skipped", mx.exchange);
            continue;
        }
        match resolver.addrs(&mx.exchange) {
            Lookup::Ok(addrs) => {
                if let Some(target) = resolver.cname(&mx.exchange) {
                    log::info!("relay domain={domain}: MX {} is an alias (CNAME) of {target}: followed", mx.exchange);
                }
                out.push(Host { name: mx.exchange, preference: mx.preference, addrs });
            }
            Lookup::TempFail(e) => {
                log::info!("relay domain={domain}: MX {}: address lookup failed for now: {e}", mx.exchange);
                temp = Some(format!("address lookup for MX {}: {e}", mx.exchange));
            }
            Lookup::NxDomain | Lookup::NoData => {
                log::warn!("relay domain={domain}: MX {} has no address: skipped", mx.exchange)
            }
        }
    }
    match (out.is_empty(), temp) {
        (false, _) => Route::Hosts(out),
        (true, Some(e)) => Route::Defer(e),
        (true, None) => Route::Bounce("5.4.4", format!("no MX host of {domain} has an address")),
    }
}

/// By preference, and shuffled among equal preferences (RFC 5321 §5.1), to spread load.
fn order(mxs: &mut [Mx]) {
    mxs.sort_by_key(|m| m.preference);
    let mut start = 0;
    while start < mxs.len() {
        let end = start + mxs[start..].iter().take_while(|m| m.preference == mxs[start].preference).count();
        let group = &mut mxs[start..end];
        for i in (1..group.len()).rev() {
            group.swap(i, usize::from(random_u16()) % (i + 1));
        }
        start = end;
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`: a recipient domain that is an address.
fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_preference_shuffling_ties() {
        let mx = |p, n: &str| Mx { preference: p, exchange: n.into() };
        let mut seen_first = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut v = vec![mx(20, "c"), mx(10, "a"), mx(10, "b"), mx(30, "d")];
            order(&mut v);
            assert_eq!(v.iter().map(|m| m.preference).collect::<Vec<_>>(), [10, 10, 20, 30]);
            assert_eq!((v[2].exchange.as_str(), v[3].exchange.as_str()), ("c", "d"));
            seen_first.insert(v[0].exchange.clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are shuffled");
    }

    #[test]
    fn literals() {
        assert_eq!(address_literal("[192.0.2.1]"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(address_literal("[IPv6:::1]"), Some("::1".parse().unwrap()));
        assert_eq!(address_literal("[::1]"), None);
        assert_eq!(address_literal("example.org"), None);
    }
}
