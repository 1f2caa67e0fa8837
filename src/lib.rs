//! CoreFlow: generative models of matrix-valued data.
//!
//! Given N training matrices (m x n), CoreFlow learns shared orthonormal row
//! and column bases U (m x r) and V (n x s) by optimisation on Stiefel
//! manifolds, projects every sample to its core C = U^T X V, models the cores,
//! and generates new matrices X = U C V^T.
//!
//! Layers, bottom to top: [`numerics`] (faer helpers and workspaces),
//! [`reduce`] (sums over samples) and [`rng`] (random streams), the maths
//! modules ([`subspace`], [`completion`], [`flow`], [`core_model`],
//! [`moments`], [`metrics`], [`datasets`]), the fitted [`model`], the
//! comparison [`baselines`], and
//! the C ABI ([`ffi`]).

#![warn(missing_docs)]

/// cbindgen:ignore
pub mod baselines;
/// cbindgen:ignore
pub mod batch;
// A module's docs follow the outer `cbindgen:ignore` line of its
// declaration here, so rustdoc resolves their links at the crate root: the
// modules define their link targets at the end of their docs, with
// `crate::` paths.
/// cbindgen:ignore
pub mod completion;
/// cbindgen:ignore
pub mod core_model;
/// cbindgen:ignore
pub mod datasets;
/// cbindgen:ignore
pub mod error;
pub mod ffi;
/// cbindgen:ignore
pub mod flow;
/// cbindgen:ignore
pub mod limits;
/// cbindgen:ignore
pub mod metrics;
/// cbindgen:ignore
pub mod model;
/// cbindgen:ignore
pub mod moments;
/// cbindgen:ignore
pub mod noise;
/// cbindgen:ignore
pub mod numerics;
/// cbindgen:ignore
pub mod pca;
/// cbindgen:ignore
pub(crate) mod pool;
/// cbindgen:ignore
pub mod reduce;
/// cbindgen:ignore
pub mod rng;
/// cbindgen:ignore
pub mod subspace;

pub use batch::{CheckedLayout, Layout, MaskRef, MatrixBatch, MatrixBatchMut};
pub use datasets::{Dataset, DatasetSpec, MatrixSet};
pub use error::{Error, ErrorKind, Result};
pub use metrics::{EvalOptions, Metrics};
pub use model::{FitOptions, ImputeLevel, Model, ModelInfo, Progress, Stage};
pub use subspace::{SubspaceFit, SubspaceMethod, SubspaceOptions};
