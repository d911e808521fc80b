//! Weights as typed views into the model file: where a model's tensors come from
//! ([`WeightSource`]: a GGUF file, a Hugging Face checkpoint under GGUF names), and binding them
//! by name with their shapes and types checked ([`Matrix`], [`vector`]). Holds no computation:
//! the matrix products over these views are the execution layer's (`exec::matmul`).

use std::ops::Range;
use std::sync::Arc;

use tuili_core::DType;
use tuili_formats::safetensors::Shard;
use tuili_formats::GgufFile;
use tuili_kernels::types::dequantize_row;

use crate::error::ModelError;

/// The memory a weight lives in: a GGUF file's map, or one safetensors shard's.
#[derive(Debug, Clone)]
pub enum WeightBytes {
    Gguf(Arc<GgufFile>),
    Shard(Arc<Shard>),
    /// Bytes made at load time (GPT-2's Conv1D weights, transposed from a safetensors file).
    Owned(Arc<Vec<u8>>),
}

impl WeightBytes {
    pub fn bytes(&self) -> &[u8] {
        match self {
            WeightBytes::Gguf(f) => f.bytes(),
            WeightBytes::Shard(s) => s.bytes(),
            WeightBytes::Owned(v) => v,
        }
    }

    /// Marks `range` as read by this process (its own mapping area, where it is a map).
    fn keep(&self, range: Range<usize>) {
        match self {
            WeightBytes::Gguf(f) => f.keep(range),
            WeightBytes::Shard(s) => s.keep(range),
            WeightBytes::Owned(_) => {}
        }
    }

    /// Lets the pages of `range` leave this process's memory where they are a map of the
    /// file (re-read if touched again).
    fn release(&self, range: Range<usize>) {
        match self {
            WeightBytes::Gguf(f) => f.release(range),
            WeightBytes::Shard(s) => s.release(range),
            WeightBytes::Owned(_) => {}
        }
    }
}

/// One tensor as a source presents it: GGUF name, type, ne0-first shape, and where its bytes
/// are.
#[derive(Debug, Clone)]
pub struct WeightInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub backing: WeightBytes,
    pub range: Range<usize>,
}

impl WeightInfo {
    pub fn data(&self) -> &[u8] {
        &self.backing.bytes()[self.range.clone()]
    }

    fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Where a model's tensors come from, under GGUF's tensor names (`blk.0.attn_q.weight`…).
pub trait WeightSource {
    /// The file or folder, for error messages.
    fn label(&self) -> String;
    fn get(&self, name: &str) -> Option<WeightInfo>;
    /// Added to every norm weight as it is loaded: 1 for Hugging Face Gemma checkpoints,
    /// whose RMSNorm multiplies by 1 + w (GGUF files store 1 + w already).
    fn norm_offset(&self) -> f32 {
        0.0
    }
}

/// A GGUF file as a weight source.
pub struct GgufSource(pub Arc<GgufFile>);

impl WeightSource for GgufSource {
    fn label(&self) -> String {
        self.0.path().display().to_string()
    }

    fn get(&self, name: &str) -> Option<WeightInfo> {
        let info = self.0.tensor_info(name)?;
        Some(WeightInfo {
            name: name.to_string(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            backing: WeightBytes::Gguf(self.0.clone()),
            range: self.0.tensor_range(info),
        })
    }
}

/// A GGUF file with some tensors replaced by F32 values made in memory, by name (a model
/// being pruned, its finished layers swapped in).
pub struct Replaced<'a> {
    pub file: Arc<GgufFile>,
    /// Little-endian f32 values, in the replaced tensor's shape.
    pub tensors: &'a std::collections::HashMap<String, Arc<Vec<u8>>>,
}

impl WeightSource for Replaced<'_> {
    fn label(&self) -> String {
        self.file.path().display().to_string()
    }

    fn get(&self, name: &str) -> Option<WeightInfo> {
        let info = GgufSource(self.file.clone()).get(name)?;
        match self.tensors.get(name) {
            None => Some(info),
            Some(bytes) => Some(WeightInfo {
                dtype: DType::F32,
                range: 0..bytes.len(),
                backing: WeightBytes::Owned(bytes.clone()),
                ..info
            }),
        }
    }
}

/// A 2-D weight `[rows, cols]` (GGUF shape `[cols, rows]`: ne0 = cols is contiguous), stored
/// in any supported type. Holds its backing map and a byte range, not a copy of the bytes.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    backing: WeightBytes,
    range: Range<usize>,
}

fn check_type(src: &dyn WeightSource, info: &WeightInfo) -> Result<(), ModelError> {
    if tuili_kernels::types::traits(info.dtype).is_none() {
        return Err(ModelError::UnsupportedType {
            path: src.label(),
            name: info.name.clone(),
            dtype: info.dtype,
        });
    }
    Ok(())
}

fn find(src: &dyn WeightSource, name: &str) -> Result<WeightInfo, ModelError> {
    src.get(name).ok_or_else(|| ModelError::MissingTensor {
        path: src.label(),
        name: name.to_string(),
    })
}

fn bad_shape(src: &dyn WeightSource, info: &WeightInfo, expected: Vec<u64>) -> ModelError {
    ModelError::BadShape {
        path: src.label(),
        name: info.name.clone(),
        got: info.shape.clone(),
        expected,
    }
}

impl Matrix {
    /// Binds tensor `name`, which must have `cols` columns (ne0) and `rows` rows (ne1).
    pub fn bind(
        src: &dyn WeightSource,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, ModelError> {
        let info = find(src, name)?;
        Self::from_info(src, info, rows, cols)
    }

    /// Binds tensor `name` if present.
    pub fn bind_opt(
        src: &dyn WeightSource,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Matrix>, ModelError> {
        match src.get(name) {
            None => Ok(None),
            Some(info) => Self::from_info(src, info, rows, cols).map(Some),
        }
    }

    fn from_info(
        src: &dyn WeightSource,
        info: WeightInfo,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, ModelError> {
        let expected = vec![cols as u64, rows as u64];
        let s = &info.shape;
        let ok = s.len() >= 2
            && s[0] == cols as u64
            && s[1] == rows as u64
            && s[2..].iter().all(|&d| d == 1);
        if !ok {
            return Err(bad_shape(src, &info, expected));
        }
        check_type(src, &info)?;
        let m = Matrix {
            name: info.name,
            dtype: info.dtype,
            rows,
            cols,
            backing: info.backing,
            range: info.range,
        };
        if let Some(b) = tuili_kernels::types::malformed_block(m.dtype, m.data(), m.row_bytes()) {
            return Err(ModelError::MalformedBlock {
                path: src.label(),
                name: m.name,
                dtype: m.dtype,
                block: b,
            });
        }
        Ok(m)
    }

    /// Rows `start..start + n` as a matrix of their own (a view of the same bytes): the parts
    /// of a fused projection (Phi-3's Q/K/V, gate/up).
    pub fn rows_view(&self, start: usize, n: usize) -> Matrix {
        let rb = self.row_bytes();
        let b = self.range.start + start * rb;
        Matrix {
            name: format!("{}[{start}..{}]", self.name, start + n),
            dtype: self.dtype,
            rows: n,
            cols: self.cols,
            backing: self.backing.clone(),
            range: b..b + n * rb,
        }
    }

    /// Columns `start..start + n` of every row as a matrix of their own, copied (a rank's
    /// share of a matrix split along its input, tensor parallelism); both ends must fall on
    /// block boundaries of the type.
    pub fn cols_copy(&self, start: usize, n: usize) -> Result<Matrix, ModelError> {
        let bl = self.dtype.block_len() as usize;
        let bb = self.dtype.block_bytes() as usize;
        if !start.is_multiple_of(bl) || !n.is_multiple_of(bl) || start + n > self.cols {
            return Err(ModelError::BadShape {
                path: self.name.clone(),
                name: format!("columns {start}..{} of {}", start + n, self.name),
                got: vec![self.cols as u64, self.rows as u64],
                expected: vec![n as u64, self.rows as u64],
            });
        }
        let (rb, b0, b1) = (self.row_bytes(), start / bl * bb, (start + n) / bl * bb);
        let (dtype, out) = if self.dtype.pool_room().is_some() {
            self.pooled_cols(start, n)
        } else {
            let mut out = Vec::with_capacity(self.rows * (b1 - b0));
            for row in self.data().chunks_exact(rb) {
                out.extend_from_slice(&row[b0..b1]);
            }
            (self.dtype, out)
        };
        // The whole matrix was read to copy this part out: its pages need not stay (a rank's
        // resident weights are then its parts only).
        self.backing.release(self.range.clone());
        Ok(Matrix {
            name: format!("{}[:, {start}..{}]", self.name, start + n),
            dtype,
            rows: self.rows,
            cols: n,
            range: 0..out.len(),
            backing: WeightBytes::Owned(Arc::new(out)),
        })
    }

    /// Columns `start..start + n` (whole super-blocks) of an unstructured sparse matrix
    /// (`tuili_kernels::pool`), whose rows share one pool of kept values and so cannot be cut
    /// as bytes: each row's part as dense Q8_0 blocks, packed again with the room the part's
    /// fullest row needs (its own `Q8_0_U*` type; Q8_0 itself if none has room). Decodes to
    /// the very same values.
    fn pooled_cols(&self, start: usize, n: usize) -> (DType, Vec<u8>) {
        use tuili_kernels::blocks::{BlockQ8_0, QK};
        let rb = self.row_bytes();
        let mut blocks = vec![
            BlockQ8_0 {
                d: [0; 2],
                qs: [0; QK]
            };
            self.cols / QK
        ];
        let (b0, b1) = (start / QK, (start + n) / QK);
        let mut part = |row: &[u8]| {
            tuili_kernels::pool::unpack(row, &mut blocks);
            blocks[b0..b1].to_vec()
        };
        let kept = |p: &[BlockQ8_0]| p.iter().flat_map(|b| b.qs).filter(|&q| q != 0).count();
        let most = self
            .data()
            .chunks_exact(rb)
            .map(|row| kept(&part(row)))
            .max()
            .unwrap_or(0);
        let dtype = DType::q8_0_pooled(n as u64, most as u64).unwrap_or(DType::Q8_0);
        // `n` is whole super-blocks (checked by the caller), so the size exists.
        let prb = dtype.bytes_for(n as u64).unwrap_or(0) as usize;
        let mut out = vec![0u8; self.rows * prb];
        for (row, o) in self
            .data()
            .chunks_exact(rb)
            .zip(out.chunks_exact_mut(prb.max(1)))
        {
            let p = part(row);
            if dtype == DType::Q8_0 {
                for (b, c) in p.iter().zip(o.chunks_exact_mut(34)) {
                    c[..2].copy_from_slice(&b.d);
                    c[2..].copy_from_slice(&b.qs);
                }
            } else {
                tuili_kernels::pool::pack(&p, o);
            }
        }
        (dtype, out)
    }

    /// Marks this matrix's bytes as a part this process reads: on a rank of a distributed
    /// run, the pages it maps then stay within its own parts of the shared file.
    pub fn keep_mapped(&self) {
        self.backing.keep(self.range.clone());
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        // (No rows: a tensor-parallel rank's share of Q, K, V when it holds no heads.)
        self.range.len().checked_div(self.rows).unwrap_or(0)
    }

    /// This matrix's bytes (in the memory map).
    pub fn data(&self) -> &[u8] {
        &self.backing.bytes()[self.range.clone()]
    }

    /// Dequantizes row `r` into `out` (`cols` floats).
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let rb = self.row_bytes();
        let data = self.data();
        dequantize_row(self.dtype, &data[r * rb..(r + 1) * rb], out)?;
        Ok(())
    }

    /// Bytes read per use of the whole matrix.
    pub fn bytes(&self) -> usize {
        self.range.len()
    }
}

/// Reads a 1-D f32 vector (norm weights, biases) of length `n`, in any supported type.
pub fn vector(src: &dyn WeightSource, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let info = find(src, name)?;
    if info.n_elements() != n as u64 || info.shape[0] != n as u64 {
        return Err(bad_shape(src, &info, vec![n as u64]));
    }
    check_type(src, &info)?;
    let mut out = vec![0f32; n];
    dequantize_row(info.dtype, info.data(), &mut out)?;
    Ok(out)
}

pub fn vector_opt(
    src: &dyn WeightSource,
    name: &str,
    n: usize,
) -> Result<Option<Vec<f32>>, ModelError> {
    if src.get(name).is_none() {
        return Ok(None);
    }
    vector(src, name, n).map(Some)
}
