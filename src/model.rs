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

use crate::batch::{MatrixBatch, MatrixBatchMut};
use crate::error::{Error, Result};
use crate::numerics::{self, check_workspace, temp_mat_zeroed, MemStack, StackReq};
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
    /// Fraction of the Gram trace a chosen rank must hold (default 0.99).
    pub energy: f64,
    /// Subtract the entrywise mean before fitting (default false).
    pub center: bool,
    /// Subspace refinement method (default HOOI).
    pub subspace_method: SubspaceMethod,
    /// Iteration limit of the subspace refinement (default 100).
    pub subspace_max_iter: usize,
    /// Relative objective increase that counts as converged (default 1e-10).
    pub subspace_tol: f64,
    /// Optimiser steps of the flow; 0 fits the geometry only (default 0
    /// until a core model is requested).
    pub flow_steps: usize,
    /// Seed of every random choice of the fit.
    pub seed: u64,
    /// Worker threads for fitting (0 = all cores).
    pub threads: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        let s = SubspaceOptions::default();
        Self {
            rank_rows: 0,
            rank_cols: 0,
            energy: s.energy,
            center: false,
            subspace_method: SubspaceMethod::Hooi,
            subspace_max_iter: s.max_iter,
            subspace_tol: s.tol,
            flow_steps: 0,
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
}

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
    /// Final subspace objective sum ||U^T (X_i - Xbar) V||^2.
    pub subspace_objective: f64,
}

/// A fitted CoreFlow model. Immutable; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Model {
    u: Mat<f64>,
    v: Mat<f64>,
    mean: Option<Mat<f64>>,
    /// U^T Xbar V, subtracted in `encode` so that centering needs no copy.
    mean_core: Option<Mat<f64>>,
    info: ModelInfo,
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
    pub fn fit_with_reducer(
        train: &MatrixBatch,
        opts: &FitOptions,
        reducer: &dyn Reducer,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Model> {
        if opts.flow_steps > 0 {
            return Err(Error::unsupported(
                "opts.flow_steps: the flow stage is not available in this build; use 0 to fit the geometry only",
            ));
        }
        if train.has_mask() {
            return Err(Error::unsupported(
                "train.mask: fitting incomplete matrices is not available in this build",
            ));
        }
        let sub_opts = opts.subspace_options();
        let fit = subspace::fit(train, &sub_opts, reducer, &mut |it, total, obj| {
            progress(&Progress {
                stage: Stage::Subspace,
                iteration: it as u64,
                total: total as u64,
                loss: obj,
            })
        })?;
        let mean_core = fit.mean.as_ref().map(|m| fit.u.transpose() * m * &fit.v);
        let (r, s) = (fit.u.ncols(), fit.v.ncols());
        let info = ModelInfo {
            rows: train.rows(),
            cols: train.cols(),
            rank_rows: r,
            rank_cols: s,
            core_dim: r * s,
            flow_dim: 0,
            centered: fit.mean.is_some(),
            has_flow: false,
            train_count: crate::reduce::sum_scalar(reducer, train.count() as f64)? as usize,
            explained_energy: if fit.total_energy > 0.0 {
                fit.objective / fit.total_energy
            } else {
                1.0
            },
            final_loss: f64::NAN,
            subspace_iterations: fit.iterations,
            subspace_converged: fit.converged,
            subspace_objective: fit.objective,
        };
        Ok(Model {
            u: fit.u,
            v: fit.v,
            mean: fit.mean,
            mean_core,
            info,
        })
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

    /// Workspace for [`Model::encode`] of up to `count` matrices.
    pub fn encode_scratch(&self, count: usize) -> StackReq {
        let _ = count;
        numerics::temp_mat_scratch::<f64>(self.info.rows, self.info.rank_cols)
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
        let need = input.count() * d;
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
        check_workspace(self.encode_scratch(input.count()), stack)?;
        let (r, s) = (self.info.rank_rows, self.info.rank_cols);
        let (mut t, _) = temp_mat_zeroed::<f64>(self.info.rows, s, stack);
        for j in 0..input.count() {
            numerics::gemm(
                t.rb_mut(),
                Accum::Replace,
                input.sample(j),
                self.v.as_ref(),
                1.0,
                Par::Seq,
            );
            let mut c = MatMut::from_column_major_slice_mut(&mut cores[j * d..(j + 1) * d], r, s);
            numerics::gemm(
                c.rb_mut(),
                Accum::Replace,
                self.u.transpose(),
                t.rb(),
                1.0,
                Par::Seq,
            );
            if let Some(mc) = &self.mean_core {
                for b in 0..s {
                    for a in 0..r {
                        c[(a, b)] -= mc[(a, b)];
                    }
                }
            }
        }
        Ok(())
    }

    /// Workspace for [`Model::decode`] of up to `count` cores.
    pub fn decode_scratch(&self, count: usize) -> StackReq {
        let _ = count;
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
        let need = out.count() * d;
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
        check_workspace(self.decode_scratch(out.count()), stack)?;
        let (r, s) = (self.info.rank_rows, self.info.rank_cols);
        let (mut t, _) = temp_mat_zeroed::<f64>(self.info.rows, s, stack);
        for j in 0..out.count() {
            let c = MatRef::from_column_major_slice(&cores[j * d..(j + 1) * d], r, s);
            numerics::gemm(
                t.rb_mut(),
                Accum::Replace,
                self.u.as_ref(),
                c,
                1.0,
                Par::Seq,
            );
            let mut x = out.sample_mut(j);
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
        Ok(())
    }
}
