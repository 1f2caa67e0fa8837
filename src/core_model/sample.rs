//! Sampling (see the module docs of [`super`]).

use super::leading::BlockDensity;
use super::{rowwise_matmul, CoreModel, SAMPLE_CHUNK};
use crate::error::{Error, Result};
use crate::flow::ode::SolverOptions;
use crate::numerics::{
    check_workspace, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch,
};
use crate::rng;
use faer::dyn_stack::{MemStack, StackReq};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::MatMut;

impl CoreModel {
    /// Workspace for [`sample`](Self::sample) of `count` cores.
    pub fn sample_scratch(&self, count: usize, solver: &SolverOptions) -> StackReq {
        let b = count.clamp(1, SAMPLE_CHUNK);
        let (d, q, k) = (self.dim, self.components(), self.block_dim());
        let ne = if self.has_gaussian() { d } else { 0 };
        let gb = self.gauss_rows(b);
        let block = self
            .block
            .as_ref()
            .map_or(StackReq::EMPTY, |f| f.sample_scratch(b, solver));
        let gauss = StackReq::all_of(&[
            temp_mat_scratch::<f64>(gb, ne),
            temp_mat_scratch::<f64>(gb, if ne > 0 { q } else { 0 }),
            temp_mat_scratch::<f64>(gb, q),
            temp_mat_scratch::<f64>(gb, d),
        ]);
        StackReq::all_of(&[
            temp_mat_scratch::<f64>(b, k),
            temp_slice_scratch::<f64>(k + ne),
            StackReq::any_of(&[block, gauss]),
        ])
    }

    /// Draws `out.nrows()` cores into `out` (`count x d`): row `j` is sample
    /// number `first_index + j` of stream `seed`. A non-finite sample is an
    /// `ErrorKind::Numerical` failure. Does not allocate.
    pub fn sample(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first_index: u64,
        out: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<()> {
        solver.check()?;
        let count = out.nrows();
        if out.ncols() != self.dim {
            return Err(Error::shape(format!(
                "out: has {} columns, the core dimension is {}",
                out.ncols(),
                self.dim
            )));
        }
        check_workspace(self.sample_scratch(count, solver), stack)?;
        let mut out = out;
        let mut start = 0;
        while start < count {
            let b = (count - start).min(SAMPLE_CHUNK);
            self.sample_chunk(
                solver,
                seed,
                first_index.wrapping_add(start as u64),
                out.rb_mut().subrows_mut(start, b),
                &mut *stack,
            )?;
            start += b;
        }
        Ok(())
    }

    fn sample_chunk(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first: u64,
        mut out: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<()> {
        let b = out.nrows();
        let (d, q, k) = (self.dim, self.components(), self.block_dim());
        let has_g = self.has_gaussian();
        let ne = if has_g { d } else { 0 };
        // Leading scores a_block = sigma * y, b x k.
        let (mut s, stack) = temp_mat_zeroed::<f64>(b, k, stack);
        let (row, stack) = temp_slice(k + ne, 0.0f64, stack);
        if let Some(f) = &self.block {
            f.sample(solver, seed, first, s.rb_mut(), &mut *stack)?;
            for (j, &sd) in f.scale().iter().enumerate() {
                for i in 0..b {
                    s[(i, j)] *= sd;
                }
            }
        }
        // c = mu + sqrt(delta) e + Q g, by row blocks.
        let gb = self.gauss_rows(b);
        let (mut e, stack) = temp_mat_zeroed::<f64>(gb, ne, stack);
        let (mut a, stack) = temp_mat_zeroed::<f64>(gb, if has_g { q } else { 0 }, stack);
        let (mut g, stack) = temp_mat_zeroed::<f64>(gb, q, stack);
        let (mut t, _) = temp_mat_zeroed::<f64>(gb, d, stack);
        let mut i0 = 0;
        while i0 < b {
            let len = (b - i0).min(gb);
            if has_g {
                for i in 0..len {
                    let mut r = rng::stream(seed, first.wrapping_add((i0 + i) as u64));
                    rng::fill_normal(&mut r, row);
                    for c in 0..d {
                        e[(i, c)] = row[k + c];
                    }
                }
                rowwise_matmul(
                    a.rb_mut().subrows_mut(0, len),
                    e.rb().subrows(0, len),
                    self.basis.as_ref(),
                    false,
                );
            }
            for j in 0..q {
                for i in 0..len {
                    g[(i, j)] = if j < k {
                        if has_g {
                            s[(i0 + i, j)] - self.sqrt_ridge * a[(i, j)]
                        } else {
                            s[(i0 + i, j)]
                        }
                    } else {
                        self.gain[j] * a[(i, j)]
                    };
                }
            }
            rowwise_matmul(
                t.rb_mut().subrows_mut(0, len),
                g.rb().subrows(0, len),
                self.basis_t.as_ref(),
                false,
            );
            for c in 0..d {
                let mu = self.mean[c];
                for i in 0..len {
                    let mut v = mu + t[(i, c)];
                    if has_g {
                        v += self.sqrt_ridge * e[(i, c)];
                    }
                    out[(i0 + i, c)] = v;
                }
            }
            i0 += len;
        }
        for i in 0..b {
            for j in 0..d {
                if !out[(i, j)].is_finite() {
                    return Err(Error::numerical(format!(
                        "sample: sample {} has a non-finite value",
                        first.wrapping_add(i as u64)
                    )));
                }
            }
        }
        Ok(())
    }
}
