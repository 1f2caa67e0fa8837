//! The floating-point types of the velocity network and its element-wise
//! kernels.
//!
//! [`Real`] is implemented for `f32` (the default network precision) and
//! `f64` (used by the gradient checks). Besides conversions it provides
//! branch-free polynomial approximations of `exp` and of `sin`/`cos` of
//! `2 pi u`, written so that loops over slices vectorise. The slice kernels
//! below are compiled twice (AVX2+FMA, baseline) and one version is
//! picked at run time; every version performs the same IEEE
//! operations in the same order on each element, so results do not depend on
//! how many elements a call processes.

use faer::{MatMut, MatRef};

/// A floating-point type the velocity network computes in (`f32` or `f64`).
pub trait Real:
    faer::traits::RealField
    + Copy
    + Default
    + Send
    + Sync
    + 'static
    + bytemuck::Pod
    + core::fmt::Debug
    + core::fmt::Display
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Converts from `f64` (rounding to nearest).
    fn from_f64(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// `exp(x)`, branch-free polynomial (about 1 ulp; saturates outside the
    /// finite range instead of returning 0 or infinity).
    fn exp_poly(self) -> Self;
    /// `(sin 2 pi u, cos 2 pi u)` for `u` in `[0, 1)`, branch-free polynomial.
    fn sincos_2pi(u: Self) -> (Self, Self);
    /// Square root (correctly rounded).
    fn sqrt(self) -> Self;
    /// The additive identity.
    const ZERO: Self;
    /// The multiplicative identity.
    const ONE: Self;
}

// The polynomial coefficients are the published Cephes values, kept with
// all their digits.
#[allow(clippy::excessive_precision)]
impl Real for f32 {
    const NAME: &'static str = "f32";
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn exp_poly(self) -> Self {
        // Cephes expf: exp(x) = 2^n exp(r), |r| <= ln2 / 2.
        let x = self.clamp(-87.3, 88.3);
        let fx = (x * core::f32::consts::LOG2_E).round_ties_even();
        let r = x - fx * 0.693_359_4 - fx * -2.121_944_4e-4;
        let z = r * r;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 1.666_666_5e-1)
            * r
            + 5.000_000_1e-1;
        let y = p * z + r + 1.0;
        // 2^fx without a float-to-int conversion (which does not vectorise
        // with Rust's saturating `as`): fx + 127 sits in the low mantissa
        // bits of fx + 2^23 + 127.
        y * f32::from_bits((fx + 8_388_735.0).to_bits() << 23)
    }
    #[inline(always)]
    fn sincos_2pi(u: Self) -> (Self, Self) {
        // Reduce to the nearest quarter turn, then Cephes sinf/cosf on
        // [-pi/4, pi/4].
        let q = (u * 4.0).round_ties_even();
        let x = (u - q * 0.25) * core::f32::consts::TAU;
        let z = x * x;
        let s = x + x * z * ((-1.951_529_6e-4 * z + 8.332_161e-3) * z - 1.666_665_5e-1);
        let c =
            1.0 - 0.5 * z + z * z * ((2.443_315_7e-5 * z - 1.388_731_6e-3) * z + 4.166_664_6e-2);
        quadrant((q + 8_388_608.0).to_bits(), s, c)
    }
}

#[allow(clippy::excessive_precision)]
impl Real for f64 {
    const NAME: &'static str = "f64";
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn exp_poly(self) -> Self {
        // Cephes exp: Pade form of exp(r), |r| <= ln2 / 2.
        let x = self.clamp(-708.0, 709.0);
        let fx = (x * core::f64::consts::LOG2_E).round_ties_even();
        let r = x - fx * 6.931_457_519_531_25e-1 - fx * 1.428_606_820_309_417_232_1e-6;
        let rr = r * r;
        let px = r
            * ((1.261_771_930_748_105_908_8e-4 * rr + 3.029_944_077_074_419_613e-2) * rr
                + 9.999_999_999_999_999_999_1e-1);
        let qx = ((3.001_985_051_386_644_550_4e-6 * rr + 2.524_483_403_496_841_041_9e-3) * rr
            + 2.272_655_482_081_550_287_7e-1)
            * rr
            + 2.0;
        let y = 1.0 + 2.0 * px / (qx - px);
        y * f64::from_bits((fx + 4_503_599_627_371_519.0).to_bits() << 52)
    }
    #[inline(always)]
    fn sincos_2pi(u: Self) -> (Self, Self) {
        let q = (u * 4.0).round_ties_even();
        let x = (u - q * 0.25) * core::f64::consts::TAU;
        let z = x * x;
        let sp = ((((1.589_623_015_765_465_680_6e-10 * z - 2.505_074_776_285_780_728_7e-8) * z
            + 2.755_731_362_138_572_452_1e-6)
            * z
            - 1.984_126_982_958_953_859_96e-4)
            * z
            + 8.333_333_333_322_118_588_8e-3)
            * z
            - 1.666_666_666_666_663_072_95e-1;
        let cp = ((((-1.135_853_652_138_768_173e-11 * z + 2.087_570_084_197_473_167_8e-9) * z
            - 2.755_731_417_929_673_881_1e-7)
            * z
            + 2.480_158_728_885_170_453_5e-5)
            * z
            - 1.388_888_888_887_305_641_16e-3)
            * z
            + 4.166_666_666_666_659_292_18e-2;
        let s = x + x * z * sp;
        let c = 1.0 - 0.5 * z + z * z * cp;
        quadrant((q + 4_503_599_627_370_496.0).to_bits() as u32, s, c)
    }
}

/// `(sin, cos)` of `x + q pi / 2` from `(sin x, cos x)`, branch-free (only
/// the two low bits of `q` matter).
#[inline(always)]
fn quadrant<T: Copy + core::ops::Neg<Output = T>>(q: u32, s: T, c: T) -> (T, T) {
    let q = q & 3;
    let (sv, cv) = if q & 1 != 0 { (c, s) } else { (s, c) };
    let sv = if q & 2 != 0 { -sv } else { sv };
    let cv = if q == 1 || q == 2 { -cv } else { cv };
    (sv, cv)
}

/// Defines a slice kernel compiled for AVX2+FMA and for the baseline target,
/// dispatched at run time. (AVX2 is the widest level whose target features
/// are stable at the crate's minimum Rust version; on cores that split
/// 512-bit operations in two it loses nothing.)
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$($T:ident: $bound:path),+>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name<$($T: $bound),+>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<$($T: $bound),+>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3<$($T: $bound),+>($($arg: $ty),*) $(-> $ret)? {
                    body::<$($T),+>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the required features were detected just above.
                    return unsafe { v3::<$($T),+>($($arg),*) };
                }
            }
            body::<$($T),+>($($arg),*)
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the required features were detected just above.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// The contiguous column `j` of a matrix with unit row stride.
#[inline(always)]
pub(crate) fn col_mut<'a, T>(m: &'a mut MatMut<'_, T>, j: usize) -> &'a mut [T] {
    m.rb_mut()
        .col_mut(j)
        .try_as_col_major_mut()
        .expect("internal matrices have unit row stride")
        .as_slice_mut()
}

/// The contiguous column `j` of a matrix with unit row stride.
#[inline(always)]
pub(crate) fn col_ref<'a, T>(m: &MatRef<'a, T>, j: usize) -> &'a [T] {
    m.col(j)
        .try_as_col_major()
        .expect("internal matrices have unit row stride")
        .as_slice()
}

use faer::prelude::ReborrowMut;

/// `z <- silu(z + bias_j)` column by column (inference).
pub(crate) fn bias_silu<T: Real>(mut z: MatMut<'_, T>, bias: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(zf), Some(bias)) = (as_f32_mat(z.rb_mut()), as_f32_slice(bias)) {
        if zf.nrows() < 8 && silu_avx2::available() {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { silu_avx2::bias_silu_few_rows(zf, None, bias) };
            return;
        }
        #[cfg(coreflow_avx512)]
        if silu_avx512::available() {
            // SAFETY: AVX-512F, AVX2 and FMA were detected.
            unsafe { silu_avx512::bias_silu(zf, None, bias) };
            return;
        }
        if silu_avx2::available() {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { silu_avx2::bias_silu(zf, None, bias) };
            return;
        }
    }
    bias_silu_generic(z, bias)
}

/// `z <- silu(z + bias_j)` and `d <- silu'(z + bias_j)` (training).
pub(crate) fn bias_silu_deriv<T: Real>(z: MatMut<'_, T>, d: MatMut<'_, T>, bias: &[T]) {
    let (mut z, mut d) = (z, d);
    #[cfg(target_arch = "x86_64")]
    if let (Some(zf), Some(df), Some(bias)) = (
        as_f32_mat(z.rb_mut()),
        as_f32_mat(d.rb_mut()),
        as_f32_slice(bias),
    ) {
        if zf.nrows() < 8 && silu_avx2::available() {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { silu_avx2::bias_silu_few_rows(zf, Some(df), bias) };
            return;
        }
        #[cfg(coreflow_avx512)]
        if silu_avx512::available() {
            // SAFETY: AVX-512F, AVX2 and FMA were detected.
            unsafe { silu_avx512::bias_silu(zf, Some(df), bias) };
            return;
        }
        if silu_avx2::available() {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { silu_avx2::bias_silu(zf, Some(df), bias) };
            return;
        }
    }
    bias_silu_deriv_generic(z, d, bias)
}

/// The same matrix typed as `f32` when `T` is `f32`.
#[cfg(target_arch = "x86_64")]
fn as_f32_mat<T: 'static>(m: MatMut<'_, T>) -> Option<MatMut<'_, f32>> {
    if core::any::TypeId::of::<T>() != core::any::TypeId::of::<f32>() {
        return None;
    }
    let (r, c, rs, cs) = (m.nrows(), m.ncols(), m.row_stride(), m.col_stride());
    // SAFETY: T is f32, so this is the same view with the same lifetime.
    Some(unsafe { MatMut::from_raw_parts_mut(m.as_ptr_mut() as *mut f32, r, c, rs, cs) })
}

/// The same slice typed as `f32` when `T` is `f32`.
#[cfg(target_arch = "x86_64")]
fn as_f32_slice<T: 'static>(s: &[T]) -> Option<&[f32]> {
    if core::any::TypeId::of::<T>() != core::any::TypeId::of::<f32>() {
        return None;
    }
    // SAFETY: T is f32.
    Some(unsafe { core::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
}

/// Clamp of the SiLU's argument before the exponential of the vector
/// kernels (`exp` of the clamped value stays a normal `f32`).
#[cfg(target_arch = "x86_64")]
const SILU_CLAMP: [f32; 2] = [-88.3, 87.3];

/// `ln 2` split in two for the exponential's argument reduction (Cephes).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::excessive_precision)]
const LN2_SPLIT: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];

/// Coefficients of the exponential's polynomial on the reduced argument
/// (Cephes `expf`), highest degree first.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::excessive_precision)]
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];

/// The SiLU's vector sequence, written once for every vector width: the
/// Cephes exponential of `-v` (clamp, argument reduction by the split
/// `ln 2`, the polynomial, the power of two by an exponent-field shift),
/// then the sigmoid by a reciprocal estimate (`rcp`) and one Newton step.
/// Each step is the same IEEE operation per lane at every width, so a
/// kernel gives the same bits as another when its `rcp` does; evaluates to
/// `(silu(v), sigmoid(v))`. Expanded inside `target_feature` functions.
#[cfg(target_arch = "x86_64")]
macro_rules! silu_sequence {
    (
        $v:expr,
        set1 = $set1:ident,
        min = $min:ident,
        max = $max:ident,
        round = $round:ident,
        mul = $mul:ident,
        add = $add:ident,
        fnmsub = $fnmsub:ident,
        fnmadd = $fnmadd:ident,
        fmadd = $fmadd:ident,
        to_int = $to_int:ident,
        shl = $shl:ident,
        to_float = $to_float:ident,
        rcp = $rcp:ident
    ) => {{
        let v = $v;
        // exp(x) at x = -v, with the negation folded into the reduction.
        let w = $min($max(v, $set1(SILU_CLAMP[0])), $set1(SILU_CLAMP[1]));
        let fx = $round::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>($mul(
            w,
            $set1(-core::f32::consts::LOG2_E),
        ));
        // r = x - fx C1 - fx C2 with x = -w.
        let r = $fnmsub(fx, $set1(LN2_SPLIT[0]), w);
        let r = $fnmadd(fx, $set1(LN2_SPLIT[1]), r);
        let mut p = $set1(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = $fmadd(p, r, $set1(*c));
        }
        let one = $set1(1.0);
        let y = $fmadd(p, $mul(r, r), $add(r, one));
        let pow2 = $to_float($shl::<23>($to_int($add(fx, $set1(8_388_735.0)))));
        let den = $fmadd(y, pow2, one);
        let rc = $rcp(den);
        let s = $mul(rc, $fnmadd(den, rc, $set1(2.0)));
        ($mul(v, s), s)
    }};
}

/// AVX2+FMA SiLU for `f32`: the same Cephes exponential as
/// [`Real::exp_poly`] (with fused multiply-adds) and the sigmoid's
/// reciprocal by `rcp_ps` plus one Newton step (relative error below 2^-22)
/// instead of a division, which bounds the generic kernel's throughput.
/// Tails go through a padded 8-lane buffer, so every element takes the same
/// instruction sequence whatever the batch size.
#[cfg(target_arch = "x86_64")]
pub(crate) mod silu_avx2 {
    use super::col_mut;
    use super::{EXP_POLY, LN2_SPLIT, SILU_CLAMP};
    use core::arch::x86_64::*;
    use faer::MatMut;

    pub(crate) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// `(silu(v), sigmoid(v))`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn silu(v: __m256) -> (__m256, __m256) {
        silu_sequence!(
            v,
            set1 = _mm256_set1_ps,
            min = _mm256_min_ps,
            max = _mm256_max_ps,
            round = _mm256_round_ps,
            mul = _mm256_mul_ps,
            add = _mm256_add_ps,
            fnmsub = _mm256_fnmsub_ps,
            fnmadd = _mm256_fnmadd_ps,
            fmadd = _mm256_fmadd_ps,
            to_int = _mm256_castps_si256,
            shl = _mm256_slli_epi32,
            to_float = _mm256_castsi256_ps,
            rcp = _mm256_rcp_ps
        )
    }

    /// `z <- silu(z + b_j)`, and `d <- silu'(z + b_j)` when given.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_silu(
        mut z: MatMut<'_, f32>,
        mut d: Option<MatMut<'_, f32>>,
        bias: &[f32],
    ) {
        for (j, &b) in bias.iter().enumerate().take(z.ncols()) {
            let zc = col_mut(&mut z, j);
            match d.as_mut() {
                None => column(zc, None, b),
                Some(d) => column(zc, Some(col_mut(d, j)), b),
            }
        }
    }

    /// [`bias_silu`] for batches of fewer than 8 rows: the column kernel
    /// would push every element through a padded 8-lane tail, so 8
    /// columns of one row are gathered into the lanes instead (the same
    /// operations per element, so the same bits).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_silu_few_rows(
        mut z: MatMut<'_, f32>,
        mut d: Option<MatMut<'_, f32>>,
        bias: &[f32],
    ) {
        let one = _mm256_set1_ps(1.0);
        let cols = z.ncols().min(bias.len());
        for i in 0..z.nrows() {
            let mut j0 = 0;
            while j0 < cols {
                let len = (cols - j0).min(8);
                let (mut zb, mut bb) = ([0f32; 8], [0f32; 8]);
                for t in 0..len {
                    zb[t] = z[(i, j0 + t)];
                    bb[t] = bias[j0 + t];
                }
                let v = _mm256_add_ps(_mm256_loadu_ps(zb.as_ptr()), _mm256_loadu_ps(bb.as_ptr()));
                let (a, sg) = silu(v);
                _mm256_storeu_ps(zb.as_mut_ptr(), a);
                for t in 0..len {
                    z[(i, j0 + t)] = zb[t];
                }
                if let Some(d) = d.as_mut() {
                    let gv = _mm256_mul_ps(sg, _mm256_fmadd_ps(v, _mm256_sub_ps(one, sg), one));
                    _mm256_storeu_ps(zb.as_mut_ptr(), gv);
                    for t in 0..len {
                        d[(i, j0 + t)] = zb[t];
                    }
                }
                j0 += len;
            }
        }
    }

    /// `zc <- silu(zc + b)` (and `dc <- silu'(zc + b)`) for one column.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn column(zc: &mut [f32], dc: Option<&mut [f32]>, b: f32) {
        let bv = _mm256_set1_ps(b);
        let one = _mm256_set1_ps(1.0);
        let n8 = zc.len() / 8 * 8;
        let (zm, zt) = zc.split_at_mut(n8);
        // Independent iterations: the out-of-order core overlaps them.
        match dc {
            None => {
                for c in zm.chunks_exact_mut(8) {
                    let v = _mm256_add_ps(_mm256_loadu_ps(c.as_ptr()), bv);
                    _mm256_storeu_ps(c.as_mut_ptr(), silu(v).0);
                }
                if !zt.is_empty() {
                    let mut buf = [0f32; 8];
                    buf[..zt.len()].copy_from_slice(zt);
                    let v = _mm256_add_ps(_mm256_loadu_ps(buf.as_ptr()), bv);
                    _mm256_storeu_ps(buf.as_mut_ptr(), silu(v).0);
                    zt.copy_from_slice(&buf[..zt.len()]);
                }
            }
            Some(dc) => {
                let (dm, dt) = dc.split_at_mut(n8);
                for (c, g) in zm.chunks_exact_mut(8).zip(dm.chunks_exact_mut(8)) {
                    let v = _mm256_add_ps(_mm256_loadu_ps(c.as_ptr()), bv);
                    let (a, s) = silu(v);
                    _mm256_storeu_ps(c.as_mut_ptr(), a);
                    // silu'(v) = s (1 + v (1 - s))
                    let gv = _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
                    _mm256_storeu_ps(g.as_mut_ptr(), gv);
                }
                if !zt.is_empty() {
                    let mut buf = [0f32; 8];
                    buf[..zt.len()].copy_from_slice(zt);
                    let v = _mm256_add_ps(_mm256_loadu_ps(buf.as_ptr()), bv);
                    let (a, s) = silu(v);
                    _mm256_storeu_ps(buf.as_mut_ptr(), a);
                    zt.copy_from_slice(&buf[..zt.len()]);
                    let gv = _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
                    _mm256_storeu_ps(buf.as_mut_ptr(), gv);
                    dt.copy_from_slice(&buf[..dt.len()]);
                }
            }
        }
    }
}

/// AVX-512 SiLU for `f32`: the operations of [`silu_avx2`] on 16 lanes,
/// with the reciprocal estimate taken by the AVX2 instruction on each
/// 8-lane half (AVX-512's `rcp14` rounds differently), so every element
/// gets the AVX2 kernel's bits and the choice of width changes no result.
/// Built with Rust 1.89 or later (`cfg(coreflow_avx512)`).
#[cfg(all(target_arch = "x86_64", coreflow_avx512))]
// Compiled only by Rust 1.89 or later (build.rs), which stabilised these
// intrinsics.
#[clippy::msrv = "1.89"]
pub(crate) mod silu_avx512 {
    use super::{col_mut, silu_avx2};
    use super::{EXP_POLY, LN2_SPLIT, SILU_CLAMP};
    use core::arch::x86_64::*;
    use faer::MatMut;

    pub(crate) fn available() -> bool {
        silu_avx2::available() && std::arch::is_x86_feature_detected!("avx512f")
    }

    /// The reciprocal estimate of the AVX2 kernel on each 8-lane half.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn rcp_halves(den: __m512) -> __m512 {
        let lo = _mm256_rcp_ps(_mm512_castps512_ps256(den));
        let hi = _mm256_rcp_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(den),
        )));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(lo)),
            _mm256_castps_pd(hi),
        ))
    }

    /// `(silu(v), sigmoid(v))`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn silu(v: __m512) -> (__m512, __m512) {
        silu_sequence!(
            v,
            set1 = _mm512_set1_ps,
            min = _mm512_min_ps,
            max = _mm512_max_ps,
            round = _mm512_roundscale_ps,
            mul = _mm512_mul_ps,
            add = _mm512_add_ps,
            fnmsub = _mm512_fnmsub_ps,
            fnmadd = _mm512_fnmadd_ps,
            fmadd = _mm512_fmadd_ps,
            to_int = _mm512_castps_si512,
            shl = _mm512_slli_epi32,
            to_float = _mm512_castsi512_ps,
            rcp = rcp_halves
        )
    }

    /// `z <- silu(z + b_j)`, and `d <- silu'(z + b_j)` when given.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn bias_silu(
        mut z: MatMut<'_, f32>,
        mut d: Option<MatMut<'_, f32>>,
        bias: &[f32],
    ) {
        for (j, &b) in bias.iter().enumerate().take(z.ncols()) {
            let zc = col_mut(&mut z, j);
            match d.as_mut() {
                None => column(zc, None, b),
                Some(d) => column(zc, Some(col_mut(d, j)), b),
            }
        }
    }

    /// 16 lanes at a time, the rest by the AVX2 kernel (the same bits).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn column(zc: &mut [f32], dc: Option<&mut [f32]>, b: f32) {
        let bv = _mm512_set1_ps(b);
        let one = _mm512_set1_ps(1.0);
        let n16 = zc.len() / 16 * 16;
        let (zm, zt) = zc.split_at_mut(n16);
        match dc {
            None => {
                for c in zm.chunks_exact_mut(16) {
                    let v = _mm512_add_ps(_mm512_loadu_ps(c.as_ptr()), bv);
                    _mm512_storeu_ps(c.as_mut_ptr(), silu(v).0);
                }
                silu_avx2::column(zt, None, b);
            }
            Some(dc) => {
                let (dm, dt) = dc.split_at_mut(n16);
                for (c, g) in zm.chunks_exact_mut(16).zip(dm.chunks_exact_mut(16)) {
                    let v = _mm512_add_ps(_mm512_loadu_ps(c.as_ptr()), bv);
                    let (a, s) = silu(v);
                    _mm512_storeu_ps(c.as_mut_ptr(), a);
                    // silu'(v) = s (1 + v (1 - s)), as in the AVX2 kernel.
                    let gv = _mm512_mul_ps(s, _mm512_fmadd_ps(v, _mm512_sub_ps(one, s), one));
                    _mm512_storeu_ps(g.as_mut_ptr(), gv);
                }
                silu_avx2::column(zt, Some(dt), b);
            }
        }
    }

    /// `z[i, j] <- silu(z[i, j] + bias_j)` for row-major rows of
    /// `bias.len()` (a multiple of 16) values.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn bias_silu_rows(z: &mut [f32], bias: &[f32]) {
        for row in z.chunks_exact_mut(bias.len()) {
            for (c, b) in row.chunks_exact_mut(16).zip(bias.chunks_exact(16)) {
                let v = _mm512_add_ps(_mm512_loadu_ps(c.as_ptr()), _mm512_loadu_ps(b.as_ptr()));
                _mm512_storeu_ps(c.as_mut_ptr(), silu(v).0);
            }
        }
    }
}

multiversion! {
    /// Portable `z <- silu(z + bias_j)`.
    fn bias_silu_generic<T: Real>(z: MatMut<'_, T>, bias: &[T]) {
        let mut z = z;
        for (j, &b) in bias.iter().enumerate().take(z.ncols()) {
            for v in col_mut(&mut z, j).iter_mut() {
                let x = *v + b;
                let s = T::ONE / (T::ONE + (-x).exp_poly());
                *v = x * s;
            }
        }
    }
}

multiversion! {
    /// Portable `z <- silu(z + bias_j)` and `d <- silu'(z + bias_j)`, with
    /// `silu'(x) = s (1 + x (1 - s))`, `s = sigmoid(x)`.
    fn bias_silu_deriv_generic<T: Real>(z: MatMut<'_, T>, d: MatMut<'_, T>, bias: &[T]) {
        let (mut z, mut d) = (z, d);
        for (j, &b) in bias.iter().enumerate().take(z.ncols()) {
            let zc = col_mut(&mut z, j);
            let dc = col_mut(&mut d, j);
            for (v, dv) in zc.iter_mut().zip(dc.iter_mut()) {
                let x = *v + b;
                let s = T::ONE / (T::ONE + (-x).exp_poly());
                *v = x * s;
                *dv = s * (T::ONE + x * (T::ONE - s));
            }
        }
    }
}

multiversion! {
    /// `g <- g * d` element-wise and `bias_grad_j <- sum_i g_ij`.
    pub(crate) fn mul_colsum<T: Real>(g: MatMut<'_, T>, d: MatRef<'_, T>, bias_grad: &mut [T]) {
        let mut g = g;
        for (j, bg) in bias_grad.iter_mut().enumerate().take(g.ncols()) {
            let gc = col_mut(&mut g, j);
            let dc = col_ref(&d, j);
            for (gv, dv) in gc.iter_mut().zip(dc.iter()) {
                *gv *= *dv;
            }
            *bg = lane_sum(gc);
        }
    }
}

multiversion! {
    /// `bias_grad_j <- sum_i g_ij`.
    pub(crate) fn colsum<T: Real>(g: MatRef<'_, T>, bias_grad: &mut [T]) {
        for (j, bg) in bias_grad.iter_mut().enumerate().take(g.ncols()) {
            *bg = lane_sum(col_ref(&g, j));
        }
    }
}

multiversion! {
    /// `z_ij <- z_ij + bias_j`.
    pub(crate) fn add_bias<T: Real>(z: MatMut<'_, T>, bias: &[T]) {
        let mut z = z;
        for (j, &b) in bias.iter().enumerate().take(z.ncols()) {
            for v in col_mut(&mut z, j).iter_mut() {
                *v += b;
            }
        }
    }
}

multiversion! {
    /// `dst <- src` converted element-wise.
    pub(crate) fn convert<A: Real, B: Real>(src: MatRef<'_, A>, dst: MatMut<'_, B>) {
        let mut dst = dst;
        for j in 0..src.ncols() {
            for (d, s) in col_mut(&mut dst, j).iter_mut().zip(col_ref(&src, j)) {
                *d = B::from_f64(s.to_f64());
            }
        }
    }
}

multiversion! {
    /// `dst <- x + a k` (formed in the type of `x`), converted.
    pub(crate) fn axpy_convert<A: Real, B: Real>(x: MatRef<'_, A>, a: A, k: MatRef<'_, A>, dst: MatMut<'_, B>) {
        let mut dst = dst;
        for j in 0..x.ncols() {
            let (xc, kc) = (col_ref(&x, j), col_ref(&k, j));
            for ((d, xv), kv) in col_mut(&mut dst, j).iter_mut().zip(xc).zip(kc) {
                *d = B::from_f64((*xv + a * *kv).to_f64());
            }
        }
    }
}

multiversion! {
    /// `dst_ij <- src_ij + bias_j`, converted.
    pub(crate) fn add_bias_convert<A: Real, B: Real>(src: MatRef<'_, A>, bias: &[A], dst: MatMut<'_, B>) {
        let mut dst = dst;
        for (j, &b) in bias.iter().enumerate().take(src.ncols()) {
            for (d, s) in col_mut(&mut dst, j).iter_mut().zip(col_ref(&src, j)) {
                *d = B::from_f64((*s + b).to_f64());
            }
        }
    }
}

multiversion! {
    /// With `f_ij = src_ij + bias_j` converted: `out <- f` and
    /// `acc <- base + c f` (`base` is `acc` itself when `None`).
    pub(crate) fn bias_store_combine<A: Real, B: Real>(
        src: MatRef<'_, A>,
        bias: &[A],
        out: MatMut<'_, B>,
        acc: MatMut<'_, B>,
        base: Option<MatRef<'_, B>>,
        c: B,
    ) {
        let (mut out, mut acc) = (out, acc);
        for (j, &b) in bias.iter().enumerate().take(src.ncols()) {
            let sc = col_ref(&src, j);
            let oc = col_mut(&mut out, j);
            let ac = col_mut(&mut acc, j);
            match &base {
                Some(m) => {
                    let bc = col_ref(m, j);
                    for (((o, a), s), b0) in oc.iter_mut().zip(ac.iter_mut()).zip(sc).zip(bc) {
                        let f = B::from_f64((*s + b).to_f64());
                        *o = f;
                        *a = *b0 + c * f;
                    }
                }
                None => {
                    for ((o, a), s) in oc.iter_mut().zip(ac.iter_mut()).zip(sc) {
                        let f = B::from_f64((*s + b).to_f64());
                        *o = f;
                        *a += c * f;
                    }
                }
            }
        }
    }
}

multiversion! {
    /// With `f_ij = src_ij + bias_j` converted: `x <- x + c (acc + f)`, or
    /// `x <- x + c f` without `acc`.
    pub(crate) fn bias_advance<A: Real, B: Real>(
        src: MatRef<'_, A>,
        bias: &[A],
        x: MatMut<'_, B>,
        acc: Option<MatRef<'_, B>>,
        c: B,
    ) {
        let mut x = x;
        for (j, &b) in bias.iter().enumerate().take(src.ncols()) {
            let sc = col_ref(&src, j);
            let xc = col_mut(&mut x, j);
            match &acc {
                Some(m) => {
                    let ac = col_ref(m, j);
                    for ((xv, s), a) in xc.iter_mut().zip(sc).zip(ac) {
                        *xv += c * (*a + B::from_f64((*s + b).to_f64()));
                    }
                }
                None => {
                    for (xv, s) in xc.iter_mut().zip(sc) {
                        *xv += c * B::from_f64((*s + b).to_f64());
                    }
                }
            }
        }
    }
}

/// Sum of a slice with 16 independent partial sums (vectorises; the order is
/// fixed by the slice length only).
#[inline(always)]
pub(crate) fn lane_sum<T: Real>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += *v;
        }
    }
    for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += *v;
    }
    let mut s = T::ZERO;
    for a in acc {
        s += a;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_poly_is_accurate() {
        let mut max32 = 0.0f64;
        let mut max64 = 0.0f64;
        let mut x = -80.0;
        while x < 80.0 {
            let e = libm::exp(x);
            max32 =
                max32.max(((x as f32).exp_poly() as f64 - libm::exp((x as f32) as f64)).abs() / e);
            max64 = max64.max((x.exp_poly() - e).abs() / e);
            x += 0.0137;
        }
        assert!(max32 < 3e-7, "f32 exp rel err {max32}");
        assert!(max64 < 5e-16, "f64 exp rel err {max64}");
        // Saturation instead of inf/0, NaN-free for huge arguments.
        assert!(1e4f32.exp_poly().is_finite() && (-1e4f32).exp_poly() > 0.0);
    }

    #[test]
    fn silu_kernels_are_accurate() {
        // 37 rows (a SIMD tail), 3 columns with different biases.
        let n = 37;
        let xs: Vec<f32> = (0..n * 3).map(|i| (i as f32 - 55.0) * 0.9).collect();
        let bias = [0.0f32, 0.25, -3.0];
        let mut z = xs.clone();
        let mut d = vec![0f32; n * 3];
        bias_silu_deriv(
            MatMut::from_column_major_slice_mut(&mut z, n, 3),
            MatMut::from_column_major_slice_mut(&mut d, n, 3),
            &bias,
        );
        let mut z2 = xs.clone();
        bias_silu(MatMut::from_column_major_slice_mut(&mut z2, n, 3), &bias);
        assert_eq!(z, z2);
        for j in 0..3 {
            for i in 0..n {
                let x = xs[i + j * n] as f64 + bias[j] as f64;
                let s = 1.0 / (1.0 + (-x).exp());
                let (a, g) = (x * s, s * (1.0 + x * (1.0 - s)));
                assert!(
                    (z[i + j * n] as f64 - a).abs() <= 3e-7 * (1.0 + a.abs()),
                    "silu({x})"
                );
                // 1 - s carries the rounding of s (one f32 ulp near 1), scaled by x.
                let tol = 3e-7 * (1.0 + g.abs()) + 1.2e-7 * x.abs();
                assert!((d[i + j * n] as f64 - g).abs() <= tol, "silu'({x})");
            }
        }
        let mut nan = vec![f32::NAN; 20];
        bias_silu(MatMut::from_column_major_slice_mut(&mut nan, 20, 1), &[0.0]);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn sincos_2pi_is_accurate() {
        let mut max32 = 0.0f64;
        let mut max64 = 0.0f64;
        for i in 0..10_000 {
            let u = i as f64 / 10_000.0;
            let (s, c) = f64::sincos_2pi(u);
            let a = core::f64::consts::TAU * u;
            max64 = max64
                .max((s - libm::sin(a)).abs())
                .max((c - libm::cos(a)).abs());
            let (s, c) = f32::sincos_2pi(u as f32);
            let a = core::f64::consts::TAU * (u as f32) as f64;
            max32 = max32
                .max((s as f64 - libm::sin(a)).abs())
                .max((c as f64 - libm::cos(a)).abs());
        }
        assert!(max32 < 3e-7, "f32 sincos err {max32}");
        assert!(max64 < 1e-15, "f64 sincos err {max64}");
    }
}
