//! GGUF writer (version 3). Tensor bytes are given already encoded in their type.

use std::io::{self, Write};
use std::path::Path;

use crate::gguf::{MetaArray, MetaValue, DEFAULT_ALIGNMENT};
use tuili_core::DType;

/// Errors building a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("tensor {name:?}: {got} bytes given, {dtype} {shape:?} needs {expected}")]
    TensorSize {
        name: String,
        dtype: DType,
        shape: Vec<u64>,
        expected: u64,
        got: u64,
    },
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("duplicate {what} {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

struct PendingTensor {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    /// Encoded size in bytes.
    size: u64,
    /// `None` for a tensor declared with [`GgufWriter::declare_tensor`], whose bytes come at
    /// write time.
    data: Option<Vec<u8>>,
}

/// Collects metadata and tensors, then writes a GGUF v3 file.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a metadata value.
    pub fn set(&mut self, key: &str, value: MetaValue) -> &mut Self {
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.metadata.push((key.to_string(), value));
        }
        self
    }

    pub fn set_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.set(key, MetaValue::String(v.to_string()))
    }

    pub fn set_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.set(key, MetaValue::U32(v))
    }

    pub fn set_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.set(key, MetaValue::F32(v))
    }

    /// Adds a tensor; `shape` is ne0-first, `data` its bytes in `dtype`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self, WriteError> {
        let expected = self.check_tensor(name, dtype, shape)?;
        if expected != data.len() as u64 {
            return Err(WriteError::TensorSize {
                name: name.into(),
                dtype,
                shape: shape.to_vec(),
                expected,
                got: data.len() as u64,
            });
        }
        self.tensors.push(PendingTensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            size: expected,
            data: Some(data),
        });
        Ok(self)
    }

    /// Declares a tensor whose bytes [`GgufWriter::write_streaming`] asks for when it gets
    /// there, so that a large file never has to be held in memory.
    pub fn declare_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
    ) -> Result<&mut Self, WriteError> {
        let size = self.check_tensor(name, dtype, shape)?;
        self.tensors.push(PendingTensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            size,
            data: None,
        });
        Ok(self)
    }

    /// Validates a tensor's name, shape and type; returns its size in bytes.
    fn check_tensor(&self, name: &str, dtype: DType, shape: &[u64]) -> Result<u64, WriteError> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(WriteError::Duplicate {
                what: "tensor",
                name: name.into(),
            });
        }
        if shape.is_empty() || shape.len() > 4 {
            return Err(WriteError::BadTensor {
                name: name.into(),
                reason: format!("{} dimensions (1 to 4 allowed)", shape.len()),
            });
        }
        let n: u64 = shape.iter().product();
        let expected = dtype.bytes_for(n).map_err(|e| WriteError::BadTensor {
            name: name.into(),
            reason: e.to_string(),
        })?;
        if !shape[0].is_multiple_of(dtype.block_len()) {
            return Err(WriteError::BadTensor {
                name: name.into(),
                reason: format!(
                    "row length {} is not a multiple of {dtype}'s block",
                    shape[0]
                ),
            });
        }
        Ok(expected)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Serializes the whole file into `w` (every tensor must have been added with its data).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        self.write_streaming(w, &mut |i, _| {
            Err(io::Error::other(format!(
                "tensor {:?} was declared without data",
                self.tensors[i].name
            )))
        })
    }

    /// Serializes the file into `w`; `fill(i, buf)` puts the bytes of the i-th declared tensor
    /// (in declaration order) into `buf` when the writer reaches it.
    pub fn write_streaming(
        &self,
        w: &mut impl Write,
        fill: &mut dyn FnMut(usize, &mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let align = self.alignment();
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_string(&mut header, k);
            header.extend_from_slice(&v.meta_type().id().to_le_bytes());
            write_value(&mut header, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.dtype.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.size).div_ceil(align) * align;
        }
        let pad = |p: u64| (p.div_ceil(align) * align - p) as usize;
        let head_pad = pad(header.len() as u64);
        header.resize(header.len() + head_pad, 0);
        w.write_all(&header)?;
        let mut buf = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let data = match &t.data {
                Some(d) => d,
                None => {
                    buf.clear();
                    fill(i, &mut buf)?;
                    if buf.len() as u64 != t.size {
                        return Err(io::Error::other(format!(
                            "tensor {:?}: {} bytes produced, {} declared",
                            t.name,
                            buf.len(),
                            t.size
                        )));
                    }
                    &buf
                }
            };
            w.write_all(data)?;
            w.write_all(&vec![0u8; pad(t.size)])?;
        }
        Ok(())
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), WriteError> {
        let path = path.as_ref();
        let io_err = |source| WriteError::Io {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::create(path).map_err(io_err)?;
        let mut w = io::BufWriter::new(f);
        self.write_to(&mut w).map_err(io_err)?;
        w.flush().map_err(io_err)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut v);
        v
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    use MetaValue as V;
    match v {
        V::U8(x) => out.push(*x),
        V::I8(x) => out.push(*x as u8),
        V::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => out.push(*x as u8),
        V::String(s) => write_string(out, s),
        V::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Array(a) => write_array(out, a),
    }
}

fn write_array(out: &mut Vec<u8>, a: &MetaArray) {
    use MetaArray as A;
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        A::U8(v) => out.extend_from_slice(v),
        A::I8(v) => v.iter().for_each(|x| out.push(*x as u8)),
        A::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::Bool(v) => v.iter().for_each(|x| out.push(*x as u8)),
        A::String(v) => v.iter().for_each(|s| write_string(out, s)),
        A::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::Array(v) => v.iter().for_each(|x| write_array(out, x)),
    }
}
