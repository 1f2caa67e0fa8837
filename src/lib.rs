//! CoreFlow: generative models of matrix-valued data.
//!
//! Given N training matrices (m x n), CoreFlow learns shared orthonormal row
//! and column bases U (m x r) and V (n x s) by optimisation on Stiefel
//! manifolds, projects every sample to its core C = U^T X V, models the cores,
//! and generates new matrices X = U C V^T.
//!
//! Layers, bottom to top: [`numerics`] (faer helpers and workspaces), the
//! maths modules ([`subspace`], [`completion`], [`flow`], [`metrics`],
//! [`datasets`]), the fitted [`model`], the comparison [`baselines`], and
//! the C ABI ([`ffi`]).

#![warn(missing_docs)]

pub mod baselines;
pub mod batch;
pub mod completion;
pub mod datasets;
pub mod error;
pub mod ffi;
pub mod flow;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod numerics;
pub mod pca;
pub(crate) mod pool;
pub mod reduce;
pub mod subspace;

pub use batch::{CheckedLayout, Layout, MaskRef, MatrixBatch, MatrixBatchMut};
pub use datasets::{Dataset, DatasetSpec, MatrixSet};
pub use error::{Error, ErrorKind, Result};
pub use metrics::{EvalOptions, Metrics};
pub use model::{FitOptions, Model, ModelInfo, Progress, Stage};
pub use subspace::{SubspaceFit, SubspaceMethod, SubspaceOptions};
