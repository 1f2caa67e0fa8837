//! One module per subcommand.

pub mod codec;
pub mod complete;
pub mod demo;
pub mod eval;
pub mod fit;
pub mod impute;
pub mod info;
pub mod sample;
pub mod score;
