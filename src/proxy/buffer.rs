//! I/O blocks from a per-worker pool, so that a connection holds memory only while bytes are in
//! flight: a connection waits for its socket to become readable with no buffer at all, takes a
//! block to read into, and gives it back when the bytes have been passed on. An idle keep-alive
//! connection or L4 session then costs its socket and its task, not 16 KiB or more of buffers.
//!
//! The pool is a thread-local free list (workers are single-threaded runtimes): taking and giving
//! back a block touches no lock and no shared cache line. A worker keeps at most [`MOST_FREE`] free
//! blocks; beyond that a returned block is freed, so a burst does not pin its peak memory forever.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// The size of one block: big enough for almost every request head and a good read size for
/// bodies (HAProxy's and nginx's defaults are 16 KiB too).
pub const BLOCK_SIZE: usize = 16 * 1024;

/// Free blocks a worker keeps for reuse (4 MiB).
pub const MOST_FREE: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zero-initialised byte buffer of [`BLOCK_SIZE`] bytes (or more, once grown) that goes back to
/// its worker's pool when dropped.
pub struct Block {
    bytes: Vec<u8>,
}

impl Block {
    /// A block from this worker's pool, or a new one when the pool is empty.
    pub fn take() -> Block {
        let bytes = FREE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| vec![0; BLOCK_SIZE]);
        Block { bytes }
    }

    /// Grows the block to `len` bytes (for a request head longer than one block). A grown block
    /// is freed, not pooled, when dropped.
    pub fn grow(&mut self, len: usize) {
        if len > self.bytes.len() {
            self.bytes.resize(len, 0);
        }
    }

    /// Free blocks in this worker's pool (for tests and benchmarks).
    pub fn pooled() -> usize {
        FREE.with_borrow(Vec::len)
    }
}

impl Deref for Block {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for Block {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.bytes.len() != BLOCK_SIZE {
            return;
        }
        let bytes = std::mem::take(&mut self.bytes);
        // During thread teardown the pool may already be gone; the block is then simply freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < MOST_FREE {
                free.push(bytes);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_block_is_reused() {
        let before = Block::pooled();
        let mut block = Block::take();
        assert_eq!(block.len(), BLOCK_SIZE);
        block[0] = 7;
        let addr = block.as_ptr();
        drop(block);
        assert_eq!(Block::pooled(), before.max(1));
        let again = Block::take();
        assert_eq!(again.as_ptr(), addr, "the pooled block comes back");
    }

    #[test]
    fn a_grown_block_is_freed_not_pooled() {
        drop(Block::take());
        let before = Block::pooled();
        let mut block = Block::take();
        block.grow(BLOCK_SIZE * 2);
        assert_eq!(block.len(), BLOCK_SIZE * 2);
        assert_eq!(Block::pooled(), before - 1);
        drop(block);
        assert_eq!(Block::pooled(), before - 1);
    }

    #[test]
    fn the_pool_keeps_at_most_most_free_blocks() {
        let blocks: Vec<Block> = (0..MOST_FREE + 10).map(|_| Block::take()).collect();
        drop(blocks);
        assert_eq!(Block::pooled(), MOST_FREE);
    }
}
