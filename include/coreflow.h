/*
 * CoreFlow C API: generative models of matrix-valued data.
 *
 * Generated from the Rust sources by cbindgen; do not edit by hand.
 * Conventions (ownership, threads, workspaces, errors): see README.md,
 * section "API conventions".
 */

#ifndef COREFLOW_H
#define COREFLOW_H

#include <stddef.h>
#include <stdint.h>

/**
 * ABI version of this header; compare with `coreflow_abi_version()`.
 */
#define COREFLOW_ABI_VERSION 1

/**
 * Most worker threads a call starts: `threads` (and `0` = all cores) is
 * clamped to this.
 */
#define COREFLOW_MAX_THREADS 256

/**
 * Largest `subspace_max_iter` and `completion_max_iter`.
 */
#define COREFLOW_MAX_ITERATIONS 1000000

/**
 * Largest `flow_steps`.
 */
#define COREFLOW_MAX_FLOW_STEPS 100000000

/**
 * Largest `flow_hidden`.
 */
#define COREFLOW_MAX_FLOW_HIDDEN 16384

/**
 * Largest `flow_layers`.
 */
#define COREFLOW_MAX_FLOW_LAYERS 64

/**
 * Largest `flow_time_freqs`.
 */
#define COREFLOW_MAX_FLOW_TIME_FREQS 4096

/**
 * Largest `batch_size`.
 */
#define COREFLOW_MAX_BATCH_SIZE (1 << 20)

/**
 * Most weights of the velocity network,
 * `(k + 2 flow_time_freqs) flow_hidden + (flow_layers - 1) flow_hidden^2 + flow_hidden k`
 * with k the flow block; a larger network is refused before fitting.
 */
#define COREFLOW_MAX_FLOW_PARAMETERS (1 << 27)

/**
 * Largest `coreflow_sample_options.steps`.
 */
#define COREFLOW_MAX_SOLVER_STEPS 1000000

/**
 * A fitted model (opaque). Immutable after fitting: any number of threads
 * may use one model at the same time, each with its own workspace.
 */
typedef struct coreflow_model coreflow_model;

/**
 * Subspace refinement method (32-bit; values below).
 */
typedef int32_t coreflow_subspace_method;

/**
 * Pairing of noise and data in flow matching (32-bit; values below).
 */
typedef int32_t coreflow_coupling;

/**
 * Stage of a progress report (32-bit; values below).
 */
typedef int32_t coreflow_stage;

/**
 * A progress report, passed to the progress callback.
 */
typedef struct coreflow_progress {
    /**
     * `sizeof(coreflow_progress)` as the library knows it.
     */
    size_t struct_size;
    /**
     * Which stage is running (`COREFLOW_STAGE_*`).
     */
    coreflow_stage stage;
    /**
     * Iterations (or optimiser steps) done so far in this stage.
     */
    uint64_t iteration;
    /**
     * The stage's iteration limit.
     */
    uint64_t total;
    /**
     * Subspace objective, completion objective or flow loss.
     */
    double loss;
} coreflow_progress;

/**
 * Progress callback: return 0 to continue, nonzero to cancel the fit
 * (which then returns `COREFLOW_ERR_CANCELLED`). Called on the thread that
 * called `coreflow_fit`.
 */
typedef int32_t (*coreflow_progress_fn)(void *user, const struct coreflow_progress *progress);

/**
 * Which model the cores get (32-bit; values below).
 */
typedef int32_t coreflow_core_model;

/**
 * Host allreduce callback (see `coreflow_fit_options.allreduce`).
 */
typedef int32_t (*coreflow_allreduce_fn)(void *user, double *buf, size_t len);

/**
 * Options of `coreflow_fit`. Fill with `coreflow_fit_options_init`, then
 * change the fields you need.
 */
typedef struct coreflow_fit_options {
    /**
     * `sizeof(coreflow_fit_options)`; set by `coreflow_fit_options_init`.
     */
    size_t struct_size;
    /**
     * Rank r of the row basis; 0 = choose by `energy`.
     */
    uint32_t rank_rows;
    /**
     * Rank s of the column basis; 0 = choose by `energy`.
     */
    uint32_t rank_cols;
    /**
     * Fraction of the Gram trace a chosen rank must hold, in (0, 1]; default 0.99.
     */
    double energy;
    /**
     * Nonzero: subtract the entrywise mean; default 0.
     */
    uint8_t center;
    /**
     * Nonzero: NaN entries stand for missing ones; default 0.
     */
    uint8_t nan_is_missing;
    /**
     * `COREFLOW_SUBSPACE_METHOD_*`; default HOOI.
     */
    coreflow_subspace_method subspace_method;
    /**
     * Iteration limit of the subspace refinement; default 100, at most
     * `COREFLOW_MAX_ITERATIONS`.
     */
    uint32_t subspace_max_iter;
    /**
     * Relative objective increase counted as converged; default 1e-10.
     */
    double subspace_tol;
    /**
     * Iteration limit of the completion of missing entries; default 100, at
     * most `COREFLOW_MAX_ITERATIONS`.
     */
    uint32_t completion_max_iter;
    /**
     * Relative objective decrease counted as converged; default 1e-8.
     */
    double completion_tol;
    /**
     * Ridge on the cores in the masked fit (dimensionless); default 1e-8.
     */
    double ridge;
    /**
     * Width of the hidden layers of the velocity network; default 256, at
     * most `COREFLOW_MAX_FLOW_HIDDEN` (and the network at most
     * `COREFLOW_MAX_FLOW_PARAMETERS` weights).
     */
    uint32_t flow_hidden;
    /**
     * Number of hidden layers; default 3, at most `COREFLOW_MAX_FLOW_LAYERS`.
     */
    uint32_t flow_layers;
    /**
     * Number of sinusoidal time frequencies; default 16, at most
     * `COREFLOW_MAX_FLOW_TIME_FREQS`.
     */
    uint32_t flow_time_freqs;
    /**
     * Fraction of the core variance the flow block holds; default 0.999.
     */
    double flow_energy;
    /**
     * Upper bound on the flow block dimension; 0 = no bound.
     */
    uint32_t flow_max_dim;
    /**
     * Optimiser steps of the flow; default 4000, at most
     * `COREFLOW_MAX_FLOW_STEPS`. 0 with core_model AUTO or
     * FLOW fits the geometry only (no sampling or scoring).
     */
    uint32_t flow_steps;
    /**
     * Minibatch size of flow training; default 128, at most
     * `COREFLOW_MAX_BATCH_SIZE`.
     */
    uint32_t batch_size;
    /**
     * Peak learning rate; default 1e-2.
     */
    double learning_rate;
    /**
     * Decoupled weight decay; default 0.
     */
    double weight_decay;
    /**
     * Decay of the moving average of the weights; default 0.999.
     */
    double ema_decay;
    /**
     * `COREFLOW_COUPLING_*`; default INDEPENDENT.
     */
    coreflow_coupling coupling;
    /**
     * Seed of every random choice of the fit; default 0.
     */
    uint64_t seed;
    /**
     * Worker threads for fitting; 0 = all cores (the default); clamped to
     * `COREFLOW_MAX_THREADS`. They form a pool created for the call and
     * joined before it returns: no thread is left running after a fit (a
     * process may fork afterwards).
     */
    uint32_t threads;
    /**
     * Progress callback, or NULL.
     */
    coreflow_progress_fn progress;
    /**
     * Passed unchanged to `progress`.
     */
    void *progress_user;
    /**
     * `COREFLOW_CORE_MODEL_*`; default AUTO.
     */
    coreflow_core_model core_model;
    /**
     * Fraction of samples held out for the diagnostics; default 0.2.
     */
    double holdout_fraction;
    /**
     * Distributed fitting: NULL (the default) fits on this process's data
     * alone; otherwise every sum over samples is completed by this callback,
     * which must sum `buf[0..len]` element-wise across all processes in
     * place (MPI_Allreduce with MPI_SUM) and return 0, or nonzero on
     * failure (then the fit returns `COREFLOW_ERR_COMMUNICATION`). Every
     * process passes its own shard and must return the same value from each
     * call. Called on the thread that called `coreflow_fit`.
     */
    coreflow_allreduce_fn allreduce;
    /**
     * Passed unchanged to `allreduce`.
     */
    void *allreduce_user;
    /**
     * Noise floor of the flow block: the block ends at the first ratio of
     * at least this much between consecutive principal-component variances
     * with at most 5 % of the core variance below it, and the components
     * below get at most the fit's residual variance per entry; 0 = the
     * `flow_energy` rule alone, otherwise at least 1; default 10.
     */
    double flow_noise_gap;
} coreflow_fit_options;

/**
 * ODE solver for sampling and scoring (32-bit; values below).
 */
typedef int32_t coreflow_solver;

/**
 * Noise level of multiple imputation, `coreflow_sample_options.impute_level`
 * (32-bit; values below).
 */
typedef uint32_t coreflow_impute_level;

/**
 * Options of sampling, scoring and imputation. Fill with
 * `coreflow_sample_options_init`.
 */
typedef struct coreflow_sample_options {
    /**
     * `sizeof(coreflow_sample_options)`; set by `coreflow_sample_options_init`.
     */
    size_t struct_size;
    /**
     * `COREFLOW_SOLVER_*`; default RK4.
     */
    coreflow_solver solver;
    /**
     * Fixed steps of EULER, HEUN and RK4; default 16, at most
     * `COREFLOW_MAX_SOLVER_STEPS`.
     */
    uint32_t steps;
    /**
     * Relative tolerance of DOPRI5; default 1e-5.
     */
    double rtol;
    /**
     * Absolute tolerance of DOPRI5; default 1e-5.
     */
    double atol;
    /**
     * `COREFLOW_IMPUTE_LEVEL_*`: the noise level at which `coreflow_impute`
     * conditions and draws; default `COREFLOW_IMPUTE_LEVEL_FITTED` (the
     * fitted sigma^2, the exact posterior under the model);
     * `COREFLOW_IMPUTE_LEVEL_OBSERVED` re-estimates the level on the
     * observed entries of each matrix (DESIGN.md section 4, "Multiple
     * imputation"). Ignored by `coreflow_sample` and `coreflow_log_prob`.
     * Added after ABI v1: an older host's smaller struct gets the default.
     */
    coreflow_impute_level impute_level;
} coreflow_sample_options;

/**
 * Result of every fallible function: `COREFLOW_OK` (0) or an error code.
 * Values are fixed and never reused.
 */
typedef int32_t coreflow_status;

/**
 * A read-only batch of `count` matrices of `rows x cols` doubles: element
 * `(i, r, c)` is `data[i * sample_stride + r * row_stride + c * col_stride]`
 * (strides in elements, may be negative). A NumPy C-order `(N, m, n)` array
 * has strides `(m*n, n, 1)`; a Julia `(m, n, N)` array has `(m*n, 1, m)`.
 */
typedef struct coreflow_matrices {
    /**
     * Element (0, 0, 0).
     */
    const double *data;
    /**
     * NULL = every entry observed; otherwise nonzero = observed, addressed
     * with the same strides as `data`.
     */
    const uint8_t *mask;
    /**
     * Number of matrices.
     */
    size_t count;
    /**
     * Rows of each matrix.
     */
    size_t rows;
    /**
     * Columns of each matrix.
     */
    size_t cols;
    /**
     * Distance in elements between consecutive matrices.
     */
    ptrdiff_t sample_stride;
    /**
     * Distance in elements between consecutive rows.
     */
    ptrdiff_t row_stride;
    /**
     * Distance in elements between consecutive columns.
     */
    ptrdiff_t col_stride;
} coreflow_matrices;

/**
 * Summary of a fitted model, filled by `coreflow_model_get_info`. Set
 * `struct_size = sizeof(coreflow_model_info)` before the call.
 */
typedef struct coreflow_model_info {
    /**
     * `sizeof(coreflow_model_info)`, set by the caller.
     */
    size_t struct_size;
    /**
     * Rows m of each matrix.
     */
    size_t rows;
    /**
     * Columns n of each matrix.
     */
    size_t cols;
    /**
     * Rank r of the row basis U.
     */
    size_t rank_rows;
    /**
     * Rank s of the column basis V.
     */
    size_t rank_cols;
    /**
     * Core dimension r * s.
     */
    size_t core_dim;
    /**
     * Dimension of the flow block: the number of leading principal
     * components of the cores the flow models (0 without a flow).
     */
    size_t flow_dim;
    /**
     * 1 when the mean was subtracted.
     */
    uint8_t centered;
    /**
     * 1 when a flow was trained.
     */
    uint8_t has_flow;
    /**
     * Width of the hidden layers (0 without a flow).
     */
    uint32_t flow_hidden;
    /**
     * Number of hidden layers (0 without a flow).
     */
    uint32_t flow_layers;
    /**
     * Number of training matrices.
     */
    size_t train_count;
    /**
     * Fraction of the (centered) training energy the cores hold.
     */
    double explained_energy;
    /**
     * Final flow training loss (NaN without a flow).
     */
    double final_loss;
    /**
     * Subspace refinement iterations performed.
     */
    uint32_t subspace_iterations;
    /**
     * 1 when the subspace refinement met its stopping rule.
     */
    uint8_t subspace_converged;
    /**
     * Final subspace objective sum ||U^T (X_i - Xbar) V||^2.
     */
    double subspace_objective;
    /**
     * 1 when the training data had missing entries.
     */
    uint8_t masked;
    /**
     * Completion rounds performed (0 for complete data).
     */
    uint32_t completion_iterations;
    /**
     * 1 when the completion met its stopping rule (1 for complete data).
     */
    uint8_t completion_converged;
    /**
     * Final masked objective (NaN for complete data).
     */
    double completion_objective;
    /**
     * Noise variance per entry estimated from the training residuals.
     */
    double noise_variance;
    /**
     * The fitted core model: -1 geometry only, else `COREFLOW_CORE_MODEL_FLOW`,
     * `COREFLOW_CORE_MODEL_GAUSSIAN` or `COREFLOW_CORE_MODEL_MIXTURE` (the
     * choice AUTO made).
     */
    coreflow_core_model core_model;
    /**
     * Flow block size k (leading principal components) by the energy rule
     * (also when the Gaussian was chosen).
     */
    size_t flow_block;
    /**
     * Held-out mean log-likelihood of the flow model (NaN when not fitted;
     * -infinity when some held-out core has no finite density under the
     * flow).
     */
    double heldout_loglik_flow;
    /**
     * Held-out mean log-likelihood of a full Gaussian on the cores.
     */
    double heldout_loglik_gaussian;
    /**
     * AUTO's sample-based check for the Gaussian kind: MMD^2 between its
     * draws and the held-out cores in the leading block, lower is better
     * (NaN when AUTO had no choice to make).
     */
    double heldout_mmd_gaussian;
    /**
     * The same for the flow kind (NaN when AUTO had no choice).
     */
    double heldout_mmd_flow;
    /**
     * Held-out mean log-likelihood of the Gaussian-mixture kind (NaN when
     * no mixture was fitted).
     */
    double heldout_loglik_mixture;
    /**
     * The MMD^2 check of the mixture kind (NaN when AUTO had no choice or
     * no mixture was fitted).
     */
    double heldout_mmd_mixture;
    /**
     * Leading block size k of the mixture selected by BIC (0 when none).
     */
    size_t mixture_block;
    /**
     * Its number of Gaussian components (0 when none).
     */
    size_t mixture_components;
    /**
     * Optimiser steps the flow was trained for: with a hold-out, the step
     * of the best held-out flow-matching loss on the split, which the
     * refit on all matrices repeats (0 without a flow).
     */
    size_t flow_train_steps;
    /**
     * Degrees of freedom of the Student-t tails of the noise law
     * (+infinity: Gaussian noise).
     */
    double noise_dof;
    /**
     * The noise law's tail scale tau^2 (1 for Gaussian noise).
     */
    double noise_tail_scale;
    /**
     * max / min over the entries of the noise variance profile
     * rho_a gamma_b (1 for a flat profile).
     */
    double noise_profile_spread;
    /**
     * Bound of the standardised noise of an imputation draw: the largest
     * standardised training residual (+infinity: none).
     */
    double noise_bound;
    /**
     * Smallest observed training value: drawn entries are censored to
     * [data_min, data_max] (-infinity: none).
     */
    double data_min;
    /**
     * Largest observed training value (+infinity: none).
     */
    double data_max;
} coreflow_model_info;

/**
 * Operations that take a workspace (32-bit; values below).
 */
typedef int32_t coreflow_op;

/**
 * A writable batch of matrices, addressed like [`coreflow_matrices`].
 * Distinct elements must not share memory (checked).
 */
typedef struct coreflow_matrices_mut {
    /**
     * Element (0, 0, 0).
     */
    double *data;
    /**
     * Number of matrices.
     */
    size_t count;
    /**
     * Rows of each matrix.
     */
    size_t rows;
    /**
     * Columns of each matrix.
     */
    size_t cols;
    /**
     * Distance in elements between consecutive matrices.
     */
    ptrdiff_t sample_stride;
    /**
     * Distance in elements between consecutive rows.
     */
    ptrdiff_t row_stride;
    /**
     * Distance in elements between consecutive columns.
     */
    ptrdiff_t col_stride;
} coreflow_matrices_mut;

/**
 * Options of `coreflow_metrics`. Fill with `coreflow_metrics_options_init`.
 */
typedef struct coreflow_metrics_options {
    /**
     * `sizeof(coreflow_metrics_options)`; set by `coreflow_metrics_options_init`.
     */
    size_t struct_size;
    /**
     * Worker threads; 0 = all cores (the default). The results do not
     * depend on it.
     */
    uint32_t threads;
    /**
     * Leading singular values in the top-k spectrum distance, at least 1;
     * default 10 (capped at min(rows, cols)).
     */
    uint32_t top_k;
} coreflow_metrics_options;

/**
 * The scores of a generated set against a real one, filled by
 * `coreflow_metrics`. Set `struct_size = sizeof(coreflow_metrics_result)`
 * before the call.
 */
typedef struct coreflow_metrics_result {
    /**
     * `sizeof(coreflow_metrics_result)`, set by the caller.
     */
    size_t struct_size;
    /**
     * Spectrum error `||mean_B sv - mean_A sv|| / ||mean_A sv||`.
     */
    double sve;
    /**
     * Mean over the leading `top_k` singular values of the 1-Wasserstein
     * distance between their distributions, relative to the real mean.
     */
    double topk_w1;
    /**
     * Unbiased MMD^2 of the Gaussian kernels at `h0 / 2`, `h0`, `2 h0`
     * (`h0` the median pairwise distance of the pooled set), averaged.
     */
    double mmd2;
    /**
     * `||mean_B X - mean_A X|| / rms_A`.
     */
    double mean_error;
    /**
     * Relative Frobenius error of the row covariance (rows x rows).
     */
    double rowcov_error;
    /**
     * Relative Frobenius error of the column covariance (cols x cols).
     */
    double colcov_error;
    /**
     * Balanced leave-one-out 1-nearest-neighbour accuracy of telling the
     * generated matrices from the real ones in the pooled set (Frobenius
     * distance; ties count as a random vote): 0.5 is ideal, 1 means fully
     * separable, below 0.5 the generated matrices sit on the real ones.
     */
    double nn_accuracy;
    /**
     * Distance-to-closest-record ratio: the median distance of the
     * generated matrices to their closest training matrix, over the same
     * median of the real (held-out) matrices; about 1 for fresh data, below
     * 1 points at copying the training set, 0 for copies. NaN without a
     * training set (`coreflow_metrics`, or `coreflow_metrics_with_train`
     * with `train` NULL).
     */
    double dcr_ratio;
} coreflow_metrics_result;

/**
 * `coreflow_sample`.
 */
#define COREFLOW_OP_SAMPLE 0

/**
 * `coreflow_encode`.
 */
#define COREFLOW_OP_ENCODE 1

/**
 * `coreflow_decode`.
 */
#define COREFLOW_OP_DECODE 2

/**
 * `coreflow_log_prob`.
 */
#define COREFLOW_OP_LOG_PROB 3

/**
 * `coreflow_complete`.
 */
#define COREFLOW_OP_COMPLETE 4

/**
 * `coreflow_impute`.
 */
#define COREFLOW_OP_IMPUTE 5

/**
 * Block-exact alternating eigen-updates (HOOI); the default.
 */
#define COREFLOW_SUBSPACE_METHOD_HOOI 0

/**
 * Riemannian conjugate gradient on the product of Stiefel manifolds.
 */
#define COREFLOW_SUBSPACE_METHOD_RIEMANNIAN 1

/**
 * Independent pairs (the default).
 */
#define COREFLOW_COUPLING_INDEPENDENT 0

/**
 * Exact optimal-transport assignment within each minibatch.
 */
#define COREFLOW_COUPLING_MINIBATCH_OT 1

/**
 * Explicit Euler, fixed steps.
 */
#define COREFLOW_SOLVER_EULER 0

/**
 * Heun (explicit trapezoid), fixed steps.
 */
#define COREFLOW_SOLVER_HEUN 1

/**
 * Classical fourth-order Runge-Kutta, fixed steps (the default).
 */
#define COREFLOW_SOLVER_RK4 2

/**
 * Dormand-Prince 5(4), adaptive steps controlled by rtol and atol.
 */
#define COREFLOW_SOLVER_DOPRI5 3

/**
 * The fitted level `sigma^2`: the exact posterior under the model (the
 * default).
 */
#define COREFLOW_IMPUTE_LEVEL_FITTED 0

/**
 * `lambda sigma^2`, the level re-estimated on the observed entries of each
 * matrix (`coreflow_impute`).
 */
#define COREFLOW_IMPUTE_LEVEL_OBSERVED 1

/**
 * Fitting the row and column subspaces.
 */
#define COREFLOW_STAGE_SUBSPACE 0

/**
 * Iterative completion of missing entries.
 */
#define COREFLOW_STAGE_COMPLETION 1

/**
 * Training the flow on the cores.
 */
#define COREFLOW_STAGE_FLOW 2

/**
 * The flow when it predicts held-out cores clearly better than the
 * Gaussian, else the Gaussian (then refitted on every core; without a
 * hold-out, the flow when there are at least 3 samples per flow
 * dimension) (the default).
 */
#define COREFLOW_CORE_MODEL_AUTO 0

/**
 * Always the flow.
 */
#define COREFLOW_CORE_MODEL_FLOW 1

/**
 * Always a full-covariance Gaussian on all core coordinates.
 */
#define COREFLOW_CORE_MODEL_GAUSSIAN 2

/**
 * Always a Gaussian mixture on a leading block of principal components
 * (block size and number of components selected by BIC), Gaussian on the
 * rest.
 */
#define COREFLOW_CORE_MODEL_MIXTURE 3

/**
 * Success.
 */
#define COREFLOW_OK 0

/**
 * A required pointer argument was NULL.
 */
#define COREFLOW_ERR_NULL 1

/**
 * An argument is outside its documented domain.
 */
#define COREFLOW_ERR_INVALID_ARGUMENT 2

/**
 * Dimensions or strides are inconsistent.
 */
#define COREFLOW_ERR_SHAPE 3

/**
 * NaN or infinity where finite values are required.
 */
#define COREFLOW_ERR_NON_FINITE 4

/**
 * The workspace is smaller than `coreflow_workspace_size` reported.
 */
#define COREFLOW_ERR_WORKSPACE 5

/**
 * Reading or writing a file failed.
 */
#define COREFLOW_ERR_IO 6

/**
 * A serialized model is corrupt or truncated.
 */
#define COREFLOW_ERR_FORMAT 7

/**
 * A serialized model or a struct has an unsupported version.
 */
#define COREFLOW_ERR_VERSION 8

/**
 * The progress callback asked to stop.
 */
#define COREFLOW_ERR_CANCELLED 9

/**
 * A computation produced a non-finite value or failed to converge.
 */
#define COREFLOW_ERR_NUMERICAL 10

/**
 * The model cannot do this (e.g. sampling from a geometry-only model).
 */
#define COREFLOW_ERR_UNSUPPORTED 11

/**
 * The host's allreduce callback returned nonzero (distributed fitting).
 */
#define COREFLOW_ERR_COMMUNICATION 12

/**
 * Memory for the request could not be obtained: the data, the options or
 * a loaded model ask for more than the machine has. Nothing was written.
 */
#define COREFLOW_ERR_OUT_OF_MEMORY 13

/**
 * A bug in the library (a caught panic or a broken invariant).
 */
#define COREFLOW_ERR_INTERNAL 99

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * ---- Version ---------------------------------------------------------------
 *
 * The ABI version of the library (`COREFLOW_ABI_VERSION` it was built with).
 *
 * Returns: the version number.
 * Ownership: nothing to release.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
uint32_t coreflow_abi_version(void);

/**
 * The library version, e.g. "0.1.0".
 *
 * Returns: a NUL-terminated string.
 * Ownership: a static string, never freed.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
const char *coreflow_version(void);

/**
 * ---- Options ---------------------------------------------------------------
 *
 * Fills `opts` with the defaults and sets `opts->struct_size`.
 *
 * NULL is ignored. The header's `coreflow_fit_options_init` macro calls
 * `coreflow_fit_options_init_sized` with the host's `sizeof *opts`.
 *
 * Returns: nothing.
 * Ownership: the caller owns `opts`.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
void coreflow_fit_options_init(struct coreflow_fit_options *opts);

/**
 * Writes the defaults into a host's `coreflow_fit_options` of `size` bytes.
 *
 * Writes the first `size` bytes of the default options (at most the
 * library's `sizeof(coreflow_fit_options)`) into `opts` and sets
 * `opts->struct_size` to the number of bytes written. Unlike
 * `coreflow_fit_options_init`, never writes past a host struct compiled
 * against an older, smaller header; the header's `coreflow_fit_options_init`
 * macro calls it with `sizeof *opts`. NULL, or a `size` smaller than
 * `sizeof(size_t)`, is ignored.
 *
 * Returns: nothing.
 * Ownership: the caller owns `opts`.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
void coreflow_fit_options_init_sized(struct coreflow_fit_options *opts, size_t size);

/**
 * Fills `o` with the defaults (RK4, 16 steps) and sets `o->struct_size`.
 *
 * NULL is ignored. The header's `coreflow_sample_options_init` macro calls
 * `coreflow_sample_options_init_sized` with the host's `sizeof *o`.
 *
 * Returns: nothing.
 * Ownership: the caller owns `o`.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
void coreflow_sample_options_init(struct coreflow_sample_options *o);

/**
 * Writes the defaults into a host's `coreflow_sample_options` of `size` bytes.
 *
 * The sized counterpart of `coreflow_sample_options_init` (see
 * `coreflow_fit_options_init_sized`).
 *
 * Returns: nothing.
 * Ownership: the caller owns `o`.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
void coreflow_sample_options_init_sized(struct coreflow_sample_options *o, size_t size);

/**
 * ---- Models: fit, inspect, release -----------------------------------------
 *
 * Fits a model to `train` and stores a new handle in `*out`.
 *
 * Error messages name the fields of `coreflow_fit_options`.
 *
 * Returns: `COREFLOW_OK`, or an error status with `*out` untouched:
 * `COREFLOW_ERR_INVALID_ARGUMENT` for an option beyond its cap
 * (`COREFLOW_MAX_*`) or a view larger than memory,
 * `COREFLOW_ERR_OUT_OF_MEMORY` when the fit needs more memory than can be
 * allocated (checked before the fit starts).
 * Ownership: the caller owns `*out` and releases it with
 * `coreflow_model_free`; `train` is only read during the call.
 * Allocates: yes, once, before its loops.
 * Thread safety: thread-safe (calls on different threads are
 * independent). Uses up to `opts->threads` threads, on a pool created for
 * the call and joined before it returns.
 */
coreflow_status coreflow_fit(const struct coreflow_matrices *train, const struct coreflow_fit_options *opts, struct coreflow_model **out);

/**
 * Releases a model.
 *
 * NULL is ignored.
 *
 * Returns: nothing.
 * Ownership: `model` and everything it held are released; the handle is
 * invalid after the call.
 * Allocates: never (it only frees).
 * Thread safety: thread-safe as long as no other thread still uses the model.
 */
void coreflow_model_free(struct coreflow_model *model);

/**
 * Writes the model summary into `*out`.
 *
 * The caller sets `out->struct_size = sizeof(coreflow_model_info)` first.
 *
 * Returns: `COREFLOW_OK` or an error status.
 * Ownership: the caller owns `*out`; the model is only read.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_model_get_info(const struct coreflow_model *m, struct coreflow_model_info *out);

/**
 * Copies the bases U and V of the model.
 *
 * U (rows x rank_rows) goes into `u` and V (cols x rank_cols) into `v`,
 * both column-major.
 *
 * Returns: `COREFLOW_OK` or an error status.
 * Ownership: the caller owns both buffers.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_model_subspaces(const struct coreflow_model *m, double *u, double *v);

/**
 * Copies the subtracted mean (rows x cols, column-major) into `mean`.
 *
 * Zeros when the model is not centered.
 *
 * Returns: `COREFLOW_OK` or an error status.
 * Ownership: the caller owns `mean`.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_model_mean(const struct coreflow_model *m, double *mean);

/**
 * ---- Per-matrix operations (caller-provided workspace) ---------------------
 *
 * Stores in `*bytes` the workspace size of calls of `op`.
 *
 * The size serves any call of `op` on model `m` with at most `count`
 * matrices and options `o` (NULL = defaults). Any pointer alignment of the
 * workspace is accepted.
 *
 * Returns: `COREFLOW_OK` or an error status.
 * Ownership: the caller owns `*bytes` and, later, the workspace.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_workspace_size(const struct coreflow_model *m, coreflow_op op, size_t count, const struct coreflow_sample_options *o, size_t *bytes);

/**
 * Writes the cores `C_j = U^T (X_j - Xbar) V` of the matrices of `input` into `cores`.
 *
 * `cores` receives `input->count` blocks of `rank_rows * rank_cols`
 * values, each the column-major core. `ws` is a workspace of `ws_bytes`
 * bytes (`coreflow_workspace_size` with `COREFLOW_OP_ENCODE`).
 *
 * Returns: `COREFLOW_OK`, or an error status with `cores` untouched
 * (`COREFLOW_ERR_NUMERICAL` when a core would not be finite).
 * Ownership: the caller owns all buffers.
 * Allocates: never.
 * Thread safety: thread-safe; runs on the calling thread only.
 */
coreflow_status coreflow_encode(const struct coreflow_model *m, const struct coreflow_matrices *input, double *cores, void *ws, size_t ws_bytes);

/**
 * Writes `X_j = U C_j V^T + Xbar` into the matrices of `out` from `cores`.
 *
 * `cores` holds `out->count` column-major cores of `rank_rows * rank_cols`
 * values. `ws` is a workspace of `ws_bytes` bytes (`COREFLOW_OP_DECODE`).
 *
 * Returns: `COREFLOW_OK`, or an error status with `out` untouched
 * (`COREFLOW_ERR_NUMERICAL` for a core too large to decode into finite
 * values).
 * Ownership: the caller owns all buffers.
 * Allocates: never.
 * Thread safety: thread-safe; runs on the calling thread only.
 */
coreflow_status coreflow_decode(const struct coreflow_model *m, const double *cores, struct coreflow_matrices_mut *out, void *ws, size_t ws_bytes);

/**
 * Completes partially observed matrices.
 *
 * `out` receives each matrix of `partial` with its missing entries (mask
 * zero, or NaN when `partial->mask` is NULL) replaced by the model's MAP
 * completion (the observed entries weighted by the inverse of the noise
 * law's variance profile, as in `coreflow_impute`); observed entries are
 * copied bitwise. `out` must not overlap
 * `partial`. `ws` is a workspace of `ws_bytes` bytes
 * (`COREFLOW_OP_COMPLETE`).
 *
 * Returns: `COREFLOW_OK`, or an error status with `out` untouched (every
 * matrix is completed and checked before the first is written).
 * Ownership: the caller owns all buffers.
 * Allocates: never.
 * Thread safety: thread-safe; runs on the calling thread only.
 */
coreflow_status coreflow_complete(const struct coreflow_model *m, const struct coreflow_matrices *partial, struct coreflow_matrices_mut *out, void *ws, size_t ws_bytes);

/**
 * Draws `out->count` new matrices into `out`.
 *
 * Matrix `j` is sample number `first_index + j` of stream `seed`, so a run
 * split into several calls, or spread over threads, gives bitwise the same
 * matrices. `o` selects the ODE solver (NULL = RK4 with 16 steps). `ws` is
 * a workspace of `ws_bytes` bytes (`COREFLOW_OP_SAMPLE`). `out->count = 0`
 * needs no workspace.
 *
 * Returns: `COREFLOW_OK`, or an error status with `out` untouched (every
 * sample is checked before `out` is written): `COREFLOW_ERR_UNSUPPORTED`
 * for a model fitted with `flow_steps = 0`, `COREFLOW_ERR_NUMERICAL` for a
 * sample that would not be finite.
 * Ownership: the caller owns all buffers.
 * Allocates: never.
 * Thread safety: thread-safe; runs on the calling thread only.
 */
coreflow_status coreflow_sample(const struct coreflow_model *m, const struct coreflow_sample_options *o, uint64_t seed, uint64_t first_index, struct coreflow_matrices_mut *out, void *ws, size_t ws_bytes);

/**
 * Writes the log-density of each matrix of `input` into `log_prob`.
 *
 * `log_prob[j]` is the log-density of the core of matrix `j` of `input`
 * under the model (a density over matrices in the learned geometry), and
 * `residual[j]` (when `residual` is not NULL) its distance from that
 * geometry, `||Y - U U^T Y V V^T|| / ||Y||` with `Y = X - Xbar` (computed
 * with scaled sums of squares: finite inputs give finite residuals). `o`
 * selects the solver (NULL = RK4, 16 steps, exact divergence). `ws` is a
 * workspace of `ws_bytes` bytes (`COREFLOW_OP_LOG_PROB`).
 *
 * Returns: `COREFLOW_OK` with every value finite, or an error status
 * (`COREFLOW_ERR_NUMERICAL` when some value would not be finite) with
 * `log_prob` and `residual` untouched.
 * Ownership: the caller owns all buffers.
 * Allocates: never.
 * Thread safety: thread-safe; runs on the calling thread only.
 */
coreflow_status coreflow_log_prob(const struct coreflow_model *m, const struct coreflow_sample_options *o, const struct coreflow_matrices *input, double *log_prob, double *residual, void *ws, size_t ws_bytes);

/**
 * ---- Persistence -----------------------------------------------------------
 *
 * Writes the model to the file `path` (versioned, checksummed).
 *
 * Returns: `COREFLOW_OK` or an error status (`COREFLOW_ERR_IO` when the file
 * cannot be written).
 * Ownership: the caller owns `path`; the model is only read.
 * Allocates: yes, the file image.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_model_save(const struct coreflow_model *m, const char *path);

/**
 * Reads a model from the file `path` and stores a new handle in `*out`.
 *
 * Returns: `COREFLOW_OK`, or an error status with `*out` untouched:
 * `COREFLOW_ERR_IO` (unreadable file), `COREFLOW_ERR_FORMAT` (corrupt or
 * truncated, or a model the maths cannot use: bases that are not
 * orthonormal, unbounded parameters), `COREFLOW_ERR_VERSION` (newer format).
 * Ownership: the caller owns `*out` (release with `coreflow_model_free`).
 * Allocates: yes, the model; starts no thread.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_model_load(const char *path, struct coreflow_model **out);

/**
 * Serializes the model into `buf` and stores the image length in `*len`.
 *
 * `buf` has a capacity of `cap` bytes. With `buf` NULL, only `*len` is
 * written (ask for the length first). A `cap` smaller than the length gives
 * `COREFLOW_ERR_INVALID_ARGUMENT` and writes only `*len`.
 *
 * Returns: `COREFLOW_OK` or an error status.
 * Ownership: the caller owns `buf`.
 * Allocates: yes, a temporary image.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_model_to_bytes(const struct coreflow_model *m, uint8_t *buf, size_t cap, size_t *len);

/**
 * Reads a model from `len` bytes at `buf` and stores a new handle in `*out`.
 *
 * Never reads outside `buf[0..len]`.
 *
 * Returns: `COREFLOW_OK`, or an error status with `*out` untouched
 * (`COREFLOW_ERR_FORMAT`, also for a model the maths cannot use;
 * `COREFLOW_ERR_VERSION`).
 * Ownership: the caller owns `buf` and `*out` (release with
 * `coreflow_model_free`).
 * Allocates: yes, the model; starts no thread.
 * Thread safety: thread-safe.
 */
coreflow_status coreflow_model_from_bytes(const uint8_t *buf, size_t len, struct coreflow_model **out);

/**
 * Multiple imputation: draws of the missing entries given the observed ones.
 *
 * Matrix `j` of `out` is draw number `first_index + j` of stream `seed`
 * from the model's law of matrix `j` of `partial` given its observed
 * entries (mask nonzero, or not NaN when `partial->mask` is NULL): the core
 * from the core model conditioned on the observed entries under the
 * model's noise law (variance `noise_variance * rho_a * gamma_b`, a profile
 * over rows and columns fitted with the model: the observed entries are
 * weighted by `1 / (rho_a gamma_b)`), then `U C V^T + Xbar` plus independent
 * noise of that law on the missing entries: Gaussian, or Student-t with
 * `noise_dof` degrees of freedom (`coreflow_model_info`), truncated at
 * `noise_bound` standard deviations (the largest standardised training
 * residual; a value beyond it is drawn again), and each drawn entry is
 * censored to the training range `[data_min, data_max]`: a draw holds no
 * value the training data do not support (files of format version 5 and
 * older have neither bound). Observed entries are copied bitwise. A `partial` with `sample_stride = 0` repeats one matrix
 * (many draws of the same matrix; it is conditioned once). Exact for the
 * Gaussian and mixture core models; for the flow, importance resampling
 * from the Gaussian fit of the cores (64 proposals per draw). `o` selects
 * the ODE solver as in `coreflow_sample` (NULL = defaults) and, by
 * `o->impute_level`, the noise level: `COREFLOW_IMPUTE_LEVEL_FITTED` (the
 * default) conditions and draws at the fitted sigma^2, the exact posterior
 * under the model; `COREFLOW_IMPUTE_LEVEL_OBSERVED` at `lambda sigma^2`,
 * `lambda` re-estimated on the observed entries of each matrix from their
 * residuals against the posterior mean, shrunk towards 1 by 10
 * pseudo-observations (profile and tails unchanged). Draws depend
 * only on (seed, index): a run split into calls or spread over threads
 * gives bitwise the same matrices. `out` must not overlap `partial`. `ws`
 * is a workspace of `ws_bytes` bytes (`COREFLOW_OP_IMPUTE`).
 *
 * Returns: `COREFLOW_OK`, or an error status with `out` untouched (every
 * draw is computed and checked before the first is written):
 * `COREFLOW_ERR_UNSUPPORTED` for a model fitted with `flow_steps = 0`,
 * `COREFLOW_ERR_INVALID_ARGUMENT` for an `o->impute_level` that is not a
 * `COREFLOW_IMPUTE_LEVEL_*` value, `COREFLOW_ERR_NUMERICAL` when a draw
 * would not be finite.
 * Ownership: the caller owns all buffers.
 * Allocates: never.
 * Thread safety: thread-safe; runs on the calling thread only.
 */
coreflow_status coreflow_impute(const struct coreflow_model *m, const struct coreflow_sample_options *o, uint64_t seed, uint64_t first_index, const struct coreflow_matrices *partial, struct coreflow_matrices_mut *out, void *ws, size_t ws_bytes);

/**
 * ---- Metrics ---------------------------------------------------------------
 *
 * Fills `o` with the defaults (all cores, top_k 10) and sets `o->struct_size`.
 *
 * NULL is ignored. The header's `coreflow_metrics_options_init` macro
 * calls `coreflow_metrics_options_init_sized` with the host's `sizeof *o`.
 *
 * Returns: nothing.
 * Ownership: the caller owns `o`.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
void coreflow_metrics_options_init(struct coreflow_metrics_options *o);

/**
 * Writes the defaults into a host's `coreflow_metrics_options` of `size` bytes.
 *
 * The sized counterpart of `coreflow_metrics_options_init` (see
 * `coreflow_fit_options_init_sized`).
 *
 * Returns: nothing.
 * Ownership: the caller owns `o`.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
void coreflow_metrics_options_init_sized(struct coreflow_metrics_options *o, size_t size);

/**
 * Scores the `generated` set against the `real` one and writes the scores into `*out`.
 *
 * The metrics of the design (section 6); the caller sets
 * `out->struct_size = sizeof(coreflow_metrics_result)` first. Both sets
 * hold complete (mask NULL), finite matrices of the same size, at least 2
 * each (the unbiased MMD^2 needs pairs); their counts may differ. `o`
 * (NULL = defaults) sets the threads and top_k. `out->dcr_ratio` is NaN:
 * the closest-record ratio needs the training set
 * (`coreflow_metrics_with_train`). A host built against an older header (a
 * smaller `out->struct_size`) gets the fields its struct holds.
 *
 * Returns: `COREFLOW_OK` or an error status, `*out` untouched on failure.
 * Ownership: the caller owns all buffers, only read (or written) during the
 * call.
 * Allocates: yes (the metrics are not a hot path).
 * Thread safety: thread-safe. Uses up to `o->threads` threads.
 */
coreflow_status coreflow_metrics(const struct coreflow_matrices *real, const struct coreflow_matrices *generated, const struct coreflow_metrics_options *o, struct coreflow_metrics_result *out);

/**
 * `coreflow_metrics` with the training set the generator was fitted on.
 *
 * Adds the distance-to-closest-record ratio (`out->dcr_ratio`). `train`
 * holds complete (mask NULL), finite matrices of the size of `real`, at
 * least 1; NULL means none (then `out->dcr_ratio` is NaN, as with
 * `coreflow_metrics`). Everything else as `coreflow_metrics`.
 *
 * Returns: `COREFLOW_OK` or an error status, `*out` untouched on failure.
 * Ownership: the caller owns all buffers, only read (or written) during the
 * call.
 * Allocates: yes (the metrics are not a hot path).
 * Thread safety: thread-safe. Uses up to `o->threads` threads.
 */
coreflow_status coreflow_metrics_with_train(const struct coreflow_matrices *real, const struct coreflow_matrices *generated, const struct coreflow_matrices *train, const struct coreflow_metrics_options *o, struct coreflow_metrics_result *out);

/**
 * ---- Errors ----------------------------------------------------------------
 *
 * The message of the last failed call on the calling thread.
 *
 * It names the bad argument and the reason.
 *
 * Returns: the message; "" when the last call succeeded.
 * Ownership: the string belongs to the library; it stays valid until the next
 * CoreFlow call on the same thread.
 * Allocates: never.
 * Thread safety: thread-safe (one message per thread).
 */
const char *coreflow_last_error_message(void);

/**
 * A static name for a status code, e.g. "COREFLOW_ERR_SHAPE".
 *
 * Unknown codes give "COREFLOW_UNKNOWN_STATUS".
 *
 * Returns: the name.
 * Ownership: a static string, never freed.
 * Allocates: never.
 * Thread safety: thread-safe.
 */
const char *coreflow_status_name(coreflow_status status);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* COREFLOW_H */

/*
 * The _init functions write the library's full struct; these macros pass the
 * size the host was compiled with, so a host built against an older header
 * stays safe with a newer library. (&coreflow_fit_options_init still names
 * the function.)
 */
#ifndef COREFLOW_INIT_MACROS
#define COREFLOW_INIT_MACROS
#define coreflow_fit_options_init(opts) coreflow_fit_options_init_sized((opts), sizeof *(opts))
#define coreflow_sample_options_init(o) coreflow_sample_options_init_sized((o), sizeof *(o))
#define coreflow_metrics_options_init(o) coreflow_metrics_options_init_sized((o), sizeof *(o))
#endif
