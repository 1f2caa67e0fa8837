//! Subspace fitting on complete data (DESIGN.md section 3).
//!
//! Given N matrices X_1..X_N (m x n), find orthonormal U (m x r) and V (n x s)
//! maximising
//!
//! ```text
//! f(U, V) = sum_i ||U^T X_i V||^2     over St(m, r) x St(n, s),
//! ```
//!
//! which is the same as minimising the projection error
//! `sum_i ||X_i - U U^T X_i V V^T||^2`. With centering, X_i is replaced by
//! X_i - M everywhere, M the entrywise mean; the data are never copied:
//! `sum (X_i - M)(X_i - M)^T = sum X_i X_i^T - N M M^T` for the Gram matrices
//! and `Y_i = X_i V - M V`, `W_i = X_i^T U - M^T U` for the projected blocks.
//!
//! # Steps
//!
//! * **HOSVD initialisation** ([`hosvd_init`]): U0 = top-r eigenvectors of
//!   `A = sum X_i X_i^T`, V0 = top-s eigenvectors of `B = sum X_i^T X_i`.
//!   A and B are symmetric rank-k products (lower triangle) computed on the
//!   caller's data: C-order batches stack vertically into one `(N m) x n`
//!   matrix S with `B = S^T S`, column-major batches horizontally into one
//!   `m x (N n)` matrix H with `A = H H^T`; the other Gram matrix (or both, for
//!   other layouts) is accumulated sample by sample.
//! * **HOOI** ([`hooi_sweep`], the default method): `U <- top-r eigenvectors
//!   of sum Y_i Y_i^T` with `Y_i = X_i V`, then `V <- top-s eigenvectors of
//!   sum W_i W_i^T` with `W_i = X_i^T U` (new U). The blocks Y_i are written
//!   one after another into one buffer, each row-major, so that together
//!   they are the row-major `(N m) x s` matrix: for a stacked layout that is
//!   one product `S V` with the stacked samples (a row-major destination is
//!   the faster one for such thin products, about 1.3x), otherwise one
//!   product per sample; the Gram matrix is then one syrk per block (as fast
//!   as one syrk on an `m x (N s)` matrix, measured). Each block step
//!   maximises f exactly over one factor, so f never decreases. After a
//!   sweep, f is the sum of the top-s eigenvalues of the second Gram matrix.
//!   [`hooi_sweep_from_rows`] is the sweep after its first products were
//!   made elsewhere (the completion E-step makes them while each matrix is
//!   in cache); the blocks `W_i` a sweep leaves behind give the cores at
//!   the new bases, `C_i = W_i^T V`, without a pass over the data
//!   ([`project_cores_from_left`]).
//! * **Riemannian conjugate gradient** ([`riemannian_solve`]): Euclidean
//!   gradients `G_U = 2 sum Y_i (Y_i^T U)`, `G_V = 2 sum W_i (W_i^T V)`,
//!   Riemannian gradients for the embedded metric
//!   `grad_U = G_U - U sym(U^T G_U)`, search directions by Polak–Ribière+
//!   conjugate gradients with vector transport by projection, steps
//!   `U+ = qf(U + t D_U)`, `V+ = qf(V + t D_V)` (QR retraction) with an
//!   exact line search: f depends on U, V only through their spans, so along
//!   the retraction curve it is a rational function of t whose coefficients
//!   one pass over the data provides (see `exact_line_search`). Each
//!   iteration costs about four passes over the data (line search counted
//!   twice). It converges linearly, measured 12 iterations where HOOI needs 4
//!   with a clear eigen-gap at the rank cut, a few hundred where the gap is
//!   small (ranks above the signal rank); HOOI is the faster method for
//!   complete data, the Riemannian solver is the building block of the
//!   masked updates.
//! * **Stopping**: the relative increase of f is at most `tol` for 3
//!   consecutive steps (and, for the Riemannian method, the relative
//!   gradient norm `||grad f|| / ||G||` is at most `gtol`), or `max_iter`
//!   iterations ran (reported by `converged = false`). A Riemannian step is
//!   an iteration; a HOOI step is one block update (two per sweep), whose
//!   objective comes free with its eigenvalues, so HOOI may stop after the U
//!   update of a sweep (the cores then come from the blocks `Y_i`).
//! * **Cores**: the fit returns the cores of all samples in the canonical
//!   basis, from the last step's blocks (`C_i = W_i^T V` or `U^T Y_i`, two
//!   small products per sample) rotated by the canonical change of basis, so
//!   no pass over the data is needed for them.
//! * **Canonical basis** ([`canonicalize`]): U is rotated to the eigenvectors
//!   of `sum C_i C_i^T` and V to those of `sum C_i^T C_i` (descending), with
//!   `C_i = U^T X_i V`; each column's entry of largest magnitude is made
//!   positive. Where eigenvalues are (nearly) equal the rotation is
//!   arbitrary: compare projectors there.
//! * **Rank by energy** ([`rank_by_energy`]): when a rank is 0, the smallest r
//!   whose top-r eigenvalues of A hold at least `energy` of `trace(A)`; the
//!   same for s with B. Ranks chosen so keep the core dimension r s at most
//!   [`energy_core_dim_cap`] (half the number of samples: a core model needs
//!   more samples than dimensions), lowering first the rank whose last
//!   eigenvalue per core dimension is smallest ([`initial_ranks`]). As the
//!   two ranks are chosen separately, the fit may keep less than `energy` of
//!   the total; the ranks are then raised (largest next eigenvalue per core
//!   dimension first, within the cap) and the refinement rerun, until it
//!   keeps `energy` or the cap stops it ([`energy_shortfall`] says why).
//!
//! Every sum over samples (mean, counts, Gram matrices, gradients,
//! objectives, core statistics) is a local sum completed by a [`Reducer`].
//!
//! # Workspaces and threads
//!
//! Every kernel `verb_noun(..., par, stack)` has a `verb_noun_scratch(...)`
//! partner; [`fit`] allocates its workspace once before its loops (once for
//! the HOSVD stage and once, when the ranks are known, for the iterations).
//! With `par` of degree T > 1 the per-sample loops run on T scoped threads
//! (the calling thread is one of them), each writing its own blocks or its
//! own accumulator with sequential faer calls inside, and the large
//! products use `par`. With one thread nothing allocates inside an
//! iteration (tested with a counting allocator): faer's per-thread packing
//! cache for matrix products is allocated on a thread's first product, and
//! the HOSVD stage before the loops is that first product. With T > 1 each
//! parallel loop spawns its T - 1 helper threads, which allocates in std's
//! thread bookkeeping and, on their first product, in faer's packing cache.
//!
//! Centering by `sum X_i X_i^T - N M M^T` loses about
//! `eps * (||M|| / spread)^2` in relative accuracy of A and B when the mean is
//! much larger than the spread of the data; the iterations are not affected
//! (they subtract `M V` and `M^T U` explicitly).

use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{
    self, gemm, parallel_parts, syrk_lower, temp_mat_scratch, temp_mat_zeroed, temp_slice,
    temp_slice_scratch, MemBuffer, MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::{sum_scalar, Reducer};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef};

/// How the subspaces are refined after the HOSVD initialisation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum SubspaceMethod {
    /// Alternating exact block maximisation (higher-order orthogonal
    /// iteration). Converges in a few iterations; the default.
    #[default]
    Hooi,
    /// Riemannian conjugate gradient on St(m, r) x St(n, s) with the QR
    /// retraction and an exact line search. Converges linearly and needs
    /// tens to hundreds of iterations (raise `max_iter` accordingly).
    Riemannian,
}

/// Options of the subspace fit.
#[derive(Clone, Debug)]
pub struct SubspaceOptions {
    /// Row rank r (columns of U); 0 = choose by `energy`.
    pub rank_rows: usize,
    /// Column rank s (columns of V); 0 = choose by `energy`.
    pub rank_cols: usize,
    /// Fraction of `trace(A)` (resp. `trace(B)`) that a rank chosen by energy
    /// keeps, and of the total energy the fit keeps (within the small-data
    /// cap; see the module documentation), in (0, 1]. Default 0.99.
    pub energy: f64,
    /// Subtract the entrywise mean of the samples first. Default false.
    pub center: bool,
    /// Refinement method. Default [`SubspaceMethod::Hooi`].
    pub method: SubspaceMethod,
    /// Iteration cap, at least 1. Default 100, ample for HOOI (measured 2-3
    /// iterations from the HOSVD start with a clear eigen-gap at the rank
    /// cut, tens when the gap is small). The Riemannian method needs about
    /// 3x more iterations with a clear gap and a few hundred with small gaps:
    /// raise `max_iter` (e.g. to 1000) for it.
    pub max_iter: usize,
    /// Stop when the relative increase of the objective is at most `tol` for
    /// 3 consecutive steps (HOOI: block updates, two per iteration;
    /// Riemannian: iterations). Default 1e-10; non-negative.
    pub tol: f64,
    /// Riemannian method only: also require the relative gradient norm
    /// `||grad f|| / ||G||` (Riemannian over Euclidean gradient, both factors)
    /// to be at most `gtol`. Default 1e-8; non-negative.
    pub gtol: f64,
    /// Worker threads; 0 = all cores. Default 0.
    pub threads: usize,
}

impl Default for SubspaceOptions {
    fn default() -> Self {
        Self {
            rank_rows: 0,
            rank_cols: 0,
            energy: 0.99,
            center: false,
            method: SubspaceMethod::Hooi,
            max_iter: 100,
            tol: 1e-10,
            gtol: 1e-8,
            threads: 0,
        }
    }
}

/// Subspace options validated against the matrix dimensions.
#[derive(Clone, Debug)]
pub struct CheckedSubspaceOptions {
    opts: SubspaceOptions,
    rows: usize,
    cols: usize,
}

impl CheckedSubspaceOptions {
    /// The validated options.
    pub fn options(&self) -> &SubspaceOptions {
        &self.opts
    }
    /// Rows m of the matrices the options were checked against.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns n of the matrices the options were checked against.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl SubspaceOptions {
    /// Validates the options for `rows x cols` matrices. Each invalid option
    /// gives its own error naming the field, e.g.
    /// `"opts.rank_rows: 300 exceeds rows (200)"`.
    pub fn check(&self, rows: usize, cols: usize) -> Result<CheckedSubspaceOptions> {
        if self.rank_rows > rows {
            return Err(Error::invalid(format!(
                "opts.rank_rows: {} exceeds rows ({rows})",
                self.rank_rows
            )));
        }
        if self.rank_cols > cols {
            return Err(Error::invalid(format!(
                "opts.rank_cols: {} exceeds cols ({cols})",
                self.rank_cols
            )));
        }
        if !(self.energy > 0.0 && self.energy <= 1.0) {
            return Err(Error::invalid(format!(
                "opts.energy: {} is outside (0, 1]",
                self.energy
            )));
        }
        if self.max_iter == 0 {
            return Err(Error::invalid("opts.max_iter: must be at least 1 (got 0)"));
        }
        if self.tol.is_nan() || self.tol < 0.0 {
            return Err(Error::invalid(format!(
                "opts.tol: {} is not a non-negative number",
                self.tol
            )));
        }
        if self.gtol.is_nan() || self.gtol < 0.0 {
            return Err(Error::invalid(format!(
                "opts.gtol: {} is not a non-negative number",
                self.gtol
            )));
        }
        Ok(CheckedSubspaceOptions {
            opts: self.clone(),
            rows,
            cols,
        })
    }
}

/// The result of [`fit`].
#[derive(Clone, Debug)]
pub struct SubspaceFit {
    /// Row basis U (m x r, orthonormal columns) in the canonical basis.
    pub u: Mat<f64>,
    /// Column basis V (n x s, orthonormal columns) in the canonical basis.
    pub v: Mat<f64>,
    /// The entrywise mean M (m x n) when centered.
    pub mean: Option<Mat<f64>>,
    /// `sum_i ||U^T (X_i - M) V||^2` at the returned U, V.
    pub objective: f64,
    /// `sum_i ||X_i - M||^2`; `objective / total_energy` is the fraction of
    /// the energy the subspaces keep.
    pub total_energy: f64,
    /// Iterations of the refinement method (HOOI: sweeps, the last of which
    /// may stop after its U update).
    pub iterations: usize,
    /// Steps the stopping rule counted: HOOI block updates (two per sweep),
    /// Riemannian iterations. `history` has `steps + 1` entries.
    pub steps: usize,
    /// True when the stopping rule was met before `max_iter`.
    pub converged: bool,
    /// The objective after the initialisation and after every step.
    pub history: Vec<f64>,
    /// The cores `C_i = U^T (X_i - M) V` of the training samples at the
    /// returned (canonical) U, V: `count` blocks of `r * s` values, each the
    /// column-major r x s core, as [`project_cores`] writes them.
    pub cores: Vec<f64>,
    /// All eigenvalues of A = sum (X_i - M)(X_i - M)^T, descending.
    pub row_eigenvalues: Vec<f64>,
    /// All eigenvalues of B = sum (X_i - M)^T (X_i - M), descending.
    pub col_eigenvalues: Vec<f64>,
}

// ---------------------------------------------------------------------------
// Parallel helpers.

/// Number of workers for `par` on `count` items.
fn workers(par: Par, count: usize) -> usize {
    par.degree().clamp(1, count.max(1))
}

/// A contiguous column-major matrix as one slice, or `None`.
fn as_slice_mut<'a>(m: &'a mut MatMut<'_, f64>) -> Option<&'a mut [f64]> {
    if m.row_stride() == 1 && (m.ncols() <= 1 || m.col_stride() == m.nrows() as isize) {
        // SAFETY: the view is contiguous column-major (checked above) and the
        // returned slice borrows it mutably.
        Some(unsafe { std::slice::from_raw_parts_mut(m.as_ptr_mut(), m.nrows() * m.ncols()) })
    } else {
        None
    }
}

/// Completes a local sum held in a contiguous temporary across participants.
fn reduce_mat(reducer: &dyn Reducer, mut m: MatMut<'_, f64>) -> Result<()> {
    let buf = as_slice_mut(&mut m)
        .ok_or_else(|| Error::internal("reduction buffer is not contiguous"))?;
    reducer.sum_in_place(buf)
}

/// `dst += src` on the lower triangles of two square matrices.
fn add_lower(mut dst: MatMut<'_, f64>, src: MatRef<'_, f64>) {
    for j in 0..dst.ncols() {
        for i in j..dst.nrows() {
            dst[(i, j)] += src[(i, j)];
        }
    }
}

/// `dst += src`, visiting `src` in its storage order.
fn add_into(mut dst: MatMut<'_, f64>, src: MatRef<'_, f64>) {
    if src.col_stride().unsigned_abs() < src.row_stride().unsigned_abs() {
        for i in 0..src.nrows() {
            for j in 0..src.ncols() {
                dst[(i, j)] += src[(i, j)];
            }
        }
    } else {
        for j in 0..src.ncols() {
            for i in 0..src.nrows() {
                dst[(i, j)] += src[(i, j)];
            }
        }
    }
}

/// Adds parts `1..t` of `buf` (each `len` long) onto part 0 and returns it.
fn sum_parts(buf: &mut [f64], len: usize, t: usize) -> &mut [f64] {
    let (first, rest) = buf.split_at_mut(len);
    for k in 1..t {
        for (a, b) in first.iter_mut().zip(&rest[(k - 1) * len..k * len]) {
            *a += *b;
        }
    }
    first
}

/// Squared Frobenius norm of a contiguous column-major temporary.
fn sum_sq(m: MatRef<'_, f64>) -> f64 {
    m.squared_norm_l2()
}

// ---------------------------------------------------------------------------
// Mean.

/// Workspace for [`sample_mean`].
pub fn sample_mean_scratch(rows: usize, cols: usize, par: Par) -> StackReq {
    temp_slice_scratch::<f64>(rows * cols * par.degree().max(1))
}

/// The entrywise mean `M = (1/N) sum_i X_i` into `mean` (m x n); the sum and
/// the count N go through `reducer`.
pub fn sample_mean(
    data: &MatrixBatch,
    mut mean: MatMut<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    if mean.nrows() != m || mean.ncols() != n {
        return Err(Error::shape(format!(
            "mean: {} x {}, expected {m} x {n}",
            mean.nrows(),
            mean.ncols()
        )));
    }
    let t = workers(par, count);
    let len = m * n;
    let (acc, _) = temp_slice(len * t, 0.0f64, stack);
    {
        let shared = SharedBuf::new(acc);
        parallel_parts(count, t, &|k, range| {
            // SAFETY: worker k owns accumulator k.
            let mut a = unsafe { shared.block(k * len, m, n) };
            for i in range {
                add_into(a.rb_mut(), data.sample(i));
            }
        });
    }
    let sum = sum_parts(acc, len, t);
    reducer.sum_in_place(sum)?;
    let total_count = sum_scalar(reducer, count as f64)?;
    if total_count <= 0.0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    let scale = 1.0 / total_count;
    for j in 0..n {
        for i in 0..m {
            mean[(i, j)] = scale * sum[i + j * m];
        }
    }
    Ok(())
}

/// The error for a non-finite Gram diagonal: the precise location when a
/// local value is NaN or infinite, otherwise an overflow.
fn non_finite_data(data: &MatrixBatch) -> Error {
    match data.check_finite("train") {
        Err(e) => e,
        Ok(()) => Error::non_finite(
            "train: sums of squares are not finite (values too large, or non-finite values of another participant)",
        ),
    }
}

// ---------------------------------------------------------------------------
// Gram matrices and the HOSVD.

/// Local lower triangles of `A = sum X_i X_i^T` and `B = sum X_i^T X_i`:
/// one syrk on the stacked samples for the Gram matrix the layout allows,
/// per-sample accumulation (worker 0 into `a`/`b`, the others into `acc`)
/// for the rest.
fn local_grams(
    data: &MatrixBatch,
    mut a: MatMut<'_, f64>,
    mut b: MatMut<'_, f64>,
    acc: &mut [f64],
    par: Par,
) {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let vertical = data.vertical_stack();
    let horizontal = if vertical.is_none() {
        data.horizontal_stack()
    } else {
        None
    };
    if let Some(s) = vertical {
        // B = S^T S with S the (N m) x n vertical stack.
        syrk_lower(b.rb_mut(), Accum::Replace, s.transpose(), 1.0, par);
    }
    if let Some(h) = horizontal {
        // A = H H^T with H the m x (N n) horizontal stack.
        syrk_lower(a.rb_mut(), Accum::Replace, h, 1.0, par);
    }
    let need_a = horizontal.is_none();
    let need_b = vertical.is_none();
    if !(need_a || need_b) {
        return;
    }
    if need_a {
        a.fill(0.0);
    }
    if need_b {
        b.fill(0.0);
    }
    let t = workers(par, count);
    let part_len = m * m + n * n;
    // Temporaries carved by `hosvd_init` are contiguous.
    let shared_a = SharedBuf::new(as_slice_mut(&mut a).expect("contiguous Gram temporary"));
    let shared_b = SharedBuf::new(as_slice_mut(&mut b).expect("contiguous Gram temporary"));
    let shared_acc = SharedBuf::new(acc);
    parallel_parts(count, t, &|k, range| {
        // SAFETY: worker 0 owns `a` and `b`, worker k > 0 owns part k - 1 of `acc`.
        let (mut ak, mut bk) = unsafe {
            if k == 0 {
                (shared_a.block(0, m, m), shared_b.block(0, n, n))
            } else {
                let off = (k - 1) * part_len;
                (
                    shared_acc.block(off, m, m),
                    shared_acc.block(off + m * m, n, n),
                )
            }
        };
        if k > 0 {
            ak.fill(0.0);
            bk.fill(0.0);
        }
        for i in range {
            let x = data.sample(i);
            if need_a {
                syrk_lower(ak.rb_mut(), Accum::Add, x, 1.0, Par::Seq);
            }
            if need_b {
                syrk_lower(bk.rb_mut(), Accum::Add, x.transpose(), 1.0, Par::Seq);
            }
        }
    });
    for k in 1..t {
        let off = (k - 1) * part_len;
        // SAFETY: the workers have joined; these views do not overlap `a`, `b`.
        let (ak, bk) = unsafe {
            (
                shared_acc.block(off, m, m),
                shared_acc.block(off + m * m, n, n),
            )
        };
        if need_a {
            add_lower(a.rb_mut(), ak.rb());
        }
        if need_b {
            add_lower(b.rb_mut(), bk.rb());
        }
    }
}

/// Workspace for [`hosvd_init`].
pub fn hosvd_init_scratch(rows: usize, cols: usize, par: Par) -> StackReq {
    let (m, n) = (rows, cols);
    let t = par.degree().max(1);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(m, m),
        temp_mat_scratch::<f64>(n, n),
        temp_slice_scratch::<f64>((t - 1) * (m * m + n * n)),
        StackReq::any_of(&[
            numerics::eigh_descending_scratch(m, par),
            numerics::eigh_descending_scratch(n, par),
        ]),
    ])
}

/// HOSVD: all eigenvectors and eigenvalues (descending) of
/// `A = sum (X_i - M)(X_i - M)^T` into `row_vecs` (m x m), `row_vals` (m) and
/// of `B = sum (X_i - M)^T (X_i - M)` into `col_vecs` (n x n), `col_vals`
/// (n). U0 and V0 are the leading columns. `mean` is M when centering.
#[allow(clippy::too_many_arguments)]
pub fn hosvd_init(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    row_vecs: MatMut<'_, f64>,
    row_vals: &mut [f64],
    col_vecs: MatMut<'_, f64>,
    col_vals: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    check_square("row_vecs", row_vecs.rb(), m)?;
    check_square("col_vecs", col_vecs.rb(), n)?;
    check_len("row_vals", row_vals.len(), m)?;
    check_len("col_vals", col_vals.len(), n)?;
    check_mean(mean, m, n)?;
    let t = par.degree().max(1);
    let (mut a, stack) = temp_mat_zeroed::<f64>(m, m, stack);
    let (mut b, stack) = temp_mat_zeroed::<f64>(n, n, stack);
    let (acc, stack) = temp_slice((t - 1) * (m * m + n * n), 0.0f64, stack);
    local_grams(data, a.rb_mut(), b.rb_mut(), acc, par);
    reduce_mat(reducer, a.rb_mut())?;
    reduce_mat(reducer, b.rb_mut())?;
    // A NaN or infinity anywhere in the data reaches the diagonal of A.
    if (0..m).any(|i| !a[(i, i)].is_finite()) || (0..n).any(|j| !b[(j, j)].is_finite()) {
        return Err(non_finite_data(data));
    }
    if let Some(mean) = mean {
        let total = sum_scalar(reducer, count as f64)?;
        syrk_lower(a.rb_mut(), Accum::Add, mean, -total, par);
        syrk_lower(b.rb_mut(), Accum::Add, mean.transpose(), -total, par);
    }
    numerics::eigh_descending(a.rb(), row_vecs, row_vals, par, stack)?;
    numerics::eigh_descending(b.rb(), col_vecs, col_vals, par, stack)?;
    Ok(())
}

/// The smallest k whose leading `k` eigenvalues (descending; negative
/// rounding values count as 0) hold at least `energy` of their sum, with a
/// rounding allowance of `len * eps` of the sum so that `energy = 1` selects
/// the numerical rank. At least 1.
pub fn rank_by_energy(eigenvalues: &[f64], energy: f64) -> usize {
    let total: f64 = eigenvalues.iter().map(|v| v.max(0.0)).sum();
    if total.is_nan() || total <= 0.0 {
        return 1;
    }
    let target = energy * total - eigenvalues.len() as f64 * f64::EPSILON * total;
    let mut cum = 0.0;
    for (k, v) in eigenvalues.iter().enumerate() {
        cum += v.max(0.0);
        if cum >= target {
            return k + 1;
        }
    }
    eigenvalues.len().max(1)
}

/// The largest core dimension `r s` that ranks chosen by energy may reach
/// for `count` training matrices: half the count (at least 1). A core model
/// of `d` dimensions estimates a `d x d` covariance (and the flow holds out
/// part of the cores), so a core with about as many dimensions as there are
/// samples is poorly determined; explicit ranks are not capped.
pub fn energy_core_dim_cap(count: usize) -> usize {
    (count / 2).max(1)
}

/// Fractions of the total held by the leading 0, 1, 2, ... eigenvalues
/// (negative rounding values count as 0).
fn cumulative_fractions(eigenvalues: &[f64]) -> Vec<f64> {
    let total: f64 = eigenvalues.iter().map(|v| v.max(0.0)).sum();
    let mut out = Vec::with_capacity(eigenvalues.len() + 1);
    let mut cum = 0.0;
    out.push(0.0);
    for v in eigenvalues {
        cum += v.max(0.0);
        out.push(if total > 0.0 { cum / total } else { 1.0 });
    }
    out
}

/// The ranks a fit starts from: the given ranks, and where a rank is 0 the
/// smallest one holding `energy` of its Gram trace ([`rank_by_energy`]).
/// When `r s` exceeds `cap`, the ranks chosen by energy are lowered to the
/// pair within the cap that keeps the most energy by the separable
/// estimate `e_rows(r) e_cols(s)` (the fractions of the two Gram traces
/// held by the leading r and s eigenvalues), never below 1.
pub fn initial_ranks(
    row_eigenvalues: &[f64],
    col_eigenvalues: &[f64],
    rank_rows: usize,
    rank_cols: usize,
    energy: f64,
    cap: usize,
) -> (usize, usize) {
    let r = if rank_rows > 0 {
        rank_rows
    } else {
        rank_by_energy(row_eigenvalues, energy)
    };
    let s = if rank_cols > 0 {
        rank_cols
    } else {
        rank_by_energy(col_eigenvalues, energy)
    };
    if r * s <= cap || (rank_rows > 0 && rank_cols > 0) {
        return (r, s);
    }
    let rows = cumulative_fractions(row_eigenvalues);
    let cols = cumulative_fractions(col_eigenvalues);
    let frac = |f: &[f64], k: usize| f.get(k).copied().unwrap_or(1.0);
    let row_choices = if rank_rows > 0 { r..=r } else { 1..=r };
    let col_choices = if rank_cols > 0 { s..=s } else { 1..=s };
    let mut best: Option<(usize, usize, f64)> = None;
    for a in row_choices {
        for b in col_choices.clone() {
            if a * b > cap {
                continue;
            }
            let kept = frac(&rows, a) * frac(&cols, b);
            if best.is_none_or(|(ba, bb, bk)| kept > bk || (kept == bk && a * b < ba * bb)) {
                best = Some((a, b, kept));
            }
        }
    }
    match best {
        Some((a, b, _)) => (a, b),
        // A given rank alone exceeds the cap: the other one is 1.
        None => (
            if rank_rows > 0 { r } else { 1 },
            if rank_cols > 0 { s } else { 1 },
        ),
    }
}

/// One step up from `(r, s)` for ranks chosen by energy (`grow_rows`,
/// `grow_cols`) within `rows x cols` and the core-dimension `cap`: the rank
/// whose next eigenvalue, weighted by the fraction the other rank holds,
/// gains most per added core dimension. Returns the new ranks and that
/// weighted eigenvalue, or None when no rank can grow.
fn grow_ranks(
    row_eigenvalues: &[f64],
    col_eigenvalues: &[f64],
    (r, s): (usize, usize),
    (grow_rows, grow_cols): (bool, bool),
    cap: usize,
) -> Option<(usize, usize, f64)> {
    let value = |vals: &[f64], k: usize| vals.get(k).copied().unwrap_or(0.0).max(0.0);
    let rows = cumulative_fractions(row_eigenvalues);
    let cols = cumulative_fractions(col_eigenvalues);
    let row = (grow_rows && r < row_eigenvalues.len() && (r + 1) * s <= cap)
        .then(|| value(row_eigenvalues, r) * cols[s.min(cols.len() - 1)]);
    let col = (grow_cols && s < col_eigenvalues.len() && r * (s + 1) <= cap)
        .then(|| value(col_eigenvalues, s) * rows[r.min(rows.len() - 1)]);
    match (row, col) {
        (Some(a), Some(b)) if a / s as f64 >= b / r as f64 => Some((r + 1, s, a)),
        (Some(_), Some(b)) => Some((r, s + 1, b)),
        (Some(a), None) => Some((r + 1, s, a)),
        (None, Some(b)) => Some((r, s + 1, b)),
        (None, None) => None,
    }
}

/// Refits after raising ranks chosen by energy whose fit kept less than the
/// requested energy, at most this many times.
const MAX_ENERGY_REFITS: usize = 8;

/// Why a fit whose ranks were chosen by energy keeps less than the
/// requested `energy` (`explained` is the fraction it keeps), or None when
/// it keeps enough (up to rounding) or both ranks were given. `count` is
/// the number of training matrices; `rows_chosen`, `cols_chosen` say which
/// ranks were chosen by energy.
pub fn energy_shortfall(
    explained: f64,
    energy: f64,
    (r, s): (usize, usize),
    (rows, cols): (usize, usize),
    count: usize,
    (rows_chosen, cols_chosen): (bool, bool),
) -> Option<String> {
    let short = explained < energy - ENERGY_SLACK;
    if !(rows_chosen || cols_chosen) || !short {
        return None;
    }
    let cap = energy_core_dim_cap(count);
    let why = if r == rows && s == cols {
        "the ranks are full".to_string()
    } else if !rows_chosen {
        format!("the given row rank {r} bounds it")
    } else if !cols_chosen {
        format!("the given column rank {s} bounds it")
    } else if (r + 1) * s > cap && r * (s + 1) > cap {
        format!(
            "ranks chosen by energy keep the core at most {cap} dimensions (half the {count} \
             training matrices), and {r} x {s} is the largest within that; set the ranks \
             explicitly to go beyond"
        )
    } else {
        format!(
            "the ranks were raised {MAX_ENERGY_REFITS} times without reaching it; set the ranks \
             explicitly"
        )
    };
    Some(format!(
        "explained energy {explained:.4} is below the requested {energy}: {why}"
    ))
}

/// Rounding allowance of the energy a fit must keep (relative to the total).
const ENERGY_SLACK: f64 = 1e-9;

fn check_square(what: &str, a: MatRef<'_, f64>, n: usize) -> Result<()> {
    if a.nrows() != n || a.ncols() != n {
        return Err(Error::shape(format!(
            "{what}: {} x {}, expected {n} x {n}",
            a.nrows(),
            a.ncols()
        )));
    }
    Ok(())
}

fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::shape(format!(
            "{what}: {len} values, expected {expected}"
        )));
    }
    Ok(())
}

fn check_mean(mean: Option<MatRef<'_, f64>>, m: usize, n: usize) -> Result<()> {
    if let Some(mean) = mean {
        if mean.nrows() != m || mean.ncols() != n {
            return Err(Error::shape(format!(
                "mean: {} x {}, expected {m} x {n}",
                mean.nrows(),
                mean.ncols()
            )));
        }
    }
    Ok(())
}

/// Checks U (m x r) and V (n x s) against the data and returns (r, s).
fn check_bases(
    data: &MatrixBatch,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
) -> Result<(usize, usize)> {
    let (m, n) = (data.rows(), data.cols());
    if u.nrows() != m || u.ncols() == 0 || u.ncols() > m {
        return Err(Error::shape(format!(
            "u: {} x {}, expected {m} rows and 1 to {m} columns",
            u.nrows(),
            u.ncols()
        )));
    }
    if v.nrows() != n || v.ncols() == 0 || v.ncols() > n {
        return Err(Error::shape(format!(
            "v: {} x {}, expected {n} rows and 1 to {n} columns",
            v.nrows(),
            v.ncols()
        )));
    }
    if data.count() == 0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    Ok((u.ncols(), v.ncols()))
}

// ---------------------------------------------------------------------------
// Projected blocks Y_i = X_i V - M V and W_i = X_i^T U - M^T U.

/// Workspace for [`block_products`] with `p x k` blocks.
fn block_products_scratch(p: usize, k: usize) -> StackReq {
    temp_mat_scratch::<f64>(p, k)
}

/// Writes the blocks `Z_i = X_i Q - M Q` (or, with `transpose`,
/// `Z_i = X_i^T Q - M^T Q`) of all samples into `out`: block i is the
/// row-major `p x k` matrix at offset `i p k`, so that all blocks together
/// are the row-major `(N p) x k` matrix. For a stacked layout that is one
/// product with the stacked samples (a row-major destination is the faster
/// one for these thin products); other layouts are done sample by sample.
#[allow(clippy::too_many_arguments)]
fn block_products(
    data: &MatrixBatch,
    transpose: bool,
    mean: Option<MatRef<'_, f64>>,
    q: MatRef<'_, f64>,
    out: &mut [f64],
    par: Par,
    stack: &mut MemStack,
) {
    let count = data.count();
    let (p, k) = (if transpose { data.cols() } else { data.rows() }, q.ncols());
    let sample = |i: usize| {
        let x = data.sample(i);
        if transpose {
            x.transpose()
        } else {
            x
        }
    };
    let mean = mean.map(|mm| if transpose { mm.transpose() } else { mm });
    let (mut mq, _) = temp_mat_zeroed::<f64>(p, k, stack);
    if let Some(mm) = mean {
        gemm(mq.rb_mut(), Accum::Replace, mm, q, 1.0, Par::Seq);
    }
    let mq = mq.rb();
    let centered = mean.is_some();
    let out = &mut out[..p * count * k];
    let stacked = if transpose {
        data.horizontal_stack().map(|h| h.transpose())
    } else {
        data.vertical_stack()
    };
    let block_stride = p * k;
    if let Some(st) = stacked {
        let z = MatMut::from_row_major_slice_mut(out, count * p, k);
        gemm(z, Accum::Replace, st, q, 1.0, par);
        if centered {
            let shared = SharedBuf::new(out);
            parallel_parts(count, workers(par, count), &|_, range| {
                for i in range {
                    // SAFETY: block i belongs to sample i only.
                    let z = unsafe { shared.mat(i * block_stride, p, k, k as isize, 1) };
                    subtract(z, mq);
                }
            });
        }
    } else {
        let shared = SharedBuf::new(out);
        parallel_parts(count, workers(par, count), &|_, range| {
            for i in range {
                // SAFETY: block i belongs to sample i only.
                let mut z = unsafe { shared.mat(i * block_stride, p, k, k as isize, 1) };
                gemm(z.rb_mut(), Accum::Replace, sample(i), q, 1.0, Par::Seq);
                if centered {
                    subtract(z, mq);
                }
            }
        });
    }
}

/// `z -= a`, visiting `z` in its storage order.
fn subtract(mut z: MatMut<'_, f64>, a: MatRef<'_, f64>) {
    if z.col_stride().unsigned_abs() < z.row_stride().unsigned_abs() {
        for i in 0..z.nrows() {
            for j in 0..z.ncols() {
                z[(i, j)] -= a[(i, j)];
            }
        }
    } else {
        for j in 0..z.ncols() {
            for i in 0..z.nrows() {
                z[(i, j)] -= a[(i, j)];
            }
        }
    }
}

/// Block `i` (`p x k`) of a block buffer written by [`block_products`].
fn block(blocks: &[f64], i: usize, p: usize, k: usize) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(&blocks[i * p * k..(i + 1) * p * k], p, k)
}

/// Workspace for [`block_gram`] with `p x p` Gram matrices.
fn block_gram_scratch(p: usize, par: Par) -> StackReq {
    temp_slice_scratch::<f64>((par.degree().max(1) - 1) * p * p)
}

/// Lower triangle of the local `sum_i Z_i Z_i^T` over the `count` blocks
/// (`p x k`) in `blocks`, into the contiguous `gram`: one syrk per block,
/// per-worker accumulators.
fn block_gram(
    blocks: &[f64],
    count: usize,
    k: usize,
    mut gram: MatMut<'_, f64>,
    par: Par,
    stack: &mut MemStack,
) {
    let p = gram.nrows();
    let t = workers(par, count);
    let (acc, _) = temp_slice((t - 1) * p * p, 0.0f64, stack);
    gram.fill(0.0);
    {
        let shared_gram =
            SharedBuf::new(as_slice_mut(&mut gram).expect("contiguous Gram temporary"));
        let shared_acc = SharedBuf::new(acc);
        parallel_parts(count, t, &|w, range| {
            // SAFETY: worker 0 owns `gram`, worker w > 0 part w - 1 of `acc`.
            let mut g = unsafe {
                if w == 0 {
                    shared_gram.block(0, p, p)
                } else {
                    shared_acc.block((w - 1) * p * p, p, p)
                }
            };
            if w > 0 {
                g.fill(0.0);
            }
            for i in range {
                syrk_lower(
                    g.rb_mut(),
                    Accum::Add,
                    block(blocks, i, p, k),
                    1.0,
                    Par::Seq,
                );
            }
        });
    }
    for w in 1..t {
        let part = MatRef::from_column_major_slice(&acc[(w - 1) * p * p..w * p * p], p, p);
        add_lower(gram.rb_mut(), part);
    }
}

// ---------------------------------------------------------------------------
// HOOI.

fn big_len(count: usize, rows: usize, cols: usize, rank_rows: usize, rank_cols: usize) -> usize {
    (rows * count * rank_cols).max(cols * count * rank_rows)
}

/// Workspace of the HOOI loop without its block buffer.
fn hooi_small_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let (m, n) = (rows, cols);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(m, m),
        temp_mat_scratch::<f64>(n, n),
        temp_slice_scratch::<f64>(m),
        temp_slice_scratch::<f64>(n),
        temp_mat_scratch::<f64>(m, rank_rows),
        StackReq::any_of(&[
            block_products_scratch(m, rank_cols),
            block_products_scratch(n, rank_rows),
            block_gram_scratch(m, par),
            block_gram_scratch(n, par),
            numerics::top_eigenvectors_scratch(m, par),
            numerics::top_eigenvectors_scratch(n, par),
        ]),
    ])
}

/// Workspace for [`hooi_sweep`].
pub fn hooi_sweep_scratch(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(big_len(count, rows, cols, rank_rows, rank_cols)),
        hooi_small_scratch(rows, cols, rank_rows, rank_cols, par),
    ])
}

/// One HOOI sweep: `U <- top-r eigenvectors of sum Y_i Y_i^T` (`Y_i = (X_i -
/// M) V`), then `V <- top-s eigenvectors of sum W_i W_i^T` (`W_i = (X_i -
/// M)^T U`, new U). Returns the objective at the new (U, V), the sum of the
/// top-s eigenvalues of the second Gram matrix.
#[allow(clippy::too_many_arguments)]
pub fn hooi_sweep(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let (big, stack) = temp_slice(big_len(count, m, n, r, s), 0.0f64, stack);
    block_products(data, false, mean, v.rb(), big, par, stack);
    hooi_sweep_blocks(data, mean, u, v, big, reducer, par, stack)
}

/// Length of the block buffer of [`hooi_sweep_from_rows`]: room for the row
/// blocks `Y_i` (`N m s` values) and the column blocks `W_i` (`N n r`).
pub fn hooi_blocks_len(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
) -> usize {
    big_len(count, rows, cols, rank_rows, rank_cols)
}

/// Workspace for [`hooi_sweep_from_rows`] (the block buffer not included).
pub fn hooi_sweep_from_rows_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    hooi_small_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// One HOOI sweep whose first products are already done: on entry `blocks`
/// (at least [`hooi_blocks_len`] long) holds the row blocks
/// `Y_i = (X_i - M) V`, block i the row-major m x s matrix at offset
/// `i m s`. Updates U from their Gram matrix, then V from the blocks
/// `W_i = (X_i - M)^T U` (new U), which are left in `blocks`: block i the
/// row-major n x r matrix at offset `i n r` (the cores at the new (U, V)
/// are `C_i = W_i^T V`, see [`project_cores_from_left`]). Returns the
/// objective at the new (U, V). One pass over the data instead of two.
#[allow(clippy::too_many_arguments)]
pub fn hooi_sweep_from_rows(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    blocks: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    if blocks.len() < big_len(count, m, n, r, s) {
        return Err(Error::shape(format!(
            "blocks: {} values, at least {} needed",
            blocks.len(),
            big_len(count, m, n, r, s)
        )));
    }
    hooi_sweep_blocks(data, mean, u, v, blocks, reducer, par, stack)
}

/// The sweep after the row blocks are in `big`.
#[allow(clippy::too_many_arguments)]
fn hooi_sweep_blocks(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    mut u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    big: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (count, m, n, r) = (data.count(), data.rows(), data.cols(), u.ncols());
    let mut hooi = Hooi::new(m, n, r, stack);
    hooi.rows_gram_from_blocks(big, count, v.ncols(), reducer, par)?;
    hooi.rows_update(u.rb_mut(), par)?;
    hooi.cols_update(data, mean, u.rb(), v, big, reducer, par)
}

/// The temporaries of the HOOI steps, carved once.
struct Hooi<'s> {
    gram_rows: MatMut<'s, f64>,
    gram_cols: MatMut<'s, f64>,
    vals_rows: &'s mut [f64],
    vals_cols: &'s mut [f64],
    gu: MatMut<'s, f64>,
    stack: &'s mut MemStack,
}

impl<'s> Hooi<'s> {
    fn new(m: usize, n: usize, r: usize, stack: &'s mut MemStack) -> Self {
        let (gram_rows, stack) = temp_mat_zeroed::<f64>(m, m, stack);
        let (gram_cols, stack) = temp_mat_zeroed::<f64>(n, n, stack);
        let (vals_rows, stack) = temp_slice(m, 0.0f64, stack);
        let (vals_cols, stack) = temp_slice(n, 0.0f64, stack);
        let (gu, stack) = temp_mat_zeroed::<f64>(m, r, stack);
        Self {
            gram_rows,
            gram_cols,
            vals_rows,
            vals_cols,
            gu,
            stack,
        }
    }

    /// `sum Y_i Y_i^T` (lower triangle, reduced) with `Y_i = (X_i - M) V`.
    #[allow(clippy::too_many_arguments)]
    fn rows_gram(
        &mut self,
        data: &MatrixBatch,
        mean: Option<MatRef<'_, f64>>,
        v: MatRef<'_, f64>,
        big: &mut [f64],
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<()> {
        block_products(data, false, mean, v, big, par, self.stack);
        self.rows_gram_from_blocks(big, data.count(), v.ncols(), reducer, par)
    }

    /// `sum Y_i Y_i^T` (lower triangle, reduced) from the `count` blocks
    /// `Y_i` (m x s) already in `big`.
    fn rows_gram_from_blocks(
        &mut self,
        big: &[f64],
        count: usize,
        s: usize,
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<()> {
        block_gram(big, count, s, self.gram_rows.rb_mut(), par, self.stack);
        reduce_mat(reducer, self.gram_rows.rb_mut())
    }

    /// `f = trace(U^T (sum Y_i Y_i^T) U)` from the Gram matrix of `rows_gram`.
    fn objective_from_rows_gram(&mut self, u: MatRef<'_, f64>, par: Par) -> f64 {
        numerics::mirror_lower(self.gram_rows.rb_mut());
        gemm(
            self.gu.rb_mut(),
            Accum::Replace,
            self.gram_rows.rb(),
            u,
            1.0,
            par,
        );
        let mut f = 0.0;
        for j in 0..u.ncols() {
            for i in 0..u.nrows() {
                f += u[(i, j)] * self.gu[(i, j)];
            }
        }
        f
    }

    /// `U <-` top-r eigenvectors of the Gram matrix of `rows_gram`; returns
    /// the objective at the new U (the sum of the top-r eigenvalues).
    fn rows_update(&mut self, u: MatMut<'_, f64>, par: Par) -> Result<f64> {
        let r = u.ncols();
        numerics::top_eigenvectors(self.gram_rows.rb(), u, self.vals_rows, par, self.stack)?;
        Ok(self.vals_rows[..r].iter().sum())
    }

    /// `V <-` top-s eigenvectors of `sum W_i W_i^T`, `W_i = (X_i - M)^T U`;
    /// returns the objective (sum of the top-s eigenvalues). Leaves the
    /// blocks W_i in `big`.
    #[allow(clippy::too_many_arguments)]
    fn cols_update(
        &mut self,
        data: &MatrixBatch,
        mean: Option<MatRef<'_, f64>>,
        u: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        big: &mut [f64],
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<f64> {
        let s = v.ncols();
        block_products(data, true, mean, u, big, par, self.stack);
        block_gram(
            big,
            data.count(),
            u.ncols(),
            self.gram_cols.rb_mut(),
            par,
            self.stack,
        );
        reduce_mat(reducer, self.gram_cols.rb_mut())?;
        numerics::top_eigenvectors(self.gram_cols.rb(), v, self.vals_cols, par, self.stack)?;
        Ok(self.vals_cols[..s].iter().sum())
    }
}

// ---------------------------------------------------------------------------
// Cores: objective, projection, canonical basis.

/// Where the cores `C_i` come from.
#[derive(Copy, Clone)]
enum CoreSource<'a> {
    /// `C_i = U^T X_i V - U^T M V` from the data.
    Data,
    /// `C_i = W_i^T V` from the blocks `W_i = X_i^T U - M^T U` in the
    /// layout of `block_products`.
    Left(&'a [f64]),
    /// `C_i = U^T Y_i` from the blocks `Y_i = X_i V - M V` in the layout of
    /// `block_products`.
    Right(&'a [f64]),
}

fn for_each_core_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let t = par.degree().max(1);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(rows, rank_cols),
        temp_mat_scratch::<f64>(rank_rows, rank_cols),
        temp_slice_scratch::<f64>(t * core_part_len(rows, cols, rank_rows, rank_cols)),
    ])
}

/// Per-worker temporaries of `for_each_core`: the half product (`U^T X_i`
/// or `X_i V`, whichever is larger) and `C_i`.
fn core_part_len(m: usize, n: usize, r: usize, s: usize) -> usize {
    (r * n).max(m * s) + r * s
}

/// True when `C_i = (U^T X_i) V` takes no more flops than `U^T (X_i V)`
/// (`U^T X_i` is also the faster product for equal counts).
fn left_first(m: usize, n: usize, r: usize, s: usize) -> bool {
    r * n * (m + s) <= m * s * (n + r)
}

/// Calls `f(k, i, C_i)` for every sample i on worker k (of at most
/// `par.degree()`), with C_i (r x s) in a per-worker temporary.
#[allow(clippy::too_many_arguments)]
fn for_each_core(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    source: CoreSource<'_>,
    par: Par,
    stack: &mut MemStack,
    f: &(dyn Fn(usize, usize, MatRef<'_, f64>) + Sync),
) {
    let (count, m, n, r, s) = (data.count(), data.rows(), data.cols(), u.ncols(), v.ncols());
    let t = workers(par, count);
    let (mut mv, stack) = temp_mat_zeroed::<f64>(m, s, stack);
    let (mut umv, stack) = temp_mat_zeroed::<f64>(r, s, stack);
    let centered = matches!(source, CoreSource::Data) && mean.is_some();
    if let (true, Some(mm)) = (centered, mean) {
        gemm(mv.rb_mut(), Accum::Replace, mm, v, 1.0, Par::Seq);
        gemm(
            umv.rb_mut(),
            Accum::Replace,
            u.transpose(),
            mv.rb(),
            1.0,
            Par::Seq,
        );
    }
    let umv = umv.rb();
    let per = core_part_len(m, n, r, s);
    let half = per - r * s;
    let left = left_first(m, n, r, s);
    let (tmp, _) = temp_slice(t * per, 0.0f64, stack);
    let shared = SharedBuf::new(tmp);
    parallel_parts(count, t, &|k, range| {
        // SAFETY: worker k owns part k of `tmp`; the half product is either
        // `U^T X_i` or `X_i V`, never both.
        let mut c = unsafe { shared.block(k * per + half, r, s) };
        let (mut ut_x, mut y) = unsafe {
            if left {
                (Some(shared.block(k * per, r, n)), None)
            } else {
                (None, Some(shared.block(k * per, m, s)))
            }
        };
        for i in range {
            match source {
                CoreSource::Data => {
                    let x = data.sample(i);
                    if let Some(ut_x) = ut_x.as_mut() {
                        gemm(
                            ut_x.rb_mut(),
                            Accum::Replace,
                            u.transpose(),
                            x,
                            1.0,
                            Par::Seq,
                        );
                        gemm(c.rb_mut(), Accum::Replace, ut_x.as_ref(), v, 1.0, Par::Seq);
                    } else if let Some(y) = y.as_mut() {
                        gemm(y.rb_mut(), Accum::Replace, x, v, 1.0, Par::Seq);
                        gemm(
                            c.rb_mut(),
                            Accum::Replace,
                            u.transpose(),
                            y.as_ref(),
                            1.0,
                            Par::Seq,
                        );
                    }
                    if centered {
                        for b in 0..s {
                            for a in 0..r {
                                c[(a, b)] -= umv[(a, b)];
                            }
                        }
                    }
                }
                CoreSource::Left(w) => {
                    let wi = block(w, i, n, r);
                    gemm(c.rb_mut(), Accum::Replace, wi.transpose(), v, 1.0, Par::Seq);
                }
                CoreSource::Right(y) => {
                    let yi = block(y, i, m, s);
                    gemm(c.rb_mut(), Accum::Replace, u.transpose(), yi, 1.0, Par::Seq);
                }
            }
            f(k, i, c.rb());
        }
    });
}

/// Workspace for [`objective`].
pub fn objective_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(par.degree().max(1)),
        for_each_core_scratch(rows, cols, rank_rows, rank_cols, par),
    ])
}

/// The objective `f(U, V) = sum_i ||U^T (X_i - M) V||^2` (one pass over the
/// data, reduced).
pub fn objective(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    check_bases(data, u, v)?;
    check_mean(mean, data.rows(), data.cols())?;
    let t = par.degree().max(1);
    let (parts, stack) = temp_slice(t, 0.0f64, stack);
    let shared = SharedBuf::new(parts);
    for_each_core(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        par,
        stack,
        &|k, _, c| {
            // SAFETY: worker k owns element k.
            let mut fk = unsafe { shared.block(k, 1, 1) };
            fk[(0, 0)] += sum_sq(c);
        },
    );
    let local: f64 = parts.iter().sum();
    sum_scalar(reducer, local)
}

/// Workspace for [`project_cores`].
pub fn project_cores_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    for_each_core_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// The cores `C_i = U^T (X_i - M) V` of all samples into `cores`: `count`
/// blocks of `r * s` values, each the column-major r x s core.
#[allow(clippy::too_many_arguments)]
pub fn project_cores(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    cores: &mut [f64],
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (r, s) = check_bases(data, u, v)?;
    check_mean(mean, data.rows(), data.cols())?;
    check_len("cores", cores.len(), data.count() * r * s)?;
    let shared = SharedBuf::new(cores);
    for_each_core(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        par,
        stack,
        &|_, i, c| {
            // SAFETY: core i is written by the worker that handles sample i only.
            unsafe { shared.block(i * r * s, r, s) }.copy_from(c);
        },
    );
    Ok(())
}

/// Workspace for [`project_cores_from_left`].
pub fn project_cores_from_left_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    for_each_core_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// The cores `C_i = W_i^T V` from the column blocks `W_i = (X_i - M)^T U`
/// that [`hooi_sweep_from_rows`] leaves in `blocks` (the same values as
/// [`project_cores`] at that (U, V), without a pass over the data: 2 n r s
/// flops per sample). Layout of `cores` as for [`project_cores`].
#[allow(clippy::too_many_arguments)]
pub fn project_cores_from_left(
    data: &MatrixBatch,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    blocks: &[f64],
    cores: &mut [f64],
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (r, s) = check_bases(data, u, v)?;
    let (count, n) = (data.count(), data.cols());
    check_len("cores", cores.len(), count * r * s)?;
    if blocks.len() < count * n * r {
        return Err(Error::shape(format!(
            "blocks: {} values, at least {} needed",
            blocks.len(),
            count * n * r
        )));
    }
    let shared = SharedBuf::new(cores);
    for_each_core(
        data,
        None,
        u,
        v,
        CoreSource::Left(blocks),
        par,
        stack,
        &|_, i, c| {
            // SAFETY: core i is written by the worker that handles sample i only.
            unsafe { shared.block(i * r * s, r, s) }.copy_from(c);
        },
    );
    Ok(())
}

fn rotate_scratch(p: usize, k: usize) -> StackReq {
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(k, k),
        temp_slice_scratch::<f64>(k),
        temp_mat_scratch::<f64>(p, k),
        numerics::eigh_descending_scratch(k, Par::Seq),
    ])
}

/// `basis <- basis Q` with Q the eigenvectors of `gram` (lower triangle,
/// descending), then the sign rule; `rotation` (k x k) receives the whole
/// orthogonal change of basis `old^T new` (Q with the sign flips).
fn rotate_to_eigenbasis(
    mut basis: MatMut<'_, f64>,
    gram: MatRef<'_, f64>,
    rotation: MatMut<'_, f64>,
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (p, k) = basis.shape();
    let (mut q, stack) = temp_mat_zeroed::<f64>(k, k, stack);
    let (vals, stack) = temp_slice(k, 0.0f64, stack);
    let (mut rotated, stack) = temp_mat_zeroed::<f64>(p, k, stack);
    numerics::eigh_descending(gram, q.rb_mut(), vals, Par::Seq, stack)?;
    gemm(
        rotated.rb_mut(),
        Accum::Replace,
        basis.rb(),
        q.rb(),
        1.0,
        par,
    );
    numerics::fix_column_signs(rotated.rb_mut());
    gemm(
        rotation,
        Accum::Replace,
        basis.rb().transpose(),
        rotated.rb(),
        1.0,
        par,
    );
    basis.copy_from(rotated.rb());
    Ok(())
}

fn canonical_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let t = par.degree().max(1);
    let (r, s) = (rank_rows, rank_cols);
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(t * (r * r + s * s)),
        temp_mat_scratch::<f64>(r, r),
        temp_mat_scratch::<f64>(s, s),
        StackReq::any_of(&[
            for_each_core_scratch(rows, cols, r, s, par),
            rotate_scratch(rows, r),
            rotate_scratch(cols, s),
            temp_slice_scratch::<f64>(t * r * s),
        ]),
    ])
}

/// Rotates U, V to the canonical basis from the cores of `source`; returns
/// the objective `trace(sum C_i C_i^T)`. With `cores` (count blocks of
/// `r * s`, column-major), also writes the cores in the rotated basis,
/// `R_U^T C_i R_V` with R the changes of basis.
#[allow(clippy::too_many_arguments)]
fn canonical_rotation(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    source: CoreSource<'_>,
    cores: Option<&mut [f64]>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = (u.ncols(), v.ncols());
    let (rr, ss, rs) = (r * r, s * s, r * s);
    let count = data.count();
    let t = par.degree().max(1);
    let (acc, stack) = temp_slice(t * (rr + ss), 0.0f64, stack);
    let (mut rot_u, stack) = temp_mat_zeroed::<f64>(r, r, stack);
    let (mut rot_v, stack) = temp_mat_zeroed::<f64>(s, s, stack);
    let cores = cores.map(|c| SharedBuf::new(&mut c[..count * rs]));
    {
        let shared = SharedBuf::new(acc);
        for_each_core(
            data,
            mean,
            u.rb(),
            v.rb(),
            source,
            par,
            stack,
            &|k, i, c| {
                // SAFETY: worker k owns part k of `acc`.
                let (cct, ctc) = unsafe {
                    (
                        shared.block(k * (rr + ss), r, r),
                        shared.block(k * (rr + ss) + rr, s, s),
                    )
                };
                syrk_lower(cct, Accum::Add, c, 1.0, Par::Seq);
                syrk_lower(ctc, Accum::Add, c.transpose(), 1.0, Par::Seq);
                if let Some(out) = cores.as_ref() {
                    // SAFETY: core i is written by the worker of sample i only.
                    unsafe { out.block(i * rs, r, s) }.copy_from(c);
                }
            },
        );
    }
    let sums = sum_parts(acc, rr + ss, t);
    reducer.sum_in_place(sums)?;
    let cct = MatRef::from_column_major_slice(&sums[..rr], r, r);
    let ctc = MatRef::from_column_major_slice(&sums[rr..], s, s);
    let objective: f64 = (0..r).map(|a| cct[(a, a)]).sum();
    rotate_to_eigenbasis(u, cct, rot_u.rb_mut(), par, stack)?;
    rotate_to_eigenbasis(v, ctc, rot_v.rb_mut(), par, stack)?;
    if let Some(out) = cores {
        // C_i <- R_U^T C_i R_V, one temporary per worker.
        let (tmp, _) = temp_slice(t * rs, 0.0f64, stack);
        let tmp = SharedBuf::new(tmp);
        let (rot_u, rot_v) = (rot_u.rb(), rot_v.rb());
        parallel_parts(count, workers(par, count), &|k, range| {
            // SAFETY: worker k owns part k of `tmp` and the cores of its range.
            let mut half = unsafe { tmp.block(k * rs, r, s) };
            for i in range {
                let mut c = unsafe { out.block(i * rs, r, s) };
                gemm(
                    half.rb_mut(),
                    Accum::Replace,
                    rot_u.transpose(),
                    c.rb(),
                    1.0,
                    Par::Seq,
                );
                gemm(c.rb_mut(), Accum::Replace, half.rb(), rot_v, 1.0, Par::Seq);
            }
        });
    }
    Ok(objective)
}

/// Workspace for [`canonicalize`].
pub fn canonicalize_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    canonical_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// Rotates U to the eigenvectors of `sum C_i C_i^T` and V to those of
/// `sum C_i^T C_i` (descending, `C_i = U^T (X_i - M) V`), then makes the
/// entry of largest magnitude of every column positive (lowest index on
/// ties). Returns the objective `sum ||C_i||^2`. One pass over the data.
pub fn canonicalize(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    canonical_rotation(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        None,
        reducer,
        par,
        stack,
    )
}

/// [`canonicalize`] that also writes the cores `C_i = U^T (X_i - M) V` at
/// the rotated U, V into `cores` (`count` blocks of `r * s` values, each the
/// column-major r x s core, as [`project_cores`] writes them), from the same
/// pass over the data. Workspace: [`canonicalize_scratch`].
#[allow(clippy::too_many_arguments)]
pub fn canonicalize_with_cores(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    cores: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    check_len("cores", cores.len(), data.count() * r * s)?;
    canonical_rotation(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        Some(cores),
        reducer,
        par,
        stack,
    )
}

// ---------------------------------------------------------------------------
// Riemannian conjugate gradient.

/// Per-worker temporaries of `block_products_reduce`: the gradient
/// (p x kq), `Z_i^T Q` (kb x kq) and the objective.
fn reduce_part_len(p: usize, kb: usize, kq: usize) -> usize {
    p * kq + kb * kq + 1
}

/// Local `f = sum_i ||Z_i^T Q||^2` and, when `grad` is given,
/// `grad <- sum_i Z_i (Z_i^T Q)` (local), over the `count` blocks
/// (`p x kb`) in `blocks`.
#[allow(clippy::too_many_arguments)]
fn block_products_reduce(
    blocks: &[f64],
    count: usize,
    p: usize,
    kb: usize,
    q: MatRef<'_, f64>,
    grad: Option<MatMut<'_, f64>>,
    acc: &mut [f64],
    par: Par,
) -> f64 {
    let kq = q.ncols();
    let t = workers(par, count);
    let per = reduce_part_len(p, kb, kq);
    let want_grad = grad.is_some();
    let acc = &mut acc[..t * per];
    {
        let shared = SharedBuf::new(acc);
        parallel_parts(count, t, &|w, range| {
            // SAFETY: worker w owns part w of `acc`.
            let (mut g, mut pt, mut fw) = unsafe {
                (
                    shared.block(w * per, p, kq),
                    shared.block(w * per + p * kq, kb, kq),
                    shared.block(w * per + p * kq + kb * kq, 1, 1),
                )
            };
            g.fill(0.0);
            let mut f = 0.0;
            for i in range {
                let z = block(blocks, i, p, kb);
                gemm(pt.rb_mut(), Accum::Replace, z.transpose(), q, 1.0, Par::Seq);
                f += sum_sq(pt.rb());
                if want_grad {
                    gemm(g.rb_mut(), Accum::Add, z, pt.rb(), 1.0, Par::Seq);
                }
            }
            fw[(0, 0)] = f;
        });
    }
    let mut f = 0.0;
    for w in 0..t {
        f += acc[w * per + p * kq + kb * kq];
    }
    if let Some(mut grad) = grad {
        grad.copy_from(MatRef::from_column_major_slice(&acc[..p * kq], p, kq));
        for w in 1..t {
            let gw = MatRef::from_column_major_slice(&acc[w * per..w * per + p * kq], p, kq);
            add_into(grad.rb_mut(), gw);
        }
    }
    f
}

/// Y pass: returns `f(U, V)` and, when asked, the Euclidean gradient
/// `G_U = 2 sum Y_i Y_i^T U` (reduced) into `gu` (contiguous m x r).
#[allow(clippy::too_many_arguments)]
fn evaluate_rows(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    big: &mut [f64],
    gu: Option<MatMut<'_, f64>>,
    acc: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (count, m, s) = (data.count(), data.rows(), v.ncols());
    block_products(data, false, mean, v, big, par, stack);
    let mut gu = gu;
    let f = block_products_reduce(
        big,
        count,
        m,
        s,
        u,
        gu.as_mut().map(|g| g.rb_mut()),
        acc,
        par,
    );
    if let Some(mut g) = gu {
        reduce_mat(reducer, g.rb_mut())?;
        scale(g, 2.0);
    }
    sum_scalar(reducer, f)
}

/// W pass: the Euclidean gradient `G_V = 2 sum W_i W_i^T V` (reduced) into
/// `gv` (contiguous n x s). Leaves the blocks W_i in `big`.
#[allow(clippy::too_many_arguments)]
fn evaluate_cols(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    big: &mut [f64],
    mut gv: MatMut<'_, f64>,
    acc: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (count, n, r) = (data.count(), data.cols(), u.ncols());
    block_products(data, true, mean, u, big, par, stack);
    block_products_reduce(big, count, n, r, v, Some(gv.rb_mut()), acc, par);
    reduce_mat(reducer, gv.rb_mut())?;
    scale(gv, 2.0);
    Ok(())
}

fn scale(mut a: MatMut<'_, f64>, alpha: f64) {
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            a[(i, j)] *= alpha;
        }
    }
}

fn dot(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += a[(i, j)] * b[(i, j)];
        }
    }
    s
}

/// `g <- g - q sym(q^T g)`: projection onto the tangent space of the
/// Stiefel manifold at q (embedded metric). `tmp` holds at least k x k.
fn project_tangent(q: MatRef<'_, f64>, mut g: MatMut<'_, f64>, tmp: MatMut<'_, f64>) {
    let k = q.ncols();
    let mut s = tmp.submatrix_mut(0, 0, k, k);
    gemm(
        s.rb_mut(),
        Accum::Replace,
        q.transpose(),
        g.rb(),
        1.0,
        Par::Seq,
    );
    numerics::symmetrize(s.rb_mut());
    gemm(g.rb_mut(), Accum::Add, q, s.rb(), -1.0, Par::Seq);
}

/// `a <- qf(b + t d)`.
fn retract_step(
    mut a: MatMut<'_, f64>,
    b: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    t: f64,
    stack: &mut MemStack,
) {
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            a[(i, j)] = b[(i, j)] + t * d[(i, j)];
        }
    }
    numerics::retract_qr(a, Par::Seq, stack);
}

/// Outcome of [`riemannian_solve`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct RiemannianReport {
    /// Iterations run.
    pub iterations: usize,
    /// True when the stopping rule was met.
    pub converged: bool,
    /// The objective at the returned (U, V).
    pub objective: f64,
    /// The relative gradient norm `||grad f|| / ||G||` there.
    pub gradient_norm: f64,
}

fn riemannian_small_scratch(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let _ = count;
    let (m, n, r, s) = (rows, cols, rank_rows, rank_cols);
    let t = par.degree().max(1);
    let k = r.max(s);
    let mr = temp_mat_scratch::<f64>(m, r);
    let ns = temp_mat_scratch::<f64>(n, s);
    StackReq::all_of(&[
        StackReq::all_of(&[mr, mr, mr, mr, ns, ns, ns, ns]),
        temp_mat_scratch::<f64>(k, k),
        temp_slice_scratch::<f64>(t * reduce_part_len(m, s, r).max(reduce_part_len(n, r, s))),
        StackReq::any_of(&[
            block_products_scratch(m, s),
            block_products_scratch(n, r),
            numerics::retract_qr_scratch(m, r, Par::Seq),
            numerics::retract_qr_scratch(n, s, Par::Seq),
            line_search_scratch(rows, cols, rank_rows, rank_cols, par),
        ]),
    ])
}

fn line_search_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let (m, n, r, s) = (rows, cols, rank_rows, rank_cols);
    let t = par.degree().max(1);
    let k = r.max(s);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(k, k),
        temp_mat_scratch::<f64>(r, r),
        temp_mat_scratch::<f64>(s, s),
        temp_slice_scratch::<f64>(r),
        temp_slice_scratch::<f64>(s),
        temp_mat_scratch::<f64>(m, 2 * r),
        temp_mat_scratch::<f64>(n, 2 * s),
        temp_mat_scratch::<f64>(m, 2 * s),
        temp_mat_scratch::<f64>(2 * r, 2 * s),
        temp_slice_scratch::<f64>(t * line_part_len(m, r, s)),
        numerics::eigh_descending_scratch(k, Par::Seq),
    ])
}

/// Per-worker temporaries of the line-search pass: `T` (m x 2s), `K`
/// (2r x 2s), the five coefficient sums and a bound on the rounding of the
/// first-order one (r x s each).
fn line_part_len(m: usize, r: usize, s: usize) -> usize {
    2 * m * s + 4 * r * s + 6 * r * s
}

/// Exact line search along the retraction curve
/// `t -> (qf(U + t D_U), qf(V + t D_V))` for tangent directions D.
///
/// f depends on U and V only through their spans, and `span qf(U + t D) =
/// span(U + t D)`; with `D^T D = Q diag(lam) Q^T` and `U^T D` skew,
/// `(U + t D)^T (U + t D) = Q diag(1 + t^2 lam) Q^T`, so in the rotated
/// bases `U' = U Q_U`, `D' = D Q_U` (and likewise for V)
///
/// ```text
/// f(t) = sum_{a,b} sum_i (A_i + t B_i + t^2 G_i)_{ab}^2 / ((1 + t^2 lam_a)(1 + t^2 mu_b))
/// ```
///
/// with `A_i = U'^T X_i V'`, `B_i = D_U'^T X_i V' + U'^T X_i D_V'`,
/// `G_i = D_U'^T X_i D_V'` (X_i centered). One pass over the data gives the
/// five sums over i of the products of A, B, G entry by entry (reduced);
/// then f(t) and f'(t) cost O(r s) and the first local maximiser is found by
/// bracketing and bisection on f'. Returns `(t*, f(t*))`, `t* = 0` when f
/// does not increase along D (beyond the rounding of f'(0)).
#[allow(clippy::too_many_arguments)]
fn exact_line_search(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    du: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    dv: MatRef<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<(f64, f64)> {
    let (count, m, n, r, s) = (data.count(), data.rows(), data.cols(), u.ncols(), v.ncols());
    let k = r.max(s);
    let (mut gram, stack) = temp_mat_zeroed::<f64>(k, k, stack);
    let (mut qu, stack) = temp_mat_zeroed::<f64>(r, r, stack);
    let (mut qv, stack) = temp_mat_zeroed::<f64>(s, s, stack);
    let (lam, stack) = temp_slice(r, 0.0f64, stack);
    let (mu, stack) = temp_slice(s, 0.0f64, stack);
    let (mut bu, stack) = temp_mat_zeroed::<f64>(m, 2 * r, stack);
    let (mut bv, stack) = temp_mat_zeroed::<f64>(n, 2 * s, stack);
    let (mut mbv, stack) = temp_mat_zeroed::<f64>(m, 2 * s, stack);
    let (mut km, stack) = temp_mat_zeroed::<f64>(2 * r, 2 * s, stack);
    let tmax = par.degree().max(1);
    let per = line_part_len(m, r, s);
    let (parts, stack) = temp_slice(tmax * per, 0.0f64, stack);

    // Rotated bases [U' D_U'] and [V' D_V'].
    for (q, dq, rot, vals, mut basis) in [
        (u, du, qu.rb_mut(), &mut *lam, bu.rb_mut()),
        (v, dv, qv.rb_mut(), &mut *mu, bv.rb_mut()),
    ] {
        let p = q.ncols();
        let mut g = gram.rb_mut().submatrix_mut(0, 0, p, p);
        gemm(
            g.rb_mut(),
            Accum::Replace,
            dq.transpose(),
            dq,
            1.0,
            Par::Seq,
        );
        let mut rot = rot;
        numerics::eigh_descending(g.rb(), rot.rb_mut(), vals, Par::Seq, stack)?;
        for x in vals.iter_mut() {
            *x = x.max(0.0);
        }
        gemm(
            basis.rb_mut().subcols_mut(0, p),
            Accum::Replace,
            q,
            rot.rb(),
            1.0,
            Par::Seq,
        );
        gemm(
            basis.rb_mut().subcols_mut(p, p),
            Accum::Replace,
            dq,
            rot.rb(),
            1.0,
            Par::Seq,
        );
    }
    let centered = mean.is_some();
    if let Some(mm) = mean {
        gemm(mbv.rb_mut(), Accum::Replace, mm, bv.rb(), 1.0, Par::Seq);
        gemm(
            km.rb_mut(),
            Accum::Replace,
            bu.rb().transpose(),
            mbv.rb(),
            1.0,
            Par::Seq,
        );
    }
    let (bu, bv, km) = (bu.rb(), bv.rb(), km.rb());
    let rs = r * s;
    let t = workers(par, count);
    {
        let shared = SharedBuf::new(parts);
        parallel_parts(count, t, &|w, range| {
            // SAFETY: worker w owns part w of `parts`.
            let (mut tm, mut kk, mut sums) = unsafe {
                (
                    shared.block(w * per, m, 2 * s),
                    shared.block(w * per + 2 * m * s, 2 * r, 2 * s),
                    shared.block(w * per + 2 * m * s + 4 * rs, rs, 6),
                )
            };
            sums.fill(0.0);
            for i in range {
                gemm(
                    tm.rb_mut(),
                    Accum::Replace,
                    data.sample(i),
                    bv,
                    1.0,
                    Par::Seq,
                );
                gemm(
                    kk.rb_mut(),
                    Accum::Replace,
                    bu.transpose(),
                    tm.rb(),
                    1.0,
                    Par::Seq,
                );
                for b in 0..s {
                    for a in 0..r {
                        let c = |x: usize, y: usize| {
                            kk[(x, y)] - if centered { km[(x, y)] } else { 0.0 }
                        };
                        let av = c(a, b);
                        let bvv = c(r + a, b) + c(a, s + b);
                        let gv = c(r + a, s + b);
                        let idx = a + r * b;
                        sums[(idx, 0)] += av * av;
                        sums[(idx, 1)] += av * bvv;
                        sums[(idx, 2)] += bvv * bvv + 2.0 * av * gv;
                        sums[(idx, 3)] += bvv * gv;
                        sums[(idx, 4)] += gv * gv;
                        sums[(idx, 5)] += (av * bvv).abs();
                    }
                }
            }
        });
    }
    // Gather the coefficient sums of every worker into worker 0's.
    let sum_off = 2 * m * s + 4 * rs;
    for w in 1..t {
        for j in 0..6 * rs {
            parts[sum_off + j] += parts[w * per + sum_off + j];
        }
    }
    let coef = &mut parts[sum_off..sum_off + 6 * rs];
    reducer.sum_in_place(coef)?;
    let coef = &*coef;
    let (lam, mu) = (&*lam, &*mu);

    // f(t) and f'(t).
    let phi = |t: f64| -> (f64, f64) {
        let (mut f, mut d) = (0.0, 0.0);
        for (b, &mu_b) in mu.iter().enumerate() {
            for (a, &lam_a) in lam.iter().enumerate() {
                let idx = a + r * b;
                let c0 = coef[idx];
                let c1 = 2.0 * coef[rs + idx];
                let c2 = coef[2 * rs + idx];
                let c3 = 2.0 * coef[3 * rs + idx];
                let c4 = coef[4 * rs + idx];
                let num = c0 + t * (c1 + t * (c2 + t * (c3 + t * c4)));
                let dnum = c1 + t * (2.0 * c2 + t * (3.0 * c3 + t * 4.0 * c4));
                let (da, db) = (1.0 + t * t * lam_a, 1.0 + t * t * mu_b);
                let den = da * db;
                let dden = 2.0 * t * (lam_a * db + mu_b * da);
                f += num / den;
                d += (dnum * den - num * dden) / (den * den);
            }
        }
        (f, d)
    };
    let (f0, d0) = phi(0.0);
    // f'(0) = 2 sum <A_i, B_i>; below the rounding of that sum the sign of
    // f' along the curve is noise and a step would only wander.
    let d0_rounding = 2.0 * (m + n) as f64 * f64::EPSILON * coef[5 * rs..].iter().sum::<f64>();
    if d0.is_nan() || d0 <= d0_rounding {
        return Ok((0.0, f0));
    }
    // Second derivative at 0 for the first bracket.
    let mut curvature = 0.0;
    for (b, &mu_b) in mu.iter().enumerate() {
        for (a, &lam_a) in lam.iter().enumerate() {
            let idx = a + r * b;
            curvature += 2.0 * (coef[2 * rs + idx] - coef[idx] * (lam_a + mu_b));
        }
    }
    let mut hi = if curvature < 0.0 {
        d0 / -curvature
    } else {
        let top = lam.iter().chain(mu.iter()).fold(0.0f64, |x, &y| x.max(y));
        1.0 / top.max(f64::MIN_POSITIVE).sqrt()
    };
    let mut lo = 0.0;
    let mut expansions = 0;
    while phi(hi).1 > 0.0 {
        lo = hi;
        hi *= 2.0;
        expansions += 1;
        if expansions > 200 || !hi.is_finite() {
            // f keeps increasing along the curve: take the farthest point.
            return Ok((lo, phi(lo).0));
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if !(mid > lo && mid < hi) {
            break;
        }
        if phi(mid).1 > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (f_lo, f_hi) = (phi(lo).0, phi(hi).0);
    let (t_best, f_best) = if f_hi >= f_lo { (hi, f_hi) } else { (lo, f_lo) };
    if f_best >= f0 && t_best > 0.0 {
        Ok((t_best, f_best))
    } else {
        Ok((0.0, f0))
    }
}

/// Workspace for [`riemannian_solve`].
pub fn riemannian_solve_scratch(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(big_len(count, rows, cols, rank_rows, rank_cols)),
        riemannian_small_scratch(count, rows, cols, rank_rows, rank_cols, par),
    ])
}

/// Maximises f over St(m, r) x St(n, s) from (U, V) by Riemannian conjugate
/// gradients (see the module docs) until the relative increase of f is at
/// most `tol` for 3 consecutive iterations and the relative gradient norm is
/// at most `gtol`, or `max_iter` iterations ran. `on_iteration(k, f)` is
/// called with k = 0 at the start and after every iteration; returning
/// false cancels (`ErrorKind::Cancelled`).
#[allow(clippy::too_many_arguments)]
pub fn riemannian_solve(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    max_iter: usize,
    tol: f64,
    gtol: f64,
    reducer: &dyn Reducer,
    on_iteration: &mut dyn FnMut(usize, f64) -> bool,
    par: Par,
    stack: &mut MemStack,
) -> Result<RiemannianReport> {
    let (r, s) = check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    let (big, stack) = temp_slice(
        big_len(data.count(), data.rows(), data.cols(), r, s),
        0.0f64,
        stack,
    );
    riemannian_loop(
        data,
        mean,
        u,
        v,
        max_iter,
        tol,
        gtol,
        big,
        reducer,
        on_iteration,
        par,
        stack,
    )
}

#[allow(clippy::too_many_arguments)]
fn riemannian_loop(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    mut u: MatMut<'_, f64>,
    mut v: MatMut<'_, f64>,
    max_iter: usize,
    tol: f64,
    gtol: f64,
    big: &mut [f64],
    reducer: &dyn Reducer,
    on_iteration: &mut dyn FnMut(usize, f64) -> bool,
    par: Par,
    stack: &mut MemStack,
) -> Result<RiemannianReport> {
    let (m, n, r, s) = (data.rows(), data.cols(), u.ncols(), v.ncols());
    let t = par.degree().max(1);
    let k = r.max(s);
    let (mut ut, stack) = temp_mat_zeroed::<f64>(m, r, stack);
    let (mut gu, stack) = temp_mat_zeroed::<f64>(m, r, stack);
    let (mut gut, stack) = temp_mat_zeroed::<f64>(m, r, stack);
    let (mut du, stack) = temp_mat_zeroed::<f64>(m, r, stack);
    let (mut vt, stack) = temp_mat_zeroed::<f64>(n, s, stack);
    let (mut gv, stack) = temp_mat_zeroed::<f64>(n, s, stack);
    let (mut gvt, stack) = temp_mat_zeroed::<f64>(n, s, stack);
    let (mut dv, stack) = temp_mat_zeroed::<f64>(n, s, stack);
    let (mut tmp, stack) = temp_mat_zeroed::<f64>(k, k, stack);
    let (acc, stack) = temp_slice(
        t * reduce_part_len(m, s, r).max(reduce_part_len(n, r, s)),
        0.0f64,
        stack,
    );

    // Start on the manifold (qf(U) = U when U is already orthonormal).
    numerics::retract_qr(u.rb_mut(), Par::Seq, stack);
    numerics::retract_qr(v.rb_mut(), Par::Seq, stack);
    let mut f = evaluate_rows(
        data,
        mean,
        u.rb(),
        v.rb(),
        big,
        Some(gu.rb_mut()),
        acc,
        reducer,
        par,
        stack,
    )?;
    evaluate_cols(
        data,
        mean,
        u.rb(),
        v.rb(),
        big,
        gv.rb_mut(),
        acc,
        reducer,
        par,
        stack,
    )?;
    let mut euclid2 = sum_sq(gu.rb()) + sum_sq(gv.rb());
    project_tangent(u.rb(), gu.rb_mut(), tmp.rb_mut());
    project_tangent(v.rb(), gv.rb_mut(), tmp.rb_mut());
    let mut grad2 = sum_sq(gu.rb()) + sum_sq(gv.rb());
    let rel_grad = |g2: f64, e2: f64| if e2 > 0.0 { (g2 / e2).sqrt() } else { 0.0 };
    if !on_iteration(0, f) {
        return Err(Error::cancelled("subspace"));
    }
    du.copy_from(gu.rb());
    dv.copy_from(gv.rb());
    let mut stop = StopRule::new(tol);
    let mut iterations = 0;
    let mut converged = false;
    for it in 1..=max_iter {
        if grad2 == 0.0 {
            converged = true;
            break;
        }
        let slope = dot(gu.rb(), du.rb()) + dot(gv.rb(), dv.rb());
        if slope.is_nan() || slope <= 0.0 {
            // Not an ascent direction: restart along the gradient.
            du.copy_from(gu.rb());
            dv.copy_from(gv.rb());
        }
        // Near a stationary point the projected gradient is dominated by the
        // rounding of G and is tangent only to that accuracy: project again
        // ("twice is enough") so that U^T D is skew, as the line search assumes.
        project_tangent(u.rb(), du.rb_mut(), tmp.rb_mut());
        project_tangent(v.rb(), dv.rb_mut(), tmp.rb_mut());
        let (step, _) = exact_line_search(
            data,
            mean,
            u.rb(),
            du.rb(),
            v.rb(),
            dv.rb(),
            reducer,
            par,
            stack,
        )?;
        if step.is_nan() || step <= 0.0 {
            // No increase left along the direction at working precision.
            converged = rel_grad(grad2, euclid2) <= gtol;
            break;
        }
        retract_step(ut.rb_mut(), u.rb(), du.rb(), step, stack);
        retract_step(vt.rb_mut(), v.rb(), dv.rb(), step, stack);
        let f_trial = evaluate_rows(
            data,
            mean,
            ut.rb(),
            vt.rb(),
            big,
            Some(gut.rb_mut()),
            acc,
            reducer,
            par,
            stack,
        )?;
        evaluate_cols(
            data,
            mean,
            ut.rb(),
            vt.rb(),
            big,
            gvt.rb_mut(),
            acc,
            reducer,
            par,
            stack,
        )?;
        euclid2 = sum_sq(gut.rb()) + sum_sq(gvt.rb());
        project_tangent(ut.rb(), gut.rb_mut(), tmp.rb_mut());
        project_tangent(vt.rb(), gvt.rb_mut(), tmp.rb_mut());
        let grad2_new = sum_sq(gut.rb()) + sum_sq(gvt.rb());
        // Transport the old gradient and direction by projection.
        project_tangent(ut.rb(), gu.rb_mut(), tmp.rb_mut());
        project_tangent(vt.rb(), gv.rb_mut(), tmp.rb_mut());
        project_tangent(ut.rb(), du.rb_mut(), tmp.rb_mut());
        project_tangent(vt.rb(), dv.rb_mut(), tmp.rb_mut());
        // Polak–Ribière+.
        let beta = ((grad2_new - dot(gut.rb(), gu.rb()) - dot(gvt.rb(), gv.rb())) / grad2).max(0.0);
        for j in 0..r {
            for i in 0..m {
                du[(i, j)] = gut[(i, j)] + beta * du[(i, j)];
            }
        }
        for j in 0..s {
            for i in 0..n {
                dv[(i, j)] = gvt[(i, j)] + beta * dv[(i, j)];
            }
        }
        gu.copy_from(gut.rb());
        gv.copy_from(gvt.rb());
        u.copy_from(ut.rb());
        v.copy_from(vt.rb());
        let f_old = f;
        f = f_trial;
        grad2 = grad2_new;
        iterations = it;
        if !on_iteration(it, f) {
            return Err(Error::cancelled("subspace"));
        }
        if stop.update(f_old, f) && rel_grad(grad2, euclid2) <= gtol {
            converged = true;
            break;
        }
    }
    Ok(RiemannianReport {
        iterations,
        converged,
        objective: f,
        gradient_norm: rel_grad(grad2, euclid2),
    })
}

/// Workspace for [`riemannian_gradient`].
pub fn riemannian_gradient_scratch(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    riemannian_solve_scratch(count, rows, cols, rank_rows, rank_cols, par)
}

/// The objective f(U, V) and its Riemannian gradients (embedded metric)
/// `grad_U = G_U - U sym(U^T G_U)` with `G_U = 2 sum Y_i Y_i^T U` into
/// `grad_u` (m x r), and likewise `grad_v` (n x s). Two passes over the data.
#[allow(clippy::too_many_arguments)]
pub fn riemannian_gradient(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    mut grad_u: MatMut<'_, f64>,
    mut grad_v: MatMut<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = check_bases(data, u, v)?;
    check_mean(mean, data.rows(), data.cols())?;
    let (m, n) = (data.rows(), data.cols());
    if grad_u.shape() != (m, r) || grad_v.shape() != (n, s) {
        return Err(Error::shape(format!(
            "grad_u, grad_v: {:?} and {:?}, expected ({m}, {r}) and ({n}, {s})",
            grad_u.shape(),
            grad_v.shape()
        )));
    }
    let t = par.degree().max(1);
    let (big, stack) = temp_slice(big_len(data.count(), m, n, r, s), 0.0f64, stack);
    let (mut gu, stack) = temp_mat_zeroed::<f64>(m, r, stack);
    let (mut gv, stack) = temp_mat_zeroed::<f64>(n, s, stack);
    let (mut tmp, stack) = temp_mat_zeroed::<f64>(r.max(s), r.max(s), stack);
    let (acc, stack) = temp_slice(
        t * reduce_part_len(m, s, r).max(reduce_part_len(n, r, s)),
        0.0f64,
        stack,
    );
    let f = evaluate_rows(
        data,
        mean,
        u,
        v,
        big,
        Some(gu.rb_mut()),
        acc,
        reducer,
        par,
        stack,
    )?;
    evaluate_cols(data, mean, u, v, big, gv.rb_mut(), acc, reducer, par, stack)?;
    project_tangent(u, gu.rb_mut(), tmp.rb_mut());
    project_tangent(v, gv.rb_mut(), tmp.rb_mut());
    grad_u.copy_from(gu.rb());
    grad_v.copy_from(gv.rb());
    Ok(f)
}

// ---------------------------------------------------------------------------
// The fit.

/// Relative increase `(new - old) / |old|` (0 when both are 0).
fn relative_increase(old: f64, new: f64) -> f64 {
    if old != 0.0 {
        (new - old) / old.abs()
    } else if new == old {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Counts consecutive iterations whose relative increase is at most `tol`.
struct StopRule {
    tol: f64,
    streak: usize,
}

impl StopRule {
    /// Consecutive small increases required.
    const STREAK: usize = 3;

    fn new(tol: f64) -> Self {
        Self { tol, streak: 0 }
    }

    /// Records one iteration; true once the last `STREAK` were small.
    fn update(&mut self, old: f64, new: f64) -> bool {
        if relative_increase(old, new) <= self.tol {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        self.streak >= Self::STREAK
    }
}

/// Which block products a buffer holds.
#[derive(Copy, Clone)]
enum BlockSource {
    /// `W_i = (X_i - M)^T U` (n x r blocks).
    Cols,
    /// `Y_i = (X_i - M) V` (m x s blocks).
    Rows,
}

/// Appends `f_new` to the history, checks it and records the step in the
/// stopping rule; true once the rule is met.
fn record_step(
    history: &mut Vec<f64>,
    stop: &mut StopRule,
    f: &mut f64,
    f_new: f64,
) -> Result<bool> {
    history.push(f_new);
    if !f_new.is_finite() {
        return Err(Error::numerical(
            "subspace: the objective became non-finite",
        ));
    }
    let done = stop.update(*f, f_new);
    *f = f_new;
    Ok(done)
}

/// Fits U and V to the complete samples in `data` (DESIGN.md section 3):
/// optional centering, HOSVD initialisation, ranks by energy where a rank is
/// 0, HOOI or Riemannian refinement, canonical basis.
///
/// `progress(iteration, max_iter, objective)` is called after every
/// iteration (from 1); returning false stops the fit with
/// `ErrorKind::Cancelled`. Every sum over samples goes through `reducer`.
/// Batches with a mask are refused (the completion fit handles them).
pub fn fit(
    data: &MatrixBatch,
    opts: &SubspaceOptions,
    reducer: &dyn Reducer,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
) -> Result<SubspaceFit> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let checked = opts.check(m, n)?;
    let opts = checked.options();
    if count == 0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    if data.has_mask() {
        return Err(Error::unsupported(
            "train: has a mask; incomplete data is fitted with masked updates and completion",
        ));
    }
    let par = numerics::par_for_threads(opts.threads);

    // HOSVD stage (its products also warm faer's per-thread packing caches).
    let mut mean = opts.center.then(|| Mat::<f64>::zeros(m, n));
    let mut row_vecs = Mat::<f64>::zeros(m, m);
    let mut col_vecs = Mat::<f64>::zeros(n, n);
    let mut row_eigenvalues = vec![0.0; m];
    let mut col_eigenvalues = vec![0.0; n];
    {
        let mut buf = MemBuffer::new(StackReq::any_of(&[
            sample_mean_scratch(m, n, par),
            hosvd_init_scratch(m, n, par),
        ]));
        let stack = MemStack::new(&mut buf);
        if let Some(mean) = mean.as_mut() {
            sample_mean(data, mean.as_mut(), reducer, par, stack)?;
        }
        hosvd_init(
            data,
            mean.as_ref().map(|x| x.as_ref()),
            row_vecs.as_mut(),
            &mut row_eigenvalues,
            col_vecs.as_mut(),
            &mut col_eigenvalues,
            reducer,
            par,
            stack,
        )?;
    }
    let total_energy: f64 = row_eigenvalues.iter().sum();
    // Ranks chosen by energy: capped for small sets, and raised (then the
    // refinement rerun) while the fit keeps less than the requested energy.
    let ranks_chosen = opts.rank_rows == 0 || opts.rank_cols == 0;
    let cap = if ranks_chosen {
        energy_core_dim_cap(sum_scalar(reducer, count as f64)? as usize)
    } else {
        usize::MAX
    };
    let (mut r, mut s) = initial_ranks(
        &row_eigenvalues,
        &col_eigenvalues,
        opts.rank_rows,
        opts.rank_cols,
        opts.energy,
        cap,
    );
    // A given rank bounds what any fit keeps: sum ||U^T Y_i V||^2 is at most
    // the sum of the leading r eigenvalues of A (and s of B).
    let bound = |vals: &[f64], k: usize| vals.iter().take(k).map(|v| v.max(0.0)).sum::<f64>();
    let mut target = opts.energy * total_energy;
    if opts.rank_rows > 0 {
        target = target.min(bound(&row_eigenvalues, opts.rank_rows));
    }
    if opts.rank_cols > 0 {
        target = target.min(bound(&col_eigenvalues, opts.rank_cols));
    }
    let target = target - ENERGY_SLACK * total_energy;
    let mut refits = 0;
    let mut fit = loop {
        let fit = refine(
            data,
            opts,
            mean.as_ref(),
            row_vecs.as_ref(),
            col_vecs.as_ref(),
            (r, s),
            total_energy,
            reducer,
            progress,
            par,
        )?;
        if !ranks_chosen || refits == MAX_ENERGY_REFITS || fit.objective >= target {
            break fit;
        }
        // Each added row (column) gains at most its eigenvalue: add until
        // those bounds cover what is missing, then measure again.
        let mut missing = target - fit.objective;
        let mut grown = false;
        while missing > 0.0 {
            match grow_ranks(
                &row_eigenvalues,
                &col_eigenvalues,
                (r, s),
                (opts.rank_rows == 0, opts.rank_cols == 0),
                cap,
            ) {
                // A step that cannot gain (rounding-level eigenvalues) ends
                // the growth.
                Some((r2, s2, gain)) if gain > ENERGY_SLACK * total_energy => {
                    (r, s) = (r2, s2);
                    missing -= gain;
                    grown = true;
                }
                _ => break,
            }
        }
        if !grown {
            break fit;
        }
        refits += 1;
    };
    fit.row_eigenvalues = row_eigenvalues;
    fit.col_eigenvalues = col_eigenvalues;
    Ok(fit)
}

/// The refinement of [`fit`] at ranks `(r, s)` from the HOSVD bases
/// `row_vecs`, `col_vecs` (leading columns), with the canonical rotation and
/// the cores. The eigenvalues of the result are left empty.
#[allow(clippy::too_many_arguments)]
fn refine(
    data: &MatrixBatch,
    opts: &SubspaceOptions,
    mean: Option<&Mat<f64>>,
    row_vecs: MatRef<'_, f64>,
    col_vecs: MatRef<'_, f64>,
    (r, s): (usize, usize),
    total_energy: f64,
    reducer: &dyn Reducer,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    par: Par,
) -> Result<SubspaceFit> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let mut u = row_vecs.get(.., ..r).to_owned();
    let mut v = col_vecs.get(.., ..s).to_owned();
    let mean_ref = mean.map(|x| x.as_ref());

    // Refinement: one workspace for the loop and the canonical rotation.
    let len = big_len(count, m, n, r, s);
    let mut buf = MemBuffer::new(StackReq::all_of(&[
        temp_slice_scratch::<f64>(len),
        StackReq::any_of(&[
            hooi_small_scratch(m, n, r, s, par),
            riemannian_small_scratch(count, m, n, r, s, par),
            canonical_scratch(m, n, r, s, par),
        ]),
    ]));
    let stack = MemStack::new(&mut buf);
    let (big, stack) = temp_slice(len, 0.0f64, stack);
    // HOOI records two steps per iteration.
    let mut history = Vec::with_capacity(2 * opts.max_iter + 1);
    let max_iter = opts.max_iter;
    // Which blocks `big` holds when the loop ends: W_i = (X_i - M)^T U for
    // the final U, or (a HOOI fit that stopped after a U update) Y_i =
    // (X_i - M) V for the final V.
    let mut source_blocks = BlockSource::Cols;
    let (iterations, converged) = match opts.method {
        SubspaceMethod::Hooi => {
            let mut hooi = Hooi::new(m, n, r, stack);
            hooi.rows_gram(data, mean_ref, v.as_ref(), big, reducer, par)?;
            let mut f = hooi.objective_from_rows_gram(u.as_ref(), par);
            history.push(f);
            // The stopping rule counts block updates: each is an exact
            // maximisation of f over one factor and yields f for free (the
            // sum of the leading eigenvalues of its Gram matrix).
            let mut stop = StopRule::new(opts.tol);
            let mut outcome = (max_iter, false);
            for it in 1..=max_iter {
                if it > 1 {
                    hooi.rows_gram(data, mean_ref, v.as_ref(), big, reducer, par)?;
                }
                let f_rows = hooi.rows_update(u.as_mut(), par)?;
                let done = record_step(&mut history, &mut stop, &mut f, f_rows)?;
                if done {
                    if !progress(it, max_iter, f_rows) {
                        return Err(Error::cancelled("subspace"));
                    }
                    // `big` holds Y_i = (X_i - M) V for the final V.
                    source_blocks = BlockSource::Rows;
                    outcome = (it, true);
                    break;
                }
                let f_cols =
                    hooi.cols_update(data, mean_ref, u.as_ref(), v.as_mut(), big, reducer, par)?;
                let done = record_step(&mut history, &mut stop, &mut f, f_cols)?;
                if !progress(it, max_iter, f_cols) {
                    return Err(Error::cancelled("subspace"));
                }
                if done {
                    outcome = (it, true);
                    break;
                }
            }
            outcome
        }
        SubspaceMethod::Riemannian => {
            let report = riemannian_loop(
                data,
                mean_ref,
                u.as_mut(),
                v.as_mut(),
                max_iter,
                opts.tol,
                opts.gtol,
                big,
                reducer,
                &mut |k, f| {
                    history.push(f);
                    k == 0 || progress(k, max_iter, f)
                },
                par,
                stack,
            )?;
            block_products(data, true, mean_ref, u.as_ref(), big, par, stack);
            (report.iterations, report.converged)
        }
    };
    let source = match source_blocks {
        BlockSource::Cols => CoreSource::Left(big),
        BlockSource::Rows => CoreSource::Right(big),
    };
    let mut cores = vec![0.0; count * r * s];
    let objective = canonical_rotation(
        data,
        mean_ref,
        u.as_mut(),
        v.as_mut(),
        source,
        Some(&mut cores),
        reducer,
        par,
        stack,
    )?;
    if !objective.is_finite() {
        return Err(Error::numerical("subspace: the objective is not finite"));
    }
    Ok(SubspaceFit {
        u,
        v,
        mean: mean.cloned(),
        objective,
        total_energy,
        iterations,
        steps: history.len() - 1,
        converged,
        history,
        cores,
        row_eigenvalues: Vec::new(),
        col_eigenvalues: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Layout;
    use crate::reduce::LocalReducer;
    use rand_xoshiro::rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn uniform_mat(m: usize, n: usize, rng: &mut Xoshiro256PlusPlus) -> Mat<f64> {
        Mat::from_fn(m, n, |_, _| {
            (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
    }

    fn orthonormal(m: usize, r: usize, rng: &mut Xoshiro256PlusPlus) -> Mat<f64> {
        let mut q = uniform_mat(m, r, rng);
        let mut buf = MemBuffer::new(numerics::retract_qr_scratch(m, r, Par::Seq));
        numerics::retract_qr(q.as_mut(), Par::Seq, MemStack::new(&mut buf));
        q
    }

    fn objective_at(
        data: &MatrixBatch,
        mean: Option<MatRef<'_, f64>>,
        u: &Mat<f64>,
        v: &Mat<f64>,
    ) -> f64 {
        let (m, n, r, s) = (data.rows(), data.cols(), u.ncols(), v.ncols());
        let mut buf = MemBuffer::new(objective_scratch(m, n, r, s, Par::Seq));
        objective(
            data,
            mean,
            u.as_ref(),
            v.as_ref(),
            &LocalReducer,
            Par::Seq,
            MemStack::new(&mut buf),
        )
        .unwrap()
    }

    #[test]
    fn exact_line_search_maximises_along_the_retraction_curve() {
        let (count, m, n, r, s) = (15, 11, 9, 3, 2);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let x: Vec<f64> = (0..count * m * n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .collect();
        let data = MatrixBatch::from_c_order(&x, count, m, n).unwrap();
        let mean = uniform_mat(m, n, &mut rng);
        let (u, v) = (orthonormal(m, r, &mut rng), orthonormal(n, s, &mut rng));
        // Tangent directions.
        let tangent = |q: &Mat<f64>, z: Mat<f64>| {
            let qtz = q.transpose() * &z;
            z - q * ((&qtz + qtz.transpose()) * faer::Scale(0.5))
        };
        let du = tangent(&u, uniform_mat(m, r, &mut rng));
        let dv = tangent(&v, uniform_mat(n, s, &mut rng));
        for mean in [None, Some(mean.as_ref())] {
            let mut buf = MemBuffer::new(line_search_scratch(m, n, r, s, Par::Seq));
            let (t, ft) = exact_line_search(
                &data,
                mean,
                u.as_ref(),
                du.as_ref(),
                v.as_ref(),
                dv.as_ref(),
                &LocalReducer,
                Par::Seq,
                MemStack::new(&mut buf),
            )
            .unwrap();
            let at = |t: f64| {
                let mut qb = MemBuffer::new(numerics::retract_qr_scratch(m, r, Par::Seq));
                let (mut ut, mut vt) = (&u + &du * faer::Scale(t), &v + &dv * faer::Scale(t));
                numerics::retract_qr(ut.as_mut(), Par::Seq, MemStack::new(&mut qb));
                numerics::retract_qr(vt.as_mut(), Par::Seq, MemStack::new(&mut qb));
                objective_at(&data, mean, &ut, &vt)
            };
            let f0 = objective_at(&data, mean, &u, &v);
            assert!(t > 0.0 && ft > f0);
            // The model value is the objective at the retracted point ...
            assert!((at(t) - ft).abs() < 1e-12 * ft, "{} vs {ft}", at(t));
            // ... and a local maximum along the curve.
            for k in [0.9, 0.99, 1.01, 1.1] {
                assert!(at(k * t) <= ft * (1.0 + 1e-13));
            }
        }
    }

    #[test]
    fn block_products_agree_across_layouts() {
        let (count, m, n, k) = (7, 6, 5, 2);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let x: Vec<f64> = (0..count * m * n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .collect();
        let c_order = MatrixBatch::from_c_order(&x, count, m, n).unwrap();
        // The same samples transposed in storage: column-major (stacks horizontally).
        let mut f = vec![0.0; x.len()];
        for i in 0..count {
            for a in 0..m {
                for b in 0..n {
                    f[a + m * (b + n * i)] = x[(i * m + a) * n + b];
                }
            }
        }
        let col_major = MatrixBatch::from_col_major(&f, m, n, count).unwrap();
        let reversed = MatrixBatch::new(
            &x,
            (count - 1) * m * n,
            Layout {
                sample_stride: -((m * n) as isize),
                ..Layout::c_order(count, m, n)
            },
        )
        .unwrap();
        let mean = uniform_mat(m, n, &mut rng);
        for transpose in [false, true] {
            let (p, q) = if transpose {
                (n, uniform_mat(m, k, &mut rng))
            } else {
                (m, uniform_mat(n, k, &mut rng))
            };
            for mean in [None, Some(mean.as_ref())] {
                let mut outs = vec![];
                for (b, par) in [
                    (&c_order, Par::Seq),
                    (&col_major, Par::Seq),
                    (&col_major, Par::rayon(2)),
                    (&reversed, Par::Seq),
                ] {
                    let mut out = vec![0.0; count * p * k];
                    let mut buf = MemBuffer::new(block_products_scratch(p, k));
                    block_products(
                        b,
                        transpose,
                        mean,
                        q.as_ref(),
                        &mut out,
                        par,
                        MemStack::new(&mut buf),
                    );
                    outs.push(out);
                }
                // Direct: block i of the C-order and column-major batches.
                for i in 0..count {
                    let xi = c_order.sample(i);
                    let xi = if transpose { xi.transpose() } else { xi };
                    let mut zi = xi * &q;
                    if let Some(mm) = mean {
                        zi -= if transpose {
                            mm.transpose() * &q
                        } else {
                            mm * &q
                        };
                    }
                    for out in &outs[..3] {
                        assert!((block(out, i, p, k) - &zi).norm_max() < 1e-14);
                    }
                    // The reversed batch holds the samples in reverse order.
                    assert!((block(&outs[3], count - 1 - i, p, k) - &zi).norm_max() < 1e-14);
                }
            }
        }
    }
}
