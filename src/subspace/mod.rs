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
//!
//! # Layout
//!
//! One file per step, in the order a fit runs them:
//!
//! | file | job |
//! |------|-----|
//! | `mod.rs` | options, results, this overview |
//! | `check.rs` | shape checks of the kernels' arguments |
//! | `sums.rs` | per-worker accumulators and reduced sums |
//! | `mean.rs` | the entrywise mean M |
//! | `hosvd.rs` | Gram matrices A, B and their eigenvectors |
//! | `ranks.rs` | ranks by energy, the core-dimension cap, rank growth |
//! | `products.rs` | the blocks `Y_i`, `W_i` and their Gram matrices |
//! | `hooi.rs` | HOOI sweeps |
//! | `project.rs` | cores and the objective |
//! | `rotate.rs` | the canonical basis |
//! | `riemannian.rs` | Riemannian gradients and conjugate gradient |
//! | `line_search.rs` | the exact line search along the retraction |
//! | `stop.rs` | the stopping rule |
//! | `fit.rs` | the fit driver |
//!
//! [`hosvd_init`]: crate::subspace::hosvd_init
//! [`hooi_sweep`]: crate::subspace::hooi_sweep
//! [`hooi_sweep_from_rows`]: crate::subspace::hooi_sweep_from_rows
//! [`project_cores_from_left`]: crate::subspace::project_cores_from_left
//! [`riemannian_solve`]: crate::subspace::riemannian_solve
//! [`canonicalize`]: crate::subspace::canonicalize
//! [`rank_by_energy`]: crate::subspace::rank_by_energy
//! [`energy_core_dim_cap`]: crate::subspace::energy_core_dim_cap
//! [`initial_ranks`]: crate::subspace::initial_ranks
//! [`energy_shortfall`]: crate::subspace::energy_shortfall
//! [`Reducer`]: crate::reduce::Reducer
//! [`fit`]: crate::subspace::fit()

use crate::error::{Error, Result};
use faer::Mat;

mod check;
mod fit;
mod hooi;
mod hosvd;
mod line_search;
mod mean;
mod products;
mod project;
mod ranks;
mod riemannian;
mod rotate;
mod stop;
mod sums;
#[cfg(test)]
mod testing;

pub use fit::fit;
pub use hooi::{
    hooi_blocks_len, hooi_sweep, hooi_sweep_from_rows, hooi_sweep_from_rows_scratch,
    hooi_sweep_scratch,
};
pub use hosvd::{hosvd_init, hosvd_init_scratch};
pub use mean::{sample_mean, sample_mean_scratch};
pub use project::{
    objective, objective_scratch, project_cores, project_cores_from_left,
    project_cores_from_left_scratch, project_cores_scratch,
};
pub use ranks::{energy_core_dim_cap, energy_shortfall, initial_ranks, rank_by_energy};
pub use riemannian::{
    riemannian_gradient, riemannian_gradient_scratch, riemannian_solve, riemannian_solve_scratch,
    RiemannianReport,
};
pub use rotate::{canonicalize, canonicalize_scratch, canonicalize_with_cores};

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
