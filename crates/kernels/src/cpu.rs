//! The instruction set, detected once at run time.

use std::sync::OnceLock;

/// Which implementation of the dot-product kernels to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable reference code (the scalar twins every SIMD kernel is tested against).
    Scalar,
    /// aarch64 Advanced SIMD (always present on aarch64).
    Neon,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 kernels using AVX-512 VNNI's `vpdpbusd` on 256-bit vectors (AVX512F/BW/VL + VNNI).
    Avx512Vnni,
    /// The above plus AVX-512 VBMI's byte permutes (`vpermt2b`) and VBMI2's byte compress
    /// (`vpcompressb`; Ice Lake, Zen 4 and later): one-token kernels that read each row as one
    /// stream of 64-byte loads, and the sparse kernels (which also count mask bits with
    /// `popcnt`, present wherever these are).
    Avx512Vbmi,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "NEON",
            Isa::Avx2 => "AVX2",
            Isa::Avx512Vnni => "AVX512-VNNI",
            Isa::Avx512Vbmi => "AVX512-VBMI",
        }
    }

    /// Every ISA this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        let best = detect();
        let all: &[Isa] = if cfg!(target_arch = "aarch64") {
            &[Isa::Scalar, Isa::Neon]
        } else {
            &[Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512Vbmi]
        };
        all.iter().copied().filter(|i| *i <= best).collect()
    }
}

/// The best ISA of this CPU, detected once. `TUILI_ISA=scalar|avx2|avx512vnni` caps it (for
/// comparisons).
pub fn detect() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let hw = hardware();
        match std::env::var("TUILI_ISA").ok().as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") => hw.min(Isa::Avx2),
            Some("avx512vnni") => hw.min(Isa::Avx512Vnni),
            _ => hw,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn hardware() -> Isa {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let vnni = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni");
    let vbmi = is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("avx512vbmi2")
        && is_x86_feature_detected!("popcnt");
    if vnni && vbmi {
        Isa::Avx512Vbmi
    } else if vnni {
        Isa::Avx512Vnni
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(target_arch = "aarch64")]
fn hardware() -> Isa {
    Isa::Neon
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn hardware() -> Isa {
    Isa::Scalar
}
