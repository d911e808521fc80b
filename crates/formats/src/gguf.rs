//! GGUF reader (versions 2 and 3), memory-mapped.
//!
//! Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
//! metadata key/values, tensor infos (name, n_dims, dims ne0-first, type, offset), padding to
//! `general.alignment` (default 32), then tensor data; each tensor's offset is relative to the
//! data start and aligned.
//!
//! Every count and length read from the file is checked against the bytes that remain before
//! anything is allocated, so a corrupt file yields an error naming the field and offset rather
//! than a huge allocation or a panic.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tuili_core::DType;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;

/// Errors reading a GGUF file. Each names the file and, where it applies, the field and the
/// byte offset.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot open: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic {found:?} at offset 0, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: GGUF version {version} is not supported (2 and 3 are)")]
    BadVersion { path: PathBuf, version: u32 },
    #[error(
        "{path}: truncated: {field} at offset {offset} needs {need} bytes, file has {have} left"
    )]
    Truncated {
        path: PathBuf,
        field: String,
        offset: u64,
        need: u64,
        have: u64,
    },
    #[error("{path}: invalid {field} at offset {offset}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        offset: u64,
        reason: String,
    },
    #[error("{path}: metadata key {key:?}: expected {expected}, found {found}")]
    MetaType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: metadata key {key:?} is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: tensor {name:?} is missing")]
    MissingTensor { path: PathBuf, name: String },
}

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl MetaType {
    pub fn from_id(id: u32) -> Option<MetaType> {
        use MetaType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use MetaType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The smallest number of bytes one value of this type takes in a file.
    fn min_size(self) -> u64 {
        use MetaType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: homogeneous, stored per element type so that large arrays (token lists,
/// scores) stay compact.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaArray {
    pub fn len(&self) -> usize {
        use MetaArray::*;
        match self {
            U8(v) => v.len(),
            I8(v) => v.len(),
            U16(v) => v.len(),
            I16(v) => v.len(),
            U32(v) => v.len(),
            I32(v) => v.len(),
            F32(v) => v.len(),
            Bool(v) => v.len(),
            String(v) => v.len(),
            Array(v) => v.len(),
            U64(v) => v.len(),
            I64(v) => v.len(),
            F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type(&self) -> MetaType {
        use MetaArray as A;
        match self {
            A::U8(_) => MetaType::U8,
            A::I8(_) => MetaType::I8,
            A::U16(_) => MetaType::U16,
            A::I16(_) => MetaType::I16,
            A::U32(_) => MetaType::U32,
            A::I32(_) => MetaType::I32,
            A::F32(_) => MetaType::F32,
            A::Bool(_) => MetaType::Bool,
            A::String(_) => MetaType::String,
            A::Array(_) => MetaType::Array,
            A::U64(_) => MetaType::U64,
            A::I64(_) => MetaType::I64,
            A::F64(_) => MetaType::F64,
        }
    }
}

impl MetaValue {
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("array of {:?} ({} elements)", a.elem_type(), a.len()),
            other => format!("{:?}", other.meta_type()),
        }
    }

    pub fn meta_type(&self) -> MetaType {
        use MetaValue as V;
        match self {
            V::U8(_) => MetaType::U8,
            V::I8(_) => MetaType::I8,
            V::U16(_) => MetaType::U16,
            V::I16(_) => MetaType::I16,
            V::U32(_) => MetaType::U32,
            V::I32(_) => MetaType::I32,
            V::F32(_) => MetaType::F32,
            V::Bool(_) => MetaType::Bool,
            V::String(_) => MetaType::String,
            V::Array(_) => MetaType::Array,
            V::U64(_) => MetaType::U64,
            V::I64(_) => MetaType::I64,
            V::F64(_) => MetaType::F64,
        }
    }

    /// Any integer type that fits in u64 (negative values do not).
    pub fn as_u64(&self) -> Option<u64> {
        use MetaValue as V;
        match *self {
            V::U8(v) => Some(v as u64),
            V::U16(v) => Some(v as u64),
            V::U32(v) => Some(v as u64),
            V::U64(v) => Some(v),
            V::I8(v) => u64::try_from(v).ok(),
            V::I16(v) => u64::try_from(v).ok(),
            V::I32(v) => u64::try_from(v).ok(),
            V::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer or float type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        use MetaValue as V;
        match *self {
            V::F32(v) => Some(v as f64),
            V::F64(v) => Some(v),
            V::I8(v) => Some(v as f64),
            V::I16(v) => Some(v as f64),
            V::I32(v) => Some(v as f64),
            V::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MetaValue as V;
        match self {
            V::U8(v) => write!(f, "{v}"),
            V::I8(v) => write!(f, "{v}"),
            V::U16(v) => write!(f, "{v}"),
            V::I16(v) => write!(f, "{v}"),
            V::U32(v) => write!(f, "{v}"),
            V::I32(v) => write!(f, "{v}"),
            V::F32(v) => write!(f, "{v}"),
            V::Bool(v) => write!(f, "{v}"),
            V::String(v) => write!(f, "{v:?}"),
            V::U64(v) => write!(f, "{v}"),
            V::I64(v) => write!(f, "{v}"),
            V::F64(v) => write!(f, "{v}"),
            V::Array(a) => write!(f, "[{:?}; {}]", a.elem_type(), a.len()),
        }
    }
}

/// Where and what a tensor is.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ne0-first (ne0 is the contiguous dimension, the length of a row).
    pub shape: Vec<u64>,
    pub dtype: DType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data (computed from shape and type).
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A borrowed view of one tensor's bytes inside the memory map.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

/// The bytes behind a parsed file: a read-only memory map, or an owned buffer.
enum Backing {
    /// A map, how many of its bytes are the file's (an empty file's copy is one byte), and
    /// whether it maps the file (else: a copy in anonymous memory).
    Map(Mmap, usize, bool),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m, len, _) => &m[..*len],
            Backing::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed header and metadata, tensor data left in the memory map.
pub struct GgufFile {
    path: PathBuf,
    map: Backing,
    pub version: u32,
    pub alignment: u64,
    /// Byte offset of the data section in the file.
    pub data_offset: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                field: field(),
                offset: self.pos as u64,
                need: n,
                have: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn invalid(&self, field: String, offset: usize, reason: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            field,
            offset: offset as u64,
            reason,
        }
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(&|| format!("{} (string length)", field()))?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.invalid(field(), at, format!("string is not UTF-8: {e}")))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what remains;
    /// called before reserving memory for them.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        field: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.left() => Ok(count as usize),
            _ => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                field: field(),
                offset: self.pos as u64,
                need: count.saturating_mul(min_size),
                have: self.left(),
            }),
        }
    }

    fn value(
        &mut self,
        ty: MetaType,
        depth: u32,
        field: &dyn Fn() -> String,
    ) -> Result<MetaValue, GgufError> {
        use MetaValue as V;
        Ok(match ty {
            MetaType::U8 => V::U8(self.array::<1>(field)?[0]),
            MetaType::I8 => V::I8(self.array::<1>(field)?[0] as i8),
            MetaType::U16 => V::U16(u16::from_le_bytes(self.array(field)?)),
            MetaType::I16 => V::I16(i16::from_le_bytes(self.array(field)?)),
            MetaType::U32 => V::U32(self.u32(field)?),
            MetaType::I32 => V::I32(i32::from_le_bytes(self.array(field)?)),
            MetaType::F32 => V::F32(f32::from_le_bytes(self.array(field)?)),
            MetaType::U64 => V::U64(self.u64(field)?),
            MetaType::I64 => V::I64(i64::from_le_bytes(self.array(field)?)),
            MetaType::F64 => V::F64(f64::from_le_bytes(self.array(field)?)),
            MetaType::Bool => {
                let at = self.pos;
                match self.array::<1>(field)?[0] {
                    0 => V::Bool(false),
                    1 => V::Bool(true),
                    b => return Err(self.invalid(field(), at, format!("bool byte is {b}"))),
                }
            }
            MetaType::String => V::String(self.string(field)?),
            MetaType::Array => V::Array(self.array_value(depth, field)?),
        })
    }

    fn array_value(
        &mut self,
        depth: u32,
        field: &dyn Fn() -> String,
    ) -> Result<MetaArray, GgufError> {
        let at = self.pos;
        if depth > 8 {
            return Err(self.invalid(field(), at, "arrays nested deeper than 8".into()));
        }
        let ty_id = self.u32(&|| format!("{} (array element type)", field()))?;
        let ty = MetaType::from_id(ty_id).ok_or_else(|| {
            self.invalid(field(), at, format!("unknown array element type {ty_id}"))
        })?;
        let count = self.u64(&|| format!("{} (array length)", field()))?;
        let n = self.check_count(count, ty.min_size(), &|| {
            format!("{} (array of {count})", field())
        })?;
        macro_rules! read_all {
            ($variant:ident, $conv:expr) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push($conv(self.value(ty, depth + 1, field)?));
                }
                MetaArray::$variant(v)
            }};
        }
        // `value(ty)` returns the variant of `ty`, so each closure's other arm cannot happen;
        // a default keeps them total without a panic path.
        Ok(match ty {
            MetaType::U8 => {
                let bytes = self.take(n as u64, field)?;
                MetaArray::U8(bytes.to_vec())
            }
            MetaType::I8 => read_all!(I8, |v| if let MetaValue::I8(x) = v { x } else { 0 }),
            MetaType::U16 => read_all!(U16, |v| if let MetaValue::U16(x) = v { x } else { 0 }),
            MetaType::I16 => read_all!(I16, |v| if let MetaValue::I16(x) = v { x } else { 0 }),
            MetaType::U32 => read_all!(U32, |v| if let MetaValue::U32(x) = v { x } else { 0 }),
            MetaType::I32 => read_all!(I32, |v| if let MetaValue::I32(x) = v { x } else { 0 }),
            MetaType::F32 => read_all!(F32, |v| if let MetaValue::F32(x) = v { x } else { 0.0 }),
            MetaType::Bool => read_all!(Bool, |v| matches!(v, MetaValue::Bool(true))),
            MetaType::String => read_all!(String, |v| if let MetaValue::String(x) = v {
                x
            } else {
                String::new()
            }),
            MetaType::U64 => read_all!(U64, |v| if let MetaValue::U64(x) = v { x } else { 0 }),
            MetaType::I64 => read_all!(I64, |v| if let MetaValue::I64(x) = v { x } else { 0 }),
            MetaType::F64 => read_all!(F64, |v| if let MetaValue::F64(x) = v { x } else { 0.0 }),
            MetaType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(depth + 1, field)?);
                }
                MetaArray::Array(v)
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file. The tensor data stays in the memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        Self::open_with(path, crate::Load::Map)
    }

    /// Opens and parses a GGUF file, mapped or read into memory ([`crate::Load`]).
    pub fn open_with(path: impl AsRef<Path>, how: crate::Load) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        let map = crate::load_file(&mut file, meta.len(), how).map_err(io)?;
        let len = usize::try_from(meta.len())
            .unwrap_or(usize::MAX)
            .min(map.len());
        Self::parse(path, Backing::Map(map, len, how == crate::Load::Map))
    }

    /// Parses a GGUF image held in memory; `label` stands for the path in errors.
    pub fn from_bytes(label: impl AsRef<Path>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(label.as_ref(), Backing::Owned(bytes))
    }

    fn parse(path: &Path, map: Backing) -> Result<GgufFile, GgufError> {
        let mut c = Cursor {
            buf: &map[..],
            pos: 0,
            path,
        };
        let magic = c
            .take(4, &|| "magic".into())
            .map_err(|_| GgufError::BadMagic {
                path: path.to_path_buf(),
                found: map[..map.len().min(4)].to_vec(),
            })?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: magic.to_vec(),
            });
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(GgufError::BadVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info
        // at least 8 + 4 + 4 + 8. Both must fit in the file before anything is reserved.
        let n_kv = c.check_count(n_kv, 13, &|| format!("metadata count ({n_kv})"))?;
        let n_tensors_us =
            c.check_count(n_tensors, 24, &|| format!("tensor count ({n_tensors})"))?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key_at = c.pos;
            let key = c.string(&|| format!("metadata key #{i}"))?;
            if key.is_empty() {
                return Err(c.invalid(format!("metadata key #{i}"), key_at, "empty key".into()));
            }
            let ty_at = c.pos;
            let ty_id = c.u32(&|| format!("type of metadata {key:?}"))?;
            let ty = MetaType::from_id(ty_id).ok_or_else(|| {
                c.invalid(
                    format!("type of metadata {key:?}"),
                    ty_at,
                    format!("unknown type id {ty_id}"),
                )
            })?;
            let value = c.value(ty, 0, &|| format!("metadata {key:?}"))?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.invalid(
                    format!("metadata key {key:?}"),
                    key_at,
                    "duplicate key".into(),
                ));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Invalid {
                        path: path.to_path_buf(),
                        field: "general.alignment".into(),
                        offset: 0,
                        reason: format!("{v} is not a power of two up to 1 MiB"),
                    })
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors_us);
        let mut tensor_index = HashMap::with_capacity(n_tensors_us);
        for i in 0..n_tensors_us {
            let name_at = c.pos;
            let name = c.string(&|| format!("tensor #{i} name"))?;
            let f = |what: &str| format!("tensor {name:?} {what}");
            let nd_at = c.pos;
            let n_dims = c.u32(&|| f("n_dims"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.invalid(
                    f("n_dims"),
                    nd_at,
                    format!("{n_dims} is not in 1..={MAX_DIMS}"),
                ));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            let dims_at = c.pos;
            for d in 0..n_dims {
                shape.push(c.u64(&|| f(&format!("dim {d}")))?);
            }
            let n_el = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n < (1u64 << 50))
                .ok_or_else(|| {
                    c.invalid(
                        f("shape"),
                        dims_at,
                        format!("{shape:?} has too many elements"),
                    )
                })?;
            let ty_at = c.pos;
            let ty_id = c.u32(&|| f("type"))?;
            let dtype =
                DType::from_id(ty_id).map_err(|e| c.invalid(f("type"), ty_at, e.to_string()))?;
            let row = shape[0];
            if row % dtype.block_len() != 0 {
                return Err(c.invalid(
                    f("shape"),
                    dims_at,
                    format!(
                        "row length {row} is not a multiple of {dtype}'s block of {}",
                        dtype.block_len()
                    ),
                ));
            }
            let size = dtype
                .bytes_for(n_el)
                .map_err(|e| c.invalid(f("shape"), dims_at, e.to_string()))?;
            let off_at = c.pos;
            let offset = c.u64(&|| f("offset"))?;
            if offset % alignment != 0 {
                return Err(c.invalid(
                    f("offset"),
                    off_at,
                    format!("{offset} is not aligned to {alignment}"),
                ));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(c.invalid(f("name"), name_at, "duplicate tensor name".into()));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                dtype,
                offset,
                size,
            });
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        if n_tensors > 0 && data_offset > file_len {
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                field: "padding before tensor data".into(),
                offset: c.pos as u64,
                need: data_offset - c.pos as u64,
                have: file_len - c.pos as u64,
            });
        }
        let data_len = file_len.saturating_sub(data_offset);
        for t in &tensors {
            let end = t.offset.checked_add(t.size);
            if end.is_none_or(|e| e > data_len) {
                return Err(GgufError::Truncated {
                    path: path.to_path_buf(),
                    field: format!(
                        "data of tensor {:?} ({} bytes at data offset {})",
                        t.name, t.size, t.offset
                    ),
                    offset: data_offset.saturating_add(t.offset),
                    need: t.size,
                    have: data_len.saturating_sub(t.offset),
                });
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            meta_index,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file's bytes (the memory map).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Lets the pages wholly inside `range` of [`GgufFile::bytes`] leave this process's
    /// memory (they are read again from the file if touched): a tensor-parallel rank's
    /// matrices it has copied its part out of. Nothing for a file read into memory.
    pub fn release(&self, range: std::ops::Range<usize>) {
        if let Backing::Map(m, _, file_backed) = &self.map {
            crate::release_range(m, *file_backed, range);
        }
    }

    /// Marks `range` of [`GgufFile::bytes`] as a part this process reads, so that the pages
    /// it maps stay within such parts (a rank of a distributed run). Nothing for a file read
    /// into memory.
    pub fn keep(&self, range: std::ops::Range<usize>) {
        if let Backing::Map(m, _, file_backed) = &self.map {
            crate::keep_range(m, *file_backed, range);
        }
    }

    /// Byte range of a tensor's data within [`GgufFile::bytes`].
    pub fn tensor_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let start = (self.data_offset + info.offset) as usize;
        start..start + info.size as usize
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn type_err(&self, key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
        GgufError::MetaType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: found.type_name(),
        }
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        }
    }

    /// An unsigned integer value; `Ok(None)` when absent, an error when of another type.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "unsigned integer", v)),
        }
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "number", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "string", v)),
        }
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "bool", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&MetaArray>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "array", v)),
        }
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A zero-copy view of a tensor's bytes.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.tensor_info(name)?;
        Some(self.view(info))
    }

    pub fn require_tensor(&self, name: &str) -> Result<TensorView<'_>, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.into(),
        })
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        // Bounds were checked against the file length in `parse`.
        let start = (self.data_offset + info.offset) as usize;
        TensorView {
            info,
            data: &self.map[start..start + info.size as usize],
        }
    }

    /// Every tensor, in file order.
    pub fn tensor_views(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.tensors.iter().map(|t| self.view(t))
    }
}
