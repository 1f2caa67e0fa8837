//! The fit: principal components, the split, the candidates, the choice
//! and the refit on every core.

use super::block::{flow_block, BlockChoice};
use super::flow::fit_flow;
use super::mixture::{
    no_mixture, refit_mixture, responsibilities, select_mixture, MixtureChoice, MixtureFit,
};
use super::parts::{CoreModelInfo, CoreModelParts};
use super::select::{block_mmd, heldout_scores, mmd_all};
use super::{flatten, CoreModel, CoreModelChoice, CoreModelKind, FlowOptions};
use crate::error::{Error, Result};
use crate::numerics::par_for_threads;
use crate::pca::{principal_components, PrincipalComponents};
use crate::reduce::{sum_scalar, LocalReducer, Reducer};
use crate::rng;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// Samples per dimension below which the Gaussian parts are shrunk
/// ([`crate::pca::shrinkage_intensity`]). Below it the sample covariance is
/// singular (`N <= d`) or its small eigenvalues are biased low, and held-out
/// cores get log-densities of -1e5 and below (measured: 70 faces with
/// `d = 120`); above it the shrinkage, which minimises a Frobenius error,
/// costs likelihood on well-estimated but ill-conditioned covariances.
pub const SHRINK_BELOW_SAMPLES_PER_DIM: usize = 10;

impl CoreModel {
    /// Fits the core model on `cores` (`N x d`, one core per row, finite).
    /// `progress(step, total, loss)` is called after each training step;
    /// returning `false` cancels the fit (`ErrorKind::Cancelled`).
    pub fn fit(
        cores: MatRef<'_, f64>,
        opts: &FlowOptions,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<CoreModel> {
        Self::fit_with_reducer(cores, opts, None, &LocalReducer, progress)
    }

    /// Fits the core model on this participant's rows of the cores: every
    /// statistic (moments, principal components, counts, held-out sums) and
    /// every training gradient is summed across participants by `reducer`,
    /// the network starts from the same seeded weights everywhere, so every
    /// participant ends with the same model (data-parallel training; each
    /// draws its minibatches from its own rows and holds out its own
    /// fraction).
    ///
    /// `noise_variance`: the variance per entry of the white noise in the
    /// matrices the cores were projected from, when the cores carry
    /// estimation error beyond it (`Model::fit` passes the residual variance
    /// of a masked geometry fit, and nothing for complete data). Below a noise
    /// floor ([`flow_block`]) the components are noise: white noise of
    /// variance `sigma^2` per entry gives every core coordinate variance
    /// `sigma^2` (orthonormal bases), so their variances are capped at
    /// `sigma^2`. More variance there is estimation error of the cores (a
    /// masked fit's completion), which a model of the data should not
    /// reproduce.
    pub fn fit_with_reducer(
        cores: MatRef<'_, f64>,
        opts: &FlowOptions,
        noise_variance: Option<f64>,
        reducer: &dyn Reducer,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<CoreModel> {
        opts.check()?;
        let (n, d) = cores.shape();
        if d == 0 {
            return Err(Error::shape("cores: has no columns"));
        }
        check_finite(cores)?;
        let n_hold = holdout_count(n, opts.holdout_fraction);
        if n - n_hold < 2 {
            return Err(Error::shape(format!(
                "cores: {n} rows leave {} for fitting after the hold-out, at least 2 are needed",
                n - n_hold
            )));
        }
        let n_hold_all = sum_scalar(reducer, n_hold as f64)? as usize;
        let steps = opts.steps.max(1);
        if n_hold_all == 0 {
            // No hold-out: one fit on every core; AUTO takes the flow by the
            // size rule, else the mixture when BIC prefers it.
            let fit = KindFit::new(cores, opts, noise_variance, reducer)?;
            let mixture = match opts.core_model {
                CoreModelChoice::Mixture => Some(
                    fit.select_mixture(reducer, opts)?
                        .ok_or_else(|| no_mixture(fit.block.size))?,
                ),
                CoreModelChoice::Auto if fit.count < 3 * fit.block.size => {
                    fit.select_mixture(reducer, opts)?.filter(|m| m.score > 0.0)
                }
                _ => None,
            };
            let kind = match opts.core_model {
                CoreModelChoice::Gaussian => CoreModelKind::Gaussian,
                CoreModelChoice::Flow => CoreModelKind::Flow,
                CoreModelChoice::Mixture => CoreModelKind::Mixture,
                CoreModelChoice::Auto if fit.count >= 3 * fit.block.size => CoreModelKind::Flow,
                CoreModelChoice::Auto if mixture.is_some() => CoreModelKind::Mixture,
                CoreModelChoice::Auto => CoreModelKind::Gaussian,
            };
            let start = mixture.map_or(MixtureStart::None, |m| MixtureStart::Fitted {
                dim: m.dim,
                fit: m.fit,
            });
            return fit.fit(
                kind,
                start,
                FlowTraining::default(),
                opts,
                reducer,
                progress,
            );
        }
        // Selection (AUTO) and diagnostics on a seeded split, then the
        // chosen kind refitted on every core.
        let (train_rows, hold_rows) = split_rows(n, n_hold, opts.seed);
        let train = select_rows(cores, &train_rows);
        let held = select_rows(cores, &hold_rows);
        let split = KindFit::new(train.as_ref(), opts, noise_variance, reducer)?;
        let flow_candidate = match opts.core_model {
            CoreModelChoice::Flow => true,
            CoreModelChoice::Auto => split.count >= 3 * split.block.size,
            _ => false,
        };
        let mixture_choice = match opts.core_model {
            CoreModelChoice::Mixture => Some(
                split
                    .select_mixture(reducer, opts)?
                    .ok_or_else(|| no_mixture(split.block.size))?,
            ),
            // Only a mixture that BIC prefers to the Gaussian is a candidate.
            CoreModelChoice::Auto => split
                .select_mixture(reducer, opts)?
                .filter(|m| m.score > 0.0),
            _ => None,
        };
        let flow_passes = if flow_candidate { 2 } else { 1 };
        let total_steps = flow_passes * steps;
        // Candidates in order of complexity: the Gaussian, the mixture, the
        // flow.
        let mut candidates = vec![(
            CoreModelKind::Gaussian,
            split.fit(
                CoreModelKind::Gaussian,
                MixtureStart::None,
                FlowTraining::default(),
                opts,
                reducer,
                &mut |_, _, _| true,
            )?,
        )];
        if let Some(m) = &mixture_choice {
            let model = split.fit(
                CoreModelKind::Mixture,
                MixtureStart::Fitted {
                    dim: m.dim,
                    fit: m.fit.clone(),
                },
                FlowTraining::default(),
                opts,
                reducer,
                &mut |_, _, _| true,
            )?;
            candidates.push((CoreModelKind::Mixture, model));
        }
        let mut final_loss = f64::NAN;
        // Steps the split's flow took and the step of its best held-out
        // loss (the refit trains that long).
        let (mut split_steps, mut flow_steps) = (0, None);
        if flow_candidate {
            let mut first = |i: usize, _: usize, l: f64| {
                split_steps = i;
                progress(i, total_steps, l)
            };
            let f = split.fit(
                CoreModelKind::Flow,
                MixtureStart::None,
                FlowTraining {
                    validation: Some(held.as_ref()),
                    steps: None,
                },
                opts,
                reducer,
                &mut first,
            )?;
            final_loss = f.info.final_loss;
            flow_steps = Some(f.info.flow_train_steps);
            candidates.push((CoreModelKind::Flow, f));
        }
        let models: Vec<&CoreModel> = candidates.iter().map(|(_, m)| m).collect();
        let held_scores = heldout_scores(&models, &opts.solver, held.as_ref(), reducer)?;
        // AUTO: from the simplest, a more complex candidate replaces the
        // current choice when it is clearly better on the held-out cores
        // (more than two standard errors of the paired difference and at
        // least FLOW_GAIN_PER_DIM nats per dimension of its block).
        let mut chosen = 0;
        for (c, (_, m)) in candidates.iter().enumerate().skip(1) {
            if held_scores.clearly_better(c, chosen, m.block_dim()) {
                chosen = c;
            }
        }
        let mut mmd = vec![f64::NAN; candidates.len()];
        if opts.core_model == CoreModelChoice::Auto && candidates.len() > 1 {
            let kernels = models
                .iter()
                .map(|m| block_mmd(m, &split, held.as_ref(), opts))
                .collect::<Result<Vec<_>>>()?;
            mmd = mmd_all(&kernels, reducer)?;
        }
        let kind = match opts.core_model {
            CoreModelChoice::Gaussian => CoreModelKind::Gaussian,
            CoreModelChoice::Flow => CoreModelKind::Flow,
            CoreModelChoice::Mixture => CoreModelKind::Mixture,
            CoreModelChoice::Auto => candidates[chosen].0,
        };
        let score_of = |kind: CoreModelKind| -> (f64, f64) {
            candidates
                .iter()
                .position(|(k, _)| *k == kind)
                .map_or((f64::NAN, f64::NAN), |c| (held_scores.mean[c], mmd[c]))
        };
        let (ll_g, mmd_g) = score_of(CoreModelKind::Gaussian);
        let (ll_m, mmd_m) = score_of(CoreModelKind::Mixture);
        let (ll_f, mmd_f) = score_of(CoreModelKind::Flow);
        // The refit of a mixture starts from what the split's mixture says
        // of every core.
        let start = match (&mixture_choice, kind) {
            (Some(m), CoreModelKind::Mixture) => {
                let (_, y) = split.scores_of(cores, m.dim, par_for_threads(opts.threads));
                MixtureStart::Responsibilities {
                    dim: m.dim,
                    resp: responsibilities(&m.fit, y.as_ref())?,
                }
            }
            _ => MixtureStart::None,
        };
        drop(models);
        drop(candidates);
        drop(split);
        // The second pass reports its steps after the first's; when the
        // first stopped early, the total shrinks to what is left.
        let (offset, total_steps) = match (kind, flow_steps) {
            (CoreModelKind::Flow, Some(b)) => (split_steps, split_steps + b.max(1)),
            _ => ((flow_passes - 1) * steps, total_steps),
        };
        let mut second = |i: usize, _: usize, l: f64| progress(offset + i, total_steps, l);
        let all = KindFit::new(cores, opts, noise_variance, reducer)?;
        let training = FlowTraining {
            validation: None,
            steps: flow_steps,
        };
        let mut model = all.fit(kind, start, training, opts, reducer, &mut second)?;
        let info = &mut model.info;
        info.holdout_count = n_hold_all;
        info.heldout_loglik_gaussian = ll_g;
        info.heldout_loglik_flow = ll_f;
        info.heldout_loglik_mixture = ll_m;
        info.heldout_mmd_gaussian = mmd_g;
        info.heldout_mmd_flow = mmd_f;
        info.heldout_mmd_mixture = mmd_m;
        if let Some(m) = &mixture_choice {
            info.mixture_block = m.dim;
            info.mixture_components = m.fit.weights.len();
        }
        if kind != CoreModelKind::Flow && final_loss.is_finite() {
            info.final_loss = final_loss;
        }
        Ok(model)
    }
}

/// How the flow kind trains: early stopping on held-out cores, or a fixed
/// number of steps (the default: `opts.steps`).
#[derive(Copy, Clone, Default)]
pub(super) struct FlowTraining<'a> {
    /// Held-out cores whose flow-matching loss stops the training.
    validation: Option<MatRef<'a, f64>>,
    /// Steps instead of `opts.steps`.
    steps: Option<usize>,
}

/// Where the mixture kind's fit comes from (its block size `dim` was
/// selected by BIC on the split, or on every core without a hold-out).
pub(super) enum MixtureStart {
    /// Already fitted on exactly these cores.
    Fitted { dim: usize, fit: MixtureFit },
    /// EM from these responsibilities of this participant's rows (and
    /// from the divisive start; [`refit_mixture`]).
    Responsibilities { dim: usize, resp: Mat<f64> },
    /// No mixture (the other kinds).
    None,
}

/// The statistics of one set of cores that every kind is fitted from: the
/// principal components, the flow block, the shrinkage of the Gaussian
/// parts (section 5).
pub(super) struct KindFit<'a> {
    cores: MatRef<'a, f64>,
    pub(super) pcs: PrincipalComponents,
    pub(super) block: BlockChoice,
    /// Number of cores over all participants.
    count: usize,
    noise_variance: Option<f64>,
}

impl<'a> KindFit<'a> {
    fn new(
        cores: MatRef<'a, f64>,
        opts: &FlowOptions,
        noise_variance: Option<f64>,
        reducer: &dyn Reducer,
    ) -> Result<Self> {
        let pcs = principal_components(cores, reducer, par_for_threads(opts.threads))?;
        let total = pcs.total_variance;
        if total.is_nan() || total <= 0.0 {
            return Err(Error::invalid(
                "cores: the training cores have zero total variance (all identical)",
            ));
        }
        let block = flow_block(
            &pcs.variances,
            total,
            opts.flow_energy,
            opts.flow_noise_gap,
            opts.flow_max_dim,
        );
        Ok(Self {
            cores,
            count: pcs.count,
            pcs,
            block,
            noise_variance,
        })
    }

    /// The standardised scores `x1_j = q_j^T (c - mu) / sigma_j` of the
    /// first `k` components (this participant's rows) and the scales
    /// `sigma_j = sqrt(lambda_j)`, floored at `1e-12 sigma_1`.
    fn leading_scores(&self, k: usize, par: Par) -> (Vec<f64>, Mat<f64>) {
        self.scores_of(self.cores, k, par)
    }

    /// [`leading_scores`](Self::leading_scores) of other `cores` under
    /// these principal components.
    fn scores_of(&self, cores: MatRef<'_, f64>, k: usize, par: Par) -> (Vec<f64>, Mat<f64>) {
        let pcs = &self.pcs;
        let (n, d) = cores.shape();
        let max_sd = pcs.variances[0].sqrt();
        let sigma: Vec<f64> = pcs.variances[..k]
            .iter()
            .map(|v| v.sqrt().max(1e-12 * max_sd))
            .collect();
        let centred = Mat::from_fn(n, d, |i, j| cores[(i, j)] - pcs.mean[j]);
        let mut x1 = Mat::<f64>::zeros(n, k);
        matmul(
            x1.as_mut(),
            Accum::Replace,
            centred.as_ref(),
            pcs.basis.as_ref().subcols(0, k),
            1.0,
            par,
        );
        for (j, s) in sigma.iter().enumerate() {
            for i in 0..n {
                x1[(i, j)] /= s;
            }
        }
        (sigma, x1)
    }

    /// The mixture of the best BIC score on these cores, its block at most
    /// the energy rule's (see [`select_mixture`]).
    fn select_mixture(
        &self,
        reducer: &dyn Reducer,
        opts: &FlowOptions,
    ) -> Result<Option<MixtureChoice>> {
        let k = self.block.size.min(self.pcs.variances.len());
        let (_, y) = self.leading_scores(k, par_for_threads(opts.threads));
        select_mixture(y.as_ref(), k, self.count, reducer)
    }

    /// The model of `kind` on these cores. The mixture kind takes its
    /// block size and its fit, or the start of its EM, from `mixture`. The Gaussian part (every component for the
    /// Gaussian kind, those after the leading block otherwise, `d_g`
    /// dimensions) is, with fewer than
    /// [`SHRINK_BELOW_SAMPLES_PER_DIM`]` x d_g` cores, the Ledoit–Wolf
    /// shrinkage of its covariance toward its mean variance `mu`: variances
    /// `(1 - alpha) lambda_j` plus the ridge `delta = alpha mu`, floored at
    /// `1e-6 mu` (and at `1e-12 x` the mean core variance); with more, the
    /// sample covariance plus that floor.
    fn fit(
        &self,
        kind: CoreModelKind,
        mixture: MixtureStart,
        flow_training: FlowTraining<'_>,
        opts: &FlowOptions,
        reducer: &dyn Reducer,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<CoreModel> {
        let FlowTraining {
            validation,
            steps: flow_steps,
        } = flow_training;
        let pcs = &self.pcs;
        let d = self.cores.ncols();
        let total = pcs.total_variance;
        let lam = &pcs.variances;
        let k = self.block.size;
        let flow_var: f64 = lam[..k].iter().sum();
        let par = par_for_threads(opts.threads);
        let mut info = CoreModelInfo {
            kind,
            requested: opts.core_model,
            dim: d,
            flow_block: k,
            flow_energy: flow_var / total,
            train_count: self.count,
            holdout_count: 0,
            final_loss: f64::NAN,
            heldout_loglik_flow: f64::NAN,
            heldout_loglik_gaussian: f64::NAN,
            heldout_mmd_gaussian: f64::NAN,
            heldout_mmd_flow: f64::NAN,
            heldout_loglik_mixture: f64::NAN,
            heldout_mmd_mixture: f64::NAN,
            mixture_block: 0,
            mixture_components: 0,
            flow_train_steps: 0,
        };
        let (mut flow, mut mix) = (None, None);
        let from = match kind {
            CoreModelKind::Gaussian => 0,
            CoreModelKind::Flow => {
                let (sigma, x1) = self.leading_scores(k, par);
                let held = validation.map(|h| self.scores_of(h, k, par).1);
                let (f, report) = fit_flow(
                    x1.as_ref(),
                    sigma,
                    held.as_ref().map(|h| h.as_ref()),
                    flow_steps,
                    reducer,
                    opts,
                    progress,
                )?;
                info.final_loss = report.final_loss;
                info.flow_train_steps = report.best_step;
                flow = Some(f);
                k
            }
            CoreModelKind::Mixture => {
                let km = match &mixture {
                    MixtureStart::Fitted { dim, .. }
                    | MixtureStart::Responsibilities { dim, .. } => *dim,
                    MixtureStart::None => {
                        return Err(Error::invalid("core model: a mixture needs its block size"))
                    }
                };
                let (sigma, x1) = self.leading_scores(km, par);
                let fit = match mixture {
                    MixtureStart::Fitted { fit, .. } => Some(fit),
                    MixtureStart::Responsibilities { resp, .. } => {
                        refit_mixture(x1.as_ref(), resp, reducer)?
                    }
                    MixtureStart::None => None,
                }
                .ok_or_else(|| no_mixture(km))?;
                info.mixture_block = km;
                info.mixture_components = fit.weights.len();
                mix = Some(fit.into_parts(sigma));
                km
            }
        };
        let alpha = if self.count < SHRINK_BELOW_SAMPLES_PER_DIM * (d - from) {
            crate::pca::shrinkage_intensity(self.cores, pcs, from, reducer, par)?
        } else {
            0.0
        };
        let kept: f64 = lam[..from].iter().sum();
        let mean_var = (total - kept).max(0.0) / (d - from).max(1) as f64;
        let floor = 1e-12 * total / d as f64;
        let ridge = if from < d {
            (alpha * mean_var).max(1e-6 * mean_var).max(floor)
        } else {
            floor
        };
        let mut variances = lam.clone();
        for l in &mut variances[from..] {
            *l *= 1.0 - alpha;
        }
        if let (Some(noise_from), Some(sigma2)) = (self.block.noise_from, self.noise_variance) {
            if sigma2.is_finite() && sigma2 > 0.0 {
                for l in &mut variances[noise_from..] {
                    *l = l.min(sigma2);
                }
            }
        }
        let parts = CoreModelParts {
            dim: d,
            info,
            mean: pcs.mean.clone(),
            basis: flatten(pcs.basis.as_ref()),
            variances,
            ridge,
            flow,
            mixture: mix,
        };
        CoreModel::from_parts(parts).map_err(|e| {
            Error::numerical(format!(
                "core model fit produced an invalid model: {}",
                e.message()
            ))
        })
    }
}

pub(super) fn check_finite(cores: MatRef<'_, f64>) -> Result<()> {
    for j in 0..cores.ncols() {
        for i in 0..cores.nrows() {
            if !cores[(i, j)].is_finite() {
                return Err(Error::non_finite(format!(
                    "cores: non-finite value at ({i}, {j})"
                )));
            }
        }
    }
    Ok(())
}

/// Held-out rows for a fraction: `floor(fraction N)`.
pub(super) fn holdout_count(n: usize, fraction: f64) -> usize {
    ((fraction * n as f64).floor() as usize).min(n)
}

/// A seeded split: `(training rows, held-out rows)`, each ascending.
pub(super) fn split_rows(n: usize, n_hold: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut r = rng::stream(seed, 0x686f_6c64);
    for i in (1..n).rev() {
        let j = rng::below(&mut r, i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let mut hold = perm[..n_hold].to_vec();
    let mut train = perm[n_hold..].to_vec();
    hold.sort_unstable();
    train.sort_unstable();
    (train, hold)
}

pub(super) fn select_rows(x: MatRef<'_, f64>, rows: &[usize]) -> Mat<f64> {
    Mat::from_fn(rows.len(), x.ncols(), |i, j| x[(rows[i], j)])
}
