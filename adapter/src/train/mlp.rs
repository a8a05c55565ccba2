//! The residual MLP kind, trained with Burn's autodiff on the CPU backend:
//! `f(x) = P x + p + W₂ relu(W₁ x + b₁) + b₂`, `P`, `p` starting at the Procrustes fit and
//! `W₂` at zero (so step 0 is Procrustes), loss `1 − cos(f(x), y)` with Adam, mini-batches in
//! a seeded order; after each epoch the held-out cosine is measured through the artifact's own
//! apply path, and the best epoch is kept (training stops after 3 epochs without a gain).

use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, activation};

use super::{Pairs, Result, TrainConfig, cosines, linear};
use crate::{Adapter, AdapterError, AdapterMeta, AdapterName, Layers, Matrix};

/// The CPU backend the MLP trains on.
type Cpu = burn::backend::Flex;

type Train = Autodiff<Cpu>;

#[derive(Module, Debug)]
struct Residual<B: Backend> {
    base: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
}

impl<B: Backend> Residual<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let residual = self
            .down
            .forward(activation::relu(self.up.forward(x.clone())));
        self.base.forward(x) + residual
    }
}

/// Burn's `Linear` holds `[in, out]`; [`Matrix`] holds `[out, in]`.
fn transposed(m: &Matrix) -> Vec<f32> {
    let mut t = vec![0.0; m.data.len()];
    for r in 0..m.rows {
        for c in 0..m.cols {
            t[c * m.rows + r] = m.data[r * m.cols + c];
        }
    }
    t
}

fn matrix_of<B: Backend>(linear: &Linear<B>) -> Result<(Matrix, Vec<f32>)> {
    let w = linear.weight.val();
    let [rows_in, cols_out] = w.dims();
    let data = w
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| AdapterError::refused(format!("reading trained weights: {e:?}")))?;
    let m = Matrix::new(
        cols_out,
        rows_in,
        transposed(&Matrix::new(rows_in, cols_out, data)),
    );
    let b = match &linear.bias {
        Some(b) => b
            .val()
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| AdapterError::refused(format!("reading trained biases: {e:?}")))?,
        None => vec![0.0; cols_out],
    };
    Ok((m, b))
}

fn layers_of<B: Backend>(model: &Residual<B>) -> Result<Layers> {
    let (w, b) = matrix_of(&model.base)?;
    let (w1, b1) = matrix_of(&model.up)?;
    let (w2, b2) = matrix_of(&model.down)?;
    Ok(Layers::Residual {
        w,
        b: b.iter().zip(&b2).map(|(x, y)| x + y).collect(),
        w1,
        b1,
        w2,
    })
}

fn rows<B: Backend>(data: &[f32], dim: usize, idx: &[usize], device: &B::Device) -> Tensor<B, 2> {
    let mut batch = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        batch.extend_from_slice(&data[i * dim..(i + 1) * dim]);
    }
    Tensor::from_data(TensorData::new(batch, [idx.len(), dim]), device)
}

/// SplitMix64, for the batch order.
fn shuffle(order: &mut [usize], state: &mut u64) {
    for i in (1..order.len()).rev() {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        order.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

/// Trains on `fit`, selects on `held` (on `fit` when nothing is held out); returns the best
/// epoch's layers and that epoch (0 = the Procrustes start was best).
pub fn train(
    fit: &Pairs,
    held: &Pairs,
    config: &TrainConfig,
    name: &AdapterName,
) -> Result<(Layers, usize)> {
    if config.hidden == 0 || config.batch == 0 {
        return Err(AdapterError::refused(
            "--hidden and --batch must be at least 1",
        ));
    }
    let device = Default::default();
    Train::seed(&device, config.seed);
    let (p, p_b) = linear::procrustes_weights(fit)?;
    let (i, o) = (fit.in_dim, fit.out_dim);
    let mut model: Residual<Train> = Residual {
        base: LinearConfig::new(i, o).init(&device),
        up: LinearConfig::new(i, config.hidden).init(&device),
        down: LinearConfig::new(config.hidden, o)
            .with_initializer(Initializer::Zeros)
            .init(&device),
    };
    model.base.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(transposed(&p), [i, o]),
        &device,
    ));
    model.base.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(p_b, [o]),
        &device,
    )));
    let select = if held.is_empty() { fit } else { held };
    let score = |layers: Layers| -> Result<(f64, Layers)> {
        let adapter = Adapter::new(AdapterMeta::new(name, i, o, String::new()), layers);
        let (mean, _) = cosines(&adapter, select)?;
        Ok((mean, adapter.into_layers()))
    };
    let (mut best, mut best_layers) = score(layers_of(&model)?)?;
    let mut best_epoch = 0;
    let mut optim = AdamConfig::new().init::<Train, Residual<Train>>();
    let mut order: Vec<usize> = (0..fit.len()).collect();
    let mut state = config.seed;
    for epoch in 1..=config.epochs {
        shuffle(&mut order, &mut state);
        for idx in order.chunks(config.batch) {
            let x = rows::<Train>(&fit.new, i, idx, &device);
            let y = rows::<Train>(&fit.old, o, idx, &device);
            let pred = model.forward(x);
            let dot = (pred.clone() * y).sum_dim(1);
            let norm = pred.powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
            let loss = (dot / norm).mean().neg().add_scalar(1.0);
            let value: f32 = loss.clone().into_scalar();
            if !value.is_finite() {
                return Err(AdapterError::refused(format!(
                    "training diverged at epoch {epoch} (loss {value}); try a lower --lr"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.lr, model, grads);
        }
        let (cos, layers) = score(layers_of(&model)?)?;
        tracing::info!(epoch, held_out_cosine = cos, "MLP epoch.");
        if cos > best + 1e-5 {
            (best, best_layers, best_epoch) = (cos, layers, epoch);
        } else if epoch - best_epoch >= 3 {
            break;
        }
    }
    Ok((best_layers, best_epoch))
}
