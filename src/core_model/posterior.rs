//! The law of a core given noisy linear observations of it: the core step of
//! multiple imputation (DESIGN.md section 4, "Multiple imputation").
//!
//! Observations: `y_o = A_o c + e`, `e ~ N(0, s2 I)`, with `A_o` the
//! observed rows of the map `c -> vec(U C V^T)` (the caller subtracts the
//! mean). The posterior needs only `G = A_o^T A_o` (`d x d`) and
//! `b = A_o^T y_o` (`d`). Heteroscedastic noise `e ~ N(0, s2 W^-1)`, `W`
//! diagonal (the noise law's profile, [`crate::noise`]), is the same
//! problem with `G = A_o^T W A_o` and `b = A_o^T W y_o` (the whitened
//! observations `W^1/2 y_o`); the log marginal likelihood then differs by
//! `log det W / 2`, shared by every component.
//!
//! Every kind's law of `c` is written as Gaussians `N(m_c, F_c F_c^T)` in the
//! frame of [`super`], with the factor
//! `F_c = sqrt(delta) I + Q M_c Q^T`, `M_c` the `q x q` block diagonal
//! `diag(sigma) L_c - sqrt(delta) I_k` (leading block) and
//! `diag(sqrt(lambda_j + delta) - sqrt(delta))`, `j >= k` (the rest): since
//! the blocks live on orthogonal subspaces, `F_c F_c^T` is the frame's
//! covariance with the leading block `diag(sigma) S_c diag(sigma)`. The
//! components: the Gaussian kind, one with `m = mu` (`k = 0`); the mixture
//! kind, one per mixture component, `m_c = mu + Q_k diag(sigma) mean_c`,
//! `L_c` its Cholesky factor, weight `pi_c`; the flow kind, the Gaussian fit
//! of the same cores (the leading block replaced by its moments, `y ~ N(0,
//! I)`: `m = mu`, `L = I`) as a proposal.
//!
//! For one component, with `K = I + F^T G F / s2 = L L^T` (well conditioned:
//! `K >= I`), `h = F^T (b - G m)` and `g = L^-1 h`, Woodbury gives the
//! posterior `N(m + W g / s2, W W^T)`, `W = F L^-T`, and the log marginal
//! likelihood of the observations up to terms shared by every component:
//! `-sum_i log L_ii - (m^T G m - 2 m^T b - ||g||^2 / s2) / (2 s2)`. The
//! mixture's posterior is the mixture of the components' posteriors with
//! weights `pi_c` times their marginal likelihoods (normalised). Exact for
//! the Gaussian and mixture kinds.
//!
//! Flow kind: sampling-importance-resampling. [`IMPUTE_PROPOSALS`] draws
//! from the proposal's posterior; weights `p_flow(y) / N(y; 0, I)` on the
//! standardised leading scores `y` (the likelihood and the rest of the
//! frame are shared by target and proposal and cancel); one proposal is
//! picked by its normalised weight. The effective sample size
//! `(sum w)^2 / sum w^2` of each draw is returned, so a caller can see
//! when the proposal is poor. Cost per draw: `IMPUTE_PROPOSALS` flow
//! log-densities (an ODE solve each).
//!
//! Cost of conditioning: `O(K d^2 (d + q))` per observation pattern
//! (`K` components, a `d x d` Cholesky each) and `K (d^2 + d + 1)` stored
//! numbers; a draw costs `O(d^2)` (Gaussian, mixture). Chosen over a
//! conjugate-gradient scheme because a draw needs a factor of the posterior
//! covariance anyway, and `d = r s` is at most a few hundred in practice.
//!
//! Random numbers of draw `index`: [`rng::stream`]`(seed, index)` gives a
//! uniform (the component, or the resampled proposal), then `d` normals
//! (per proposal for the flow), so a draw depends only on `(seed, index)`.

use super::leading::{BlockDensity, LeadingBlock};
use super::CoreModel;
use crate::error::{Error, Result};
use crate::flow::ode::SolverOptions;
use crate::numerics::{gemm, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch};
use crate::rng;
use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};

/// Proposals per draw of the flow kind's importance resampling.
pub const IMPUTE_PROPOSALS: usize = 64;

impl CoreModel {
    /// Number of Gaussian components of the posterior (1 for the Gaussian
    /// and flow kinds, the mixture's component count for the mixture kind).
    pub fn posterior_components(&self) -> usize {
        match &self.block {
            Some(LeadingBlock::Mixture(m)) => m.parts.components(),
            _ => 1,
        }
    }

    /// Length of the state written by [`condition`](Self::condition).
    pub fn posterior_len(&self) -> usize {
        let d = self.dim;
        self.posterior_components() * (1 + d + d * d)
    }

    /// Workspace of [`condition`](Self::condition).
    pub fn condition_scratch(&self) -> StackReq {
        let (d, q) = (self.dim, self.components());
        StackReq::all_of(&[
            temp_mat_scratch::<f64>(d, q),
            temp_mat_scratch::<f64>(d, d),
            temp_mat_scratch::<f64>(d, d),
            temp_slice_scratch::<f64>(2 * d),
            cholesky_in_place_scratch::<f64>(d, Par::Seq, Default::default()),
        ])
    }

    /// Conditions the core law on observations summarised by `gram`
    /// (`G = A_o^T A_o`, `d x d`) and `rhs` (`b = A_o^T y_o`) with noise
    /// variance `noise_var` (module docs), writing the posterior into
    /// `state` ([`posterior_len`](Self::posterior_len) values). Never
    /// allocates.
    pub fn condition(
        &self,
        gram: MatRef<'_, f64>,
        rhs: &[f64],
        noise_var: f64,
        state: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()> {
        let (d, q, k) = (self.dim, self.components(), self.block_dim());
        debug_assert_eq!(gram.shape(), (d, d));
        debug_assert_eq!(rhs.len(), d);
        debug_assert_eq!(state.len(), self.posterior_len());
        let ncomp = self.posterior_components();
        let s2 = noise_var;
        let sd = self.sqrt_ridge;
        let (mut p, stack) = temp_mat_zeroed::<f64>(d, q, stack);
        let (mut f, stack) = temp_mat_zeroed::<f64>(d, d, stack);
        let (mut kmat, stack) = temp_mat_zeroed::<f64>(d, d, stack);
        let (vecs, stack) = temp_slice(2 * d, 0.0f64, stack);
        let (h, gm) = vecs.split_at_mut(d);
        let scale = self.block.as_ref().map_or(&[][..], |b| b.scale());
        let mixture = match &self.block {
            Some(LeadingBlock::Mixture(m)) => Some(&m.parts),
            _ => None,
        };
        for comp in 0..ncomp {
            let (head, wt) =
                state[comp * (1 + d + d * d)..(comp + 1) * (1 + d + d * d)].split_at_mut(1 + d);
            let (lw, mean) = head.split_at_mut(1);
            let mut wt = MatMut::from_column_major_slice_mut(wt, d, d);
            // m_c and P = Q M_c.
            mean.copy_from_slice(&self.mean);
            for j in 0..q {
                for i in 0..d {
                    p[(i, j)] = if j < k { -sd } else { self.gain[j] } * self.basis[(i, j)];
                }
            }
            let log_pi = match mixture {
                Some(mp) => {
                    let lc = &mp.chols[comp * k * k..(comp + 1) * k * k];
                    let mc = &mp.means[comp * k..(comp + 1) * k];
                    for t in 0..k {
                        let w = scale[t] * mc[t];
                        for (i, mi) in mean.iter_mut().enumerate() {
                            *mi += self.basis[(i, t)] * w;
                        }
                        // Column j of Q_k diag(sigma) L_c: sum_t Q_t sigma_t L_tj.
                        for j in 0..=t {
                            let w = scale[t] * lc[t + j * k];
                            for i in 0..d {
                                p[(i, j)] += self.basis[(i, t)] * w;
                            }
                        }
                    }
                    mp.weights[comp].ln()
                }
                None => {
                    // The flow's proposal: y ~ N(0, I), so M = diag(sigma) - sqrt(delta).
                    for (t, &st) in scale.iter().enumerate() {
                        for i in 0..d {
                            p[(i, t)] += self.basis[(i, t)] * st;
                        }
                    }
                    0.0
                }
            };
            // F = sqrt(delta) I + P Q^T.
            gemm(
                f.rb_mut(),
                Accum::Replace,
                p.rb(),
                self.basis_t.as_ref(),
                1.0,
                Par::Seq,
            );
            for i in 0..d {
                f[(i, i)] += sd;
            }
            // K = I + F^T (G F) / s2, with G F in wt for now.
            gemm(wt.rb_mut(), Accum::Replace, gram, f.rb(), 1.0, Par::Seq);
            gemm(
                kmat.rb_mut(),
                Accum::Replace,
                f.rb().transpose(),
                wt.rb(),
                1.0 / s2,
                Par::Seq,
            );
            for i in 0..d {
                kmat[(i, i)] += 1.0;
            }
            // Symmetric up to rounding; the factorisation reads the lower half.
            cholesky_in_place(
                kmat.rb_mut(),
                Default::default(),
                Par::Seq,
                &mut *stack,
                Default::default(),
            )
            .map_err(|_| Error::numerical("impute: the posterior precision is not positive"))?;
            // h = F^T (b - G m).
            {
                let mm = MatRef::from_column_major_slice(mean, d, 1);
                let gmm = MatMut::from_column_major_slice_mut(gm, d, 1);
                gemm(gmm, Accum::Replace, gram, mm, 1.0, Par::Seq);
            }
            let mgm: f64 = mean.iter().zip(gm.iter()).map(|(a, b)| a * b).sum();
            let mb: f64 = mean.iter().zip(rhs).map(|(a, b)| a * b).sum();
            for (g, bv) in gm.iter_mut().zip(rhs) {
                *g = bv - *g;
            }
            {
                let hm = MatMut::from_column_major_slice_mut(h, d, 1);
                let rm = MatRef::from_column_major_slice(gm, d, 1);
                gemm(hm, Accum::Replace, f.rb().transpose(), rm, 1.0, Par::Seq);
            }
            let l = kmat.rb();
            solve_lower_triangular_in_place(
                l,
                MatMut::from_column_major_slice_mut(h, d, 1),
                Par::Seq,
            );
            // W^T = L^-1 F^T.
            for j in 0..d {
                for i in 0..d {
                    wt[(i, j)] = f[(j, i)];
                }
            }
            solve_lower_triangular_in_place(l, wt.rb_mut(), Par::Seq);
            let g2: f64 = h.iter().map(|v| v * v).sum();
            let log_det: f64 = (0..d).map(|i| l[(i, i)].ln()).sum();
            lw[0] = log_pi - log_det - (mgm - 2.0 * mb - g2 / s2) / (2.0 * s2);
            // Posterior mean m + W g / s2 = m + (W^T)^T g / s2.
            {
                let mm = MatMut::from_column_major_slice_mut(mean, d, 1);
                let gv = MatRef::from_column_major_slice(h, d, 1);
                gemm(mm, Accum::Add, wt.rb().transpose(), gv, 1.0 / s2, Par::Seq);
            }
            if !(lw[0].is_finite() || lw[0] == f64::NEG_INFINITY)
                || mean.iter().any(|v| !v.is_finite())
            {
                return Err(Error::numerical(
                    "impute: the posterior of the core is not finite",
                ));
            }
        }
        // Log weights -> cumulative probabilities (the last exactly 1).
        let stride = 1 + d + d * d;
        let top = (0..ncomp)
            .map(|c| state[c * stride])
            .fold(f64::NEG_INFINITY, f64::max);
        if !top.is_finite() {
            return Err(Error::numerical(
                "impute: no component of the core model explains the observed entries",
            ));
        }
        let total: f64 = (0..ncomp).map(|c| (state[c * stride] - top).exp()).sum();
        let mut acc = 0.0;
        for c in 0..ncomp {
            acc += (state[c * stride] - top).exp() / total;
            state[c * stride] = if c + 1 == ncomp { 1.0 } else { acc };
        }
        Ok(())
    }

    /// The posterior component weights of a conditioned `state` (they sum
    /// to 1).
    pub fn posterior_weights(&self, state: &[f64], out: &mut [f64]) {
        let stride = 1 + self.dim + self.dim * self.dim;
        let mut prev = 0.0;
        for (c, o) in out.iter_mut().enumerate() {
            let cum = state[c * stride];
            *o = cum - prev;
            prev = cum;
        }
    }

    /// The posterior mean of the core and the effective number of core
    /// parameters the observations determine, from a conditioned `state`
    /// and the `gram` (`G`) and `noise_var` (`s2`) it was conditioned with:
    /// writes the mean (weighted over the components by their posterior
    /// weights; for the flow kind, the Gaussian proposal's) into `mean`
    /// (`d` values) and returns the trace of the hat weighted the same way,
    /// `d_eff = sum_c pi_c trace(G Sigma_c) / s2` (`= d - trace(K_c^-1)` for
    /// one component), with
    /// `Sigma_c = W_c W_c^T` the component's posterior covariance (module
    /// docs). `tmp` holds `d` values. `O(K d^3)`; never allocates.
    pub fn posterior_summary(
        &self,
        state: &[f64],
        gram: MatRef<'_, f64>,
        noise_var: f64,
        mean: &mut [f64],
        tmp: &mut [f64],
    ) -> f64 {
        let d = self.dim;
        let stride = 1 + d + d * d;
        debug_assert_eq!(mean.len(), d);
        debug_assert_eq!(tmp.len(), d);
        mean.fill(0.0);
        let (mut prev, mut hat) = (0.0, 0.0);
        for c in 0..self.posterior_components() {
            let at = c * stride;
            let w = state[at] - prev;
            prev = state[at];
            if w <= 0.0 {
                continue;
            }
            for (o, v) in mean.iter_mut().zip(&state[at + 1..at + 1 + d]) {
                *o += w * v;
            }
            // trace(W^T G W): row i of W^T is column i of W.
            let wt = MatRef::from_column_major_slice(&state[at + 1 + d..at + stride], d, d);
            let mut tr = 0.0;
            for i in 0..d {
                let wi = wt.row(i).transpose();
                {
                    let gw = MatMut::from_column_major_slice_mut(tmp, d, 1);
                    gemm(gw, Accum::Replace, gram, wi.as_mat(), 1.0, Par::Seq);
                }
                for (k, g) in tmp.iter().enumerate() {
                    tr += wi[k] * g;
                }
            }
            hat += w * tr / noise_var;
        }
        hat
    }

    /// Workspace of [`posterior_draw`](Self::posterior_draw).
    pub fn posterior_draw_scratch(&self, solver: &SolverOptions) -> StackReq {
        let (d, k) = (self.dim, self.block_dim());
        match &self.block {
            Some(LeadingBlock::Flow(f)) => {
                let rows = IMPUTE_PROPOSALS.min(f.log_prob_rows(solver).max(1));
                StackReq::all_of(&[
                    temp_slice_scratch::<f64>(d + 2 * IMPUTE_PROPOSALS),
                    temp_mat_scratch::<f64>(IMPUTE_PROPOSALS, k),
                    f.log_prob_scratch(rows, solver),
                ])
            }
            _ => temp_slice_scratch::<f64>(d),
        }
    }

    /// Draw number `index` of stream `seed` from the posterior in `state`
    /// (written by [`condition`](Self::condition)) into `core` (`d`
    /// values). Returns the effective sample size of the importance
    /// resampling for the flow kind, `None` for the exact kinds. Never
    /// allocates.
    pub fn posterior_draw(
        &self,
        state: &[f64],
        solver: &SolverOptions,
        seed: u64,
        index: u64,
        core: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<Option<f64>> {
        let d = self.dim;
        let stride = 1 + d + d * d;
        let mut r = rng::stream(seed, index);
        let u = rng::uniform(&mut r);
        let comp = (0..self.posterior_components())
            .position(|c| u < state[c * stride])
            .unwrap_or(self.posterior_components() - 1);
        let at = comp * stride;
        let mean = &state[at + 1..at + 1 + d];
        let wt = MatRef::from_column_major_slice(&state[at + 1 + d..at + stride], d, d);
        let flow = match &self.block {
            Some(LeadingBlock::Flow(f)) => f,
            _ => {
                let (e, _) = temp_slice(d, 0.0f64, stack);
                rng::fill_normal(&mut r, e);
                gaussian_draw(mean, wt, e, core);
                return Ok(None);
            }
        };
        let (k, mp) = (self.block_dim(), IMPUTE_PROPOSALS);
        let (buf, stack) = temp_slice(d + 2 * mp, 0.0f64, stack);
        let (e, rest) = buf.split_at_mut(d);
        let (lw, lp) = rest.split_at_mut(mp);
        let (mut y, stack) = temp_mat_zeroed::<f64>(mp, k, stack);
        let scale = flow.scale();
        // Proposals: only their standardised leading scores are kept; the
        // chosen one is drawn again from its own normals below.
        let first_normals = r.clone();
        for i in 0..mp {
            rng::fill_normal(&mut r, e);
            gaussian_draw(mean, wt, e, core);
            let mut q2 = 0.0;
            for t in 0..k {
                let mut a = 0.0;
                for (c, (cv, mv)) in core.iter().zip(&self.mean).enumerate() {
                    a += self.basis_t[(t, c)] * (cv - mv);
                }
                let yt = a / scale[t];
                y[(i, t)] = yt;
                q2 += yt * yt;
            }
            lw[i] = 0.5 * q2;
        }
        let rows = mp.min(flow.log_prob_rows(solver).max(1));
        let base = index.wrapping_mul(mp as u64);
        let mut start = 0;
        while start < mp {
            let len = (mp - start).min(rows);
            flow.log_prob(
                solver,
                base.wrapping_add(start as u64),
                y.rb().subrows(start, len),
                &mut lp[start..start + len],
                &mut *stack,
            )?;
            start += len;
        }
        let mut top = f64::NEG_INFINITY;
        for (w, l) in lw.iter_mut().zip(lp.iter()) {
            *w = if l.is_finite() {
                *w + l
            } else {
                f64::NEG_INFINITY
            };
            top = top.max(*w);
        }
        if !top.is_finite() {
            return Err(Error::numerical(
                "impute: no proposal has a finite density under the flow",
            ));
        }
        let (mut s1, mut s2) = (0.0, 0.0);
        for w in lw.iter_mut() {
            *w = (*w - top).exp();
            s1 += *w;
            s2 += *w * *w;
        }
        let pick = rng::uniform(&mut r) * s1;
        let mut acc = 0.0;
        let mut chosen = mp - 1;
        for (i, w) in lw.iter().enumerate() {
            acc += w;
            if pick < acc {
                chosen = i;
                break;
            }
        }
        let mut r = first_normals;
        for _ in 0..=chosen {
            rng::fill_normal(&mut r, e);
        }
        gaussian_draw(mean, wt, e, core);
        Ok(Some(s1 * s1 / s2))
    }
}

/// `core <- mean + W e` with `wt = W^T`.
fn gaussian_draw(mean: &[f64], wt: MatRef<'_, f64>, e: &[f64], core: &mut [f64]) {
    for (c, (o, m)) in core.iter_mut().zip(mean).enumerate() {
        let col = wt.col(c);
        let mut acc = *m;
        for (i, ev) in e.iter().enumerate() {
            acc += col[i] * ev;
        }
        *o = acc;
    }
}
