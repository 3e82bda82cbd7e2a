//! The consortium's own TorchScript model as the manifest names it: the SHA-256 of the module
//! file (`torch.jit.save` output) that every hospital approves, and its parameters' names and
//! shapes. Nothing here runs a module: the coordinator never links libtorch, and reads the
//! names, shapes and initial values from the safetensors file written beside the module
//! ([`read_initial_parameters`]); the node, which does run it, checks that the module it
//! approved has exactly these parameters.

use std::collections::BTreeSet;

use ring::digest;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::manifest::Digest32;
use crate::model::{MAX_PARAMS, TensorSpec};

/// Most tensors a module may declare.
pub const MAX_TENSORS: usize = 4096;
/// Longest tensor name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Most dimensions one tensor may have.
pub const MAX_RANK: usize = 8;
/// Largest module file a node or the coordinator reads: 1 GiB, above [`MAX_PARAMS`] as `f32`.
pub const MAX_MODULE_BYTES: u64 = 1 << 30;

/// A TorchScript module named by content: what the manifest holds for
/// [`ModelKind::TorchScript`](crate::model::ModelKind::TorchScript).
///
/// The module takes one `float32` tensor of shape `[rows, input_dim]` (the task's encoded
/// features) and returns one logit per row (`[rows]` or `[rows, 1]`). Its parameters travel as
/// one flat vector, tensor after tensor in the order of [`Self::tensors`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorchScriptModule {
    /// SHA-256 of the module file.
    pub sha256: Digest32,
    /// The module's trainable parameters (`named_parameters()`), in the flat vector's order.
    pub tensors: Vec<TensorSpec>,
}

impl TorchScriptModule {
    /// Checks the declared tensors: at least one, at most [`MAX_TENSORS`], each with a unique,
    /// non-empty, printable name of at most [`MAX_NAME_LEN`] bytes, a rank of at most
    /// [`MAX_RANK`], no zero dimension, and at most [`MAX_PARAMS`] values in all.
    pub fn validate(&self) -> Result<(), TorchScriptError> {
        check_tensors(&self.tensors)
    }

    /// The module in words: `TorchScript module 3f2a…e1 (a.weight [8, 6], a.bias [8], …),
    /// 121 parameters`, at most eight tensors named.
    pub fn describe(&self) -> String {
        const NAMED: usize = 8;
        let hex = self.sha256.to_hex();
        let mut tensors: Vec<String> = self
            .tensors
            .iter()
            .take(NAMED)
            .map(|t| format!("{} {:?}", t.name, t.shape))
            .collect();
        if self.tensors.len() > NAMED {
            tensors.push(format!("{} more", self.tensors.len() - NAMED));
        }
        format!(
            "TorchScript module {}…{} ({}), {} parameters",
            &hex[..8],
            &hex[56..],
            tensors.join(", "),
            self.num_params()
        )
    }

    /// Total number of parameters (the tensors' sizes, checked by [`Self::validate`]).
    pub fn num_params(&self) -> usize {
        self.tensors
            .iter()
            .try_fold(0usize, |n, t| n.checked_add(t.numel()))
            .unwrap_or(usize::MAX)
    }
}

/// SHA-256 of a module file's bytes, as the manifest names it.
pub fn module_digest(bytes: &[u8]) -> Digest32 {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    Digest32(out)
}

/// Reads a module's parameters from a safetensors file: their names and shapes in the file's
/// order (by data offset, the order the committed script writes `named_parameters()` in) and
/// their values, one flat `f32` vector in that order.
///
/// Every tensor must be `float32` with finite values; the tensors must pass
/// [`TorchScriptModule::validate`]'s checks.
pub fn read_initial_parameters(
    bytes: &[u8],
) -> Result<(Vec<TensorSpec>, Vec<f32>), TorchScriptError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| TorchScriptError::Safetensors(e.to_string()))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| TorchScriptError::Safetensors(e.to_string()))?;
    let names = metadata.offset_keys();
    if names.len() > MAX_TENSORS {
        return Err(TorchScriptError::TooManyTensors { count: names.len() });
    }
    let mut tensors = Vec::with_capacity(names.len());
    let mut values = Vec::new();
    for name in names {
        let view = file
            .tensor(&name)
            .map_err(|e| TorchScriptError::Safetensors(e.to_string()))?;
        if view.dtype() != Dtype::F32 {
            return Err(TorchScriptError::NotFloat32 {
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let tensor = TensorSpec {
            name,
            shape: view.shape().to_vec(),
        };
        check_tensors(std::slice::from_ref(&tensor))?;
        if values.len().saturating_add(tensor.numel()) > MAX_PARAMS {
            return Err(TorchScriptError::TooLarge { max: MAX_PARAMS });
        }
        for (index, chunk) in view.data().chunks_exact(4).enumerate() {
            let value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if !value.is_finite() {
                return Err(TorchScriptError::NonFinite {
                    name: tensor.name,
                    index,
                });
            }
            values.push(value);
        }
        tensors.push(tensor);
    }
    check_tensors(&tensors)?;
    Ok((tensors, values))
}

fn check_tensors(tensors: &[TensorSpec]) -> Result<(), TorchScriptError> {
    if tensors.is_empty() {
        return Err(TorchScriptError::NoParameters);
    }
    if tensors.len() > MAX_TENSORS {
        return Err(TorchScriptError::TooManyTensors {
            count: tensors.len(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut total = 0usize;
    for tensor in tensors {
        let name = &tensor.name;
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(TorchScriptError::BadName {
                name: name.chars().take(MAX_NAME_LEN).collect(),
            });
        }
        if !seen.insert(name.as_str()) {
            return Err(TorchScriptError::DuplicateName { name: name.clone() });
        }
        if tensor.shape.len() > MAX_RANK || tensor.shape.contains(&0) {
            return Err(TorchScriptError::BadShape {
                name: name.clone(),
                shape: tensor.shape.clone(),
            });
        }
        total = total
            .checked_add(tensor.numel())
            .filter(|&total| total <= MAX_PARAMS)
            .ok_or(TorchScriptError::TooLarge { max: MAX_PARAMS })?;
    }
    Ok(())
}

/// Why a module's declared parameters, or the file they are read from, are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TorchScriptError {
    /// The safetensors file cannot be read.
    #[error("not a readable safetensors file: {0}")]
    Safetensors(String),
    /// A tensor that is not `float32`.
    #[error("tensor `{name}` is {dtype}; the model's parameters must be float32")]
    NotFloat32 {
        /// The tensor.
        name: String,
        /// Its type.
        dtype: String,
    },
    /// A NaN or infinite initial value.
    #[error("tensor `{name}` has a value that is not finite at index {index}")]
    NonFinite {
        /// The tensor.
        name: String,
        /// Position inside it.
        index: usize,
    },
    /// No trainable parameter at all.
    #[error("the module declares no parameters")]
    NoParameters,
    /// More than [`MAX_TENSORS`] tensors.
    #[error("the module declares {count} tensors, more than the {MAX_TENSORS} allowed")]
    TooManyTensors {
        /// How many.
        count: usize,
    },
    /// An empty, overlong or unprintable name.
    #[error(
        "tensor name `{name}` is empty, longer than {MAX_NAME_LEN} bytes or holds spaces or control characters"
    )]
    BadName {
        /// The name (cut to its first [`MAX_NAME_LEN`] characters).
        name: String,
    },
    /// Two tensors of one name.
    #[error("two tensors are named `{name}`")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A zero dimension or too high a rank.
    #[error(
        "tensor `{name}` has shape {shape:?}: no dimension may be zero and at most {MAX_RANK} are allowed"
    )]
    BadShape {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// More than [`MAX_PARAMS`] values.
    #[error("the module would have more than {max} parameters")]
    TooLarge {
        /// The cap.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::TensorView;

    use super::*;

    fn file(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), data)| {
                (
                    (*name).to_owned(),
                    TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None::<HashMap<String, String>>).unwrap()
    }

    #[test]
    fn names_shapes_and_values_come_back_in_the_files_order() {
        let bytes = file(&[
            ("fc.weight", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ("fc.bias", vec![2], vec![-1.0, -2.0]),
            ("out.weight", vec![1, 2], vec![0.5, 0.25]),
        ]);
        let (tensors, values) = read_initial_parameters(&bytes).unwrap();
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        // safetensors lays tensors out by name within a type: the flat vector follows the
        // file's layout, whatever it is, and every value stays with its tensor.
        let mut expected = HashMap::new();
        expected.insert("fc.weight", vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        expected.insert("fc.bias", vec![-1.0, -2.0]);
        expected.insert("out.weight", vec![0.5, 0.25]);
        let mut rest = values.as_slice();
        for tensor in &tensors {
            let (head, tail) = rest.split_at(tensor.numel());
            assert_eq!(head, expected[tensor.name.as_str()].as_slice(), "{names:?}");
            rest = tail;
        }
        assert!(rest.is_empty());
        assert_eq!(tensors.len(), 3);
    }

    #[test]
    fn bad_files_and_tensors_are_refused_by_name() {
        assert!(matches!(
            read_initial_parameters(b"not safetensors"),
            Err(TorchScriptError::Safetensors(_))
        ));
        let nan = file(&[("w", vec![2], vec![0.0, f32::NAN])]);
        assert_eq!(
            read_initial_parameters(&nan),
            Err(TorchScriptError::NonFinite {
                name: "w".into(),
                index: 1
            })
        );
        let doubles: Vec<u8> = 1.0f64.to_le_bytes().to_vec();
        let view = TensorView::new(Dtype::F64, vec![1], &doubles).unwrap();
        let f64_file =
            safetensors::serialize([("w".to_owned(), view)], None::<HashMap<String, String>>)
                .unwrap();
        assert!(matches!(
            read_initial_parameters(&f64_file),
            Err(TorchScriptError::NotFloat32 { name, .. }) if name == "w"
        ));
        let empty = file(&[]);
        assert_eq!(
            read_initial_parameters(&empty),
            Err(TorchScriptError::NoParameters)
        );
    }

    #[test]
    fn declared_tensors_are_checked() {
        let module = |tensors: Vec<TensorSpec>| TorchScriptModule {
            sha256: module_digest(b"module"),
            tensors,
        };
        let t = |name: &str, shape: Vec<usize>| TensorSpec {
            name: name.into(),
            shape,
        };
        assert!(
            module(vec![t("a", vec![2, 2]), t("b", vec![2])])
                .validate()
                .is_ok()
        );
        assert_eq!(
            module(vec![t("a", vec![2]), t("a", vec![2])]).validate(),
            Err(TorchScriptError::DuplicateName { name: "a".into() })
        );
        assert!(matches!(
            module(vec![t("a b", vec![2])]).validate(),
            Err(TorchScriptError::BadName { .. })
        ));
        assert!(matches!(
            module(vec![t("a", vec![2, 0])]).validate(),
            Err(TorchScriptError::BadShape { .. })
        ));
        assert_eq!(
            module(vec![t("a", vec![1 << 20, 1 << 20])]).validate(),
            Err(TorchScriptError::TooLarge { max: MAX_PARAMS })
        );
        assert_eq!(
            module(Vec::new()).validate(),
            Err(TorchScriptError::NoParameters)
        );
        assert_eq!(module(vec![t("a", vec![3, 4])]).num_params(), 12);
    }

    #[test]
    fn the_digest_is_the_files_sha256() {
        // SHA-256("abc"), FIPS 180-2's first example.
        assert_eq!(
            module_digest(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
