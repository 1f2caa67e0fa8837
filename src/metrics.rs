//! Quality metrics for generated sets of matrices (DESIGN.md section 6).
//!
//! A real set `A = {A_1..A_NA}` and a generated set `B = {B_1..B_NB}` of
//! `m x n` matrices are compared through:
//!
//! - **Spectrum error** `SVE = ||mean_B sv(X) - mean_A sv(X)||_2 / ||mean_A sv(X)||_2`,
//!   `sv(X)` all `q = min(m, n)` singular values in descending order.
//! - **Top-k spectrum distance**: the mean over `k = 1..min(10, q)` of
//!   `W1(sv_k(A), sv_k(B)) / mean_A sv_k`, where `W1` is the 1-Wasserstein
//!   distance between the empirical distributions of the k-th singular value
//!   in the two sets. For sets of sizes `NA`, `NB` it is the integral over
//!   `t in [0, 1]` of the gap between the two quantile functions, which are
//!   step functions with breakpoints `i / NA` and `j / NB` ([`wasserstein1`]).
//!   Indices whose real mean is below `1e-9` times the first are skipped
//!   (rank-deficient data), so sets of any scale compare.
//! - **MMD²** (unbiased) with the Gaussian kernel `k_h(x, y) = exp(-||x - y||² / (2 h²))`
//!   on `vec(X)`,
//!   `MMD² = S_AA / (NA (NA-1)) + S_BB / (NB (NB-1)) - 2 S_AB / (NA NB)`
//!   with `S_AA = sum_{i != j} k(a_i, a_j)`, `S_BB` likewise and
//!   `S_AB = sum_{i, j} k(a_i, b_j)`, averaged over `h in {h0/2, h0, 2 h0}`,
//!   `h0` the median of the `||z_p - z_q||`, `p < q`, over the pooled set
//!   (the mean of the two middle values for an even number of pairs). The
//!   squared distances come from Gram matrices, `||x - y||² = <x,x> + <y,y> - 2<x,y>`
//!   (clamped at 0 against cancellation), so the cost is one
//!   `(NA + NB)² (mn) / 2` product instead of a loop over pairs. When `h0 = 0`
//!   the kernel is its limit, 1 for equal matrices and 0 otherwise.
//! - **1-NN two-sample accuracy** ([`nn_accuracy`]): every matrix `z` of the
//!   pooled set `A u B` is classified by its nearest other matrix
//!   (leave-one-out, Frobenius distance `||z - z'||`, the same Gram-matrix
//!   distances as the MMD², clamped at 0). With `c(z)` the share of the
//!   matrices at the smallest distance that come from `z`'s own set (1 or 0
//!   without ties; ties count as a uniformly random vote), the score is the
//!   *balanced* accuracy
//!   `NNA = (1/2) (mean_{a in A} c(a) + mean_{b in B} c(b))`,
//!   so unequal set sizes do not bias it: for two samples of one
//!   distribution it is `(NA + NB - 2) / (2 (NA + NB - 1))`, about 0.5, in
//!   expectation; 1 means every matrix's nearest neighbour is in its own set
//!   (fully separable); below 0.5 means the generated matrices sit on the
//!   real ones (0 when every matrix has a copy in the other set).
//! - **Distance-to-closest-record ratio** ([`dcr_ratio`]): with a third set,
//!   the training set `T` of the generator,
//!   `DCR = median_{b in B} min_{t in T} ||b - t|| / median_{a in A} min_{t in T} ||a - t||`
//!   (medians of an even count average the two middle values). Fresh data
//!   give about 1; below 1 the generated matrices are closer to the
//!   training matrices than held-out data are, which points at copying;
//!   copies of training matrices give 0. Undefined (an error) when the
//!   held-out median is 0. The distances come from blocks of the cross Gram
//!   matrix against `T` (`NEAREST_BLOCK` queries at a time).
//! - **Mean error** `||mean_B X - mean_A X|| / rms_A`, `rms_A = sqrt(mean_i ||A_i||²)`
//!   (dividing by `||mean_A X||` would be meaningless for zero-mean data).
//! - **Row and column covariance errors**: with `Xbar` the set mean,
//!   `R = (1/N) sum (X - Xbar)(X - Xbar)^T` (`m x m`) and
//!   `K = (1/N) sum (X - Xbar)^T (X - Xbar)` (`n x n`);
//!   errors `||R_B - R_A|| / ||R_A||` and `||K_B - K_A|| / ||K_A||`.
//!
//! and, for fitted geometries and completions:
//!
//! - **Subspace distance** `||U U^T - U* U*^T|| / sqrt(r + r*)` ([`subspace_distance`]),
//!   which is the usual `/ sqrt(2r)` when the ranks agree;
//! - **Containment** `||(I - U U^T) U*|| / sqrt(r*)` ([`containment`]);
//! - **Completion error** `||P^perp(Zhat - X)|| / ||P^perp(X)||` on the
//!   entries that were not observed ([`completion_error`]).
//!
//! Norms of matrices are Frobenius norms. [`evaluate`] computes every
//! set-versus-set metric at once and shares the singular values between the
//! two spectral metrics and the Gram matrices between the MMD² and the 1-NN
//! accuracy; [`evaluate_with_train`] adds the closest-record ratio. Metrics are not a hot path and allocate freely; the
//! work over samples runs on up to `threads` threads in fixed chunks, so the
//! results do not depend on the thread count.

use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{gemm, mirror_lower, par_for_threads, resolve_threads, syrk_lower};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::{Accum, Mat, MatRef, Par};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Singular values whose mean in the real set is below this fraction of the
/// first are skipped by the top-k spectrum distance.
pub const TOPK_RELATIVE_CUTOFF: f64 = 1e-9;

/// Options of [`evaluate`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Number of leading singular values in the top-k spectrum distance
    /// (default 10; capped at `min(m, n)`).
    pub top_k: usize,
    /// Compute the pairwise metrics, the MMD² and the 1-NN accuracy
    /// (default true). They are the expensive ones and share one Gram
    /// matrix of the pooled set.
    pub mmd: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            top_k: 10,
            mmd: true,
        }
    }
}

/// The MMD² estimate and its bandwidths.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Mmd {
    /// Unbiased MMD² averaged over the three bandwidths.
    pub mmd2: f64,
    /// The median pairwise distance `h0` of the pooled set.
    pub h0: f64,
    /// Unbiased MMD² at `h0 / 2`, `h0` and `2 h0`.
    pub per_bandwidth: [f64; 3],
}

/// Every set-versus-set metric of a generated set against a real one.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Relative error of the mean singular-value spectrum.
    pub sve: f64,
    /// Mean relative 1-Wasserstein distance of the leading singular values.
    pub topk_w1: f64,
    /// MMD² with the median-heuristic Gaussian kernels (`None` when disabled).
    pub mmd: Option<Mmd>,
    /// `||mean_B - mean_A|| / rms_A`.
    pub mean_error: f64,
    /// Relative Frobenius error of the row covariance (`m x m`).
    pub rowcov_rel_error: f64,
    /// Relative Frobenius error of the column covariance (`n x n`).
    pub colcov_rel_error: f64,
    /// Balanced leave-one-out 1-NN two-sample accuracy, 0.5 ideal (`None`
    /// when the pairwise metrics are disabled).
    pub nn_accuracy: Option<f64>,
    /// Distance-to-closest-record ratio, below 1 for copying (`None`
    /// without a training set: [`evaluate_with_train`]).
    pub dcr_ratio: Option<f64>,
}

// ---------------------------------------------------------------------------
// Validation

/// Checks one set: at least `min_count` matrices, no mask, finite values.
fn check_set(b: &MatrixBatch<'_>, what: &str, min_count: usize) -> Result<()> {
    if b.count() < min_count {
        return Err(Error::invalid(if min_count == 1 {
            format!("{what}: the set is empty")
        } else {
            format!(
                "{what}: {} matrices, but at least {min_count} are needed",
                b.count()
            )
        }));
    }
    if b.has_mask() {
        return Err(Error::invalid(format!(
            "{what}: metrics compare complete matrices; complete the set or drop its mask"
        )));
    }
    Ok(())
}

/// Checks a real/generated pair: sizes, equal shapes, then finiteness (the
/// full scan last, after the cheap checks).
fn check_pair(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, min_count: usize) -> Result<()> {
    check_set(real, "real", min_count)?;
    check_set(generated, "generated", min_count)?;
    if (generated.rows(), generated.cols()) != (real.rows(), real.cols()) {
        return Err(Error::shape(format!(
            "generated: {} x {} matrices, but real has {} x {}",
            generated.rows(),
            generated.cols(),
            real.rows(),
            real.cols()
        )));
    }
    real.check_finite("real")?;
    generated.check_finite("generated")
}

fn finite(x: f64, what: &str) -> Result<f64> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::numerical(format!(
            "{what} is not finite (the values overflow in double precision)"
        )))
    }
}

// ---------------------------------------------------------------------------
// Work over samples

/// Samples per work item: fixed, so that sums are grouped the same way on
/// any number of threads.
const CHUNK: usize = 8;

/// `f` applied to the consecutive chunks of `0..count` (of `CHUNK` samples)
/// on up to `threads` threads; the results come back in chunk order.
fn map_chunks<T: Send>(
    count: usize,
    threads: usize,
    f: impl Fn(Range<usize>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let nchunks = count.div_ceil(CHUNK);
    let range = |c: usize| c * CHUNK..((c + 1) * CHUNK).min(count);
    let threads = threads.min(nchunks);
    if threads <= 1 {
        return (0..nchunks).map(|c| f(range(c))).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<(usize, Result<T>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let c = next.fetch_add(1, Ordering::Relaxed);
                        if c >= nchunks {
                            break out;
                        }
                        out.push((c, f(range(c))));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("metrics worker panicked"))
            .collect()
    });
    parts.sort_by_key(|p| p.0);
    parts.into_iter().map(|p| p.1).collect()
}

/// Sums per-chunk matrices in chunk order.
fn sum_in_order(parts: Vec<Mat<f64>>) -> Mat<f64> {
    let mut it = parts.into_iter();
    let mut acc = it.next().expect("at least one chunk");
    for p in it {
        acc += &p;
    }
    acc
}

// ---------------------------------------------------------------------------
// Spectra

fn singular_values_impl(batch: &MatrixBatch<'_>, threads: usize) -> Result<Mat<f64>> {
    let (count, m, n) = (batch.count(), batch.rows(), batch.cols());
    let q = m.min(n);
    let req = svd::svd_scratch::<f64>(
        m,
        n,
        ComputeSvdVectors::No,
        ComputeSvdVectors::No,
        Par::Seq,
        Default::default(),
    );
    let parts = map_chunks(count, threads, |range| {
        let mut buf = MemBuffer::new(req);
        let mut s = Mat::<f64>::zeros(q, 1);
        let mut out = Mat::<f64>::zeros(range.len(), q);
        for (row, i) in range.enumerate() {
            svd::svd(
                batch.sample(i),
                s.as_mut().col_mut(0).as_diagonal_mut(),
                None,
                None,
                Par::Seq,
                MemStack::new(&mut buf),
                Default::default(),
            )
            .map_err(|_| {
                Error::numerical(format!("singular values of matrix {i} did not converge"))
            })?;
            // faer sorts them in non-increasing order already; sorting again
            // costs nothing and makes the order a local guarantee.
            let mut v: Vec<f64> = (0..q).map(|k| s[(k, 0)]).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            for (k, x) in v.into_iter().enumerate() {
                out[(row, k)] = x;
            }
        }
        Ok(out)
    })?;
    let mut all = Mat::<f64>::zeros(count, q);
    let mut row = 0;
    for p in parts {
        all.as_mut()
            .submatrix_mut(row, 0, p.nrows(), q)
            .copy_from(p.as_ref());
        row += p.nrows();
    }
    Ok(all)
}

/// All `min(m, n)` singular values of every matrix of `batch`, in descending
/// order: row `i` of the `count x min(m, n)` result belongs to matrix `i`.
/// Runs on `par.degree()` threads, one matrix per thread at a time.
pub fn singular_values(batch: &MatrixBatch<'_>, par: Par) -> Result<Mat<f64>> {
    check_set(batch, "batch", 1)?;
    batch.check_finite("batch")?;
    singular_values_impl(batch, par.degree())
}

fn column_means(s: MatRef<'_, f64>) -> Vec<f64> {
    let n = s.nrows() as f64;
    (0..s.ncols())
        .map(|k| (0..s.nrows()).map(|i| s[(i, k)]).sum::<f64>() / n)
        .collect()
}

fn sve_from_spectra(sa: MatRef<'_, f64>, sb: MatRef<'_, f64>) -> Result<f64> {
    let (ma, mb) = (column_means(sa), column_means(sb));
    let num: f64 = ma.iter().zip(&mb).map(|(a, b)| (b - a) * (b - a)).sum();
    let den: f64 = ma.iter().map(|a| a * a).sum();
    if den == 0.0 {
        return Err(Error::invalid(
            "real: every matrix is zero, so the relative spectrum error is undefined",
        ));
    }
    finite((num / den).sqrt(), "the spectrum error")
}

fn topk_from_spectra(sa: MatRef<'_, f64>, sb: MatRef<'_, f64>, top_k: usize) -> Result<f64> {
    let ma = column_means(sa);
    if ma[0] == 0.0 {
        return Err(Error::invalid(
            "real: every matrix is zero, so the top-k spectrum distance is undefined",
        ));
    }
    let kmax = top_k.min(ma.len());
    let (mut sum, mut used) = (0.0, 0usize);
    let mut a = vec![0.0; sa.nrows()];
    let mut b = vec![0.0; sb.nrows()];
    for k in 0..kmax {
        if ma[k] < TOPK_RELATIVE_CUTOFF * ma[0] {
            continue;
        }
        for (i, x) in a.iter_mut().enumerate() {
            *x = sa[(i, k)];
        }
        for (i, x) in b.iter_mut().enumerate() {
            *x = sb[(i, k)];
        }
        sum += wasserstein1_unchecked(&mut a, &mut b) / ma[k];
        used += 1;
    }
    finite(sum / used as f64, "the top-k spectrum distance")
}

/// Spectrum error `||mean_B sv - mean_A sv||_2 / ||mean_A sv||_2` (module docs).
pub fn spectrum_error(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    par: Par,
) -> Result<f64> {
    check_pair(real, generated, 1)?;
    let t = par.degree();
    sve_from_spectra(
        singular_values_impl(real, t)?.as_ref(),
        singular_values_impl(generated, t)?.as_ref(),
    )
}

/// Top-k spectrum distance with `k = 1..min(top_k, q)` (module docs; the
/// design value is `top_k = 10`).
pub fn topk_spectrum_distance(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    top_k: usize,
    par: Par,
) -> Result<f64> {
    check_top_k(top_k)?;
    check_pair(real, generated, 1)?;
    let t = par.degree();
    topk_from_spectra(
        singular_values_impl(real, t)?.as_ref(),
        singular_values_impl(generated, t)?.as_ref(),
        top_k,
    )
}

fn check_top_k(top_k: usize) -> Result<()> {
    if top_k == 0 {
        return Err(Error::invalid("top_k: must be at least 1"));
    }
    Ok(())
}

/// The 1-Wasserstein distance between the empirical distributions of the
/// samples `a` and `b` (of any, possibly different, sizes): the integral over
/// `t in [0, 1]` of `|F_a^-1(t) - F_b^-1(t)|`, exact up to rounding.
pub fn wasserstein1(a: &[f64], b: &[f64]) -> Result<f64> {
    for (x, what) in [(a, "a"), (b, "b")] {
        if x.is_empty() {
            return Err(Error::invalid(format!("{what}: no samples")));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!("{what}: sample {i} is {}", x[i])));
        }
    }
    Ok(wasserstein1_unchecked(&mut a.to_vec(), &mut b.to_vec()))
}

/// [`wasserstein1`] on non-empty finite samples, sorting them in place.
fn wasserstein1_unchecked(a: &mut [f64], b: &mut [f64]) -> f64 {
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    let (na, nb) = (a.len() as u128, b.len() as u128);
    // Both quantile functions are constant between consecutive breakpoints
    // of {i / na} U {j / nb}. In units of 1 / (na nb) the breakpoints are the
    // integers (i + 1) nb and (j + 1) na, so the weights are exact.
    let (mut i, mut j) = (0usize, 0usize);
    let (mut t, mut acc) = (0u128, 0.0);
    while i < a.len() && j < b.len() {
        let ta = (i as u128 + 1) * nb;
        let tb = (j as u128 + 1) * na;
        let next = ta.min(tb);
        acc += (next - t) as f64 * (a[i] - b[j]).abs();
        t = next;
        if ta == next {
            i += 1;
        }
        if tb == next {
            j += 1;
        }
    }
    acc / (na * nb) as f64
}

// ---------------------------------------------------------------------------
// MMD

/// Order in which `vec(X)` lists the entries of a matrix.
#[derive(Copy, Clone, PartialEq, Eq)]
enum VecOrder {
    /// Row by row (C order).
    Rows,
    /// Column by column (Fortran order).
    Cols,
    /// A single row or column: both orders agree.
    Any,
}

impl VecOrder {
    fn agrees(self, other: VecOrder) -> bool {
        self == other || self == VecOrder::Any || other == VecOrder::Any
    }
}

/// The batch as a `count x (rows * cols)` matrix without a copy, when every
/// sample is one contiguous run of memory in row or column order.
fn flat_view<'a>(b: &MatrixBatch<'a>) -> Option<(MatRef<'a, f64>, VecOrder)> {
    let l = b.layout();
    let rows_ok =
        (l.cols == 1 || l.col_stride == 1) && (l.rows == 1 || l.row_stride == l.cols as isize);
    let cols_ok =
        (l.rows == 1 || l.row_stride == 1) && (l.cols == 1 || l.col_stride == l.rows as isize);
    let order = match (rows_ok, cols_ok) {
        (true, true) => VecOrder::Any,
        (true, false) => VecOrder::Rows,
        (false, true) => VecOrder::Cols,
        (false, false) => return None,
    };
    let s0 = b.sample(0);
    // SAFETY: element k of row i is entry k (in `order`) of sample i, at
    // offset i * sample_stride + k from element (0, 0, 0); the batch
    // constructor checked that every entry of every sample is in bounds.
    let z = unsafe {
        MatRef::from_raw_parts(s0.as_ptr(), l.count, l.rows * l.cols, l.sample_stride, 1)
    };
    Some((z, order))
}

/// A copy of the batch as `(rows * cols) x count`, column `i` = `vec(X_i)`
/// in `order` (the transpose is the flat view).
fn flat_copy(b: &MatrixBatch<'_>, order: VecOrder) -> Mat<f64> {
    let (m, n) = (b.rows(), b.cols());
    let mut z = Mat::<f64>::zeros(m * n, b.count());
    for i in 0..b.count() {
        let x = b.sample(i);
        let mut col = z.as_mut().col_mut(i);
        for c in 0..n {
            for r in 0..m {
                let k = if order == VecOrder::Cols {
                    r + m * c
                } else {
                    r * n + c
                };
                col[k] = x[(r, c)];
            }
        }
    }
    z
}

/// The median of non-negative squared distances, as a distance.
fn median_distance(d2: &mut [f64]) -> f64 {
    let len = d2.len();
    let mid = len / 2;
    let (lo, hi, _) = d2.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = hi.sqrt();
    if len % 2 == 1 {
        upper
    } else {
        let lower = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lower.sqrt() + upper)
    }
}

/// Kernel values `exp(-d2 / (2 h²))` at the three bandwidths `h0 * {1/2, 1, 2}`.
#[inline]
fn kernels(d2: f64, inv: &[f64; 3]) -> [f64; 3] {
    if d2 == 0.0 {
        // Also the h0 = 0 limit, where `inv` is infinite.
        return [1.0; 3];
    }
    [
        (-d2 * inv[0]).exp(),
        (-d2 * inv[1]).exp(),
        (-d2 * inv[2]).exp(),
    ]
}

/// Row views `count x (rows * cols)` of two batches that list `vec(X)` in the
/// same order: views of the data where the layouts allow, otherwise copies
/// kept in `own_x` / `own_y`.
fn flat_pair<'o>(
    x: &MatrixBatch<'o>,
    y: &MatrixBatch<'o>,
    own_x: &'o mut Mat<f64>,
    own_y: &'o mut Mat<f64>,
) -> (MatRef<'o, f64>, MatRef<'o, f64>) {
    let vx = flat_view(x);
    let target = match vx {
        Some((_, VecOrder::Cols)) => VecOrder::Cols,
        _ => VecOrder::Rows,
    };
    let zx = match vx {
        Some((z, o)) if o.agrees(target) => z,
        _ => {
            *own_x = flat_copy(x, target);
            own_x.as_ref().transpose()
        }
    };
    let zy = match flat_view(y) {
        Some((z, o)) if o.agrees(target) => z,
        _ => {
            *own_y = flat_copy(y, target);
            own_y.as_ref().transpose()
        }
    };
    (zx, zy)
}

/// Gram matrices of the pooled set: `aa` and `bb` hold the lower triangles
/// of `<a_i, a_j>` and `<b_i, b_j>`, `ab` all of `<a_i, b_j>`.
struct Grams {
    aa: Mat<f64>,
    bb: Mat<f64>,
    ab: Mat<f64>,
}

impl Grams {
    fn new(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Grams {
        let (na, nb) = (real.count(), generated.count());
        let (mut own_a, mut own_b) = (Mat::<f64>::zeros(0, 0), Mat::<f64>::zeros(0, 0));
        let (za, zb) = flat_pair(real, generated, &mut own_a, &mut own_b);
        let mut aa = Mat::<f64>::zeros(na, na);
        let mut bb = Mat::<f64>::zeros(nb, nb);
        let mut ab = Mat::<f64>::zeros(na, nb);
        syrk_lower(aa.as_mut(), Accum::Replace, za, 1.0, par);
        syrk_lower(bb.as_mut(), Accum::Replace, zb, 1.0, par);
        gemm(ab.as_mut(), Accum::Replace, za, zb.transpose(), 1.0, par);
        Grams { aa, bb, ab }
    }
}

/// Squared distance from Gram entries, clamped at 0 against cancellation.
#[inline]
fn gram_d2(gii: f64, gjj: f64, gij: f64) -> f64 {
    (gii + gjj - 2.0 * gij).max(0.0)
}

fn mmd_impl(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<Mmd> {
    mmd_from_grams(&Grams::new(real, generated, par))
}

fn mmd_from_grams(g: &Grams) -> Result<Mmd> {
    let (gaa, gbb, gab) = (&g.aa, &g.bb, &g.ab);
    let (na, nb) = (gaa.nrows(), gbb.nrows());
    let d2 = gram_d2;
    let pairs = na * (na - 1) / 2 + nb * (nb - 1) / 2 + na * nb;
    let mut all = Vec::with_capacity(pairs);
    for j in 0..na {
        for i in j + 1..na {
            all.push(d2(gaa[(i, i)], gaa[(j, j)], gaa[(i, j)]));
        }
    }
    for j in 0..nb {
        for i in j + 1..nb {
            all.push(d2(gbb[(i, i)], gbb[(j, j)], gbb[(i, j)]));
        }
    }
    for j in 0..nb {
        for i in 0..na {
            all.push(d2(gaa[(i, i)], gbb[(j, j)], gab[(i, j)]));
        }
    }
    let h0 = finite(median_distance(&mut all), "the median pairwise distance")?;
    drop(all);

    let inv = [0.5, 1.0, 2.0].map(|f| {
        let h = f * h0;
        1.0 / (2.0 * h * h)
    });
    let (mut kaa, mut kbb, mut kab) = ([0.0; 3], [0.0; 3], [0.0; 3]);
    let add = |acc: &mut [f64; 3], k: [f64; 3]| {
        for t in 0..3 {
            acc[t] += k[t];
        }
    };
    for j in 0..na {
        for i in j + 1..na {
            add(
                &mut kaa,
                kernels(d2(gaa[(i, i)], gaa[(j, j)], gaa[(i, j)]), &inv),
            );
        }
    }
    for j in 0..nb {
        for i in j + 1..nb {
            add(
                &mut kbb,
                kernels(d2(gbb[(i, i)], gbb[(j, j)], gbb[(i, j)]), &inv),
            );
        }
    }
    for j in 0..nb {
        for i in 0..na {
            add(
                &mut kab,
                kernels(d2(gaa[(i, i)], gbb[(j, j)], gab[(i, j)]), &inv),
            );
        }
    }
    let (fa, fb) = (na as f64, nb as f64);
    // Sums over i < j count each unordered pair once: i != j counts it twice.
    let per_bandwidth: [f64; 3] = std::array::from_fn(|t| {
        2.0 * kaa[t] / (fa * (fa - 1.0)) + 2.0 * kbb[t] / (fb * (fb - 1.0))
            - 2.0 * kab[t] / (fa * fb)
    });
    let mmd2 = per_bandwidth.iter().sum::<f64>() / 3.0;
    Ok(Mmd {
        mmd2: finite(mmd2, "the MMD^2")?,
        h0,
        per_bandwidth,
    })
}

/// Unbiased MMD² between the sets with the median-heuristic Gaussian kernels
/// (module docs). Needs at least 2 matrices in each set. The Gram matrices
/// run on `par`.
pub fn mmd2(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<Mmd> {
    check_pair(real, generated, 2)?;
    mmd_impl(real, generated, par)
}

// ---------------------------------------------------------------------------
// Nearest neighbours: the 1-NN two-sample test and the closest-record ratio

/// The nearest neighbours of one point among candidates of two labels: the
/// smallest squared distance and how many candidates at exactly that
/// distance carry the point's own label and the other one.
#[derive(Copy, Clone)]
struct Nearest {
    d2: f64,
    same: u32,
    other: u32,
}

impl Nearest {
    const NONE: Nearest = Nearest {
        d2: f64::INFINITY,
        same: 0,
        other: 0,
    };

    #[inline]
    fn offer(&mut self, d2: f64, same: bool) {
        if d2 < self.d2 {
            *self = Nearest {
                d2,
                same: u32::from(same),
                other: u32::from(!same),
            };
        } else if d2 == self.d2 {
            if same {
                self.same += 1;
            } else {
                self.other += 1;
            }
        }
    }

    /// The expected correctness of the 1-NN vote with ties broken uniformly
    /// at random: the share of the nearest candidates with the own label.
    fn correct(&self) -> f64 {
        f64::from(self.same) / f64::from(self.same + self.other)
    }
}

/// Balanced leave-one-out 1-NN accuracy from the Gram matrices of the
/// pooled set (module docs). The scan over points runs on up to `threads`
/// threads in fixed chunks, without allocating per point.
fn nn_from_grams(g: &Grams, threads: usize) -> Result<f64> {
    let (gaa, gbb, gab) = (&g.aa, &g.bb, &g.ab);
    let (na, nb) = (gaa.nrows(), gbb.nrows());
    // Squared norms that overflow would make every distance meaningless.
    for (m, n) in [(gaa, na), (gbb, nb)] {
        for i in 0..n {
            finite(m[(i, i)], "a squared norm in the 1-NN accuracy")?;
        }
    }
    // Entry (i, j) of a symmetric Gram matrix stored as its lower triangle.
    let sym = |m: &Mat<f64>, i: usize, j: usize| {
        if i >= j {
            m[(i, j)]
        } else {
            m[(j, i)]
        }
    };
    let parts = map_chunks(na + nb, threads, |range| {
        let (mut sum_a, mut sum_b) = (0.0, 0.0);
        for p in range {
            let mut best = Nearest::NONE;
            if p < na {
                let i = p;
                let gii = gaa[(i, i)];
                for k in (0..na).filter(|&k| k != i) {
                    best.offer(gram_d2(gii, gaa[(k, k)], sym(gaa, i, k)), true);
                }
                for j in 0..nb {
                    best.offer(gram_d2(gii, gbb[(j, j)], gab[(i, j)]), false);
                }
                sum_a += best.correct();
            } else {
                let j = p - na;
                let gjj = gbb[(j, j)];
                for i in 0..na {
                    best.offer(gram_d2(gaa[(i, i)], gjj, gab[(i, j)]), false);
                }
                for k in (0..nb).filter(|&k| k != j) {
                    best.offer(gram_d2(gjj, gbb[(k, k)], sym(gbb, j, k)), true);
                }
                sum_b += best.correct();
            }
        }
        Ok((sum_a, sum_b))
    })?;
    let sum_a: f64 = parts.iter().map(|p| p.0).sum();
    let sum_b: f64 = parts.iter().map(|p| p.1).sum();
    Ok(0.5 * (sum_a / na as f64 + sum_b / nb as f64))
}

/// Balanced leave-one-out 1-nearest-neighbour two-sample accuracy between
/// the sets (module docs): 0.5 when the generated set cannot be told from
/// the real one by its nearest neighbours, 1 when every matrix's nearest
/// other matrix comes from its own set. Needs at least 2 matrices in each
/// set. The Gram matrices run on `par`, the scan on `par.degree()` threads.
pub fn nn_accuracy(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<f64> {
    check_pair(real, generated, 2)?;
    nn_from_grams(&Grams::new(real, generated, par), par.degree())
}

/// Rows of queries per product in [`nearest_sq`].
const NEAREST_BLOCK: usize = 256;

/// For every row of `q` (`nq x d`) the squared Euclidean distance to the
/// nearest row of `t` (`nt x d`, `nt >= 1`), through blocks of the cross Gram matrix
/// (`||x - y||² = <x,x> + <y,y> - 2<x,y>`, clamped at 0). Allocates its
/// buffers once; the products run on `par`. A squared norm that overflows
/// is a numerical error.
fn nearest_sq(q: MatRef<'_, f64>, t: MatRef<'_, f64>, par: Par) -> Result<Vec<f64>> {
    let (nq, nt) = (q.nrows(), t.nrows());
    let tn: Vec<f64> = (0..nt).map(|j| t.row(j).squared_norm_l2()).collect();
    for &x in &tn {
        finite(x, "a squared norm of a training matrix")?;
    }
    let block = NEAREST_BLOCK.min(nq).max(1);
    let mut g = Mat::<f64>::zeros(block, nt);
    let mut out = vec![0.0; nq];
    let mut start = 0;
    while start < nq {
        let b = block.min(nq - start);
        let qb = q.subrows(start, b);
        let mut gb = g.as_mut().subrows_mut(0, b);
        gemm(gb.as_mut(), Accum::Replace, qb, t.transpose(), 1.0, par);
        for (r, o) in out[start..start + b].iter_mut().enumerate() {
            let qn = finite(qb.row(r).squared_norm_l2(), "a squared norm")?;
            let mut best = f64::INFINITY;
            for (j, &tj) in tn.iter().enumerate() {
                best = best.min(gram_d2(qn, tj, gb[(r, j)]));
            }
            *o = best;
        }
        start += b;
    }
    Ok(out)
}

/// The median of the distances from each matrix of `query` to its closest
/// matrix of `train`.
fn median_closest(query: &MatrixBatch<'_>, train: &MatrixBatch<'_>, par: Par) -> Result<f64> {
    let (mut own_q, mut own_t) = (Mat::<f64>::zeros(0, 0), Mat::<f64>::zeros(0, 0));
    let (zq, zt) = flat_pair(query, train, &mut own_q, &mut own_t);
    let mut d2 = nearest_sq(zq, zt, par)?;
    finite(
        median_distance(&mut d2),
        "the median closest-record distance",
    )
}

/// The held-out denominator of the closest-record ratio, checked.
fn dcr_denominator(real: &MatrixBatch<'_>, train: &MatrixBatch<'_>, par: Par) -> Result<f64> {
    let den = median_closest(real, train, par)?;
    if den == 0.0 {
        return Err(Error::invalid(
            "train: half or more of the real (held-out) matrices equal a training matrix, so the closest-record ratio is undefined",
        ));
    }
    Ok(den)
}

/// Checks a training set against the real one: complete, finite, the same
/// matrix size, at least 1 matrix.
fn check_train(real: &MatrixBatch<'_>, train: &MatrixBatch<'_>) -> Result<()> {
    check_set(train, "train", 1)?;
    if (train.rows(), train.cols()) != (real.rows(), real.cols()) {
        return Err(Error::shape(format!(
            "train: {} x {} matrices, but real has {} x {}",
            train.rows(),
            train.cols(),
            real.rows(),
            real.cols()
        )));
    }
    train.check_finite("train")
}

/// Distance-to-closest-record ratio (module docs): the median over the
/// generated matrices of the distance to the closest training matrix,
/// divided by the same median over the real (held-out) matrices. Below 1
/// the generated matrices sit closer to the training set than fresh data
/// do, which points at copying; near 0 they are copies. Errors when the
/// held-out median is 0. The products run on `par`.
pub fn dcr_ratio(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    train: &MatrixBatch<'_>,
    par: Par,
) -> Result<f64> {
    check_pair(real, generated, 1)?;
    check_train(real, train)?;
    let den = dcr_denominator(real, train, par)?;
    finite(
        median_closest(generated, train, par)? / den,
        "the closest-record ratio",
    )
}

// ---------------------------------------------------------------------------
// Moments

/// Mean and covariances of one set.
struct Moments {
    mean: Mat<f64>,
    mean_sq_norm: f64,
    row_cov: Mat<f64>,
    col_cov: Mat<f64>,
}

fn mean_impl(b: &MatrixBatch<'_>, threads: usize) -> Result<(Mat<f64>, f64)> {
    let (m, n) = (b.rows(), b.cols());
    let parts = map_chunks(b.count(), threads, |range| {
        let mut s = Mat::<f64>::zeros(m, n);
        let mut sq = 0.0;
        for i in range {
            let x = b.sample(i);
            s += x;
            sq += x.squared_norm_l2();
        }
        Ok((s, sq))
    })?;
    let sq: f64 = parts.iter().map(|p| p.1).sum();
    let mut mean = sum_in_order(parts.into_iter().map(|p| p.0).collect());
    let inv = 1.0 / b.count() as f64;
    mean *= faer::Scale(inv);
    Ok((mean, sq * inv))
}

fn moments_impl(b: &MatrixBatch<'_>, threads: usize) -> Result<Moments> {
    let (m, n) = (b.rows(), b.cols());
    let (mean, mean_sq_norm) = mean_impl(b, threads)?;
    let parts = map_chunks(b.count(), threads, |range| {
        let mut rows = Mat::<f64>::zeros(m, m);
        let mut cols = Mat::<f64>::zeros(n, n);
        let mut d = Mat::<f64>::zeros(m, n);
        for i in range {
            // Centre first: sum X X^T - N Xbar Xbar^T cancels badly when the
            // mean dominates the spread.
            d.copy_from(b.sample(i));
            d -= &mean;
            syrk_lower(rows.as_mut(), Accum::Add, d.as_ref(), 1.0, Par::Seq);
            syrk_lower(
                cols.as_mut(),
                Accum::Add,
                d.as_ref().transpose(),
                1.0,
                Par::Seq,
            );
        }
        Ok([rows, cols])
    })?;
    let (mut rp, mut cp) = (Vec::new(), Vec::new());
    for [r, c] in parts {
        rp.push(r);
        cp.push(c);
    }
    let inv = faer::Scale(1.0 / b.count() as f64);
    let mut row_cov = sum_in_order(rp);
    let mut col_cov = sum_in_order(cp);
    mirror_lower(row_cov.as_mut());
    mirror_lower(col_cov.as_mut());
    row_cov *= inv;
    col_cov *= inv;
    Ok(Moments {
        mean,
        mean_sq_norm,
        row_cov,
        col_cov,
    })
}

fn relative(num: MatRef<'_, f64>, den: MatRef<'_, f64>, what: &str, why: &str) -> Result<f64> {
    let mut diff = num.to_owned();
    diff -= den;
    let d = den.norm_l2();
    if d == 0.0 {
        return Err(Error::invalid(format!(
            "real: {why}, so the relative {what} is undefined"
        )));
    }
    finite(diff.norm_l2() / d, what)
}

fn mean_error_from(a: &Moments, b_mean: MatRef<'_, f64>) -> Result<f64> {
    if a.mean_sq_norm == 0.0 {
        return Err(Error::invalid(
            "real: every matrix is zero, so the relative mean error is undefined",
        ));
    }
    let mut diff = b_mean.to_owned();
    diff -= &a.mean;
    finite(diff.norm_l2() / a.mean_sq_norm.sqrt(), "the mean error")
}

/// Mean error `||mean_B X - mean_A X|| / sqrt(mean_i ||A_i||²)`.
pub fn mean_error(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<f64> {
    check_pair(real, generated, 1)?;
    let t = par.degree();
    let (mean, mean_sq_norm) = mean_impl(real, t)?;
    let a = Moments {
        mean,
        mean_sq_norm,
        row_cov: Mat::zeros(0, 0),
        col_cov: Mat::zeros(0, 0),
    };
    mean_error_from(&a, mean_impl(generated, t)?.0.as_ref())
}

/// The row covariance `(1/N) sum (X - Xbar)(X - Xbar)^T` (`m x m`) and the
/// column covariance `(1/N) sum (X - Xbar)^T (X - Xbar)` (`n x n`) of a set.
pub fn covariances(batch: &MatrixBatch<'_>, par: Par) -> Result<(Mat<f64>, Mat<f64>)> {
    check_set(batch, "batch", 1)?;
    batch.check_finite("batch")?;
    let mo = moments_impl(batch, par.degree())?;
    Ok((mo.row_cov, mo.col_cov))
}

/// Relative Frobenius errors of the row and the column covariance:
/// `(||R_B - R_A|| / ||R_A||, ||K_B - K_A|| / ||K_A||)`.
pub fn covariance_errors(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    par: Par,
) -> Result<(f64, f64)> {
    check_pair(real, generated, 1)?;
    let t = par.degree();
    let a = moments_impl(real, t)?;
    let b = moments_impl(generated, t)?;
    covariance_errors_from(&a, &b)
}

fn covariance_errors_from(a: &Moments, b: &Moments) -> Result<(f64, f64)> {
    let why = "all matrices are equal (zero covariance)";
    Ok((
        relative(
            b.row_cov.as_ref(),
            a.row_cov.as_ref(),
            "row-covariance error",
            why,
        )?,
        relative(
            b.col_cov.as_ref(),
            a.col_cov.as_ref(),
            "column-covariance error",
            why,
        )?,
    ))
}

// ---------------------------------------------------------------------------
// Everything at once

/// Every set-versus-set metric of `generated` against `real`, sharing the
/// singular values between the spectral metrics. Both sets need at least 2
/// matrices when the pairwise metrics are computed (the unbiased MMD² needs
/// pairs), at least 1 otherwise. The closest-record ratio needs the training
/// set and is `None` here: see [`evaluate_with_train`].
pub fn evaluate(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    opts: &EvalOptions,
) -> Result<Metrics> {
    evaluate_with_train(real, generated, None, opts)
}

/// [`evaluate`] with the training set the generator was fitted on, when
/// given: then the metrics include the distance-to-closest-record ratio
/// ([`dcr_ratio`]), otherwise it is `None`. `train` holds complete, finite
/// matrices of the size of `real`, at least 1.
pub fn evaluate_with_train(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    train: Option<&MatrixBatch<'_>>,
    opts: &EvalOptions,
) -> Result<Metrics> {
    check_top_k(opts.top_k)?;
    check_pair(real, generated, if opts.mmd { 2 } else { 1 })?;
    if let Some(t) = train {
        check_train(real, t)?;
    }
    let mut r = Reference::new_checked(real, opts)?;
    if let Some(t) = train {
        r = r.with_train_checked(t, opts)?;
    }
    r.evaluate_checked(generated, opts)
}

/// A real set with its singular values and moments computed once, for
/// scoring many generated sets against it (a benchmark scores every method
/// against one test set): [`Reference::evaluate`] gives exactly what
/// [`evaluate`] gives, without recomputing the real set's share.
pub struct Reference<'a> {
    real: MatrixBatch<'a>,
    spectra: Mat<f64>,
    moments: Moments,
    /// The training set and the held-out median closest-record distance.
    train: Option<(MatrixBatch<'a>, f64)>,
}

impl<'a> Reference<'a> {
    /// Precomputes the statistics of `real` (at least 2 complete, finite
    /// matrices; `opts.threads` workers).
    pub fn new(real: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        check_set(real, "real", 2)?;
        real.check_finite("real")?;
        Self::new_checked(real, opts)
    }

    fn new_checked(real: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        let threads = resolve_threads(opts.threads);
        Ok(Reference {
            real: *real,
            spectra: singular_values_impl(real, threads)?,
            moments: moments_impl(real, threads)?,
            train: None,
        })
    }

    /// Adds the training set of the generators to be scored, so that
    /// [`Reference::evaluate`] includes the closest-record ratio; the
    /// held-out median (real to training set) is computed here, once.
    /// `train` holds complete, finite matrices of the size of the real set.
    pub fn with_train(self, train: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        check_train(&self.real, train)?;
        self.with_train_checked(train, opts)
    }

    fn with_train_checked(mut self, train: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        let par = par_for_threads(resolve_threads(opts.threads));
        let den = dcr_denominator(&self.real, train, par)?;
        self.train = Some((*train, den));
        Ok(self)
    }

    /// Every metric of `generated` against the real set, as [`evaluate`].
    pub fn evaluate(&self, generated: &MatrixBatch<'_>, opts: &EvalOptions) -> Result<Metrics> {
        check_top_k(opts.top_k)?;
        check_pair(&self.real, generated, if opts.mmd { 2 } else { 1 })?;
        self.evaluate_checked(generated, opts)
    }

    fn evaluate_checked(&self, generated: &MatrixBatch<'_>, opts: &EvalOptions) -> Result<Metrics> {
        let threads = resolve_threads(opts.threads);
        let sa = self.spectra.as_ref();
        let sb = singular_values_impl(generated, threads)?;
        let sve = sve_from_spectra(sa, sb.as_ref())?;
        let topk_w1 = topk_from_spectra(sa, sb.as_ref(), opts.top_k)?;
        let a = &self.moments;
        let b = moments_impl(generated, threads)?;
        let mean_error = mean_error_from(a, b.mean.as_ref())?;
        let (rowcov_rel_error, colcov_rel_error) = covariance_errors_from(a, &b)?;
        let par = par_for_threads(threads);
        let (mmd, nn_accuracy) = if opts.mmd {
            let g = Grams::new(&self.real, generated, par);
            (Some(mmd_from_grams(&g)?), Some(nn_from_grams(&g, threads)?))
        } else {
            (None, None)
        };
        let dcr_ratio = match &self.train {
            Some((train, den)) => Some(finite(
                median_closest(generated, train, par)? / den,
                "the closest-record ratio",
            )?),
            None => None,
        };
        Ok(Metrics {
            sve,
            topk_w1,
            mmd,
            mean_error,
            rowcov_rel_error,
            colcov_rel_error,
            nn_accuracy,
            dcr_ratio,
        })
    }
}

// ---------------------------------------------------------------------------
// Geometry and completion

/// Checks that `u` is a finite `rows x r` matrix with `1 <= r <= rows` and
/// orthonormal columns (to `1e-6`, so that rounding in a fit passes).
fn check_basis(u: MatRef<'_, f64>, what: &str) -> Result<()> {
    let (m, r) = u.shape();
    if r == 0 || r > m {
        return Err(Error::shape(format!(
            "{what}: {m} x {r}, but a basis needs 1 <= columns <= rows"
        )));
    }
    for j in 0..r {
        for i in 0..m {
            if !u[(i, j)].is_finite() {
                return Err(Error::non_finite(format!(
                    "{what}: the non-finite value {} at row {i}, column {j}",
                    u[(i, j)]
                )));
            }
        }
    }
    let mut g = Mat::<f64>::zeros(r, r);
    gemm(g.as_mut(), Accum::Replace, u.transpose(), u, 1.0, Par::Seq);
    for j in 0..r {
        g[(j, j)] -= 1.0;
    }
    let dev = g.norm_max();
    if dev > 1e-6 {
        return Err(Error::invalid(format!(
            "{what}: the columns are not orthonormal (max |U^T U - I| = {dev:.3e})"
        )));
    }
    Ok(())
}

fn check_bases(u: MatRef<'_, f64>, u_star: MatRef<'_, f64>) -> Result<()> {
    check_basis(u, "u")?;
    check_basis(u_star, "u_star")?;
    if u_star.nrows() != u.nrows() {
        return Err(Error::shape(format!(
            "u_star: {} rows, but u has {}",
            u_star.nrows(),
            u.nrows()
        )));
    }
    Ok(())
}

/// `||(I - U U^T) W||²`, computed from the residual itself: through
/// `||W||² - ||U^T W||²` it would lose all digits below `sqrt(eps)` for
/// nearly equal subspaces.
fn residual_sq(u: MatRef<'_, f64>, w: MatRef<'_, f64>) -> f64 {
    let mut c = Mat::<f64>::zeros(u.ncols(), w.ncols());
    gemm(c.as_mut(), Accum::Replace, u.transpose(), w, 1.0, Par::Seq);
    let mut res = w.to_owned();
    gemm(res.as_mut(), Accum::Add, u, c.as_ref(), -1.0, Par::Seq);
    res.squared_norm_l2()
}

/// Subspace distance `||U U^T - U* U*^T|| / sqrt(r + r*)` between the spans
/// of the orthonormal columns of `u` (`m x r`) and `u_star` (`m x r*`).
///
/// It lies in `[0, 1]`: 0 for equal subspaces, 1 for orthogonal ones. With
/// equal ranks it is the design's `||U U^T - U* U*^T|| / sqrt(2 r)`; with
/// different ranks the normaliser `sqrt(r + r*)` keeps orthogonal subspaces
/// at 1, and nested subspaces score `sqrt(|r - r*| / (r + r*))`, not 0 — use
/// [`containment`] to ask whether a larger fitted basis holds the truth. It
/// is computed as `||(I - P) U*||² + ||(I - P*) U||² = ||P - P*||²` so that
/// small distances keep full relative accuracy.
pub fn subspace_distance(u: MatRef<'_, f64>, u_star: MatRef<'_, f64>) -> Result<f64> {
    check_bases(u, u_star)?;
    let d2 = residual_sq(u, u_star) + residual_sq(u_star, u);
    Ok((d2 / (u.ncols() + u_star.ncols()) as f64).sqrt())
}

/// Containment `||(I - U U^T) U*|| / sqrt(r*)` of the true subspace
/// `span(u_star)` in the fitted `span(u)`: 0 when the fit holds the truth
/// (whatever extra directions it has), 1 when they are orthogonal.
pub fn containment(u: MatRef<'_, f64>, u_star: MatRef<'_, f64>) -> Result<f64> {
    check_bases(u, u_star)?;
    Ok((residual_sq(u, u_star) / u_star.ncols() as f64).sqrt())
}

/// Completion error `||P^perp(Zhat - X)|| / ||P^perp(X)||` over the entries
/// that were held out. `truth` holds the complete matrices `X` and carries the
/// observation mask (nonzero = observed; the error is measured on the
/// others); `completed` holds `Zhat`, with the same count and shape.
pub fn completion_error(completed: &MatrixBatch<'_>, truth: &MatrixBatch<'_>) -> Result<f64> {
    if !truth.has_mask() {
        return Err(Error::invalid(
            "truth: needs the observation mask (nonzero = observed); the error is measured on the other entries",
        ));
    }
    if truth.count() == 0 {
        return Err(Error::invalid("truth: the set is empty"));
    }
    let shape = |b: &MatrixBatch<'_>| (b.count(), b.rows(), b.cols());
    if shape(completed) != shape(truth) {
        return Err(Error::shape(format!(
            "completed: {} matrices of {} x {}, but truth has {} of {} x {}",
            completed.count(),
            completed.rows(),
            completed.cols(),
            truth.count(),
            truth.rows(),
            truth.cols()
        )));
    }
    completed.without_mask().check_finite("completed")?;
    truth.without_mask().check_finite("truth")?;
    let (mut num, mut den, mut held_out) = (0.0, 0.0, 0usize);
    for i in 0..truth.count() {
        let (z, x) = (completed.sample(i), truth.sample(i));
        let mask = truth.mask(i).expect("mask checked above");
        for c in 0..truth.cols() {
            for r in 0..truth.rows() {
                if !mask.observed(r, c) {
                    let e = z[(r, c)] - x[(r, c)];
                    num += e * e;
                    den += x[(r, c)] * x[(r, c)];
                    held_out += 1;
                }
            }
        }
    }
    if held_out == 0 {
        return Err(Error::invalid(
            "truth: the mask marks every entry observed, so nothing was held out",
        ));
    }
    if den == 0.0 {
        return Err(Error::invalid(
            "truth: every held-out entry is zero, so the relative completion error is undefined",
        ));
    }
    finite((num / den).sqrt(), "the completion error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Rng;
    use crate::error::ErrorKind;

    fn gaussian(count: usize, m: usize, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::seed_from_u64(seed);
        let mut v = vec![0.0; count * m * n];
        rng.fill_normal(&mut v);
        v
    }

    fn batch(data: &[f64], count: usize, m: usize, n: usize) -> MatrixBatch<'_> {
        MatrixBatch::from_c_order(data, count, m, n).unwrap()
    }

    fn all(real: &MatrixBatch<'_>, gen: &MatrixBatch<'_>) -> Metrics {
        evaluate(real, gen, &EvalOptions::default()).unwrap()
    }

    #[test]
    fn identical_sets_score_zero() {
        let a = gaussian(9, 5, 7, 1);
        let b = batch(&a, 9, 5, 7);
        let got = all(&b, &b);
        assert_eq!(got.sve, 0.0);
        assert_eq!(got.topk_w1, 0.0);
        assert_eq!(got.mean_error, 0.0);
        assert_eq!(got.rowcov_rel_error, 0.0);
        assert_eq!(got.colcov_rel_error, 0.0);
        // The unbiased estimate of a set against itself is -2/N + O(1/N^2)
        // times a kernel mean: small and negative, not 0.
        let mmd = got.mmd.unwrap();
        assert!(mmd.mmd2 < 0.0 && mmd.mmd2 > -2.0 / 9.0);
    }

    #[test]
    fn doubling_a_set_gives_known_errors() {
        let a = gaussian(11, 4, 6, 2);
        let b: Vec<f64> = a.iter().map(|x| 2.0 * x).collect();
        let got = all(&batch(&a, 11, 4, 6), &batch(&b, 11, 4, 6));
        let tol = 1e-14;
        // Singular values double: ||2s - s|| / ||s|| = 1, and every
        // W1(s_k, 2 s_k) is mean(s_k) (the quantile gap is s_k itself).
        assert!((got.sve - 1.0).abs() < tol);
        assert!((got.topk_w1 - 1.0).abs() < tol);
        // Covariances scale by 4.
        assert!((got.rowcov_rel_error - 3.0).abs() < tol);
        assert!((got.colcov_rel_error - 3.0).abs() < tol);
        // ||2 mean - mean|| / rms.
        let (mean, msq) = mean_impl(&batch(&a, 11, 4, 6), 1).unwrap();
        assert!((got.mean_error - mean.norm_l2() / msq.sqrt()).abs() < tol);
    }

    #[test]
    fn covariances_of_a_symmetric_pair() {
        // {X, -X}: the mean is 0 and R = X X^T, K = X^T X.
        let x = gaussian(1, 3, 5, 3);
        let mut d = x.clone();
        d.extend(x.iter().map(|v| -v));
        let (r, k) = covariances(&batch(&d, 2, 3, 5), Par::Seq).unwrap();
        let xm = MatRef::from_row_major_slice(&x, 3, 5);
        assert!((r - xm * xm.transpose()).norm_max() < 1e-14);
        assert!((k - xm.transpose() * xm).norm_max() < 1e-14);
    }

    #[test]
    fn singular_values_are_descending_per_sample() {
        // diag(3, 1, 2) and its negative, 3 x 4 with a zero column.
        let mut d = vec![0.0; 2 * 12];
        for (k, v) in [3.0, 1.0, 2.0].into_iter().enumerate() {
            d[k * 4 + k] = v;
            d[12 + k * 4 + k] = -v;
        }
        let s = singular_values(&batch(&d, 2, 3, 4), Par::Seq).unwrap();
        assert_eq!(s.shape(), (2, 3));
        for i in 0..2 {
            for (k, v) in [3.0, 2.0, 1.0].into_iter().enumerate() {
                assert!((s[(i, k)] - v).abs() < 1e-15);
            }
        }
    }

    #[test]
    fn wasserstein_of_known_samples() {
        let w = |a: &[f64], b: &[f64]| wasserstein1(a, b).unwrap();
        assert_eq!(w(&[1.0, 2.0, 3.0], &[3.0, 1.0, 2.0]), 0.0);
        assert_eq!(w(&[0.0, 1.0], &[0.5]), 0.5);
        assert_eq!(w(&[0.0], &[1.0, 3.0]), 2.0);
        // Quantiles 0,1,2,3 against 0,0,3,3 on quarters: gaps 0,1,1,0.
        assert_eq!(w(&[3.0, 0.0, 2.0, 1.0], &[0.0, 3.0]), 0.5);
        // Shifting one sample shifts W1 by the same amount.
        let a = gaussian(1, 1, 37, 4);
        let b: Vec<f64> = a.iter().map(|x| x + 2.5).collect();
        assert!((w(&a, &b) - 2.5).abs() < 1e-14);
        // Sizes 37 and 23 against the CDF form: integral of |F_a - F_b| dx.
        let b = gaussian(1, 1, 23, 5);
        let mut xs: Vec<f64> = a.iter().chain(&b).copied().collect();
        xs.sort_by(f64::total_cmp);
        let cdf = |s: &[f64], x: f64| s.iter().filter(|&&v| v <= x).count() as f64 / s.len() as f64;
        let brute: f64 = xs
            .windows(2)
            .map(|p| (cdf(&a, p[0]) - cdf(&b, p[0])).abs() * (p[1] - p[0]))
            .sum();
        assert!((w(&a, &b) - brute).abs() < 1e-13);
        assert_eq!(
            wasserstein1(&[], &[1.0]).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let err = wasserstein1(&[1.0], &[f64::NAN]).unwrap_err();
        assert!(err.message().starts_with("b:"));
    }

    #[test]
    fn mmd_of_a_far_shifted_set_reaches_its_limit() {
        // Within-set distances vanish against the shift, so within-set
        // kernels are 1; more than half of the pairs are cross pairs, so h0
        // is the shift distance D and the cross kernels are exp(-D²/(2h²)) at
        // h = D/2, D, 2D. MMD² -> 2 - 2 mean(e^-2, e^-1/2, e^-1/8).
        let (count, m, n) = (20, 3, 4);
        let a = gaussian(count, m, n, 6);
        let b: Vec<f64> = gaussian(count, m, n, 7).iter().map(|x| x + 1e4).collect();
        let got = mmd2(&batch(&a, count, m, n), &batch(&b, count, m, n), Par::Seq).unwrap();
        let d = 1e4 * ((m * n) as f64).sqrt();
        assert!((got.h0 / d - 1.0).abs() < 1e-3);
        let limit = 2.0 - 2.0 * ((-2.0f64).exp() + (-0.5f64).exp() + (-0.125f64).exp()) / 3.0;
        assert!((got.mmd2 - limit).abs() < 1e-3, "{} vs {limit}", got.mmd2);
        // Each bandwidth separately: 2 - 2 k(D).
        for (t, f) in [0.5f64, 1.0, 2.0].into_iter().enumerate() {
            let k = (-1.0 / (2.0 * f * f)).exp();
            assert!((got.per_bandwidth[t] - (2.0 - 2.0 * k)).abs() < 1e-3);
        }
    }

    #[test]
    fn mmd_is_small_for_the_same_distribution() {
        let (count, m, n) = (60, 4, 4);
        let a = gaussian(count, m, n, 8);
        let b = gaussian(count, m, n, 9);
        let same = mmd2(&batch(&a, count, m, n), &batch(&b, count, m, n), Par::Seq).unwrap();
        let c: Vec<f64> = b.iter().map(|x| 1.5 * x + 0.5).collect();
        let other = mmd2(&batch(&a, count, m, n), &batch(&c, count, m, n), Par::Seq).unwrap();
        assert!(same.mmd2.abs() < 0.02, "{}", same.mmd2);
        assert!(
            other.mmd2 > 10.0 * same.mmd2.abs(),
            "{} vs {}",
            other.mmd2,
            same.mmd2
        );
    }

    #[test]
    fn mmd_of_equal_matrices_uses_the_zero_bandwidth_limit() {
        // Most pairs are equal: h0 = 0, the kernel is 1 for equal matrices
        // and 0 otherwise.
        let a = vec![1.0; 4 * 2 * 2];
        let mut b = a.clone();
        b[0] = 2.0; // B_0 differs from everything else.
        let got = mmd2(&batch(&a, 4, 2, 2), &batch(&b, 4, 2, 2), Par::Seq).unwrap();
        assert_eq!(got.h0, 0.0);
        // kAA = 6 pairs of 1, kBB = 3 equal pairs of 6, kAB = 12 of 16.
        let want = 2.0 * 6.0 / 12.0 + 2.0 * 3.0 / 12.0 - 2.0 * 12.0 / 16.0;
        assert!((got.mmd2 - want).abs() < 1e-15);
    }

    #[test]
    fn results_do_not_depend_on_threads_or_layout() {
        let (count, m, n) = (29, 6, 5);
        let a = gaussian(count, m, n, 10);
        let b = gaussian(count + 3, m, n, 11);
        let (ba, bb) = (batch(&a, count, m, n), batch(&b, count + 3, m, n));
        let one = evaluate(
            &ba,
            &bb,
            &EvalOptions {
                threads: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let three = evaluate(
            &ba,
            &bb,
            &EvalOptions {
                threads: 3,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(one.sve, three.sve);
        assert_eq!(one.topk_w1, three.topk_w1);
        assert_eq!(one.mean_error, three.mean_error);
        assert_eq!(one.rowcov_rel_error, three.rowcov_rel_error);
        assert_eq!(one.colcov_rel_error, three.colcov_rel_error);
        assert_eq!(one.nn_accuracy, three.nn_accuracy);
        let (p, q) = (one.mmd.unwrap(), three.mmd.unwrap());
        assert!((p.mmd2 - q.mmd2).abs() < 1e-14 && (p.h0 - q.h0).abs() < 1e-14 * p.h0);
        // The real set in reverse sample order with transposed strides:
        // no flat view exists, so the MMD copies; values agree to rounding.
        let l = crate::batch::Layout {
            count,
            rows: m,
            cols: n,
            sample_stride: -((m * n) as isize),
            row_stride: 1,
            col_stride: m as isize,
        };
        let mut t = vec![0.0; count * m * n];
        for i in 0..count {
            for r in 0..m {
                for c in 0..n {
                    t[(count - 1 - i) * m * n + r + m * c] = a[(i * m + r) * n + c];
                }
            }
        }
        let rev = MatrixBatch::new(&t, (count - 1) * m * n, l).unwrap();
        let other = evaluate(&rev, &bb, &EvalOptions::default()).unwrap();
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs();
        assert!(close(other.sve, one.sve) && close(other.topk_w1, one.topk_w1));
        assert!(close(other.mmd.unwrap().mmd2, p.mmd2));
        assert!(close(other.rowcov_rel_error, one.rowcov_rel_error));
        assert_eq!(other.nn_accuracy, one.nn_accuracy);
        // The closest-record ratio with a strided training set (the reversed
        // real set) against a C-order one: the same up to rounding.
        let t1 = dcr_ratio(&bb, &ba, &rev, Par::Seq);
        let t2 = dcr_ratio(&bb, &rev, &ba, Par::rayon(3));
        // Real matrices as their own training set: the generated side is 0.
        assert!(t1.unwrap() < 1e-6 && t2.unwrap() < 1e-6);
        let c = gaussian(40, m, n, 12);
        let bc = batch(&c, 40, m, n);
        let d1 = dcr_ratio(&bb, &bc, &rev, Par::Seq).unwrap();
        let d2 = dcr_ratio(&bb, &bc, &ba, Par::rayon(3)).unwrap();
        assert!(close(d1, d2), "{d1} vs {d2}");
    }

    #[test]
    fn topk_skips_vanishing_singular_values() {
        // Rank-1 real matrices: only the first singular value counts.
        let (count, m, n) = (10, 4, 3);
        let mut rng = Rng::seed_from_u64(12);
        let mut a = vec![0.0; count * m * n];
        for i in 0..count {
            let (u, v): (Vec<f64>, Vec<f64>) = (
                (0..m).map(|_| rng.normal()).collect(),
                (0..n).map(|_| rng.normal()).collect(),
            );
            for r in 0..m {
                for c in 0..n {
                    a[(i * m + r) * n + c] = u[r] * v[c];
                }
            }
        }
        let b: Vec<f64> = a.iter().map(|x| 3.0 * x).collect();
        let d = topk_spectrum_distance(
            &batch(&a, count, m, n),
            &batch(&b, count, m, n),
            10,
            Par::Seq,
        )
        .unwrap();
        assert!((d - 2.0).abs() < 1e-13, "{d}");
    }

    #[test]
    fn subspace_distance_and_containment() {
        let m = 12;
        let e = |cols: &[usize]| {
            Mat::<f64>::from_fn(m, cols.len(), |i, j| f64::from(u8::from(i == cols[j])))
        };
        let u = e(&[0, 1, 2]);
        // Orthogonal subspaces: distance 1, containment 1.
        let w = e(&[3, 4, 5]);
        assert!((subspace_distance(u.as_ref(), w.as_ref()).unwrap() - 1.0).abs() < 1e-15);
        assert!((containment(u.as_ref(), w.as_ref()).unwrap() - 1.0).abs() < 1e-15);
        // The same subspace in another basis: 0.
        let (c, s) = (0.6, 0.8);
        let rot = Mat::<f64>::from_fn(3, 3, |i, j| match (i, j) {
            (0, 0) | (1, 1) => c,
            (0, 1) => -s,
            (1, 0) => s,
            (2, 2) => 1.0,
            _ => 0.0,
        });
        let ur = &u * &rot;
        assert!(subspace_distance(u.as_ref(), ur.as_ref()).unwrap() < 1e-15);
        // Nested: the fit holds the truth, the distance counts the extra rank.
        let big = e(&[0, 1, 2, 7, 8]);
        assert!(containment(big.as_ref(), u.as_ref()).unwrap() < 1e-15);
        let d = subspace_distance(big.as_ref(), u.as_ref()).unwrap();
        assert!((d - (2.0f64 / 8.0).sqrt()).abs() < 1e-15);
        assert!(
            (containment(u.as_ref(), big.as_ref()).unwrap() - (2.0f64 / 5.0).sqrt()).abs() < 1e-15
        );
        // A tiny rotation keeps full relative accuracy: ||P - P*|| = sqrt(2) sin t.
        let t = 1e-10f64;
        let mut v = u.clone();
        v[(2, 2)] = t.cos();
        v[(9, 2)] = t.sin();
        let d = subspace_distance(u.as_ref(), v.as_ref()).unwrap();
        let want = (2.0f64).sqrt() * t.sin() / (6.0f64).sqrt();
        assert!((d / want - 1.0).abs() < 1e-6, "{d} vs {want}");
    }

    #[test]
    fn subspace_arguments_are_checked() {
        let u = Mat::<f64>::identity(6, 2);
        let bad = Mat::<f64>::from_fn(6, 2, |i, j| if i == j { 2.0 } else { 0.0 });
        let err = subspace_distance(bad.as_ref(), u.as_ref()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().starts_with("u:"), "{}", err.message());
        let short = Mat::<f64>::identity(5, 2);
        let err = containment(u.as_ref(), short.as_ref()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        assert!(err.message().starts_with("u_star:"));
        let mut nan = u.clone();
        nan[(3, 1)] = f64::NAN;
        let err = containment(u.as_ref(), nan.as_ref()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NonFinite);
    }

    #[test]
    fn completion_error_on_held_out_entries() {
        let (count, m, n) = (2, 3, 3);
        let x: Vec<f64> = (0..count * m * n).map(|k| k as f64 + 1.0).collect();
        let mut mask = vec![1u8; x.len()];
        let mut z = x.clone();
        // Held out: entries 4 (value 5) and 13 (value 14); errors 3 and 4.
        mask[4] = 0;
        mask[13] = 0;
        z[4] += 3.0;
        z[13] -= 4.0;
        z[0] += 100.0; // observed entries do not count
        let truth = batch(&x, count, m, n).with_mask(&mask).unwrap();
        let got = completion_error(&batch(&z, count, m, n), &truth).unwrap();
        let want = 5.0 / (25.0f64 + 196.0).sqrt();
        assert!((got - want).abs() < 1e-15);
        let err = completion_error(&batch(&z, count, m, n), &batch(&x, count, m, n)).unwrap_err();
        assert!(err.message().starts_with("truth:"));
        let full = vec![1u8; x.len()];
        let truth = batch(&x, count, m, n).with_mask(&full).unwrap();
        assert!(completion_error(&batch(&z, count, m, n), &truth).is_err());
        let truth = batch(&x, count, m, n).with_mask(&mask).unwrap();
        let err = completion_error(&batch(&z[..9], 1, m, n), &truth).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        assert!(err.message().starts_with("completed:"));
    }

    #[test]
    fn invalid_sets_are_reported_by_name() {
        let a = gaussian(4, 5, 4, 13);
        let b = gaussian(4, 3, 4, 14);
        let opts = EvalOptions::default();
        let empty = MatrixBatch::from_c_order(&a, 0, 5, 4).unwrap();
        let err = evaluate(&empty, &batch(&a, 4, 5, 4), &opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().starts_with("real:"), "{}", err.message());
        let err = spectrum_error(&batch(&a, 4, 5, 4), &empty, Par::Seq).unwrap_err();
        assert!(err.message().starts_with("generated:"), "{}", err.message());

        let err = evaluate(&batch(&a, 4, 5, 4), &batch(&b, 4, 3, 4), &opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        assert_eq!(
            err.message(),
            "generated: 3 x 4 matrices, but real has 5 x 4"
        );

        let mut c = a.clone();
        c[17] = f64::NAN;
        let err = evaluate(&batch(&a, 4, 5, 4), &batch(&c, 4, 5, 4), &opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NonFinite);
        assert!(
            err.message().starts_with("generated: matrix 0"),
            "{}",
            err.message()
        );
        let err = mean_error(&batch(&c, 4, 5, 4), &batch(&a, 4, 5, 4), Par::Seq).unwrap_err();
        assert!(err.message().starts_with("real:"));

        // The unbiased MMD² needs pairs; without it one matrix is enough.
        let one = batch(&a[..20], 1, 5, 4);
        let err = evaluate(&batch(&a, 4, 5, 4), &one, &opts).unwrap_err();
        assert!(
            err.message().starts_with("generated: 1 matrices"),
            "{}",
            err.message()
        );
        let no_mmd = EvalOptions { mmd: false, ..opts };
        let got = evaluate(&batch(&a, 4, 5, 4), &one, &no_mmd).unwrap();
        assert!(got.mmd.is_none() && got.sve.is_finite());

        let mask = vec![1u8; a.len()];
        let masked = batch(&a, 4, 5, 4).with_mask(&mask).unwrap();
        let err = evaluate(&masked, &batch(&a, 4, 5, 4), &opts).unwrap_err();
        assert!(err.message().starts_with("real:"));

        let zeros = vec![0.0; a.len()];
        let err = evaluate(&batch(&zeros, 4, 5, 4), &batch(&a, 4, 5, 4), &opts).unwrap_err();
        assert!(err.message().starts_with("real:"));
        let err = evaluate(
            &batch(&a, 4, 5, 4),
            &batch(&a, 4, 5, 4),
            &EvalOptions { top_k: 0, ..opts },
        )
        .unwrap_err();
        assert!(err.message().starts_with("top_k:"));
    }

    #[test]
    fn overflowing_values_are_a_numerical_error() {
        let a = gaussian(4, 2, 2, 15);
        let b: Vec<f64> = a.iter().map(|x| x * 1e300).collect();
        let err = evaluate(
            &batch(&a, 4, 2, 2),
            &batch(&b, 4, 2, 2),
            &EvalOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numerical);
    }

    #[test]
    fn reference_scores_equal_evaluate() {
        let a = gaussian(12, 6, 5, 21);
        let b = gaussian(9, 6, 5, 22);
        let c = gaussian(7, 6, 5, 23);
        let (ra, gb, gc) = (batch(&a, 12, 6, 5), batch(&b, 9, 6, 5), batch(&c, 7, 6, 5));
        let opts = EvalOptions {
            threads: 2,
            top_k: 3,
            mmd: true,
        };
        let r = Reference::new(&ra, &opts).unwrap();
        for g in [&gb, &gc] {
            assert_eq!(
                r.evaluate(g, &opts).unwrap(),
                evaluate(&ra, g, &opts).unwrap()
            );
        }
        let e = r
            .evaluate(&batch(&c[..7 * 5 * 5], 7, 5, 5), &opts)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Shape);
        assert!(e.message().starts_with("generated:"), "{}", e.message());
        let e = Reference::new(&batch(&a[..30], 1, 6, 5), &opts)
            .err()
            .unwrap();
        assert!(e.message().starts_with("real:"), "{}", e.message());
    }

    #[test]
    fn nn_accuracy_of_a_hand_computed_case() {
        // 1 x 1 matrices. Pooled: 0, 1, 5 (real) and 2, 7, 8 (generated).
        // 0 -> 1 (own), 1 -> 0 and 2 tie (half), 5 -> 7 (other);
        // 2 -> 1 (other), 7 -> 8 (own), 8 -> 7 (own).
        let a = [0.0, 1.0, 5.0];
        let b = [2.0, 7.0, 8.0];
        let got = nn_accuracy(&batch(&a, 3, 1, 1), &batch(&b, 3, 1, 1), Par::Seq).unwrap();
        let want = 0.5 * (1.5 / 3.0 + 2.0 / 3.0);
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        // Unequal sizes: a fourth generated matrix at 0.9 takes 1 (0.1 from
        // it): 0 -> 0.9 (other), 1 -> 0.9 (other), 5 -> 7, 0.9 -> 1 (other).
        let b = [2.0, 7.0, 8.0, 0.9];
        let got = nn_accuracy(&batch(&a, 3, 1, 1), &batch(&b, 4, 1, 1), Par::Seq).unwrap();
        let want = 0.5 * (0.0 / 3.0 + 2.0 / 4.0);
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }

    #[test]
    fn nn_accuracy_separates_and_matches() {
        let (count, m, n) = (150, 3, 4);
        let a = gaussian(count, m, n, 31);
        let b = gaussian(count + 50, m, n, 32);
        let (ba, bb) = (batch(&a, count, m, n), batch(&b, count + 50, m, n));
        // One distribution, unequal sizes: about 0.5 (balanced accuracy).
        let same = nn_accuracy(&ba, &bb, Par::Seq).unwrap();
        assert!((same - 0.5).abs() < 0.06, "{same}");
        // Far apart: every nearest neighbour is in the own set.
        let far: Vec<f64> = b.iter().map(|x| x + 100.0).collect();
        let sep = nn_accuracy(&ba, &batch(&far, count + 50, m, n), Par::Seq).unwrap();
        assert_eq!(sep, 1.0);
        // Copies of the real set: every nearest neighbour is the twin.
        let copies = nn_accuracy(&ba, &ba, Par::Seq).unwrap();
        assert_eq!(copies, 0.0);
        // Half the spread is told apart well above chance.
        let narrow: Vec<f64> = b.iter().map(|x| 0.3 * x).collect();
        let got = nn_accuracy(&ba, &batch(&narrow, count + 50, m, n), Par::Seq).unwrap();
        assert!(got > 0.7, "{got}");
    }

    #[test]
    fn overflowing_norms_in_nearest_neighbour_metrics_are_a_numerical_error() {
        let a = gaussian(4, 2, 2, 61);
        let b: Vec<f64> = a.iter().map(|x| x * 1e300).collect();
        let (ba, bb) = (batch(&a, 4, 2, 2), batch(&b, 4, 2, 2));
        let err = nn_accuracy(&ba, &bb, Par::Seq).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numerical);
        let err = dcr_ratio(&ba, &ba, &bb, Par::Seq).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numerical);
        let c = gaussian(5, 2, 2, 62);
        let err = dcr_ratio(&ba, &bb, &batch(&c, 5, 2, 2), Par::Seq).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numerical);
    }

    #[test]
    fn dcr_ratio_of_a_hand_computed_case() {
        // Training set {0, 10}. Held-out 1, 4, 8: closest distances 1, 4, 2,
        // median 2. Generated 5, 9.5, 0.5, 3: distances 5, 0.5, 0.5, 3,
        // median (0.5 + 3) / 2 = 1.75. Ratio 0.875.
        let t = [0.0, 10.0];
        let a = [1.0, 4.0, 8.0];
        let b = [5.0, 9.5, 0.5, 3.0];
        let got = dcr_ratio(
            &batch(&a, 3, 1, 1),
            &batch(&b, 4, 1, 1),
            &batch(&t, 2, 1, 1),
            Par::Seq,
        )
        .unwrap();
        assert_eq!(got, 0.875);
    }

    #[test]
    fn dcr_ratio_flags_copies_and_passes_fresh_data() {
        let (m, n) = (3, 3);
        let t = gaussian(300, m, n, 41);
        let a = gaussian(120, m, n, 42);
        let b = gaussian(160, m, n, 43);
        let (bt, ba) = (batch(&t, 300, m, n), batch(&a, 120, m, n));
        let fresh = dcr_ratio(&ba, &batch(&b, 160, m, n), &bt, Par::Seq).unwrap();
        assert!((fresh - 1.0).abs() < 0.15, "{fresh}");
        // Copies of training matrices (the first 160, in another order).
        let mut copies = Vec::new();
        for i in (0..160).rev() {
            copies.extend_from_slice(&t[i * m * n..(i + 1) * m * n]);
        }
        let got = dcr_ratio(&ba, &batch(&copies, 160, m, n), &bt, Par::Seq).unwrap();
        assert!(got < 1e-6, "{got}");
        // Copies plus a little noise: well below 1.
        let noisy: Vec<f64> = copies.iter().zip(&b).map(|(c, e)| c + 0.05 * e).collect();
        let got = dcr_ratio(&ba, &batch(&noisy, 160, m, n), &bt, Par::Seq).unwrap();
        assert!(got > 1e-6 && got < 0.3, "{got}");
    }

    #[test]
    fn evaluate_with_train_adds_the_closest_record_ratio() {
        let (m, n) = (4, 3);
        let t = gaussian(50, m, n, 51);
        let a = gaussian(20, m, n, 52);
        let b = gaussian(25, m, n, 53);
        let (bt, ba, bb) = (
            batch(&t, 50, m, n),
            batch(&a, 20, m, n),
            batch(&b, 25, m, n),
        );
        let opts = EvalOptions::default();
        let plain = evaluate(&ba, &bb, &opts).unwrap();
        assert_eq!(plain.dcr_ratio, None);
        assert_eq!(
            plain.nn_accuracy,
            Some(nn_accuracy(&ba, &bb, Par::Seq).unwrap())
        );
        let with = evaluate_with_train(&ba, &bb, Some(&bt), &opts).unwrap();
        assert_eq!(
            with.dcr_ratio,
            Some(dcr_ratio(&ba, &bb, &bt, Par::Seq).unwrap())
        );
        assert_eq!(
            Metrics {
                dcr_ratio: None,
                ..with
            },
            plain
        );
        let r = Reference::new(&ba, &opts)
            .unwrap()
            .with_train(&bt, &opts)
            .unwrap();
        assert_eq!(r.evaluate(&bb, &opts).unwrap(), with);
        // Without the pairwise metrics there is no 1-NN accuracy.
        let no_mmd = EvalOptions { mmd: false, ..opts };
        let got = evaluate_with_train(&ba, &bb, Some(&bt), &no_mmd).unwrap();
        assert_eq!(got.nn_accuracy, None);
        assert_eq!(got.dcr_ratio, with.dcr_ratio);

        // The training set is checked by name.
        let narrow = batch(&t[..50 * 3 * 3], 50, 3, 3);
        let err = evaluate_with_train(&ba, &bb, Some(&narrow), &opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        assert_eq!(err.message(), "train: 3 x 3 matrices, but real has 4 x 3");
        let empty = MatrixBatch::from_c_order(&t, 0, m, n).unwrap();
        let err = dcr_ratio(&ba, &bb, &empty, Par::Seq).unwrap_err();
        assert!(err.message().starts_with("train:"), "{}", err.message());
        let mut bad = t.clone();
        bad[40] = f64::INFINITY;
        let err = Reference::new(&ba, &opts)
            .unwrap()
            .with_train(&batch(&bad, 50, m, n), &opts)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::NonFinite);
        assert!(err.message().starts_with("train:"), "{}", err.message());
        let mask = vec![1u8; t.len()];
        let masked = bt.with_mask(&mask).unwrap();
        let err = evaluate_with_train(&ba, &bb, Some(&masked), &opts).unwrap_err();
        assert!(err.message().starts_with("train:"), "{}", err.message());
        // Held-out matrices that are training matrices leave no denominator.
        let err = dcr_ratio(&bt, &bb, &bt, Par::Seq).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            err.message().starts_with("train: half"),
            "{}",
            err.message()
        );
        // The 1-NN accuracy needs two matrices per set.
        let one = batch(&a[..m * n], 1, m, n);
        let err = nn_accuracy(&ba, &one, Par::Seq).unwrap_err();
        assert!(err.message().starts_with("generated:"), "{}", err.message());
    }
}
