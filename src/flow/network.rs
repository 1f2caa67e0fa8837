//! The velocity network `v_theta(x, t)`: an MLP on `[x, tau(t)]`.
//!
//! Input: the state `x` (`k = dim` values) and the time features
//! `tau(t) = (sin w_1 t, ..., sin w_K t, cos w_1 t, ..., cos w_K t)` with
//! `K = time_freqs` frequencies `w_j = 100^(j / (K - 1))` log-spaced in
//! `[1, 100]` (`w = 1` when `K = 1`). Then `L = layers` hidden layers of width
//! `H = hidden`, each `a_l = silu(a_{l-1} W_l + b_l)` with
//! `silu(z) = z sigmoid(z)`, and a linear output `v = a_L W_o + b_o` of size `k`.
//!
//! Layout: a batch is a column-major `B x features` matrix, one sample per
//! row, so every layer is one GEMM `(B x fan_in) (fan_in x fan_out)`. With
//! faer's kernels a row of the product depends only on the same row of the
//! left factor (measured bitwise, including `B = 1`), which makes every
//! per-sample result independent of the batch it was computed in. Products
//! with 1 to [`SMALL_ROWS`] rows run on the row kernels of [`super::small`]
//! instead, over weights packed when the network is built; they give the
//! same bits, so the batch size only decides the speed.
//!
//! Parameters live in one flat buffer ([`VelocityNet::params`]) so that Adam,
//! the weight EMA, gradient reduction and persistence treat them as one slice.
//! Linear layer `l` (`0..=L`, the last one is the output) stores its weight
//! `W_l` (`fan_in x fan_out`, column-major) followed by its bias `b_l`
//! (`fan_out`); see [`NetConfig::layer`].
//!
//! Backward pass (for a loss `sum_b dout_b . v_b`): with `g_o = dout`,
//! `dW_o = a_L^T g_o`, `db_o = 1^T g_o`, `da_L = g_o W_o^T`; for each hidden
//! layer `g_l = da_l * silu'(z_l)`, `dW_l = a_{l-1}^T g_l`, `db_l = 1^T g_l`,
//! `da_{l-1} = g_l W_l^T` (not formed for the input layer).
//!
//! Divergence: the Jacobian trace `sum_j dv_j / dx_j` by forward mode. The
//! tangent of hidden layer 1 along input direction `e_j` is
//! `silu'(z_1) * W_1[j, :]` (no product needed), later layers multiply by
//! `W_l` and `silu'(z_l)`, and only component `j` of the output tangent is
//! needed: `t_L . W_o[:, j]`. All `k` directions of a batch go through one
//! GEMM per hidden layer (`(B k) x H` by `H x H`). The Hutchinson estimate
//! `eps^T J eps` is one forward-mode pass along `eps`.

use super::real::{self, col_mut, col_ref, Real};
use super::small::{Kernel, SmallPath, SMALL_ROWS};
use crate::error::{Error, Result};
use crate::numerics::{temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch};
use crate::rng;
use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::matmul::matmul;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};

/// Largest accepted width, depth and frequency count (keeps every workspace
/// size computation far from overflow).
const MAX_SIZE: usize = 1 << 20;

/// The architecture of a velocity network.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Data dimension `k` (input state and output velocity).
    pub dim: usize,
    /// Hidden width `H`.
    pub hidden: usize,
    /// Number of hidden layers `L`.
    pub layers: usize,
    /// Number of time frequencies `K` (the time features are `2 K` values).
    pub time_freqs: usize,
}

/// Where one linear layer lives in the flat parameter buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LayerSlot {
    /// Input width of the layer.
    pub fan_in: usize,
    /// Output width of the layer.
    pub fan_out: usize,
    /// Offset of the `fan_in x fan_out` column-major weight matrix.
    pub weight: usize,
    /// Offset of the `fan_out` bias values (right after the weight).
    pub bias: usize,
}

impl NetConfig {
    /// Checks the sizes (all must be positive).
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("dim", self.dim),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("time_freqs", self.time_freqs),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("net.{name}: must be > 0")));
            }
            if v > MAX_SIZE {
                return Err(Error::invalid(format!(
                    "net.{name}: {v} exceeds the maximum {MAX_SIZE}"
                )));
            }
        }
        Ok(())
    }
    /// Width of the network input, `dim + 2 time_freqs`.
    pub fn input_dim(&self) -> usize {
        self.dim + 2 * self.time_freqs
    }
    /// Number of linear layers, `layers + 1` (the last is the output layer).
    pub fn linear_layers(&self) -> usize {
        self.layers + 1
    }
    /// The slot of linear layer `l` in `0..=layers`.
    pub fn layer(&self, l: usize) -> LayerSlot {
        assert!(l <= self.layers);
        let (d_in, h, k) = (self.input_dim(), self.hidden, self.dim);
        let first = d_in * h + h;
        let hid = h * h + h;
        let (fan_in, fan_out, weight) = if l == 0 {
            (d_in, h, 0)
        } else if l < self.layers {
            (h, h, first + (l - 1) * hid)
        } else {
            (h, k, first + (self.layers - 1) * hid)
        };
        LayerSlot {
            fan_in,
            fan_out,
            weight,
            bias: weight + fan_in * fan_out,
        }
    }
    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        let last = self.layer(self.layers);
        last.bias + last.fan_out
    }
    /// Angular frequency `w_j`, log-spaced in `[1, 100]`.
    pub fn frequency(&self, j: usize) -> f64 {
        if self.time_freqs == 1 {
            1.0
        } else {
            libm::pow(100.0, j as f64 / (self.time_freqs - 1) as f64)
        }
    }
    /// Multiply-adds of one forward pass for one sample.
    pub fn macs(&self) -> usize {
        let h = self.hidden;
        self.input_dim() * h + (self.layers - 1) * h * h + h * self.dim
    }
}

/// Which row kernel [`VelocityNet::with_row_kernel`] packs for.
#[doc(hidden)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RowKernel {
    /// The one detected for this machine.
    Detected,
    /// The AVX2 one (x86-64 with AVX2 and FMA).
    Avx2,
    /// The portable one.
    Portable,
}

/// When the rows of a batch are evaluated.
#[derive(Copy, Clone, Debug)]
pub enum Times<'a> {
    /// Every row at the same time (fixed-step solvers). The time features
    /// then fold into the first bias, which saves `2 K` columns of the first
    /// product.
    Shared(f64),
    /// Row `i` at time `t[i]` (training, adaptive solvers).
    PerRow(&'a [f64]),
}

/// A velocity network with its parameters.
#[derive(Clone, Debug)]
pub struct VelocityNet<T: Real> {
    config: NetConfig,
    /// `w_j / (2 pi)`: frequencies in turns per unit time.
    turns: Vec<f64>,
    params: Vec<T>,
    /// Packed weights for the row kernels of small batches (`f32` networks
    /// on machines with a fast kernel); dropped when the parameters are
    /// handed out mutably, which leaves every batch on the batched path
    /// with the same results.
    small: Option<SmallPath>,
}

impl<T: Real> PartialEq for VelocityNet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.params == other.params
    }
}

/// A network input `x` or `x + a k`, in the caller's real type.
#[derive(Copy, Clone)]
pub(crate) struct Input<'a, X> {
    pub(crate) x: MatRef<'a, X>,
    pub(crate) step: Option<(X, MatRef<'a, X>)>,
}

impl<'a, X: Real> Input<'a, X> {
    /// Columns `j0..j0 + n` of the input.
    pub(crate) fn subcols(&self, j0: usize, n: usize) -> Input<'a, X> {
        Input {
            x: self.x.subcols(j0, n),
            step: self.step.map(|(a, k)| (a, k.subcols(j0, n))),
        }
    }
    /// Writes the input, converted, into `dst`.
    pub(crate) fn write<T: Real>(&self, dst: MatMut<'_, T>) {
        match self.step {
            None => real::convert(self.x, dst),
            Some((a, k)) => real::axpy_convert(self.x, a, k, dst),
        }
    }
}

/// Where the velocity `f = v(x, t)` of a forward pass goes, in the caller's
/// real type `X`.
pub(crate) enum Sink<'a, X> {
    /// `out <- f`.
    Store(MatMut<'a, X>),
    /// `out <- f` and `acc <- base + c f` (`base` is `acc` itself when
    /// `None`): a Runge–Kutta stage that also accumulates the step.
    StoreCombine {
        /// Receives `f`.
        out: MatMut<'a, X>,
        /// The accumulator.
        acc: MatMut<'a, X>,
        /// The value the accumulator starts from (`None`: its own).
        base: Option<MatRef<'a, X>>,
        /// The weight of `f`.
        c: X,
    },
}

/// The input and output of one forward pass.
pub(crate) enum Io<'a, X> {
    /// Input `x` or `x + a k`; the output goes to a [`Sink`].
    Separate {
        input: Input<'a, X>,
        sink: Sink<'a, X>,
    },
    /// Input `x` or `x + a k`, then `x <- x + c (acc + f)` (`acc` = 0 when
    /// `None`): the last stage of a solver step, which updates the state it
    /// was evaluated at.
    Advance {
        x: MatMut<'a, X>,
        step: Option<(X, MatRef<'a, X>)>,
        acc: Option<MatRef<'a, X>>,
        c: X,
    },
}

impl<'a, X: Real> Io<'a, X> {
    /// `out <- v(x + a k, t)` (`v(x, t)` without `step`).
    pub(crate) fn store(
        x: MatRef<'a, X>,
        step: Option<(X, MatRef<'a, X>)>,
        out: MatMut<'a, X>,
    ) -> Self {
        Io::Separate {
            input: Input { x, step },
            sink: Sink::Store(out),
        }
    }
    pub(crate) fn input(&self) -> Input<'_, X> {
        match self {
            Io::Separate { input, .. } => *input,
            Io::Advance { x, step, .. } => Input {
                x: x.rb(),
                step: *step,
            },
        }
    }
    pub(crate) fn rows(&self) -> usize {
        self.input().x.nrows()
    }
    pub(crate) fn check(&self, dim: usize) {
        let b = self.rows();
        let ok = |m: (usize, usize)| m == (b, dim);
        let inp = self.input();
        assert!(ok(inp.x.shape()) && inp.step.is_none_or(|(_, k)| ok(k.shape())));
        match self {
            Io::Separate { sink, .. } => match sink {
                Sink::Store(out) => assert!(ok(out.shape())),
                Sink::StoreCombine { out, acc, base, .. } => assert!(
                    ok(out.shape()) && ok(acc.shape()) && base.is_none_or(|m| ok(m.shape()))
                ),
            },
            Io::Advance { acc, .. } => assert!(acc.is_none_or(|m| ok(m.shape()))),
        }
    }
    /// Delivers `f = o + bias` (the product `o`, bias added per column) as
    /// output columns `j0..j0 + o.ncols()`, as the variant says.
    pub(crate) fn emit<T: Real>(&mut self, o: MatRef<'_, T>, bias: &[T], j0: usize) {
        let n = o.ncols();
        match self {
            Io::Separate { sink, .. } => match sink {
                Sink::Store(out) => {
                    real::add_bias_convert(o, bias, out.rb_mut().subcols_mut(j0, n))
                }
                Sink::StoreCombine { out, acc, base, c } => real::bias_store_combine(
                    o,
                    bias,
                    out.rb_mut().subcols_mut(j0, n),
                    acc.rb_mut().subcols_mut(j0, n),
                    base.map(|m| m.subcols(j0, n)),
                    *c,
                ),
            },
            Io::Advance { x, acc, c, .. } => real::bias_advance(
                o,
                bias,
                x.rb_mut().subcols_mut(j0, n),
                acc.map(|m| m.subcols(j0, n)),
                *c,
            ),
        }
    }
}

/// The activations of one training forward pass, kept for the backward pass.
///
/// Carved from one caller-provided slice of [`Tape::len`] values: the input
/// `B x (k + 2K)`, the activations and SiLU derivatives of each hidden layer
/// (`B x H` each) and the output `B x k`.
pub struct Tape<'a, T> {
    config: NetConfig,
    batch: usize,
    buf: &'a mut [T],
}

impl<'a, T: Real> Tape<'a, T> {
    /// Number of values a tape for `batch` rows needs.
    pub fn len(config: &NetConfig, batch: usize) -> usize {
        batch * (config.input_dim() + 2 * config.layers * config.hidden + config.dim)
    }
    /// Builds a tape over `buf` (at least [`Tape::len`] values).
    pub fn new(config: &NetConfig, batch: usize, buf: &'a mut [T]) -> Self {
        let n = Self::len(config, batch);
        assert!(buf.len() >= n, "tape buffer too small");
        Self {
            config: *config,
            batch,
            buf: &mut buf[..n],
        }
    }
    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// The network input `[x, tau(t)]`, `B x (k + 2K)`: the caller fills it
    /// (see [`VelocityNet::time_features`]) before [`VelocityNet::forward_train`].
    pub fn input_mut(&mut self) -> MatMut<'_, T> {
        let (b, d) = (self.batch, self.config.input_dim());
        MatMut::from_column_major_slice_mut(&mut self.buf[..b * d], b, d)
    }
    /// The network input.
    pub fn input(&self) -> MatRef<'_, T> {
        let (b, d) = (self.batch, self.config.input_dim());
        MatRef::from_column_major_slice(&self.buf[..b * d], b, d)
    }
    /// The network output `v`, `B x k`, after [`VelocityNet::forward_train`].
    pub fn output(&self) -> MatRef<'_, T> {
        let (b, k) = (self.batch, self.config.dim);
        let off = self.buf.len() - b * k;
        MatRef::from_column_major_slice(&self.buf[off..], b, k)
    }
    /// Splits into (input, activations, derivatives, output) slices.
    fn parts(&mut self) -> (&mut [T], &mut [T], &mut [T], &mut [T]) {
        let c = &self.config;
        let b = self.batch;
        let hid = c.layers * b * c.hidden;
        let (input, rest) = self.buf.split_at_mut(b * c.input_dim());
        let (acts, rest) = rest.split_at_mut(hid);
        let (derivs, out) = rest.split_at_mut(hid);
        (input, acts, derivs, out)
    }
    fn parts_ref(&self) -> (&[T], &[T], &[T]) {
        let c = &self.config;
        let b = self.batch;
        let hid = c.layers * b * c.hidden;
        let (input, rest) = self.buf.split_at(b * c.input_dim());
        let (acts, rest) = rest.split_at(hid);
        let (derivs, _) = rest.split_at(hid);
        (input, acts, derivs)
    }
}

#[inline]
fn block<T>(s: &[T], l: usize, b: usize, h: usize) -> MatRef<'_, T> {
    MatRef::from_column_major_slice(&s[l * b * h..(l + 1) * b * h], b, h)
}

#[inline]
fn block_mut<T>(s: &mut [T], l: usize, b: usize, h: usize) -> MatMut<'_, T> {
    MatMut::from_column_major_slice_mut(&mut s[l * b * h..(l + 1) * b * h], b, h)
}

/// Workspace for a [`temp_rows`] matrix.
pub(crate) fn temp_rows_scratch<T>(rows: usize, cols: usize) -> StackReq {
    temp_slice_scratch::<T>(rows.max(2) * cols)
}

/// A zeroed `rows x cols` batch matrix with column stride `max(rows, 2)`.
///
/// A one-row operand with unit column stride would send faer's product to
/// its matrix-vector kernels, whose summation order differs from the GEMM
/// kernels'; a column stride of at least 2 keeps single rows on the same
/// kernels as larger batches, so per-row results do not depend on the batch.
fn temp_rows<T: Real>(
    rows: usize,
    cols: usize,
    stack: &mut MemStack,
) -> (MatMut<'_, T>, &mut MemStack) {
    let ld = rows.max(2);
    let (buf, stack) = temp_slice(ld * cols, T::ZERO, stack);
    (
        MatMut::from_column_major_slice_with_stride_mut(buf, rows, cols, ld),
        stack,
    )
}

/// A `rows x cols` batch matrix laid out like [`temp_rows`], left
/// uninitialised.
///
/// # Safety
///
/// Every element must be written before it is read. The callers use it for
/// destinations of products with `Accum::Replace` (faer documents that the
/// destination is then not read) and of conversions that write every
/// element; skipping the zero fill saves a pass over the largest
/// temporaries of every sampler step.
pub(crate) unsafe fn temp_rows_uninit<T: Real>(
    rows: usize,
    cols: usize,
    stack: &mut MemStack,
) -> (MatMut<'_, T>, &mut MemStack) {
    let ld = rows.max(2);
    let (buf, stack) = stack.make_aligned_uninit::<T>(ld * cols, crate::numerics::ALIGN);
    // SAFETY: the buffer holds `ld * cols >= rows * cols` values of `T`
    // with column stride `ld`; initialisation is the caller's contract.
    let mat = unsafe {
        MatMut::from_raw_parts_mut(buf.as_mut_ptr() as *mut T, rows, cols, 1, ld as isize)
    };
    (mat, stack)
}

/// The same matrix typed as `f32` when `T` is `f32`.
fn as_f32_mut<T: 'static>(m: MatMut<'_, T>) -> Option<MatMut<'_, f32>> {
    if core::any::TypeId::of::<T>() != core::any::TypeId::of::<f32>() {
        return None;
    }
    let (r, c, rs, cs) = (m.nrows(), m.ncols(), m.row_stride(), m.col_stride());
    // SAFETY: T is f32, so this is the same view with the same lifetime.
    Some(unsafe { MatMut::from_raw_parts_mut(m.as_ptr_mut() as *mut f32, r, c, rs, cs) })
}

/// The same matrix typed as `f32` when `T` is `f32`.
fn as_f32_ref<T: 'static>(m: MatRef<'_, T>) -> Option<MatRef<'_, f32>> {
    if core::any::TypeId::of::<T>() != core::any::TypeId::of::<f32>() {
        return None;
    }
    let (r, c, rs, cs) = (m.nrows(), m.ncols(), m.row_stride(), m.col_stride());
    // SAFETY: T is f32, so this is the same view with the same lifetime.
    Some(unsafe { MatRef::from_raw_parts(m.as_ptr() as *const f32, r, c, rs, cs) })
}

#[inline]
pub(crate) fn gemm<T: Real>(dst: MatMut<'_, T>, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, par: Par) {
    matmul(dst, Accum::Replace, lhs, rhs, T::ONE, par);
}

impl<T: Real> VelocityNet<T> {
    /// A network with freshly initialised parameters: weights and biases of a
    /// layer with fan-in `n` uniform in `[-1/sqrt(n), 1/sqrt(n)]` (the He-style
    /// default of common frameworks), drawn from stream `seed`.
    pub fn new(config: NetConfig, seed: u64) -> Result<Self> {
        config.check()?;
        let mut params = vec![T::ZERO; config.num_params()];
        let mut r = rng::stream(seed, 0x1417_u64 << 32);
        for l in 0..config.linear_layers() {
            let s = config.layer(l);
            let a = 1.0 / (s.fan_in as f64).sqrt();
            for p in params[s.weight..s.bias + s.fan_out].iter_mut() {
                *p = T::from_f64(a * (2.0 * rng::uniform(&mut r) - 1.0));
            }
        }
        Ok(Self::with_params_unchecked(config, params))
    }

    /// A network with the given parameters (`config.num_params()` values).
    pub fn from_params(config: NetConfig, params: Vec<T>) -> Result<Self> {
        config.check()?;
        if params.len() != config.num_params() {
            return Err(Error::shape(format!(
                "params: expected {} values for this architecture, got {}",
                config.num_params(),
                params.len()
            )));
        }
        if params.iter().any(|p| !p.to_f64().is_finite()) {
            return Err(Error::non_finite("params: contains a non-finite value"));
        }
        Ok(Self::with_params_unchecked(config, params))
    }

    fn with_params_unchecked(config: NetConfig, params: Vec<T>) -> Self {
        let turns = (0..config.time_freqs)
            .map(|j| config.frequency(j) / core::f64::consts::TAU)
            .collect();
        let mut net = Self {
            config,
            turns,
            params,
            small: None,
        };
        net.small = net.as_f32().and_then(|n| SmallPath::new(n, None));
        net
    }

    /// The same network typed as `f32` when `T` is `f32`.
    fn as_f32(&self) -> Option<&VelocityNet<f32>> {
        (core::any::TypeId::of::<T>() == core::any::TypeId::of::<f32>())
            // SAFETY: T is f32, so this is the same type.
            .then(|| unsafe { &*(self as *const Self as *const VelocityNet<f32>) })
    }

    /// Whether batches of 1 to [`SMALL_ROWS`] rows run on the row kernels
    /// of [`super::small`] (the results are the same either way).
    pub fn has_row_kernels(&self) -> bool {
        self.small.is_some()
    }

    /// The instruction set of the row kernels (`"avx512"`, `"avx2"`,
    /// `"portable"`), `None` without row kernels.
    #[doc(hidden)]
    pub fn row_kernel(&self) -> Option<&'static str> {
        self.small.as_ref().map(|s| s.kernel_name())
    }

    /// The same network with its row kernels packed for `kernel` (tests
    /// compare the kernels; `None` when they do not reproduce the batched
    /// path).
    #[doc(hidden)]
    pub fn with_row_kernel(&self, kernel: RowKernel) -> Option<Self> {
        // Checked against the batched path alone.
        let mut net = self.without_row_kernels();
        let k = match kernel {
            RowKernel::Detected => None,
            RowKernel::Avx2 => Some(Kernel::Avx2Fma),
            RowKernel::Portable => Some(Kernel::Portable),
        };
        net.small = Some(SmallPath::new(net.as_f32()?, k)?);
        Some(net)
    }

    /// The same network without row kernels: every batch on the batched path.
    #[doc(hidden)]
    pub fn without_row_kernels(&self) -> Self {
        let mut net = self.clone();
        net.small = None;
        net
    }

    /// The architecture.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }
    /// All parameters, in the layout of [`NetConfig::layer`].
    pub fn params(&self) -> &[T] {
        &self.params
    }
    /// All parameters, mutable (the row kernels' packed copy is dropped).
    pub fn params_mut(&mut self) -> &mut [T] {
        self.small = None;
        &mut self.params
    }
    /// Consumes the network, returning its parameters.
    pub fn into_params(self) -> Vec<T> {
        self.params
    }

    pub(crate) fn weight(&self, l: usize) -> MatRef<'_, T> {
        let s = self.config.layer(l);
        MatRef::from_column_major_slice(&self.params[s.weight..s.bias], s.fan_in, s.fan_out)
    }
    pub(crate) fn bias(&self, l: usize) -> &[T] {
        let s = self.config.layer(l);
        &self.params[s.bias..s.bias + s.fan_out]
    }

    /// Writes `tau(t_i)` into row `i` of `out` (`B x 2K`, unit row stride):
    /// sines in the first `K` columns, cosines in the last `K`.
    pub fn time_features(&self, t: &[f64], out: MatMut<'_, T>) {
        assert!(out.nrows() == t.len() && out.ncols() == 2 * self.config.time_freqs);
        time_features_kernel::<T>(&self.turns, t, out);
    }

    /// Workspace for [`forward`](Self::forward) on `batch` rows.
    pub fn forward_scratch(&self, batch: usize) -> StackReq {
        let c = &self.config;
        StackReq::any_of(&[
            StackReq::all_of(&[
                temp_slice_scratch::<T>(c.hidden),
                temp_rows_scratch::<T>(batch, c.hidden),
                temp_rows_scratch::<T>(batch, c.hidden),
                temp_rows_scratch::<T>(batch, c.dim),
                self.first_layer_scratch(batch),
            ]),
            SmallPath::forward_scratch(c, batch.min(SMALL_ROWS)),
        ])
    }

    /// `out <- v(x, t)` for a batch: `x` and `out` are `B x k` with unit row
    /// stride, in any real type `X` (converted on the way in and out).
    pub fn forward<X: Real>(
        &self,
        times: Times<'_>,
        x: MatRef<'_, X>,
        out: MatMut<'_, X>,
        par: Par,
        stack: &mut MemStack,
    ) {
        self.forward_io(times, Io::store(x, None, out), par, stack)
    }

    /// `out <- v(x + a k, t)`: a solver stage, with the combination formed
    /// while converting the input (workspace of [`forward`](Self::forward)).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_stage<X: Real>(
        &self,
        times: Times<'_>,
        x: MatRef<'_, X>,
        a: X,
        k: MatRef<'_, X>,
        out: MatMut<'_, X>,
        par: Par,
        stack: &mut MemStack,
    ) {
        self.forward_io(times, Io::store(x, Some((a, k)), out), par, stack)
    }

    /// One forward pass with input and output as `io` says (workspace of
    /// [`forward`](Self::forward)): on the row kernels for 1 to
    /// [`SMALL_ROWS`] rows when the network has them, else batched.
    pub(crate) fn forward_io<X: Real>(
        &self,
        times: Times<'_>,
        io: Io<'_, X>,
        par: Par,
        stack: &mut MemStack,
    ) {
        if let (Some(small), Some(net)) = (&self.small, self.as_f32()) {
            if (1..=small.max_rows()).contains(&io.rows()) {
                return small.forward(net, times, io, stack);
            }
        }
        self.forward_batched(times, io, par, stack)
    }

    /// [`forward_io`](Self::forward_io) with faer's products whatever the
    /// batch size.
    pub(crate) fn forward_batched<X: Real>(
        &self,
        times: Times<'_>,
        mut io: Io<'_, X>,
        par: Par,
        stack: &mut MemStack,
    ) {
        let c = self.config;
        let b = io.rows();
        io.check(c.dim);
        let (bias, stack) = temp_slice(c.hidden, T::ZERO, stack);
        // SAFETY: a, z and o are destinations of Replace products before
        // they are read.
        let (mut a, stack) = unsafe { temp_rows_uninit::<T>(b, c.hidden, stack) };
        let (mut z, stack) = unsafe { temp_rows_uninit::<T>(b, c.hidden, stack) };
        let (mut o, stack) = unsafe { temp_rows_uninit::<T>(b, c.dim, stack) };
        self.first_layer(times, io.input(), a.rb_mut(), bias, par, stack);
        real::bias_silu(a.rb_mut(), bias);
        let a = self.hidden_layers(a.rb_mut(), z.rb_mut(), par);
        gemm(o.rb_mut(), a.rb(), self.weight(c.layers), par);
        io.emit(o.rb(), self.bias(c.layers), 0);
    }

    /// `bias <- b_1 + tau(t) W_1[k.., :]`: with every row at the same time
    /// the time features fold into the first bias (workspace of
    /// [`forward`](Self::forward)).
    pub(crate) fn shared_time_bias<'s>(
        &self,
        t: f64,
        bias: &mut [T],
        stack: &'s mut MemStack,
    ) -> &'s mut MemStack {
        let c = &self.config;
        let nf = 2 * c.time_freqs;
        let (mut tau, stack) = temp_mat_zeroed::<T>(1, nf, stack);
        self.time_features(&[t], tau.rb_mut());
        bias.copy_from_slice(self.bias(0));
        let wt = self.weight(0).subrows(c.dim, nf);
        for (h, bh) in bias.iter_mut().enumerate() {
            let mut s = *bh;
            for i in 0..nf {
                s += tau[(0, i)] * wt[(i, h)];
            }
            *bh = s;
        }
        stack
    }

    /// `a <- a_L` from `a = a_1` (hidden layers 2 to L); `z` is a second
    /// `B x H` buffer. Returns the buffer holding the result.
    pub(crate) fn hidden_layers<'m>(
        &self,
        a: MatMut<'m, T>,
        z: MatMut<'m, T>,
        par: Par,
    ) -> MatMut<'m, T> {
        let (mut a, mut z) = (a, z);
        for l in 1..self.config.layers {
            gemm(z.rb_mut(), a.rb(), self.weight(l), par);
            real::bias_silu(z.rb_mut(), self.bias(l));
            core::mem::swap(&mut a, &mut z);
        }
        a
    }

    fn first_layer_scratch(&self, batch: usize) -> StackReq {
        let c = &self.config;
        StackReq::all_of(&[
            temp_mat_scratch::<T>(1, 2 * c.time_freqs),
            temp_rows_scratch::<T>(batch, c.input_dim()),
            SmallPath::product_scratch(c),
        ])
    }

    /// `dst <- lhs W_l[..n, :]` with `n = lhs.ncols()`: on the row kernels
    /// when the network has them and `lhs` has 1 to [`SMALL_ROWS`] rows (the
    /// same bits, see [`super::small`]), else faer's product. Workspace:
    /// [`SmallPath::product_scratch`].
    fn product(
        &self,
        l: usize,
        mut dst: MatMut<'_, T>,
        lhs: MatRef<'_, T>,
        par: Par,
        stack: &mut MemStack,
    ) {
        if let Some(small) = &self.small {
            if (1..=small.max_rows()).contains(&lhs.nrows()) {
                if let (Some(dst), Some(lhs)) = (as_f32_mut(dst.rb_mut()), as_f32_ref(lhs)) {
                    return small.product(l, dst, lhs, stack);
                }
            }
        }
        gemm(dst, lhs, self.weight(l).subrows(0, lhs.ncols()), par);
    }

    /// Pre-activation of the first hidden layer without its bias into `z`,
    /// and the bias to add into `bias`.
    fn first_layer<X: Real>(
        &self,
        times: Times<'_>,
        x: Input<'_, X>,
        z: MatMut<'_, T>,
        bias: &mut [T],
        par: Par,
        stack: &mut MemStack,
    ) {
        let c = &self.config;
        let b = x.x.nrows();
        let nf = 2 * c.time_freqs;
        match times {
            Times::Shared(t) => {
                let stack = self.shared_time_bias(t, bias, stack);
                // SAFETY: the conversion writes every element.
                let (mut xin, stack) = unsafe { temp_rows_uninit::<T>(b, c.dim, stack) };
                x.write(xin.rb_mut());
                self.product(0, z, xin.rb(), par, stack);
            }
            Times::PerRow(t) => {
                assert!(t.len() == b);
                let (mut input, stack) = temp_rows::<T>(b, c.input_dim(), stack);
                x.write(input.rb_mut().subcols_mut(0, c.dim));
                self.time_features(t, input.rb_mut().subcols_mut(c.dim, nf));
                bias.copy_from_slice(self.bias(0));
                self.product(0, z, input.rb(), par, stack);
            }
        }
    }

    /// Forward pass over a [`Tape`] whose input was filled by the caller;
    /// keeps what [`backward`](Self::backward) needs.
    pub fn forward_train(&self, tape: &mut Tape<'_, T>, par: Par) {
        let c = self.config;
        assert!(tape.config == c);
        let b = tape.batch;
        let h = c.hidden;
        let (input, acts, derivs, out) = tape.parts();
        let input = MatRef::from_column_major_slice(input, b, c.input_dim());
        for l in 0..c.layers {
            let (prev, cur) = acts.split_at_mut(l * b * h);
            let mut z = MatMut::from_column_major_slice_mut(&mut cur[..b * h], b, h);
            if l == 0 {
                gemm(z.rb_mut(), input, self.weight(0), par);
            } else {
                gemm(z.rb_mut(), block(prev, l - 1, b, h), self.weight(l), par);
            }
            real::bias_silu_deriv(z, block_mut(derivs, l, b, h), self.bias(l));
        }
        let mut out = MatMut::from_column_major_slice_mut(out, b, c.dim);
        gemm(
            out.rb_mut(),
            block(acts, c.layers - 1, b, h),
            self.weight(c.layers),
            par,
        );
        real::add_bias(out, self.bias(c.layers));
    }

    /// Workspace for [`backward`](Self::backward) on `batch` rows.
    pub fn backward_scratch(&self, batch: usize) -> StackReq {
        let h = self.config.hidden;
        StackReq::all_of(&[
            temp_mat_scratch::<T>(batch, h),
            temp_mat_scratch::<T>(batch, h),
        ])
    }

    /// `grad <- d/dtheta sum_b dout_b . v_b` (overwritten, layout of
    /// [`params`](Self::params)) for the batch of `tape`.
    pub fn backward(
        &self,
        tape: &Tape<'_, T>,
        dout: MatRef<'_, T>,
        grad: &mut [T],
        par: Par,
        stack: &mut MemStack,
    ) {
        let c = self.config;
        assert!(tape.config == c && grad.len() == c.num_params());
        let b = tape.batch;
        let h = c.hidden;
        assert!(dout.nrows() == b && dout.ncols() == c.dim);
        let (input, acts, derivs) = tape.parts_ref();
        let input = MatRef::from_column_major_slice(input, b, c.input_dim());
        let (mut g, stack) = temp_mat_zeroed::<T>(b, h, stack);
        let (mut g_next, _) = temp_mat_zeroed::<T>(b, h, stack);

        // Output layer.
        let s = c.layer(c.layers);
        let (gw, gb) = grad[s.weight..s.bias + s.fan_out].split_at_mut(s.fan_in * s.fan_out);
        let a_last = block(acts, c.layers - 1, b, h);
        gemm(
            MatMut::from_column_major_slice_mut(gw, s.fan_in, s.fan_out),
            a_last.transpose(),
            dout,
            par,
        );
        real::colsum(dout, gb);
        gemm(g.rb_mut(), dout, self.weight(c.layers).transpose(), par);

        // Hidden layers, last to first: g holds da_l on entry.
        for l in (0..c.layers).rev() {
            let s = c.layer(l);
            let (gw, gb) = grad[s.weight..s.bias + s.fan_out].split_at_mut(s.fan_in * s.fan_out);
            real::mul_colsum(g.rb_mut(), block(derivs, l, b, h), gb);
            let a_prev = if l == 0 {
                input
            } else {
                block(acts, l - 1, b, h)
            };
            gemm(
                MatMut::from_column_major_slice_mut(gw, s.fan_in, s.fan_out),
                a_prev.transpose(),
                g.rb(),
                par,
            );
            if l > 0 {
                gemm(g_next.rb_mut(), g.rb(), self.weight(l).transpose(), par);
                core::mem::swap(&mut g, &mut g_next);
            }
        }
    }

    /// Workspace for [`forward_div`](Self::forward_div) on `batch` rows.
    pub fn forward_div_scratch(&self, batch: usize) -> StackReq {
        let c = &self.config;
        let bk = batch * c.dim;
        StackReq::all_of(&[
            temp_slice_scratch::<T>(c.hidden),
            temp_rows_scratch::<T>(batch, c.hidden),
            temp_rows_scratch::<T>(batch, c.hidden),
            temp_rows_scratch::<T>(batch, c.dim),
            temp_slice_scratch::<T>(c.layers * batch * c.hidden),
            temp_rows_scratch::<T>(bk, c.hidden),
            temp_rows_scratch::<T>(bk, c.hidden),
            temp_slice_scratch::<T>(batch),
            self.first_layer_scratch(batch),
        ])
    }

    /// `out <- v(x, t)` and `div[i] <- trace(dv/dx)` at row `i` (exact, by
    /// forward mode along every coordinate direction).
    pub fn forward_div<X: Real>(
        &self,
        times: Times<'_>,
        x: MatRef<'_, X>,
        out: MatMut<'_, X>,
        div: &mut [f64],
        par: Par,
        stack: &mut MemStack,
    ) {
        let c = self.config;
        let (b, k, h) = (x.nrows(), c.dim, c.hidden);
        assert!(div.len() == b && out.nrows() == b && out.ncols() == k);
        let (bias, stack) = temp_slice(h, T::ZERO, stack);
        let (mut a, stack) = temp_rows::<T>(b, h, stack);
        let (mut z, stack) = temp_rows::<T>(b, h, stack);
        let (mut o, stack) = temp_rows::<T>(b, k, stack);
        let (derivs, stack) = temp_slice(c.layers * b * h, T::ZERO, stack);
        let (mut tan, stack) = temp_rows::<T>(b * k, h, stack);
        let (mut tan_next, stack) = temp_rows::<T>(b * k, h, stack);
        let (acc, stack) = temp_slice(b, T::ZERO, stack);

        // Primal pass, keeping silu'.
        self.first_layer(times, Input { x, step: None }, a.rb_mut(), bias, par, stack);
        real::bias_silu_deriv(a.rb_mut(), block_mut(derivs, 0, b, h), bias);
        for l in 1..c.layers {
            self.product(l, z.rb_mut(), a.rb(), par, stack);
            real::bias_silu_deriv(z.rb_mut(), block_mut(derivs, l, b, h), self.bias(l));
            core::mem::swap(&mut a, &mut z);
        }
        self.product(c.layers, o.rb_mut(), a.rb(), par, stack);
        real::add_bias_convert(o.rb(), self.bias(c.layers), out);

        // Tangents: row j*B + i is sample i along direction e_j.
        let w0 = self.weight(0);
        let d0 = block(derivs, 0, b, h);
        for hh in 0..h {
            let dcol = col_ref(&d0, hh);
            let tcol = col_mut(&mut tan, hh);
            for j in 0..k {
                let w = w0[(j, hh)];
                for (tv, dv) in tcol[j * b..(j + 1) * b].iter_mut().zip(dcol) {
                    *tv = *dv * w;
                }
            }
        }
        for l in 1..c.layers {
            self.product(l, tan_next.rb_mut(), tan.rb(), par, stack);
            core::mem::swap(&mut tan, &mut tan_next);
            scale_blocks(tan.rb_mut(), block(derivs, l, b, h), k);
        }
        // Only component j of the output tangent along e_j is needed.
        let wo = self.weight(c.layers);
        div.fill(0.0);
        for j in 0..k {
            acc.fill(T::ZERO);
            for hh in 0..h {
                let w = wo[(hh, j)];
                let tcol = &col_ref(&tan.rb(), hh)[j * b..(j + 1) * b];
                for (a, tv) in acc.iter_mut().zip(tcol) {
                    *a += *tv * w;
                }
            }
            for (d, a) in div.iter_mut().zip(acc.iter()) {
                *d += a.to_f64();
            }
        }
    }

    /// Workspace for [`forward_jvp`](Self::forward_jvp) on `batch` rows.
    pub fn forward_jvp_scratch(&self, batch: usize) -> StackReq {
        let c = &self.config;
        StackReq::all_of(&[
            temp_slice_scratch::<T>(c.hidden),
            temp_rows_scratch::<T>(batch, c.hidden),
            temp_rows_scratch::<T>(batch, c.hidden),
            temp_rows_scratch::<T>(batch, c.hidden),
            temp_rows_scratch::<T>(batch, c.hidden),
            temp_rows_scratch::<T>(batch, c.hidden),
            temp_rows_scratch::<T>(batch, c.dim),
            temp_rows_scratch::<T>(batch, c.dim),
            temp_rows_scratch::<T>(batch, c.dim),
            self.first_layer_scratch(batch),
        ])
    }

    /// `out <- v(x, t)` and `quad[i] <- e_i^T J_i e_i` with `e_i` row `i` of
    /// `probe` and `J_i` the Jacobian of `v` at row `i` (one forward-mode
    /// pass; the Hutchinson divergence estimate for Rademacher or normal
    /// probes).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_jvp<X: Real>(
        &self,
        times: Times<'_>,
        x: MatRef<'_, X>,
        probe: MatRef<'_, X>,
        out: MatMut<'_, X>,
        quad: &mut [f64],
        par: Par,
        stack: &mut MemStack,
    ) {
        let c = self.config;
        let (b, k, h) = (x.nrows(), c.dim, c.hidden);
        assert!(probe.nrows() == b && probe.ncols() == k && quad.len() == b);
        let (bias, stack) = temp_slice(h, T::ZERO, stack);
        let (mut a, stack) = temp_rows::<T>(b, h, stack);
        let (mut z, stack) = temp_rows::<T>(b, h, stack);
        let (mut d, stack) = temp_rows::<T>(b, h, stack);
        let (mut tan, stack) = temp_rows::<T>(b, h, stack);
        let (mut tan_next, stack) = temp_rows::<T>(b, h, stack);
        let (mut o, stack) = temp_rows::<T>(b, k, stack);
        let (mut p, stack) = temp_rows::<T>(b, k, stack);
        let (mut tan_out, stack) = temp_rows::<T>(b, k, stack);
        real::convert(probe, p.rb_mut());

        self.first_layer(times, Input { x, step: None }, a.rb_mut(), bias, par, stack);
        real::bias_silu_deriv(a.rb_mut(), d.rb_mut(), bias);
        self.product(0, tan.rb_mut(), p.rb(), par, stack);
        scale_blocks(tan.rb_mut(), d.rb(), 1);
        for l in 1..c.layers {
            self.product(l, z.rb_mut(), a.rb(), par, stack);
            real::bias_silu_deriv(z.rb_mut(), d.rb_mut(), self.bias(l));
            core::mem::swap(&mut a, &mut z);
            self.product(l, tan_next.rb_mut(), tan.rb(), par, stack);
            core::mem::swap(&mut tan, &mut tan_next);
            scale_blocks(tan.rb_mut(), d.rb(), 1);
        }
        self.product(c.layers, o.rb_mut(), a.rb(), par, stack);
        real::add_bias_convert(o.rb(), self.bias(c.layers), out);
        self.product(c.layers, tan_out.rb_mut(), tan.rb(), par, stack);
        for (i, q) in quad.iter_mut().enumerate() {
            let mut s = 0.0;
            for j in 0..k {
                s += (p[(i, j)] * tan_out[(i, j)]).to_f64();
            }
            *q = s;
        }
    }
}

/// `t[(j B + i), h] *= d[i, h]` for each of the `blocks` row blocks of `t`.
fn scale_blocks<T: Real>(t: MatMut<'_, T>, d: MatRef<'_, T>, blocks: usize) {
    scale_blocks_kernel::<T>(t, d, blocks)
}

real::multiversion! {
    fn scale_blocks_kernel<T: Real>(t: MatMut<'_, T>, d: MatRef<'_, T>, blocks: usize) {
        let mut t = t;
        let b = d.nrows();
        for h in 0..d.ncols() {
            let dcol = col_ref(&d, h);
            let tcol = col_mut(&mut t, h);
            for j in 0..blocks {
                for (tv, dv) in tcol[j * b..(j + 1) * b].iter_mut().zip(dcol) {
                    *tv *= *dv;
                }
            }
        }
    }
}

real::multiversion! {
    fn time_features_kernel<T: Real>(turns: &[f64], t: &[f64], out: MatMut<'_, T>) {
        let (mut sines, mut cosines) = out.split_at_col_mut(turns.len());
        for (j, w) in turns.iter().enumerate() {
            let sc = col_mut(&mut sines, j);
            let cc = col_mut(&mut cosines, j);
            for ((sv, cv), ti) in sc.iter_mut().zip(cc.iter_mut()).zip(t) {
                // Reduce the angle in f64 turns, then evaluate in T.
                let u = *ti * *w;
                let (s, c) = T::sincos_2pi(T::from_f64(u - u.floor()));
                *sv = s;
                *cv = c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::dyn_stack::MemBuffer;
    use faer::Mat;

    pub(crate) fn cfg(dim: usize, hidden: usize, layers: usize, freqs: usize) -> NetConfig {
        NetConfig {
            dim,
            hidden,
            layers,
            time_freqs: freqs,
        }
    }

    fn loss_and_grad(
        net: &VelocityNet<f64>,
        x: &Mat<f64>,
        t: &[f64],
        target: &Mat<f64>,
        grad: Option<&mut [f64]>,
    ) -> f64 {
        let c = *net.config();
        let b = x.nrows();
        let mut buf = vec![0.0; Tape::<f64>::len(&c, b)];
        let mut tape = Tape::new(&c, b, &mut buf);
        tape.input_mut().subcols_mut(0, c.dim).copy_from(x);
        net.time_features(t, tape.input_mut().subcols_mut(c.dim, 2 * c.time_freqs));
        net.forward_train(&mut tape, Par::Seq);
        let r = tape.output() - target;
        let loss = r.squared_norm_l2() / b as f64;
        if let Some(grad) = grad {
            let dout = r * faer::Scale(2.0 / b as f64);
            let mut mem = MemBuffer::new(net.backward_scratch(b));
            net.backward(
                &tape,
                dout.as_ref(),
                grad,
                Par::Seq,
                MemStack::new(&mut mem),
            );
        }
        loss
    }

    fn rand_mat(m: usize, n: usize, seed: u64) -> Mat<f64> {
        let mut r = rng::stream(seed, 99);
        Mat::from_fn(m, n, |_, _| 2.0 * rng::uniform(&mut r) - 1.0)
    }

    #[test]
    fn gradient_matches_central_differences() {
        let c = cfg(3, 7, 3, 2);
        let net = VelocityNet::<f64>::new(c, 5).unwrap();
        let b = 5;
        let x = rand_mat(b, 3, 1);
        let target = rand_mat(b, 3, 2);
        let t: Vec<f64> = (0..b).map(|i| 0.1 + 0.17 * i as f64).collect();
        let mut grad = vec![0.0; c.num_params()];
        loss_and_grad(&net, &x, &t, &target, Some(&mut grad));
        let mut fd = vec![0.0; c.num_params()];
        let eps = 1e-6;
        for (p, fdp) in fd.iter_mut().enumerate() {
            let mut n2 = net.clone();
            n2.params_mut()[p] += eps;
            let lp = loss_and_grad(&n2, &x, &t, &target, None);
            n2.params_mut()[p] -= 2.0 * eps;
            let lm = loss_and_grad(&n2, &x, &t, &target, None);
            *fdp = (lp - lm) / (2.0 * eps);
        }
        // Relative error per parameter tensor.
        for l in 0..c.linear_layers() {
            let s = c.layer(l);
            for (name, r) in [
                ("weight", s.weight..s.bias),
                ("bias", s.bias..s.bias + s.fan_out),
            ] {
                let num: f64 = r
                    .clone()
                    .map(|i| (grad[i] - fd[i]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let den: f64 = r.clone().map(|i| fd[i].powi(2)).sum::<f64>().sqrt();
                let rel = num / den;
                eprintln!("gradient check, layer {l} {name}: relative error {rel:.2e}");
                assert!(rel < 1e-6, "layer {l} {name}: relative error {rel:e}");
            }
        }
    }

    #[test]
    fn inference_paths_agree_with_training_forward() {
        let c = cfg(4, 16, 2, 3);
        let net = VelocityNet::<f64>::new(c, 9).unwrap();
        let b = 6;
        let x = rand_mat(b, 4, 3);
        let t = 0.37;
        let mut buf = vec![0.0; Tape::<f64>::len(&c, b)];
        let mut tape = Tape::new(&c, b, &mut buf);
        tape.input_mut().subcols_mut(0, 4).copy_from(&x);
        net.time_features(&[t; 6], tape.input_mut().subcols_mut(4, 6));
        net.forward_train(&mut tape, Par::Seq);
        let mut mem = MemBuffer::new(net.forward_div_scratch(b));
        let stack = MemStack::new(&mut mem);
        for times in [Times::Shared(t), Times::PerRow(&[t; 6])] {
            let mut out = Mat::<f64>::zeros(b, 4);
            net.forward(times, x.as_ref(), out.as_mut(), Par::Seq, stack);
            assert!((&out - tape.output()).norm_max() < 1e-13);
            let mut div = vec![0.0; b];
            net.forward_div(times, x.as_ref(), out.as_mut(), &mut div, Par::Seq, stack);
            assert!((&out - tape.output()).norm_max() < 1e-13);
        }
    }

    #[test]
    fn exact_divergence_matches_finite_differences() {
        let c = cfg(5, 24, 3, 4);
        let net = VelocityNet::<f64>::new(c, 11).unwrap();
        let b = 4;
        let x = rand_mat(b, 5, 4);
        let t = 0.61;
        let mut mem = MemBuffer::new(net.forward_div_scratch(b));
        let stack = MemStack::new(&mut mem);
        let mut out = Mat::<f64>::zeros(b, 5);
        let mut div = vec![0.0; b];
        net.forward_div(
            Times::Shared(t),
            x.as_ref(),
            out.as_mut(),
            &mut div,
            Par::Seq,
            stack,
        );
        let eps = 1e-5;
        let mut fd = vec![0.0; b];
        for j in 0..5 {
            let mut xp = x.clone();
            let mut xm = x.clone();
            for i in 0..b {
                xp[(i, j)] += eps;
                xm[(i, j)] -= eps;
            }
            let mut vp = Mat::<f64>::zeros(b, 5);
            let mut vm = Mat::<f64>::zeros(b, 5);
            net.forward(Times::Shared(t), xp.as_ref(), vp.as_mut(), Par::Seq, stack);
            net.forward(Times::Shared(t), xm.as_ref(), vm.as_mut(), Par::Seq, stack);
            for i in 0..b {
                fd[i] += (vp[(i, j)] - vm[(i, j)]) / (2.0 * eps);
            }
        }
        for i in 0..b {
            assert!(
                (div[i] - fd[i]).abs() < 1e-7 * (1.0 + fd[i].abs()),
                "{} vs {}",
                div[i],
                fd[i]
            );
        }
        // Hutchinson with Rademacher probes is unbiased: averaging over many
        // probes approaches the exact trace.
        let probes = 4000;
        let mut mean = vec![0.0; b];
        let mut r = rng::stream(1, 2);
        let mut p = Mat::<f64>::zeros(b, 5);
        let mut q = vec![0.0; b];
        let mut mem = MemBuffer::new(net.forward_jvp_scratch(b));
        let stack = MemStack::new(&mut mem);
        let mut sq = vec![0.0; b];
        for _ in 0..probes {
            for j in 0..5 {
                for i in 0..b {
                    p[(i, j)] = if rng::below(&mut r, 2) == 0 {
                        -1.0
                    } else {
                        1.0
                    };
                }
            }
            net.forward_jvp(
                Times::Shared(t),
                x.as_ref(),
                p.as_ref(),
                out.as_mut(),
                &mut q,
                Par::Seq,
                stack,
            );
            for i in 0..b {
                mean[i] += q[i] / probes as f64;
                sq[i] += q[i] * q[i] / probes as f64;
            }
        }
        for i in 0..b {
            let sd = ((sq[i] - mean[i] * mean[i]) / probes as f64).sqrt();
            assert!(
                (mean[i] - div[i]).abs() < 4.0 * sd + 1e-12,
                "{} vs {} (se {sd})",
                mean[i],
                div[i]
            );
        }
    }

    #[test]
    fn rows_are_independent_of_the_batch() {
        for (k, hdn) in [(6, 40), (1, 8), (3, 300)] {
            batch_independence(cfg(k, hdn, 3, 5));
        }
    }

    fn batch_independence(c: NetConfig) {
        let net = VelocityNet::<f32>::new(c, 1).unwrap();
        let n = 70;
        let k = c.dim;
        let xf = rand_mat(n, k, 8);
        let x = Mat::<f32>::from_fn(n, k, |i, j| xf[(i, j)] as f32);
        let t: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
        let mut mem = MemBuffer::new(net.forward_scratch(n));
        let stack = MemStack::new(&mut mem);
        let mut full = Mat::<f32>::zeros(n, k);
        net.forward(
            Times::PerRow(&t),
            x.as_ref(),
            full.as_mut(),
            Par::Seq,
            stack,
        );
        let mut full_shared = Mat::<f32>::zeros(n, k);
        net.forward(
            Times::Shared(0.3),
            x.as_ref(),
            full_shared.as_mut(),
            Par::Seq,
            stack,
        );
        for (start, len) in [(0, 1), (5, 1), (3, 17), (20, 50), (1, 48), (0, 49)] {
            let mut part = Mat::<f32>::zeros(len, k);
            let xs = x.as_ref().subrows(start, len);
            net.forward(
                Times::PerRow(&t[start..start + len]),
                xs,
                part.as_mut(),
                Par::Seq,
                stack,
            );
            for i in 0..len {
                for j in 0..k {
                    assert_eq!(
                        part[(i, j)].to_bits(),
                        full[(start + i, j)].to_bits(),
                        "per-row times, rows {start}..+{len}, row {i}"
                    );
                }
            }
            net.forward(Times::Shared(0.3), xs, part.as_mut(), Par::Seq, stack);
            for i in 0..len {
                for j in 0..k {
                    assert_eq!(
                        part[(i, j)].to_bits(),
                        full_shared[(start + i, j)].to_bits(),
                        "shared time, rows {start}..+{len}, row {i}"
                    );
                }
            }
        }
    }
}
