//! `tuili inspect`: a GGUF file's header, metadata and tensor table.

use std::io::Write;
use std::path::Path;

use tuili_formats::{GgufFile, MetaArray, MetaValue};

use crate::error::CliError;

/// How many of tensor `t`'s values are zero, or `None` for a type tuili cannot dequantize.
fn zeros_of(f: &GgufFile, t: &tuili_formats::TensorInfo) -> Option<u64> {
    let cols = *t.shape.first()? as usize;
    let rows = (t.n_elements() as usize).checked_div(cols)?;
    tuili_kernels::types::traits(t.dtype)?;
    let data = f.bytes().get(f.tensor_range(t))?;
    let rb = data.len().checked_div(rows)?;
    let mut row = vec![0f32; cols];
    let mut n = 0u64;
    for r in data.chunks_exact(rb.max(1)).take(rows) {
        tuili_kernels::types::dequantize_row(t.dtype, r, &mut row).ok()?;
        n += row.iter().filter(|&&v| v == 0.0).count() as u64;
    }
    Some(n)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.2} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

fn array_preview(a: &MetaArray, full: bool) -> String {
    let limit = if full { usize::MAX } else { 8 };
    macro_rules! items {
        ($v:expr, $fmt:expr) => {{
            let mut s: Vec<String> = $v.iter().take(limit).map($fmt).collect();
            if $v.len() > limit {
                s.push("…".into());
            }
            s.join(", ")
        }};
    }
    let body = match a {
        MetaArray::U8(v) => items!(v, |x| x.to_string()),
        MetaArray::I8(v) => items!(v, |x| x.to_string()),
        MetaArray::U16(v) => items!(v, |x| x.to_string()),
        MetaArray::I16(v) => items!(v, |x| x.to_string()),
        MetaArray::U32(v) => items!(v, |x| x.to_string()),
        MetaArray::I32(v) => items!(v, |x| x.to_string()),
        MetaArray::F32(v) => items!(v, |x| x.to_string()),
        MetaArray::Bool(v) => items!(v, |x| x.to_string()),
        MetaArray::String(v) => items!(v, |x| format!("{x:?}")),
        MetaArray::U64(v) => items!(v, |x| x.to_string()),
        MetaArray::I64(v) => items!(v, |x| x.to_string()),
        MetaArray::F64(v) => items!(v, |x| x.to_string()),
        MetaArray::Array(v) => items!(v, |x| format!("[{:?}; {}]", x.elem_type(), x.len())),
    };
    format!("[{:?}; {}] [{}]", a.elem_type(), a.len(), body)
}

pub fn inspect(path: &Path, full: bool, sparsity: bool) -> Result<(), CliError> {
    let f = GgufFile::open(path)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(
        out,
        "{}: GGUF v{}, {} ({} bytes), alignment {}, tensor data at offset {}",
        path.display(),
        f.version,
        human(f.file_size()),
        f.file_size(),
        f.alignment,
        f.data_offset
    )?;
    writeln!(out, "\nmetadata ({} keys):", f.metadata.len())?;
    for (k, v) in &f.metadata {
        let shown = match v {
            MetaValue::Array(a) => array_preview(a, full),
            MetaValue::String(s) if !full && s.chars().count() > 120 => {
                format!(
                    "{:?}… ({} chars)",
                    s.chars().take(120).collect::<String>(),
                    s.chars().count()
                )
            }
            other => other.to_string(),
        };
        writeln!(out, "  {k} = {shown}")?;
    }
    writeln!(out, "\ntensors ({}):", f.tensors.len())?;
    let width = f
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "  {:<width$}  {:<20}  {:<8}  {:>12}{}",
        "name",
        "shape",
        "type",
        "bytes",
        if sparsity { "  zeros" } else { "" }
    )?;
    let mut params = 0u64;
    let mut bytes = 0u64;
    let (mut zeros, mut counted) = (0u64, 0u64);
    for t in &f.tensors {
        let shape = format!("{:?}", t.shape);
        let z = if sparsity { zeros_of(&f, t) } else { None };
        if let Some(z) = z {
            zeros += z;
            counted += t.n_elements();
        }
        writeln!(
            out,
            "  {:<width$}  {:<20}  {:<8}  {:>12}{}",
            t.name,
            shape,
            t.dtype.name(),
            t.size,
            match (sparsity, z) {
                (false, _) => String::new(),
                (true, Some(z)) => format!(
                    "  {:6.2} %",
                    100.0 * z as f64 / t.n_elements().max(1) as f64
                ),
                (true, None) => "  (type not read)".into(),
            }
        )?;
        params += t.n_elements();
        bytes += t.size;
    }
    if sparsity && counted > 0 {
        writeln!(
            out,
            "\nzeros: {:.2} % of the {} weights read",
            100.0 * zeros as f64 / counted as f64,
            counted
        )?;
    }
    writeln!(
        out,
        "\ntotal: {} tensors, {} parameters ({:.2} M), {} of tensor data ({:.2} bits per weight)",
        f.tensors.len(),
        params,
        params as f64 / 1e6,
        human(bytes),
        if params > 0 {
            bytes as f64 * 8.0 / params as f64
        } else {
            0.0
        }
    )?;
    Ok(())
}
