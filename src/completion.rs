//! Incomplete data: masked fitting by iterative completion, and completion
//! of new matrices under a fitted model (DESIGN.md section 4).
//!
//! # Masked fit
//!
//! Objective, with P_i keeping the observed entries of sample i:
//!
//! ```text
//! F(U, V, {C_i}) = sum_i ||P_i(X_i - U C_i V^T)||^2 + lambda sum_i ||C_i||^2.
//! ```
//!
//! Missing entries start at the mean of the observed entries of their column
//! (over all samples; the row mean where a column is never observed; the
//! global mean where neither is). Then, an EM / majorise-minimise scheme:
//!
//! 1. E-step: `Z_i = P_i(X_i) + P_i^perp(U C_i V^T)`;
//! 2. M-step on the completed `Z_i`: a HOOI sweep (default) or several
//!    Riemannian conjugate-gradient steps from the current bases;
//! 3. cores `C_i = U^T Z_i V / (1 + lambda)`.
//!
//! With `Z` fixed, `G = sum ||Z_i - U C_i V^T||^2 + lambda ||C_i||^2` equals F
//! at the current iterate (the missing residuals are zero) and majorises F
//! everywhere; minimising C in closed form leaves
//! `G = sum ||Z_i||^2 - sum ||U^T Z_i V||^2 / (1 + lambda)`, which the
//! M-step decreases. So F never increases. Iteration stops when the relative
//! decrease of F is below `tol`, or after `max_iter` rounds.
//!
//! With centering, the mean is taken over the observed entries of each
//! position (the initial fill where a position is never observed), and the
//! scheme runs on `X_i - Xbar`.
//!
//! # Completing a new matrix
//!
//! The MAP core under the Gaussian prior of the training cores,
//! `c ~ N(mu, Sigma)`, and noise variance `sigma^2` estimated from the
//! training residuals:
//!
//! ```text
//! min_c ||P(Y - U C V^T)||^2 / sigma^2 + (c - mu)^T Sigma^-1 (c - mu).
//! ```
//!
//! The prior is held in low rank ([`CorePrior`]): with the principal
//! directions `Q` (`d x q`, `q = min(d, N)`, from [`crate::pca`]) and
//! variances `lambda_j` of the N training cores,
//! `Sigma = Q diag(lambda) Q^T + delta I`, `delta = 1e-6 x` the mean core
//! variance. It is exactly the sample covariance plus the ridge, whose rank
//! is at most `N - 1`, in `d q` numbers instead of `d^2`; inverse and square
//! root are explicit:
//!
//! ```text
//! Sigma^-1  = Q diag(1 / (lambda + delta)) Q^T + (I - Q Q^T) / delta,
//! Sigma^1/2 = Q diag(sqrt(lambda + delta)) Q^T + sqrt(delta) (I - Q Q^T)
//!           = sqrt(delta) I + Q diag(sqrt(lambda + delta) - sqrt(delta)) Q^T.
//! ```
//!
//! With `c = mu + S z`, `S = Sigma^1/2` (symmetric), the problem is the
//! well-conditioned system
//! `(I + S A^T P A S / sigma^2) z = S A^T P (Y - A mu) / sigma^2`,
//! `A c = U C V^T`, solved by conjugate gradients: each product costs two
//! small matrix products with U and V and two with `Q` (`O(d q)`). The
//! result is `P(Y) + P^perp(U C V^T)`: observed entries come back bitwise
//! unchanged.

use crate::batch::{MaskRef, MatrixBatch};
use crate::error::{Error, Result};
use crate::numerics::{
    self, gemm, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch, MemBuffer,
    MemStack, Par, StackReq,
};
use crate::reduce::Reducer;
use crate::subspace::{self, SubspaceMethod, SubspaceOptions};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef};

/// Which entries of a matrix are observed.
#[derive(Copy, Clone, Debug)]
pub enum Observed<'a> {
    /// Every entry.
    All,
    /// Nonzero mask entries.
    Mask(MaskRef<'a>),
    /// Every entry that is not NaN.
    NotNan,
}

impl Observed<'_> {
    #[inline]
    fn at(&self, x: MatRef<'_, f64>, i: usize, j: usize) -> bool {
        match self {
            Observed::All => true,
            Observed::Mask(m) => m.observed(i, j),
            Observed::NotNan => !x[(i, j)].is_nan(),
        }
    }
}

/// The observation pattern of sample `i` of a batch.
pub fn observed_of<'a>(data: &MatrixBatch<'a>, i: usize, nan_is_missing: bool) -> Observed<'a> {
    match data.mask(i) {
        Some(m) => Observed::Mask(m),
        None if nan_is_missing => Observed::NotNan,
        None => Observed::All,
    }
}

/// Checks that observed values are finite (NaN allowed only where missing).
pub fn check_observed_finite(data: &MatrixBatch, nan_is_missing: bool, what: &str) -> Result<()> {
    for i in 0..data.count() {
        let x = data.sample(i);
        let obs = observed_of(data, i, nan_is_missing);
        for c in 0..data.cols() {
            for r in 0..data.rows() {
                let v = x[(r, c)];
                let ok = if obs.at(x, r, c) {
                    v.is_finite()
                } else {
                    !v.is_infinite() || matches!(obs, Observed::Mask(_))
                };
                if !ok {
                    let hint = if v.is_nan() && !nan_is_missing {
                        " (set nan_is_missing to treat NaN as missing)"
                    } else {
                        ""
                    };
                    return Err(Error::non_finite(format!(
                        "{what}: matrix {i} has the non-finite value {v} at row {r}, column {c}{hint}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Options of the masked fit.
#[derive(Clone, Debug)]
pub struct CompletionOptions {
    /// Round limit of the iterative completion, at least 1. Default 100.
    pub max_iter: usize,
    /// Relative decrease of F counted as converged, non-negative. Default 1e-8.
    pub tol: f64,
    /// Ridge lambda on the cores (dimensionless), non-negative. Default 1e-8.
    pub ridge: f64,
    /// NaN entries stand for missing ones (when no mask is given).
    pub nan_is_missing: bool,
    /// Riemannian inner steps per round when the M-step is Riemannian.
    /// Default 10 (one step per round converges about 10x slower).
    pub inner_steps: usize,
}

impl Default for CompletionOptions {
    fn default() -> Self {
        Self {
            max_iter: 100,
            tol: 1e-8,
            ridge: 1e-8,
            nan_is_missing: false,
            inner_steps: 10,
        }
    }
}

impl CompletionOptions {
    /// Checks every option; the message names the field.
    pub fn check(&self) -> Result<()> {
        if self.max_iter == 0 {
            return Err(Error::invalid(
                "opts.completion_max_iter: must be at least 1",
            ));
        }
        if !(self.tol >= 0.0) || !self.tol.is_finite() {
            return Err(Error::invalid(format!(
                "opts.completion_tol: {} must be finite and non-negative",
                self.tol
            )));
        }
        if !(self.ridge >= 0.0) || !self.ridge.is_finite() {
            return Err(Error::invalid(format!(
                "opts.ridge: {} must be finite and non-negative",
                self.ridge
            )));
        }
        if self.inner_steps == 0 {
            return Err(Error::invalid("opts.inner_steps: must be at least 1"));
        }
        Ok(())
    }
}

/// The result of a masked fit.
#[derive(Clone, Debug)]
pub struct CompletionFit {
    /// Row basis (canonical).
    pub u: Mat<f64>,
    /// Column basis (canonical).
    pub v: Mat<f64>,
    /// The subtracted mean, when centering.
    pub mean: Option<Mat<f64>>,
    /// Completed training matrices minus the mean, C-order (N, m, n).
    pub completed: Vec<f64>,
    /// F after every round (the masked objective never increases).
    pub history: Vec<f64>,
    /// Rounds performed.
    pub iterations: usize,
    /// Whether the relative decrease fell below `tol`.
    pub converged: bool,
    /// Number of observed entries over all samples.
    pub observed_count: f64,
    /// Sum of squared residuals on the observed entries at the end.
    pub residual_ss: f64,
    /// HOSVD spectra of the initially filled data.
    pub row_eigenvalues: Vec<f64>,
    /// HOSVD spectra of the initially filled data.
    pub col_eigenvalues: Vec<f64>,
}

/// Fills the owned buffer `z` (C-order) with the observed values and the
/// initial fill of section 4, and returns (mean or None, observed count).
fn initial_fill(
    data: &MatrixBatch,
    nan_is_missing: bool,
    center: bool,
    z: &mut [f64],
    reducer: &dyn Reducer,
) -> Result<(Option<Mat<f64>>, f64)> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    // Per-position sums and counts of observed values, completed across
    // participants in one reduction: [pos sums (m n) | pos counts (m n)].
    let mut stats = vec![0.0; 2 * m * n];
    for i in 0..count {
        let x = data.sample(i);
        let obs = observed_of(data, i, nan_is_missing);
        for b in 0..n {
            for a in 0..m {
                if obs.at(x, a, b) {
                    stats[a + b * m] += x[(a, b)];
                    stats[m * n + a + b * m] += 1.0;
                }
            }
        }
    }
    reducer.sum_in_place(&mut stats)?;
    let (sums, counts) = stats.split_at(m * n);
    let total_obs: f64 = counts.iter().sum();
    if total_obs == 0.0 {
        return Err(Error::invalid("train: no entry of any matrix is observed"));
    }
    let global = sums.iter().sum::<f64>() / total_obs;
    let col_mean: Vec<Option<f64>> = (0..n)
        .map(|b| {
            let (s, c) = (0..m).fold((0.0, 0.0), |(s, c), a| {
                (s + sums[a + b * m], c + counts[a + b * m])
            });
            (c > 0.0).then(|| s / c)
        })
        .collect();
    let row_mean: Vec<Option<f64>> = (0..m)
        .map(|a| {
            let (s, c) = (0..n).fold((0.0, 0.0), |(s, c), b| {
                (s + sums[a + b * m], c + counts[a + b * m])
            });
            (c > 0.0).then(|| s / c)
        })
        .collect();
    let fill = |a: usize, b: usize| col_mean[b].or(row_mean[a]).unwrap_or(global);
    let mean = center.then(|| {
        Mat::from_fn(m, n, |a, b| {
            let c = counts[a + b * m];
            if c > 0.0 {
                sums[a + b * m] / c
            } else {
                fill(a, b)
            }
        })
    });
    for i in 0..count {
        let x = data.sample(i);
        let obs = observed_of(data, i, nan_is_missing);
        let zi = &mut z[i * m * n..(i + 1) * m * n];
        for a in 0..m {
            for b in 0..n {
                let v = if obs.at(x, a, b) {
                    x[(a, b)]
                } else {
                    fill(a, b)
                };
                zi[a * n + b] = v - mean.as_ref().map_or(0.0, |mm| mm[(a, b)]);
            }
        }
    }
    Ok((mean, total_obs))
}

fn c_order_batch(z: &[f64], count: usize, m: usize, n: usize) -> MatrixBatch<'_> {
    MatrixBatch::from_c_order(z, count, m, n).expect("internal: owned C-order buffer")
}

/// Workspace for [`e_step`] with `par` workers.
pub fn e_step_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let t = par.degree().max(1);
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(2 * t),
        StackReq::new_aligned::<u8>(
            e_step_worker_bytes(rows, cols, rank_rows, rank_cols) * t,
            numerics::ALIGN,
        ),
    ])
}

/// Scratch bytes of one E-step worker (any alignment).
fn e_step_worker_bytes(rows: usize, cols: usize, rank_rows: usize, rank_cols: usize) -> usize {
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(rank_rows, rank_cols),
        temp_mat_scratch::<f64>(rows, rank_cols),
        temp_mat_scratch::<f64>(rows, cols),
    ])
    .unaligned_bytes_required()
}
/// A raw pointer to the completed buffer, shared by workers that touch
/// disjoint samples.
#[derive(Copy, Clone)]
struct SharedSlice(*mut f64, usize);
// SAFETY: workers write disjoint sample blocks and the scope joins them.
unsafe impl Send for SharedSlice {}
unsafe impl Sync for SharedSlice {}

impl SharedSlice {
    // A method (not field access) so closures capture the whole Sync wrapper.
    fn ptr(&self) -> *mut f64 {
        self.0
    }
}

/// One E-step over all local samples: with `C_i = U^T Z_i V / (1 + lambda)`,
/// evaluates the masked objective F and replaces the missing entries of
/// `Z_i` by those of `U C_i V^T` (only the missing entries are predicted).
/// `z` holds the centered completed data in C-order; `data` the original
/// observations. Samples are split over `par` workers. Returns the local
/// `(F, observed residual sum of squares)`.
#[allow(clippy::too_many_arguments)]
pub fn e_step(
    data: &MatrixBatch,
    nan_is_missing: bool,
    mean: Option<MatRef<'_, f64>>,
    z: &mut [f64],
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    ridge: f64,
    par: Par,
    stack: &mut MemStack,
) -> (f64, f64) {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let (r, s) = (u.ncols(), v.ncols());
    let t = par.degree().clamp(1, count.max(1));
    // Per-worker partial sums and scratch, carved once from the workspace.
    let (sums, stack) = temp_slice(2 * t, 0.0f64, stack);
    let worker_bytes = e_step_worker_bytes(m, n, r, s);
    let (scratch, _) = stack.make_aligned_uninit::<u8>(worker_bytes * t, numerics::ALIGN);
    let shared_z = SharedSlice(z.as_mut_ptr(), z.len());
    let shared_sums = SharedSlice(sums.as_mut_ptr(), sums.len());
    let shared_scratch = SharedSlice(scratch.as_mut_ptr() as *mut f64, scratch.len());
    numerics::parallel_parts(count, t, &|k, range| {
        // SAFETY: worker k alone uses bytes [k w, (k + 1) w) of the scratch,
        // sums[2k..2k+2] and the sample blocks of its range of z.
        let ws = unsafe {
            std::slice::from_raw_parts_mut(
                (shared_scratch.ptr() as *mut std::mem::MaybeUninit<u8>).add(k * worker_bytes),
                worker_bytes,
            )
        };
        let stack = MemStack::new(ws);
        let (mut c, stack) = temp_mat_zeroed::<f64>(r, s, stack);
        let (mut t1, stack) = temp_mat_zeroed::<f64>(m, s, stack);
        let (mut pred, _) = temp_mat_zeroed::<f64>(m, n, stack);
        let (mut f, mut rss) = (0.0, 0.0);
        for i in range {
            debug_assert!((i + 1) * m * n <= shared_z.1);
            let zi =
                unsafe { std::slice::from_raw_parts_mut(shared_z.ptr().add(i * m * n), m * n) };
            let zm = MatRef::from_row_major_slice(zi, m, n);
            gemm(t1.rb_mut(), Accum::Replace, zm, v, 1.0, Par::Seq);
            gemm(
                c.rb_mut(),
                Accum::Replace,
                u.transpose(),
                t1.rb(),
                1.0 / (1.0 + ridge),
                Par::Seq,
            );
            f += ridge * c.squared_norm_l2();
            gemm(t1.rb_mut(), Accum::Replace, u, c.rb(), 1.0, Par::Seq);
            gemm(
                pred.rb_mut(),
                Accum::Replace,
                t1.rb(),
                v.transpose(),
                1.0,
                Par::Seq,
            );
            let x = data.sample(i);
            let obs = observed_of(data, i, nan_is_missing);
            for a in 0..m {
                let zrow = &mut zi[a * n..(a + 1) * n];
                for (b, zab) in zrow.iter_mut().enumerate() {
                    if obs.at(x, a, b) {
                        let centered = x[(a, b)] - mean.map_or(0.0, |mm| mm[(a, b)]);
                        let d = centered - pred[(a, b)];
                        rss += d * d;
                    } else {
                        *zab = pred[(a, b)];
                    }
                }
            }
        }
        unsafe {
            *shared_sums.ptr().add(2 * k) = f + rss;
            *shared_sums.ptr().add(2 * k + 1) = rss;
        }
    });
    let (mut f, mut rss) = (0.0, 0.0);
    for k in 0..t {
        f += sums[2 * k];
        rss += sums[2 * k + 1];
    }
    (f, rss)
}

/// Fits U, V to incomplete data by iterative completion (see the module
/// docs). `sub` gives the ranks, energy, centering, M-step method and
/// threads; `progress(round, max_rounds, F)` returns false to cancel.
pub fn fit_masked(
    data: &MatrixBatch,
    sub: &SubspaceOptions,
    opts: &CompletionOptions,
    reducer: &dyn Reducer,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
) -> Result<CompletionFit> {
    opts.check()?;
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    if count == 0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    let checked = sub.check(m, n)?;
    let sub = checked.options().clone();
    check_observed_finite(data, opts.nan_is_missing, "train")?;
    let par = numerics::par_for_threads(sub.threads);

    // The one allocation of the fit's size: the completed matrices.
    let mut z = vec![0.0; count * m * n];
    let (mean, observed_count) =
        initial_fill(data, opts.nan_is_missing, sub.center, &mut z, reducer)?;

    // HOSVD of the filled matrices (already centered: no mean here).
    let mut row_vecs = Mat::<f64>::zeros(m, m);
    let mut col_vecs = Mat::<f64>::zeros(n, n);
    let mut row_vals = vec![0.0; m];
    let mut col_vals = vec![0.0; n];
    {
        let mut buf = MemBuffer::new(subspace::hosvd_init_scratch(m, n, par));
        subspace::hosvd_init(
            &c_order_batch(&z, count, m, n),
            None,
            row_vecs.as_mut(),
            &mut row_vals,
            col_vecs.as_mut(),
            &mut col_vals,
            reducer,
            par,
            MemStack::new(&mut buf),
        )?;
    }
    let r = if sub.rank_rows == 0 {
        subspace::rank_by_energy(&row_vals, sub.energy)
    } else {
        sub.rank_rows
    };
    let s = if sub.rank_cols == 0 {
        subspace::rank_by_energy(&col_vals, sub.energy)
    } else {
        sub.rank_cols
    };
    let mut u = row_vecs.get(.., ..r).to_owned();
    let mut v = col_vecs.get(.., ..s).to_owned();
    drop((row_vecs, col_vecs));

    let m_step_req = match sub.method {
        SubspaceMethod::Hooi => subspace::hooi_sweep_scratch(count, m, n, r, s, par),
        SubspaceMethod::Riemannian => subspace::riemannian_solve_scratch(count, m, n, r, s, par),
    };
    let mut buf = MemBuffer::new(StackReq::any_of(&[
        m_step_req,
        e_step_scratch(m, n, r, s, par),
    ]));
    let stack = MemStack::new(&mut buf);

    let mut history = Vec::with_capacity(opts.max_iter + 1);
    let mut converged = false;
    let mut iterations = 0;
    let mut rss;
    let mut f_prev = f64::INFINITY;
    loop {
        let (f_local, rss_local) = e_step(
            data,
            opts.nan_is_missing,
            mean.as_ref().map(|x| x.as_ref()),
            &mut z,
            u.as_ref(),
            v.as_ref(),
            opts.ridge,
            par,
            stack,
        );
        let mut fr = [f_local, rss_local];
        reducer.sum_in_place(&mut fr)?;
        let f = fr[0];
        rss = fr[1];
        if !f.is_finite() {
            return Err(Error::numerical("masked objective became non-finite"));
        }
        history.push(f);
        if !progress(iterations, opts.max_iter, f) {
            return Err(Error::cancelled("completion"));
        }
        if f_prev.is_finite() && (f_prev - f) <= opts.tol * f_prev.abs().max(f64::MIN_POSITIVE) {
            converged = true;
            break;
        }
        if iterations == opts.max_iter {
            break;
        }
        f_prev = f;
        match sub.method {
            SubspaceMethod::Hooi => {
                subspace::hooi_sweep(
                    &c_order_batch(&z, count, m, n),
                    None,
                    u.as_mut(),
                    v.as_mut(),
                    reducer,
                    par,
                    stack,
                )?;
            }
            SubspaceMethod::Riemannian => {
                subspace::riemannian_solve(
                    &c_order_batch(&z, count, m, n),
                    None,
                    u.as_mut(),
                    v.as_mut(),
                    opts.inner_steps,
                    0.0,
                    0.0,
                    reducer,
                    &mut |_, _| true,
                    par,
                    stack,
                )?;
            }
        }
        iterations += 1;
    }

    // Canonical basis on the completed data.
    let mut cbuf = MemBuffer::new(subspace::canonicalize_scratch(m, n, r, s, par));
    subspace::canonicalize(
        &c_order_batch(&z, count, m, n),
        None,
        u.as_mut(),
        v.as_mut(),
        reducer,
        par,
        MemStack::new(&mut cbuf),
    )?;
    Ok(CompletionFit {
        u,
        v,
        mean,
        completed: z,
        history,
        iterations,
        converged,
        observed_count,
        residual_ss: rss,
        row_eigenvalues: row_vals,
        col_eigenvalues: col_vals,
    })
}

/// The Gaussian prior of the cores, `N(mu, Sigma)` with
/// `Sigma = Q diag(lambda) Q^T + delta I` (the sample covariance of the
/// training cores in its principal components, plus the ridge), and the
/// noise level, for completing new matrices. `Q` has `q = min(d, N)`
/// columns, so the prior takes `d x q` numbers, never `d x d`.
#[derive(Clone, Debug)]
pub struct CorePrior {
    /// Mean `mu` of the training cores (column-major vec, length d).
    pub mean: Vec<f64>,
    /// Principal directions `Q` of the training cores (`d x q`,
    /// orthonormal columns).
    pub basis: Mat<f64>,
    /// Variances `lambda_j >= 0` along the directions (length q).
    pub variances: Vec<f64>,
    /// Ridge `delta > 0`: the variance in every direction outside `Q` and
    /// the regulariser added along `Q`.
    pub ridge: f64,
    /// Noise variance per observed entry, from the training residuals.
    pub noise_var: f64,
}

impl CorePrior {
    /// From the training cores (N x d, one core per row; every participant
    /// passes its own and `reducer` completes the sums), the residual sum of
    /// squares on the observed training entries and their count. The
    /// covariance is regularised by `delta = 1e-6 x` its mean variance (and
    /// an absolute floor); the noise variance is floored at `1e-12 x` the
    /// mean core energy per entry. Products use `par`.
    pub fn from_cores(
        cores: MatRef<'_, f64>,
        residual_ss: f64,
        observed: f64,
        entries_per_matrix: usize,
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<CorePrior> {
        let d = cores.ncols();
        let pcs = crate::pca::principal_components(cores, reducer, par).map_err(|e| {
            if e.kind() == crate::error::ErrorKind::InvalidArgument {
                Error::invalid("train: no matrix to estimate the core prior from")
            } else {
                e
            }
        })?;
        let mean_var = pcs.total_variance / d as f64;
        let ridge = (1e-6 * mean_var).max(1e-300);
        let floor =
            1e-12 * (mean_var * d as f64 / entries_per_matrix as f64).max(f64::MIN_POSITIVE);
        let noise_var = if observed > 0.0 {
            (residual_ss / observed).max(floor)
        } else {
            floor
        };
        Ok(CorePrior {
            mean: pcs.mean,
            basis: pcs.basis,
            variances: pcs.variances,
            ridge,
            noise_var,
        })
    }

    /// The isotropic prior `N(mean, variance I)` (no principal directions).
    pub fn isotropic(mean: Vec<f64>, variance: f64, noise_var: f64) -> CorePrior {
        let d = mean.len();
        CorePrior {
            mean,
            basis: Mat::zeros(d, 0),
            variances: Vec::new(),
            ridge: variance,
            noise_var,
        }
    }

    /// Core dimension d.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Number q of principal directions.
    pub fn components(&self) -> usize {
        self.basis.ncols()
    }

    /// `out <- Sigma^(1/2) x = sqrt(delta) x + Q diag(sqrt(lambda + delta)
    /// - sqrt(delta)) Q^T x` (symmetric); `tmp` has length q.
    fn sqrt_mul(&self, x: &[f64], out: &mut [f64], tmp: &mut [f64]) {
        let (d, q) = (self.dim(), self.components());
        let sd = self.ridge.sqrt();
        let xm = MatRef::from_column_major_slice(x, d, 1);
        {
            let tm = MatMut::from_column_major_slice_mut(tmp, q, 1);
            gemm(
                tm,
                Accum::Replace,
                self.basis.transpose(),
                xm,
                1.0,
                Par::Seq,
            );
        }
        for (t, l) in tmp.iter_mut().zip(&self.variances) {
            *t *= (l + self.ridge).sqrt() - sd;
        }
        for (o, xv) in out.iter_mut().zip(x) {
            *o = sd * xv;
        }
        let om = MatMut::from_column_major_slice_mut(out, d, 1);
        let tm = MatRef::from_column_major_slice(tmp, q, 1);
        gemm(om, Accum::Add, self.basis.as_ref(), tm, 1.0, Par::Seq);
    }
}

/// Workspace for [`complete_one`] with a prior of `components` principal
/// directions.
pub fn complete_one_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    components: usize,
) -> StackReq {
    let d = rank_rows * rank_cols;
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(6 * d + components),
        temp_mat_scratch::<f64>(rows, rank_cols),
        temp_mat_scratch::<f64>(rows, cols),
    ])
}

/// Maximum conjugate-gradient iterations of [`complete_one`].
const CG_MAX_ITER: usize = 500;

/// Completes one matrix: `out = P(Y) + P^perp(Xbar + U C V^T)` with the MAP
/// core C (module docs). `y` may hold anything at missing entries (NaN
/// included); `out` may not alias `y`. Never allocates. Returns the number
/// of conjugate-gradient iterations.
#[allow(clippy::too_many_arguments)]
pub fn complete_one(
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    mean: Option<MatRef<'_, f64>>,
    prior: &CorePrior,
    y: MatRef<'_, f64>,
    obs: Observed<'_>,
    mut out: MatMut<'_, f64>,
    stack: &mut MemStack,
) -> Result<usize> {
    let (m, n) = y.shape();
    let (r, s) = (u.ncols(), v.ncols());
    let d = r * s;
    debug_assert_eq!(prior.dim(), d);
    let (buf, stack) = temp_slice(6 * d + prior.components(), 0.0f64, stack);
    let (tmp, buf) = buf.split_at_mut(prior.components());
    let (z, rest) = buf.split_at_mut(d);
    let (res, rest) = rest.split_at_mut(d);
    let (p, rest) = rest.split_at_mut(d);
    let (kp, rest) = rest.split_at_mut(d);
    let (c, w) = rest.split_at_mut(d);
    let (mut t, stack) = temp_mat_zeroed::<f64>(m, s, stack);
    let (mut full, _) = temp_mat_zeroed::<f64>(m, n, stack);
    let sigma2 = prior.noise_var;

    // full <- P(A c) for a core vector c; then w <- A^T full = vec(U^T full V).
    let apply_ptpa =
        |c: &[f64], w: &mut [f64], t: &mut MatMut<'_, f64>, full: &mut MatMut<'_, f64>| {
            let cm = MatRef::from_column_major_slice(c, r, s);
            gemm(t.rb_mut(), Accum::Replace, u, cm, 1.0, Par::Seq);
            gemm(
                full.rb_mut(),
                Accum::Replace,
                t.as_ref(),
                v.transpose(),
                1.0,
                Par::Seq,
            );
            for b in 0..n {
                for a in 0..m {
                    if !obs.at(y, a, b) {
                        full[(a, b)] = 0.0;
                    }
                }
            }
            project_to_core(u, v, full.as_ref(), w, t);
        };

    // Right-hand side: S A^T P (Y - Xbar - A mu) / sigma^2.
    apply_ptpa(&prior.mean, w, &mut t, &mut full);
    for b in 0..n {
        for a in 0..m {
            full[(a, b)] = if obs.at(y, a, b) {
                y[(a, b)] - mean.map_or(0.0, |mm| mm[(a, b)])
            } else {
                0.0
            };
        }
    }
    project_to_core(u, v, full.rb(), c, &mut t);
    for k in 0..d {
        c[k] = (c[k] - w[k]) / sigma2;
    }
    prior.sqrt_mul(c, res, tmp); // res = b (z starts at 0, so the residual is b)
    p.copy_from_slice(res);
    let b_norm = dot(res, res).sqrt();
    let mut rr = b_norm * b_norm;
    let mut iters = 0;
    if b_norm > 0.0 {
        while iters < CG_MAX_ITER {
            // kp = p + S A^T P A S p / sigma^2
            prior.sqrt_mul(p, c, tmp);
            apply_ptpa(c, w, &mut t, &mut full);
            prior.sqrt_mul(w, kp, tmp);
            for k in 0..d {
                kp[k] = p[k] + kp[k] / sigma2;
            }
            let alpha = rr / dot(p, kp);
            for k in 0..d {
                z[k] += alpha * p[k];
                res[k] -= alpha * kp[k];
            }
            iters += 1;
            let rr_new = dot(res, res);
            if rr_new.sqrt() <= 1e-12 * b_norm {
                break;
            }
            let beta = rr_new / rr;
            rr = rr_new;
            for k in 0..d {
                p[k] = res[k] + beta * p[k];
            }
        }
    }
    // c = mu + S z, prediction = Xbar + U C V^T.
    prior.sqrt_mul(z, c, tmp);
    for k in 0..d {
        c[k] += prior.mean[k];
    }
    let cm = MatRef::from_column_major_slice(c, r, s);
    gemm(t.rb_mut(), Accum::Replace, u, cm, 1.0, Par::Seq);
    gemm(
        full.rb_mut(),
        Accum::Replace,
        t.rb(),
        v.transpose(),
        1.0,
        Par::Seq,
    );
    for b in 0..n {
        for a in 0..m {
            out[(a, b)] = if obs.at(y, a, b) {
                y[(a, b)]
            } else {
                let x = full[(a, b)] + mean.map_or(0.0, |mm| mm[(a, b)]);
                if !x.is_finite() {
                    return Err(Error::numerical("completion produced a non-finite value"));
                }
                x
            };
        }
    }
    Ok(iters)
}

/// `w <- vec(U^T x V)` (column-major r x s), with `t` an m x s temporary.
fn project_to_core(
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    x: MatRef<'_, f64>,
    w: &mut [f64],
    t: &mut MatMut<'_, f64>,
) {
    let (r, s) = (u.ncols(), v.ncols());
    gemm(t.rb_mut(), Accum::Replace, x, v, 1.0, Par::Seq);
    let wm = MatMut::from_column_major_slice_mut(w, r, s);
    gemm(wm, Accum::Replace, u.transpose(), t.as_ref(), 1.0, Par::Seq);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
