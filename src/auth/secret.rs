//! A password in memory.

use zeroize::Zeroize;

/// Bytes that must not outlive their use or reach a log: zeroed when dropped, and `Debug`
/// prints only `Secret(..)`. Deliberately neither `Clone` nor `Display`.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The password itself, for a hash check.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PartialEq for Secret {
    /// Constant-time, so tests and callers can compare without a timing side channel.
    fn eq(&self, other: &Secret) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(s.expose(), b"hunter2");
        assert_eq!(s, Secret::new(b"hunter2".to_vec()));
        assert_ne!(s, Secret::new(b"hunter3".to_vec()));
    }
}
