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
