//! Flow matching on the leading core coordinates (DESIGN.md section 5).
//!
//! Submodules, bottom to top:
//! - [`real`]: the network's floating-point types and vectorised kernels;
//! - [`rng`]: counter-based random streams and normal variates;
//! - [`network`]: the velocity MLP, its batched forward/backward passes and
//!   Jacobian traces;
//! - [`optim`]: Adam, the learning-rate schedule, clipping and the weight EMA;
//! - [`assignment`]: exact minimum-cost assignment (minibatch OT coupling);
//! - [`train`]: the flow-matching training loop;
//! - [`ode`]: fixed-step and adaptive ODE solvers;
//! - [`likelihood`]: log-densities by the instantaneous change of variables;
//! - [`core_model`]: the fitted core model (flow block + Gaussian block, or
//!   the Gaussian fallback).

pub mod assignment;
pub mod core_model;
pub mod likelihood;
pub mod network;
pub mod ode;
pub mod optim;
pub mod real;
pub mod rng;
pub mod train;

pub use core_model::{
    CoreModel, CoreModelChoice, CoreModelInfo, CoreModelKind, CoreModelParts, FlowOptions,
    FlowParts, GaussianParts, NetParams, Precision,
};
pub use likelihood::DivergenceField;
pub use network::{LayerSlot, NetConfig, Tape, Times, VelocityNet};
pub use ode::{Divergence, SolveStats, Solver, SolverOptions, VelocityField};
pub use real::Real;
pub use train::{Coupling, TrainOptions, TrainReport, Trainer};
