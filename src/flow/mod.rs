//! Flow matching on the leading principal components of the cores (DESIGN.md
//! section 5).
//!
//! Submodules, bottom to top:
//! - [`real`]: the network's floating-point types and vectorised kernels;
//! - [`noise`]: fast `f32` normal variates for the training noise (the
//!   random streams are [`crate::rng`]);
//! - [`network`]: the velocity MLP, its batched forward/backward passes and
//!   Jacobian traces;
//! - [`small`]: row kernels for batches of 1 to 12 rows over weights packed
//!   when the network is built, bitwise equal to the batched path;
//! - [`optim`]: Adam, the learning-rate schedule, clipping and the weight EMA;
//! - [`assignment`]: exact minimum-cost assignment (minibatch OT coupling);
//! - [`train`]: the flow-matching training loop;
//! - [`ode`]: fixed-step and adaptive ODE solvers;
//! - [`latent`]: fixed-step sampling in the network's hidden coordinates
//!   (fewer operations when the flow block is wider than half the network);
//! - [`likelihood`]: log-densities by the instantaneous change of variables.
//!
//! The core model that uses the flow (and its alternatives) is
//! [`crate::core_model`].
//!
//! Decisions where DESIGN.md is silent (each is documented where it lives):
//! - the core model is fitted on the cores left after the `holdout_fraction`
//!   split (seeded); `holdout_fraction = 0` fits on all of them. The AUTO
//!   rule `N < 3 k` counts those training cores;
//! - moment matching draws `max(moment_samples, 4 k)` flow samples (4000 by
//!   default) with the solver given in the options (RK4, 16 steps);
//! - the warm-up is `min(200, steps / 2)` steps so that short runs decay;
//! - the reported final loss is the mean batch loss of the last 100 steps;
//! - training draws batch rows uniformly with replacement;
//! - batches are one sample per row; every per-sample result (network
//!   output, solver trajectory, affine maps of the core model) is computed
//!   row by row, so it does not depend on the batch or chunk it ran in.
//!   Adaptive DOPRI5 controls each row's step size separately for the same
//!   reason;
//! - ODE states are `f64`; the network computes in `f32` (default) or `f64`.
//!
//! [`real`]: crate::flow::real
//! [`noise`]: crate::flow::noise
//! [`network`]: crate::flow::network
//! [`small`]: crate::flow::small
//! [`optim`]: crate::flow::optim
//! [`assignment`]: crate::flow::assignment
//! [`train`]: crate::flow::train
//! [`ode`]: crate::flow::ode
//! [`latent`]: crate::flow::latent
//! [`likelihood`]: crate::flow::likelihood

pub mod assignment;
pub mod latent;
pub mod likelihood;
pub mod network;
pub mod noise;
pub mod ode;
pub mod optim;
pub mod real;
pub mod small;
pub mod train;

pub use likelihood::DivergenceField;
pub use network::{LayerSlot, NetConfig, RowKernel, Tape, Times, VelocityNet};
pub use ode::{Divergence, SolveStats, Solver, SolverOptions, VelocityField};
pub use real::Real;
pub use train::{Coupling, TrainOptions, TrainReport, Trainer};
