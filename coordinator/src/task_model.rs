//! The task's model as the coordinator builds it from `[task.model]`: a built-in or declared
//! architecture from the configuration alone, with its seeded initial parameters; the
//! consortium's TorchScript module from its two files, the module (hashed, never run: the
//! coordinator does not link libtorch) and the safetensors file of its initial parameters.

use std::path::{Path, PathBuf};

use medfed_certs::{BoundedFileError, read_regular_file};
use medfed_protocol::model::{ModelConfig, ModelError, ModelKind, ModelSpec};
use medfed_protocol::torchscript::MAX_MODULE_BYTES;

/// The task's model and where training starts.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskModel {
    /// The architecture over the schema's encoded features.
    pub spec: ModelSpec,
    /// The parameters of round 0.
    pub initial: Vec<f32>,
}

/// The model `config` describes over `input_dim` encoded features; `seed` draws the initial
/// parameters of a built-in or declared architecture.
pub fn task_model(
    config: &ModelConfig,
    input_dim: usize,
    seed: u64,
) -> Result<TaskModel, TaskModelError> {
    if let ModelConfig::TorchScript { module, parameters } = config {
        let module = read_file(module)?;
        let bytes = read_file(parameters)?;
        let (spec, initial) =
            ModelSpec::torchscript(&module, &bytes, input_dim).map_err(|source| {
                TaskModelError::Parameters {
                    path: parameters.clone(),
                    source: Box::new(source),
                }
            })?;
        return Ok(TaskModel { spec, initial });
    }
    let spec = ModelSpec::from_config(config.clone(), input_dim)?;
    let initial = spec.initial_parameters(seed);
    Ok(TaskModel { spec, initial })
}

/// Checks `config` without a schema: a declared architecture is checked, a TorchScript
/// module's files are read and its parameters checked.
pub fn check_model_config(config: &ModelConfig) -> Result<(), TaskModelError> {
    match config {
        ModelConfig::TorchScript { .. } => task_model(config, 1, 0).map(drop),
        other => ModelKind::try_from(other.clone())
            .map(drop)
            .map_err(TaskModelError::from),
    }
}

/// A file of at most [`MAX_MODULE_BYTES`].
fn read_file(path: &Path) -> Result<Vec<u8>, TaskModelError> {
    read_regular_file(path, MAX_MODULE_BYTES).map_err(|e| {
        let path = path.to_owned();
        match e {
            BoundedFileError::Read(source) => TaskModelError::Read { path, source },
            BoundedFileError::NotAFile => TaskModelError::NotAFile { path },
            BoundedFileError::TooLarge => TaskModelError::TooLarge { path },
        }
    })
}

/// Why the task's model cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TaskModelError {
    /// A model file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A model file that is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A model file larger than [`MAX_MODULE_BYTES`].
    #[error("{} is larger than {MAX_MODULE_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The TorchScript module's parameters file is refused.
    #[error("{}: {source}", path.display())]
    Parameters {
        /// The safetensors file.
        path: PathBuf,
        /// Why.
        source: Box<ModelError>,
    },
    /// The architecture is refused.
    #[error(transparent)]
    Model(Box<ModelError>),
}

impl From<ModelError> for TaskModelError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}
