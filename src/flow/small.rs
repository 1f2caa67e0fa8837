//! Row kernels for small batches: one forward pass of an `f32` velocity
//! network on 1 to [`SMALL_ROWS`] rows without the fixed costs of a
//! general matrix product (a simulator draws one sample per call).
//!
//! Maths: the network of [`super::network`]. With every row at time `t`,
//! `a_1 = silu(x W_1[..k, :] + b'(t))` with the folded bias
//! `b'(t) = b_1 + tau(t) W_1[k.., :]`; with a time per row,
//! `a_1 = silu([x, tau(t_i)] W_1 + b_1)`; then
//! `a_l = silu(a_{l-1} W_l + b_l)` and `v = a_L W_o + b_o`.
//!
//! Bitwise equal to the batched path: every product element
//! `sum_p a_p W[p, j]` starts from zero and adds its terms in the order
//! `p = 0, 1, ...` with one fused multiply-add each, which is how faer's
//! GEMM kernels accumulate a row; the folded bias, the SiLU and the
//! conversions repeat the batched path's operations element by element. A
//! network enables these kernels only after checking that equality on a
//! probe batch (when it is built), so which path runs may depend on the
//! batch size without changing any result. The same kernels serve the
//! products of the divergence passes (scoring) with 1 to [`SMALL_ROWS`]
//! rows.
//!
//! Layout: each layer's weights are packed once, when the network is built
//! from its parameters, into groups of up to 64 output columns, each group
//! `fan_in x columns` row-major (the weights one input meets are
//! contiguous): a row of activations times a group is one sequential stream
//! of multiply-adds of a broadcast input with contiguous weights, with no
//! horizontal sums and no per-call packing. Padding columns have zero
//! weights and biases and are never read back. Activations are row-major
//! inside the kernels. The folded first bias `b'(t)` of the times `m / 64`
//! is precomputed too: the stage times of fixed-step solves with
//! power-of-two step counts (RK4 with 16 steps by default).
//!
//! Tiles (AVX2): `R <= 6` rows times `V` vectors of 8 columns, with
//! `R V <= 12` accumulators (16 vector registers hold them, the broadcast
//! input and the weights); one row takes a whole group per tile (8
//! accumulators, one sequential weight stream), which keeps a single sample
//! bound by the L2 read bandwidth rather than by the multiply-add latency.
//! Tiles (AVX-512, built with Rust 1.89 or later): `R <= 6` rows times a
//! whole group (up to 4 vectors of 16 columns): up to 24 accumulators of
//! the 32 registers. Twice the lanes per instruction make the kernels
//! faster than faer's from 13 to [`SMALL_ROWS`] rows as well (its 16-row
//! tiles run partly empty there), so they take batches up to
//! [`SMALL_ROWS`]; the other kernels stop at [`AVX2_ROWS`]. The vector
//! width changes no result: every element is still one chain of fused
//! multiply-adds in input order, and the SiLU repeats the AVX2 sequence
//! on 16 lanes with the approximate reciprocal taken as two 8-lane halves
//! (`rcp14` would round differently).

use super::network::{Input, Io, NetConfig, Times, VelocityNet};
use super::real::Real;
use crate::numerics::{temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch};
use crate::rng;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::{Mat, MatMut, MatRef, Par};

/// Largest batch any row kernel takes (the AVX-512 one); larger batches go
/// to faer's GEMM. The results are the same either way. Measured at the
/// demo's network: the AVX-512 row kernels beat faer's AVX-512 GEMM from 1
/// to 28 rows except at 16 (equal), faer's 16-row tiles win from 32 on.
pub const SMALL_ROWS: usize = 28;

/// Largest batch the AVX2 and portable kernels take: faer's GEMM, whose
/// AVX-512 kernels run 16-row tiles, is as fast from 13 rows on when the
/// row kernels are limited to AVX2 (measured; below that its tiles run
/// mostly empty).
pub const AVX2_ROWS: usize = 12;

/// Output columns per packed panel (two 8-lane vectors).
const LANES: usize = 16;

/// The instruction set of the product kernels.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `std::arch` AVX-512F (x86-64 with AVX2 and FMA as well, detected at
    /// run time; built only with Rust 1.89 or later, `cfg(coreflow_avx512)`).
    #[cfg_attr(not(all(target_arch = "x86_64", coreflow_avx512)), allow(dead_code))]
    Avx512,
    /// `std::arch` AVX2 with FMA (x86-64, detected at run time).
    Avx2Fma,
    /// Scalar `mul_add` over panel rows (vectorised by the compiler where
    /// the target has fused multiply-adds).
    Portable,
}

impl Kernel {
    /// The kernel for this machine, if one is fast here: AVX2+FMA on x86-64;
    /// the portable kernel where fused multiply-adds are part of the base
    /// instruction set (AArch64). Elsewhere `mul_add` would be emulated.
    pub(crate) fn detect() -> Option<Kernel> {
        #[cfg(all(target_arch = "x86_64", coreflow_avx512))]
        if Kernel::Avx512.available() {
            return Some(Kernel::Avx512);
        }
        if Kernel::Avx2Fma.available() {
            return Some(Kernel::Avx2Fma);
        }
        if cfg!(target_arch = "aarch64") {
            return Some(Kernel::Portable);
        }
        None
    }

    /// Whether this machine (and this build) can run the kernel.
    pub(crate) fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        match self {
            #[cfg(all(target_arch = "x86_64", coreflow_avx512))]
            Kernel::Avx512 => avx2 && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(all(target_arch = "x86_64", coreflow_avx512)))]
            Kernel::Avx512 => false,
            Kernel::Avx2Fma => avx2,
            Kernel::Portable => true,
        }
    }

    /// Largest batch the kernel takes.
    pub(crate) fn max_rows(self) -> usize {
        match self {
            Kernel::Avx512 => SMALL_ROWS,
            Kernel::Avx2Fma | Kernel::Portable => AVX2_ROWS,
        }
    }
}

/// One linear layer, packed.
#[derive(Clone)]
struct Packed {
    fan_in: usize,
    /// Panels of [`LANES`] columns (the output width padded).
    panels: usize,
    /// Groups of up to [`GROUP`] panels, each `fan_in x (its columns)`
    /// row-major: one row of activations reads a group as one sequential
    /// stream (see [`Packed::at`]).
    weights: Vec<f32>,
    /// The bias, zero-padded to `panels x LANES`.
    bias: Vec<f32>,
}

/// Panels per group of the packed layout.
const GROUP: usize = 4;

impl Packed {
    fn new(w: MatRef<'_, f32>, bias: &[f32]) -> Self {
        let (fan_in, fan_out) = w.shape();
        let panels = fan_out.div_ceil(LANES);
        let mut p = Self {
            fan_in,
            panels,
            weights: vec![0.0; panels * fan_in * LANES],
            bias: vec![0.0; panels * LANES],
        };
        for j in 0..fan_out {
            let col = w.col(j);
            for k in 0..fan_in {
                let at = p.at(k, j / LANES) + j % LANES;
                p.weights[at] = col[k];
            }
        }
        p.bias[..fan_out].copy_from_slice(bias);
        p
    }
    fn width(&self) -> usize {
        self.panels * LANES
    }
    /// Row stride of group `g` (its number of columns).
    fn group_width(&self, g: usize) -> usize {
        (self.panels - g * GROUP).min(GROUP) * LANES
    }
    /// Offset of the `LANES` weights input `k` meets in panel `q`.
    fn at(&self, k: usize, q: usize) -> usize {
        let g = q / GROUP;
        g * GROUP * LANES * self.fan_in + k * self.group_width(g) + (q % GROUP) * LANES
    }
}

/// The packed layers of an `f32` network and the kernel that runs them.
#[derive(Clone)]
pub(crate) struct SmallPath {
    kernel: Kernel,
    layers: Vec<Packed>,
    /// The folded first bias `b'(t)` at `t = m / GRID`, `m = 0..=GRID`
    /// (`GRID + 1` rows of the padded width): every stage time of a
    /// fixed-step solve on `[0, 1]` with a power-of-two step count up to
    /// `GRID / 2` (RK4 with 16 steps by default) is one of them, so those
    /// solves do not evaluate time features at all.
    grid: Vec<f32>,
}

/// Intervals of the precomputed time grid of [`SmallPath`].
const GRID: usize = 64;

/// `m` when `t = m / GRID` exactly with `m` in `0..=GRID`.
fn grid_index(t: f64) -> Option<usize> {
    // Scaling by a power of two is exact, so the test is exact.
    let m = t * GRID as f64;
    (m >= 0.0 && m <= GRID as f64 && m == m.floor()).then_some(m as usize)
}

impl core::fmt::Debug for SmallPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmallPath")
            .field("kernel", &self.kernel)
            .field("layers", &self.layers.len())
            .finish()
    }
}

/// Rows of the probe batch of [`SmallPath::new`].
const PROBE_ROWS: usize = 3;

impl SmallPath {
    /// Packs `net` for `kernel` (or the detected one) and keeps the result
    /// only when it reproduces the batched path bit for bit on a probe batch
    /// at a shared time and at per-row times. The reduction order of the
    /// batched path is faer's, which is a property of its kernels on this
    /// machine rather than a documented contract, hence the check; a
    /// mismatch leaves every batch on the batched path.
    pub(crate) fn new(net: &VelocityNet<f32>, kernel: Option<Kernel>) -> Option<Self> {
        let kernel = kernel.or_else(Kernel::detect)?;
        if !kernel.available() {
            return None;
        }
        let c = *net.config();
        let layers: Vec<Packed> = (0..c.linear_layers())
            .map(|l| Packed::new(net.weight(l), net.bias(l)))
            .collect();
        let (hp, nf) = (layers[0].width(), 2 * c.time_freqs);
        let mut grid = vec![0.0; (GRID + 1) * hp];
        let mut tau = vec![0.0; nf];
        for (m, row) in grid.chunks_exact_mut(hp).enumerate() {
            let t = m as f64 / GRID as f64;
            net.time_features(&[t], MatMut::from_column_major_slice_mut(&mut tau, 1, nf));
            time_bias(kernel, &layers[0], c.dim, &tau, row);
        }
        let path = Self {
            kernel,
            layers,
            grid,
        };
        path.reproduces(net).then_some(path)
    }

    /// The kernel's instruction set, by name.
    pub(crate) fn kernel_name(&self) -> &'static str {
        match self.kernel {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2Fma => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// Largest batch these kernels take (larger ones go to the batched
    /// path).
    pub(crate) fn max_rows(&self) -> usize {
        self.kernel.max_rows()
    }

    /// Whether the row kernels give the batched path's bits on a probe.
    fn reproduces(&self, net: &VelocityNet<f32>) -> bool {
        let c = *net.config();
        let mut r = rng::stream(0x5ba11, 0);
        let x = Mat::<f64>::from_fn(PROBE_ROWS, c.dim, |_, _| 3.0 * rng::uniform(&mut r) - 1.5);
        let t: Vec<f64> = (0..PROBE_ROWS).map(|i| 0.1 + 0.37 * i as f64).collect();
        let mut mem = MemBuffer::new(StackReq::any_of(&[
            net.forward_scratch(PROBE_ROWS),
            Self::forward_scratch(&c, PROBE_ROWS),
        ]));
        let stack = MemStack::new(&mut mem);
        let ok = [Times::Shared(0.61), Times::Shared(0.375), Times::PerRow(&t)]
            .into_iter()
            .all(|times| {
                let mut batched = Mat::<f64>::zeros(PROBE_ROWS, c.dim);
                let mut rows = Mat::<f64>::zeros(PROBE_ROWS, c.dim);
                net.forward_batched(
                    times,
                    Io::store(x.as_ref(), None, batched.as_mut()),
                    Par::Seq,
                    stack,
                );
                self.forward(
                    net,
                    times,
                    Io::store(x.as_ref(), None, rows.as_mut()),
                    stack,
                );
                (0..c.dim).all(|j| {
                    (0..PROBE_ROWS).all(|i| batched[(i, j)].to_bits() == rows[(i, j)].to_bits())
                })
            });
        ok
    }

    /// Workspace of [`forward`](Self::forward) on `batch` rows.
    pub(crate) fn forward_scratch(c: &NetConfig, batch: usize) -> StackReq {
        let pad = |n: usize| n.div_ceil(LANES) * LANES;
        let hp = pad(c.hidden);
        StackReq::all_of(&[
            temp_slice_scratch::<f32>(hp),
            temp_slice_scratch::<f32>(batch * c.input_dim()),
            temp_slice_scratch::<f32>(batch * hp),
            temp_slice_scratch::<f32>(batch * hp),
            temp_slice_scratch::<f32>(batch * pad(c.dim)),
            temp_mat_scratch::<f32>(batch, c.dim),
            temp_slice_scratch::<f32>(batch.max(1) * 2 * c.time_freqs),
        ])
    }

    /// Workspace of [`product`](Self::product).
    pub(crate) fn product_scratch(c: &NetConfig) -> StackReq {
        let pad = |n: usize| n.div_ceil(LANES) * LANES;
        StackReq::all_of(&[
            temp_slice_scratch::<f32>(SMALL_ROWS * c.input_dim().max(c.hidden)),
            temp_slice_scratch::<f32>(SMALL_ROWS * pad(c.hidden.max(c.dim))),
        ])
    }

    /// `dst <- lhs W_l[..n, :]` (`n = lhs.ncols()`, at most [`SMALL_ROWS`]
    /// rows, any strides): the product of the batched path's matrix
    /// layouts, through row-major copies.
    pub(crate) fn product(
        &self,
        l: usize,
        dst: MatMut<'_, f32>,
        lhs: MatRef<'_, f32>,
        stack: &mut MemStack,
    ) {
        let (rows, n) = lhs.shape();
        let layer = &self.layers[l];
        let w = layer.width();
        assert!(rows <= SMALL_ROWS && dst.nrows() == rows && dst.ncols() <= w);
        let (a, stack) = temp_slice(rows * n, 0f32, stack);
        let (o, _) = temp_slice(rows * w, 0f32, stack);
        for j in 0..n {
            for i in 0..rows {
                a[i * n + j] = lhs[(i, j)];
            }
        }
        matmul_rows(self.kernel, layer, 0, n, a, n, rows, o, w);
        let mut dst = dst;
        for j in 0..dst.ncols() {
            for i in 0..rows {
                dst[(i, j)] = o[i * w + j];
            }
        }
    }

    /// One forward pass of `net` (whose packed layers these are) with input
    /// and output as `io` says: the operations of the batched path.
    pub(crate) fn forward<X: Real>(
        &self,
        net: &VelocityNet<f32>,
        times: Times<'_>,
        mut io: Io<'_, X>,
        stack: &mut MemStack,
    ) {
        let c = *net.config();
        let b = io.rows();
        io.check(c.dim);
        let (k, nf, d) = (c.dim, 2 * c.time_freqs, c.input_dim());
        let l0 = &self.layers[0];
        let hp = l0.width();
        let out_layer = &self.layers[c.layers];
        let op = out_layer.width();
        let (bias, stack) = temp_slice(hp, 0f32, stack);
        let (inp, stack) = temp_slice(b * d, 0f32, stack);
        let (mut act, stack) = temp_slice(b * hp, 0f32, stack);
        let (mut tmp, stack) = temp_slice(b * hp, 0f32, stack);
        let (orow, stack) = temp_slice(b * op, 0f32, stack);
        let (mut ocol, stack) = temp_mat_zeroed::<f32>(b, k, stack);
        let (tau, _) = temp_slice(b.max(1) * nf, 0f32, stack);
        let input = io.input();
        match times {
            Times::Shared(t) => {
                match grid_index(t) {
                    Some(m) => bias.copy_from_slice(&self.grid[m * hp..(m + 1) * hp]),
                    None => {
                        // One row: the column-major features are contiguous.
                        let tau = &mut tau[..nf];
                        net.time_features(&[t], MatMut::from_column_major_slice_mut(tau, 1, nf));
                        time_bias(self.kernel, l0, k, tau, bias);
                    }
                }
                write_rows(&input, inp, k);
                matmul_rows(self.kernel, l0, 0, k, inp, k, b, act, hp);
            }
            Times::PerRow(t) => {
                assert!(t.len() == b);
                let tau = &mut tau[..b * nf];
                net.time_features(t, MatMut::from_column_major_slice_mut(tau, b, nf));
                write_rows(&input, inp, d);
                for i in 0..b {
                    for j in 0..nf {
                        inp[i * d + k + j] = tau[j * b + i];
                    }
                }
                bias.copy_from_slice(&l0.bias);
                matmul_rows(self.kernel, l0, 0, d, inp, d, b, act, hp);
            }
        }
        bias_silu_rows(self.kernel, act, hp, b, bias);
        for layer in &self.layers[1..c.layers] {
            matmul_rows(self.kernel, layer, 0, c.hidden, act, hp, b, tmp, hp);
            bias_silu_rows(self.kernel, tmp, hp, b, &layer.bias);
            core::mem::swap(&mut act, &mut tmp);
        }
        matmul_rows(self.kernel, out_layer, 0, c.hidden, act, hp, b, orow, op);
        for j in 0..k {
            for i in 0..b {
                ocol[(i, j)] = orow[i * op + j];
            }
        }
        io.emit(ocol.as_ref(), net.bias(c.layers), 0);
    }
}

/// `inp[i w + j] <- x_ij` (or `x_ij + a k_ij`, formed in `X`), converted:
/// the conversions of [`Input::write`], row-major.
fn write_rows<X: Real>(input: &Input<'_, X>, inp: &mut [f32], w: usize) {
    let (b, k) = input.x.shape();
    match input.step {
        None => {
            for j in 0..k {
                for i in 0..b {
                    inp[i * w + j] = f32::from_f64(input.x[(i, j)].to_f64());
                }
            }
        }
        Some((a, kk)) => {
            for j in 0..k {
                for i in 0..b {
                    inp[i * w + j] = f32::from_f64((input.x[(i, j)] + a * kk[(i, j)]).to_f64());
                }
            }
        }
    }
}

/// `out[i ldo + j] <- sum_{p < n} a[i lda + p] W[k0 + p, j]` for the rows
/// `i < rows` and every packed column `j` (padding included), each sum
/// accumulated from zero in order with fused multiply-adds.
#[allow(clippy::too_many_arguments)]
fn matmul_rows(
    kernel: Kernel,
    layer: &Packed,
    k0: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    rows: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(k0 + n <= layer.fan_in && lda >= n && ldo >= layer.width());
    if rows == 0 {
        return;
    }
    assert!(a.len() >= (rows - 1) * lda + n && out.len() >= (rows - 1) * ldo + layer.width());
    match kernel {
        #[cfg(all(target_arch = "x86_64", coreflow_avx512))]
        Kernel::Avx512 => {
            // SAFETY: a SmallPath holds this kernel only when
            // Kernel::available detected AVX-512F, and the sizes were
            // checked above.
            unsafe { avx512::matmul_rows(layer, k0, n, a, lda, rows, out, ldo) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => {
            // SAFETY: a SmallPath holds this kernel only when
            // Kernel::available detected AVX2 and FMA, and the sizes were
            // checked above.
            unsafe { avx2::matmul_rows(layer, k0, n, a, lda, rows, out, ldo) }
        }
        #[cfg(not(all(target_arch = "x86_64", coreflow_avx512)))]
        Kernel::Avx512 => unreachable!("AVX-512 kernels are not built"),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma => unreachable!("AVX2 kernels exist on x86-64 only"),
        Kernel::Portable => portable_matmul_rows(layer, k0, n, a, lda, rows, out, ldo),
    }
}

#[allow(clippy::too_many_arguments)]
fn portable_matmul_rows(
    layer: &Packed,
    k0: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    rows: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for i in 0..rows {
        let ar = &a[i * lda..i * lda + n];
        for q in 0..layer.panels {
            let mut acc = [0f32; LANES];
            for (p, &av) in ar.iter().enumerate() {
                let w = &layer.weights[layer.at(k0 + p, q)..][..LANES];
                for (s, &wv) in acc.iter_mut().zip(w) {
                    *s = av.mul_add(wv, *s);
                }
            }
            out[i * ldo + q * LANES..i * ldo + (q + 1) * LANES].copy_from_slice(&acc);
        }
    }
}

/// `bias <- b_1 + tau W_1[k.., :]` (padded width), each column summed in
/// order with a rounded product and a rounded addition per term: the
/// operations of `VelocityNet::shared_time_bias`, vectorised across columns.
fn time_bias(kernel: Kernel, layer: &Packed, k: usize, tau: &[f32], bias: &mut [f32]) {
    assert!(k + tau.len() <= layer.fan_in && bias.len() == layer.width());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma | Kernel::Avx512 => {
            // SAFETY: as in matmul_rows (the AVX-512 kernel is available
            // only where AVX2 and FMA are).
            unsafe { avx2::time_bias(layer, k, tau, bias) }
        }
        _ => {
            for q in 0..layer.panels {
                let mut acc = [0f32; LANES];
                acc.copy_from_slice(&layer.bias[q * LANES..(q + 1) * LANES]);
                for (p, &tv) in tau.iter().enumerate() {
                    let w = &layer.weights[layer.at(k + p, q)..][..LANES];
                    for (s, &wv) in acc.iter_mut().zip(w) {
                        *s += tv * wv;
                    }
                }
                bias[q * LANES..(q + 1) * LANES].copy_from_slice(&acc);
            }
        }
    }
}

/// `z[i ld + j] <- silu(z[i ld + j] + bias_j)` for `j < ld` (the padded
/// width): the SiLU of `real::bias_silu`, element by element, with the
/// same choice of implementation.
fn bias_silu_rows(kernel: Kernel, z: &mut [f32], ld: usize, rows: usize, bias: &[f32]) {
    assert!(bias.len() == ld && ld % LANES == 0 && z.len() >= rows * ld);
    #[cfg(all(target_arch = "x86_64", coreflow_avx512))]
    if kernel == Kernel::Avx512 {
        // SAFETY: a SmallPath holds this kernel only when AVX-512F, AVX2
        // and FMA were detected.
        unsafe { super::real::silu_avx512::bias_silu_rows(&mut z[..rows * ld], bias) };
        return;
    }
    let _ = kernel;
    #[cfg(target_arch = "x86_64")]
    if super::real::silu_avx2::available() {
        // SAFETY: AVX2 and FMA were detected.
        unsafe { avx2::bias_silu_rows(&mut z[..rows * ld], bias) };
        return;
    }
    for row in z[..rows * ld].chunks_exact_mut(ld) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let x = *v + b;
            let s = 1.0 / (1.0 + (-x).exp_poly());
            *v = x * s;
        }
    }
}

/// The tiles of `out <- a W_l[k0.., :]` (the vector kernels' common loop):
/// for every group of `layer` and every run of at most 6 rows of `a`, as
/// even as possible (short tiles have too few accumulators to keep the
/// multiply-add units busy), calls `tile(weights, ldw, a_rows, out_rows,
/// rows)` with the group's weights from input `k0` on, its row stride, and
/// the first row of the run in `a` and `out` (at the group's columns).
/// Sizes are the caller's to check ([`matmul_rows`]).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn for_each_tile(
    layer: &Packed,
    k0: usize,
    a: &[f32],
    lda: usize,
    nrows: usize,
    out: &mut [f32],
    ldo: usize,
    mut tile: impl FnMut(*const f32, usize, *const f32, *mut f32, usize),
) {
    for g in 0..layer.panels.div_ceil(GROUP) {
        let q = g * GROUP;
        let w = layer.weights[layer.at(k0, q)..].as_ptr();
        let mut i = 0;
        while i < nrows {
            let left = nrows - i;
            let r = left.div_ceil(left.div_ceil(6));
            let ap = a[i * lda..].as_ptr();
            let op = out[i * ldo + q * LANES..].as_mut_ptr();
            tile(w, layer.group_width(g), ap, op, r);
            i += r;
        }
    }
}

/// The product tile, written once for every vector width: `R` rows times
/// `V` adjacent vectors of `$width` columns of one group (row stride
/// `ldw`), `R V` accumulators, one broadcast per row and `V` weight vectors
/// per term; each accumulator lane is one chain of fused multiply-adds in
/// input order (module docs). Expands to `unsafe fn tile::<R, V>`.
#[cfg(target_arch = "x86_64")]
macro_rules! row_tile {
    ($feature:literal, $width:expr, $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        #[inline]
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile<const R: usize, const V: usize>(
            w: *const f32,
            ldw: usize,
            n: usize,
            a: *const f32,
            lda: usize,
            out: *mut f32,
            ldo: usize,
        ) {
            let mut acc = [[$zero(); V]; R];
            for p in 0..n {
                let mut wv = [$zero(); V];
                for (v, x) in wv.iter_mut().enumerate() {
                    *x = $load(w.add(p * ldw + $width * v));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = $splat(*a.add(r * lda + p));
                    for (acc_v, x) in acc_r.iter_mut().zip(&wv) {
                        *acc_v = $fma(av, *x, *acc_v);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (v, acc_v) in acc_r.iter().enumerate() {
                    $store(out.add(r * ldo + $width * v), *acc_v);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Packed, GROUP, LANES};
    use core::arch::x86_64::*;

    row_tile!(
        "avx2,fma",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );

    /// Every vector of one group for `R` rows, `V` vectors per tile
    /// (enough independent accumulators to hide the multiply-add latency
    /// within the 16 vector registers), then the rest.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn group<const R: usize, const V: usize>(
        w: *const f32,
        ldw: usize,
        n: usize,
        a: *const f32,
        lda: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let vectors = ldw / 8;
        let mut v = 0;
        while v + V <= vectors {
            tile::<R, V>(w.add(8 * v), ldw, n, a, lda, out.add(8 * v), ldo);
            v += V;
        }
        if v + 2 <= vectors {
            tile::<R, 2>(w.add(8 * v), ldw, n, a, lda, out.add(8 * v), ldo);
            v += 2;
        }
        if v < vectors {
            tile::<R, 1>(w.add(8 * v), ldw, n, a, lda, out.add(8 * v), ldo);
        }
    }

    /// One row: a whole group per tile, so the row reads each group as one
    /// sequential stream.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_one_row(w: *const f32, ldw: usize, n: usize, a: *const f32, out: *mut f32) {
        match ldw / 8 {
            8 => tile::<1, 8>(w, ldw, n, a, 0, out, 0),
            6 => tile::<1, 6>(w, ldw, n, a, 0, out, 0),
            4 => tile::<1, 4>(w, ldw, n, a, 0, out, 0),
            _ => tile::<1, 2>(w, ldw, n, a, 0, out, 0),
        }
    }

    /// [`super::matmul_rows`] on AVX2 tiles; the caller checked the
    /// features and the sizes.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn matmul_rows(
        layer: &Packed,
        k0: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        nrows: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        super::for_each_tile(layer, k0, a, lda, nrows, out, ldo, |w, ldw, ap, op, r| {
            // SAFETY: as for this function.
            unsafe {
                match r {
                    1 => group_one_row(w, ldw, n, ap, op),
                    2 => group::<2, 4>(w, ldw, n, ap, lda, op, ldo),
                    3 => group::<3, 3>(w, ldw, n, ap, lda, op, ldo),
                    4 => group::<4, 3>(w, ldw, n, ap, lda, op, ldo),
                    5 => group::<5, 2>(w, ldw, n, ap, lda, op, ldo),
                    _ => group::<6, 2>(w, ldw, n, ap, lda, op, ldo),
                }
            }
        });
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn time_bias(layer: &Packed, k: usize, tau: &[f32], bias: &mut [f32]) {
        for q in 0..layer.panels {
            let b = layer.bias.as_ptr().add(q * LANES);
            let mut acc = [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))];
            let w = layer.weights.as_ptr().add(layer.at(k, q));
            let ldw = layer.group_width(q / GROUP);
            for (p, &tv) in tau.iter().enumerate() {
                let t = _mm256_set1_ps(tv);
                let wp = w.add(p * ldw);
                acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(t, _mm256_loadu_ps(wp)));
                acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(t, _mm256_loadu_ps(wp.add(8))));
            }
            let o = bias.as_mut_ptr().add(q * LANES);
            _mm256_storeu_ps(o, acc[0]);
            _mm256_storeu_ps(o.add(8), acc[1]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_silu_rows(z: &mut [f32], bias: &[f32]) {
        for row in z.chunks_exact_mut(bias.len()) {
            for (c, b) in row.chunks_exact_mut(8).zip(bias.chunks_exact(8)) {
                let v = _mm256_add_ps(_mm256_loadu_ps(c.as_ptr()), _mm256_loadu_ps(b.as_ptr()));
                _mm256_storeu_ps(c.as_mut_ptr(), super::super::real::silu_avx2::silu(v).0);
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", coreflow_avx512))]
// Compiled only by Rust 1.89 or later (build.rs), which stabilised these
// intrinsics.
#[clippy::msrv = "1.89"]
mod avx512 {
    use super::{Packed, LANES};
    use core::arch::x86_64::*;

    row_tile!(
        "avx512f",
        LANES,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );

    /// A whole group (1 to [`GROUP`](super::GROUP) vectors) for `R` rows in one tile.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn group<const R: usize>(
        w: *const f32,
        ldw: usize,
        n: usize,
        a: *const f32,
        lda: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        match ldw / LANES {
            4 => tile::<R, 4>(w, ldw, n, a, lda, out, ldo),
            3 => tile::<R, 3>(w, ldw, n, a, lda, out, ldo),
            2 => tile::<R, 2>(w, ldw, n, a, lda, out, ldo),
            _ => tile::<R, 1>(w, ldw, n, a, lda, out, ldo),
        }
    }

    /// [`super::matmul_rows`] on AVX-512 tiles; the caller checked the
    /// features and the sizes.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn matmul_rows(
        layer: &Packed,
        k0: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        nrows: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        super::for_each_tile(layer, k0, a, lda, nrows, out, ldo, |w, ldw, ap, op, r| {
            // SAFETY: as for this function.
            unsafe {
                match r {
                    1 => group::<1>(w, ldw, n, ap, lda, op, ldo),
                    2 => group::<2>(w, ldw, n, ap, lda, op, ldo),
                    3 => group::<3>(w, ldw, n, ap, lda, op, ldo),
                    4 => group::<4>(w, ldw, n, ap, lda, op, ldo),
                    5 => group::<5>(w, ldw, n, ap, lda, op, ldo),
                    _ => group::<6>(w, ldw, n, ap, lda, op, ldo),
                }
            }
        });
    }
}
