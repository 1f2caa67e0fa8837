//! The mixture kind's leading block: a Gaussian mixture on the standardised
//! scores `y` of the `k` leading components.
//!
//! Law: `p(y) = sum_c pi_c N(y; m_c, S_c)`, `c = 1 .. K`, with
//! `S_c = L_c L_c^T` (`L_c` lower triangular with a positive diagonal).
//! Sampling: `y = m_c + L_c e`, `e` the first `k` normals of the sample's
//! own stream and `c` the first component whose cumulative weight exceeds
//! a uniform from [`rng::stream`]`(mix64(seed ^ MIXTURE_TAG), index)`, so a
//! draw depends only on `(seed, index)`. Log-density: the log-sum-exp of
//! `log pi_c - (k log 2 pi)/2 - sum_j log L_c,jj - ||L_c^-1 (y - m_c)||^2 / 2`.
//!
//! Fit ([`fit_mixture`]): EM on this participant's rows, every sum
//! completed by the reduction hook, from a deterministic start (divisive:
//! the cluster with the largest scatter is cut through its mean across its
//! principal axis, until there are `K`). The covariance update is the
//! posterior mode under `TAU` pseudo-observations of the standardised
//! block's own covariance (the identity):
//! `S_c = (W_c + TAU I) / (n_c + TAU)`, `W_c` the responsibility-weighted
//! scatter and `n_c` the weight of component `c`. It keeps every
//! component well conditioned when `n_c` is near `k` (the plain EM update
//! is then singular), at the cost of a slight widening.
//!
//! Selection ([`select_mixture`]): the block size `k` and the number of
//! components `K >= 2` maximise the BIC of the whole core model (the
//! mixture on the block, the Gaussian on the rest), measured against the
//! Gaussian kind. In standardised scores, the Gaussian on the rest and the
//! standardisation contribute the same for every `k` except `k` unit
//! normals: the score is
//! `LL_mix(y_1..k) + N k (log 2 pi + 1) / 2 - (p(k, K) - k) log(N) / 2`,
//! `p(k, K) = (K - 1) + K k + K k (k + 1) / 2` free parameters, and 0 for
//! the Gaussian kind.

use super::format_err;
use super::leading::BlockDensity;
use crate::error::{Error, Result};
use crate::flow::ode::SolverOptions;
use crate::numerics::{eigh_descending, eigh_descending_scratch, temp_slice, temp_slice_scratch};
use crate::reduce::Reducer;
use crate::rng;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::{Mat, MatMut, MatRef, Par, Side};

/// Salt of the stream that picks a sample's component.
const MIXTURE_TAG: u64 = 0x006d_6978_7475_7265;
/// Pseudo-observations of the identity in every covariance update.
pub const TAU: f64 = 1.0;
/// Largest number of components tried.
pub const MAX_COMPONENTS: usize = 8;
/// EM stops when an iteration raises the log-likelihood by less than this
/// many nats per core, or after [`EM_MAX_ITER`] iterations.
const EM_TOL_PER_CORE: f64 = 1e-4;
/// Iteration cap of one EM run.
const EM_MAX_ITER: usize = 200;

/// The mixture block as plain numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct MixtureParts {
    /// Standardisation scales `sigma_j` of the component scores (positive,
    /// `k` of them).
    pub scale: Vec<f64>,
    /// Weights `pi_c` (`K`, positive, summing to 1).
    pub weights: Vec<f64>,
    /// Means `m_c`, `K x k`, row `c` at `c k .. (c + 1) k`.
    pub means: Vec<f64>,
    /// Cholesky factors `L_c`, `K` column-major `k x k` lower-triangular
    /// blocks with positive diagonals (zeros above).
    pub chols: Vec<f64>,
}

/// The mixture block ready for sampling and scoring.
#[derive(Clone, Debug)]
pub(super) struct MixtureBlock {
    pub(super) parts: MixtureParts,
    /// `log pi_c - k log(2 pi) / 2 - sum_j log L_c,jj`.
    log_norm: Vec<f64>,
    /// Cumulative weights, the last one exactly 1.
    cumulative: Vec<f64>,
}

impl MixtureParts {
    /// Number `K` of components.
    pub fn components(&self) -> usize {
        self.weights.len()
    }
    /// Block size `k`.
    pub fn dim(&self) -> usize {
        self.scale.len()
    }
}

impl MixtureBlock {
    /// Checks every size and value (`ErrorKind::Format` otherwise).
    pub(super) fn from_parts(p: MixtureParts) -> Result<Self> {
        let k = p.dim();
        let c = p.components();
        if k == 0 || c == 0 {
            return Err(format_err("core model: the mixture block is empty"));
        }
        if Some(p.means.len()) != c.checked_mul(k)
            || Some(p.chols.len()) != c.checked_mul(k).and_then(|v| v.checked_mul(k))
        {
            return Err(format_err("core model: mixture sizes are inconsistent"));
        }
        if p.scale
            .iter()
            .chain(&p.weights)
            .chain(&p.means)
            .chain(&p.chols)
            .any(|v| !v.is_finite())
        {
            return Err(format_err("core model: the mixture has a non-finite value"));
        }
        if p.scale.iter().any(|s| *s <= 0.0) {
            return Err(format_err(
                "core model: mixture scales must be finite and positive",
            ));
        }
        if p.weights.iter().any(|w| *w <= 0.0) || (p.weights.iter().sum::<f64>() - 1.0).abs() > 1e-9
        {
            return Err(format_err(
                "core model: mixture weights must be positive and sum to 1",
            ));
        }
        let half_log_2pi = 0.5 * (2.0 * core::f64::consts::PI).ln();
        let mut log_norm = Vec::with_capacity(c);
        for comp in 0..c {
            let l = chol(&p, comp);
            let mut log_det = 0.0;
            for j in 0..k {
                if l[(j, j)] <= 0.0 {
                    return Err(format_err(
                        "core model: a mixture factor has a non-positive diagonal",
                    ));
                }
                log_det += l[(j, j)].ln();
                for i in 0..j {
                    if l[(i, j)] != 0.0 {
                        return Err(format_err(
                            "core model: a mixture factor is not lower triangular",
                        ));
                    }
                }
            }
            log_norm.push(p.weights[comp].ln() - k as f64 * half_log_2pi - log_det);
        }
        let mut cumulative = Vec::with_capacity(c);
        let mut acc = 0.0;
        for w in &p.weights {
            acc += w;
            cumulative.push(acc);
        }
        cumulative[c - 1] = 1.0;
        Ok(Self {
            parts: p,
            log_norm,
            cumulative,
        })
    }
}

/// `L_c` as a matrix view.
fn chol(p: &MixtureParts, comp: usize) -> MatRef<'_, f64> {
    let k = p.dim();
    MatRef::from_column_major_slice(&p.chols[comp * k * k..(comp + 1) * k * k], k, k)
}

/// `log p(y) = logsumexp_c (log_norm_c - ||L_c^-1 (y - m_c)||^2 / 2)` for
/// one row; `v` and `lp` are scratch of `k` and `K` values.
fn row_log_density(
    p: &MixtureParts,
    log_norm: &[f64],
    y: impl Fn(usize) -> f64,
    v: &mut [f64],
    lp: &mut [f64],
) -> f64 {
    let k = p.dim();
    for (comp, out) in lp.iter_mut().enumerate() {
        let l = chol(p, comp);
        let m = &p.means[comp * k..(comp + 1) * k];
        // Forward substitution L v = y - m, column by column of L.
        for j in 0..k {
            v[j] = y(j) - m[j];
        }
        let mut quad = 0.0;
        for j in 0..k {
            let vj = v[j] / l[(j, j)];
            v[j] = vj;
            quad += vj * vj;
            let col = l.col(j);
            for i in j + 1..k {
                v[i] -= col[i] * vj;
            }
        }
        *out = log_norm[comp] - 0.5 * quad;
    }
    log_sum_exp(lp)
}

fn log_sum_exp(x: &[f64]) -> f64 {
    let top = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return top;
    }
    top + x.iter().map(|v| (v - top).exp()).sum::<f64>().ln()
}

impl BlockDensity for MixtureBlock {
    fn dim(&self) -> usize {
        self.parts.dim()
    }

    fn scale(&self) -> &[f64] {
        &self.parts.scale
    }

    fn sample_scratch(&self, _rows: usize, _solver: &SolverOptions) -> StackReq {
        temp_slice_scratch::<f64>(self.dim())
    }

    fn sample(
        &self,
        _solver: &SolverOptions,
        seed: u64,
        first: u64,
        y: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<()> {
        let mut y = y;
        let k = self.dim();
        let (e, _) = temp_slice(k, 0.0f64, stack);
        let pick_seed = rng::mix64(seed ^ MIXTURE_TAG);
        for i in 0..y.nrows() {
            let index = first.wrapping_add(i as u64);
            let mut r = rng::stream(seed, index);
            rng::fill_normal(&mut r, e);
            let u = rng::uniform(&mut rng::stream(pick_seed, index));
            let comp = self
                .cumulative
                .iter()
                .position(|c| u < *c)
                .unwrap_or(self.cumulative.len() - 1);
            let l = chol(&self.parts, comp);
            let m = &self.parts.means[comp * k..(comp + 1) * k];
            for j in 0..k {
                let row = l.row(j);
                let mut acc = m[j];
                for (t, ev) in e.iter().enumerate().take(j + 1) {
                    acc += row[t] * ev;
                }
                y[(i, j)] = acc;
            }
        }
        Ok(())
    }

    fn log_prob_rows(&self, _solver: &SolverOptions) -> usize {
        usize::MAX
    }

    fn log_prob_scratch(&self, _rows: usize, _solver: &SolverOptions) -> StackReq {
        StackReq::all_of(&[
            temp_slice_scratch::<f64>(self.dim()),
            temp_slice_scratch::<f64>(self.parts.components()),
        ])
    }

    fn log_prob(
        &self,
        _solver: &SolverOptions,
        _first: u64,
        y: MatRef<'_, f64>,
        out: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()> {
        let (v, stack) = temp_slice(self.dim(), 0.0f64, stack);
        let (lp, _) = temp_slice(self.parts.components(), 0.0f64, stack);
        for (i, o) in out.iter_mut().enumerate() {
            *o = row_log_density(&self.parts, &self.log_norm, |j| y[(i, j)], v, lp);
        }
        Ok(())
    }
}

/// A fitted mixture: weights, means (`K x k`), Cholesky factors and the
/// log-likelihood of the rows of all participants.
#[derive(Clone, Debug)]
pub(super) struct MixtureFit {
    pub weights: Vec<f64>,
    pub means: Mat<f64>,
    pub chols: Vec<Mat<f64>>,
    pub loglik: f64,
}

impl MixtureFit {
    /// The parts of this fit with the standardisation `scale`.
    pub(super) fn into_parts(self, scale: Vec<f64>) -> MixtureParts {
        let (c, k) = self.means.shape();
        let mut means = Vec::with_capacity(c * k);
        for comp in 0..c {
            means.extend((0..k).map(|j| self.means[(comp, j)]));
        }
        let mut chols = Vec::with_capacity(c * k * k);
        for l in &self.chols {
            for j in 0..k {
                chols.extend((0..k).map(|i| if i >= j { l[(i, j)] } else { 0.0 }));
            }
        }
        MixtureParts {
            scale,
            weights: self.weights,
            means,
            chols,
        }
    }
}

/// Responsibility-weighted sums `[n_c, sum r x, sum r x x^T]` of every
/// component over all participants, laid out per component.
fn weighted_sums(
    x: MatRef<'_, f64>,
    resp: MatRef<'_, f64>,
    reducer: &dyn Reducer,
) -> Result<Vec<f64>> {
    let (n, k) = x.shape();
    let c = resp.ncols();
    let stride = 1 + k + k * k;
    let mut sums = vec![0.0; c * stride + 1];
    for comp in 0..c {
        let s = &mut sums[comp * stride..(comp + 1) * stride];
        for i in 0..n {
            let r = resp[(i, comp)];
            if r == 0.0 {
                continue;
            }
            s[0] += r;
            for a in 0..k {
                let ra = r * x[(i, a)];
                s[1 + a] += ra;
                for b in a..k {
                    s[1 + k + a * k + b] += ra * x[(i, b)];
                }
            }
        }
    }
    sums[c * stride] = n as f64;
    reducer.sum_in_place(&mut sums)?;
    Ok(sums)
}

/// The M-step from [`weighted_sums`]: weights, means and the Cholesky
/// factors of the regularised covariances; `None` when a component is
/// empty or a covariance is not positive definite.
fn m_step(sums: &[f64], c: usize, k: usize) -> Option<MixtureFit> {
    let stride = 1 + k + k * k;
    let total = sums[c * stride];
    let mut weights = Vec::with_capacity(c);
    let mut means = Mat::<f64>::zeros(c, k);
    let mut chols = Vec::with_capacity(c);
    for comp in 0..c {
        let s = &sums[comp * stride..(comp + 1) * stride];
        let nc = s[0];
        if nc.is_nan() || nc <= 1e-9 * total {
            return None;
        }
        weights.push(nc / total);
        for a in 0..k {
            means[(comp, a)] = s[1 + a] / nc;
        }
        let cov = Mat::<f64>::from_fn(k, k, |a, b| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let scatter = s[1 + k + lo * k + hi] - nc * means[(comp, lo)] * means[(comp, hi)];
            (scatter + if a == b { TAU } else { 0.0 }) / (nc + TAU)
        });
        let llt = cov.as_ref().llt(Side::Lower).ok()?;
        let l = llt.L().to_owned();
        if !l.as_ref().norm_max().is_finite() {
            return None;
        }
        chols.push(l);
    }
    let sum: f64 = weights.iter().sum();
    for w in &mut weights {
        *w /= sum;
    }
    Some(MixtureFit {
        weights,
        means,
        chols,
        loglik: f64::NAN,
    })
}

/// EM for `components` components on the rows of `x` (standardised scores,
/// this participant's rows), from the divisive start. `None` when the data
/// cannot carry that many components (an empty or degenerate component).
pub(super) fn fit_mixture(
    x: MatRef<'_, f64>,
    components: usize,
    reducer: &dyn Reducer,
) -> Result<Option<MixtureFit>> {
    let n = x.nrows();
    let mut resp = Mat::<f64>::zeros(n, components);
    let Some(labels) = divisive_start(x, components, reducer)? else {
        return Ok(None);
    };
    for (i, l) in labels.iter().enumerate() {
        resp[(i, *l)] = 1.0;
    }
    em(x, resp, reducer)
}

/// EM on the rows of `x` from `start` and from the divisive start; the fit
/// of the higher log-likelihood (ties: `start`'s). The refit of a chosen
/// mixture on every core starts from the responsibilities that the fit on
/// the split gives them, so it stays near the mixture the hold-out
/// validated; the divisive start is the fallback when that one is worse.
pub(super) fn refit_mixture(
    x: MatRef<'_, f64>,
    start: Mat<f64>,
    reducer: &dyn Reducer,
) -> Result<Option<MixtureFit>> {
    let warm = em(x, start.clone(), reducer)?;
    let cold = fit_mixture(x, start.ncols(), reducer)?;
    Ok(match (warm, cold) {
        (Some(w), Some(c)) if c.loglik > w.loglik => Some(c),
        (Some(w), _) => Some(w),
        (None, c) => c,
    })
}

/// Posterior component probabilities of the rows of `y` (standardised
/// scores of `fit`'s block) under `fit`.
pub(super) fn responsibilities(fit: &MixtureFit, y: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let (n, k) = y.shape();
    let c = fit.weights.len();
    let block = MixtureBlock::from_parts(fit.clone().into_parts(vec![1.0; k]))?;
    let mut resp = Mat::<f64>::zeros(n, c);
    e_step(
        &block,
        y,
        resp.as_mut(),
        &mut vec![0.0; k],
        &mut vec![0.0; c],
    );
    Ok(resp)
}

/// The E-step: `resp[i, c]` the posterior probability of component `c` for
/// row `i` of `x` under `block` (uniform for a row without a finite
/// density), and the sum of the rows' log-densities (this participant's).
/// `v` and `lp` are scratch of `k` and `K` values.
fn e_step(
    block: &MixtureBlock,
    x: MatRef<'_, f64>,
    resp: MatMut<'_, f64>,
    v: &mut [f64],
    lp: &mut [f64],
) -> f64 {
    let mut resp = resp;
    let c = lp.len();
    let mut ll = 0.0;
    for i in 0..x.nrows() {
        let lse = row_log_density(&block.parts, &block.log_norm, |j| x[(i, j)], v, lp);
        ll += lse;
        for (comp, l) in lp.iter().enumerate() {
            resp[(i, comp)] = if lse.is_finite() {
                (l - lse).exp()
            } else {
                1.0 / c as f64
            };
        }
    }
    ll
}

/// EM iterations from the responsibilities `resp` (`N x K`) until the
/// log-likelihood settles; `None` when the first M-step already fails.
fn em(x: MatRef<'_, f64>, resp: Mat<f64>, reducer: &dyn Reducer) -> Result<Option<MixtureFit>> {
    let k = x.ncols();
    let components = resp.ncols();
    let mut resp = resp;
    let mut v = vec![0.0; k];
    let mut lp = vec![0.0; components];
    let mut prev = f64::NEG_INFINITY;
    let mut best: Option<MixtureFit> = None;
    for _ in 0..EM_MAX_ITER {
        let sums = weighted_sums(x, resp.as_ref(), reducer)?;
        let total = sums[components * (1 + k + k * k)];
        let Some(mut step) = m_step(&sums, components, k) else {
            // A component emptied or degenerated: keep the last fit.
            break;
        };
        let block = match MixtureBlock::from_parts(step.clone().into_parts(vec![1.0; k])) {
            Ok(b) => b,
            Err(_) => break,
        };
        // E-step: responsibilities and the log-likelihood of these
        // parameters (a row without a finite density makes it non-finite,
        // which ends the run with the last fit).
        let mut ll = [e_step(&block, x, resp.as_mut(), &mut v, &mut lp)];
        reducer.sum_in_place(&mut ll)?;
        if !ll[0].is_finite() {
            break;
        }
        step.loglik = ll[0];
        let gain = ll[0] - prev;
        prev = ll[0];
        best = Some(step);
        if gain.abs() <= EM_TOL_PER_CORE * total {
            break;
        }
    }
    Ok(best)
}

/// The divisive start: labels for `components` clusters (this
/// participant's rows), or `None` when a cluster to be cut has fewer than
/// two rows over all participants.
fn divisive_start(
    x: MatRef<'_, f64>,
    components: usize,
    reducer: &dyn Reducer,
) -> Result<Option<Vec<usize>>> {
    let (n, k) = x.shape();
    let mut labels = vec![0usize; n];
    let mut mem = MemBuffer::new(eigh_descending_scratch(k, Par::Seq));
    let mut vecs = Mat::<f64>::zeros(k, k);
    let mut vals = vec![0.0; k];
    for clusters in 1..components {
        let mut resp = Mat::<f64>::zeros(n, clusters);
        for (i, l) in labels.iter().enumerate() {
            resp[(i, *l)] = 1.0;
        }
        let sums = weighted_sums(x, resp.as_ref(), reducer)?;
        let stride = 1 + k + k * k;
        // The cluster with the largest scatter (trace).
        let mut cut = None;
        let mut widest = 0.0;
        for comp in 0..clusters {
            let s = &sums[comp * stride..(comp + 1) * stride];
            let nc = s[0];
            if nc < 2.0 {
                continue;
            }
            let trace: f64 = (0..k)
                .map(|a| s[1 + k + a * k + a] - s[1 + a] * s[1 + a] / nc)
                .sum();
            if trace > widest {
                widest = trace;
                cut = Some(comp);
            }
        }
        let Some(comp) = cut else {
            return Ok(None);
        };
        let s = &sums[comp * stride..(comp + 1) * stride];
        let nc = s[0];
        let mean: Vec<f64> = (0..k).map(|a| s[1 + a] / nc).collect();
        let cov = Mat::<f64>::from_fn(k, k, |a, b| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            (s[1 + k + lo * k + hi] - nc * mean[lo] * mean[hi]) / nc
        });
        eigh_descending(
            cov.as_ref(),
            vecs.as_mut(),
            &mut vals,
            Par::Seq,
            MemStack::new(&mut mem),
        )?;
        let axis = vecs.col(0);
        for (i, l) in labels.iter_mut().enumerate() {
            if *l == comp {
                let t: f64 = (0..k).map(|a| (x[(i, a)] - mean[a]) * axis[a]).sum();
                if t > 0.0 {
                    *l = clusters;
                }
            }
        }
    }
    Ok(Some(labels))
}

/// Free parameters of a `K`-component full-covariance mixture in `k`
/// dimensions.
fn parameters(k: usize, comps: usize) -> usize {
    (comps - 1) + comps * k + comps * k * (k + 1) / 2
}

/// Block sizes tried by [`select_mixture`]: 1, 2, 3, 4, 6, 8, 12, 16, ...
/// up to `max_k`, and `max_k` itself.
fn block_sizes(max_k: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut k = 1;
    while k < max_k {
        out.push(k);
        k = if k < 4 {
            k + 1
        } else if k.is_power_of_two() {
            k + k / 2
        } else {
            k / 3 * 4
        };
    }
    out.push(max_k);
    out
}

/// The mixture chosen by [`select_mixture`].
pub(super) struct MixtureChoice {
    /// Block size `k`.
    pub dim: usize,
    /// The fit on the block.
    pub fit: MixtureFit,
    /// Its BIC score against the Gaussian kind (see the module docs;
    /// positive when the mixture is the better model by BIC).
    pub score: f64,
}

/// The block size `k <= max_k` and number of components `2 <= K <=
/// MAX_COMPONENTS` of the best BIC score (module docs), on the
/// standardised scores `y` (`N x max_k`, this participant's rows; `count`
/// rows over all participants). Candidates need at least as many cores as
/// free parameters. `None` when no candidate could be fitted.
pub(super) fn select_mixture(
    y: MatRef<'_, f64>,
    max_k: usize,
    count: usize,
    reducer: &dyn Reducer,
) -> Result<Option<MixtureChoice>> {
    let n = count as f64;
    let half_const = 0.5 * ((2.0 * core::f64::consts::PI).ln() + 1.0);
    let mut best: Option<MixtureChoice> = None;
    for k in block_sizes(max_k.min(y.ncols()).max(1)) {
        let mut worse = 0;
        let mut last = f64::NEG_INFINITY;
        for comps in 2..=MAX_COMPONENTS {
            let p = parameters(k, comps);
            if p > count {
                break;
            }
            let Some(fit) = fit_mixture(y.subcols(0, k), comps, reducer)? else {
                break;
            };
            let score = fit.loglik + n * k as f64 * half_const - 0.5 * (p - k) as f64 * n.ln();
            if !score.is_finite() {
                break;
            }
            let improved = score > last;
            if best.as_ref().is_none_or(|b| score > b.score) {
                best = Some(MixtureChoice { dim: k, fit, score });
            }
            // Two components more without a better score end this size.
            if improved {
                worse = 0;
                last = score;
            } else {
                worse += 1;
                if worse == 2 {
                    break;
                }
            }
        }
    }
    Ok(best)
}

/// An error for a mixture that could not be fitted where one was required.
pub(super) fn no_mixture(k: usize) -> Error {
    Error::numerical(format!(
        "core model: no Gaussian mixture with 2 or more components could be fitted on the \
         leading block (k = {k}): too few cores for its parameters, or a component emptied"
    ))
}
