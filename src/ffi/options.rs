//! Option, progress and info structs of the C ABI, and their checked reading.
//!
//! Every struct that crosses the boundary by pointer starts with
//! `size_t struct_size`. The library reads (or writes) only the fields that
//! lie within `struct_size`, so a host compiled against an older header
//! keeps working: fields it lacks get their defaults.

use super::views::null;
use crate::core_model::{CoreModelChoice, CoreModelKind, FlowOptions};
use crate::error::{Error, Result};
use crate::flow::ode::{Solver, SolverOptions};
use crate::flow::train::Coupling;
use crate::model::{FitOptions, ImputeLevel, ModelInfo, Progress, Stage};
use crate::subspace::SubspaceMethod;
use std::ffi::c_void;
use std::mem::{offset_of, size_of};

/// Subspace refinement method (32-bit; values below).
pub type coreflow_subspace_method = i32;
/// Block-exact alternating eigen-updates (HOOI); the default.
pub const COREFLOW_SUBSPACE_METHOD_HOOI: coreflow_subspace_method = 0;
/// Riemannian conjugate gradient on the product of Stiefel manifolds.
pub const COREFLOW_SUBSPACE_METHOD_RIEMANNIAN: coreflow_subspace_method = 1;

/// Pairing of noise and data in flow matching (32-bit; values below).
pub type coreflow_coupling = i32;
/// Independent pairs (the default).
pub const COREFLOW_COUPLING_INDEPENDENT: coreflow_coupling = 0;
/// Exact optimal-transport assignment within each minibatch.
pub const COREFLOW_COUPLING_MINIBATCH_OT: coreflow_coupling = 1;

/// ODE solver for sampling and scoring (32-bit; values below).
pub type coreflow_solver = i32;
/// Explicit Euler, fixed steps.
pub const COREFLOW_SOLVER_EULER: coreflow_solver = 0;
/// Heun (explicit trapezoid), fixed steps.
pub const COREFLOW_SOLVER_HEUN: coreflow_solver = 1;
/// Classical fourth-order Runge-Kutta, fixed steps (the default).
pub const COREFLOW_SOLVER_RK4: coreflow_solver = 2;
/// Dormand-Prince 5(4), adaptive steps controlled by rtol and atol.
pub const COREFLOW_SOLVER_DOPRI5: coreflow_solver = 3;

/// Noise level of multiple imputation, `coreflow_sample_options.impute_level`
/// (32-bit; values below).
pub type coreflow_impute_level = u32;
/// The fitted level `sigma^2`: the exact posterior under the model (the
/// default).
pub const COREFLOW_IMPUTE_LEVEL_FITTED: coreflow_impute_level = 0;
/// `lambda sigma^2`, the level re-estimated on the observed entries of each
/// matrix (`coreflow_impute`).
pub const COREFLOW_IMPUTE_LEVEL_OBSERVED: coreflow_impute_level = 1;

/// Stage of a progress report (32-bit; values below).
pub type coreflow_stage = i32;
/// Fitting the row and column subspaces.
pub const COREFLOW_STAGE_SUBSPACE: coreflow_stage = 0;
/// Iterative completion of missing entries.
pub const COREFLOW_STAGE_COMPLETION: coreflow_stage = 1;
/// Training the flow on the cores.
pub const COREFLOW_STAGE_FLOW: coreflow_stage = 2;

/// Which model the cores get (32-bit; values below).
pub type coreflow_core_model = i32;
/// The flow when it predicts held-out cores clearly better than the
/// Gaussian, else the Gaussian (then refitted on every core; without a
/// hold-out, the flow when there are at least 3 samples per flow
/// dimension) (the default).
pub const COREFLOW_CORE_MODEL_AUTO: coreflow_core_model = 0;
/// Always the flow.
pub const COREFLOW_CORE_MODEL_FLOW: coreflow_core_model = 1;
/// Always a full-covariance Gaussian on all core coordinates.
pub const COREFLOW_CORE_MODEL_GAUSSIAN: coreflow_core_model = 2;
/// Always a Gaussian mixture on a leading block of principal components
/// (block size and number of components selected by BIC), Gaussian on the
/// rest.
pub const COREFLOW_CORE_MODEL_MIXTURE: coreflow_core_model = 3;

/// A progress report, passed to the progress callback.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_progress {
    /// `sizeof(coreflow_progress)` as the library knows it.
    pub struct_size: usize,
    /// Which stage is running (`COREFLOW_STAGE_*`).
    pub stage: coreflow_stage,
    /// Iterations (or optimiser steps) done so far in this stage.
    pub iteration: u64,
    /// The stage's iteration limit.
    pub total: u64,
    /// Subspace objective, completion objective or flow loss.
    pub loss: f64,
}

/// Progress callback: return 0 to continue, nonzero to cancel the fit
/// (which then returns `COREFLOW_ERR_CANCELLED`). Called on the thread that
/// called `coreflow_fit`.
pub type coreflow_progress_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, progress: *const coreflow_progress) -> i32>;

/// Options of `coreflow_fit`. Fill with `coreflow_fit_options_init`, then
/// change the fields you need.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_fit_options {
    /// `sizeof(coreflow_fit_options)`; set by `coreflow_fit_options_init`.
    pub struct_size: usize,
    /// Rank r of the row basis; 0 = choose by `energy`.
    pub rank_rows: u32,
    /// Rank s of the column basis; 0 = choose by `energy`.
    pub rank_cols: u32,
    /// Fraction of the Gram trace a chosen rank must hold, in (0, 1]; default 0.99.
    pub energy: f64,
    /// Nonzero: subtract the entrywise mean; default 0.
    pub center: u8,
    /// Nonzero: NaN entries stand for missing ones; default 0.
    pub nan_is_missing: u8,
    /// `COREFLOW_SUBSPACE_METHOD_*`; default HOOI.
    pub subspace_method: coreflow_subspace_method,
    /// Iteration limit of the subspace refinement; default 100, at most
    /// `COREFLOW_MAX_ITERATIONS`.
    pub subspace_max_iter: u32,
    /// Relative objective increase counted as converged; default 1e-10.
    pub subspace_tol: f64,
    /// Iteration limit of the completion of missing entries; default 100, at
    /// most `COREFLOW_MAX_ITERATIONS`.
    pub completion_max_iter: u32,
    /// Relative objective decrease counted as converged; default 1e-8.
    pub completion_tol: f64,
    /// Ridge on the cores in the masked fit (dimensionless); default 1e-8.
    pub ridge: f64,
    /// Width of the hidden layers of the velocity network; default 256, at
    /// most `COREFLOW_MAX_FLOW_HIDDEN` (and the network at most
    /// `COREFLOW_MAX_FLOW_PARAMETERS` weights).
    pub flow_hidden: u32,
    /// Number of hidden layers; default 3, at most `COREFLOW_MAX_FLOW_LAYERS`.
    pub flow_layers: u32,
    /// Number of sinusoidal time frequencies; default 16, at most
    /// `COREFLOW_MAX_FLOW_TIME_FREQS`.
    pub flow_time_freqs: u32,
    /// Fraction of the core variance the flow block holds; default 0.999.
    pub flow_energy: f64,
    /// Upper bound on the flow block dimension; 0 = no bound.
    pub flow_max_dim: u32,
    /// Optimiser steps of the flow; default 4000, at most
    /// `COREFLOW_MAX_FLOW_STEPS`. 0 with core_model AUTO or
    /// FLOW fits the geometry only (no sampling or scoring).
    pub flow_steps: u32,
    /// Minibatch size of flow training; default 128, at most
    /// `COREFLOW_MAX_BATCH_SIZE`.
    pub batch_size: u32,
    /// Peak learning rate; default 1e-2.
    pub learning_rate: f64,
    /// Decoupled weight decay; default 0.
    pub weight_decay: f64,
    /// Decay of the moving average of the weights; default 0.999.
    pub ema_decay: f64,
    /// `COREFLOW_COUPLING_*`; default INDEPENDENT.
    pub coupling: coreflow_coupling,
    /// Seed of every random choice of the fit; default 0.
    pub seed: u64,
    /// Worker threads for fitting; 0 = all cores (the default); clamped to
    /// `COREFLOW_MAX_THREADS`. They form a pool created for the call and
    /// joined before it returns: no thread is left running after a fit (a
    /// process may fork afterwards).
    pub threads: u32,
    /// Progress callback, or NULL.
    pub progress: coreflow_progress_fn,
    /// Passed unchanged to `progress`.
    pub progress_user: *mut c_void,
    /// `COREFLOW_CORE_MODEL_*`; default AUTO.
    pub core_model: coreflow_core_model,
    /// Fraction of samples held out for the diagnostics; default 0.2.
    pub holdout_fraction: f64,
    /// Distributed fitting: NULL (the default) fits on this process's data
    /// alone; otherwise every sum over samples is completed by this callback,
    /// which must sum `buf[0..len]` element-wise across all processes in
    /// place (MPI_Allreduce with MPI_SUM) and return 0, or nonzero on
    /// failure (then the fit returns `COREFLOW_ERR_COMMUNICATION`). Every
    /// process passes its own shard and must return the same value from each
    /// call. Called on the thread that called `coreflow_fit`.
    pub allreduce: coreflow_allreduce_fn,
    /// Passed unchanged to `allreduce`.
    pub allreduce_user: *mut c_void,
    /// Noise floor of the flow block: the block ends at the first ratio of
    /// at least this much between consecutive principal-component variances
    /// with at most 5 % of the core variance below it, and the components
    /// below get at most the fit's residual variance per entry; 0 = the
    /// `flow_energy` rule alone, otherwise at least 1; default 10.
    pub flow_noise_gap: f64,
}

/// Most worker threads a call starts: `threads` (and `0` = all cores) is
/// clamped to this.
pub const COREFLOW_MAX_THREADS: u32 = 256;
/// Largest `subspace_max_iter` and `completion_max_iter`.
pub const COREFLOW_MAX_ITERATIONS: u32 = 1_000_000;
/// Largest `flow_steps`.
pub const COREFLOW_MAX_FLOW_STEPS: u32 = 100_000_000;
/// Largest `flow_hidden`.
pub const COREFLOW_MAX_FLOW_HIDDEN: u32 = 16_384;
/// Largest `flow_layers`.
pub const COREFLOW_MAX_FLOW_LAYERS: u32 = 64;
/// Largest `flow_time_freqs`.
pub const COREFLOW_MAX_FLOW_TIME_FREQS: u32 = 4_096;
/// Largest `batch_size`.
pub const COREFLOW_MAX_BATCH_SIZE: u32 = 1 << 20;
/// Most weights of the velocity network,
/// `(k + 2 flow_time_freqs) flow_hidden + (flow_layers - 1) flow_hidden^2 + flow_hidden k`
/// with k the flow block; a larger network is refused before fitting.
pub const COREFLOW_MAX_FLOW_PARAMETERS: u64 = 1 << 27;
/// Largest `coreflow_sample_options.steps`.
pub const COREFLOW_MAX_SOLVER_STEPS: u32 = 1_000_000;

/// Host allreduce callback (see `coreflow_fit_options.allreduce`).
pub type coreflow_allreduce_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, buf: *mut f64, len: usize) -> i32>;

/// Smallest `struct_size` accepted for `coreflow_fit_options` (ABI v1).
pub(crate) const FIT_OPTIONS_V1_SIZE: usize =
    offset_of!(coreflow_fit_options, holdout_fraction) + size_of::<f64>();

pub(crate) fn fit_options_default() -> coreflow_fit_options {
    let d = FitOptions::default();
    let f = d.flow;
    coreflow_fit_options {
        struct_size: size_of::<coreflow_fit_options>(),
        rank_rows: 0,
        rank_cols: 0,
        energy: d.energy,
        center: 0,
        nan_is_missing: 0,
        subspace_method: COREFLOW_SUBSPACE_METHOD_HOOI,
        subspace_max_iter: d.subspace_max_iter as u32,
        subspace_tol: d.subspace_tol,
        completion_max_iter: d.completion_max_iter as u32,
        completion_tol: d.completion_tol,
        ridge: d.ridge,
        flow_hidden: f.hidden as u32,
        flow_layers: f.layers as u32,
        flow_time_freqs: f.time_freqs as u32,
        flow_energy: f.flow_energy,
        flow_max_dim: f.flow_max_dim as u32,
        flow_steps: f.steps as u32,
        batch_size: f.batch_size as u32,
        learning_rate: f.learning_rate,
        weight_decay: f.weight_decay,
        ema_decay: f.ema_decay,
        coupling: COREFLOW_COUPLING_INDEPENDENT,
        seed: 0,
        threads: 0,
        progress: None,
        progress_user: std::ptr::null_mut(),
        core_model: COREFLOW_CORE_MODEL_AUTO,
        holdout_fraction: f.holdout_fraction,
        allreduce: None,
        allreduce_user: std::ptr::null_mut(),
        flow_noise_gap: f.flow_noise_gap,
    }
}

/// Copies the first `struct_size` bytes of a host struct over the library's
/// defaults, so fields an older host lacks keep their defaults.
///
/// # Safety
/// `src` must be readable for `(*src).struct_size` bytes (at least `min`).
pub(crate) unsafe fn read_versioned<T: Copy>(
    src: *const T,
    default: T,
    min: usize,
    what: &str,
) -> Result<T> {
    let size = *(src as *const usize);
    if size < min {
        return Err(Error::invalid(format!(
            "{what}->struct_size: {size} is smaller than the smallest supported size {min}; initialise the struct with its _init function"
        )));
    }
    let mut out = default;
    let n = size.min(size_of::<T>());
    std::ptr::copy_nonoverlapping(src as *const u8, &mut out as *mut T as *mut u8, n);
    *(&mut out as *mut T as *mut usize) = size_of::<T>();
    Ok(out)
}

/// Reads and checks the host's options.
///
/// # Safety
/// `opts` must be NULL or point to a struct of at least `struct_size` bytes.
pub(crate) unsafe fn read_fit_options(
    opts: *const coreflow_fit_options,
) -> Result<coreflow_fit_options> {
    if opts.is_null() {
        return Err(null("opts"));
    }
    read_versioned(opts, fit_options_default(), FIT_OPTIONS_V1_SIZE, "opts")
}

/// Converts checked C options into the Rust options. Range checks of the
/// values themselves happen once, in the Rust layer.
pub(crate) fn to_fit_options(o: &coreflow_fit_options) -> Result<FitOptions> {
    let subspace_method = match o.subspace_method {
        COREFLOW_SUBSPACE_METHOD_HOOI => SubspaceMethod::Hooi,
        COREFLOW_SUBSPACE_METHOD_RIEMANNIAN => SubspaceMethod::Riemannian,
        x => {
            return Err(Error::invalid(format!(
                "opts->subspace_method: {x} is not a COREFLOW_SUBSPACE_METHOD_* value"
            )))
        }
    };
    if o.coupling != COREFLOW_COUPLING_INDEPENDENT && o.coupling != COREFLOW_COUPLING_MINIBATCH_OT {
        return Err(Error::invalid(format!(
            "opts->coupling: {} is not a COREFLOW_COUPLING_* value",
            o.coupling
        )));
    }
    if !(COREFLOW_CORE_MODEL_AUTO..=COREFLOW_CORE_MODEL_MIXTURE).contains(&o.core_model) {
        return Err(Error::invalid(format!(
            "opts->core_model: {} is not a COREFLOW_CORE_MODEL_* value",
            o.core_model
        )));
    }
    Ok(FitOptions {
        rank_rows: o.rank_rows as usize,
        rank_cols: o.rank_cols as usize,
        energy: o.energy,
        center: o.center != 0,
        subspace_method,
        subspace_max_iter: o.subspace_max_iter as usize,
        subspace_tol: o.subspace_tol,
        nan_is_missing: o.nan_is_missing != 0,
        completion_max_iter: o.completion_max_iter as usize,
        completion_tol: o.completion_tol,
        ridge: o.ridge,
        flow: FlowOptions {
            hidden: o.flow_hidden as usize,
            layers: o.flow_layers as usize,
            time_freqs: o.flow_time_freqs as usize,
            flow_energy: o.flow_energy,
            flow_max_dim: o.flow_max_dim as usize,
            flow_noise_gap: o.flow_noise_gap,
            steps: o.flow_steps as usize,
            batch_size: o.batch_size as usize,
            learning_rate: o.learning_rate,
            weight_decay: o.weight_decay,
            ema_decay: o.ema_decay,
            coupling: match o.coupling {
                COREFLOW_COUPLING_MINIBATCH_OT => Coupling::MinibatchOt,
                _ => Coupling::Independent,
            },
            core_model: match o.core_model {
                COREFLOW_CORE_MODEL_FLOW => CoreModelChoice::Flow,
                COREFLOW_CORE_MODEL_GAUSSIAN => CoreModelChoice::Gaussian,
                COREFLOW_CORE_MODEL_MIXTURE => CoreModelChoice::Mixture,
                _ => CoreModelChoice::Auto,
            },
            holdout_fraction: o.holdout_fraction,
            ..FlowOptions::default()
        },
        seed: o.seed,
        threads: o.threads as usize,
    })
}

pub(crate) fn stage_code(s: Stage) -> coreflow_stage {
    match s {
        Stage::Subspace => COREFLOW_STAGE_SUBSPACE,
        Stage::Completion => COREFLOW_STAGE_COMPLETION,
        Stage::Flow => COREFLOW_STAGE_FLOW,
    }
}

pub(crate) fn to_c_progress(p: &Progress) -> coreflow_progress {
    coreflow_progress {
        struct_size: size_of::<coreflow_progress>(),
        stage: stage_code(p.stage),
        iteration: p.iteration,
        total: p.total,
        loss: p.loss,
    }
}

/// Summary of a fitted model, filled by `coreflow_model_get_info`. Set
/// `struct_size = sizeof(coreflow_model_info)` before the call.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_model_info {
    /// `sizeof(coreflow_model_info)`, set by the caller.
    pub struct_size: usize,
    /// Rows m of each matrix.
    pub rows: usize,
    /// Columns n of each matrix.
    pub cols: usize,
    /// Rank r of the row basis U.
    pub rank_rows: usize,
    /// Rank s of the column basis V.
    pub rank_cols: usize,
    /// Core dimension r * s.
    pub core_dim: usize,
    /// Dimension of the flow block: the number of leading principal
    /// components of the cores the flow models (0 without a flow).
    pub flow_dim: usize,
    /// 1 when the mean was subtracted.
    pub centered: u8,
    /// 1 when a flow was trained.
    pub has_flow: u8,
    /// Width of the hidden layers (0 without a flow).
    pub flow_hidden: u32,
    /// Number of hidden layers (0 without a flow).
    pub flow_layers: u32,
    /// Number of training matrices.
    pub train_count: usize,
    /// Fraction of the (centered) training energy the cores hold.
    pub explained_energy: f64,
    /// Final flow training loss (NaN without a flow).
    pub final_loss: f64,
    /// Subspace refinement iterations performed.
    pub subspace_iterations: u32,
    /// 1 when the subspace refinement met its stopping rule.
    pub subspace_converged: u8,
    /// Final subspace objective sum ||U^T (X_i - Xbar) V||^2.
    pub subspace_objective: f64,
    /// 1 when the training data had missing entries.
    pub masked: u8,
    /// Completion rounds performed (0 for complete data).
    pub completion_iterations: u32,
    /// 1 when the completion met its stopping rule (1 for complete data).
    pub completion_converged: u8,
    /// Final masked objective (NaN for complete data).
    pub completion_objective: f64,
    /// Noise variance per entry estimated from the training residuals.
    pub noise_variance: f64,
    /// The fitted core model: -1 geometry only, else `COREFLOW_CORE_MODEL_FLOW`,
    /// `COREFLOW_CORE_MODEL_GAUSSIAN` or `COREFLOW_CORE_MODEL_MIXTURE` (the
    /// choice AUTO made).
    pub core_model: coreflow_core_model,
    /// Flow block size k (leading principal components) by the energy rule
    /// (also when the Gaussian was chosen).
    pub flow_block: usize,
    /// Held-out mean log-likelihood of the flow model (NaN when not fitted;
    /// -infinity when some held-out core has no finite density under the
    /// flow).
    pub heldout_loglik_flow: f64,
    /// Held-out mean log-likelihood of a full Gaussian on the cores.
    pub heldout_loglik_gaussian: f64,
    /// AUTO's sample-based check for the Gaussian kind: MMD^2 between its
    /// draws and the held-out cores in the leading block, lower is better
    /// (NaN when AUTO had no choice to make).
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
    /// Its number of Gaussian components (0 when none).
    pub mixture_components: usize,
    /// Optimiser steps the flow was trained for: with a hold-out, the step
    /// of the best held-out flow-matching loss on the split, which the
    /// refit on all matrices repeats (0 without a flow).
    pub flow_train_steps: usize,
    /// Degrees of freedom of the Student-t tails of the noise law
    /// (+infinity: Gaussian noise).
    pub noise_dof: f64,
    /// The noise law's tail scale tau^2 (1 for Gaussian noise).
    pub noise_tail_scale: f64,
    /// max / min over the entries of the noise variance profile
    /// rho_a gamma_b (1 for a flat profile).
    pub noise_profile_spread: f64,
    /// Bound of the standardised noise of an imputation draw: the largest
    /// standardised training residual (+infinity: none).
    pub noise_bound: f64,
    /// Smallest observed training value: drawn entries are censored to
    /// [data_min, data_max] (-infinity: none).
    pub data_min: f64,
    /// Largest observed training value (+infinity: none).
    pub data_max: f64,
}

/// Smallest `struct_size` accepted for `coreflow_model_info` (ABI v1).
pub(crate) const MODEL_INFO_V1_SIZE: usize =
    offset_of!(coreflow_model_info, final_loss) + size_of::<f64>();

/// Writes `info` into the host's struct, only the fields within its `struct_size`.
///
/// # Safety
/// `out` must be NULL or writable for `(*out).struct_size` bytes.
pub(crate) unsafe fn write_model_info(
    out: *mut coreflow_model_info,
    info: &ModelInfo,
) -> Result<()> {
    if out.is_null() {
        return Err(null("out"));
    }
    let size = *(out as *const usize);
    if size < MODEL_INFO_V1_SIZE {
        return Err(Error::invalid(format!(
            "out->struct_size: {size} is smaller than the smallest supported size {MODEL_INFO_V1_SIZE}; set it to sizeof(coreflow_model_info)"
        )));
    }
    let full = coreflow_model_info {
        struct_size: size.min(size_of::<coreflow_model_info>()),
        rows: info.rows,
        cols: info.cols,
        rank_rows: info.rank_rows,
        rank_cols: info.rank_cols,
        core_dim: info.core_dim,
        flow_dim: info.flow_dim,
        centered: info.centered as u8,
        has_flow: info.has_flow as u8,
        flow_hidden: info.flow_hidden as u32,
        flow_layers: info.flow_layers as u32,
        train_count: info.train_count,
        explained_energy: info.explained_energy,
        final_loss: info.final_loss,
        subspace_iterations: info.subspace_iterations.min(u32::MAX as usize) as u32,
        subspace_converged: info.subspace_converged as u8,
        subspace_objective: info.subspace_objective,
        masked: info.masked as u8,
        completion_iterations: info.completion_iterations.min(u32::MAX as usize) as u32,
        completion_converged: info.completion_converged as u8,
        completion_objective: info.completion_objective,
        noise_variance: info.noise_variance,
        core_model: match info.core_model {
            None => -1,
            Some(CoreModelKind::Flow) => COREFLOW_CORE_MODEL_FLOW,
            Some(CoreModelKind::Gaussian) => COREFLOW_CORE_MODEL_GAUSSIAN,
            Some(CoreModelKind::Mixture) => COREFLOW_CORE_MODEL_MIXTURE,
        },
        flow_block: info.flow_block,
        heldout_loglik_flow: info.heldout_loglik_flow,
        heldout_loglik_gaussian: info.heldout_loglik_gaussian,
        heldout_mmd_gaussian: info.heldout_mmd_gaussian,
        heldout_mmd_flow: info.heldout_mmd_flow,
        heldout_loglik_mixture: info.heldout_loglik_mixture,
        heldout_mmd_mixture: info.heldout_mmd_mixture,
        mixture_block: info.mixture_block,
        mixture_components: info.mixture_components,
        flow_train_steps: info.flow_train_steps,
        noise_dof: info.noise_dof,
        noise_tail_scale: info.noise_tail_scale,
        noise_profile_spread: info.noise_profile_spread,
        noise_bound: info.noise_bound,
        data_min: info.data_min,
        data_max: info.data_max,
    };
    let n = size.min(size_of::<coreflow_model_info>());
    std::ptr::copy_nonoverlapping(&full as *const _ as *const u8, out as *mut u8, n);
    Ok(())
}

/// Options of sampling, scoring and imputation. Fill with
/// `coreflow_sample_options_init`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_sample_options {
    /// `sizeof(coreflow_sample_options)`; set by `coreflow_sample_options_init`.
    pub struct_size: usize,
    /// `COREFLOW_SOLVER_*`; default RK4.
    pub solver: coreflow_solver,
    /// Fixed steps of EULER, HEUN and RK4; default 16, at most
    /// `COREFLOW_MAX_SOLVER_STEPS`.
    pub steps: u32,
    /// Relative tolerance of DOPRI5; default 1e-5.
    pub rtol: f64,
    /// Absolute tolerance of DOPRI5; default 1e-5.
    pub atol: f64,
    /// `COREFLOW_IMPUTE_LEVEL_*`: the noise level at which `coreflow_impute`
    /// conditions and draws; default `COREFLOW_IMPUTE_LEVEL_FITTED` (the
    /// fitted sigma^2, the exact posterior under the model);
    /// `COREFLOW_IMPUTE_LEVEL_OBSERVED` re-estimates the level on the
    /// observed entries of each matrix (DESIGN.md section 4, "Multiple
    /// imputation"). Ignored by `coreflow_sample` and `coreflow_log_prob`.
    /// Added after ABI v1: an older host's smaller struct gets the default.
    pub impute_level: coreflow_impute_level,
}

pub(crate) fn sample_options_default() -> coreflow_sample_options {
    coreflow_sample_options {
        struct_size: size_of::<coreflow_sample_options>(),
        solver: COREFLOW_SOLVER_RK4,
        steps: 16,
        rtol: 1e-5,
        atol: 1e-5,
        impute_level: COREFLOW_IMPUTE_LEVEL_FITTED,
    }
}

/// Fields of `coreflow_fit_options` that the library's checks may name, and
/// the field of the Rust options (`FitOptions`, with its `SubspaceOptions`
/// and `FlowOptions`) each is copied to: `(rust, c)`. The Rust checks name
/// their own fields (`opts.max_iter` for the subspace iteration cap); a C
/// caller set `opts->subspace_max_iter`.
const FIT_FIELD_NAMES: [(&str, &str); 23] = [
    ("rank_rows", "rank_rows"),
    ("rank_cols", "rank_cols"),
    ("energy", "energy"),
    ("max_iter", "subspace_max_iter"),
    ("subspace_max_iter", "subspace_max_iter"),
    ("tol", "subspace_tol"),
    ("subspace_tol", "subspace_tol"),
    ("completion_max_iter", "completion_max_iter"),
    ("completion_tol", "completion_tol"),
    ("ridge", "ridge"),
    ("hidden", "flow_hidden"),
    ("layers", "flow_layers"),
    ("time_freqs", "flow_time_freqs"),
    ("flow_energy", "flow_energy"),
    ("flow_max_dim", "flow_max_dim"),
    ("flow_noise_gap", "flow_noise_gap"),
    ("steps", "flow_steps"),
    ("batch_size", "batch_size"),
    ("learning_rate", "learning_rate"),
    ("weight_decay", "weight_decay"),
    ("ema_decay", "ema_decay"),
    ("core_model", "core_model"),
    ("holdout_fraction", "holdout_fraction"),
];

/// An error of a fit as a C caller reads it: every `opts.<field>` (or
/// `opts.flow.<field>`) of the Rust options with a C counterpart becomes
/// `opts-><c field>`. Fields the C struct does not have (the C ABI leaves
/// them at their defaults) keep their Rust names.
pub(crate) fn with_c_field_names(e: Error) -> Error {
    let msg = e.message();
    if !msg.contains("opts.") {
        return e;
    }
    let mut out = String::with_capacity(msg.len() + 16);
    let mut rest = msg;
    while let Some(at) = rest.find("opts.") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "opts.".len()..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(after.len());
        let path = after[..len].trim_end_matches('.');
        let field = path.strip_prefix("flow.").unwrap_or(path);
        match FIT_FIELD_NAMES.iter().find(|(rust, _)| *rust == field) {
            Some((_, c)) => {
                out.push_str("opts->");
                out.push_str(c);
            }
            None => {
                out.push_str("opts.");
                out.push_str(path);
            }
        }
        rest = &after[path.len()..];
    }
    out.push_str(rest);
    let out = out.replace(
        "opts->core_model to GAUSSIAN",
        "opts->core_model to COREFLOW_CORE_MODEL_GAUSSIAN",
    );
    Error::new(e.kind(), out)
}

/// Converts checked C sample options into solver options.
pub(crate) fn to_solver_options(o: &coreflow_sample_options) -> Result<SolverOptions> {
    let solver = match o.solver {
        COREFLOW_SOLVER_EULER => Solver::Euler,
        COREFLOW_SOLVER_HEUN => Solver::Heun,
        COREFLOW_SOLVER_RK4 => Solver::Rk4,
        COREFLOW_SOLVER_DOPRI5 => Solver::Dopri5,
        x => {
            return Err(Error::invalid(format!(
                "o->solver: {x} is not a COREFLOW_SOLVER_* value"
            )))
        }
    };
    let opts = SolverOptions {
        solver,
        steps: o.steps as usize,
        rtol: o.rtol,
        atol: o.atol,
        ..SolverOptions::default()
    };
    opts.check()
        .map_err(|e| Error::new(e.kind(), e.message().replace("solver.", "o->")))?;
    Ok(opts)
}

/// The imputation level of checked C sample options; an unknown value is
/// refused.
pub(crate) fn to_impute_level(o: &coreflow_sample_options) -> Result<ImputeLevel> {
    match o.impute_level {
        COREFLOW_IMPUTE_LEVEL_FITTED => Ok(ImputeLevel::Fitted),
        COREFLOW_IMPUTE_LEVEL_OBSERVED => Ok(ImputeLevel::Observed),
        x => Err(Error::invalid(format!(
            "o->impute_level: {x} is not a COREFLOW_IMPUTE_LEVEL_* value"
        ))),
    }
}

/// Smallest `struct_size` accepted for `coreflow_sample_options` (ABI v1:
/// up to `atol`).
pub(crate) const SAMPLE_OPTIONS_V1_SIZE: usize =
    offset_of!(coreflow_sample_options, atol) + size_of::<f64>();

/// Reads the host's sample options; NULL means the defaults.
///
/// # Safety
/// `o` must be NULL or readable for `(*o).struct_size` bytes.
pub(crate) unsafe fn read_sample_options(
    o: *const coreflow_sample_options,
) -> Result<coreflow_sample_options> {
    if o.is_null() {
        return Ok(sample_options_default());
    }
    read_versioned(o, sample_options_default(), SAMPLE_OPTIONS_V1_SIZE, "o")
}

/// Copies the first `size` bytes of `value` to `dst` and records the count
/// in its leading `struct_size`.
pub(crate) unsafe fn init_sized<T: Copy>(dst: *mut T, size: usize, value: T) {
    if dst.is_null() || size < std::mem::size_of::<usize>() {
        return;
    }
    let n = size.min(std::mem::size_of::<T>());
    std::ptr::copy_nonoverlapping(&value as *const T as *const u8, dst as *mut u8, n);
    (dst as *mut usize).write_unaligned(n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn impute_level_is_read_when_present_and_checked() {
        let mut o = sample_options_default();
        assert_eq!(to_impute_level(&o).unwrap(), ImputeLevel::Fitted);
        o.impute_level = COREFLOW_IMPUTE_LEVEL_OBSERVED;
        assert_eq!(to_impute_level(&o).unwrap(), ImputeLevel::Observed);
        // An ABI v1 host's struct ends before impute_level: the default.
        o.struct_size = SAMPLE_OPTIONS_V1_SIZE;
        let read = unsafe { read_sample_options(&o) }.unwrap();
        assert_eq!(read.impute_level, COREFLOW_IMPUTE_LEVEL_FITTED);
        o.struct_size = size_of::<coreflow_sample_options>();
        let read = unsafe { read_sample_options(&o) }.unwrap();
        assert_eq!(read.impute_level, COREFLOW_IMPUTE_LEVEL_OBSERVED);
        o.impute_level = 2;
        let e = to_impute_level(&o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message().starts_with("o->impute_level: 2"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn fit_errors_name_the_c_fields() {
        let c = |m: &str| with_c_field_names(Error::invalid(m)).message().to_string();
        assert_eq!(
            c("opts.max_iter: must be at least 1 (got 0)"),
            "opts->subspace_max_iter: must be at least 1 (got 0)"
        );
        assert_eq!(c("opts.tol: -1 is not"), "opts->subspace_tol: -1 is not");
        assert_eq!(
            c("opts.hidden: must be > 0"),
            "opts->flow_hidden: must be > 0"
        );
        assert_eq!(c("opts.flow.layers: 9"), "opts->flow_layers: 9");
        assert_eq!(
            c("opts.steps: must be > 0 to train a flow (or set opts.core_model to GAUSSIAN)"),
            "opts->flow_steps: must be > 0 to train a flow (or set opts->core_model to \
             COREFLOW_CORE_MODEL_GAUSSIAN)"
        );
        // Fields without a C counterpart keep their names; the rest is kept.
        assert_eq!(
            c("lower opts.learning_rate or set opts.clip_norm."),
            "lower opts->learning_rate or set opts.clip_norm."
        );
        assert_eq!(c("train: no matrix"), "train: no matrix");
        let e = with_c_field_names(Error::new(ErrorKind::Numerical, "opts.energy: x"));
        assert_eq!(e.kind(), ErrorKind::Numerical);
    }
}
