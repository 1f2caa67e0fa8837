//! Synthetic data sets (DESIGN.md section 7), missingness masks and a planted
//! low-rank generator with its ground truth.
//!
//! Coordinates are `y_j = j / (m - 1)` down the rows and `x_k = k / (n - 1)`
//! across the columns (0.5 for a single row or column), and
//! `g(t; c, w) = exp(-(t - c)² / (2 w²))`. Every set first fixes a palette
//! from its seed, then draws its samples; additive noise is `N(0, noise²)`
//! per entry (`noise = 0.01` by default).
//!
//! - **blobs**: 8 centres in `[0.15, 0.85]²`, `w = 0.06`. A sample picks
//!   `K ~ U{1..4}` distinct centres with amplitudes `a_p ~ U[0.5, 1.5]`:
//!   `X = sum_p a_p g(y; cy_p) g(x; cx_p)^T`.
//! - **bands**: 10 row positions in `[0.1, 0.9]` and 3 column envelopes
//!   (constant 1, linear ramp `x`, cosine bump `(1 - cos 2 pi x) / 2`). A
//!   sample has 1-3 horizontal bands at distinct positions `c`, each the
//!   smooth box `b(y) = (tanh((y - c + 0.04) / 0.01) - tanh((y - c - 0.04) / 0.01)) / 2`
//!   times one envelope, amplitude `U[0.5, 1.5]`.
//! - **waves**: frequency pairs `(w, v) in {(1, 2), (2, 1), (3, 3)}`,
//!   `X = sum_f A_f sin(2 pi w_f y + phi_f) sin(2 pi v_f x + psi_f)^T` with
//!   phases `U[0, 2 pi)` and `A_f ~ U[0.5, 1]`. Every sample lies in the span of
//!   `{sin, cos}(2 pi w y)` (6 row directions) and of `{sin, cos}(2 pi v x)`
//!   (6 column directions): the set has rank 6 on each side, and its cores lie
//!   on a torus.
//! - **crosshatch**: 8 row and 8 column line positions in `[0.1, 0.9]`; each
//!   line is on with probability 0.3 with intensity `U[0.5, 1]` and profile
//!   `g` with `w = 0.01`: `X = sum_h a_h g(y; c_h) 1^T + sum_v a_v 1 g(x; c_v)^T`.
//!
//! Randomness: [`Rng`] draws from the streams of [`crate::rng`]
//! ([`rng::family_stream`]), xoshiro256++ with Box–Muller normals and `libm`
//! transcendentals, so the same seed gives bitwise the same data on every
//! platform. Sample `i` draws from its own stream derived from `(seed, i)`:
//! the first `k` samples do not depend on `count`, and generation runs on any
//! number of threads with the same result.
//!
//! All generators return owned C-order `(count, rows, cols)` buffers
//! ([`MatrixSet`]; masks as `Vec<u8>` with the same layout, 1 = observed).
//!
//! [`Rng`]: crate::rng::Rng

use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{gemm, resolve_threads, retract_qr, retract_qr_scratch, MemBuffer, MemStack};
use crate::rng;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand_xoshiro::rand_core::RngCore;
use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

// ---------------------------------------------------------------------------
// Random numbers

/// Stream domains, so that one user seed drives unrelated draws.
mod domain {
    pub const PALETTE: u64 = 1;
    pub const SAMPLES: u64 = 2;
    pub const MCAR: u64 = 3;
    pub const BLOCKS: u64 = 4;
    pub const PLANTED_TRUTH: u64 = 5;
    pub const PLANTED_SAMPLES: u64 = 6;
}

/// A seeded generator: the [`crate::rng`] streams with uniform, integer and
/// standard normal draws (Box–Muller, both values of each pair used).
#[derive(Clone, Debug)]
pub struct Rng {
    inner: rng::Rng,
    spare: Option<f64>,
}

impl Rng {
    /// A generator seeded from `seed` (through SplitMix64, as
    /// `Xoshiro256PlusPlus::seed_from_u64`).
    pub fn seed_from_u64(seed: u64) -> Self {
        Self {
            inner: rng::from_key(seed),
            spare: None,
        }
    }

    /// Stream `index` of family `family` under `seed`
    /// ([`rng::family_stream`]): statistically independent generators for
    /// the pieces of one seeded computation (e.g. one stream per sample).
    pub fn stream(seed: u64, family: u64, index: u64) -> Self {
        Self {
            inner: rng::family_stream(seed, family, index),
            spare: None,
        }
    }

    /// 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        rng::uniform(&mut self.inner)
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` without modulo bias (Lemire's method).
    /// Panics when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below: empty range");
        rng::below(&mut self.inner, n)
    }

    /// A standard normal `N(0, 1)`.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - U is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let (c, s) = rng::normal_pair(u1, u2);
        self.spare = Some(s);
        c
    }

    /// Fills `out` with standard normals.
    pub fn fill_normal(&mut self, out: &mut [f64]) {
        for x in out {
            *x = self.normal();
        }
    }
}

// ---------------------------------------------------------------------------
// Owned sets

/// An owned set of matrices in C order `(count, rows, cols)`.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixSet {
    /// The values, matrix `i` entry `(r, c)` at `(i * rows + r) * cols + c`.
    pub data: Vec<f64>,
    /// Number of matrices.
    pub count: usize,
    /// Rows of each matrix.
    pub rows: usize,
    /// Columns of each matrix.
    pub cols: usize,
}

impl MatrixSet {
    /// The set as a strided batch view.
    pub fn batch(&self) -> MatrixBatch<'_> {
        MatrixBatch::from_c_order(&self.data, self.count, self.rows, self.cols)
            .expect("a MatrixSet's buffer matches its shape")
    }
    /// The set as a batch view with an observation mask of the same layout.
    pub fn batch_with_mask<'a>(&'a self, mask: &'a [u8]) -> Result<MatrixBatch<'a>> {
        self.batch().with_mask(mask)
    }
    /// Matrix `i`. Panics if `i >= count`.
    pub fn sample(&self, i: usize) -> MatRef<'_, f64> {
        let len = self.rows * self.cols;
        MatRef::from_row_major_slice(&self.data[i * len..(i + 1) * len], self.rows, self.cols)
    }
}

/// `count * rows * cols`, refusing empty matrices and overflow.
fn checked_len(count: usize, rows: usize, cols: usize, what: &str) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Err(Error::shape(format!(
            "{what}: matrices must have at least one row and one column (got {rows} x {cols})"
        )));
    }
    count
        .checked_mul(rows)
        .and_then(|x| x.checked_mul(cols))
        .ok_or_else(|| {
            Error::shape(format!(
                "{what}: {count} x {rows} x {cols} elements overflow the address space"
            ))
        })
}

/// Fills `data`, made of consecutive samples of `len` elements, by calling
/// `f(i, sample_i)` on up to `threads` threads (contiguous runs of samples).
fn fill_samples<T: Send>(
    data: &mut [T],
    len: usize,
    threads: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let count = data.len() / len.max(1);
    let threads = resolve_threads(threads).min(count).max(1);
    if threads == 1 {
        for (i, s) in data.chunks_exact_mut(len).enumerate() {
            f(i, s);
        }
        return;
    }
    let per = count.div_ceil(threads);
    std::thread::scope(|sc| {
        for (t, run) in data.chunks_mut(per * len).enumerate() {
            let f = &f;
            sc.spawn(move || {
                for (k, s) in run.chunks_exact_mut(len).enumerate() {
                    f(t * per + k, s);
                }
            });
        }
    });
}

/// Grid coordinates `j / (len - 1)` (0.5 for a single point).
fn grid(len: usize) -> Vec<f64> {
    if len == 1 {
        return vec![0.5];
    }
    (0..len).map(|j| j as f64 / (len - 1) as f64).collect()
}

#[inline]
fn bump(t: f64, c: f64, w: f64) -> f64 {
    let d = (t - c) / w;
    libm::exp(-0.5 * d * d)
}

/// `k` distinct indices of `0..n` in random order (partial Fisher–Yates).
fn choose_distinct(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for p in 0..k {
        let q = p + rng.below((n - p) as u64) as usize;
        idx.swap(p, q);
    }
    idx.truncate(k);
    idx
}

/// Adds `noise * N(0, 1)` to every entry.
fn add_noise(rng: &mut Rng, noise: f64, out: &mut [f64]) {
    if noise > 0.0 {
        for v in out {
            *v += noise * rng.normal();
        }
    }
}

// ---------------------------------------------------------------------------
// The four synthetic sets

/// The synthetic data sets of DESIGN.md section 7.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Sums of 1-4 Gaussian blobs from a palette of 8 centres.
    Blobs,
    /// 1-3 horizontal bands, each modulated by one of 3 column envelopes.
    Bands,
    /// Three separable sine waves with random phases (rank 6 per side).
    Waves,
    /// Random horizontal and vertical lines from a palette of 8 + 8.
    Crosshatch,
}

/// Size, seed and noise of a synthetic set.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct DatasetSpec {
    /// Number of matrices (default 1000).
    pub count: usize,
    /// Rows of each matrix (default 200).
    pub rows: usize,
    /// Columns of each matrix (default 200).
    pub cols: usize,
    /// Standard deviation of the additive Gaussian noise (default 0.01).
    pub noise: f64,
    /// Seed of the palette and of the samples.
    pub seed: u64,
    /// Worker threads (0 = all cores); the data do not depend on it.
    pub threads: usize,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            count: 1000,
            rows: 200,
            cols: 200,
            noise: 0.01,
            seed: 0,
            threads: 0,
        }
    }
}

impl DatasetSpec {
    /// `count` matrices of `rows x cols` from `seed`, default noise.
    pub fn new(count: usize, rows: usize, cols: usize, seed: u64) -> Self {
        Self {
            count,
            rows,
            cols,
            seed,
            ..Self::default()
        }
    }
    /// The same spec with another noise level.
    pub fn with_noise(mut self, noise: f64) -> Self {
        self.noise = noise;
        self
    }
}

/// What a set fixes from its seed before drawing samples.
enum Palette {
    Blobs([(f64, f64); 8]),
    Bands([f64; 10]),
    Waves,
    Crosshatch([f64; 8], [f64; 8]),
}

const BLOB_WIDTH: f64 = 0.06;
const BAND_HALF_WIDTH: f64 = 0.04;
const BAND_EDGE: f64 = 0.01;
const LINE_WIDTH: f64 = 0.01;
const LINE_PROBABILITY: f64 = 0.3;
const WAVE_FREQUENCIES: [(f64, f64); 3] = [(1.0, 2.0), (2.0, 1.0), (3.0, 3.0)];

impl Dataset {
    /// The four sets, in the paper's order.
    pub const ALL: [Dataset; 4] = [
        Dataset::Blobs,
        Dataset::Bands,
        Dataset::Waves,
        Dataset::Crosshatch,
    ];

    /// The set's name: `"blobs"`, `"bands"`, `"waves"` or `"crosshatch"`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Blobs => "blobs",
            Dataset::Bands => "bands",
            Dataset::Waves => "waves",
            Dataset::Crosshatch => "crosshatch",
        }
    }

    /// The set called `name` (ASCII case ignored).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "name: unknown data set {name:?} (expected blobs, bands, waves or crosshatch)"
                ))
            })
    }

    fn id(self) -> u64 {
        self as u64
    }

    fn palette(self, seed: u64) -> Palette {
        let mut rng = Rng::stream(seed, domain::PALETTE, self.id());
        match self {
            Dataset::Blobs => Palette::Blobs(std::array::from_fn(|_| {
                let cy = rng.uniform_in(0.15, 0.85);
                (cy, rng.uniform_in(0.15, 0.85))
            })),
            Dataset::Bands => Palette::Bands(std::array::from_fn(|_| rng.uniform_in(0.1, 0.9))),
            Dataset::Waves => Palette::Waves,
            Dataset::Crosshatch => {
                let rows = std::array::from_fn(|_| rng.uniform_in(0.1, 0.9));
                let cols = std::array::from_fn(|_| rng.uniform_in(0.1, 0.9));
                Palette::Crosshatch(rows, cols)
            }
        }
    }

    /// Draws the set described by `spec`.
    pub fn generate(self, spec: &DatasetSpec) -> Result<MatrixSet> {
        let (count, m, n) = (spec.count, spec.rows, spec.cols);
        let total = checked_len(count, m, n, "spec")?;
        if !(spec.noise.is_finite() && spec.noise >= 0.0) {
            return Err(Error::invalid(format!(
                "spec.noise: {} is not a finite non-negative standard deviation",
                spec.noise
            )));
        }
        let palette = self.palette(spec.seed);
        let (y, x) = (grid(m), grid(n));
        let mut data = vec![0.0; total];
        fill_samples(&mut data, m * n, spec.threads, |i, out| {
            let family = domain::SAMPLES ^ (self.id() << 8);
            let mut rng = Rng::stream(spec.seed, family, i as u64);
            draw_sample(
                &palette,
                &mut rng,
                &y,
                &x,
                MatMut::from_row_major_slice_mut(out, m, n),
            );
            add_noise(&mut rng, spec.noise, out);
        });
        Ok(MatrixSet {
            data,
            count,
            rows: m,
            cols: n,
        })
    }
}

/// `out += a * col row^T`.
fn add_outer(mut out: MatMut<'_, f64>, a: f64, col: &[f64], row: &[f64]) {
    for (r, &cy) in col.iter().enumerate() {
        let s = a * cy;
        if s != 0.0 {
            for (c, &rx) in row.iter().enumerate() {
                out[(r, c)] += s * rx;
            }
        }
    }
}

/// The noiseless part of one sample (out starts at zero).
fn draw_sample(palette: &Palette, rng: &mut Rng, y: &[f64], x: &[f64], mut out: MatMut<'_, f64>) {
    match palette {
        Palette::Blobs(centres) => {
            let k = 1 + rng.below(4) as usize;
            for p in choose_distinct(rng, centres.len(), k) {
                let a = rng.uniform_in(0.5, 1.5);
                let (cy, cx) = centres[p];
                let gy: Vec<f64> = y.iter().map(|&t| bump(t, cy, BLOB_WIDTH)).collect();
                let gx: Vec<f64> = x.iter().map(|&t| bump(t, cx, BLOB_WIDTH)).collect();
                add_outer(out.as_mut(), a, &gy, &gx);
            }
        }
        Palette::Bands(rows) => {
            let k = 1 + rng.below(3) as usize;
            for p in choose_distinct(rng, rows.len(), k) {
                let envelope = rng.below(3);
                let a = rng.uniform_in(0.5, 1.5);
                let c = rows[p];
                let by: Vec<f64> = y
                    .iter()
                    .map(|&t| {
                        0.5 * (libm::tanh((t - c + BAND_HALF_WIDTH) / BAND_EDGE)
                            - libm::tanh((t - c - BAND_HALF_WIDTH) / BAND_EDGE))
                    })
                    .collect();
                let ex: Vec<f64> = x
                    .iter()
                    .map(|&t| match envelope {
                        0 => 1.0,
                        1 => t,
                        _ => 0.5 * (1.0 - libm::cos(2.0 * PI * t)),
                    })
                    .collect();
                add_outer(out.as_mut(), a, &by, &ex);
            }
        }
        Palette::Waves => {
            for (w, v) in WAVE_FREQUENCIES {
                let phi = rng.uniform_in(0.0, 2.0 * PI);
                let psi = rng.uniform_in(0.0, 2.0 * PI);
                let a = rng.uniform_in(0.5, 1.0);
                let sy: Vec<f64> = y
                    .iter()
                    .map(|&t| libm::sin(2.0 * PI * w * t + phi))
                    .collect();
                let sx: Vec<f64> = x
                    .iter()
                    .map(|&t| libm::sin(2.0 * PI * v * t + psi))
                    .collect();
                add_outer(out.as_mut(), a, &sy, &sx);
            }
        }
        Palette::Crosshatch(rows, cols) => {
            // Every line consumes the same two draws, on or off, so the
            // stream layout does not depend on earlier outcomes.
            let ones_x = vec![1.0; x.len()];
            let ones_y = vec![1.0; y.len()];
            for &c in rows {
                let on = rng.uniform() < LINE_PROBABILITY;
                let a = rng.uniform_in(0.5, 1.0);
                if on {
                    let g: Vec<f64> = y.iter().map(|&t| bump(t, c, LINE_WIDTH)).collect();
                    add_outer(out.as_mut(), a, &g, &ones_x);
                }
            }
            for &c in cols {
                let on = rng.uniform() < LINE_PROBABILITY;
                let a = rng.uniform_in(0.5, 1.0);
                if on {
                    let g: Vec<f64> = x.iter().map(|&t| bump(t, c, LINE_WIDTH)).collect();
                    add_outer(out.as_mut(), a, &ones_y, &g);
                }
            }
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s)
    }
}

// ---------------------------------------------------------------------------
// Missingness masks

fn check_fraction(x: f64, what: &str) -> Result<()> {
    if !(0.0..=1.0).contains(&x) {
        return Err(Error::invalid(format!(
            "{what}: {x} is not a fraction in [0, 1]"
        )));
    }
    Ok(())
}

/// An MCAR mask: each entry independently missing (0) with probability
/// `rate`, observed (1) otherwise. C-order `(count, rows, cols)`.
pub fn mcar_mask(count: usize, rows: usize, cols: usize, rate: f64, seed: u64) -> Result<Vec<u8>> {
    let total = checked_len(count, rows, cols, "mask")?;
    check_fraction(rate, "rate")?;
    let mut mask = vec![1u8; total];
    fill_samples(&mut mask, rows * cols, 0, |i, out| {
        let mut rng = Rng::stream(seed, domain::MCAR, i as u64);
        for v in out {
            *v = u8::from(rng.uniform() >= rate);
        }
    });
    Ok(mask)
}

/// A block mask: sample `i` loses a fraction `f_i ~ U[min_fraction,
/// max_fraction]` of its entries (exactly `round(f_i * rows * cols)` of
/// them) in random rectangles of `h x w` entries, `h ~ U{ceil(rows/20) ..
/// ceil(rows/4)}` and likewise `w`. Rectangles may overlap; the last one is
/// cut short, row by row, where the target count is reached. C-order
/// `(count, rows, cols)`, 1 = observed.
pub fn block_mask(
    count: usize,
    rows: usize,
    cols: usize,
    min_fraction: f64,
    max_fraction: f64,
    seed: u64,
) -> Result<Vec<u8>> {
    let total = checked_len(count, rows, cols, "mask")?;
    check_fraction(min_fraction, "min_fraction")?;
    check_fraction(max_fraction, "max_fraction")?;
    if min_fraction > max_fraction {
        return Err(Error::invalid(format!(
            "max_fraction: {max_fraction} is below min_fraction ({min_fraction})"
        )));
    }
    let side = |len: usize| (len.div_ceil(20).max(1), len.div_ceil(4).max(1));
    let ((h_lo, h_hi), (w_lo, w_hi)) = (side(rows), side(cols));
    let mut mask = vec![1u8; total];
    fill_samples(&mut mask, rows * cols, 0, |i, out| {
        let mut rng = Rng::stream(seed, domain::BLOCKS, i as u64);
        let f = rng.uniform_in(min_fraction, max_fraction);
        let target = ((f * (rows * cols) as f64).round() as usize).min(rows * cols);
        let mut missing = 0;
        let mut tries = 0usize;
        while missing < target {
            tries += 1;
            if tries > 100_000 {
                // Unreachable in practice (random rectangles cover the
                // matrix long before); keeps the loop finite for f near 1.
                for v in out.iter_mut().filter(|v| **v == 1).take(target - missing) {
                    *v = 0;
                }
                break;
            }
            let h = h_lo + rng.below((h_hi - h_lo + 1) as u64) as usize;
            let w = w_lo + rng.below((w_hi - w_lo + 1) as u64) as usize;
            let r0 = rng.below((rows - h + 1) as u64) as usize;
            let c0 = rng.below((cols - w + 1) as u64) as usize;
            'block: for r in r0..r0 + h {
                for c in c0..c0 + w {
                    let v = &mut out[r * cols + c];
                    if *v == 1 {
                        *v = 0;
                        missing += 1;
                        if missing == target {
                            break 'block;
                        }
                    }
                }
            }
        }
    });
    Ok(mask)
}

// ---------------------------------------------------------------------------
// Planted low-rank data

/// Distribution of the planted cores `C_i` (`r x s`).
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum CoreDistribution {
    /// Independent `N(0, 1)` entries.
    Gaussian,
    /// Entry `(a, b)` is `N(0, (decay^a decay^b)²)`: the row and column
    /// spectra decay geometrically, leaving gaps between directions.
    Decaying {
        /// Ratio between consecutive directions, in `(0, 1]`.
        decay: f64,
    },
    /// A mixture of `components` equally likely Gaussians: means with
    /// `N(0, 1)` entries (fixed by the seed), spread `spread` around them —
    /// multi-modal cores that a Gaussian model cannot fit.
    Mixture {
        /// Number of components (at least 1).
        components: usize,
        /// Standard deviation within a component.
        spread: f64,
    },
}

/// A planted low-rank set `X_i = U* C_i V*^T + noise E_i`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct PlantedSpec {
    /// Number of matrices.
    pub count: usize,
    /// Rows `m`.
    pub rows: usize,
    /// Columns `n`.
    pub cols: usize,
    /// Rank `r` of the row space (`1 <= r <= m`).
    pub rank_rows: usize,
    /// Rank `s` of the column space (`1 <= s <= n`).
    pub rank_cols: usize,
    /// Distribution of the cores.
    pub core: CoreDistribution,
    /// Standard deviation of the i.i.d. Gaussian noise `E_i` per entry.
    pub noise: f64,
    /// Seed of the bases, cores and noise.
    pub seed: u64,
}

impl PlantedSpec {
    /// Gaussian cores, noise 0.01.
    pub fn new(
        count: usize,
        rows: usize,
        cols: usize,
        rank_rows: usize,
        rank_cols: usize,
        seed: u64,
    ) -> Self {
        Self {
            count,
            rows,
            cols,
            rank_rows,
            rank_cols,
            core: CoreDistribution::Gaussian,
            noise: 0.01,
            seed,
        }
    }
}

/// A planted set and its ground truth.
#[derive(Clone, Debug)]
pub struct Planted {
    /// The noisy matrices.
    pub data: MatrixSet,
    /// The true row basis `U*` (`m x r`, orthonormal columns).
    pub u: Mat<f64>,
    /// The true column basis `V*` (`n x s`, orthonormal columns).
    pub v: Mat<f64>,
    /// The true cores: `count` blocks of `r * s` values, each `vec(C_i)`
    /// (column-major `r x s`, as in the C ABI).
    pub cores: Vec<f64>,
}

impl Planted {
    /// Core `i` as an `r x s` matrix.
    pub fn core(&self, i: usize) -> MatRef<'_, f64> {
        let (r, s) = (self.u.ncols(), self.v.ncols());
        MatRef::from_column_major_slice(&self.cores[i * r * s..(i + 1) * r * s], r, s)
    }
    /// The noiseless matrix `U* C_i V*^T`.
    pub fn signal(&self, i: usize) -> Mat<f64> {
        self.u.as_ref() * self.core(i) * self.v.as_ref().transpose()
    }
}

/// A random `m x r` matrix with orthonormal columns: the Q factor of a
/// Gaussian matrix (Haar distributed, since R has a positive diagonal).
fn random_orthonormal(rng: &mut Rng, m: usize, r: usize) -> Mat<f64> {
    let mut q = Mat::from_fn(m, r, |_, _| rng.normal());
    let mut buf = MemBuffer::new(retract_qr_scratch(m, r, Par::Seq));
    retract_qr(q.as_mut(), Par::Seq, MemStack::new(&mut buf));
    q
}

/// Draws a planted low-rank set and returns it with its truth.
pub fn planted_low_rank(spec: &PlantedSpec) -> Result<Planted> {
    let (count, m, n, r, s) = (
        spec.count,
        spec.rows,
        spec.cols,
        spec.rank_rows,
        spec.rank_cols,
    );
    let total = checked_len(count, m, n, "spec")?;
    if r == 0 || r > m {
        return Err(Error::invalid(format!(
            "spec.rank_rows: {r} is outside 1..={m} (the rows)"
        )));
    }
    if s == 0 || s > n {
        return Err(Error::invalid(format!(
            "spec.rank_cols: {s} is outside 1..={n} (the columns)"
        )));
    }
    if !(spec.noise.is_finite() && spec.noise >= 0.0) {
        return Err(Error::invalid(format!(
            "spec.noise: {} is not a finite non-negative standard deviation",
            spec.noise
        )));
    }
    match spec.core {
        CoreDistribution::Gaussian => {}
        CoreDistribution::Decaying { decay } => {
            if !(decay > 0.0 && decay <= 1.0) {
                return Err(Error::invalid(format!(
                    "spec.core.decay: {decay} is outside (0, 1]"
                )));
            }
        }
        CoreDistribution::Mixture { components, spread } => {
            if components == 0 {
                return Err(Error::invalid("spec.core.components: must be at least 1"));
            }
            if !(spread.is_finite() && spread >= 0.0) {
                return Err(Error::invalid(format!(
                    "spec.core.spread: {spread} is not a finite non-negative standard deviation"
                )));
            }
        }
    }

    let mut truth = Rng::stream(spec.seed, domain::PLANTED_TRUTH, 0);
    let u = random_orthonormal(&mut truth, m, r);
    let v = random_orthonormal(&mut truth, n, s);
    let means: Vec<f64> = match spec.core {
        CoreDistribution::Mixture { components, .. } => {
            let mut mu = vec![0.0; components * r * s];
            truth.fill_normal(&mut mu);
            mu
        }
        _ => Vec::new(),
    };

    let d = r * s;
    let mut cores = vec![0.0; count * d];
    // Cores first (cheap, sequential), then the matrices in parallel.
    for (i, c) in cores.chunks_exact_mut(d).enumerate() {
        let mut rng = Rng::stream(spec.seed, domain::PLANTED_SAMPLES, i as u64);
        match spec.core {
            CoreDistribution::Gaussian => rng.fill_normal(c),
            CoreDistribution::Decaying { decay } => {
                for b in 0..s {
                    for a in 0..r {
                        c[a + r * b] = rng.normal() * decay.powi((a + b) as i32);
                    }
                }
            }
            CoreDistribution::Mixture { components, spread } => {
                let k = rng.below(components as u64) as usize;
                for (j, x) in c.iter_mut().enumerate() {
                    *x = means[k * d + j] + spread * rng.normal();
                }
            }
        }
    }

    let mut data = vec![0.0; total];
    fill_samples(&mut data, m * n, 0, |i, out| {
        let c = MatRef::from_column_major_slice(&cores[i * d..(i + 1) * d], r, s);
        let mut uc = Mat::<f64>::zeros(m, s);
        gemm(uc.as_mut(), Accum::Replace, u.as_ref(), c, 1.0, Par::Seq);
        let x = MatMut::from_row_major_slice_mut(out, m, n);
        gemm(
            x,
            Accum::Replace,
            uc.as_ref(),
            v.as_ref().transpose(),
            1.0,
            Par::Seq,
        );
        // The noise has a stream of its own per sample, so the cores above
        // could be drawn first and sequentially.
        let mut rng = Rng::stream(spec.seed, domain::PLANTED_SAMPLES ^ (1 << 32), i as u64);
        add_noise(&mut rng, spec.noise, out);
    });
    Ok(Planted {
        data: MatrixSet {
            data,
            count,
            rows: m,
            cols: n,
        },
        u,
        v,
        cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::numerics::{eigh_descending, eigh_descending_scratch, mirror_lower, syrk_lower};

    fn small(d: Dataset, count: usize, seed: u64, noise: f64) -> MatrixSet {
        let spec = DatasetSpec {
            count,
            rows: 24,
            cols: 30,
            noise,
            seed,
            threads: 1,
        };
        d.generate(&spec).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for d in Dataset::ALL {
            assert_eq!(Dataset::from_name(d.name()).unwrap(), d);
            assert_eq!(d.to_string().parse::<Dataset>().unwrap(), d);
        }
        assert_eq!(Dataset::from_name("WAVES").unwrap(), Dataset::Waves);
        let err = Dataset::from_name("stripes").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().starts_with("name:"));
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut rng = Rng::seed_from_u64(1);
        let n = 200_000;
        let (mut s1, mut s2, mut s4) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let z = rng.normal();
            s1 += z;
            s2 += z * z;
            s4 += z * z * z * z;
        }
        let nf = n as f64;
        assert!((s1 / nf).abs() < 5.0 / nf.sqrt());
        assert!((s2 / nf - 1.0).abs() < 5.0 * 2f64.sqrt() / nf.sqrt());
        assert!((s4 / nf - 3.0).abs() < 0.1);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[rng.below(3) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (c as f64 - 10_000.0).abs() < 500.0));
    }

    #[test]
    fn generation_is_deterministic_and_prefix_stable() {
        for d in Dataset::ALL {
            let a = small(d, 7, 42, 0.01);
            assert_eq!(a.data.len(), 7 * 24 * 30);
            assert_eq!((a.count, a.rows, a.cols), (7, 24, 30));
            assert_eq!(a, small(d, 7, 42, 0.01), "{d}");
            assert_ne!(a, small(d, 7, 43, 0.01), "{d}");
            // The first samples do not depend on the count or the threads.
            let b = small(d, 3, 42, 0.01);
            assert_eq!(&a.data[..b.data.len()], &b.data[..]);
            let spec = DatasetSpec {
                threads: 3,
                ..DatasetSpec::new(7, 24, 30, 42)
            };
            assert_eq!(d.generate(&spec).unwrap(), a);
            // Noise sits on top of the same clean samples.
            let clean = small(d, 7, 42, 0.0);
            let dev = a.data.iter().zip(&clean.data).map(|(x, y)| (x - y).abs());
            assert!(dev.fold(0.0, f64::max) < 0.01 * 6.0);
        }
        // Different sets under one seed have different palettes.
        assert_ne!(
            small(Dataset::Blobs, 2, 0, 0.0).data,
            small(Dataset::Bands, 2, 0, 0.0).data
        );
    }

    #[test]
    fn clean_values_lie_in_their_ranges() {
        let bounds = [
            (Dataset::Blobs, 0.0, 6.0),
            (Dataset::Bands, 0.0, 4.5),
            (Dataset::Waves, -3.0, 3.0),
            (Dataset::Crosshatch, 0.0, 16.0),
        ];
        for (d, lo, hi) in bounds {
            let s = small(d, 40, 5, 0.0);
            for i in 0..s.count {
                let x = s.sample(i);
                let (mut mn, mut mx) = (f64::INFINITY, f64::NEG_INFINITY);
                for r in 0..s.rows {
                    for c in 0..s.cols {
                        mn = mn.min(x[(r, c)]);
                        mx = mx.max(x[(r, c)]);
                    }
                }
                assert!(
                    mn >= lo - 1e-12 && mx <= hi + 1e-12,
                    "{d} sample {i}: [{mn}, {mx}]"
                );
                if d != Dataset::Crosshatch {
                    // Every sample has at least one component of amplitude
                    // >= 0.5 (a crosshatch may have no line on).
                    assert!(mx - mn > 0.2, "{d} sample {i} is flat");
                }
            }
        }
    }

    /// Eigenvalues (descending) of sum_i X_i X_i^T, or of sum_i X_i^T X_i.
    fn gram_spectrum(s: &MatrixSet, transpose: bool) -> Vec<f64> {
        let k = if transpose { s.cols } else { s.rows };
        let mut g = Mat::<f64>::zeros(k, k);
        for i in 0..s.count {
            let x = if transpose {
                s.sample(i).transpose()
            } else {
                s.sample(i)
            };
            syrk_lower(g.as_mut(), Accum::Add, x, 1.0, Par::Seq);
        }
        mirror_lower(g.as_mut());
        let mut vecs = Mat::<f64>::zeros(k, k);
        let mut vals = vec![0.0; k];
        let mut buf = MemBuffer::new(eigh_descending_scratch(k, Par::Seq));
        eigh_descending(
            g.as_ref(),
            vecs.as_mut(),
            &mut vals,
            Par::Seq,
            MemStack::new(&mut buf),
        )
        .unwrap();
        vals
    }

    #[test]
    fn waves_have_rank_six_on_each_side() {
        let s = small(Dataset::Waves, 30, 3, 0.0);
        for transpose in [false, true] {
            let ev = gram_spectrum(&s, transpose);
            assert!(ev[5] > 1e-3 * ev[0], "{ev:?}");
            assert!(ev[6] < 1e-12 * ev[0], "{ev:?}");
        }
        // With the default noise the gap remains.
        let s = small(Dataset::Waves, 30, 3, 0.01);
        let ev = gram_spectrum(&s, false);
        assert!(ev[6] < 1e-3 * ev[5], "{ev:?}");
    }

    #[test]
    fn mcar_rate_is_within_sampling_error() {
        let (count, m, n, rho) = (10, 50, 50, 0.3);
        let mask = mcar_mask(count, m, n, rho, 9).unwrap();
        assert_eq!(mask.len(), count * m * n);
        assert!(mask.iter().all(|&v| v <= 1));
        let missing = mask.iter().filter(|&&v| v == 0).count() as f64 / mask.len() as f64;
        let sd = (rho * (1.0 - rho) / mask.len() as f64).sqrt();
        assert!((missing - rho).abs() < 5.0 * sd, "{missing}");
        assert_eq!(mask, mcar_mask(count, m, n, rho, 9).unwrap());
        assert_ne!(mask, mcar_mask(count, m, n, rho, 10).unwrap());
        assert!(mcar_mask(2, 3, 3, 0.0, 1).unwrap().iter().all(|&v| v == 1));
        assert!(mcar_mask(2, 3, 3, 1.0, 1).unwrap().iter().all(|&v| v == 0));
        let err = mcar_mask(2, 3, 3, 1.5, 1).unwrap_err();
        assert!(err.message().starts_with("rate:"));
    }

    #[test]
    fn block_masks_cover_the_requested_fraction() {
        let (count, m, n) = (40, 30, 40);
        let mask = block_mask(count, m, n, 0.1, 0.3, 4).unwrap();
        assert_eq!(mask, block_mask(count, m, n, 0.1, 0.3, 4).unwrap());
        let mut fractions = Vec::new();
        for s in mask.chunks_exact(m * n) {
            let f = s.iter().filter(|&&v| v == 0).count() as f64 / (m * n) as f64;
            assert!(
                (0.1 - 0.5 / (m * n) as f64..=0.3 + 0.5 / (m * n) as f64).contains(&f),
                "{f}"
            );
            fractions.push(f);
            // Missing entries come in blocks: most missing entries have a
            // missing neighbour in their row.
            let mut paired = 0;
            let mut total = 0;
            for r in 0..m {
                for c in 0..n {
                    if s[r * n + c] == 0 {
                        total += 1;
                        let left = c > 0 && s[r * n + c - 1] == 0;
                        let right = c + 1 < n && s[r * n + c + 1] == 0;
                        paired += usize::from(left || right);
                    }
                }
            }
            assert!(paired as f64 > 0.9 * total as f64);
        }
        let spread = fractions.iter().fold(0.0f64, |a, &f| a.max(f))
            - fractions.iter().fold(1.0f64, |a, &f| a.min(f));
        assert!(spread > 0.05, "fractions should vary between samples");
        // A fixed fraction is met exactly.
        let mask = block_mask(3, 7, 9, 0.25, 0.25, 1).unwrap();
        for s in mask.chunks_exact(63) {
            assert_eq!(s.iter().filter(|&&v| v == 0).count(), 16); // round(0.25 * 63)
        }
        assert!(block_mask(2, 5, 5, 1.0, 1.0, 2)
            .unwrap()
            .iter()
            .all(|&v| v == 0));
        let err = block_mask(2, 5, 5, 0.3, 0.2, 2).unwrap_err();
        assert!(err.message().starts_with("max_fraction:"));
    }

    #[test]
    fn planted_data_match_their_truth() {
        let spec = PlantedSpec::new(6, 20, 15, 3, 4, 11);
        let p = planted_low_rank(&spec).unwrap();
        let eye = |k| Mat::<f64>::identity(k, k);
        assert!((p.u.transpose() * &p.u - eye(3)).norm_max() < 1e-14);
        assert!((p.v.transpose() * &p.v - eye(4)).norm_max() < 1e-14);
        assert_eq!(p.cores.len(), 6 * 12);
        for i in 0..6 {
            let e = p.data.sample(i) - p.signal(i);
            // Noise 0.01 per entry: the rms residual is close to it.
            let rms = e.norm_l2() / (300f64).sqrt();
            assert!((rms - 0.01).abs() < 0.003, "{rms}");
            // The core is recovered from the clean signal.
            let c = p.u.transpose() * p.signal(i) * &p.v;
            assert!((c - p.core(i)).norm_max() < 1e-13);
        }
        let again = planted_low_rank(&spec).unwrap();
        assert_eq!(again.data, p.data);
        assert_eq!(again.u, p.u);
        let clean = planted_low_rank(&PlantedSpec { noise: 0.0, ..spec }).unwrap();
        for i in 0..6 {
            assert!((clean.data.sample(i) - clean.signal(i)).norm_max() < 1e-14);
        }
    }

    #[test]
    fn planted_core_distributions() {
        let base = PlantedSpec::new(400, 8, 8, 2, 3, 3);
        let decaying = PlantedSpec {
            core: CoreDistribution::Decaying { decay: 0.5 },
            ..base
        };
        let p = planted_low_rank(&decaying).unwrap();
        // Var of entry (a, b) is decay^(2(a + b)): entry (1, 2) has 1/64.
        let var =
            |a: usize, b: usize| (0..400).map(|i| p.core(i)[(a, b)].powi(2)).sum::<f64>() / 400.0;
        assert!((var(0, 0) - 1.0).abs() < 0.25);
        assert!((var(1, 2) * 64.0 - 1.0).abs() < 0.25);
        let mixture = PlantedSpec {
            core: CoreDistribution::Mixture {
                components: 2,
                spread: 0.0,
            },
            ..base
        };
        let p = planted_low_rank(&mixture).unwrap();
        let mut distinct: Vec<Vec<u64>> = (0..400)
            .map(|i| {
                p.cores[i * 6..(i + 1) * 6]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 2);
        let bad = PlantedSpec {
            rank_rows: 9,
            ..base
        };
        let err = planted_low_rank(&bad).unwrap_err();
        assert!(err.message().starts_with("spec.rank_rows:"));
    }

    #[test]
    fn invalid_specs_are_refused() {
        let err = Dataset::Blobs
            .generate(&DatasetSpec::new(2, 0, 5, 1))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        let err = Dataset::Blobs
            .generate(&DatasetSpec::new(2, 5, 5, 1).with_noise(f64::NAN))
            .unwrap_err();
        assert!(err.message().starts_with("spec.noise:"));
        let err = Dataset::Waves
            .generate(&DatasetSpec::new(usize::MAX, 5, 5, 1))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        let empty = Dataset::Waves
            .generate(&DatasetSpec::new(0, 5, 5, 1))
            .unwrap();
        assert_eq!(empty.batch().count(), 0);
        let one = Dataset::Bands
            .generate(&DatasetSpec::new(2, 1, 1, 1))
            .unwrap();
        assert!(one.data.iter().all(|v| v.is_finite()));
    }
}
