//! The allocator the `weir` binary and the engine's benchmarks run with: mimalloc, plus a
//! hint that starts loading the block the next allocation of the same size will return.
//!
//! Why: in a long-running engine, state is freed when it expires, tens of thousands of
//! events after it was last touched, and mimalloc hands those blocks out again in the
//! order they were freed. Popping a block reads its first word (the free list's next
//! pointer), and the event or path node written into it then fills the store buffer:
//! both wait for a cache miss. Profiled in steady state, the read alone was ~19% of the
//! engine's samples.
//!
//! mimalloc's free list is intrusive: a free block's first word points to the next free
//! block of its page. mimalloc v2 leaves that word in place when it hands a block out
//! (v3 clears it, which is why the workspace builds v2; v2 encodes it only when built
//! with `MI_SECURE` >= 3 or `MI_DEBUG`, neither of which the workspace enables). Right
//! after `malloc` returns a block, that word is therefore the block the next allocation
//! of this size class returns. Prefetching it overlaps its cache misses with the work
//! done before that allocation (an event's parsing and matching).
//! `next_block_is_predicted` checks that this still holds for the mimalloc we build.
//!
//! A prefetch is only a hint, so this cannot change what the program computes: if the
//! word is not a pointer (an encoded list, another allocator), the hint is wasted,
//! nothing else. The word is read with inline assembly, because the block is
//! uninitialised memory to Rust.
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};

/// mimalloc with the next block of each small allocation's size class prefetched.
pub struct Allocator;

/// Allocations up to this size get the hint: the engine's events (192 bytes with their
/// `Arc` counts) and path nodes (64) and the small strings and vectors around them.
const HINTED_MAX: usize = 256;

// SAFETY: every method forwards to mimalloc unchanged; `hint_next` only reads a word of
// the block just returned (owned by the caller, at least 8 bytes) and issues prefetches,
// which never fault and have no effect the program can observe.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on.
        let p = unsafe { MiMalloc.alloc(layout) };
        if layout.size() >= 8 && layout.size() <= HINTED_MAX && !p.is_null() {
            // SAFETY: `p` is a live block of at least 8 bytes, just returned.
            unsafe { hint_next(p, layout.size()) };
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Zeroed: the free list's word is gone.
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Prefetches the lines of the block that `p`'s first word points to, `size` bytes (the
/// next block of the same size class is at least as large).
///
/// # Safety
/// `p` must point to at least 8 bytes the caller may read.
#[inline(always)]
unsafe fn hint_next(p: *mut u8, size: usize) {
    // SAFETY: passed on from the caller.
    let next = unsafe { first_word(p) };
    if next != 0 {
        let mut off = 0;
        while off < size {
            crate::prefetch(next.wrapping_add(off) as *const u8);
            off += 64;
        }
    }
}

/// The first word of the block at `p`, whatever it holds (0 where it cannot be read
/// without assembly).
///
/// # Safety
/// `p` must point to at least 8 bytes the caller may read.
#[inline(always)]
unsafe fn first_word(p: *const u8) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let word: usize;
        // SAFETY: reads 8 bytes at `p` (readable, by the caller's contract); the value
        // is whatever the memory holds, a defined integer because assembly produced it.
        unsafe {
            std::arch::asm!(
                "mov {word}, qword ptr [{p}]",
                p = in(reg) p,
                word = lateout(reg) word,
                options(nostack, readonly, preserves_flags)
            )
        };
        word
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint's premise: right after mimalloc hands out a block, its first word is the
    /// address of the block the next allocation of that size gets. If a mimalloc upgrade
    /// (or v3) stops leaving it there, the hint silently does nothing: this fails instead.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn next_block_is_predicted() {
        for size in [56usize, 192] {
            let layout = Layout::from_size_align(size, 8).unwrap_or_else(|e| panic!("{e}"));
            let (mut hits, mut tries) = (0, 0);
            let mut held = Vec::new();
            // SAFETY: non-zero size; freed below.
            let mut p = unsafe { Allocator.alloc(layout) };
            for _ in 0..1000 {
                // SAFETY: `p` was just returned and is at least 8 bytes.
                let predicted = unsafe { first_word(p) };
                held.push(p);
                // SAFETY: as above.
                p = unsafe { Allocator.alloc(layout) };
                tries += 1;
                hits += usize::from(predicted == p as usize);
            }
            held.push(p);
            for q in held {
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { Allocator.dealloc(q, layout) };
            }
            // Misses: when a page's free list runs out (mimalloc then takes another).
            assert!(
                hits * 10 >= tries * 9,
                "size {size}: {hits} of {tries} predicted"
            );
        }
    }

    #[test]
    fn allocates_reads_back_and_frees_through_mimalloc() {
        // Each size up to the hinted limit and past it, several blocks per size so that
        // blocks come off a free list with a next pointer: what is written reads back.
        for size in [8usize, 24, 64, 192, 256, 257, 4096] {
            let layout = Layout::from_size_align(size, 8).unwrap_or_else(|e| panic!("{e}"));
            let blocks: Vec<*mut u8> = (0..64)
                .map(|i| {
                    // SAFETY: non-zero size.
                    let p = unsafe { Allocator.alloc(layout) };
                    assert!(!p.is_null());
                    // SAFETY: `p` is `size` bytes, just allocated.
                    unsafe { std::ptr::write_bytes(p, i as u8, size) };
                    p
                })
                .collect();
            for (i, &p) in blocks.iter().enumerate() {
                // SAFETY: written above.
                let s = unsafe { std::slice::from_raw_parts(p, size) };
                assert!(s.iter().all(|&b| b == i as u8), "size {size} block {i}");
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { Allocator.dealloc(p, layout) };
            }
        }
    }
}
