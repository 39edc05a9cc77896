//! The reader of the kernel → daemon ring buffer (`BPF_MAP_TYPE_RINGBUF`).
//!
//! Our own rather than aya's `RingBuf` for one reason: aya hands a record back to the kernel the
//! moment its item is dropped, before the daemon has written it anywhere. With a pinned ring
//! buffer that outlives the daemon, a `kill -9` between reading and writing would lose those
//! records. Here reading and giving back are separate: [`Ring::next`] reads ahead, and
//! [`Ring::commit`] hands back everything read so far, which the daemon does only once the
//! records are written. A daemon killed in between leaves them in the ring for the next one
//! (at-least-once: a record written but not yet committed is written again).
//!
//! The layout is the kernel's (kernel/bpf/ringbuf.c): one consumer page we may write, then one
//! producer page and the data pages mapped twice in a row, read-only, so a record that wraps
//! around the end reads as one slice. Each record starts with an 8-byte header: its length with
//! the BUSY (being written) and DISCARD bits, and a page offset we do not need.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence},
};

use aya::maps::MapData;

/// `BPF_RINGBUF_BUSY_BIT`: the producer has reserved the record but not committed it.
const BUSY: u32 = 1 << 31;
/// `BPF_RINGBUF_DISCARD_BIT`: the producer gave the record up; skip it.
const DISCARD: u32 = 1 << 30;
/// `BPF_RINGBUF_HDR_SZ`.
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RingError {
    #[error("reading the ring buffer's size: {0}")]
    Info(#[source] aya::maps::MapError),
    #[error("the ring buffer's size {0} is not a power of two of at least one page")]
    Size(u32),
    #[error("mapping the ring buffer: {0}")]
    Mmap(#[source] std::io::Error),
}

/// One shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> Result<Self, RingError> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| RingError::Mmap(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a fresh shared mapping of a map fd we own; the kernel checks `len`, `prot` and
        // `offset` against the ring buffer and fails rather than map anything else.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(RingError::Mmap(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast())
            .ok_or_else(|| RingError::Mmap(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        Ok(Self { ptr, len })
    }

    /// The `T` (an atomic) at `offset`, shared with the kernel.
    fn atomic<T>(&self, offset: usize) -> &T {
        assert!(
            offset + size_of::<T>() <= self.len && offset.is_multiple_of(align_of::<T>()),
            "ring buffer access at {offset} outside the mapping or misaligned"
        );
        // SAFETY: in bounds and aligned (checked); the kernel only ever accesses these words
        // atomically, and the mapping lives as long as `self`.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<T>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `mmap` returned; nothing borrows it past `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A ring buffer being read; its map fd stays open as long as it lives.
pub(crate) struct Ring {
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    size: usize,
    /// Where the next record to read starts (ahead of what the kernel has been given back).
    read: usize,
}

impl Ring {
    pub(crate) fn new(map: MapData) -> Result<Self, RingError> {
        let size = map.info().map_err(RingError::Info)?.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = size as usize;
        if !size.is_power_of_two() || bytes < page {
            return Err(RingError::Size(size));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * bytes, libc::PROT_READ, page)?;
        let read = consumer.atomic::<AtomicUsize>(0).load(Ordering::Acquire);
        Ok(Self {
            map,
            consumer,
            producer,
            page,
            size: bytes,
            read,
        })
    }

    /// Bytes the kernel has written that were not given back yet (read or not).
    #[must_use]
    pub(crate) fn pending(&self) -> usize {
        let produced = self
            .producer
            .atomic::<AtomicUsize>(0)
            .load(Ordering::Acquire);
        let consumed = self
            .consumer
            .atomic::<AtomicUsize>(0)
            .load(Ordering::Acquire);
        produced.wrapping_sub(consumed)
    }

    /// The next committed record after the ones read so far, or None when the ring holds no more
    /// (or the next one is still being written). The slice stays valid until [`Ring::commit`].
    pub(crate) fn next(&mut self) -> Option<&[u8]> {
        loop {
            let produced = self
                .producer
                .atomic::<AtomicUsize>(0)
                .load(Ordering::Acquire);
            if self.read == produced {
                return None;
            }
            let offset = self.page + (self.read & (self.size - 1));
            // `offset` is inside the first copy of the data pages (masked). Pairs with the
            // kernel's xchg that commits the record.
            let header = self
                .producer
                .atomic::<AtomicU32>(offset)
                .load(Ordering::Acquire);
            if header & BUSY != 0 {
                return None;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            if len > self.size - HEADER {
                // The kernel never writes this; stop rather than read outside the data pages.
                tracing::error!(
                    len,
                    "ring buffer record longer than the ring; not reading on"
                );
                return None;
            }
            self.read = self.read.wrapping_add((HEADER + len).next_multiple_of(8));
            if header & DISCARD != 0 {
                continue;
            }
            // SAFETY: the record lies within the two consecutive copies of the data pages
            // (offset < page + size, len ≤ size - 8), which the kernel no longer writes: it was
            // committed, and it is not given back before `commit`, which needs `&mut self`.
            return Some(unsafe {
                std::slice::from_raw_parts(self.producer.ptr.as_ptr().add(offset + HEADER), len)
            });
        }
    }

    /// Whether a committed record waits after the ones read so far.
    #[must_use]
    pub(crate) fn ready(&self) -> bool {
        let produced = self
            .producer
            .atomic::<AtomicUsize>(0)
            .load(Ordering::Acquire);
        if self.read == produced {
            return false;
        }
        let offset = self.page + (self.read & (self.size - 1));
        self.producer
            .atomic::<AtomicU32>(offset)
            .load(Ordering::Acquire)
            & BUSY
            == 0
    }

    /// Gives back to the kernel every record read so far. Call it once they are written.
    pub(crate) fn commit(&mut self) {
        // Pairs with the kernel's acquire load before it reuses the space.
        self.consumer
            .atomic::<AtomicUsize>(0)
            .store(self.read, Ordering::Release);
        // Either we see a record committed after this store, or its producer sees the new
        // position and wakes us: the kernel only wakes a reader that had caught up.
        fence(Ordering::SeqCst);
    }
}

impl std::os::fd::AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
