//! The fitted CoreFlow model and its fit pipeline.
//!
//! A [`Model`] holds the shared bases U (m x r) and V (n x s), the optional
//! mean Xbar, and everything the later stages learn on the cores
//! C = U^T (X - Xbar) V. It is immutable after fitting and safe to share
//! between threads; every inference call takes the caller's workspace
//! (`*_scratch` gives its size) and never allocates.
//!
//! Cores are stored column-major: core `j` of a batch occupies
//! `cores[j * r * s .. (j + 1) * r * s]`, entry `(a, b)` at `a + b * r`.

mod impute;
mod persist;
mod validate;

pub use impute::{ImputeLevel, ImputeReport, LEVEL_MAX_PASSES, LEVEL_PRIOR_WEIGHT, LEVEL_TOL};
pub use persist::FORMAT_VERSION;

use crate::batch::{MatrixBatch, MatrixBatchMut};
use crate::completion::{self, CompletionOptions, CorePrior};
use crate::core_model::{CoreModel, CoreModelChoice, CoreModelKind, FlowOptions};
use crate::error::{Error, Result};
use crate::flow::ode::SolverOptions;
use crate::noise::NoiseModel;
use crate::numerics::{self, check_workspace, temp_mat_zeroed, MemStack, StackReq};
use crate::pool::{Caller, OnCaller};
use crate::reduce::{LocalReducer, Reducer};
use crate::subspace::{self, SubspaceMethod, SubspaceOptions};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// The stage a progress report comes from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Fitting the row and column subspaces.
    Subspace,
    /// Iterative completion of missing entries.
    Completion,
    /// Training the flow on the cores.
    Flow,
}

/// A progress report: `iteration` of at most `total` in `stage`, with the
/// stage's current objective or loss.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Progress {
    /// Which stage is running.
    pub stage: Stage,
    /// Iterations (or optimiser steps) done so far in this stage.
    pub iteration: u64,
    /// The stage's iteration limit.
    pub total: u64,
    /// Subspace objective, completion objective or flow loss.
    pub loss: f64,
}

/// Options of [`Model::fit`]. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Rank r of the row basis U; 0 chooses it by `energy`.
    pub rank_rows: usize,
    /// Rank s of the column basis V; 0 chooses it by `energy`.
    pub rank_cols: usize,
    /// Fraction of the energy that ranks chosen by energy keep (default
    /// 0.99): each starts as the smallest holding it of its Gram trace, and
    /// they are raised until the fit keeps it, with the core dimension r s
    /// at most half the number of training matrices
    /// ([`subspace::energy_core_dim_cap`]; [`ModelInfo::warnings`] says
    /// when that stops them short).
    pub energy: f64,
    /// Subtract the entrywise mean before fitting (default false).
    pub center: bool,
    /// Subspace refinement method (default HOOI).
    pub subspace_method: SubspaceMethod,
    /// Iteration limit of the subspace refinement (default 100).
    pub subspace_max_iter: usize,
    /// Relative objective increase that counts as converged (default 1e-10).
    pub subspace_tol: f64,
    /// NaN entries stand for missing ones when no mask is given (default
    /// false: NaN is an error).
    pub nan_is_missing: bool,
    /// Round limit of the iterative completion (default 100).
    pub completion_max_iter: usize,
    /// Relative decrease of the masked objective counted as converged
    /// (default 1e-8).
    pub completion_tol: f64,
    /// Ridge lambda on the cores in the masked fit (default 1e-8).
    pub ridge: f64,
    /// The core model: flow architecture and training, the flow block, the
    /// core-model choice and the held-out diagnostics (DESIGN.md section 5).
    /// `flow.steps = 0` with `core_model` AUTO or FLOW fits the geometry
    /// only (no sampling or scoring); `flow.seed` and `flow.threads` are
    /// replaced by the fit's own `seed` and `threads`.
    pub flow: FlowOptions,
    /// Seed of every random choice of the fit.
    pub seed: u64,
    /// Worker threads for fitting (0 = all cores).
    pub threads: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        let s = SubspaceOptions::default();
        let c = CompletionOptions::default();
        Self {
            rank_rows: 0,
            rank_cols: 0,
            energy: s.energy,
            center: false,
            subspace_method: SubspaceMethod::Hooi,
            subspace_max_iter: s.max_iter,
            subspace_tol: s.tol,
            nan_is_missing: false,
            completion_max_iter: c.max_iter,
            completion_tol: c.tol,
            ridge: c.ridge,
            flow: FlowOptions::default(),
            seed: 0,
            threads: 0,
        }
    }
}

impl FitOptions {
    fn subspace_options(&self) -> SubspaceOptions {
        SubspaceOptions {
            rank_rows: self.rank_rows,
            rank_cols: self.rank_cols,
            energy: self.energy,
            center: self.center,
            method: self.subspace_method,
            max_iter: self.subspace_max_iter,
            tol: self.subspace_tol,
            threads: self.threads,
            ..SubspaceOptions::default()
        }
    }
    /// A copy with the flow disabled: the geometry (and the completion
    /// prior) only.
    pub fn geometry_only(mut self) -> Self {
        self.flow.steps = 0;
        self.flow.core_model = CoreModelChoice::Auto;
        self
    }
    fn fits_core_model(&self) -> bool {
        self.flow.steps > 0
            || matches!(
                self.flow.core_model,
                CoreModelChoice::Gaussian | CoreModelChoice::Mixture
            )
    }
    fn completion_options(&self) -> CompletionOptions {
        CompletionOptions {
            max_iter: self.completion_max_iter,
            tol: self.completion_tol,
            ridge: self.ridge,
            nan_is_missing: self.nan_is_missing,
            ..CompletionOptions::default()
        }
    }
}

/// Row `j` of a `b x (r s)` matrix of core vectors, seen as the r x s core
/// (the row holds vec(C), column-major).
fn core_row_mut(cores: MatMut<'_, f64>, j: usize, r: usize, s: usize) -> MatMut<'_, f64> {
    let row = cores.get_mut(j..j + 1, ..);
    let stride = row.col_stride();
    // SAFETY: element (a, q) of the view is column a + q r of row j, inside
    // the row's r s columns.
    unsafe { MatMut::from_raw_parts_mut(row.as_ptr_mut(), r, s, stride, stride * r as isize) }
}

/// A reducer that completes sums on the thread that called the fit (the
/// host's allreduce must run there), for work running on the call's pool.
struct CallerReducer<'a> {
    inner: &'a OnCaller<&'a dyn Reducer>,
    caller: &'a Caller,
}

impl Reducer for CallerReducer<'_> {
    fn sum_in_place(&self, buf: &mut [f64]) -> Result<()> {
        let inner = self.inner;
        self.caller.run(move || inner.0.sum_in_place(buf))
    }
}

/// Largest `sum |c_ab| + max |Xbar|` a decoded core may have: a quarter of
/// `f64::MAX`, the factor covering the rounding of the products and the
/// basis tolerance of the loader.
const DECODE_BOUND: f64 = f64::MAX / 4.0;

/// Fails with `ErrorKind::Numerical` naming the first non-finite value of
/// `values` (groups of `group` values: one per matrix).
fn check_output_finite(values: &[f64], group: usize, what: &str, unit: &str) -> Result<()> {
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(k) => Err(Error::numerical(format!(
            "{what}: {unit} {} would hold the non-finite value {} (entry {}); nothing was written",
            k / group.max(1),
            values[k],
            k % group.max(1)
        ))),
    }
}

/// Matrices per chunk of sampling and scoring: bounds the workspace
/// whatever the call's count (results do not depend on it).
const CHUNK: usize = 64;

/// A summary of a fitted model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Rows m of each matrix.
    pub rows: usize,
    /// Columns n of each matrix.
    pub cols: usize,
    /// Rank r of U.
    pub rank_rows: usize,
    /// Rank s of V.
    pub rank_cols: usize,
    /// Core dimension r * s.
    pub core_dim: usize,
    /// Dimension of the flow block (0 without a flow).
    pub flow_dim: usize,
    /// Whether the mean was subtracted.
    pub centered: bool,
    /// Whether a flow was trained.
    pub has_flow: bool,
    /// Number of training matrices.
    pub train_count: usize,
    /// sum ||C_i||^2 / sum ||X_i - Xbar||^2 on the training set.
    pub explained_energy: f64,
    /// Final training loss of the flow (NaN without a flow).
    pub final_loss: f64,
    /// Subspace refinement iterations performed.
    pub subspace_iterations: usize,
    /// Whether the subspace refinement met its stopping rule.
    pub subspace_converged: bool,
    /// Final subspace objective sum ||U^T (X_i - Xbar) V||^2 (on the
    /// completed matrices for incomplete data).
    pub subspace_objective: f64,
    /// Whether the training data had missing entries.
    pub masked: bool,
    /// Completion rounds performed (0 for complete data).
    pub completion_iterations: usize,
    /// Whether the completion met its stopping rule (true for complete data).
    pub completion_converged: bool,
    /// Final masked objective F (NaN for complete data).
    pub completion_objective: f64,
    /// Noise variance per entry estimated from the training residuals.
    pub noise_variance: f64,
    /// Degrees of freedom of the noise law's Student-t tails
    /// (`f64::INFINITY`: Gaussian noise; [`crate::noise`]).
    pub noise_dof: f64,
    /// Its tail scale `tau^2` (1 for Gaussian noise).
    pub noise_tail_scale: f64,
    /// `max / min` of the noise variance profile `rho_a gamma_b` over the
    /// entries (1 for a flat profile).
    pub noise_profile_spread: f64,
    /// Bound of the standardised noise of a draw: the largest standardised
    /// training residual (`f64::INFINITY`: none; [`crate::noise`], "Support
    /// of a draw").
    pub noise_bound: f64,
    /// Smallest observed training value, the low end of the range a drawn
    /// entry is censored to (`f64::NEG_INFINITY`: none).
    pub data_min: f64,
    /// Largest observed training value (`f64::INFINITY`: none).
    pub data_max: f64,
    /// The fitted core model: `None` for a geometry-only model.
    pub core_model: Option<CoreModelKind>,
    /// Width of the hidden layers of the velocity network (0 without a flow).
    pub flow_hidden: usize,
    /// Number of hidden layers (0 without a flow).
    pub flow_layers: usize,
    /// Flow block size k given by the energy rule (also when the Gaussian
    /// fallback was chosen; 0 for a geometry-only model).
    pub flow_block: usize,
    /// Held-out mean log-likelihood of the flow model (NaN when not fitted;
    /// minus infinity when some held-out core has no finite density under
    /// the flow).
    pub heldout_loglik_flow: f64,
    /// Held-out mean log-likelihood of a full Gaussian on the cores (NaN
    /// without a hold-out).
    pub heldout_loglik_gaussian: f64,
    /// AUTO's sample-based check for the Gaussian kind: MMD^2 between its
    /// draws and the held-out cores in the leading block (NaN when AUTO had
    /// no choice to make).
    pub heldout_mmd_gaussian: f64,
    /// The same for the flow kind (NaN when AUTO had no choice).
    pub heldout_mmd_flow: f64,
    /// Held-out mean log-likelihood of the Gaussian-mixture kind (NaN when
    /// no mixture was fitted).
    pub heldout_loglik_mixture: f64,
    /// The MMD^2 check of the mixture kind (NaN when AUTO had no choice or
    /// no mixture was fitted).
    pub heldout_mmd_mixture: f64,
    /// Leading block size k of the mixture selected by BIC (0 when none).
    pub mixture_block: usize,
    /// Its number of components (0 when none).
    pub mixture_components: usize,
    /// Optimiser steps the flow was trained for (the step of the best
    /// held-out loss on the split, when there was a hold-out; 0 without a
    /// flow).
    pub flow_train_steps: usize,
}

/// A fitted CoreFlow model. Immutable; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Model {
    u: Mat<f64>,
    v: Mat<f64>,
    mean: Option<Mat<f64>>,
    /// U^T Xbar V, subtracted in `encode` so that centering needs no copy.
    mean_core: Option<Mat<f64>>,
    /// max |Xbar| (0 when not centered), for the decode bound.
    mean_abs_max: f64,
    /// Gaussian prior of the training cores and the noise level, for
    /// completing new matrices.
    prior: CorePrior,
    /// The law of the noise outside the geometry: its variance profile and
    /// tails (the level is `prior.noise_var`).
    noise: NoiseModel,
    /// The model of the cores (`None`: geometry only).
    core: Option<CoreModel>,
    info: ModelInfo,
}

/// Copies the noise law's summary into the model info.
fn set_noise_info(info: &mut ModelInfo, noise: &NoiseModel) {
    info.noise_dof = noise.dof();
    info.noise_tail_scale = noise.tail_scale();
    info.noise_profile_spread = noise.profile_spread();
    info.noise_bound = noise.bound();
    [info.data_min, info.data_max] = noise.range();
}

/// `U^T Xbar V` (sequential: loading starts no thread).
fn mean_core_of(u: &Mat<f64>, mean: &Mat<f64>, v: &Mat<f64>) -> Mat<f64> {
    let mut t = Mat::<f64>::zeros(mean.nrows(), v.ncols());
    numerics::gemm(
        t.as_mut(),
        Accum::Replace,
        mean.as_ref(),
        v.as_ref(),
        1.0,
        Par::Seq,
    );
    let mut c = Mat::<f64>::zeros(u.ncols(), v.ncols());
    numerics::gemm(
        c.as_mut(),
        Accum::Replace,
        u.transpose(),
        t.as_ref(),
        1.0,
        Par::Seq,
    );
    c
}

fn mean_abs_max(mean: Option<&Mat<f64>>) -> f64 {
    mean.map_or(0.0, |m| m.as_ref().norm_max())
}

/// Copies the core model's summary into the model info.
fn set_core_info(info: &mut ModelInfo, core: &CoreModel) {
    let ci = core.info();
    info.core_model = Some(ci.kind);
    info.has_flow = ci.kind == CoreModelKind::Flow;
    info.flow_dim = core.flow_dim();
    info.flow_block = ci.flow_block;
    info.final_loss = ci.final_loss;
    info.heldout_loglik_flow = ci.heldout_loglik_flow;
    info.heldout_loglik_gaussian = ci.heldout_loglik_gaussian;
    info.heldout_mmd_gaussian = ci.heldout_mmd_gaussian;
    info.heldout_mmd_flow = ci.heldout_mmd_flow;
    info.heldout_loglik_mixture = ci.heldout_loglik_mixture;
    info.heldout_mmd_mixture = ci.heldout_mmd_mixture;
    info.mixture_block = ci.mixture_block;
    info.mixture_components = ci.mixture_components;
    info.flow_train_steps = ci.flow_train_steps;
    if let Some(cfg) = core.net_config() {
        info.flow_hidden = cfg.hidden;
        info.flow_layers = cfg.layers;
    }
}

impl ModelInfo {
    /// What a user should know about a fit made with `opts`, one sentence
    /// each (the command-line tool prints them as warnings): a core with
    /// more dimensions than there are training matrices, and ranks chosen
    /// by energy that keep less than the requested energy (with the reason;
    /// complete data only).
    pub fn warnings(&self, opts: &FitOptions) -> Vec<String> {
        let mut out = Vec::new();
        if self.core_dim > self.train_count {
            out.push(format!(
                "the core has {} dimensions (ranks {} x {}) but there are only {} training \
                 matrices: its model is poorly determined; choose smaller ranks or a lower energy",
                self.core_dim, self.rank_rows, self.rank_cols, self.train_count
            ));
        }
        // (Incomplete data: the ranks come from the completed matrices and
        // are not raised after the fit, so no shortfall is claimed.)
        let shortfall = if self.masked {
            None
        } else {
            subspace::energy_shortfall(
                self.explained_energy,
                opts.energy,
                (self.rank_rows, self.rank_cols),
                (self.rows, self.cols),
                self.train_count,
                (opts.rank_rows == 0, opts.rank_cols == 0),
            )
        };
        if let Some(why) = shortfall {
            out.push(why);
        }
        out
    }

    fn empty() -> Self {
        ModelInfo {
            rows: 0,
            cols: 0,
            rank_rows: 0,
            rank_cols: 0,
            core_dim: 0,
            flow_dim: 0,
            centered: false,
            has_flow: false,
            train_count: 0,
            explained_energy: f64::NAN,
            final_loss: f64::NAN,
            subspace_iterations: 0,
            subspace_converged: false,
            subspace_objective: f64::NAN,
            masked: false,
            completion_iterations: 0,
            completion_converged: true,
            completion_objective: f64::NAN,
            noise_variance: f64::NAN,
            noise_dof: f64::INFINITY,
            noise_tail_scale: 1.0,
            noise_profile_spread: 1.0,
            noise_bound: f64::INFINITY,
            data_min: f64::NEG_INFINITY,
            data_max: f64::INFINITY,
            core_model: None,
            flow_hidden: 0,
            flow_layers: 0,
            flow_block: 0,
            heldout_loglik_flow: f64::NAN,
            heldout_loglik_gaussian: f64::NAN,
            heldout_mmd_gaussian: f64::NAN,
            heldout_mmd_flow: f64::NAN,
            heldout_loglik_mixture: f64::NAN,
            heldout_mmd_mixture: f64::NAN,
            mixture_block: 0,
            mixture_components: 0,
            flow_train_steps: 0,
        }
    }
}

impl Model {
    /// Fits a model to `train` (see [`FitOptions`]).
    pub fn fit(train: &MatrixBatch, opts: &FitOptions) -> Result<Model> {
        Self::fit_with_progress(train, opts, &mut |_| true)
    }

    /// Fits a model, reporting progress; `progress` returns `false` to cancel
    /// (the fit then fails with `ErrorKind::Cancelled`).
    pub fn fit_with_progress(
        train: &MatrixBatch,
        opts: &FitOptions,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Model> {
        Self::fit_with_reducer(train, opts, &LocalReducer, progress)
    }

    /// Fits a model on this participant's shard of the training set; every sum
    /// over samples is completed by `reducer` (see [`crate::reduce`]).
    ///
    /// The fit runs on a pool of `opts.threads` workers created for the
    /// call and joined before it returns (`crate::pool`); `progress` and
    /// `reducer` are called on the calling thread.
    pub fn fit_with_reducer(
        train: &MatrixBatch,
        opts: &FitOptions,
        reducer: &dyn Reducer,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Model> {
        crate::limits::check_fit_options(opts, crate::limits::Naming::Rust)?;
        let masked = train.has_mask() || opts.nan_is_missing;
        crate::limits::reserve_probe(
            crate::limits::fit_bytes_estimate(
                train.count(),
                train.rows(),
                train.cols(),
                opts,
                masked,
            ),
            "train",
        )?;
        let progress = OnCaller(std::cell::RefCell::new(progress));
        let reducer = OnCaller(reducer);
        crate::pool::on_pool(opts.threads, |_, caller| {
            let funnel = CallerReducer {
                inner: &reducer,
                caller,
            };
            let mut report = |p: &Progress| {
                let p = *p;
                let progress = &progress;
                caller.run(move || (progress.0.borrow_mut())(&p))
            };
            Self::fit_on_pool(train, opts, &funnel, &mut report)
        })?
    }

    /// The fit itself, on the call's pool.
    fn fit_on_pool(
        train: &MatrixBatch,
        opts: &FitOptions,
        reducer: &dyn Reducer,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Model> {
        let masked = train.has_mask() || opts.nan_is_missing;
        let mut flow_opts = opts.flow;
        flow_opts.seed = opts.seed;
        flow_opts.threads = opts.threads;
        if opts.fits_core_model() {
            // Checked before the (long) geometry stage.
            flow_opts.check()?;
        }
        let (m, n) = (train.rows(), train.cols());
        let sub_opts = opts.subspace_options();
        let par = numerics::par_for_threads(opts.threads);
        let mut subspace_progress = |it: usize, total: usize, obj: f64| {
            progress(&Progress {
                stage: Stage::Subspace,
                iteration: it as u64,
                total: total as u64,
                loss: obj,
            })
        };
        // Geometry, then the training cores (N x d, one core per row).
        let (u, v, mean, cores, residual_ss, observed, mut info);
        if masked {
            let fit = completion::fit_masked(
                train,
                &sub_opts,
                &opts.completion_options(),
                reducer,
                &mut |it, total, f| {
                    progress(&Progress {
                        stage: Stage::Completion,
                        iteration: it as u64,
                        total: total as u64,
                        loss: f,
                    })
                },
            )?;
            let c = fit.cores;
            let energy =
                crate::reduce::sum_scalar(reducer, fit.completed.iter().map(|x| x * x).sum())?;
            let objective = crate::reduce::sum_scalar(reducer, c.iter().map(|x| x * x).sum())?;
            info = ModelInfo {
                subspace_iterations: 0,
                subspace_converged: true,
                subspace_objective: objective,
                explained_energy: if energy > 0.0 {
                    objective / energy
                } else {
                    1.0
                },
                masked: true,
                completion_iterations: fit.iterations,
                completion_converged: fit.converged,
                completion_objective: fit.history.last().copied().unwrap_or(f64::NAN),
                ..ModelInfo::empty()
            };
            (u, v, mean, cores, residual_ss, observed) = (
                fit.u,
                fit.v,
                fit.mean,
                c,
                fit.residual_ss,
                fit.observed_count,
            );
        } else {
            // Checked here for the message's hint about missing entries.
            completion::check_observed_finite(train, false, "train")?;
            let fit = subspace::fit(train, &sub_opts, reducer, &mut subspace_progress)?;
            info = ModelInfo {
                subspace_iterations: fit.iterations,
                subspace_converged: fit.converged,
                subspace_objective: fit.objective,
                explained_energy: if fit.total_energy > 0.0 {
                    fit.objective / fit.total_energy
                } else {
                    1.0
                },
                ..ModelInfo::empty()
            };
            let n_total = crate::reduce::sum_scalar(reducer, train.count() as f64)?;
            (residual_ss, observed) = (
                (fit.total_energy - fit.objective).max(0.0),
                n_total * (m * n) as f64,
            );
            (u, v, mean, cores) = (fit.u, fit.v, fit.mean, fit.cores);
        }
        let (r, s) = (u.ncols(), v.ncols());
        let core_mat = MatRef::from_row_major_slice(&cores, train.count(), r * s);
        let prior = CorePrior::from_cores(core_mat, residual_ss, observed, m * n, reducer, par)?;
        let noise = NoiseModel::fit(
            train,
            opts.nan_is_missing,
            u.as_ref(),
            v.as_ref(),
            mean.as_ref().map(|x| x.as_ref()),
            core_mat,
            prior.noise_var,
            reducer,
        )?;
        set_noise_info(&mut info, &noise);
        let mean_core = mean.as_ref().map(|x| mean_core_of(&u, x, &v));
        info.rows = m;
        info.cols = n;
        info.rank_rows = r;
        info.rank_cols = s;
        info.core_dim = r * s;
        info.centered = mean.is_some();
        info.train_count = crate::reduce::sum_scalar(reducer, train.count() as f64)? as usize;
        info.noise_variance = prior.noise_var;
        let core = if opts.fits_core_model() {
            // The noise-level cap is for the completion error of a masked
            // fit's cores; with complete data the components below the
            // noise floor are data (measured: on a mixture of rank 8 the gap
            // rule left 5 signal components of variance 0.1 beyond the
            // flow block, and the cap set them to the noise level 2e-6).
            let completed = masked.then_some(prior.noise_var);
            let core = CoreModel::fit_with_reducer(
                core_mat,
                &flow_opts,
                completed,
                reducer,
                &mut |step, total, loss| {
                    progress(&Progress {
                        stage: Stage::Flow,
                        iteration: step as u64,
                        total: total as u64,
                        loss,
                    })
                },
            )?;
            set_core_info(&mut info, &core);
            Some(core)
        } else {
            None
        };
        Ok(Model {
            mean_abs_max: mean_abs_max(mean.as_ref()),
            u,
            v,
            mean,
            mean_core,
            prior,
            noise,
            core,
            info,
        })
    }

    /// Assembles a model from validated parts (used by the model file reader).
    fn from_parts(
        u: Mat<f64>,
        v: Mat<f64>,
        mean: Option<Mat<f64>>,
        prior: CorePrior,
        noise: NoiseModel,
        core: Option<CoreModel>,
        mut info: ModelInfo,
    ) -> Model {
        let mean_core = mean.as_ref().map(|x| mean_core_of(&u, x, &v));
        set_noise_info(&mut info, &noise);
        Model {
            mean_abs_max: mean_abs_max(mean.as_ref()),
            u,
            v,
            mean,
            mean_core,
            prior,
            noise,
            core,
            info,
        }
    }

    /// The model of the cores (`None` for a geometry-only model).
    pub fn core_model(&self) -> Option<&CoreModel> {
        self.core.as_ref()
    }

    /// The Gaussian prior of the training cores used by
    /// [`complete`](Self::complete) (low rank plus a ridge).
    pub fn core_prior(&self) -> &CorePrior {
        &self.prior
    }

    /// The law of the noise outside the geometry (variance profile and
    /// tails; [`crate::noise`]), at the level `core_prior().noise_var`.
    /// Completion and imputation weight the observed entries by it.
    pub fn noise(&self) -> &NoiseModel {
        &self.noise
    }

    /// The model file image (little-endian, versioned, checksummed; see
    /// the format in `model/persist.rs`). Loading it gives a model whose
    /// every output is bitwise equal to this one's.
    pub fn to_bytes(&self) -> Vec<u8> {
        persist::to_bytes(self)
    }

    /// Reads a model file image. Corrupt or truncated data, and models the
    /// maths cannot use (non-orthonormal bases, unbounded parameters; see
    /// `model/validate.rs`), give `ErrorKind::Format`, a newer format
    /// `ErrorKind::Version`.
    pub fn from_bytes(data: &[u8]) -> Result<Model> {
        // Sequential, on the calling thread (see `crate::pool`).
        let model = persist::from_bytes(data)?;
        validate::validate(&model)?;
        Ok(model)
    }

    /// Writes the model file to `path` (`ErrorKind::Io` on failure). The
    /// file is written beside `path` under a temporary name and renamed over
    /// it once complete, so a failed save leaves `path` as it was.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        persist::save(self, &tmp)
            .and_then(|()| {
                std::fs::rename(&tmp, path).map_err(|e| {
                    Error::new(
                        crate::error::ErrorKind::Io,
                        format!("path: cannot write {}: {e}", path.display()),
                    )
                })
            })
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
    }

    /// Reads a model file from `path`.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Model> {
        let model = persist::load(path.as_ref())?;
        validate::validate(&model)?;
        Ok(model)
    }

    /// The model summary.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
    /// The row basis U (m x r, orthonormal columns, canonical basis).
    pub fn u(&self) -> MatRef<'_, f64> {
        self.u.as_ref()
    }
    /// The column basis V (n x s, orthonormal columns, canonical basis).
    pub fn v(&self) -> MatRef<'_, f64> {
        self.v.as_ref()
    }
    /// The subtracted mean Xbar (m x n), or `None` when not centered.
    pub fn mean(&self) -> Option<MatRef<'_, f64>> {
        self.mean.as_ref().map(|m| m.as_ref())
    }
    /// Core dimension r * s.
    pub fn core_dim(&self) -> usize {
        self.info.core_dim
    }

    fn check_shape(&self, rows: usize, cols: usize, what: &str) -> Result<()> {
        if rows != self.info.rows || cols != self.info.cols {
            return Err(Error::shape(format!(
                "{what}: matrices are {rows} x {cols}, but the model was fitted on {} x {}",
                self.info.rows, self.info.cols
            )));
        }
        Ok(())
    }

    /// Workspace for [`Model::encode`] of up to `count` matrices: the cores
    /// are computed and checked there before any is written.
    pub fn encode_scratch(&self, count: usize) -> StackReq {
        if count == 0 {
            return StackReq::EMPTY;
        }
        StackReq::all_of(&[
            numerics::temp_mat_scratch::<f64>(self.info.rows, self.info.rank_cols),
            numerics::temp_slice_scratch::<f64>(count.saturating_mul(self.core_dim())),
        ])
    }

    /// Cores `C_j = U^T (X_j - Xbar) V` of every matrix of `input`, written
    /// column-major into `cores` (`count * r * s` values). Never allocates.
    pub fn encode(
        &self,
        input: &MatrixBatch,
        cores: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()> {
        self.check_shape(input.rows(), input.cols(), "input")?;
        let d = self.core_dim();
        let need = input.count().saturating_mul(d);
        if cores.len() != need {
            return Err(Error::shape(format!(
                "cores: {} values given, {} matrices need {need}",
                cores.len(),
                input.count()
            )));
        }
        if input.has_mask() {
            return Err(Error::invalid(
                "input.mask: encode needs complete matrices; complete them first",
            ));
        }
        input.check_finite("input")?;
        if input.count() == 0 {
            return Ok(());
        }
        check_workspace(self.encode_scratch(input.count()), stack)?;
        let (r, s) = (self.info.rank_rows, self.info.rank_cols);
        let (mut t, stack) = temp_mat_zeroed::<f64>(self.info.rows, s, stack);
        let (all, _) = numerics::temp_slice(need, 0.0, stack);
        for j in 0..input.count() {
            let c = MatMut::from_column_major_slice_mut(&mut all[j * d..(j + 1) * d], r, s);
            self.encode_one(input.sample(j), c, t.rb_mut());
        }
        check_output_finite(all, d, "cores", "core")?;
        cores.copy_from_slice(all);
        Ok(())
    }

    /// Workspace for [`Model::decode`] of up to `count` cores.
    pub fn decode_scratch(&self, count: usize) -> StackReq {
        if count == 0 {
            return StackReq::EMPTY;
        }
        numerics::temp_mat_scratch::<f64>(self.info.rows, self.info.rank_cols)
    }

    /// Matrices `X_j = U C_j V^T + Xbar` from column-major cores
    /// (`out.count() * r * s` values). Never allocates.
    pub fn decode(
        &self,
        cores: &[f64],
        out: &mut MatrixBatchMut,
        stack: &mut MemStack,
    ) -> Result<()> {
        self.check_shape(out.rows(), out.cols(), "out")?;
        let d = self.core_dim();
        let need = out.count().saturating_mul(d);
        if cores.len() != need {
            return Err(Error::shape(format!(
                "cores: {} values given, {} matrices need {need}",
                cores.len(),
                out.count()
            )));
        }
        if let Some(k) = cores.iter().position(|x| !x.is_finite()) {
            return Err(Error::non_finite(format!(
                "cores: value {} (core {}, entry {}) is not finite",
                cores[k],
                k / d,
                k % d
            )));
        }
        if out.count() == 0 {
            return Ok(());
        }
        check_workspace(self.decode_scratch(out.count()), stack)?;
        for j in 0..out.count() {
            self.check_decodable(cores[j * d..(j + 1) * d].iter().copied(), "cores: core", j)?;
        }
        let (r, s) = (self.info.rank_rows, self.info.rank_cols);
        let (mut t, _) = temp_mat_zeroed::<f64>(self.info.rows, s, stack);
        for j in 0..out.count() {
            let c = MatRef::from_column_major_slice(&cores[j * d..(j + 1) * d], r, s);
            self.decode_one(c, out.sample_mut(j), t.rb_mut());
        }
        Ok(())
    }

    /// Fails unless `U c V^T + Xbar` is finite for the core `c` (its values
    /// in any order). With orthonormal U and V every entry of `U c V^T` is
    /// at most `sum |c_ab|` in magnitude (to the basis tolerance of the
    /// loader), so a bound well below `f64::MAX` proves the decoded matrix
    /// finite before anything is written. `what` and `j` name the core.
    fn check_decodable(&self, c: impl Iterator<Item = f64>, what: &str, j: usize) -> Result<()> {
        let mut l1 = 0.0;
        for x in c {
            if !x.is_finite() {
                return Err(Error::numerical(format!(
                    "{what} {j} has the non-finite core value {x}; nothing was written"
                )));
            }
            l1 += x.abs();
        }
        let bounded = l1 + self.mean_abs_max <= DECODE_BOUND;
        if !bounded {
            return Err(Error::numerical(format!(
                "{what} {j} is too large to decode into finite values (sum of core magnitudes {l1:e}); nothing was written"
            )));
        }
        Ok(())
    }

    /// `c <- U^T (x - Xbar) V` with `t` an m x s temporary.
    fn encode_one(&self, x: MatRef<'_, f64>, mut c: MatMut<'_, f64>, mut t: MatMut<'_, f64>) {
        numerics::gemm(
            t.rb_mut(),
            Accum::Replace,
            x,
            self.v.as_ref(),
            1.0,
            Par::Seq,
        );
        numerics::gemm(
            c.rb_mut(),
            Accum::Replace,
            self.u.transpose(),
            t.rb(),
            1.0,
            Par::Seq,
        );
        if let Some(mc) = &self.mean_core {
            let (r, s) = c.shape();
            for b in 0..s {
                for a in 0..r {
                    c[(a, b)] -= mc[(a, b)];
                }
            }
        }
    }

    /// `x <- U c V^T + Xbar` with `t` an m x s temporary.
    fn decode_one(&self, c: MatRef<'_, f64>, mut x: MatMut<'_, f64>, mut t: MatMut<'_, f64>) {
        numerics::gemm(
            t.rb_mut(),
            Accum::Replace,
            self.u.as_ref(),
            c,
            1.0,
            Par::Seq,
        );
        match &self.mean {
            Some(m) => {
                x.copy_from(m);
                numerics::gemm(
                    x.rb_mut(),
                    Accum::Add,
                    t.rb(),
                    self.v.transpose(),
                    1.0,
                    Par::Seq,
                );
            }
            None => numerics::gemm(
                x.rb_mut(),
                Accum::Replace,
                t.rb(),
                self.v.transpose(),
                1.0,
                Par::Seq,
            ),
        }
    }

    fn core_or_unsupported(&self, what: &str) -> Result<&CoreModel> {
        self.core.as_ref().ok_or_else(|| {
            Error::unsupported(format!(
                "m: the model was fitted without a core model (flow steps 0, geometry only) and cannot {what}"
            ))
        })
    }

    /// Workspace for [`Model::sample`] of up to `count` matrices with `opts`:
    /// the cores of all `count` samples (drawn and checked before anything
    /// is written) and the temporaries of one chunk. Empty for `count = 0`
    /// and for a geometry-only model (the call is unsupported).
    pub fn sample_scratch(&self, count: usize, opts: &SolverOptions) -> StackReq {
        let Some(core) = &self.core else {
            return StackReq::EMPTY;
        };
        if count == 0 {
            return StackReq::EMPTY;
        }
        let b = count.min(CHUNK);
        StackReq::all_of(&[
            numerics::temp_mat_scratch::<f64>(count, self.core_dim()),
            numerics::temp_mat_scratch::<f64>(self.info.rows, self.info.rank_cols),
            core.sample_scratch(b, opts),
        ])
    }

    /// Draws new matrices into `out`: matrix `j` is sample number
    /// `first_index + j` of stream `seed`, so it depends only on (seed,
    /// index) and the model, not on how a run is split into calls, the
    /// batch size or the thread count. Noise is integrated through the flow
    /// with `opts` (RK4 with 16 steps by default), then decoded:
    /// `X = U C V^T + Xbar`. A non-finite value is `ErrorKind::Numerical`.
    /// Never allocates; runs on the calling thread.
    pub fn sample(
        &self,
        opts: &SolverOptions,
        seed: u64,
        first_index: u64,
        out: &mut MatrixBatchMut,
        stack: &mut MemStack,
    ) -> Result<()> {
        let core = self.core_or_unsupported("sample")?;
        self.check_shape(out.rows(), out.cols(), "out")?;
        opts.check()?;
        let count = out.count();
        if first_index.checked_add(count as u64).is_none() {
            return Err(Error::invalid("first_index: first_index + count overflows"));
        }
        if count == 0 {
            return Ok(());
        }
        check_workspace(self.sample_scratch(count, opts), stack)?;
        let (d, r, s) = (self.core_dim(), self.info.rank_rows, self.info.rank_cols);
        let b = count.min(CHUNK);
        let (mut cores, stack) = temp_mat_zeroed::<f64>(count, d, stack);
        let (mut t, stack) = temp_mat_zeroed::<f64>(self.info.rows, s, stack);
        // Every core first, checked, so a failure leaves `out` untouched.
        let mut start = 0;
        while start < count {
            let len = (count - start).min(b);
            core.sample(
                opts,
                seed,
                first_index + start as u64,
                cores.rb_mut().get_mut(start..start + len, ..),
                stack,
            )?;
            start += len;
        }
        for j in 0..count {
            let row = cores.rb().row(j);
            self.check_decodable((0..d).map(|k| row[k]), "out: sample", j)?;
        }
        for j in 0..count {
            let c = core_row_mut(cores.rb_mut(), j, r, s);
            self.decode_one(c.rb(), out.sample_mut(j), t.rb_mut());
        }
        Ok(())
    }

    /// Workspace for [`Model::log_prob`] of up to `count` matrices.
    pub fn log_prob_scratch(&self, count: usize, opts: &SolverOptions) -> StackReq {
        let Some(core) = &self.core else {
            return StackReq::EMPTY;
        };
        if count == 0 {
            return StackReq::EMPTY;
        }
        let b = count.clamp(1, CHUNK);
        StackReq::all_of(&[
            numerics::temp_slice_scratch::<f64>(count.saturating_mul(2)),
            numerics::temp_mat_scratch::<f64>(b, self.core_dim()),
            numerics::temp_mat_scratch::<f64>(self.info.rows, self.info.rank_cols),
            numerics::temp_mat_scratch::<f64>(self.info.rows, self.info.cols),
            core.log_prob_scratch(b, opts),
        ])
    }

    /// `log_prob[j]`: the log-density of the core of matrix `j` under the
    /// core model (a density over matrices in the learned geometry, i.e.
    /// over R^(r s)); `residual[j]` (when given): the distance of the matrix
    /// from that geometry, `||Y - U U^T Y V V^T|| / ||Y||` with
    /// `Y = X - Xbar` (0 for Y = 0). Never allocates; runs on the calling
    /// thread.
    pub fn log_prob(
        &self,
        opts: &SolverOptions,
        input: &MatrixBatch,
        log_prob: &mut [f64],
        residual: Option<&mut [f64]>,
        stack: &mut MemStack,
    ) -> Result<()> {
        let core = self.core_or_unsupported("compute log-likelihoods")?;
        self.check_shape(input.rows(), input.cols(), "input")?;
        opts.check()?;
        let count = input.count();
        if log_prob.len() != count {
            return Err(Error::shape(format!(
                "log_prob: {} values for {count} matrices",
                log_prob.len()
            )));
        }
        if let Some(res) = residual.as_deref() {
            if res.len() != count {
                return Err(Error::shape(format!(
                    "residual: {} values for {count} matrices",
                    res.len()
                )));
            }
        }
        if input.has_mask() {
            return Err(Error::invalid(
                "input.mask: log_prob needs complete matrices; complete them first",
            ));
        }
        input.check_finite("input")?;
        if count == 0 {
            return Ok(());
        }
        check_workspace(self.log_prob_scratch(count, opts), stack)?;
        let (d, r, s) = (self.core_dim(), self.info.rank_rows, self.info.rank_cols);
        let (m, n) = (self.info.rows, self.info.cols);
        let b = count.clamp(1, CHUNK);
        // Results go to the workspace first and are copied out once all
        // are known to be finite.
        let (results, stack) = numerics::temp_slice(2 * count, 0.0, stack);
        let (lp_all, res_all) = results.split_at_mut(count);
        let want_residual = residual.is_some();
        let (mut cores, stack) = temp_mat_zeroed::<f64>(b, d, stack);
        let (mut t, stack) = temp_mat_zeroed::<f64>(m, s, stack);
        let (mut proj, stack) = temp_mat_zeroed::<f64>(m, n, stack);
        let mut start = 0;
        while start < count {
            let len = (count - start).min(b);
            for j in 0..len {
                let x = input.sample(start + j);
                let mut c = core_row_mut(cores.rb_mut(), j, r, s);
                self.encode_one(x, c.rb_mut(), t.rb_mut());
                for q in 0..s {
                    for a in 0..r {
                        if !c[(a, q)].is_finite() {
                            return Err(Error::numerical(format!(
                                "input: matrix {} is too large: its core overflows; nothing was written",
                                start + j
                            )));
                        }
                    }
                }
                if want_residual {
                    self.decode_one(c.rb(), proj.rb_mut(), t.rb_mut());
                    res_all[start + j] = self.relative_residual(x, proj.rb());
                }
            }
            core.log_prob(
                opts,
                cores.rb().get(..len, ..),
                &mut lp_all[start..start + len],
                stack,
            )?;
            start += len;
        }
        check_output_finite(lp_all, 1, "log_prob", "matrix")?;
        log_prob.copy_from_slice(lp_all);
        if let Some(res) = residual {
            check_output_finite(res_all, 1, "residual", "matrix")?;
            res.copy_from_slice(res_all);
        }
        Ok(())
    }

    /// `||Y - P|| / ||Y||` with `Y = x - Xbar` and `P = U C V^T` the
    /// projection (0 for Y = 0), directly (no cancellation) and scaled by
    /// the largest `|Y|` entry, so finite inputs give finite values: with
    /// the scale `w = max |Y_ij|` every scaled square is at most 1 and the
    /// sums are at most `m n`.
    fn relative_residual(&self, x: MatRef<'_, f64>, proj: MatRef<'_, f64>) -> f64 {
        let (m, n) = x.shape();
        let y = |a: usize, q: usize| x[(a, q)] - self.mean.as_ref().map_or(0.0, |mm| mm[(a, q)]);
        // proj holds U C V^T + Xbar (decode_one adds the mean back).
        let e = |a: usize, q: usize| x[(a, q)] - proj[(a, q)];
        let mut w = 0.0f64;
        for q in 0..n {
            for a in 0..m {
                w = w.max(y(a, q).abs());
            }
        }
        if w == 0.0 {
            return 0.0;
        }
        let (mut num, mut den) = (0.0, 0.0);
        for q in 0..n {
            for a in 0..m {
                num += (e(a, q) / w).powi(2);
                den += (y(a, q) / w).powi(2);
            }
        }
        (num / den).sqrt()
    }

    /// Workspace for [`Model::complete`] of up to `count` matrices.
    pub fn complete_scratch(&self, count: usize) -> StackReq {
        if count == 0 {
            return StackReq::EMPTY;
        }
        StackReq::all_of(&[
            numerics::temp_mat_scratch::<f64>(self.info.rows, self.info.cols),
            completion::complete_one_scratch(
                self.info.rows,
                self.info.cols,
                self.info.rank_rows,
                self.info.rank_cols,
                self.prior.components(),
            ),
        ])
    }

    /// Completes partially observed matrices: missing entries (mask zero, or
    /// NaN when `partial` has no mask) get those of `Xbar + U C V^T` with the
    /// MAP core C under the Gaussian prior of the training cores, the
    /// observed entries weighted by `1 / (rho_a gamma_b)` of the noise law
    /// ([`Model::noise`]; the Gaussian likelihood of the noise's variance);
    /// observed entries are copied bitwise. Never allocates.
    pub fn complete(
        &self,
        partial: &MatrixBatch,
        out: &mut MatrixBatchMut,
        stack: &mut MemStack,
    ) -> Result<()> {
        self.check_shape(partial.rows(), partial.cols(), "partial")?;
        self.check_shape(out.rows(), out.cols(), "out")?;
        if out.count() != partial.count() {
            return Err(Error::shape(format!(
                "out: holds {} matrices, partial has {}",
                out.count(),
                partial.count()
            )));
        }
        completion::check_observed_finite(partial, true, "partial")?;
        if partial.count() == 0 {
            return Ok(());
        }
        check_workspace(self.complete_scratch(partial.count()), stack)?;
        let (mut trial, stack) = temp_mat_zeroed::<f64>(self.info.rows, self.info.cols, stack);
        // Two passes over the same deterministic computation: the first
        // completes every matrix into the workspace and stops at the first
        // failure, so the second, which writes, cannot fail and `out` is
        // untouched by a failed call.
        for pass in 0..2 {
            for j in 0..partial.count() {
                let obs = completion::observed_of(partial, j, true);
                let target = if pass == 0 {
                    trial.rb_mut()
                } else {
                    out.sample_mut(j)
                };
                completion::complete_one(
                    self.u.as_ref(),
                    self.v.as_ref(),
                    self.mean.as_ref().map(|x| x.as_ref()),
                    &self.prior,
                    Some(&self.noise),
                    partial.sample(j),
                    obs,
                    target,
                    stack,
                )
                .map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!("partial: matrix {j}: {}; nothing was written", e.message()),
                    )
                })?;
            }
        }
        Ok(())
    }
}
