//! Weights as typed views into the model file, and the matrix products over them.

use std::ops::Range;

use tuili_core::{parallel, DType};
use tuili_formats::{GgufFile, TensorInfo};
use tuili_kernels::dequant::dequantize_row;
use tuili_kernels::ops;

use crate::ModelError;

/// A 2-D weight `[rows, cols]` (GGUF shape `[cols, rows]`: ne0 = cols is contiguous), stored
/// in the file in any supported type. Holds a byte range, not the bytes: the model owns the
/// file, and views are taken per use.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    range: Range<usize>,
}

fn check_type(f: &GgufFile, info: &TensorInfo) -> Result<(), ModelError> {
    if !info.dtype.is_dequantizable() {
        return Err(ModelError::UnsupportedType {
            path: f.path().display().to_string(),
            name: info.name.clone(),
            dtype: info.dtype,
        });
    }
    Ok(())
}

fn find<'a>(f: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    f.tensor_info(name)
        .ok_or_else(|| ModelError::MissingTensor {
            path: f.path().display().to_string(),
            name: name.to_string(),
        })
}

fn bad_shape(f: &GgufFile, info: &TensorInfo, expected: Vec<u64>) -> ModelError {
    ModelError::BadShape {
        path: f.path().display().to_string(),
        name: info.name.clone(),
        got: info.shape.clone(),
        expected,
    }
}

impl Matrix {
    /// Binds tensor `name`, which must have `cols` columns (ne0) and `rows` rows (ne1).
    pub fn bind(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
        let info = find(f, name)?;
        Self::from_info(f, info, rows, cols)
    }

    /// Binds tensor `name` if present.
    pub fn bind_opt(
        f: &GgufFile,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Matrix>, ModelError> {
        match f.tensor_info(name) {
            None => Ok(None),
            Some(info) => Self::from_info(f, info, rows, cols).map(Some),
        }
    }

    fn from_info(
        f: &GgufFile,
        info: &TensorInfo,
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
            return Err(bad_shape(f, info, expected));
        }
        check_type(f, info)?;
        Ok(Matrix {
            name: info.name.clone(),
            dtype: info.dtype,
            rows,
            cols,
            range: f.tensor_range(info),
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.range.len() / self.rows
    }

    /// This matrix's bytes within the file's bytes.
    pub fn data<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.range.clone()]
    }

    /// Dequantizes row `r` into `out` (`cols` floats).
    pub fn row(&self, file: &[u8], r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let rb = self.row_bytes();
        let data = self.data(file);
        dequantize_row(self.dtype, &data[r * rb..(r + 1) * rb], out)?;
        Ok(())
    }

    /// Bytes read per use of the whole matrix.
    pub fn bytes(&self) -> usize {
        self.range.len()
    }
}

/// Reads a 1-D f32 vector (norm weights, biases) of length `n`, in any supported type.
pub fn vector(f: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let info = find(f, name)?;
    if info.n_elements() != n as u64 || info.shape[0] != n as u64 {
        return Err(bad_shape(f, info, vec![n as u64]));
    }
    check_type(f, info)?;
    let mut out = vec![0f32; n];
    dequantize_row(info.dtype, &f.bytes()[f.tensor_range(info)], &mut out)?;
    Ok(out)
}

pub fn vector_opt(f: &GgufFile, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
    if f.tensor_info(name).is_none() {
        return Ok(None);
    }
    vector(f, name, n).map(Some)
}

/// A raw pointer that worker threads use to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: SharedOut is only handed to `parallel::for_each_chunk` workers, each of which writes
// a disjoint set of indices (documented at every use); the buffer outlives the scope.
unsafe impl Send for SharedOut {}
// SAFETY: as above — shared references never write overlapping indices.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buf: &mut [f32]) -> SharedOut {
        SharedOut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Writes `v` at index `i`.
    ///
    /// # Safety
    /// No other thread may access index `i` during the parallel region.
    #[inline]
    pub(crate) unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// A mutable view of `range`.
    ///
    /// # Safety
    /// No other thread may access any index of `range` during the parallel region.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, range: Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

/// y = x · Wᵀ for a batch: `x` is `[n, cols]`, `y` is `[n, rows]`.
///
/// Rows of W are split across threads; each row is dequantized once into a scratch row and
/// dotted with every input, so the weights are read once per batch (the cost that matters:
/// a decode step is bound by reading the weights).
pub fn matmul(
    file: &[u8],
    w: &Matrix,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    threads: usize,
) -> Result<(), ModelError> {
    debug_assert_eq!(x.len(), n * w.cols);
    debug_assert_eq!(y.len(), n * w.rows);
    let data = w.data(file);
    let rb = w.row_bytes();
    let out = SharedOut::new(y);
    let err = std::sync::Mutex::new(None);
    // Starting a worker costs tens of microseconds: give each at least ~64K multiply-adds,
    // so that small matrices (tiny models, single tokens) stay on the calling thread.
    let work = w.rows * w.cols * n;
    let threads = threads.min(work / 65_536).max(1);
    // Chunks of whole rows; 4 rows minimum per chunk keeps the split from being too fine.
    parallel::for_each_chunk(w.rows, threads, 4, |rows| {
        let mut buf = vec![0f32; w.cols];
        for r in rows {
            if let Err(e) = dequantize_row(w.dtype, &data[r * rb..(r + 1) * rb], &mut buf) {
                if let Ok(mut slot) = err.lock() {
                    *slot = Some(e);
                }
                return;
            }
            for t in 0..n {
                let v = ops::dot(&buf, &x[t * w.cols..(t + 1) * w.cols]);
                // SAFETY: row r belongs to this chunk only, so y[t, r] is written by this
                // thread alone.
                unsafe { out.write(t * w.rows + r, v) };
            }
        }
    });
    match err.into_inner() {
        Ok(Some(e)) => Err(e.into()),
        _ => Ok(()),
    }
}
