//! The projected blocks `Y_i = X_i V - M V`, `W_i = X_i^T U - M^T U` and
//! their Gram matrices `sum_i Z_i Z_i^T`.

use super::sums::{add_lower, workers};
use crate::batch::MatrixBatch;
use crate::numerics::{
    as_slice_mut, gemm, parallel_parts, syrk_lower, temp_mat_scratch, temp_mat_zeroed, temp_slice,
    temp_slice_scratch, MemStack, Par, SharedBuf, StackReq,
};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef};

/// Workspace for [`block_products`] with `p x k` blocks.
pub(super) fn block_products_scratch(p: usize, k: usize) -> StackReq {
    temp_mat_scratch::<f64>(p, k)
}

/// Writes the blocks `Z_i = X_i Q - M Q` (or, with `transpose`,
/// `Z_i = X_i^T Q - M^T Q`) of all samples into `out`: block i is the
/// row-major `p x k` matrix at offset `i p k`, so that all blocks together
/// are the row-major `(N p) x k` matrix. For a stacked layout that is one
/// product with the stacked samples (a row-major destination is the faster
/// one for these thin products); other layouts are done sample by sample.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_products(
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
pub(super) fn block(blocks: &[f64], i: usize, p: usize, k: usize) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(&blocks[i * p * k..(i + 1) * p * k], p, k)
}

/// Workspace for [`block_gram`] with `p x p` Gram matrices.
pub(super) fn block_gram_scratch(p: usize, par: Par) -> StackReq {
    temp_slice_scratch::<f64>((par.degree().max(1) - 1) * p * p)
}

/// Lower triangle of the local `sum_i Z_i Z_i^T` over the `count` blocks
/// (`p x k`) in `blocks`, into the contiguous `gram`: one syrk per block,
/// per-worker accumulators.
pub(super) fn block_gram(
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

pub(super) fn big_len(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
) -> usize {
    (rows * count * rank_cols).max(cols * count * rank_rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Layout;
    use crate::numerics::MemBuffer;
    use crate::subspace::testing::*;
    use rand_xoshiro::rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

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
