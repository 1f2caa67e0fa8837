//! The law of the noise outside the fitted geometry (DESIGN.md section 4,
//! "The noise law").
//!
//! The model writes a matrix as `X = Xbar + U C V^T + E`. The noise `E`
//! has independent entries with variance
//!
//! ```text
//! Var E_ab = sigma^2 rho_a gamma_b,   mean_a rho_a = mean_b gamma_b = 1,
//! ```
//!
//! `sigma^2` the fitted level (the training residual variance per entry,
//! [`crate::completion::CorePrior::noise_var`]) and `rho`, `gamma` a
//! rank-one profile over rows and columns; and its law is Gaussian or a
//! Student-t with `nu` degrees of freedom (a scale mixture of normals):
//!
//! ```text
//! E_ab = sigma sqrt(rho_a gamma_b) tau z / sqrt(w),   z ~ N(0, 1),   w ~ chi2_nu / nu,
//! ```
//!
//! `tau^2` the tail scale (1 for the Gaussian law).
//!
//! # Fit ([`NoiseModel::fit`])
//!
//! From the training residuals `R_i = X_i - Xbar - U C_i V^T` on the
//! observed entries (`C_i` the fitted cores; for complete data
//! `U C_i V^T = U U^T (X_i - Xbar) V V^T`), with `S_ab = sum_i R_iab^2` and
//! `N_ab` the number of matrices observing entry `(a, b)`:
//!
//! 1. Profile, by alternating means of the squared residuals (the moment
//!    equations of `E R_ab^2 = c rho_a gamma_b`):
//!    `rho_a <- sum_b S_ab / sum_b N_ab gamma_b`,
//!    `gamma_b <- sum_a S_ab / sum_a N_ab rho_a`, from flat, until the
//!    profile moves by less than `1e-10` (at most [`PROFILE_ROUNDS`]
//!    rounds); then each factor is divided by its mean, floored at
//!    [`PROFILE_FLOOR`] and divided by its mean again. Rows or columns
//!    never observed get 1. The level is not taken from here: it stays
//!    the fitted `sigma^2`, so only the shape comes from the residuals.
//! 2. Tails: the standardised residuals `z = R_ab / sqrt(sigma^2 rho_a
//!    gamma_b)` at entries whose mean squared residual exceeds
//!    [`NEGLIGIBLE`] times their profiled variance (an entry that is never
//!    off the geometry says nothing about the shape) outside floored rows and
//!    columns (their residuals are below the floor: the standardised values
//!    would pile up at 0 and mimic a peaked law), every `k`-th of them so that
//!    at most [`TAIL_SAMPLE`] enter. Each law of [`DOF_GRID`] is scored by
//!    the log-likelihood of the `z` at unit variance: the standard normal,
//!    and for finite `nu` the Student-t of scale `tau^2 = (nu - 2) / nu`.
//!    A Student-t wins only when its log-likelihood beats the Gaussian's by
//!    more than `ln(n) / 2` (BIC for the one extra parameter, `n`
//!    residuals), so Gaussian residuals keep the Gaussian law (nothing
//!    changes for them).
//!
//! The variance of the noise is thus `sigma^2 rho_a gamma_b` whatever the
//! tails: the conditioning's Gaussian approximation (below) has the noise's
//! own variance, and the tails change only its shape. The alternative, the
//! maximum-likelihood scale for each `nu`, was measured (BENCHMARKS.md,
//! "Multiple imputation"): on residuals with many small values and a few
//! large ones it fits the body and is narrower (`tau^2` 0.19-0.32 against
//! 1/3 for `nu = 3` on the real sets), and the draws' central 90 %
//! intervals under-cover more (patches 0.833 against 0.870, motions 0.815
//! against 0.832, faces 0.869 against 0.878; blobs, where it picks a wider
//! law, 0.886 against 0.867), with the same CRPS to within 1 %.
//!
//! 3. Support: the largest standardised residual `z_max = max |z|` over
//!    every scored entry (not only the sampled ones), and the range
//!    `[x_min, x_max]` of the observed training values.
//!
//! # Support of a draw
//!
//! The fitted law says nothing of noise beyond the largest residual the
//! training data showed, nor of values outside their range, yet its tails
//! reach there: measured on the motion sensors (BENCHMARKS.md, "Multiple
//! imputation"), Student-t tails of 3 degrees of freedom drew single entries
//! of 654 where the training data span -27.8 to 34.9, and on digits 30 % of
//! the drawn pixels fell outside `[0, 1]`. So a draw of the noise is bounded:
//! its standardised value `q = tau z / sqrt(w)` (`z` for Gaussian tails) is
//! drawn again while `|q| > z_max` ([`NoiseModel::truncated`]: the
//! law truncated at `z_max`), and the drawn entry `x = prediction + noise` is
//! censored to `[x_min, x_max]` (the nearest end of the range: what a sensor
//! or a pixel scale that saturates records, and what the model can justify
//! of any other data). Truncation lowers the variance by the law's mass
//! beyond `z_max`, which is about the inverse of the number of scored
//! residuals. Files older than version 6 have no support (`z_max` and the
//! range infinite) and reproduce their outputs bitwise.
//!
//! Everything summed over matrices goes through the fit's reducer, in one
//! call per pass (the support's maxima in eight more,
//! [`crate::reduce::max_in_place`]), so every participant of a distributed fit gets the same
//! law; the passes are sequential (results do not depend on the thread
//! count).
//!
//! # Use
//!
//! Completion and imputation condition on the observed entries with the
//! Gaussian of the same variance: weights `1 / (rho_a gamma_b)` on the
//! observations at level `sigma^2` ([`NoiseModel::inv_row`],
//! [`NoiseModel::inv_col`]). The posterior of the core is then exact for
//! the Gaussian and mixture kinds under Gaussian noise of that profile;
//! the tails enter only the noise of the missing entries of a draw. A flat
//! profile with Gaussian tails (every model of a file older than version
//! 5) reproduces the earlier outputs bitwise: its weights are exactly 1.
//!
//! [`NoiseModel::fit`]: crate::noise::NoiseModel::fit
//! [`NoiseModel::truncated`]: crate::noise::NoiseModel::truncated
//! [`NoiseModel::inv_row`]: crate::noise::NoiseModel::inv_row
//! [`NoiseModel::inv_col`]: crate::noise::NoiseModel::inv_col
//! [`PROFILE_ROUNDS`]: crate::noise::PROFILE_ROUNDS
//! [`PROFILE_FLOOR`]: crate::noise::PROFILE_FLOOR
//! [`NEGLIGIBLE`]: crate::noise::NEGLIGIBLE
//! [`TAIL_SAMPLE`]: crate::noise::TAIL_SAMPLE
//! [`DOF_GRID`]: crate::noise::DOF_GRID

use crate::batch::MatrixBatch;
use crate::completion::observed_of;
use crate::error::{Error, Result};
use crate::numerics::gemm;
use crate::reduce::{max_in_place, Reducer};
use crate::rng;
use faer::{Accum, Mat, MatRef, Par};

/// Degrees of freedom the tail fit chooses from (`f64::INFINITY`: Gaussian).
pub const DOF_GRID: [f64; 6] = [3.0, 4.0, 6.0, 10.0, 30.0, f64::INFINITY];
/// Smallest value of either profile factor (relative to its mean 1).
pub const PROFILE_FLOOR: f64 = 1e-3;
/// Round limit of the alternating profile fit.
pub const PROFILE_ROUNDS: usize = 200;
/// Largest number of standardised residuals the tail fit scores.
pub const TAIL_SAMPLE: usize = 1 << 20;
/// Mean squared residual of an entry, relative to its profiled variance,
/// below which the entry counts as never off the geometry (not scored for
/// the tails).
pub const NEGLIGIBLE: f64 = 1e-6;
/// Smallest profile value accepted from parts (a file): the fit floors at
/// [`PROFILE_FLOOR`]; this bound keeps the weights `1 / rho_a` far from
/// overflow.
pub const MIN_PROFILE: f64 = 1e-6;
/// Tolerance of the profile's normalisation checked on load.
const NORM_TOL: f64 = 1e-9;
/// Draws of a standardised noise value beyond the bound before it is set
/// to the bound ([`NoiseModel::truncated`]).
pub const NOISE_REDRAWS: u32 = 16;

/// The noise law of a model (module docs): a rank-one variance profile
/// over rows and columns and Gaussian or Student-t tails. The level
/// `sigma^2` is the completion prior's `noise_var`.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseModel {
    row: Vec<f64>,
    col: Vec<f64>,
    dof: f64,
    tail_scale: f64,
    bound: f64,
    range: [f64; 2],
    inv_row: Vec<f64>,
    inv_col: Vec<f64>,
    sd_row: Vec<f64>,
    sd_col: Vec<f64>,
}

impl NoiseModel {
    /// The flat Gaussian law of an `m x n` model (variance `sigma^2` per
    /// entry): what files older than version 5 load with.
    /// No support: the bound and the range are infinite.
    pub fn flat(rows: usize, cols: usize) -> NoiseModel {
        Self::assemble(
            vec![1.0; rows],
            vec![1.0; cols],
            f64::INFINITY,
            1.0,
            f64::INFINITY,
            [f64::NEG_INFINITY, f64::INFINITY],
        )
    }

    /// A noise law from its parts, checked: `row` (m values) and `col` (n
    /// values) finite, at least [`MIN_PROFILE`], each of mean 1 (to `1e-9`);
    /// `dof` above 2 or `f64::INFINITY` (Gaussian); `tail_scale` finite and
    /// positive, and 1 for the Gaussian; `bound` positive (`f64::INFINITY`:
    /// none); `range` `[low, high]` with `low <= high`, neither NaN, `low`
    /// below `+inf` and `high` above `-inf` (infinite ends: unbounded).
    /// Errors name the offending part.
    pub fn from_parts(
        row: Vec<f64>,
        col: Vec<f64>,
        dof: f64,
        tail_scale: f64,
        bound: f64,
        range: [f64; 2],
    ) -> Result<NoiseModel> {
        for (what, p) in [("row", &row), ("column", &col)] {
            if p.is_empty() {
                return Err(Error::invalid(format!(
                    "noise: the {what} profile is empty"
                )));
            }
            if let Some(x) = p.iter().find(|x| !(x.is_finite() && **x >= MIN_PROFILE)) {
                return Err(Error::invalid(format!(
                    "noise: the {what} profile holds {x}, not a finite positive value of at least {MIN_PROFILE:e}"
                )));
            }
            let mean = p.iter().sum::<f64>() / p.len() as f64;
            if (mean - 1.0).abs() > NORM_TOL {
                return Err(Error::invalid(format!(
                    "noise: the {what} profile has mean {mean}, not 1"
                )));
            }
        }
        if !(dof == f64::INFINITY || (dof.is_finite() && dof > 2.0)) {
            return Err(Error::invalid(format!(
                "noise: {dof} degrees of freedom (must exceed 2, or be infinite for Gaussian noise)"
            )));
        }
        if !(tail_scale.is_finite() && tail_scale > 0.0) {
            return Err(Error::invalid(format!(
                "noise: the tail scale {tail_scale} is not finite and positive"
            )));
        }
        if dof == f64::INFINITY && tail_scale != 1.0 {
            return Err(Error::invalid(format!(
                "noise: Gaussian noise has the tail scale {tail_scale}, not 1"
            )));
        }
        if bound.is_nan() || bound <= 0.0 {
            return Err(Error::invalid(format!(
                "noise: the bound {bound} is not positive"
            )));
        }
        let [low, high] = range;
        if !(low <= high && low < f64::INFINITY && high > f64::NEG_INFINITY) {
            return Err(Error::invalid(format!(
                "noise: the range [{low}, {high}] is empty or not a range"
            )));
        }
        Ok(Self::assemble(row, col, dof, tail_scale, bound, range))
    }

    fn assemble(
        row: Vec<f64>,
        col: Vec<f64>,
        dof: f64,
        tail_scale: f64,
        bound: f64,
        range: [f64; 2],
    ) -> NoiseModel {
        NoiseModel {
            bound,
            range,
            inv_row: row.iter().map(|x| 1.0 / x).collect(),
            inv_col: col.iter().map(|x| 1.0 / x).collect(),
            sd_row: row.iter().map(|x| x.sqrt()).collect(),
            sd_col: col.iter().map(|x| x.sqrt()).collect(),
            row,
            col,
            dof,
            tail_scale,
        }
    }

    /// The row profile `rho` (m values, mean 1).
    pub fn row_profile(&self) -> &[f64] {
        &self.row
    }
    /// The column profile `gamma` (n values, mean 1).
    pub fn col_profile(&self) -> &[f64] {
        &self.col
    }
    /// Degrees of freedom of the Student-t tails (`f64::INFINITY`: Gaussian).
    pub fn dof(&self) -> f64 {
        self.dof
    }
    /// The tail scale `tau^2` (1 for Gaussian tails).
    pub fn tail_scale(&self) -> f64 {
        self.tail_scale
    }
    /// The bound `z_max` of the standardised noise (`f64::INFINITY`: none).
    pub fn bound(&self) -> f64 {
        self.bound
    }
    /// The range `[x_min, x_max]` a drawn entry is censored to (infinite
    /// ends: none).
    pub fn range(&self) -> [f64; 2] {
        self.range
    }
    /// `x` censored to the range.
    #[inline]
    pub fn censor(&self, x: f64) -> f64 {
        x.clamp(self.range[0], self.range[1])
    }
    /// The standardised noise value `q` (variance 1 before truncation: `z`,
    /// times `tau / sqrt(chi2_nu / nu)` for t tails) of entry `entry` of draw
    /// `index`, truncated at the bound (module docs): while `|q|` exceeds it,
    /// `q` is drawn again from the law, from
    /// [`rng::redraw_stream`]`(redraw_seed ^ mix64(entry), index, attempt)`,
    /// at most [`NOISE_REDRAWS`] times, then set to the bound with the last
    /// draw's sign. `q` itself is returned when it is within the bound, so
    /// the caller's streams advance the same whatever is drawn again.
    #[inline]
    pub fn truncated(&self, mut q: f64, redraw_seed: u64, index: u64, entry: u64) -> f64 {
        let mut attempt = 0;
        while q.abs() > self.bound {
            attempt += 1;
            if attempt > NOISE_REDRAWS {
                return self.bound.copysign(q);
            }
            let mut again = rng::redraw_stream(redraw_seed ^ rng::mix64(entry), index, attempt);
            let mut z = [0.0];
            rng::fill_normal(&mut again, &mut z);
            q = if self.is_gaussian() {
                z[0]
            } else {
                z[0] * self.tail_scale.sqrt()
                    / (rng::chi_square(&mut again, self.dof) / self.dof).sqrt()
            };
        }
        q
    }
    /// True for Gaussian tails.
    pub fn is_gaussian(&self) -> bool {
        self.dof == f64::INFINITY
    }
    /// `1 / rho_a`: the row factor of the observation weights.
    pub fn inv_row(&self) -> &[f64] {
        &self.inv_row
    }
    /// `1 / gamma_b`: the column factor of the observation weights.
    pub fn inv_col(&self) -> &[f64] {
        &self.inv_col
    }
    /// `sqrt(rho_a)`.
    pub fn sd_row(&self) -> &[f64] {
        &self.sd_row
    }
    /// `sqrt(gamma_b)`.
    pub fn sd_col(&self) -> &[f64] {
        &self.sd_col
    }
    /// `max rho_a gamma_b / min rho_a gamma_b`: 1 for a flat profile.
    pub fn profile_spread(&self) -> f64 {
        let span = |p: &[f64]| {
            let (lo, hi) = p.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
                (lo.min(*x), hi.max(*x))
            });
            hi / lo
        };
        span(&self.row) * span(&self.col)
    }
    /// Variance of the noise of entry `(a, b)` relative to `sigma^2`:
    /// `rho_a gamma_b tau^2 nu / (nu - 2)` (`rho_a gamma_b` for Gaussian
    /// tails).
    pub fn variance_factor(&self, a: usize, b: usize) -> f64 {
        let t = if self.is_gaussian() {
            1.0
        } else {
            self.tail_scale * self.dof / (self.dof - 2.0)
        };
        self.row[a] * self.col[b] * t
    }

    /// Fits the noise law (module docs) to the residuals of `train` (its
    /// observed entries: mask nonzero, or not NaN when `nan_is_missing` and
    /// no mask) under the bases `u`, `v`, the mean and the training
    /// `cores` (`count x r s`, each row a column-major `r x s` core), at
    /// the level `noise_var`. Sums over matrices go through `reducer`.
    #[allow(clippy::too_many_arguments)]
    pub fn fit(
        train: &MatrixBatch,
        nan_is_missing: bool,
        u: MatRef<'_, f64>,
        v: MatRef<'_, f64>,
        mean: Option<MatRef<'_, f64>>,
        cores: MatRef<'_, f64>,
        noise_var: f64,
        reducer: &dyn Reducer,
    ) -> Result<NoiseModel> {
        let (m, n) = (train.rows(), train.cols());
        let mut resid = Residuals::new(u, v, mean, m, n);
        // Pass 1: S_ab and N_ab.
        let mut stats = vec![0.0; 2 * m * n];
        // Local maxima of [x, -x, |z|] (module docs, step 3).
        let mut support = [f64::NEG_INFINITY; 3];
        for i in 0..train.count() {
            let x = train.sample(i);
            let obs = observed_of(train, i, nan_is_missing);
            resid.compute(x, cores.row(i).iter().copied());
            for b in 0..n {
                for a in 0..m {
                    if obs.at(x, a, b) {
                        support[0] = support[0].max(x[(a, b)]);
                        support[1] = support[1].max(-x[(a, b)]);
                        let r = resid.at(a, b);
                        stats[a + b * m] += r * r;
                        stats[m * n + a + b * m] += 1.0;
                    }
                }
            }
        }
        reducer.sum_in_place(&mut stats)?;
        let (ss, counts) = stats.split_at(m * n);
        let total: f64 = ss.iter().sum();
        if !(total > 0.0 && total.is_finite() && noise_var > 0.0) {
            max_in_place(reducer, &mut support)?;
            return Ok(Self::flat(m, n).with_range(support));
        }
        let ((row, low_row), (col, low_col)) = fit_profile(ss, counts, m, n);
        // Entries scored for the tails: off the geometry at least once, and
        // in no floored row or column (their residuals are below the floor,
        // so their standardised values would pile up at 0).
        let scored = |a: usize, b: usize| {
            let e = a + b * m;
            ss[e] > NEGLIGIBLE * counts[e] * noise_var * row[a] * col[b]
                && !low_row[a]
                && !low_col[b]
        };
        // Pass 2: the standardised residuals' likelihood over the grid.
        let used: f64 = (0..m * n)
            .filter(|&e| scored(e % m, e / m))
            .map(|e| counts[e])
            .sum();
        let stride = ((used / TAIL_SAMPLE as f64).ceil() as u64).max(1);
        let finite = DOF_GRID.len() - 1;
        // [count | sum z^2 | per finite dof: sum ln(1 + z^2 / (nu - 2))]
        let mut acc = vec![0.0; 2 + finite];
        let inv_sd: Vec<f64> = (0..m * n)
            .map(|e| 1.0 / (noise_var * row[e % m] * col[e / m]).sqrt())
            .collect();
        let mut k = 0u64;
        for i in 0..train.count() {
            let x = train.sample(i);
            let obs = observed_of(train, i, nan_is_missing);
            resid.compute(x, cores.row(i).iter().copied());
            for b in 0..n {
                for a in 0..m {
                    if !(obs.at(x, a, b) && scored(a, b)) {
                        continue;
                    }
                    let z = resid.at(a, b) * inv_sd[a + b * m];
                    support[2] = support[2].max(z.abs());
                    k += 1;
                    if k % stride != 0 {
                        continue;
                    }
                    let z2 = z * z;
                    acc[0] += 1.0;
                    acc[1] += z2;
                    for (j, nu) in DOF_GRID[..finite].iter().enumerate() {
                        acc[2 + j] += libm::log1p(z2 / (nu - 2.0));
                    }
                }
            }
        }
        reducer.sum_in_place(&mut acc)?;
        let (dof, tail_scale) = choose_tails(&acc);
        max_in_place(reducer, &mut support)?;
        // No scored entry: no evidence for a bound.
        let bound = if support[2] > 0.0 {
            support[2]
        } else {
            f64::INFINITY
        };
        Ok(Self::assemble(row, col, dof, tail_scale, bound, [0.0; 2]).with_range(support))
    }

    /// The range `[-support[1], support[0]]` (no observed value: none).
    fn with_range(mut self, support: [f64; 3]) -> NoiseModel {
        self.range = if support[0] >= -support[1] {
            [-support[1], support[0]]
        } else {
            [f64::NEG_INFINITY, f64::INFINITY]
        };
        self
    }
}

/// The prediction `Xbar + U C V^T` of one matrix and its residual.
struct Residuals<'a> {
    u: MatRef<'a, f64>,
    v: MatRef<'a, f64>,
    mean: Option<MatRef<'a, f64>>,
    core: Mat<f64>,
    t: Mat<f64>,
    pred: Mat<f64>,
    x: Mat<f64>,
}

impl<'a> Residuals<'a> {
    fn new(
        u: MatRef<'a, f64>,
        v: MatRef<'a, f64>,
        mean: Option<MatRef<'a, f64>>,
        m: usize,
        n: usize,
    ) -> Self {
        let (r, s) = (u.ncols(), v.ncols());
        Residuals {
            u,
            v,
            mean,
            core: Mat::zeros(r, s),
            t: Mat::zeros(m, s),
            pred: Mat::zeros(m, n),
            x: Mat::zeros(m, n),
        }
    }

    /// Residuals of `x` under the core `c` (column-major values).
    fn compute(&mut self, x: MatRef<'_, f64>, c: impl Iterator<Item = f64>) {
        let r = self.core.nrows();
        for (k, val) in c.enumerate() {
            self.core[(k % r, k / r)] = val;
        }
        gemm(
            self.t.as_mut(),
            Accum::Replace,
            self.u,
            self.core.as_ref(),
            1.0,
            Par::Seq,
        );
        gemm(
            self.pred.as_mut(),
            Accum::Replace,
            self.t.as_ref(),
            self.v.transpose(),
            1.0,
            Par::Seq,
        );
        let (m, n) = x.shape();
        for b in 0..n {
            for a in 0..m {
                let xbar = self.mean.map_or(0.0, |mm| mm[(a, b)]);
                self.x[(a, b)] = x[(a, b)] - xbar - self.pred[(a, b)];
            }
        }
    }

    #[inline]
    fn at(&self, a: usize, b: usize) -> f64 {
        self.x[(a, b)]
    }
}

/// The alternating fit of the profile (module docs, step 1).
/// Returns the row and column profiles, each with the flags of its floored
/// values.
type Profile = (Vec<f64>, Vec<bool>);

fn fit_profile(ss: &[f64], counts: &[f64], m: usize, n: usize) -> (Profile, Profile) {
    let mut row = vec![1.0; m];
    let mut col = vec![1.0; n];
    let row_ss: Vec<f64> = (0..m)
        .map(|a| (0..n).map(|b| ss[a + b * m]).sum())
        .collect();
    let col_ss: Vec<f64> = (0..n)
        .map(|b| (0..m).map(|a| ss[a + b * m]).sum())
        .collect();
    for _ in 0..PROFILE_ROUNDS {
        let mut moved = 0.0f64;
        for a in 0..m {
            let den: f64 = (0..n).map(|b| counts[a + b * m] * col[b]).sum();
            if den > 0.0 {
                let new = (row_ss[a] / den).max(f64::MIN_POSITIVE);
                moved = moved.max((new / row[a]).ln().abs());
                row[a] = new;
            }
        }
        for b in 0..n {
            let den: f64 = (0..m).map(|a| counts[a + b * m] * row[a]).sum();
            if den > 0.0 {
                let new = (col_ss[b] / den).max(f64::MIN_POSITIVE);
                moved = moved.max((new / col[b]).ln().abs());
                col[b] = new;
            }
        }
        if moved < 1e-10 {
            break;
        }
    }
    let seen_rows: Vec<bool> = (0..m)
        .map(|a| (0..n).any(|b| counts[a + b * m] > 0.0))
        .collect();
    let seen_cols: Vec<bool> = (0..n)
        .map(|b| (0..m).any(|a| counts[a + b * m] > 0.0))
        .collect();
    (normalise(row, &seen_rows), normalise(col, &seen_cols))
}

/// Divides by the mean of the seen values (unseen ones get 1), floors at
/// [`PROFILE_FLOOR`] and divides by the mean again; also says which values
/// were floored.
fn normalise(mut p: Vec<f64>, seen: &[bool]) -> (Vec<f64>, Vec<bool>) {
    let k = seen.iter().filter(|s| **s).count();
    if k == 0 {
        return (vec![1.0; p.len()], vec![false; p.len()]);
    }
    let mean = p
        .iter()
        .zip(seen)
        .filter(|(_, s)| **s)
        .map(|(x, _)| x)
        .sum::<f64>()
        / k as f64;
    for (x, s) in p.iter_mut().zip(seen) {
        *x = if *s { *x / mean } else { 1.0 };
    }
    let floored = p.iter().map(|x| *x < PROFILE_FLOOR).collect();
    for _ in 0..4 {
        for x in p.iter_mut() {
            *x = x.max(PROFILE_FLOOR);
        }
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        for x in p.iter_mut() {
            *x /= mean;
        }
    }
    (p, floored)
}

/// `(dof, tau^2)` of the best law (module docs, step 2) from the reduced
/// sums `acc`: `[n, sum z^2, sum ln(1 + z^2 / (nu - 2)) per finite nu]`.
fn choose_tails(acc: &[f64]) -> (f64, f64) {
    let (count, sum_z2) = (acc[0], acc[1]);
    if count < 2.0 || sum_z2.is_nan() || sum_z2 <= 0.0 {
        return (f64::INFINITY, 1.0);
    }
    let ln_pi = std::f64::consts::PI.ln();
    let gauss = -0.5 * count * (2.0 * std::f64::consts::PI).ln() - 0.5 * sum_z2;
    let penalty = 0.5 * count.ln();
    let mut best = (gauss, f64::INFINITY, 1.0);
    for (j, &nu) in DOF_GRID[..DOF_GRID.len() - 1].iter().enumerate() {
        // tau t_nu with tau^2 = (nu - 2) / nu: density
        // Gamma((nu + 1) / 2) / (Gamma(nu / 2) sqrt(pi (nu - 2)))
        //   (1 + z^2 / (nu - 2))^(-(nu + 1) / 2).
        let c = libm::lgamma(0.5 * (nu + 1.0))
            - libm::lgamma(0.5 * nu)
            - 0.5 * (ln_pi + (nu - 2.0).ln());
        let ll = count * c - 0.5 * (nu + 1.0) * acc[2 + j];
        if ll - penalty > best.0 {
            best = (ll - penalty, nu, (nu - 2.0) / nu);
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_recovers_a_planted_rank_one_variance() {
        let (m, n) = (7, 5);
        let rho: Vec<f64> = (0..m).map(|a| 0.2 + a as f64).collect();
        let gamma: Vec<f64> = (0..n).map(|b| 1.0 / (1.0 + b as f64)).collect();
        let ss: Vec<f64> = (0..m * n)
            .map(|e| 3.0 * rho[e % m] * gamma[e / m] * 10.0)
            .collect();
        let counts = vec![10.0; m * n];
        let ((r, _), (c, _)) = fit_profile(&ss, &counts, m, n);
        let rm = rho.iter().sum::<f64>() / m as f64;
        let gm = gamma.iter().sum::<f64>() / n as f64;
        for a in 0..m {
            assert!((r[a] - rho[a] / rm).abs() < 1e-9, "{r:?}");
        }
        for b in 0..n {
            assert!((c[b] - gamma[b] / gm).abs() < 1e-9, "{c:?}");
        }
        assert!(
            NoiseModel::from_parts(r, c, f64::INFINITY, 1.0, f64::INFINITY, [0.0, 1.0]).is_ok()
        );
    }

    #[test]
    fn parts_are_validated() {
        let ok = || (vec![0.5, 1.5], vec![1.0, 1.0, 1.0]);
        let (r, c) = ok();
        assert!(NoiseModel::from_parts(r, c, 4.0, 0.3, f64::INFINITY, [0.0, 1.0]).is_ok());
        let (_, c) = ok();
        assert!(
            NoiseModel::from_parts(vec![0.5, 1.4], c, 4.0, 0.3, f64::INFINITY, [0.0, 1.0]).is_err()
        );
        let (_, c) = ok();
        assert!(
            NoiseModel::from_parts(vec![0.0, 2.0], c, 4.0, 0.3, f64::INFINITY, [0.0, 1.0]).is_err()
        );
        let (r, c) = ok();
        assert!(NoiseModel::from_parts(r, c, 2.0, 0.3, f64::INFINITY, [0.0, 1.0]).is_err());
        let (r, c) = ok();
        assert!(
            NoiseModel::from_parts(r, c, f64::INFINITY, 0.3, f64::INFINITY, [0.0, 1.0]).is_err()
        );
        let (r, c) = ok();
        assert!(NoiseModel::from_parts(r, c, f64::NAN, 1.0, f64::INFINITY, [0.0, 1.0]).is_err());
        let (r, _) = ok();
        assert!(NoiseModel::from_parts(
            r,
            vec![f64::NAN, 1.0, 2.0],
            4.0,
            1.0,
            f64::INFINITY,
            [0.0, 1.0]
        )
        .is_err());
        for (bound, range, good) in [
            (3.5, [-1.0, 2.0], true),
            (f64::INFINITY, [f64::NEG_INFINITY, f64::INFINITY], true),
            (3.5, [2.0, 2.0], true),
            (0.0, [0.0, 1.0], false),
            (f64::NAN, [0.0, 1.0], false),
            (3.5, [1.0, 0.0], false),
            (3.5, [f64::NAN, 1.0], false),
            (3.5, [f64::INFINITY, f64::INFINITY], false),
        ] {
            let (r, c) = ok();
            let got = NoiseModel::from_parts(r, c, 4.0, 0.5, bound, range);
            assert_eq!(got.is_ok(), good, "{bound} {range:?}");
        }
    }

    #[test]
    fn truncated_noise_stays_within_the_bound_and_keeps_the_body() {
        let law =
            NoiseModel::from_parts(vec![1.0], vec![1.0], 3.0, 1.0 / 3.0, 2.5, [-1e9, 1e9]).unwrap();
        let mut z = vec![0.0; 100_000];
        rng::fill_normal(&mut rng::stream(5, 0), &mut z);
        let mut tails = rng::stream(6, 0);
        let mut beyond = 0;
        for (e, zi) in z.iter().enumerate() {
            let q = zi * (1.0f64 / 3.0).sqrt() / (rng::chi_square(&mut tails, 3.0) / 3.0).sqrt();
            let t = law.truncated(q, 9, 0, e as u64);
            assert!(t.abs() <= 2.5);
            if q.abs() <= 2.5 {
                assert_eq!(t.to_bits(), q.to_bits());
            } else {
                beyond += 1;
                assert_eq!(t.to_bits(), law.truncated(q, 9, 0, e as u64).to_bits());
            }
        }
        // P(|T_3| > 2.5 sqrt(3)) = 0.0227 for the unit-variance t3.
        let p = beyond as f64 / z.len() as f64;
        assert!((p - 0.0227).abs() < 0.002, "{p}");
        assert_eq!(law.censor(-2e9), -1e9);
        assert_eq!(law.censor(0.25), 0.25);
    }
}
