//! A small free list of message-body buffers. A body is handed back when the last delivery
//! job holding it is done, and the next DATA fills it again, so a steady stream of messages
//! neither allocates a body nor regrows it from empty each time. Bounded in count and in
//! each buffer's capacity: the list never holds more than `POOLED × MAX_POOLED` bytes, and a
//! buffer that grew for a large message goes back to the allocator.
//!
//! Not a process global: whoever owns the traffic makes one list and hands clones of it to
//! the places that take and give back (the smtp process's link and sessions, the delivery
//! process's reader and its messages), so a test or a second server has its own.

use crossbeam_channel::{Receiver, Sender};

const POOLED: usize = 32;
const MAX_POOLED: usize = 128 * 1024;

/// A handle on one free list; clones share it.
#[derive(Clone, Debug)]
pub struct Buffers {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl Default for Buffers {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(POOLED);
        Buffers { tx, rx }
    }
}

impl Buffers {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer, with capacity when one was handed back.
    pub fn take(&self) -> Vec<u8> {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Hands a buffer back for reuse; an empty or oversized one, or one past the bound, is freed.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_POOLED {
            return;
        }
        buf.clear();
        let _ = self.tx.try_send(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_bounded_buffers() {
        let list = Buffers::new();
        let mut b = Vec::with_capacity(4096);
        b.extend_from_slice(b"old");
        let ptr = b.as_ptr();
        list.clone().give(b);
        let again = list.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 4096);
        assert_eq!(again.as_ptr(), ptr);
        list.give(Vec::with_capacity(MAX_POOLED + 1));
        assert_eq!(list.take().capacity(), 0);
        for _ in 0..POOLED + 1 {
            list.give(Vec::with_capacity(16));
        }
        for _ in 0..POOLED {
            assert_eq!(list.take().capacity(), 16);
        }
        assert_eq!(list.take().capacity(), 0, "the list holds {POOLED} at most");
    }
}
