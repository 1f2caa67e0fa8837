//! Training noise: standard normals in `f32` precision, fast.
//!
//! The Box–Muller transform of [`crate::rng`] on 24-bit uniforms, with
//! polynomial `ln`, `sin` and `cos`, vectorised: the flow draws one base
//! point per training row and step, so these draws are a visible share of
//! a training step.

use super::real::{multiversion, Real};
use crate::rng::Rng;
use rand_xoshiro::rand_core::RngCore;

/// Fills `out` with standard normal variates in `f32` precision, fast:
/// raw 64-bit draws in blocks, then a vectorised Box–Muller transform. The
/// two normals of a pair go to the first and the second half of each block.
pub fn fill_normal_fast<T: Real>(rng: &mut Rng, out: &mut [T]) {
    const BLOCK: usize = 128;
    let mut raw = [0u64; BLOCK / 2];
    let mut vals = [0f32; BLOCK];
    for chunk in out.chunks_mut(BLOCK) {
        let pairs = chunk.len().div_ceil(2);
        for r in raw[..pairs].iter_mut() {
            *r = rng.next_u64();
        }
        box_muller_f32(&raw[..pairs], &mut vals[..2 * pairs]);
        for (o, v) in chunk.iter_mut().zip(vals.iter()) {
            *o = T::from_f64(*v as f64);
        }
    }
}

multiversion! {
    /// `out[i], out[n + i]` = the Box–Muller pair of `raw[i]` (`n = raw.len()`).
    fn box_muller_f32(raw: &[u64], out: &mut [f32]) {
        let n = raw.len();
        let (lo, hi) = out.split_at_mut(n);
        for ((r, a), b) in raw.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
            let u1 = (((*r >> 40) as u32 + 1) as f32) * (1.0 / (1u32 << 24) as f32);
            let u2 = (((*r >> 8) as u32 & 0x00FF_FFFF) as f32) * (1.0 / (1u32 << 24) as f32);
            let rad = (-2.0 * ln_f32(u1)).sqrt();
            let (s, c) = f32::sincos_2pi(u2);
            *a = rad * c;
            *b = rad * s;
        }
    }
}

/// Natural logarithm of a positive normal `f32` (Cephes logf, branch-free).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn ln_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let mut m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000); // [0.5, 1)
    let small = m < core::f32::consts::FRAC_1_SQRT_2;
    e -= small as i32;
    m = if small { m + m - 1.0 } else { m - 1.0 };
    let ef = e as f32;
    let z = m * m;
    let mut y = ((((((((7.037_683_6e-2 * m - 1.151_461e-1) * m + 1.167_699_9e-1) * m
        - 1.242_014_1e-1)
        * m
        + 1.424_932_3e-1)
        * m
        - 1.666_805_7e-1)
        * m
        + 2.000_071_4e-1)
        * m
        - 2.499_999_4e-1)
        * m
        + 3.333_333_1e-1)
        * m
        * z;
    y += -2.121_944_4e-4 * ef;
    y += -0.5 * z;
    m + y + 0.693_359_4 * ef
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn normals_have_standard_moments() {
        let n = 200_000;
        let mut y = vec![0f32; n + 1];
        fill_normal_fast(&mut stream(2, 0), &mut y);
        let y: Vec<f64> = y.iter().map(|v| *v as f64).collect();
        let len = y.len() as f64;
        let m = y.iter().sum::<f64>() / len;
        let c = |p: i32| y.iter().map(|v| (v - m).powi(p)).sum::<f64>() / len;
        let v = c(2);
        let (s, k) = (c(3) / v.powf(1.5), c(4) / (v * v));
        assert!(
            m.abs() < 0.01 && (v - 1.0).abs() < 0.01 && s.abs() < 0.03 && (k - 3.0).abs() < 0.05
        );
    }

    #[test]
    fn ln_f32_is_accurate() {
        let mut worst = 0.0f64;
        for i in 1..=(1 << 16) {
            let x = i as f32 / (1 << 16) as f32;
            let l = (x as f64).ln();
            worst = worst.max((ln_f32(x) as f64 - l).abs() / l.abs().max(1.0));
        }
        assert!(worst < 2e-7, "{worst}");
    }
}
