//! Random numbers: counter-based streams and their variates.
//!
//! Every random stream is a Xoshiro256++ generator whose 256-bit state is
//! four consecutive SplitMix64 outputs started from a 64-bit key
//! ([`from_key`]). The key of a stream mixes a seed and an index: the
//! stream of sample number `k` under seed `s` is [`stream`]`(s, k)` and
//! depends on nothing else. Generated sets are thus identical whatever
//! batch size, chunking or thread count produced them.
//!
//! [`family_stream`]`(s, f, k)` is the derivation of the synthetic data sets
//! ([`crate::datasets`]): the key `h(h(h(s) ^ f) ^ k)` with `h` one SplitMix64
//! step. It is kept beside [`stream`] because the committed measurements on
//! those sets (BENCHMARKS.md) are of the data it gives.
//!
//! Normal variates use the Box–Muller transform ([`normal_pair`]): with `u1`
//! in `(0, 1]` and `u2` in `[0, 1)`, `r = sqrt(-2 ln u1)` and
//! `(r cos 2 pi u2, r sin 2 pi u2)` are two independent standard normals,
//! computed in `f64` with the `libm` functions (bitwise reproducible across
//! platforms). Bounded integers use Lemire's multiply-shift with rejection
//! ([`below`]).
//!
//! Gamma variates use Marsaglia and Tsang's squeeze-and-reject method
//! ([`gamma`]): for shape `k >= 1`, with `d = k - 1/3` and
//! `c = 1 / sqrt(9 d)`, a standard normal `x` and a uniform `u`, the value
//! `d v`, `v = (1 + c x)^3`, is accepted when `v > 0` and
//! `ln u < x^2 / 2 + d (1 - v + ln v)` (a cheap squeeze
//! `u < 1 - 0.0331 x^4` first); otherwise both are drawn again. Shapes
//! below 1 draw shape `k + 1` and multiply by `u^(1/k)`. The normal is the
//! first of a [`normal_pair`], the second discarded, so a variate uses a
//! whole number of Box-Muller pairs and depends only on the stream's
//! state. Chi-square with `nu` degrees of freedom is `2 gamma(nu / 2)`
//! ([`chi_square`]); a Student-t variate ([`student_t`]) is
//! `x / sqrt(chi2 / nu)`.
//!
//! [`from_key`]: crate::rng::from_key
//! [`stream`]: crate::rng::stream
//! [`family_stream`]: crate::rng::family_stream
//! [`normal_pair`]: crate::rng::normal_pair
//! [`below`]: crate::rng::below
//! [`gamma`]: crate::rng::gamma
//! [`chi_square`]: crate::rng::chi_square
//! [`student_t`]: crate::rng::student_t

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

/// The generator whose state is the next four SplitMix64 outputs from
/// `key` (the same generator as `Xoshiro256PlusPlus::seed_from_u64(key)`).
pub fn from_key(key: u64) -> Rng {
    let mut state = key;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    Rng::from_seed(bytes)
}

/// The random stream number `index` of `seed`.
pub fn stream(seed: u64, index: u64) -> Rng {
    // Two rounds of mixing so that nearby (seed, index) pairs give unrelated
    // keys.
    from_key(mix64(
        mix64(seed ^ GOLDEN).wrapping_add(index.wrapping_mul(GOLDEN | 1)),
    ))
}

/// Stream `index` of family `family` under `seed`, as the synthetic data
/// sets derive theirs (see the module docs): the key
/// `h(h(h(seed) ^ family) ^ index)` with `h(z)` the SplitMix64 output after
/// one step from `z`.
pub fn family_stream(seed: u64, family: u64, index: u64) -> Rng {
    let h = |z: u64| splitmix64(&mut { z });
    from_key(h(h(h(seed) ^ family) ^ index))
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
    normal_pair(u1, u2)
}

/// The Box–Muller pair `(r cos 2 pi u2, r sin 2 pi u2)`,
/// `r = sqrt(-2 ln u1)`, of `u1` in `(0, 1]` and `u2` in `[0, 1)`.
#[inline]
pub fn normal_pair(u1: f64, u2: f64) -> (f64, f64) {
    let r = libm::sqrt(-2.0 * libm::log(u1));
    let (s, c) = libm::sincos(core::f64::consts::TAU * u2);
    (r * c, r * s)
}

/// A gamma variate of shape `shape > 0` and scale 1 (mean and variance
/// `shape`), by Marsaglia and Tsang's method (module docs). Deterministic
/// given the stream's state; uses a variable number of its values.
pub fn gamma(rng: &mut Rng, shape: f64) -> f64 {
    debug_assert!(shape > 0.0 && shape.is_finite());
    if shape < 1.0 {
        let g = gamma(rng, shape + 1.0);
        let u = ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        return g * libm::pow(u, 1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / libm::sqrt(9.0 * d);
    loop {
        let x = box_muller(rng).0;
        let t = 1.0 + c * x;
        if t <= 0.0 {
            continue;
        }
        let v = t * t * t;
        // u in (0, 1]: ln u is finite.
        let u = ((rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let x2 = x * x;
        if u < 1.0 - 0.0331 * x2 * x2 || libm::log(u) < 0.5 * x2 + d * (1.0 - v + libm::log(v)) {
            return d * v;
        }
    }
}

/// A chi-square variate with `dof > 0` degrees of freedom: `2 gamma(dof / 2)`.
#[inline]
pub fn chi_square(rng: &mut Rng, dof: f64) -> f64 {
    2.0 * gamma(rng, 0.5 * dof)
}

/// A standard Student-t variate with `dof > 0` degrees of freedom
/// (`x / sqrt(chi2 / dof)`, `x` standard normal, `chi2` a chi-square with
/// `dof` degrees of freedom, both from `rng`): variance `dof / (dof - 2)`
/// for `dof > 2`.
pub fn student_t(rng: &mut Rng, dof: f64) -> f64 {
    let x = box_muller(rng).0;
    x / libm::sqrt(chi_square(rng, dof) / dof)
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
    }

    #[test]
    fn gamma_variates_have_the_moments_of_their_shape() {
        let n = 200_000;
        for (shape, key) in [
            (0.4, 5u64),
            (1.0, 6),
            (1.5, 7),
            (2.0, 8),
            (5.0, 9),
            (15.0, 10),
        ] {
            let mut r = stream(key, 0);
            let x: Vec<f64> = (0..n).map(|_| gamma(&mut r, shape)).collect();
            assert!(x.iter().all(|v| v.is_finite() && *v >= 0.0));
            let (m, v, s, _) = moments(&x);
            // Mean k, variance k, skewness 2 / sqrt(k).
            let se = (shape / n as f64).sqrt();
            assert!((m - shape).abs() < 5.0 * se, "shape {shape}: mean {m}");
            assert!(
                (v / shape - 1.0).abs() < 0.03,
                "shape {shape}: variance {v}"
            );
            let skew = 2.0 / shape.sqrt();
            assert!(
                (s - skew).abs() < 0.06 * skew.max(1.0),
                "shape {shape}: skewness {s}"
            );
        }
    }

    #[test]
    fn student_t_variates_have_the_analytic_quantiles_and_variance() {
        // (dof, 75 % quantile, 95 % quantile, 99 % quantile), from tables.
        let table = [
            (3.0, 0.764892, 2.353363, 4.540703),
            (4.0, 0.740697, 2.131847, 3.746947),
            (6.0, 0.717558, 1.943180, 3.142668),
            (10.0, 0.699812, 1.812461, 2.763769),
            (30.0, 0.682756, 1.697261, 2.457262),
        ];
        let n = 400_000;
        for (k, &(dof, q75, q95, q99)) in table.iter().enumerate() {
            let mut r = stream(20 + k as u64, 3);
            let mut x: Vec<f64> = (0..n).map(|_| student_t(&mut r, dof)).collect();
            let mean = x.iter().sum::<f64>() / n as f64;
            assert!(mean.abs() < 0.02, "dof {dof}: mean {mean}");
            if dof > 4.0 {
                // Finite fourth moment: the sample variance is reliable.
                let v = x.iter().map(|a| a * a).sum::<f64>() / n as f64;
                let want = dof / (dof - 2.0);
                assert!(
                    (v / want - 1.0).abs() < 0.03,
                    "dof {dof}: variance {v} vs {want}"
                );
            }
            x.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let q = |p: f64| x[(p * n as f64) as usize];
            for (p, want, tol) in [(0.75, q75, 0.01), (0.95, q95, 0.02), (0.99, q99, 0.06)] {
                assert!(
                    (q(p) - want).abs() < tol * want,
                    "dof {dof}: {p} quantile {} vs {want}",
                    q(p)
                );
                assert!(
                    (q(1.0 - p) + want).abs() < tol * want,
                    "dof {dof}: {} quantile {} vs {}",
                    1.0 - p,
                    q(1.0 - p),
                    -want
                );
            }
        }
    }

    #[test]
    fn gamma_draws_depend_on_the_stream_only() {
        let a: Vec<u64> = {
            let mut r = stream(4, 2);
            (0..100).map(|_| student_t(&mut r, 3.0).to_bits()).collect()
        };
        let mut r = stream(4, 2);
        let b: Vec<u64> = (0..100).map(|_| student_t(&mut r, 3.0).to_bits()).collect();
        assert_eq!(a, b);
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

    #[test]
    fn keys_seed_as_rand_xoshiro_does() {
        for key in [0, 1, 42, u64::MAX] {
            let mut a = from_key(key);
            let mut b = Xoshiro256PlusPlus::seed_from_u64(key);
            assert!((0..8).all(|_| a.next_u64() == b.next_u64()));
        }
    }

    #[test]
    fn family_streams_are_those_of_the_data_sets() {
        // The derivation the synthetic data sets were measured with.
        fn h(mut z: u64) -> u64 {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        for (seed, family, index) in [(0, 1, 0), (42, 2, 7), (u64::MAX, 6, 1 << 40)] {
            let mut a = family_stream(seed, family, index);
            let mut b = Xoshiro256PlusPlus::seed_from_u64(h(h(h(seed) ^ family) ^ index));
            assert!((0..8).all(|_| a.next_u64() == b.next_u64()));
        }
    }

    #[test]
    fn normal_pairs_match_separate_sin_and_cos() {
        // `sincos` gives bitwise the values of `sin` and `cos` (the data
        // sets' normals were computed with the separate functions).
        let mut r = stream(9, 0);
        for _ in 0..200_000 {
            let (u1, u2) = (1.0 - uniform(&mut r), uniform(&mut r));
            let (a, b) = normal_pair(u1, u2);
            let rad = libm::sqrt(-2.0 * libm::log(u1));
            let t = 2.0 * core::f64::consts::PI * u2;
            assert_eq!(a.to_bits(), (rad * libm::cos(t)).to_bits());
            assert_eq!(b.to_bits(), (rad * libm::sin(t)).to_bits());
        }
    }
}
