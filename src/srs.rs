//! The Sender Rewriting Scheme (`srs key`, relay `srs`), in the SRS0 form OpenSMTPD and
//! libsrs2 write: a forwarded message's sender `user@origin.example` becomes
//! `SRS0=HHHH=TT=origin.example=user@this.host`, where TT is the day (base32, two
//! characters, modulo 1024) and HHHH the first four base64 characters of an HMAC-SHA1 over
//! TT, the domain and the user. A bounce coming back to that address is sent on to the
//! original sender, once the hash checks out (with any key) and the age is within `srs ttl`.
//!
//! Pure functions of (keys, address, day): untrusted input never panics.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::hmac;

use crate::config::Config;
use crate::envelope::Mailbox;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// OpenSMTPD's default `srs ttl`: four days.
const DEFAULT_TTL_DAYS: u64 = 4;

/// Today's day number, SRS's clock.
pub fn today() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400)
}

fn stamp(day: u64) -> String {
    let t = (day % 1024) as usize;
    [BASE32[t >> 5] as char, BASE32[t & 31] as char].iter().collect()
}

fn hash(key: &str, tt: &str, domain: &str, local: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    for part in [tt, domain, local] {
        ctx.update(part.to_ascii_lowercase().as_bytes());
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref());
    b64[..4].to_owned()
}

/// `sender`'s SRS0 form at `srs_domain`, signed with the first key; `None` for the null
/// sender, an address without a domain, or one already rewritten.
pub fn encode(key: &str, sender: &str, srs_domain: &str, day: u64) -> Option<String> {
    let Mailbox { local, domain } = Mailbox::parse(sender)?;
    if local.is_empty() || domain.is_empty() || is_srs(sender) {
        return None;
    }
    let tt = stamp(day);
    Some(format!("SRS0={}={tt}={domain}={local}@{srs_domain}", hash(key, &tt, domain, local)))
}

/// Whether `addr` is in an SRS form (its bounce must be decoded before the rules see it).
pub fn is_srs(addr: &str) -> bool {
    let p = addr.get(..5).unwrap_or("");
    p.eq_ignore_ascii_case("SRS0=") || p.eq_ignore_ascii_case("SRS1=")
}

/// The original sender inside `addr`, when a key signed it and it is at most `ttl_days`
/// old; `None` for anything else.
pub fn decode(keys: &[String], addr: &str, day: u64, ttl_days: u64) -> Option<String> {
    let body = addr.get(5..).filter(|_| addr[..5].eq_ignore_ascii_case("SRS0="))?;
    let (local_part, _srs_domain) = body.rsplit_once('@')?;
    let mut it = local_part.splitn(4, '=');
    let (h, tt, domain, local) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if h.len() != 4 || tt.len() != 2 || domain.is_empty() || local.is_empty() {
        return None;
    }
    if !keys.iter().any(|k| hash(k, tt, domain, local).eq_ignore_ascii_case(h)) {
        return None;
    }
    let digit = |c: u8| BASE32.iter().position(|&b| b == c.to_ascii_uppercase()).map(|v| v as u64);
    let t = (digit(tt.as_bytes()[0])? << 5) | digit(tt.as_bytes()[1])?;
    let age = (day % 1024 + 1024 - t) % 1024;
    (age <= ttl_days).then(|| format!("{local}@{domain}"))
}

/// An SRS address that no key of ours signed, or that is older than `srs ttl`.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidSrs;

impl std::fmt::Display for InvalidSrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid SRS address")
    }
}

/// A recipient as the rules must see it: an SRS address of ours, decoded (a bounce finding
/// its way back); any other address as it is (`None`). `Err` for an SRS address that does
/// not verify, when this host signs SRS addresses.
pub fn reverse(config: &Config, rcpt: &str) -> Result<Option<String>, InvalidSrs> {
    let keys = &config.knobs.srs_keys;
    if keys.is_empty() || !is_srs(rcpt) {
        return Ok(None);
    }
    let ttl = config.knobs.srs_ttl.map_or(DEFAULT_TTL_DAYS, |d| d.as_secs() / 86_400);
    decode(keys, rcpt, today(), ttl).map(Some).ok_or(InvalidSrs)
}

/// The sender a relay action with `srs` gives forwarded mail: a foreign sender rewritten at
/// this host's name (mail from this host's own domains goes out as it is, as does the null
/// sender); `None` to keep `sender`.
pub fn forward_sender(config: &Config, sender: &str) -> Option<String> {
    let key = config.knobs.srs_keys.first()?;
    let domain = Mailbox::parse(sender)?.domain;
    if crate::rules::is_local_domain(config, domain) {
        return None;
    }
    encode(key, sender, &config.hostname, today())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_either_key_and_case() {
        let keys = vec!["new-secret".to_owned(), "old-secret".to_owned()];
        let day = 20_000;
        let a = encode("new-secret", "Joseph@Origin.example", "fwd.example", day).unwrap();
        assert!(a.starts_with("SRS0=") && a.ends_with("=Origin.example=Joseph@fwd.example"), "{a}");
        assert_eq!(decode(&keys, &a, day, 4).as_deref(), Some("Joseph@Origin.example"));
        assert_eq!(decode(&keys, &a.to_lowercase(), day + 3, 4).as_deref(), Some("joseph@origin.example"));
        let old = encode("old-secret", "x=y@o.example", "fwd.example", day).unwrap();
        assert_eq!(decode(&keys, &old, day, 4).as_deref(), Some("x=y@o.example"));
    }

    #[test]
    fn forged_expired_and_odd_addresses() {
        let keys = vec!["k".to_owned()];
        let a = encode("k", "u@o.example", "f.example", 1023).unwrap();
        assert!(decode(&keys, &a, 1023 + 2, 4).is_some(), "wraps around day 1024");
        assert!(decode(&keys, &a, 1023 + 5, 4).is_none(), "expired");
        assert!(decode(&["other".to_owned()], &a, 1023, 4).is_none());
        let forged = a.replacen("=u@", "=v@", 1);
        assert!(decode(&keys, &forged, 1023, 4).is_none());
        for odd in ["", "SRS0=", "SRS0=@", "SRS0=abcd=AA==@x", "SRS0=ab=AA=d=l@x", "SRS0=abcd=A!=d=l@x", "srs0=é"] {
            assert!(decode(&keys, odd, 0, 4).is_none(), "{odd}");
        }
        assert!(encode("k", "", "f", 0).is_none());
        assert!(encode("k", &a, "f", 0).is_none(), "never rewritten twice");
    }
}
