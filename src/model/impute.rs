//! Multiple imputation: draws of the missing entries of a matrix from the
//! model's law given its observed entries (DESIGN.md section 4, "Multiple
//! imputation").
//!
//! With `Y` the partial matrix, `P` its observed entries, `Xbar` the mean
//! (zero when not centered), `sigma^2` the fitted noise level and
//! `rho_a gamma_b` the noise law's variance profile ([`crate::noise`]), a
//! draw is
//!
//! ```text
//! c ~ p(c | P(Y)),   X = P(Y) + P^perp(Xbar + U C V^T + E),
//! E_ab = sigma sqrt(rho_a gamma_b) z_ab                      (Gaussian tails),
//! E_ab = sigma sqrt(rho_a gamma_b) tau z_ab / sqrt(w_ab)     (Student-t, nu),
//! ```
//!
//! `z_ab ~ N(0, 1)`, `w_ab ~ chi2_nu / nu`, all independent: the core from
//! the core model conditioned on the observed entries (`core_model`
//! posterior docs), then independent noise of the noise law on the missing
//! entries. The conditioning treats the noise as Gaussian with variance
//! `sigma^2 rho_a gamma_b`: the observations are weighted by
//! `w_ab = 1 / (rho_a gamma_b)`, entering through
//! `G = A_o^T W A_o = sum_b (v_b v_b^T) (x) H_b / gamma_b`,
//! `H_b = sum_{a observed in column b} u_a u_a^T / rho_a` (`v_b`, `u_a` rows
//! of V and U; `A_o` the observed rows of `c -> vec(U C V^T)`,
//! column-major `vec`), and
//! `b = A_o^T W P(Y - Xbar) = vec(U^T (W o P(Y - Xbar)) V)` at level
//! `sigma^2`: `O(m n r^2 + n d^2)` per observation pattern. The posterior is
//! exact for the Gaussian and mixture kinds under Gaussian noise of that
//! profile; Student-t tails enter only the noise of the missing entries.
//! A flat profile gives weights exactly 1 (the unweighted formulas,
//! bitwise).
//!
//! # The level
//!
//! [`ImputeLevel::Fitted`] (the default, [`Model::impute`]) conditions and
//! draws at the fitted `sigma^2`: the exact posterior under the model. That
//! level is the training residuals'; held-out matrices can have another
//! (larger where the bases overfit the training set). With
//! [`ImputeLevel::Observed`] each matrix gets its own level
//! `lambda sigma^2`, estimated on its observed entries: with `yhat` the
//! posterior mean of `Xbar + U C V^T` at the current level (the mixture's
//! mean over its components, weighted by their posterior weights; for the
//! flow kind the Gaussian proposal's mean), `e2_ab = (y_ab - yhat_ab)^2 /
//! (sigma^2 rho_a gamma_b)` over the `n_obs` observed entries and `d_eff`
//! the trace of the posterior hat matrix
//! ([`CoreModel::posterior_summary`](crate::core_model::CoreModel::posterior_summary),
//! `d - trace(K^-1)`: the core directions the observations determine),
//!
//! ```text
//! lambda <- (nu0 + sum_obs w_ab e2_ab) / (nu0 + max(n_obs - d_eff, 0)),
//! w_ab = 1                                                (Gaussian tails),
//! w_ab = (nu + 1) / (nu tau^2 + e2_ab / lambda)           (Student-t, nu),
//! ```
//!
//! then conditioning again at `lambda sigma^2`, to a fixed point (relative
//! change at most [`LEVEL_TOL`], at most [`LEVEL_MAX_PASSES`] passes; the
//! state is always conditioned at the last `lambda`). For Gaussian noise,
//! `E[sum e2] = lambda (n_obs - d_eff)` exactly when the data follow the
//! model at level `lambda sigma^2` (whitened, the residual against the
//! posterior mean is `r = (I - H)(y - A m)`, and `I - H = s2 S^-1` with
//! `S` the covariance of `y - A m`, so `E|r|^2 = s2 trace(I - H)`), so the
//! fixed point is the evidence (type-II maximum likelihood) update of the
//! level, shrunk towards 1; for Student-t tails the weights are the
//! E-step of the t as a scale mixture of Gaussians, so a few large
//! residuals do not drive the level. `nu0 =` [`LEVEL_PRIOR_WEIGHT`]
//! pseudo-observations at `lambda = 1` keep a matrix with few observed
//! entries near the fitted level (no observed entry: `lambda = 1`). The
//! missing entries then get noise of level `lambda sigma^2` (profile and
//! tails unchanged). Deterministic; a stride-0 partial estimates `lambda`
//! once; draws still depend only on (seed, index).
//!
//! Streams: the core of draw `index` comes from `rng::stream(seed, index)`
//! (posterior docs), its noise from `rng::stream(mix64(seed ^ NOISE_TAG),
//! index)`, one normal per entry in column-major order whether the entry is
//! missing or not (so the noise of an entry does not depend on the mask);
//! with Student-t tails the chi-square variates come from
//! `rng::stream(mix64(seed ^ TAIL_TAG), index)`, one per entry in the same
//! order, also whether missing or not.
//!
//! Support: the standardised noise of a missing entry is truncated at the
//! noise law's bound (a value beyond it is drawn again from
//! `rng::redraw_stream(mix64(seed ^ REDRAW_TAG) ^ mix64(a + b m), index,
//! attempt)`, which leaves the streams above aligned) and the drawn entry
//! is censored to the training range ([`crate::noise`], "Support of a
//! draw").

use super::{check_workspace, core_row_mut, Model};
use crate::batch::{MatrixBatch, MatrixBatchMut};
use crate::completion::{self, Observed};
use crate::error::{Error, Result};
use crate::flow::ode::SolverOptions;
use crate::numerics::{self, gemm, temp_mat_zeroed, temp_slice, MemStack, StackReq};
use crate::rng;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};

/// Salt of the noise stream of the missing entries.
const NOISE_TAG: u64 = 0x696d_7075_7465_6e6f;
/// Salt of the chi-square stream of Student-t noise.
const TAIL_TAG: u64 = 0x7461_696c_735f_6e75;
/// Salt of the redraws of noise beyond the bound.
const REDRAW_TAG: u64 = 0x626f_756e_645f_6e7a;

/// What [`Model::impute`] reports besides the draws.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ImputeReport {
    /// Smallest effective sample size of the importance resampling over
    /// the draws (flow kind; NaN for the exact kinds and for no draw).
    pub min_ess: f64,
    /// Mean effective sample size (flow kind; NaN otherwise), out of
    /// [`crate::core_model::IMPUTE_PROPOSALS`] proposals per draw.
    pub mean_ess: f64,
    /// Smallest level multiplier `lambda` over the draws' matrices: 1 for
    /// [`ImputeLevel::Fitted`], the re-estimated level over `sigma^2` for
    /// [`ImputeLevel::Observed`] (module docs); NaN for no draw.
    pub min_level: f64,
    /// Mean level multiplier over the draws (NaN for no draw).
    pub mean_level: f64,
}

/// The noise level at which [`Model::impute_with_level`] conditions and
/// draws (module docs, "The level").
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum ImputeLevel {
    /// The fitted level `sigma^2`: the exact posterior under the model.
    #[default]
    Fitted,
    /// `lambda sigma^2`, `lambda` re-estimated on the observed entries of
    /// each matrix.
    Observed,
}

/// Prior weight `nu0` of the level re-estimate, in pseudo-observations at
/// `lambda = 1` (module docs, "The level").
pub const LEVEL_PRIOR_WEIGHT: f64 = 10.0;
/// Relative change of `lambda` below which its fixed-point iteration stops.
pub const LEVEL_TOL: f64 = 1e-3;
/// Most re-estimates of `lambda` per matrix (each one conditioning).
pub const LEVEL_MAX_PASSES: usize = 16;

impl Model {
    /// Workspace for [`Model::impute`] of up to `count` draws with `opts`.
    /// Empty for `count = 0` and for a geometry-only model (the call is
    /// unsupported).
    pub fn impute_scratch(&self, count: usize, opts: &SolverOptions) -> StackReq {
        let Some(core) = &self.core else {
            return StackReq::EMPTY;
        };
        if count == 0 {
            return StackReq::EMPTY;
        }
        let (m, n) = (self.info.rows, self.info.cols);
        let (r, s, d) = (self.info.rank_rows, self.info.rank_cols, self.core_dim());
        StackReq::all_of(&[
            numerics::temp_mat_scratch::<f64>(count, d),
            numerics::temp_slice_scratch::<f64>(core.posterior_len() + 3 * d + 2 * m + count),
            numerics::temp_mat_scratch::<f64>(d, d),
            numerics::temp_mat_scratch::<f64>(m, n),
            numerics::temp_mat_scratch::<f64>(m, s),
            numerics::temp_mat_scratch::<f64>(r, r),
            StackReq::any_of(&[core.condition_scratch(), core.posterior_draw_scratch(opts)]),
        ])
    }

    /// Multiple imputation: matrix `j` of `out` is draw number
    /// `first_index + j` of stream `seed` from the model's law of matrix `j`
    /// of `partial` given its observed entries (mask nonzero, or not NaN
    /// when `partial` has no mask): the core from the core model's
    /// posterior given the observed entries weighted by the noise law's
    /// profile, then `Xbar + U C V^T` plus independent noise of the noise
    /// law ([`Model::noise`]: variance `sigma^2 rho_a gamma_b`, Gaussian or
    /// Student-t) on the missing entries; observed entries are copied
    /// bitwise (module docs). Exact for the Gaussian and mixture
    /// kinds; importance resampling for the flow (its effective sample
    /// sizes are reported). A `partial` with sample stride 0 repeats one
    /// matrix, conditioned once. Depends only on (seed, index), not on the
    /// split into calls; never allocates; runs on the calling thread; every
    /// draw is computed and checked before `out` is written.
    pub fn impute(
        &self,
        opts: &SolverOptions,
        seed: u64,
        first_index: u64,
        partial: &MatrixBatch,
        out: &mut MatrixBatchMut,
        stack: &mut MemStack,
    ) -> Result<ImputeReport> {
        self.impute_with_level(
            opts,
            ImputeLevel::Fitted,
            seed,
            first_index,
            partial,
            out,
            stack,
        )
    }

    /// [`Model::impute`] at the noise level `level`: with
    /// [`ImputeLevel::Fitted`] exactly [`Model::impute`]; with
    /// [`ImputeLevel::Observed`] each matrix is conditioned, and its missing
    /// entries drawn, at the level `lambda sigma^2` re-estimated on its
    /// observed entries (module docs, "The level"; the noise law's profile
    /// and tails unchanged). The report gives the multipliers `lambda`.
    /// The same workspace ([`Model::impute_scratch`]) and guarantees.
    #[allow(clippy::too_many_arguments)]
    pub fn impute_with_level(
        &self,
        opts: &SolverOptions,
        level: ImputeLevel,
        seed: u64,
        first_index: u64,
        partial: &MatrixBatch,
        out: &mut MatrixBatchMut,
        stack: &mut MemStack,
    ) -> Result<ImputeReport> {
        let core = self.core_or_unsupported("impute")?;
        self.check_shape(partial.rows(), partial.cols(), "partial")?;
        self.check_shape(out.rows(), out.cols(), "out")?;
        if out.count() != partial.count() {
            return Err(Error::shape(format!(
                "out: holds {} matrices, partial has {}",
                out.count(),
                partial.count()
            )));
        }
        opts.check()?;
        completion::check_observed_finite(partial, true, "partial")?;
        let count = partial.count();
        if first_index.checked_add(count as u64).is_none() {
            return Err(Error::invalid("first_index: first_index + count overflows"));
        }
        let mut report = ImputeReport {
            min_ess: f64::NAN,
            mean_ess: f64::NAN,
            min_level: f64::NAN,
            mean_level: f64::NAN,
        };
        if count == 0 {
            return Ok(report);
        }
        check_workspace(self.impute_scratch(count, opts), stack)?;
        let (m, n) = (self.info.rows, self.info.cols);
        let (r, s, d) = (self.info.rank_rows, self.info.rank_cols, self.core_dim());
        let (mut cores, stack) = temp_mat_zeroed::<f64>(count, d, stack);
        let (buf, stack) = temp_slice(core.posterior_len() + 3 * d + 2 * m + count, 0.0f64, stack);
        let (state, rest) = buf.split_at_mut(core.posterior_len());
        let (rhs, rest) = rest.split_at_mut(d);
        let (draw, rest) = rest.split_at_mut(d);
        let (tmp, rest) = rest.split_at_mut(d);
        let (col, rest) = rest.split_at_mut(m);
        let (mix, levels) = rest.split_at_mut(m);
        let (mut gram, stack) = temp_mat_zeroed::<f64>(d, d, stack);
        let (mut full, stack) = temp_mat_zeroed::<f64>(m, n, stack);
        let (mut t, stack) = temp_mat_zeroed::<f64>(m, s, stack);
        let (mut h, stack) = temp_mat_zeroed::<f64>(r, r, stack);
        // Stride 0 repeats one matrix (and its mask): condition once.
        let repeated = partial.layout().sample_stride == 0;
        let sigma2 = self.prior.noise_var;
        let (mut ess_min, mut ess_sum) = (f64::INFINITY, 0.0);
        let mut lambda = 1.0;
        for j in 0..count {
            let fail = |e: Error| {
                Error::new(
                    e.kind(),
                    format!("partial: matrix {j}: {}; nothing was written", e.message()),
                )
            };
            if j == 0 || !repeated {
                let obs = completion::observed_of(partial, j, true);
                self.observation(
                    partial.sample(j),
                    obs,
                    gram.rb_mut(),
                    rhs,
                    h.rb_mut(),
                    full.rb_mut(),
                    t.rb_mut(),
                );
                core.condition(gram.rb(), rhs, sigma2, state, &mut *stack)
                    .map_err(fail)?;
                lambda = 1.0;
                if level == ImputeLevel::Observed {
                    // Fixed point of lambda = (nu0 + ss / sigma^2) / (nu0 +
                    // n_obs - d_eff), both sides at level lambda sigma^2.
                    for _ in 0..LEVEL_MAX_PASSES {
                        let d_eff =
                            core.posterior_summary(state, gram.rb(), lambda * sigma2, draw, tmp);
                        for (k, v) in draw.iter().enumerate() {
                            cores[(j, k)] = *v;
                        }
                        let c = core_row_mut(cores.rb_mut(), j, r, s);
                        self.decode_one(c.rb(), full.rb_mut(), t.rb_mut());
                        let y = partial.sample(j);
                        let law = &self.noise;
                        let (wr, wc) = (law.inv_row(), law.inv_col());
                        // Student-t: E-step weights of the t as a scale
                        // mixture of Gaussians; 1 for Gaussian tails.
                        let (nu, tau2) = (law.dof(), law.tail_scale());
                        let t_tails = !law.is_gaussian();
                        let (mut ss, mut n_obs) = (0.0, 0usize);
                        for b in 0..n {
                            for a in 0..m {
                                if obs.at(y, a, b) {
                                    let e = y[(a, b)] - full[(a, b)];
                                    let e2 = e * e * (wr[a] * wc[b]) / sigma2;
                                    ss += if t_tails {
                                        (nu + 1.0) * e2 / (nu * tau2 + e2 / lambda)
                                    } else {
                                        e2
                                    };
                                    n_obs += 1;
                                }
                            }
                        }
                        let dof = (n_obs as f64 - d_eff).max(0.0);
                        let next = (LEVEL_PRIOR_WEIGHT + ss) / (LEVEL_PRIOR_WEIGHT + dof);
                        if !(next.is_finite() && next > 0.0) {
                            return Err(fail(Error::numerical(
                                "the noise level re-estimated on the observed entries is not finite and positive",
                            )));
                        }
                        let done = (next / lambda - 1.0).abs() <= LEVEL_TOL;
                        lambda = next;
                        core.condition(gram.rb(), rhs, lambda * sigma2, state, &mut *stack)
                            .map_err(fail)?;
                        if done {
                            break;
                        }
                    }
                }
            }
            levels[j] = lambda;
            let ess = core
                .posterior_draw(state, opts, seed, first_index + j as u64, draw, &mut *stack)
                .map_err(fail)?;
            for (k, v) in draw.iter().enumerate() {
                cores[(j, k)] = *v;
            }
            if let Some(e) = ess {
                ess_min = ess_min.min(e);
                ess_sum += e;
            }
        }
        if ess_min.is_finite() {
            report.min_ess = ess_min;
            report.mean_ess = ess_sum / count as f64;
        }
        report.min_level = levels.iter().copied().fold(f64::INFINITY, f64::min);
        report.mean_level = levels.iter().sum::<f64>() / count as f64;
        for j in 0..count {
            let row = cores.rb().row(j);
            self.check_decodable((0..d).map(|k| row[k]), "out: draw", j)?;
        }
        // Two passes over the same deterministic values: the first checks
        // every draw in the workspace, so the second, which writes, cannot
        // fail and `out` is untouched by a failed call.
        let noise_seed = rng::mix64(seed ^ NOISE_TAG);
        let tail_seed = rng::mix64(seed ^ TAIL_TAG);
        let redraw_seed = rng::mix64(seed ^ REDRAW_TAG);
        let law = &self.noise;
        let (sd_row, sd_col) = (law.sd_row(), law.sd_col());
        let (dof, tau) = (law.dof(), law.tail_scale().sqrt());
        for pass in 0..2 {
            for (j, &lambda) in levels.iter().enumerate() {
                let c = core_row_mut(cores.rb_mut(), j, r, s);
                self.decode_one(c.rb(), full.rb_mut(), t.rb_mut());
                let y = partial.sample(j);
                let obs = completion::observed_of(partial, j, true);
                // lambda = 1 (the fitted level) leaves sigma^2 bitwise.
                let sigma = (lambda * sigma2).sqrt();
                let mut noise = rng::stream(noise_seed, first_index + j as u64);
                let mut tails =
                    (!law.is_gaussian()).then(|| rng::stream(tail_seed, first_index + j as u64));
                for b in 0..n {
                    rng::fill_normal(&mut noise, col);
                    if let Some(t) = tails.as_mut() {
                        // Student-t: z tau / sqrt(chi2 / nu).
                        for w in mix.iter_mut() {
                            *w = tau / (rng::chi_square(t, dof) / dof).sqrt();
                        }
                    } else {
                        mix.fill(1.0);
                    }
                    let amp = sigma * sd_col[b];
                    for a in 0..m {
                        if obs.at(y, a, b) {
                            full[(a, b)] = y[(a, b)];
                        } else {
                            let q = mix[a] * col[a];
                            // Within the bound: the product in its earlier
                            // order, so files without a support keep their
                            // draws bitwise.
                            let e = if q.abs() <= law.bound() {
                                amp * sd_row[a] * mix[a] * col[a]
                            } else {
                                let entry = (a + b * m) as u64;
                                let index = first_index + j as u64;
                                amp * sd_row[a] * law.truncated(q, redraw_seed, index, entry)
                            };
                            full[(a, b)] = law.censor(full[(a, b)] + e);
                        }
                    }
                }
                if pass == 0 {
                    if (0..n).any(|b| (0..m).any(|a| !full[(a, b)].is_finite())) {
                        return Err(Error::numerical(format!(
                            "out: draw {j} is not finite; nothing was written"
                        )));
                    }
                } else {
                    out.sample_mut(j).copy_from(full.rb());
                }
            }
        }
        Ok(report)
    }

    /// `gram <- G = A_o^T W A_o` and `rhs <- b = vec(U^T (W o P(Y - Xbar))
    /// V)` for the observed entries `obs` of `y`, `W` the weights
    /// `1 / (rho_a gamma_b)` of the noise law (module docs); `h` (`r x r`),
    /// `full` (`m x n`) and `t` (`m x s`) are temporaries.
    #[allow(clippy::too_many_arguments)]
    fn observation(
        &self,
        y: MatRef<'_, f64>,
        obs: Observed<'_>,
        mut gram: MatMut<'_, f64>,
        rhs: &mut [f64],
        mut h: MatMut<'_, f64>,
        mut full: MatMut<'_, f64>,
        mut t: MatMut<'_, f64>,
    ) {
        let (m, n) = (self.info.rows, self.info.cols);
        let (r, s) = (self.info.rank_rows, self.info.rank_cols);
        let (u, v) = (self.u.as_ref(), self.v.as_ref());
        let (wr, wc) = (self.noise.inv_row(), self.noise.inv_col());
        gram.fill(0.0);
        for b in 0..n {
            h.fill(0.0);
            for a in 0..m {
                if obs.at(y, a, b) {
                    for i2 in 0..r {
                        let w = u[(a, i2)] * wr[a];
                        for i1 in 0..r {
                            h[(i1, i2)] += u[(a, i1)] * w;
                        }
                    }
                }
            }
            for j2 in 0..s {
                for j1 in 0..s {
                    let w = v[(b, j1)] * v[(b, j2)] * wc[b];
                    for i2 in 0..r {
                        for i1 in 0..r {
                            gram[(i1 + j1 * r, i2 + j2 * r)] += w * h[(i1, i2)];
                        }
                    }
                }
            }
        }
        for b in 0..n {
            for a in 0..m {
                full[(a, b)] = if obs.at(y, a, b) {
                    (y[(a, b)] - self.mean.as_ref().map_or(0.0, |mm| mm[(a, b)])) * (wr[a] * wc[b])
                } else {
                    0.0
                };
            }
        }
        gemm(t.rb_mut(), Accum::Replace, full.rb(), v, 1.0, Par::Seq);
        let bm = MatMut::from_column_major_slice_mut(rhs, r, s);
        gemm(bm, Accum::Replace, u.transpose(), t.rb(), 1.0, Par::Seq);
    }
}
