//! `queue compression` and `queue encryption`: how a queue file is stored. A sealed file is
//! `MXDQ`, a version byte, a flags byte (1 deflate, 2 AES-256-GCM), with encryption a
//! 12-byte random nonce, then the payload (the plain queue file, deflated first when
//! compressing; with encryption the GCM tag follows, and the six header bytes are bound in
//! as associated data). Files are told apart by their first bytes, so plain files written
//! before the option was turned on are still read.
//!
//! The key lives only in memory: from the configuration file (which the administrator keeps)
//! or, with `stdin`, read by each process at start and never written anywhere.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::sync::{Arc, RwLock};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{Config, QueueKey};

const MAGIC: &[u8; 4] = b"MXDQ";
const VERSION: u8 = 1;
const DEFLATE: u8 = 1;
const AES_GCM: u8 = 2;
/// A queue file never holds more than the largest message plus its envelope; inflating past
/// this is refused (a corrupt or hostile file cannot exhaust memory).
const MAX_PLAIN: u64 = 1 << 31;

/// How this process writes queue files, and the key it reads them with.
pub struct Seal {
    compress: bool,
    key: Option<LessSafeKey>,
}

/// The key is not usable.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "queue encryption: {}", self.0)
    }
}

/// A key as written: 32 bytes of text (OpenSMTPD's form), or 64 hexadecimal digits.
pub fn parse_key(text: &str) -> Result<[u8; 32], KeyError> {
    crate::config::queue_key::parse_key(text).map_err(KeyError)
}

impl Seal {
    pub fn new(compress: bool, key: Option<&[u8; 32]>) -> Seal {
        let key = key.and_then(|k| UnboundKey::new(&aead::AES_256_GCM, k).ok()).map(LessSafeKey::new);
        Seal { compress, key }
    }

    /// What the configuration asks for; `stdin` is read from this process's standard input.
    pub fn of(config: &Config, stdin_key: Option<&[u8; 32]>) -> Result<Seal, KeyError> {
        let key = match &config.knobs.queue_encryption {
            None => None,
            Some(QueueKey::Key(k)) => Some(parse_key(k)?),
            Some(QueueKey::Stdin | QueueKey::Ask) => {
                Some(*stdin_key.ok_or_else(|| KeyError("no key was given on standard input".into()))?)
            }
        };
        Ok(Seal::new(config.knobs.queue_compression, key.as_ref()))
    }

    fn flags(&self) -> u8 {
        (if self.compress { DEFLATE } else { 0 }) | (if self.key.is_some() { AES_GCM } else { 0 })
    }

    /// The bytes to store for a queue file made of `parts`; `None` when nothing is to be
    /// transformed (store the parts as they are).
    pub fn seal(&self, parts: &[&[u8]]) -> Option<std::io::Result<Vec<u8>>> {
        let flags = self.flags();
        if flags == 0 {
            return None;
        }
        Some(self.seal_parts(flags, parts))
    }

    fn seal_parts(&self, flags: u8, parts: &[&[u8]]) -> std::io::Result<Vec<u8>> {
        let mut payload = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() / 2 + 64);
        if self.compress {
            let mut z = flate2::write::DeflateEncoder::new(payload, flate2::Compression::default());
            for p in parts {
                z.write_all(p)?;
            }
            payload = z.finish()?;
        } else {
            parts.iter().for_each(|p| payload.extend_from_slice(p));
        }
        let mut out = Vec::with_capacity(payload.len() + 40);
        out.extend_from_slice(MAGIC);
        out.extend([VERSION, flags]);
        if let Some(key) = &self.key {
            let mut nonce = [0u8; NONCE_LEN];
            SystemRandom::new().fill(&mut nonce).map_err(|_| std::io::Error::other("no randomness"))?;
            let header: [u8; 6] = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, flags];
            key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut payload)
                .map_err(|_| std::io::Error::other("encryption failed"))?;
            out.extend_from_slice(&nonce);
        }
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// The plain queue file in `file`; `None` when it is sealed in a way this process
    /// cannot open (no key, the wrong key, corruption).
    pub fn open<'a>(&self, file: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let Some(rest) = file.strip_prefix(MAGIC) else {
            return Some(Cow::Borrowed(file));
        };
        let (&[version, flags], rest) = rest.split_first_chunk::<2>()?;
        if version != VERSION || flags == 0 || flags & !(DEFLATE | AES_GCM) != 0 {
            return None;
        }
        let mut payload = if flags & AES_GCM != 0 {
            let key = self.key.as_ref()?;
            let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
            let mut buf = sealed.to_vec();
            let header: [u8; 6] = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], version, flags];
            let plain = key.open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(header), &mut buf).ok()?;
            let n = plain.len();
            buf.truncate(n);
            buf
        } else {
            rest.to_vec()
        };
        if flags & DEFLATE != 0 {
            let mut plain = Vec::with_capacity(payload.len() * 3);
            flate2::read::DeflateDecoder::new(payload.as_slice()).take(MAX_PLAIN).read_to_end(&mut plain).ok()?;
            payload = plain;
        }
        Some(Cow::Owned(payload))
    }
}

static CURRENT: RwLock<Option<Arc<Seal>>> = RwLock::new(None);

/// Sets how this process seals and opens queue files (delivery and relay, at start).
pub fn install(seal: Seal) {
    if let Ok(mut c) = CURRENT.write() {
        *c = Some(Arc::new(seal));
    }
}

/// This process's sealing; plain files when none was installed.
pub fn current() -> Arc<Seal> {
    let got = CURRENT.read().ok().and_then(|c| c.clone());
    got.unwrap_or_else(|| Arc::new(Seal::new(false, None)))
}

/// Reads queue file `path` and opens it with this process's key; an unreadable or
/// unopenable file is an error (logged by the caller like a malformed one).
pub fn read(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    match current().open(&bytes) {
        Some(Cow::Borrowed(_)) => Ok(bytes),
        Some(Cow::Owned(plain)) => Ok(plain),
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "sealed queue file: no key or wrong key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &[&[u8]] =
        &[b"mxd-queue 1\nsender a@b\nrcpt r c@d\n.\n", b"Received: x\n", b"Subject: hi\n\nbody body body\n"];

    fn plain() -> Vec<u8> {
        FILE.concat()
    }

    #[test]
    fn every_combination_round_trips() {
        let key = [7u8; 32];
        for (compress, key) in [(true, None), (false, Some(&key)), (true, Some(&key))] {
            let seal = Seal::new(compress, key);
            let stored = seal.seal(FILE).unwrap().unwrap();
            assert!(stored.starts_with(MAGIC));
            assert!(memchr::memmem::find(&stored, b"Subject").is_none() || !compress && key.is_none());
            assert_eq!(seal.open(&stored).unwrap().as_ref(), plain().as_slice());
        }
        assert!(Seal::new(false, None).seal(FILE).is_none());
    }

    #[test]
    fn wrong_key_tampering_and_plain_files() {
        let seal = Seal::new(true, Some(&[1; 32]));
        let mut stored = seal.seal(FILE).unwrap().unwrap();
        assert!(Seal::new(true, Some(&[2; 32])).open(&stored).is_none());
        assert!(Seal::new(true, None).open(&stored).is_none());
        let last = stored.len() - 1;
        stored[last] ^= 1;
        assert!(seal.open(&stored).is_none());
        stored[5] = 0; // flags are authenticated
        assert!(seal.open(&stored).is_none());
        assert_eq!(seal.open(&plain()).unwrap().as_ref(), plain().as_slice());
        assert!(seal.open(b"MXDQ").is_none());
        assert!(seal.open(b"MXDQ\x01\x02short").is_none());
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("0123456789abcdef0123456789abcdef").unwrap()[0], b'0');
        assert_eq!(parse_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert_eq!(parse_key(&format!("{}\n", "ab".repeat(32))).unwrap(), [0xab; 32]);
        assert!(parse_key("short").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }
}
