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
    /// `--no-mmap`): a copy, but one a decode step streams faster. Page-cache pages are
    /// scattered 4 KiB pages; here one core streamed Q4_0 weights at 20 GB/s from the map
    /// and 27 GB/s from such a copy (`kernel_speed`), and a 1.1B Q4_0 decode went from 33 to
    /// 47 tokens/s on one thread.
    Memory,
}

/// `file` (`len` bytes) as a [`Load`] asks: mapped, or read into anonymous memory.
fn load_file(file: &mut std::fs::File, len: u64, how: Load) -> std::io::Result<Mmap> {
    match how {
        // SAFETY: the map is read-only and private to this process. If another process
        // truncates or rewrites the file while it is mapped, reads may see new bytes or fault;
        // like every mmap-based loader (llama.cpp included), tuili assumes model files are not
        // modified while in use.
        Load::Map => unsafe { Mmap::map(&*file) },
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
