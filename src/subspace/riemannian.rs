//! Riemannian conjugate gradient on St(m, r) x St(n, s): Euclidean
//! gradients `G_U = 2 sum Y_i Y_i^T U`, `G_V = 2 sum W_i W_i^T V`, their
//! projections `G - Q sym(Q^T G)` onto the tangent spaces, Polak–Ribière+
//! directions, QR retraction and the exact line search of
//! [`line_search`](super::line_search).

use super::check::{check_bases, check_mean};
use super::line_search::{exact_line_search, line_search_scratch};
use super::products::{big_len, block, block_products, block_products_scratch};
use super::stop::StopRule;
use super::sums::{add_into, sum_sq, workers};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{
    self, gemm, parallel_parts, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch,
    MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::{sum_matrix, sum_scalar, Reducer};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef};

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
        sum_matrix(reducer, g.rb_mut())?;
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
    sum_matrix(reducer, gv.rb_mut())?;
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

pub(super) fn riemannian_small_scratch(
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
pub(super) fn riemannian_loop(
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
