//! Drift-Adapters: a map from a new model's embedding space into an old one's, so that the
//! old version's index answers queries embedded with the new model.
//!
//! An adapter is a versioned file, `<new>_to_<old>.<kind>.v<N>.safetensors` (its name is the
//! file stem: `mpnet-base-v2@1_to_minilm-l6-v2@1.procrustes.v3` maps MPNet vectors into
//! MiniLM's space), holding f32 matrices and, in the safetensors header, its training
//! metadata ([`AdapterMeta`]) and a CRC-32 of the tensor bytes. Every kind applies as
//! `normalize(map(x))`:
//!
//! - `procrustes`: `W x + b` with `W` (out × in) = `s · V Uᵀ`, orthonormal rows scaled by one
//!   factor `s` (trained on whitened spaces or with a per-coordinate scale, `W` is a general
//!   matrix of the same shape);
//! - `affine`: `V (U x) + b`, a rank-r linear map (`U`: r × in, `V`: out × r);
//! - `mlp`: the Procrustes map plus a residual `W₂ relu(W₁ x + b₁) + b₂`.
//!
//! One file per concern:
//! - [`name`]: the name grammar ([`AdapterName`], [`AdapterKind`]);
//! - [`artifact`]: the file format: [`AdapterMeta`], [`Adapter::save`], [`Adapter::load`],
//!   and the adapters folder ([`list`], [`next_name`], [`resolve`]);
//! - [`matrix`]: the maps ([`Matrix`], [`Layers`]);
//! - [`apply`](mod@apply): [`Adapter::apply`], the serving path on int8 products
//!   (quantized per row, SIMD picked at run time), and [`Adapter::apply_exact`], the f32 reference;
//! - `train` (feature `train`): fitting on pairs of embeddings (closed forms and the MLP);
//! - [`eval`]: recall recovered on golden query sets, int8 against f32;
//! - [`lines`]: mapping JSON lines of vectors (`embedstream adapter apply`).
//!
//! Serving needs only the first four: the sink loads no linear-algebra or autodiff code.

pub mod apply;
pub mod artifact;
mod error;
pub mod eval;
mod int8;
pub mod lines;
pub mod matrix;
pub mod name;
#[cfg(feature = "train")]
pub mod train;

pub use apply::{Adapter, is_fuse_weight};
pub use artifact::{AdapterMeta, list, next_name, resolve};
pub use error::AdapterError;
pub use matrix::{Layers, Matrix};
pub use name::{AdapterKind, AdapterName};

#[cfg(test)]
mod tests;
