//! Log-densities (see the module docs of [`super`]).

use super::fit::check_finite;
use super::leading::BlockDensity;
use super::{rowwise_matmul, CoreModel, SAMPLE_CHUNK};
use crate::error::{Error, Result};
use crate::flow::ode::SolverOptions;
use crate::numerics::{
    check_workspace, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch,
};
use faer::dyn_stack::{MemStack, StackReq};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::MatRef;

impl CoreModel {
    fn log_prob_chunk_rows(&self, count: usize, solver: &SolverOptions) -> usize {
        let cap = self.block.as_ref().map_or(SAMPLE_CHUNK, |f| {
            f.log_prob_rows(solver).clamp(1, SAMPLE_CHUNK)
        });
        count.clamp(1, cap)
    }

    /// Workspace for [`log_prob`](Self::log_prob) of `count` cores.
    pub fn log_prob_scratch(&self, count: usize, solver: &SolverOptions) -> StackReq {
        let b = self.log_prob_chunk_rows(count, solver);
        let (d, q, k) = (self.dim, self.components(), self.block_dim());
        let gb = self.gauss_rows(b);
        let block = self.block.as_ref().map_or(StackReq::EMPTY, |f| {
            StackReq::all_of(&[temp_mat_scratch::<f64>(b, k), f.log_prob_scratch(b, solver)])
        });
        // The projection's temporaries are released before the block's part.
        StackReq::all_of(&[
            temp_mat_scratch::<f64>(b, q),
            temp_slice_scratch::<f64>(b),
            StackReq::any_of(&[
                StackReq::all_of(&[
                    temp_mat_scratch::<f64>(gb, d),
                    temp_mat_scratch::<f64>(gb, if self.has_gaussian() { d } else { 0 }),
                ]),
                block,
            ]),
        ])
    }

    /// `out[j] <- log p(cores[j, :])`, the log-density of the core model
    /// (over `R^d`). A non-finite input is `ErrorKind::NonFinite`, a
    /// non-finite result `ErrorKind::Numerical`. Does not allocate.
    pub fn log_prob(
        &self,
        solver: &SolverOptions,
        cores: MatRef<'_, f64>,
        out: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()> {
        solver.check()?;
        let count = cores.nrows();
        if cores.ncols() != self.dim {
            return Err(Error::shape(format!(
                "cores: has {} columns, the core dimension is {}",
                cores.ncols(),
                self.dim
            )));
        }
        if out.len() != count {
            return Err(Error::shape(format!(
                "out: has length {}, expected {count}",
                out.len()
            )));
        }
        check_finite(cores)?;
        check_workspace(self.log_prob_scratch(count, solver), stack)?;
        let chunk = self.log_prob_chunk_rows(count, solver);
        let mut start = 0;
        while start < count {
            let b = (count - start).min(chunk);
            self.log_prob_chunk(
                solver,
                start as u64,
                cores.subrows(start, b),
                &mut out[start..start + b],
                &mut *stack,
            )?;
            start += b;
        }
        Ok(())
    }

    fn log_prob_chunk(
        &self,
        solver: &SolverOptions,
        first: u64,
        cores: MatRef<'_, f64>,
        out: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()> {
        let b = cores.nrows();
        let (d, q, k) = (self.dim, self.components(), self.block_dim());
        let has_g = self.has_gaussian();
        // Scores a = Q^T (c - mu) and the Gaussian block's terms, by row
        // blocks.
        let (mut a, stack) = temp_mat_zeroed::<f64>(b, q, stack);
        let (gl, stack) = temp_slice(b, 0.0f64, stack);
        {
            let gb = self.gauss_rows(b);
            let (mut y, st) = temp_mat_zeroed::<f64>(gb, d, &mut *stack);
            let (mut t, _) = temp_mat_zeroed::<f64>(gb, if has_g { d } else { 0 }, st);
            let mut i0 = 0;
            while i0 < b {
                let len = (b - i0).min(gb);
                for c in 0..d {
                    let mu = self.mean[c];
                    for i in 0..len {
                        y[(i, c)] = cores[(i0 + i, c)] - mu;
                    }
                }
                rowwise_matmul(
                    a.rb_mut().subrows_mut(i0, len),
                    y.rb().subrows(0, len),
                    self.basis.as_ref(),
                    false,
                );
                if has_g {
                    // w = y - Q a, the part outside the components.
                    rowwise_matmul(
                        t.rb_mut().subrows_mut(0, len),
                        a.rb().subrows(i0, len),
                        self.basis_t.as_ref(),
                        false,
                    );
                    let w2 = &mut gl[i0..i0 + len];
                    for c in 0..d {
                        for (i, acc) in w2.iter_mut().enumerate() {
                            let r = y[(i, c)] - t[(i, c)];
                            *acc += r * r;
                        }
                    }
                    for (i, v) in w2.iter_mut().enumerate() {
                        let mut quad = 0.0;
                        for j in k..q {
                            let x = a[(i0 + i, j)];
                            quad += x * x * self.precision[j];
                        }
                        *v = self.gauss_const - 0.5 * (quad + *v / self.ridge);
                    }
                }
                i0 += len;
            }
        }
        match &self.block {
            Some(f) => {
                let (mut y, s) = temp_mat_zeroed::<f64>(b, k, &mut *stack);
                for (j, &sd) in f.scale().iter().enumerate() {
                    for i in 0..b {
                        y[(i, j)] = a[(i, j)] / sd;
                    }
                }
                f.log_prob(solver, first, y.rb(), out, s)?;
                for (o, g) in out.iter_mut().zip(gl.iter()) {
                    *o = *o - self.log_scale + *g;
                }
            }
            None => out.copy_from_slice(gl),
        }
        for (i, o) in out.iter().enumerate() {
            if !o.is_finite() {
                return Err(Error::numerical(format!(
                    "log_prob: non-finite log-density for core {}",
                    first + i as u64
                )));
            }
        }
        Ok(())
    }
}
