//! The Burn encoders as an [`Embedder`], on the CPU backend or (feature `cuda`) on CUDA.
//!
//! The CPU backend is `burn-flex` with rayon and SIMD (see the README for the measurements
//! that chose it). The CUDA backend is chosen at run time only: building with `cuda` does not
//! make the CPU path touch CUDA, so a CUDA build still runs where there is no GPU.

use std::path::Path;

use burn::tensor::backend::Backend;

use super::engine::{Embedder, l2_normalize};
use crate::encoder::{self, Batch, Encoder};
use crate::error::Result;
use crate::models::ModelConfig;

pub use crate::encoder::Cpu;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU backend.
    #[default]
    Cpu,
    /// The CUDA backend (needs the `cuda` feature and a GPU).
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown device {other:?} (cpu, cuda)")),
        }
    }
}

/// A loaded encoder on one device.
#[derive(Debug)]
pub struct BurnEmbedder<B: Backend> {
    encoder: Encoder<B>,
    config: ModelConfig,
    device: B::Device,
    pad_multiple: usize,
}

impl<B: Backend> BurnEmbedder<B> {
    /// Loads the model folder `dir` onto `device`.
    pub fn load(dir: &Path, device: B::Device) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let encoder = encoder::load::<B>(&config, dir, &device)?;
        Ok(Self {
            encoder,
            config,
            device,
            pad_multiple: 1,
        })
    }

    /// Pads each batch to a multiple of `multiple` tokens (1: to its longest text only).
    #[must_use]
    pub fn with_pad_multiple(mut self, multiple: usize) -> Self {
        self.pad_multiple = multiple.max(1);
        self
    }

    /// Runs the padded path (texts padded to the batch's longest, Burn's masked `attention`)
    /// on the CPU backend too, instead of the packed one (for comparing the two; other
    /// backends always run it).
    #[must_use]
    pub fn with_padded(mut self, padded: bool) -> Self {
        self.encoder = self.encoder.with_padded(padded);
        self
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
}

impl<B: Backend> Embedder for BurnEmbedder<B>
where
    B::Device: Send,
    Encoder<B>: Send,
{
    fn dimension(&self) -> usize {
        self.config.hidden_size
    }

    fn embed(&mut self, batch: &[&[u32]]) -> Vec<Vec<f32>> {
        let mut vectors = self.embed_pooled(batch);
        if self.config.normalize {
            vectors.iter_mut().for_each(|v| l2_normalize(v));
        }
        vectors
    }

    fn normalizes(&self) -> bool {
        self.config.normalize
    }

    fn embed_pooled(&mut self, batch: &[&[u32]]) -> Vec<Vec<f32>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let input = Batch::<B>::new(
            batch,
            self.config.pad_token_id as u32,
            self.pad_multiple,
            self.config.max_seq_length,
            &self.device,
        );
        let pooled = ModelConfig {
            normalize: false,
            ..self.config.clone()
        };
        let out = self.encoder.embed(&pooled, &input);
        let flat: Vec<f32> = out
            .into_data()
            .to_vec()
            .unwrap_or_else(|e| panic!("the encoder's output is f32: {e:?}"));
        flat.chunks(self.config.hidden_size)
            .map(<[f32]>::to_vec)
            .collect()
    }

    fn computed_tokens(&self, batch: &[&[u32]]) -> u64 {
        if self.encoder.packs() {
            return batch.iter().map(|t| t.len() as u64).sum();
        }
        let longest = batch.iter().map(|t| t.len()).max().unwrap_or(0);
        let len = Batch::<B>::padded_len(longest, self.pad_multiple, self.config.max_seq_length);
        (batch.len() * len) as u64
    }
}

/// Loads a model folder onto the requested device.
pub fn load_embedder(dir: &Path, device: Device) -> Result<(Box<dyn Embedder>, ModelConfig)> {
    match device {
        Device::Cpu => {
            let m = BurnEmbedder::<Cpu>::load(dir, Default::default())?;
            let config = m.config().clone();
            Ok((Box::new(m), config))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            // Without the driver library the CUDA runtime panics on its own thread and the
            // process then crashes, so look for the library before touching the backend.
            if !cuda_driver_present() {
                return Err(crate::error::Error::Device {
                    reason: "--device cuda needs the NVIDIA driver (libcuda.so), which this machine does not have".to_owned(),
                });
            }
            cuda_kernel_cache();
            let m = BurnEmbedder::<burn::backend::Cuda>::load(dir, Default::default())?
                .with_pad_multiple(cuda_pad_multiple());
            let config = m.config().clone();
            Ok((Box::new(m), config))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(crate::error::Error::Device {
            reason: "this build has no CUDA backend; rebuild with `--features cuda`".to_owned(),
        }),
    }
}

/// Whether the NVIDIA driver library can be found (the dynamic loader's cache, or a folder of
/// `LD_LIBRARY_PATH`).
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> bool {
    let in_cache = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so"))
        .unwrap_or(false);
    in_cache
        || std::env::var("LD_LIBRARY_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .any(|d| {
                std::path::Path::new(d).join("libcuda.so.1").exists()
                    || std::path::Path::new(d).join("libcuda.so").exists()
            })
}

/// Tokens a CUDA batch is padded to a multiple of: `EMBEDSTREAM_CUDA_PAD_MULTIPLE`, else
/// [`CUDA_PAD_MULTIPLE`].
#[cfg(feature = "cuda")]
fn cuda_pad_multiple() -> usize {
    std::env::var("EMBEDSTREAM_CUDA_PAD_MULTIPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CUDA_PAD_MULTIPLE)
}

/// The CUDA backend's default padding multiple (see the README's GPU measurements).
#[cfg(feature = "cuda")]
pub const CUDA_PAD_MULTIPLE: usize = 32;

/// Keeps CubeCL's compiled kernels and autotune results in `$EMBEDSTREAM_HOME/cubecl`, so a
/// process after the first skips the NVRTC compiles and the tuning runs. A `cubecl.toml` (or
/// `CUBECL_*` variables) that names other places wins. Runs before the backend's first use.
#[cfg(feature = "cuda")]
fn cuda_kernel_cache() {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = crate::models::home().join("cubecl");
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if config.compilation.cache.is_none() {
            config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        }
        if matches!(config.autotune.cache, CacheConfig::Target) {
            config.autotune.cache = CacheConfig::File(dir);
        }
        CubeClRuntimeConfig::set(config);
    });
}
