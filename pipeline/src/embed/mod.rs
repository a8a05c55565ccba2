//! The embedding engine: tokenizer, encoder models, and the serving loop.

pub mod burn_model;
pub mod engine;
pub mod tokenize;
