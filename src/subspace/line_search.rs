//! Exact line search along the QR retraction curve (see
//! `exact_line_search`).

use super::sums::workers;
use crate::batch::MatrixBatch;
use crate::error::Result;
use crate::numerics::{
    self, gemm, parallel_parts, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch,
    MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::Reducer;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatRef};

pub(super) fn line_search_scratch(
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
pub(super) fn exact_line_search(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::MemBuffer;
    use crate::reduce::LocalReducer;
    use crate::subspace::testing::*;
    use faer::Mat;
    use rand_xoshiro::rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

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
}
