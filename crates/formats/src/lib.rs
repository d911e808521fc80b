//! `tuili-formats`: model files as bytes and metadata.
//!
//! Owns: parsing and writing GGUF (header, metadata, tensor infos, alignment), reading
//! safetensors checkpoints, and zero-copy tensor views into memory maps. May not: know any architecture (which tensor means what is
//! the `model` crate's business) or convert tensor data (that is `kernels`').

pub mod gguf;
pub mod safetensors;
pub mod writer;

use memmap2::Mmap;

/// How a model file's bytes are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Load {
    /// A read-only memory map of the file: no copy, pages read on first touch and shared
    /// with the page cache (the default).
    #[default]
    Map,
    /// The whole file read into anonymous memory asked to be huge pages (llama.cpp's
    /// `--no-mmap`): a copy, which a decode step streams at full speed whatever state the
    /// page cache is in. From a file whose cached pages lay scattered (faulted in through a
    /// map, or left by writing it) one core streamed Q4_0 weights at 20 GB/s mapped and
    /// 27 GB/s from such a copy (`kernel_speed`), and decoded a 1.1B Q4_0 at 33 and 47
    /// tokens/s; from a file read in order (see `read_in_if_cold`) the map is as fast.
    Memory,
}

/// Before a mapped file is used: when most of its pages are not in memory, reads the file
/// once from start to end (`read`, in 8 MiB pieces), so that the page cache fills in large
/// contiguous pieces. Pages brought in by page faults through the map arrive scattered,
/// and a decode step, which streams every weight, reads those slower: on one core here a
/// 1.1B Q4_0 decoded 35.6 and 36.5 tokens/s from a file faulted in, 47.0 and 48.4 from the
/// same file read in first. A file just written is cached as scattered as one faulted in
/// ([`release_written`] hands tuili's own outputs back to the disk; otherwise `--no-mmap`).
/// The I/O is the same: the first token reads every weight anyway (not for a file larger
/// than the memory, which is skipped). Best effort: any failure only skips it.
#[cfg(target_os = "linux")]
fn read_in_if_cold(file: &mut std::fs::File, map: &Mmap) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // SAFETY: as above.
    let phys = usize::try_from(unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) }).unwrap_or(0);
    // A file larger than the memory would evict its own beginning while being read in, and
    // the first token would read it all again: leave it to the faults.
    if map.is_empty() || page == 0 || map.len() / page >= phys {
        return;
    }
    let mut resident = vec![0u8; map.len().div_ceil(page)];
    // SAFETY: the map is page-aligned (mmap) and `map.len()` bytes long; `resident` holds a
    // byte per page.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            resident.as_mut_ptr(),
        )
    };
    if rc != 0 || resident.iter().filter(|&&r| r & 1 != 0).count() * 2 >= resident.len() {
        return;
    }
    drop(resident);
    // SAFETY: a valid open descriptor; advice only.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let mut buf = vec![0u8; 8 << 20];
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Hands a model file just written back to the disk: flushed, then its pages dropped from
/// the page cache (Linux), so that the next load finds it cold and reads it in order (see
/// `read_in_if_cold`) instead of mapping the scattered pages the writes left behind.
pub fn release_written(file: &std::fs::File) -> std::io::Result<()> {
    file.sync_all()?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; advice only (its failure changes nothing).
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    Ok(())
}

/// Drops the pages wholly inside `range` of a map of a file from this process's memory
/// (Linux `MADV_DONTNEED`): they come back from the file if touched again. For a rank of a
/// tensor-parallel group that copied its part of a matrix out of the map. Nothing for
/// anonymous memory (`Load::Memory`), where it would lose the bytes.
fn release_range(map: &Mmap, file_backed: bool, range: std::ops::Range<usize>) {
    #[cfg(target_os = "linux")]
    if file_backed {
        const PAGE: usize = 4096;
        let (start, end) = (range.start.div_ceil(PAGE) * PAGE, range.end / PAGE * PAGE);
        if start < end && end <= map.len() {
            // SAFETY: the range lies inside the map; the map is a private, read-only mapping
            // of a file, so dropped pages are read again from the file when next touched —
            // no byte any view sees changes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
    let _ = (map, file_backed, range);
}

/// Marks `range` of a map of a file as a part this process reads (Linux `MADV_RANDOM` on
/// the pages it touches): the advice gives those pages a mapping area of their own, and the
/// kernel's fault-around — which maps up to 16 already-cached neighbouring pages on each
/// fault, within one area — then stops at its ends. A rank of a group that reads its part
/// of a shared file keeps its resident pages to that part, not its neighbours' too (the file
/// was read in at load when cold, so random-access advice costs no read-ahead).
fn keep_range(map: &Mmap, file_backed: bool, range: std::ops::Range<usize>) {
    #[cfg(target_os = "linux")]
    if file_backed {
        const PAGE: usize = 4096;
        let (start, end) = (range.start / PAGE * PAGE, range.end.div_ceil(PAGE) * PAGE);
        let end = end.min(map.len());
        if start < end {
            let _ = map.advise_range(memmap2::Advice::Random, start, end - start);
        }
    }
    let _ = (map, file_backed, range);
}

/// `file` (`len` bytes) as a [`Load`] asks: mapped, or read into anonymous memory.
fn load_file(file: &mut std::fs::File, len: u64, how: Load) -> std::io::Result<Mmap> {
    match how {
        // SAFETY: the map is read-only and private to this process. If another process
        // truncates or rewrites the file while it is mapped, reads may see new bytes or fault;
        // like every mmap-based loader (llama.cpp included), tuili assumes model files are not
        // modified while in use.
        Load::Map => {
            let map = unsafe { Mmap::map(&*file) }?;
            #[cfg(target_os = "linux")]
            read_in_if_cold(file, &map);
            Ok(map)
        }
        Load::Memory => {
            use std::io::Read;
            let len = usize::try_from(len).map_err(|_| std::io::Error::other("too large"))?;
            // An anonymous map cannot be empty: one byte past the end keeps the rest the same.
            let mut mem = memmap2::MmapMut::map_anon(len.max(1))?;
            // Huge pages are a request: a refusal only costs speed.
            #[cfg(target_os = "linux")]
            let _ = mem.advise(memmap2::Advice::HugePage);
            file.read_exact(&mut mem[..len])?;
            let map = mem.make_read_only()?;
            Ok(map)
        }
    }
}

pub use gguf::{GgufError, GgufFile, MetaArray, MetaType, MetaValue, TensorInfo, TensorView};
pub use safetensors::{Safetensors, SafetensorsError, StTensor};
pub use writer::{GgufWriter, WriteError};
