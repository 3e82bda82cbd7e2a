//! Model checkpoints as safetensors files, written atomically.
//!
//! Each completed round's global model is written to `dir/round-{round:05}.safetensors`, and the
//! same bytes to `dir/latest.safetensors`. A file holds one `F32` tensor per entry of the model's
//! [`ParamLayout`](medfed_protocol::model::ParamLayout), under the layout's PyTorch names (`0.weight`, `0.bias`, …), so
//!
//! ```python
//! model.load_state_dict(safetensors.torch.load_file("latest.safetensors"))
//! ```
//!
//! loads it into the equivalent `torch.nn.Sequential`. The header metadata carries
//! `format = "pt"`, the [`ModelSpec`] as JSON (`medfed.model_spec`), the model's content hash in hex
//! (`medfed.model_hash`) and the round number (`medfed.round`), and, once the statistics round has
//! given the standardisation, what scoring a patient needs ([`crate::model_file::Scoring`]); the
//! released model ([`write_released_model`]) adds the link to its audit report.
//!
//! Writes go to a temporary file in the same directory, which is fsynced, renamed over the target
//! and followed by an fsync of the directory: a crash leaves either the old file or the new one,
//! never a torn one. Reads check every tensor's presence, dtype and shape, and recompute the hash.
//!
//! This module does not decide which checkpoint is authoritative: the coordinator's store records
//! the path of each completed round's checkpoint, and `latest.safetensors` is a convenience copy
//! for people and tools.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use medfed_protocol::model::{Model, ModelError, ModelHash, ModelSpec};
use safetensors::tensor::{Dtype, Metadata, SafeTensorError};

use crate::model_file::{AuditLink, ModelFile, Scoring};

/// File name of the copy of the newest checkpoint in a checkpoint directory.
pub const LATEST_FILE_NAME: &str = "latest.safetensors";

/// Metadata key holding the model architecture as JSON.
pub const META_MODEL_SPEC: &str = "medfed.model_spec";

/// Metadata key holding the model's content hash in lower-case hex.
pub const META_MODEL_HASH: &str = "medfed.model_hash";

/// Metadata key holding the round number in decimal.
pub const META_ROUND: &str = "medfed.round";

/// File name of the checkpoint for `round`: `round-{round:05}.safetensors`.
pub fn checkpoint_file_name(round: u64) -> String {
    format!("round-{round:05}.safetensors")
}

/// Writes the checkpoint of `round` to `dir/round-{round:05}.safetensors` atomically and returns
/// its path.
///
/// `dir/latest.safetensors` is then replaced, also atomically, by a copy, unless it already holds
/// a later round. A crash between the two writes leaves `latest.safetensors` one round behind;
/// the per-round file is always complete before this returns.
pub fn write_checkpoint(dir: &Path, round: u64, model: &Model) -> Result<PathBuf, CheckpointError> {
    write_round_checkpoint(
        dir,
        &ModelFile {
            round,
            model: model.clone(),
            scoring: None,
            audit: None,
        },
    )
}

/// As [`write_checkpoint`], for a model file that may carry its [`Scoring`] (and, though a
/// round's checkpoint never does, an [`AuditLink`]).
pub fn write_round_checkpoint(dir: &Path, file: &ModelFile) -> Result<PathBuf, CheckpointError> {
    let (round, model) = (file.round, &file.model);
    let path = dir.join(checkpoint_file_name(round));
    write_model_file_atomically(&path, file)?;

    let latest = dir.join(LATEST_FILE_NAME);
    // An unreadable or foreign `latest` file is simply replaced.
    let newer_exists = matches!(peek_round(&latest), Ok(Some(r)) if r > round);
    if newer_exists {
        tracing::debug!(
            round,
            "latest checkpoint holds a later round; left as it is"
        );
    } else {
        write_model_file_atomically(&latest, file)?;
    }
    tracing::debug!(round, path = %path.display(), hash = %model.hash(), "checkpoint written");
    Ok(path)
}

/// Writes the released model to `path` atomically: the model file of the round the consortium
/// releases, with the link to the audit report that judged it.
pub fn write_released_model(path: &Path, file: &ModelFile) -> Result<(), CheckpointError> {
    write_model_file_atomically(path, file)
}

/// Reads a model file (a round's checkpoint or the released model), with everything it carries.
///
/// The file is read a piece at a time straight into the parameters: reading a model takes the
/// model's memory, not its file's bytes as well.
pub fn read_model_file(path: &Path) -> Result<ModelFile, CheckpointError> {
    let io_error = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    read_model_from(&mut file, len).map_err(|e| match e {
        ReadError::Io(source) => io_error(source),
        ReadError::Checkpoint(e) => e,
    })
}

/// Reads a checkpoint written by [`write_checkpoint`] and returns its round and model.
///
/// Every tensor of the layout named by the metadata must be present as `F32` with the layout's
/// shape, no other tensor may be present, and the hash of the rebuilt model must equal the
/// recorded one.
pub fn read_checkpoint(path: &Path) -> Result<(u64, Model), CheckpointError> {
    read_model_file(path).map(|file| (file.round, file.model))
}

/// Serialises a model as the bytes of a checkpoint file for `round` (see the module docs).
pub fn encode_checkpoint(round: u64, model: &Model) -> Result<Vec<u8>, CheckpointError> {
    encode_model_file(&ModelFile {
        round,
        model: model.clone(),
        scoring: None,
        audit: None,
    })
}

/// Serialises a model file: its model as in [`encode_checkpoint`], with the metadata of its
/// scoring and audit link ([`crate::model_file`]).
pub fn encode_model_file(file: &ModelFile) -> Result<Vec<u8>, CheckpointError> {
    let mut out = Vec::new();
    write_model_file(file, &mut out).map_err(|e| match e {
        WriteError::Checkpoint(e) => e,
        // Writing to a vector does not fail.
        WriteError::Io(source) => CheckpointError::Io {
            path: PathBuf::new(),
            source,
        },
    })?;
    Ok(out)
}

/// Why a model file could not be written out.
#[derive(Debug)]
enum WriteError {
    Checkpoint(CheckpointError),
    Io(io::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Parameters converted to bytes at a time when a model file is written out.
const WRITE_PIECE: usize = 16 * 1024;

/// Writes a model file in the safetensors format to `out` as it is made: the header (the
/// metadata, then each tensor's dtype, shape and byte range, tensors in name order as the
/// safetensors crate lays them out), then each tensor's little-endian `f32` bytes, a piece at a
/// time, so that the model's bytes are never held whole besides the model itself.
fn write_model_file(file: &ModelFile, out: &mut dyn Write) -> Result<(), WriteError> {
    let (round, model) = (file.round, &file.model);
    let layout = model.spec.layout();
    let invalid = || {
        WriteError::Checkpoint(CheckpointError::InvalidModel(ModelError::WrongLength {
            expected: layout.len(),
            actual: model.params.len(),
        }))
    };
    let hash = ModelHash::of(&model.spec, &model.params).ok_or_else(invalid)?;
    let spec_json = serde_json::to_string(&model.spec)
        .map_err(|e| WriteError::Checkpoint(CheckpointError::SpecJson(e)))?;
    let mut metadata = HashMap::from([
        ("format".to_owned(), "pt".to_owned()),
        (META_MODEL_SPEC.to_owned(), spec_json),
        (META_MODEL_HASH.to_owned(), hash.to_hex()),
        (META_ROUND.to_owned(), round.to_string()),
    ]);
    if let Some(scoring) = &file.scoring {
        scoring
            .write_metadata(&mut metadata)
            .map_err(WriteError::Checkpoint)?;
    }
    if let Some(audit) = &file.audit {
        audit.write_metadata(&mut metadata);
    }

    let mut tensors = layout.split(&model.params).ok_or_else(invalid)?;
    tensors.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".to_owned(),
        serde_json::to_value(metadata.into_iter().collect::<BTreeMap<_, _>>())
            .map_err(|e| WriteError::Checkpoint(CheckpointError::SpecJson(e)))?,
    );
    let mut offset = 0usize;
    for (tensor, values) in &tensors {
        let end = offset + 4 * values.len();
        header.insert(
            tensor.name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": tensor.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| WriteError::Checkpoint(CheckpointError::SpecJson(e)))?;
    // The data starts 8-byte aligned, the header padded with spaces as the crate pads it.
    header.resize(header.len().next_multiple_of(8), b' ');
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut bytes = Vec::with_capacity(4 * WRITE_PIECE);
    for (_, values) in &tensors {
        for piece in values.chunks(WRITE_PIECE) {
            bytes.clear();
            bytes.extend(piece.iter().flat_map(|v| v.to_le_bytes()));
            out.write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Writes `file` atomically to `target` (see [`medfed_certs::replace_file_with`]), streamed.
fn write_model_file_atomically(target: &Path, file: &ModelFile) -> Result<(), CheckpointError> {
    let mut failure = None;
    let written = medfed_certs::replace_file_with(target, |out| {
        write_model_file(file, out).map_err(|e| match e {
            WriteError::Io(e) => e,
            WriteError::Checkpoint(e) => {
                failure = Some(e);
                io::Error::other("the model file could not be made")
            }
        })
    });
    match (written, failure) {
        (_, Some(e)) => Err(e),
        (Err(source), None) => Err(CheckpointError::Io {
            path: target.to_path_buf(),
            source,
        }),
        (Ok(()), None) => Ok(()),
    }
}

/// SHA-256 of a file's bytes in lower-case hex (as [`medfed_protocol::report::file_sha256`]),
/// read a piece at a time rather than whole.
pub fn file_sha256_streaming(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => context.update(buffer.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(context.finish().as_ref()))
}

/// Parses the bytes of a checkpoint file; see [`read_checkpoint`] for the checks made.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<(u64, Model), CheckpointError> {
    decode_model_file(bytes).map(|file| (file.round, file.model))
}

/// Parses the bytes of a model file: the checks of [`read_checkpoint`], and those of its
/// scoring and audit link when it carries them ([`Scoring`]: the schema parses, hashes to the
/// recorded digest, encodes the model's input width and the recorded feature names, and the
/// standardisation and threshold are valid for it).
pub fn decode_model_file(bytes: &[u8]) -> Result<ModelFile, CheckpointError> {
    read_model_from(&mut io::Cursor::new(bytes), bytes.len() as u64).map_err(|e| match e {
        ReadError::Checkpoint(e) => e,
        // Every read is within the length the header and the tensors were checked against.
        ReadError::Io(e) => CheckpointError::Safetensors(SafeTensorError::IoError(e)),
    })
}

/// Why reading a model file failed: its source, or what it holds.
enum ReadError {
    Io(io::Error),
    Checkpoint(CheckpointError),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<CheckpointError> for ReadError {
    fn from(e: CheckpointError) -> Self {
        Self::Checkpoint(e)
    }
}

impl From<SafeTensorError> for ReadError {
    fn from(e: SafeTensorError) -> Self {
        Self::Checkpoint(CheckpointError::Safetensors(e))
    }
}

/// Bytes of tensor data read at a time.
const READ_PIECE: usize = 1 << 20;

/// Reads a model file of `len` bytes from `source`: the safetensors header (with the checks
/// the `safetensors` crate makes of a whole file: the header's size, its JSON, tensors back to
/// back with sizes that fit their shapes and dtypes, and data that ends where the file does),
/// then each tensor of the model's layout, a piece at a time, into the parameters.
fn read_model_from<R: Read + Seek>(source: &mut R, len: u64) -> Result<ModelFile, ReadError> {
    let mut prefix = [0u8; 8];
    if len < prefix.len() as u64 {
        return Err(SafeTensorError::HeaderTooSmall.into());
    }
    source.read_exact(&mut prefix)?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_BYTES {
        return Err(SafeTensorError::HeaderTooLarge.into());
    }
    let data_start = 8 + header_len;
    if data_start > len {
        return Err(SafeTensorError::InvalidHeaderLength.into());
    }
    let mut header = Vec::new();
    source.take(header_len).read_to_end(&mut header)?;
    let header = std::str::from_utf8(&header).map_err(SafeTensorError::InvalidHeader)?;
    let metadata: Metadata =
        serde_json::from_str(header).map_err(SafeTensorError::InvalidHeaderDeserialization)?;
    if data_start.checked_add(metadata.data_len() as u64) != Some(len) {
        return Err(SafeTensorError::MetadataIncompleteBuffer.into());
    }
    let empty = HashMap::new();
    let meta = metadata.metadata().as_ref().unwrap_or(&empty);
    let field = |key: &'static str| {
        meta.get(key)
            .map(String::as_str)
            .ok_or(CheckpointError::MissingMetadata { key })
    };

    let round: u64 = field(META_ROUND)?
        .parse()
        .map_err(|_| CheckpointError::BadMetadata {
            key: META_ROUND,
            reason: "not a decimal round number".into(),
        })?;
    let spec: ModelSpec = serde_json::from_str(field(META_MODEL_SPEC)?).map_err(|e| {
        CheckpointError::BadMetadata {
            key: META_MODEL_SPEC,
            reason: e.to_string(),
        }
    })?;
    spec.validate().map_err(CheckpointError::InvalidModel)?;
    let recorded = parse_hash(field(META_MODEL_HASH)?)?;

    let layout = spec.layout();
    // No more than the file's tensors hold, whatever the spec says.
    let mut params = Vec::with_capacity(layout.len().min(metadata.data_len() / 4));
    let mut piece = Vec::new();
    for tensor in layout.tensors() {
        let Some(info) = metadata.info(&tensor.name) else {
            return Err(CheckpointError::MissingTensor {
                name: tensor.name.clone(),
            }
            .into());
        };
        if info.dtype != Dtype::F32 {
            return Err(CheckpointError::WrongDtype {
                name: tensor.name.clone(),
                dtype: info.dtype.to_string(),
            }
            .into());
        }
        if info.shape != tensor.shape {
            return Err(CheckpointError::WrongShape {
                name: tensor.name.clone(),
                expected: tensor.shape.clone(),
                actual: info.shape.clone(),
            }
            .into());
        }
        // The metadata's checks: the data is shape × 4 bytes, within the file.
        let (start, end) = info.data_offsets;
        source.seek(SeekFrom::Start(data_start + start as u64))?;
        let mut left = end - start;
        while left > 0 {
            piece.resize(left.min(READ_PIECE), 0);
            source.read_exact(&mut piece)?;
            params.extend(
                piece
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            left -= piece.len();
        }
    }
    if metadata.tensors().len() != layout.tensors().len() {
        let known: Vec<&str> = layout.tensors().iter().map(|t| t.name.as_str()).collect();
        let extra = metadata
            .offset_keys()
            .into_iter()
            .find(|n| !known.contains(&n.as_str()))
            .unwrap_or_default();
        return Err(CheckpointError::UnexpectedTensor { name: extra }.into());
    }

    let actual = ModelHash::of(&spec, &params).ok_or(CheckpointError::InvalidModel(
        ModelError::WrongLength {
            expected: layout.len(),
            actual: params.len(),
        },
    ))?;
    if actual != recorded {
        return Err(CheckpointError::HashMismatch { recorded, actual }.into());
    }
    let scoring = Scoring::read_metadata(meta, &spec)?;
    let audit = AuditLink::read_metadata(meta)?;
    let model = Model::new(spec, params).map_err(CheckpointError::InvalidModel)?;
    Ok(ModelFile {
        round,
        model,
        scoring,
        audit,
    })
}

/// A checkpoint that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file system operation failed.
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The bytes are not a valid safetensors file (truncated, bad header, bad offsets, …).
    #[error("not a valid safetensors file: {0}")]
    Safetensors(#[source] SafeTensorError),
    /// A required metadata entry is absent.
    #[error("checkpoint metadata lacks `{key}`")]
    MissingMetadata {
        /// The missing key.
        key: &'static str,
    },
    /// A metadata entry could not be parsed.
    #[error("checkpoint metadata `{key}` is invalid: {reason}")]
    BadMetadata {
        /// The key concerned.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The model architecture could not be serialised.
    #[error("cannot serialise the model spec: {0}")]
    SpecJson(#[source] serde_json::Error),
    /// The model does not fit its architecture.
    #[error("invalid model: {0}")]
    InvalidModel(#[source] ModelError),
    /// A tensor of the layout is absent.
    #[error("checkpoint lacks tensor `{name}`")]
    MissingTensor {
        /// The layout name of the tensor.
        name: String,
    },
    /// A tensor not in the layout is present.
    #[error("checkpoint holds tensor `{name}`, which the model's layout does not have")]
    UnexpectedTensor {
        /// Its name.
        name: String,
    },
    /// A tensor is not stored as `F32`.
    #[error("tensor `{name}` has dtype {dtype}, expected F32")]
    WrongDtype {
        /// The tensor.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor's shape differs from the layout's.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        /// The tensor.
        name: String,
        /// Shape in the layout.
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// The parameters do not hash to the recorded model hash.
    #[error("checkpoint records model hash {recorded} but its parameters hash to {actual}")]
    HashMismatch {
        /// Hash in the metadata.
        recorded: ModelHash,
        /// Hash of the parameters read.
        actual: ModelHash,
    },
}

/// Largest header [`peek_round`] reads (the safetensors limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads only the header of a checkpoint file and returns its recorded round, if any.
fn peek_round(path: &Path) -> io::Result<Option<u64>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Ok(None);
    }
    let mut header = Vec::new();
    file.take(len).read_to_end(&mut header)?;
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&header) else {
        return Ok(None);
    };
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.get(META_ROUND))
        .and_then(|r| r.as_str())
        .and_then(|r| r.parse().ok()))
}

/// Parses a 64-character hex model hash.
fn parse_hash(hex_str: &str) -> Result<ModelHash, CheckpointError> {
    let bad = || CheckpointError::BadMetadata {
        key: META_MODEL_HASH,
        reason: "not 64 hex digits".into(),
    };
    let bytes = hex::decode(hex_str).map_err(|_| bad())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    Ok(ModelHash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use medfed_protocol::model::ModelKind;
    use safetensors::tensor::{SafeTensors, TensorView};
    use std::fs;

    fn model() -> Model {
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![4, 3] },
            input_dim: 5,
        };
        let params = spec.initial_parameters(42);
        Model::new(spec, params).unwrap()
    }

    /// Byte offset of the tensor data section and the header JSON.
    fn header(bytes: &[u8]) -> (usize, serde_json::Value) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (8 + n, serde_json::from_slice(&bytes[8..8 + n]).unwrap())
    }

    #[test]
    fn roundtrip_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let m = model();
        let path = write_checkpoint(dir.path(), 3, &m).unwrap();
        assert_eq!(path, dir.path().join("round-00003.safetensors"));
        let (round, back) = read_checkpoint(&path).unwrap();
        assert_eq!(round, 3);
        assert_eq!(back, m);
        assert_eq!(back.hash(), m.hash());

        let latest = dir.path().join(LATEST_FILE_NAME);
        assert_eq!(read_checkpoint(&latest).unwrap().0, 3);

        let mut m2 = m.clone();
        m2.params[0] += 0.5;
        write_checkpoint(dir.path(), 4, &m2).unwrap();
        assert_eq!(read_checkpoint(&latest).unwrap(), (4, m2.clone()));
        // Rewriting an older round leaves `latest` at the newest.
        write_checkpoint(dir.path(), 3, &m).unwrap();
        assert_eq!(read_checkpoint(&latest).unwrap(), (4, m2));

        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_model_of_several_read_pieces_is_read_from_disk_as_its_bytes_decode() {
        // A first tensor of 1.4 MB: read in two pieces.
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![600] },
            input_dim: 600,
        };
        let m = Model::new(spec.clone(), spec.initial_parameters(7)).unwrap();
        const { assert!(4 * 600 * 600 > READ_PIECE) };
        let dir = tempfile::tempdir().unwrap();
        let path = write_checkpoint(dir.path(), 2, &m).unwrap();
        let read = read_model_file(&path).unwrap();
        assert_eq!((read.round, &read.model), (2, &m));
        assert_eq!(read, decode_model_file(&fs::read(&path).unwrap()).unwrap());
        // A file that grows after its header was written is refused as a truncated one is.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0; 4])
            .unwrap();
        assert!(matches!(
            read_model_file(&path),
            Err(CheckpointError::Safetensors(
                SafeTensorError::MetadataIncompleteBuffer
            ))
        ));
    }

    #[test]
    fn truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_checkpoint(dir.path(), 1, &model()).unwrap();
        let bytes = fs::read(&path).unwrap();
        for cut in [0, 5, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            let err = decode_checkpoint(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Safetensors(_)),
                "cut {cut}: {err:?}"
            );
        }
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(
            read_checkpoint(&path),
            Err(CheckpointError::Safetensors(_))
        ));
    }

    #[test]
    fn flipped_value_byte_is_a_hash_mismatch() {
        let m = model();
        let mut bytes = encode_checkpoint(7, &m).unwrap();
        let (data_start, _) = header(&bytes);
        // Flip a low mantissa bit: the value stays finite, only the hash can notice.
        bytes[data_start + 12] ^= 0x01;
        match decode_checkpoint(&bytes) {
            Err(CheckpointError::HashMismatch { recorded, .. }) => assert_eq!(recorded, m.hash()),
            other => panic!("expected a hash mismatch, got {other:?}"),
        }
    }

    #[test]
    fn streamed_file_is_what_the_safetensors_crate_writes() {
        let m = model();
        let layout = m.spec.layout();
        let datas: Vec<(String, Vec<usize>, Vec<u8>)> = layout
            .split(&m.params)
            .unwrap()
            .into_iter()
            .map(|(t, v)| {
                let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (t.name.clone(), t.shape.clone(), data)
            })
            .collect();
        let views = datas.iter().map(|(name, shape, data)| {
            (
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        });
        let meta = HashMap::from([
            ("format".to_owned(), "pt".to_owned()),
            (
                META_MODEL_SPEC.to_owned(),
                serde_json::to_string(&m.spec).unwrap(),
            ),
            (META_MODEL_HASH.to_owned(), m.hash().to_hex()),
            (META_ROUND.to_owned(), "4".to_owned()),
        ]);
        let theirs = safetensors::serialize(views, Some(meta)).unwrap();
        let ours = encode_checkpoint(4, &m).unwrap();
        // The same length, header layout and data: only the metadata's key order may differ.
        assert_eq!(ours.len(), theirs.len());
        let (n_ours, header_ours) = SafeTensors::read_metadata(&ours).unwrap();
        let (n_theirs, header_theirs) = SafeTensors::read_metadata(&theirs).unwrap();
        assert_eq!(n_ours, n_theirs);
        assert_eq!(header_ours.metadata(), header_theirs.metadata());
        assert_eq!(ours[8 + n_ours..], theirs[8 + n_theirs..]);
        let (ours, theirs) = (
            SafeTensors::deserialize(&ours).unwrap(),
            SafeTensors::deserialize(&theirs).unwrap(),
        );
        for (name, _, data) in &datas {
            assert_eq!(ours.tensor(name).unwrap().data(), data.as_slice());
            assert_eq!(
                ours.tensor(name).unwrap().data(),
                theirs.tensor(name).unwrap().data()
            );
        }
    }

    #[test]
    fn missing_tensor_is_refused() {
        let m = model();
        let layout = m.spec.layout();
        let pieces = layout.split(&m.params).unwrap();
        let mut views = Vec::new();
        let datas: Vec<Vec<u8>> = pieces
            .iter()
            .map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        for ((tensor, _), data) in pieces.iter().zip(&datas) {
            if tensor.name != "2.bias" {
                views.push((
                    tensor.name.clone(),
                    TensorView::new(Dtype::F32, tensor.shape.clone(), data).unwrap(),
                ));
            }
        }
        let meta = HashMap::from([
            (
                META_MODEL_SPEC.to_owned(),
                serde_json::to_string(&m.spec).unwrap(),
            ),
            (META_MODEL_HASH.to_owned(), m.hash().to_hex()),
            (META_ROUND.to_owned(), "1".to_owned()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta)).unwrap();
        match decode_checkpoint(&bytes) {
            Err(CheckpointError::MissingTensor { name }) => assert_eq!(name, "2.bias"),
            other => panic!("expected a missing tensor, got {other:?}"),
        }
    }

    #[test]
    fn missing_or_bad_metadata_is_refused() {
        let bytes = safetensors::serialize(
            [(
                "0.weight",
                TensorView::new(Dtype::F32, vec![1], &[0; 4]).unwrap(),
            )],
            None,
        )
        .unwrap();
        assert!(matches!(
            decode_checkpoint(&bytes),
            Err(CheckpointError::MissingMetadata { key: META_ROUND })
        ));
        let meta = HashMap::from([
            (META_ROUND.to_owned(), "x".to_owned()),
            (META_MODEL_SPEC.to_owned(), "{}".to_owned()),
            (META_MODEL_HASH.to_owned(), "00".to_owned()),
        ]);
        let bytes = safetensors::serialize(
            [(
                "0.weight",
                TensorView::new(Dtype::F32, vec![1], &[0; 4]).unwrap(),
            )],
            Some(meta),
        )
        .unwrap();
        assert!(matches!(
            decode_checkpoint(&bytes),
            Err(CheckpointError::BadMetadata {
                key: META_ROUND,
                ..
            })
        ));
    }

    #[test]
    fn file_layout_is_what_pytorch_expects() {
        let m = model();
        let bytes = encode_checkpoint(2, &m).unwrap();
        let (_, json) = header(&bytes);
        let meta = &json["__metadata__"];
        assert_eq!(meta["format"], "pt");
        assert_eq!(meta[META_ROUND], "2");
        assert_eq!(meta[META_MODEL_HASH], m.hash().to_hex());
        let spec: ModelSpec =
            serde_json::from_str(meta[META_MODEL_SPEC].as_str().unwrap()).unwrap();
        assert_eq!(spec, m.spec);

        let expected = [
            ("0.weight", vec![4, 5]),
            ("0.bias", vec![4]),
            ("2.weight", vec![3, 4]),
            ("2.bias", vec![3]),
            ("4.weight", vec![1, 3]),
            ("4.bias", vec![1]),
        ];
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), expected.len() + 1);
        for (name, shape) in expected {
            assert_eq!(obj[name]["dtype"], "F32", "{name}");
            let got: Vec<usize> = serde_json::from_value(obj[name]["shape"].clone()).unwrap();
            assert_eq!(got, shape, "{name}");
        }
        // Weights are row-major [out, in]: the first row of `0.weight` is params[0..5].
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("0.weight").unwrap();
        let first: Vec<f32> = w.data()[..20]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(first, m.params[..5]);
    }

    /// Loads a checkpoint into `torch.nn.Sequential` when python3 with torch and safetensors is
    /// available; skipped otherwise.
    #[test]
    fn loads_into_pytorch_sequential_if_available() {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import torch, safetensors.torch"])
            .output();
        if !matches!(probe, Ok(ref o) if o.status.success()) {
            eprintln!("python3 with torch and safetensors not importable; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let m = model();
        let path = write_checkpoint(dir.path(), 1, &m).unwrap();
        let script = r#"
import sys, torch, safetensors.torch as st
net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3),
                          torch.nn.ReLU(), torch.nn.Linear(3, 1))
net.load_state_dict(st.load_file(sys.argv[1]))
print(float(net[0].weight[0, 0]))
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script, path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first: f32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(first, m.params[0]);
    }
}
