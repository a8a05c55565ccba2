//! Applying an adapter: [`Adapter::apply`] on int8 products (the serving path) and
//! [`Adapter::apply_exact`] in f32 (the reference), both followed by L2 normalization.

use std::sync::OnceLock;

use crate::int8::Int8Matrix;
use crate::matrix::dot;
use crate::{AdapterError, AdapterMeta, Layers, Matrix};

/// A loaded adapter.
///
/// [`Adapter::apply`] is the serving path: int8 products (quantized on
/// first use), a few microseconds per query and the same result on every CPU;
/// [`Adapter::apply_exact`] is the f32 map, for fitting and for comparison.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Its metadata.
    pub meta: AdapterMeta,
    /// Its maps (private: the int8 form is derived from them once).
    pub(crate) layers: Layers,
    /// The matrices of `layers`, quantized, in [`Layers::matrices`]' order.
    pub(crate) int8: OnceLock<Vec<Int8Matrix>>,
}

impl PartialEq for Adapter {
    fn eq(&self, other: &Self) -> bool {
        self.meta == other.meta && self.layers == other.layers
    }
}

impl Adapter {
    /// An adapter of these maps (checked by [`Adapter::validate`] when saved or loaded).
    pub fn new(meta: AdapterMeta, layers: Layers) -> Self {
        Adapter {
            meta,
            layers,
            int8: OnceLock::new(),
        }
    }

    /// Its maps.
    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// Its maps, taken out.
    pub fn into_layers(self) -> Layers {
        self.layers
    }

    /// Checks that the layers' shapes agree with the metadata's dimensions.
    pub fn validate(&self) -> Result<(), String> {
        let (i, o) = (self.meta.in_dim, self.meta.out_dim);
        let shape = |m: &Matrix, r: usize, c: usize, n: &str| {
            if m.rows == r && m.cols == c {
                Ok(())
            } else {
                Err(format!("{n} is {}×{}, want {r}×{c}", m.rows, m.cols))
            }
        };
        let len = |v: &[f32], n: usize, name: &str| {
            if v.len() == n {
                Ok(())
            } else {
                Err(format!("{name} has {} values, want {n}", v.len()))
            }
        };
        match &self.layers {
            Layers::Linear { w, b } => {
                shape(w, o, i, "w")?;
                len(b, o, "b")
            }
            Layers::LowRank { u, v, b } => {
                shape(u, u.rows, i, "u")?;
                shape(v, o, u.rows, "v")?;
                len(b, o, "b")
            }
            Layers::Residual { w, b, w1, b1, w2 } => {
                shape(w, o, i, "w")?;
                len(b, o, "b")?;
                shape(w1, w1.rows, i, "w1")?;
                len(b1, w1.rows, "b1")?;
                shape(w2, o, w1.rows, "w2")
            }
        }?;
        let finite = |m: &[f32]| m.iter().all(|x| x.is_finite());
        let all_finite = match &self.layers {
            Layers::Linear { w, b } => finite(&w.data) && finite(b),
            Layers::LowRank { u, v, b } => finite(&u.data) && finite(&v.data) && finite(b),
            Layers::Residual { w, b, w1, b1, w2 } => {
                finite(&w.data) && finite(b) && finite(&w1.data) && finite(b1) && finite(&w2.data)
            }
        };
        if all_finite {
            Ok(())
        } else {
            Err("a weight is NaN or infinite".into())
        }
    }

    /// Maps one new-model vector into the old space and L2-normalizes it: the serving path,
    /// int8 products (cosine ≥ 0.9989 to [`Adapter::apply_exact`] on the golden queries,
    /// ≥ 0.9998 for Procrustes: `adapter eval` measures it). An input the int8 path
    /// cannot quantize (not finite, all zero) goes through the f32 map, which reports it.
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>, AdapterError> {
        self.check_input(x)?;
        let int8 = self.int8.get_or_init(|| {
            self.layers
                .matrices()
                .into_iter()
                .map(Int8Matrix::new)
                .collect()
        });
        match self.forward(x, |i, x, out| int8[i].apply(x, out)) {
            Some(out) => self.normalized(out),
            None => self.apply_exact(x),
        }
    }

    /// [`Adapter::apply`] with f32 products throughout (what the adapter was fitted as).
    pub fn apply_exact(&self, x: &[f32]) -> Result<Vec<f32>, AdapterError> {
        self.check_input(x)?;
        let matrices = self.layers.matrices();
        let out = self
            .forward(x, |i, x, out| {
                matrices[i].apply(x, out);
                Some(())
            })
            .expect("f32 products always succeed");
        self.normalized(out)
    }

    /// Fused reads: `normalize((1 − weight) · own + weight · apply(new))`, the query in the
    /// old space built from both models' queries of one text (`own` is the old model's,
    /// `new` the new model's). `weight` is in (0, 1]; 0.5 is the plain sum of the two. A
    /// weight out of range, an `own` of the wrong dimension, or a sum that cannot be
    /// normalized is an error.
    pub fn fuse(&self, own: &[f32], new: &[f32], weight: f64) -> Result<Vec<f32>, AdapterError> {
        let adapted = self.apply(new)?;
        fuse_mapped(&self.meta.name, own, &adapted, weight)
    }

    fn check_input(&self, x: &[f32]) -> Result<(), AdapterError> {
        if x.len() == self.meta.in_dim {
            Ok(())
        } else {
            Err(AdapterError::Dimension {
                name: self.meta.name.clone(),
                new_model: self.meta.new_model.clone(),
                expected: self.meta.in_dim,
                got: x.len(),
            })
        }
    }

    /// The map before normalization, with `product(i, x, out)` computing `out = M_i x` for
    /// the i-th of [`Layers::matrices`]; `None` if a product gives up.
    fn forward(
        &self,
        x: &[f32],
        product: impl Fn(usize, &[f32], &mut Vec<f32>) -> Option<()>,
    ) -> Option<Vec<f32>> {
        let add = |out: &mut Vec<f32>, b: &[f32]| {
            for (o, b) in out.iter_mut().zip(b) {
                *o += b;
            }
        };
        let mut out = Vec::with_capacity(self.meta.out_dim);
        match &self.layers {
            Layers::Linear { b, .. } => {
                product(0, x, &mut out)?;
                add(&mut out, b);
            }
            Layers::LowRank { u, b, .. } => {
                let mut mid = Vec::with_capacity(u.rows);
                product(0, x, &mut mid)?;
                product(1, &mid, &mut out)?;
                add(&mut out, b);
            }
            Layers::Residual { w1, b, b1, .. } => {
                let mut hidden = Vec::with_capacity(w1.rows);
                product(1, x, &mut hidden)?;
                add(&mut hidden, b1);
                for h in &mut hidden {
                    *h = h.max(0.0);
                }
                product(0, x, &mut out)?;
                add(&mut out, b);
                let mut residual = Vec::with_capacity(out.len());
                product(2, &hidden, &mut residual)?;
                add(&mut out, &residual);
            }
        }
        Some(out)
    }

    fn normalized(&self, out: Vec<f32>) -> Result<Vec<f32>, AdapterError> {
        normalized(&self.meta.name, out)
    }
}

/// Whether `weight` is a fuse weight: the adapted query's share of a fused query, in (0, 1]
/// (NaN is not).
pub fn is_fuse_weight(weight: f64) -> bool {
    weight > 0.0 && weight <= 1.0
}

/// `normalize((1 − weight) · own + weight · adapted)` for an adapted query already in the old
/// space (see [`Adapter::fuse`]); `name` names the adapter in errors.
pub fn fuse_mapped(
    name: &str,
    own: &[f32],
    adapted: &[f32],
    weight: f64,
) -> Result<Vec<f32>, AdapterError> {
    if !is_fuse_weight(weight) {
        return Err(AdapterError::refused(format!(
            "a fuse weight is in (0, 1], not {weight}"
        )));
    }
    if own.len() != adapted.len() {
        return Err(AdapterError::Dimension {
            name: name.to_owned(),
            new_model: "the old model (the fused query's own part)".to_owned(),
            expected: adapted.len(),
            got: own.len(),
        });
    }
    let (a, b) = ((1.0 - weight) as f32, weight as f32);
    normalized(
        name,
        own.iter()
            .zip(adapted)
            .map(|(o, m)| a * o + b * m)
            .collect(),
    )
}

/// `out` scaled to unit length; a vector that is not finite or is zero is an error.
fn normalized(name: &str, mut out: Vec<f32>) -> Result<Vec<f32>, AdapterError> {
    let norm = f64::from(dot(&out, &out)).sqrt();
    if !(norm.is_finite() && norm > 1e-12) {
        return Err(AdapterError::Degenerate {
            name: name.to_owned(),
        });
    }
    let inv = (1.0 / norm) as f32;
    for v in &mut out {
        *v *= inv;
    }
    Ok(out)
}
