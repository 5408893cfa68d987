//! I/O blocks from a per-worker pool, so that a connection holds memory only while bytes are in
//! flight: a connection waits for its socket to become readable with no buffer at all, takes a
//! block to read into, and gives it back when the bytes have been passed on. An idle keep-alive
//! connection or L4 session then costs its socket and its task, not 16 KiB or more of buffers.
//!
//! The pool is a thread-local free list per size (workers are single-threaded runtimes): taking
//! and giving back a block touches no lock and no shared cache line. Two sizes: [`BLOCK_SIZE`]
//! for reading and relaying, [`HEAD_SIZE`] for the heads Fulcrum writes. A worker keeps at most
//! [`MOST_FREE`] free blocks of each size; beyond that a returned block is freed. A worker that
//! took no block for a whole sweep ([`shrink_if_idle`]) keeps only [`KEEP_IDLE`], and the memory
//! freed is handed back to the operating system ([`return_freed_memory`]), so that a burst of
//! requests does not leave its peak in the process's RSS.

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The size of a read block: big enough for almost every request head and a good read size for
/// bodies (HAProxy's and nginx's defaults are 16 KiB too).
pub const BLOCK_SIZE: usize = 16 * 1024;

/// The size of a block for a head Fulcrum writes (grown for the rare longer one).
pub const HEAD_SIZE: usize = 4 * 1024;

/// Free blocks of each size a busy worker keeps for reuse (4 MiB of read blocks).
pub const MOST_FREE: usize = 256;

/// Free blocks of each size a worker keeps once it has gone a sweep without taking one.
pub const KEEP_IDLE: usize = 16;

/// Bytes of blocks freed since the memory was last handed back to the operating system.
static FREED: AtomicUsize = AtomicUsize::new(0);

/// At least this much must have been freed before the allocator is asked to return memory.
const RETURN_AT_LEAST: usize = 1 << 20;

thread_local! {
    static FREE_READ: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_HEAD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static TAKEN: Cell<bool> = const { Cell::new(false) };
}

/// A zero-initialised byte buffer of [`BLOCK_SIZE`] or [`HEAD_SIZE`] bytes (or more, once grown)
/// that goes back to its worker's pool when dropped.
pub struct Block {
    bytes: Vec<u8>,
}

impl Block {
    /// A read block from this worker's pool, or a new one when the pool is empty.
    pub fn take() -> Block {
        Block::of(&FREE_READ, BLOCK_SIZE)
    }

    /// A head block from this worker's pool, or a new one.
    pub fn head() -> Block {
        Block::of(&FREE_HEAD, HEAD_SIZE)
    }

    fn of(free: &'static std::thread::LocalKey<RefCell<Vec<Vec<u8>>>>, size: usize) -> Block {
        TAKEN.set(true);
        let bytes = free
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| vec![0; size]);
        Block { bytes }
    }

    /// Grows the block to `len` bytes (a head longer than one block). A grown block is freed, not
    /// pooled, when dropped.
    pub fn grow(&mut self, len: usize) {
        if len > self.bytes.len() {
            self.bytes.resize(len, 0);
        }
    }

    /// Free read blocks in this worker's pool (for tests and benchmarks).
    pub fn pooled() -> usize {
        FREE_READ.with_borrow(Vec::len)
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
        let bytes = std::mem::take(&mut self.bytes);
        let free = match bytes.len() {
            BLOCK_SIZE => &FREE_READ,
            HEAD_SIZE => &FREE_HEAD,
            len => {
                FREED.fetch_add(len, Ordering::Relaxed);
                return;
            }
        };
        // During thread teardown the pool may already be gone; the block is then simply freed.
        let _ = free.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < MOST_FREE {
                free.push(bytes);
            } else {
                FREED.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
            }
        });
    }
}

/// Called by each worker's periodic sweep: when the worker took no block since the last call,
/// its free lists shrink to [`KEEP_IDLE`] blocks each.
pub fn shrink_if_idle() {
    if TAKEN.replace(false) {
        return;
    }
    for free in [&FREE_READ, &FREE_HEAD] {
        free.with_borrow_mut(|free| {
            for block in free.drain(KEEP_IDLE.min(free.len())..) {
                FREED.fetch_add(block.len(), Ordering::Relaxed);
            }
        });
    }
}

/// Called periodically by the control thread: once at least 1 MiB of blocks has been freed, asks
/// the allocator to give free pages back to the operating system (glibc keeps freed memory in its
/// arenas otherwise; HAProxy trims the same way after releasing its pools). Returns whether it
/// did.
pub fn return_freed_memory() -> bool {
    if FREED.load(Ordering::Relaxed) < RETURN_AT_LEAST {
        return false;
    }
    FREED.store(0, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    true
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
    fn head_blocks_are_smaller_and_pooled_apart() {
        let head = Block::head();
        assert_eq!(head.len(), HEAD_SIZE);
        let addr = head.as_ptr();
        let read_pooled = Block::pooled();
        drop(head);
        assert_eq!(Block::pooled(), read_pooled, "not in the read pool");
        assert_eq!(Block::head().as_ptr(), addr);
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

    #[test]
    fn an_idle_worker_keeps_only_a_few_blocks() {
        let blocks: Vec<Block> = (0..100).map(|_| Block::take()).collect();
        drop(blocks);
        assert_eq!(Block::pooled(), 100);
        shrink_if_idle();
        assert_eq!(
            Block::pooled(),
            100,
            "blocks were taken since the last sweep"
        );
        shrink_if_idle();
        assert_eq!(Block::pooled(), KEEP_IDLE);
        assert!(FREED.load(Ordering::Relaxed) >= (100 - KEEP_IDLE) * BLOCK_SIZE);
    }
}
