//! One call of a weight type's SIMD row kernels, its inputs checked once ([`Rows`]): a group
//! of consecutive weight rows against up to a few activation rows. Each instruction set's file
//! (`x86`, `neon`) gives every type it has kernels for a [`RowsFn`] over this; the type table
//! (`crate::types`) points to them.

use tuili_core::DType;

use crate::act::ActRef;
use crate::blocks::{QK, QK_K};
use crate::cpu::Isa;

/// A type's SIMD row kernels for one instruction-set family: computes `out[r · nt + t]` =
/// row r · activation t for the rows from `first_row` on; `false` means "use the scalar
/// path" (the activations are in a form these kernels do not take).
pub type RowsFn = for<'w, 'a> fn(&mut Rows<'w, 'a>) -> bool;

/// The inputs of one call, checked: `w` is `n_rows` whole rows of `row_bytes`, each `n`
/// elements of whole blocks; `out` holds `n_rows × nt` results; every activation row holds
/// as many values (quants, scales and sums) as a weight row has elements.
pub struct Rows<'w, 'a> {
    pub isa: Isa,
    pub w: &'w [u8],
    pub row_bytes: usize,
    pub acts: &'w [ActRef<'a>],
    pub out: &'w mut [f32],
    pub n_rows: usize,
    /// Elements per row.
    pub n: usize,
    /// Rows before this one are done (by a kernel that takes several rows at a time).
    pub first_row: usize,
}

/// The shape of a group of weight rows: `(n_rows, elements per row)`, or `None` when the bytes
/// are not whole rows of whole blocks or `out` cannot hold `n_rows × nt` results.
pub(crate) fn row_geometry(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    nt: usize,
    out_len: usize,
) -> Option<(usize, usize)> {
    let bl = dtype.block_len() as usize;
    let bb = dtype.block_bytes() as usize;
    if row_bytes == 0 || !row_bytes.is_multiple_of(bb) || !w.len().is_multiple_of(row_bytes) {
        return None;
    }
    let n_rows = w.len() / row_bytes;
    if out_len < n_rows * nt {
        return None;
    }
    Some((n_rows, row_bytes / bb * bl))
}

impl<'w, 'a> Rows<'w, 'a> {
    /// Checks a call (see [`Rows`]); `None` sends it to the scalar path, which never reads out
    /// of bounds.
    pub fn check(
        isa: Isa,
        dtype: DType,
        w: &'w [u8],
        row_bytes: usize,
        acts: &'w [ActRef<'a>],
        out: &'w mut [f32],
    ) -> Option<Rows<'w, 'a>> {
        if acts.is_empty() {
            return None;
        }
        let (n_rows, n) = row_geometry(dtype, w, row_bytes, acts.len(), out.len())?;
        let fits = acts.iter().all(|a| match a {
            ActRef::F32(x) => x.len() == n,
            ActRef::F16(x) => x.len() == n,
            ActRef::Q8(q) => {
                q.qs.len() >= n
                    && q.d.len() * QK >= n
                    && q.isum.len() * QK >= n
                    && q.dsum.len() * QK >= n
            }
            ActRef::Q8K(q) => q.qs.len() >= n && q.d.len() * QK_K >= n && q.bsums.len() * 16 >= n,
        });
        fits.then_some(Rows {
            isa,
            w,
            row_bytes,
            acts,
            out,
            n_rows,
            n,
            first_row: 0,
        })
    }

    /// Activation rows per call.
    pub fn nt(&self) -> usize {
        self.acts.len()
    }

    /// The rows not yet done, up to four activation rows per pass: `f(row, activations,
    /// results)` with the activations in the form `pick` extracts; `false` when some row is in
    /// another form.
    pub fn each<T: ?Sized + 'a>(
        &mut self,
        pick: impl Fn(&ActRef<'a>) -> Option<&'a T>,
        f: impl Fn(&[u8], &[&'a T], &mut [f32]),
    ) -> bool {
        let (nt, rb) = (self.acts.len(), self.row_bytes);
        let mut done = 0;
        while done < nt {
            let m = (nt - done).min(4);
            let Some(xs) = gather(&self.acts[done..done + m], &pick) else {
                return false;
            };
            let mut res = [0f32; 4];
            for r in self.first_row..self.n_rows {
                f(&self.w[r * rb..(r + 1) * rb], &xs[..m], &mut res[..m]);
                self.out[r * nt + done..r * nt + done + m].copy_from_slice(&res[..m]);
            }
            done += m;
        }
        true
    }
}

/// Up to four activation rows as one form (`pick` extracts it; the unused slots repeat the
/// first), or `None` when there are none or some row is in another form.
pub fn gather<'a, T: ?Sized + 'a>(
    acts: &[ActRef<'a>],
    pick: impl Fn(&ActRef<'a>) -> Option<&'a T>,
) -> Option<[&'a T; 4]> {
    let first = acts.first().and_then(&pick)?;
    let mut xs: [&T; 4] = [first; 4];
    for (slot, a) in xs.iter_mut().zip(acts) {
        *slot = pick(a)?;
    }
    Some(xs)
}
