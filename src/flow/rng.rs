//! Counter-based seeding and normal variates.
//!
//! Every random stream is a Xoshiro256++ generator whose 256-bit state is
//! four consecutive SplitMix64 outputs started from a 64-bit key that mixes a
//! seed and an index: the stream of sample number `k` under seed `s` is
//! [`stream`]`(s, k)` and depends on nothing else. Generated sets are thus
//! identical whatever batch size, chunking or thread count produced them.
//!
//! Normal variates use the Box–Muller transform: with `u1` in `(0, 1]` and
//! `u2` in `[0, 1)`, `r = sqrt(-2 ln u1)` and `(r cos 2 pi u2, r sin 2 pi u2)`
//! are two independent standard normals. [`fill_normal`] works in `f64` with
//! the `libm` functions (bitwise reproducible across platforms);
//! [`fill_normal_fast`] is the vectorised `f32` variant used for the training
//! noise, with 24-bit uniforms and polynomial `ln`, `sin` and `cos`.

use super::real::{multiversion, Real};
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// The generator behind every stream.
pub type Rng = Xoshiro256PlusPlus;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// One SplitMix64 step: advances `state` and returns the next output.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    mix64(*state)
}

/// The SplitMix64 output function (a bijective 64-bit mixer).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random stream number `index` of `seed`.
pub fn stream(seed: u64, index: u64) -> Rng {
    // Two rounds of mixing so that nearby (seed, index) pairs give unrelated
    // keys; the key then seeds SplitMix64, which fills the Xoshiro state.
    let mut state = mix64(mix64(seed ^ GOLDEN).wrapping_add(index.wrapping_mul(GOLDEN | 1)));
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    Rng::from_seed(bytes)
}

/// The stream of draw number `attempt` (>= 1) of sample `index` of `seed`,
/// for a sample that is drawn again (the flow block of a core model when a
/// draw leaves its support). Independent of every [`stream`] of any seed
/// (a keyed remix of the seed) and of the other attempts.
pub fn redraw_stream(seed: u64, index: u64, attempt: u32) -> Rng {
    const REDRAW_KEY: u64 = 0x7265_6472_6177_0000;
    stream(mix64(seed ^ mix64(REDRAW_KEY | attempt as u64)), index)
}

/// A uniform variate in `[0, 1)` with 53 random bits.
#[inline]
pub fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform integer in `0..n` (`n > 0`), by Lemire's multiply-shift with
/// rejection (unbiased).
#[inline]
pub fn below(rng: &mut Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = (rng.next_u64() as u128) * (n as u128);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Fills `out` with standard normal variates (Box–Muller in `f64`, `libm`).
pub fn fill_normal(rng: &mut Rng, out: &mut [f64]) {
    let mut pairs = out.chunks_exact_mut(2);
    for p in &mut pairs {
        let (a, b) = box_muller(rng);
        p[0] = a;
        p[1] = b;
    }
    if let [last] = pairs.into_remainder() {
        *last = box_muller(rng).0;
    }
}

#[inline]
fn box_muller(rng: &mut Rng) -> (f64, f64) {
    let u1 = ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let u2 = uniform(rng);
    let r = libm::sqrt(-2.0 * libm::log(u1));
    let (s, c) = libm::sincos(core::f64::consts::TAU * u2);
    (r * c, r * s)
}

/// Fills `out` with independent Rademacher variates (+1 or -1).
pub fn fill_rademacher(rng: &mut Rng, out: &mut [f64]) {
    for chunk in out.chunks_mut(64) {
        let bits = rng.next_u64();
        for (i, v) in chunk.iter_mut().enumerate() {
            *v = if (bits >> i) & 1 == 1 { 1.0 } else { -1.0 };
        }
    }
}

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

    fn moments(x: &[f64]) -> (f64, f64, f64, f64) {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let c = |p: i32| x.iter().map(|v| (v - m).powi(p)).sum::<f64>() / n;
        let v = c(2);
        (m, v, c(3) / v.powf(1.5), c(4) / (v * v))
    }

    #[test]
    fn streams_depend_on_seed_and_index_only() {
        let a = stream(7, 3).next_u64();
        assert_eq!(a, stream(7, 3).next_u64());
        assert_ne!(a, stream(7, 4).next_u64());
        assert_ne!(a, stream(8, 3).next_u64());
    }

    #[test]
    fn normals_have_standard_moments() {
        let n = 200_000;
        let mut x = vec![0.0; n];
        fill_normal(&mut stream(1, 0), &mut x);
        let (m, v, s, k) = moments(&x);
        assert!(
            m.abs() < 0.01 && (v - 1.0).abs() < 0.01 && s.abs() < 0.03 && (k - 3.0).abs() < 0.05
        );
        let mut y = vec![0f32; n + 1];
        fill_normal_fast(&mut stream(2, 0), &mut y);
        let y: Vec<f64> = y.iter().map(|v| *v as f64).collect();
        let (m, v, s, k) = moments(&y);
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

    #[test]
    fn below_is_in_range_and_uniform() {
        let mut rng = stream(3, 0);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[below(&mut rng, 7) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)));
    }
}
