//! Thin helpers over faer: workspaces, symmetric products, symmetric
//! eigendecompositions and the QR retraction onto the Stiefel manifold.
//!
//! Every kernel that runs inside an iteration follows faer's convention:
//! `verb_noun(..., par, stack: &mut MemStack)` has a partner
//! `verb_noun_scratch(...) -> StackReq` with the same leading size arguments,
//! and carves its temporaries from `stack` instead of allocating.

use crate::error::{Error, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Conj, MatMut, MatRef};
use std::mem::MaybeUninit;

pub use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
pub use faer::Par;

/// Alignment of every temporary carved from a workspace (one cache line).
pub(crate) const ALIGN: usize = 64;

/// The number of worker threads that `threads` stands for (0 = all cores),
/// clamped to [`crate::limits::MAX_THREADS`].
pub fn resolve_threads(threads: usize) -> usize {
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    n.min(crate::limits::MAX_THREADS)
}

/// faer's parallelism setting for `threads` workers (0 = all cores).
pub fn par_for_threads(threads: usize) -> Par {
    match resolve_threads(threads) {
        1 => Par::Seq,
        n => Par::rayon(n),
    }
}

/// Partial-pivoting LU of the square `a` with the given parallelism (faer's
/// convenience `partial_piv_lu` picks the process-wide default, which
/// starts rayon's global pool): `(log |det a|, a^-1)`, or `None` when a
/// pivot is zero or not finite. Allocates.
pub fn lu_log_det_inverse(a: MatRef<'_, f64>, par: Par) -> Option<(f64, faer::Mat<f64>)> {
    use faer::linalg::lu::partial_pivoting::{factor, inverse};
    let n = a.nrows();
    let mut lu = a.to_owned();
    let (mut fwd, mut bwd) = (vec![0usize; n], vec![0usize; n]);
    let mut mem = MemBuffer::new(
        factor::lu_in_place_scratch::<usize, f64>(n, n, par, Default::default())
            .or(inverse::inverse_scratch::<usize, f64>(n, par)),
    );
    let stack = MemStack::new(&mut mem);
    let (_, perm) = factor::lu_in_place(
        lu.as_mut(),
        &mut fwd,
        &mut bwd,
        par,
        stack,
        Default::default(),
    );
    let mut log_det = 0.0;
    for j in 0..n {
        let pivot = lu[(j, j)].abs();
        let usable = pivot.is_finite() && pivot > 0.0;
        if !usable {
            return None;
        }
        log_det += pivot.ln();
    }
    // The factor holds L (unit diagonal, strictly lower part) and U (upper
    // part) in one matrix; `inverse` reads each from its triangle.
    let mut inv = faer::Mat::<f64>::zeros(n, n);
    inverse::inverse(inv.as_mut(), lu.as_ref(), lu.as_ref(), perm, par, stack);
    Some((log_det, inv))
}

/// Workspace for a `rows x cols` temporary of `T` (column-major, aligned).
/// A size that overflows gives `StackReq::OVERFLOW` (never a wrapped,
/// small requirement).
pub fn temp_mat_scratch<T>(rows: usize, cols: usize) -> StackReq {
    rows.checked_mul(cols)
        .map_or(StackReq::OVERFLOW, |n| StackReq::new_aligned::<T>(n, ALIGN))
}

/// Carves a zero-initialised column-major `rows x cols` matrix from `stack`.
///
/// Panics when the stack is too small: callers check the workspace size at
/// their entry point (see [`check_workspace`]).
pub fn temp_mat_zeroed<'a, T: Copy + Default + 'static>(
    rows: usize,
    cols: usize,
    stack: &'a mut MemStack,
) -> (MatMut<'a, T>, &'a mut MemStack) {
    let (buf, stack) = temp_slice(rows * cols, T::default(), stack);
    let mat = MatMut::from_column_major_slice_mut(buf, rows, cols);
    (mat, stack)
}

/// Workspace for a slice of `len` values of `T`.
pub fn temp_slice_scratch<T>(len: usize) -> StackReq {
    StackReq::new_aligned::<T>(len, ALIGN)
}

/// Carves a slice of `len` copies of `fill` from `stack`.
pub fn temp_slice<T: Copy + 'static>(
    len: usize,
    fill: T,
    stack: &mut MemStack,
) -> (&mut [T], &mut MemStack) {
    let (uninit, stack) = stack.make_aligned_uninit::<T>(len, ALIGN);
    for x in uninit.iter_mut() {
        x.write(fill);
    }
    // SAFETY: every element was initialised just above.
    let init = unsafe { &mut *(uninit as *mut [MaybeUninit<T>] as *mut [T]) };
    (init, stack)
}

/// Fails with `ErrorKind::Workspace` when `stack` cannot hold `req`.
pub fn check_workspace(req: StackReq, stack: &MemStack) -> Result<()> {
    if stack.can_hold(req) {
        Ok(())
    } else {
        Err(Error::workspace(
            req.unaligned_bytes_required(),
            stack.len_bytes(),
        ))
    }
}

/// Lower triangle (diagonal included) of `dst <- beta * dst + alpha * a a^T`.
/// The strictly upper triangle of `dst` is left untouched.
pub fn syrk_lower(dst: MatMut<'_, f64>, beta: Accum, a: MatRef<'_, f64>, alpha: f64, par: Par) {
    triangular::matmul(
        dst,
        BlockStructure::TriangularLower,
        beta,
        a,
        BlockStructure::Rectangular,
        a.transpose(),
        BlockStructure::Rectangular,
        alpha,
        par,
    );
}

/// Copies the lower triangle of a square matrix onto its upper triangle.
pub fn mirror_lower(mut a: MatMut<'_, f64>) {
    let n = a.nrows();
    for j in 0..n {
        for i in j + 1..n {
            a[(j, i)] = a[(i, j)];
        }
    }
}

/// Replaces a square matrix by its symmetric part `(M + M^T) / 2`.
pub fn symmetrize(mut a: MatMut<'_, f64>) {
    let n = a.nrows();
    for j in 0..n {
        for i in j + 1..n {
            let s = 0.5 * (a[(i, j)] + a[(j, i)]);
            a[(i, j)] = s;
            a[(j, i)] = s;
        }
    }
}

/// Workspace for [`eigh_descending`] of an `n x n` matrix.
pub fn eigh_descending_scratch(n: usize, par: Par) -> StackReq {
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(n, 1),
        faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
            n,
            faer::linalg::evd::ComputeEigenvectors::Yes,
            par,
            Default::default(),
        ),
    ])
}

/// Eigendecomposition of a symmetric matrix (only its lower triangle is
/// read): eigenvalues in `vals` in descending order, eigenvectors in the
/// matching columns of `vecs` (`n x n`).
pub fn eigh_descending(
    a: MatRef<'_, f64>,
    mut vecs: MatMut<'_, f64>,
    vals: &mut [f64],
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let n = a.nrows();
    debug_assert!(a.ncols() == n && vecs.nrows() == n && vecs.ncols() == n && vals.len() == n);
    let (mut s, stack) = temp_mat_zeroed::<f64>(n, 1, stack);
    faer::linalg::evd::self_adjoint_evd(
        a,
        s.rb_mut().col_mut(0).as_diagonal_mut(),
        Some(vecs.rb_mut()),
        par,
        stack,
        Default::default(),
    )
    .map_err(|_| Error::numerical("symmetric eigendecomposition did not converge"))?;
    // faer returns ascending order: reverse in place.
    for j in 0..n / 2 {
        let k = n - 1 - j;
        for i in 0..n {
            let t = vecs[(i, j)];
            vecs[(i, j)] = vecs[(i, k)];
            vecs[(i, k)] = t;
        }
    }
    for j in 0..n {
        vals[j] = s[(n - 1 - j, 0)];
    }
    if vals.iter().any(|v| !v.is_finite()) {
        return Err(Error::numerical(
            "symmetric eigendecomposition produced non-finite values",
        ));
    }
    Ok(())
}

/// Workspace for [`top_eigenvectors`] of an `n x n` matrix.
pub fn top_eigenvectors_scratch(n: usize, par: Par) -> StackReq {
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(n, n),
        eigh_descending_scratch(n, par),
    ])
}

/// The `k = out.ncols()` leading eigenvectors (largest eigenvalues first) of
/// the symmetric matrix `a` (lower triangle read) into `out`, and all `n`
/// eigenvalues in descending order into `vals`.
pub fn top_eigenvectors(
    a: MatRef<'_, f64>,
    mut out: MatMut<'_, f64>,
    vals: &mut [f64],
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let n = a.nrows();
    let (mut vecs, stack) = temp_mat_zeroed::<f64>(n, n, stack);
    eigh_descending(a, vecs.rb_mut(), vals, par, stack)?;
    let k = out.ncols();
    out.copy_from(vecs.rb().get(.., ..k));
    Ok(())
}

/// Workspace for [`retract_qr`] of an `m x r` matrix.
pub fn retract_qr_scratch(m: usize, r: usize, par: Par) -> StackReq {
    let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<f64>(m, r);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(bs, r),
        temp_mat_scratch::<f64>(m, r),
        StackReq::any_of(&[
            faer::linalg::qr::no_pivoting::factor::qr_in_place_scratch::<f64>(
                m,
                r,
                bs,
                par,
                Default::default(),
            ),
            faer::linalg::householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(m, bs, r),
        ]),
    ])
}

/// The QR retraction `A <- qf(A)`: the Q factor of the thin QR decomposition
/// with the signs chosen so that R has a non-negative diagonal (this makes
/// the retraction a smooth map and `qf(U) = U` for orthonormal `U`).
/// Requires `m >= r`.
pub fn retract_qr(mut a: MatMut<'_, f64>, par: Par, stack: &mut MemStack) {
    let (m, r) = a.shape();
    debug_assert!(m >= r);
    let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<f64>(m, r);
    let (mut coeff, stack) = temp_mat_zeroed::<f64>(bs, r, stack);
    let (mut q, stack) = temp_mat_zeroed::<f64>(m, r, stack);
    faer::linalg::qr::no_pivoting::factor::qr_in_place(
        a.rb_mut(),
        coeff.rb_mut(),
        par,
        stack,
        Default::default(),
    );
    for j in 0..r {
        q[(j, j)] = 1.0;
    }
    faer::linalg::householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
        a.rb(),
        coeff.rb(),
        Conj::No,
        q.rb_mut(),
        par,
        stack,
    );
    for j in 0..r {
        let sign = if a[(j, j)] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..m {
            a[(i, j)] = sign * q[(i, j)];
        }
    }
}

/// Flips column signs so that the entry of largest magnitude in each column
/// is positive (ties broken by the lowest row index).
pub fn fix_column_signs(mut a: MatMut<'_, f64>) {
    for j in 0..a.ncols() {
        let mut best = 0usize;
        for i in 1..a.nrows() {
            if a[(i, j)].abs() > a[(best, j)].abs() {
                best = i;
            }
        }
        if a[(best, j)] < 0.0 {
            for i in 0..a.nrows() {
                a[(i, j)] = -a[(i, j)];
            }
        }
    }
}

/// `dst <- lhs * rhs` (or `dst += ...` with `Accum::Add`), a named wrapper
/// so call sites read as maths.
#[inline]
pub fn gemm(
    dst: MatMut<'_, f64>,
    beta: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
    par: Par,
) {
    matmul(dst, beta, lhs, rhs, alpha, par);
}

/// The `k`-th of `parts` contiguous parts of `0..count`.
pub fn part_range(count: usize, parts: usize, k: usize) -> std::ops::Range<usize> {
    count * k / parts..count * (k + 1) / parts
}

/// Runs `f(k, range_k)` for `k < parts` on scoped threads (part 0 on the
/// calling thread), the ranges splitting `0..count` into contiguous parts.
/// With one part nothing is spawned (and nothing allocated).
pub fn parallel_parts(
    count: usize,
    parts: usize,
    f: &(dyn Fn(usize, std::ops::Range<usize>) + Sync),
) {
    let t = parts.clamp(1, count.max(1));
    if t == 1 {
        f(0, 0..count);
        return;
    }
    std::thread::scope(|scope| {
        for k in 1..t {
            scope.spawn(move || f(k, part_range(count, t, k)));
        }
        f(0, part_range(count, t, 0));
    });
}

/// A buffer shared by the scoped workers of [`parallel_parts`], each of which
/// touches its own disjoint elements.
pub(crate) struct SharedBuf<T> {
    ptr: *mut T,
    len: usize,
}

impl<T> Clone for SharedBuf<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedBuf<T> {}

// SAFETY: workers only build views of disjoint elements (checked by the
// callers' index arithmetic) and the scope joins them before the buffer's
// borrow ends.
unsafe impl<T: Send> Send for SharedBuf<T> {}
unsafe impl<T: Send> Sync for SharedBuf<T> {}

impl<T> SharedBuf<T> {
    pub(crate) fn new(buf: &mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Elements `[offset, offset + len)`.
    ///
    /// # Safety
    /// The range lies inside the buffer and no two live views overlap.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [T] {
        debug_assert!(offset + len <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// A strided view starting at `offset`.
    ///
    /// # Safety
    /// The view lies inside the buffer and no two live views share an
    /// element.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn mat(
        &self,
        offset: usize,
        rows: usize,
        cols: usize,
        rs: isize,
        cs: isize,
    ) -> MatMut<'_, T> {
        debug_assert!(offset <= self.len);
        unsafe { MatMut::from_raw_parts_mut(self.ptr.add(offset), rows, cols, rs, cs) }
    }

    /// A contiguous column-major `rows x cols` block starting at `offset`.
    ///
    /// # Safety
    /// As for [`SharedBuf::mat`].
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn block(&self, offset: usize, rows: usize, cols: usize) -> MatMut<'_, T> {
        debug_assert!(offset + rows * cols <= self.len);
        unsafe { self.mat(offset, rows, cols, 1, rows as isize) }
    }
}

/// A contiguous column-major matrix as one slice, or `None`.
pub fn as_slice_mut<'a>(m: &'a mut MatMut<'_, f64>) -> Option<&'a mut [f64]> {
    if m.row_stride() == 1 && (m.ncols() <= 1 || m.col_stride() == m.nrows() as isize) {
        // SAFETY: the view is contiguous column-major (checked above) and the
        // returned slice borrows it mutably.
        Some(unsafe { std::slice::from_raw_parts_mut(m.as_ptr_mut(), m.nrows() * m.ncols()) })
    } else {
        None
    }
}

/// Squared Frobenius norm.
pub fn norm_sq(a: MatRef<'_, f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += a[(i, j)] * a[(i, j)];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;
    use rand_xoshiro::rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn random(m: usize, n: usize, seed: u64) -> Mat<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        Mat::from_fn(m, n, |_, _| {
            (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
    }

    #[test]
    fn retract_qr_is_orthonormal_and_reproduces_a() {
        let (m, r) = (57, 9);
        let a0 = random(m, r, 1);
        let mut a = a0.clone();
        let req = retract_qr_scratch(m, r, Par::Seq);
        let mut buf = MemBuffer::new(req);
        retract_qr(a.as_mut(), Par::Seq, MemStack::new(&mut buf));
        let qtq = a.transpose() * &a;
        let eps = f64::EPSILON;
        assert!((qtq - Mat::<f64>::identity(r, r)).norm_max() < 10.0 * m as f64 * eps);
        // R = Q^T A0 is upper triangular with a non-negative diagonal.
        let rr = a.transpose() * &a0;
        for j in 0..r {
            assert!(rr[(j, j)] > 0.0);
            for i in j + 1..r {
                assert!(rr[(i, j)].abs() < 10.0 * m as f64 * eps);
            }
        }
        // qf(Q) = Q.
        let q = a.clone();
        retract_qr(a.as_mut(), Par::Seq, MemStack::new(&mut buf));
        assert!((&a - &q).norm_max() < 10.0 * m as f64 * eps);
    }

    #[test]
    fn top_eigenvectors_match_residual_and_order() {
        let n = 40;
        let b = random(n, n, 2);
        let a = &b * b.transpose();
        let k = 5;
        let mut out = Mat::<f64>::zeros(n, k);
        let mut vals = vec![0.0; n];
        let mut buf = MemBuffer::new(top_eigenvectors_scratch(n, Par::Seq));
        top_eigenvectors(
            a.as_ref(),
            out.as_mut(),
            &mut vals,
            Par::Seq,
            MemStack::new(&mut buf),
        )
        .unwrap();
        for j in 1..n {
            assert!(vals[j - 1] >= vals[j]);
        }
        let res = &a * &out - &out * Mat::from_fn(k, k, |i, j| if i == j { vals[i] } else { 0.0 });
        assert!(res.norm_max() < 100.0 * n as f64 * f64::EPSILON * vals[0]);
    }

    #[test]
    fn syrk_lower_matches_full_product() {
        let a = random(13, 30, 3);
        let mut c = Mat::<f64>::zeros(13, 13);
        syrk_lower(c.as_mut(), Accum::Replace, a.as_ref(), 1.0, Par::Seq);
        mirror_lower(c.as_mut());
        let full = &a * a.transpose();
        assert!((c - full).norm_max() < 1e-13);
    }

    #[test]
    fn undersized_workspace_is_reported() {
        let req = retract_qr_scratch(100, 10, Par::Seq);
        let mut buf = MemBuffer::new(StackReq::new::<u8>(16));
        let err = check_workspace(req, MemStack::new(&mut buf)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Workspace);
    }
}
