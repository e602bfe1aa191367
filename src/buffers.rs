//! A small free list of message-body buffers. A body is handed back when the last delivery
//! job holding it is done, and the next DATA fills it again, so a steady stream of messages
//! neither allocates a body nor regrows it from empty each time. Bounded in count and in
//! each buffer's capacity: the list never holds more than `POOLED × MAX_POOLED` bytes, and a
//! buffer that grew for a large message goes back to the allocator.

use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

const POOLED: usize = 32;
const MAX_POOLED: usize = 128 * 1024;

type FreeList = (Sender<Vec<u8>>, Receiver<Vec<u8>>);

fn list() -> &'static FreeList {
    static LIST: OnceLock<FreeList> = OnceLock::new();
    LIST.get_or_init(|| crossbeam_channel::bounded(POOLED))
}

/// An empty buffer, with capacity when one was handed back.
pub fn take() -> Vec<u8> {
    list().1.try_recv().unwrap_or_default()
}

/// Hands a buffer back for reuse; an empty or oversized one, or one past the bound, is freed.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_POOLED {
        return;
    }
    buf.clear();
    let _ = list().0.try_send(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_bounded_buffers() {
        let mut b = Vec::with_capacity(4096);
        b.extend_from_slice(b"old");
        let ptr = b.as_ptr();
        give(b);
        let again = take();
        assert!(again.is_empty());
        // Other tests may share the list; when ours comes back it is the same allocation.
        if again.capacity() == 4096 {
            assert_eq!(again.as_ptr(), ptr);
        }
        give(Vec::with_capacity(MAX_POOLED + 1));
        for _ in 0..POOLED + 1 {
            assert!(take().capacity() <= MAX_POOLED);
        }
    }
}
