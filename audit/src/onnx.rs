//! A model file as an ONNX model with the preprocessing inside, for a hospital's own tooling.
//!
//! The graph takes one input per schema column, named after it, of shape `[N, 1]`: `float` for a
//! numeric column, `string` for a categorical one (cells trimmed, as `medfed-node predict` reads
//! them). It encodes them as training did — a numeric value standardised, a missing one (NaN)
//! imputed with the pooled mean and flagged under `missing = "impute"`; a categorical cell
//! one-hot over its levels, a blank or a missing-value token counted as the `(missing)` level
//! under `missing = "level"` — concatenates the features in the model's input order, runs the
//! network (`Gemm` with the PyTorch weights, `Relu` between layers) and ends with `Sigmoid`: the
//! output `score`, `[N, 1]`, is the probability of the positive class. A categorical value the
//! schema does not list one-hot encodes as all zeros (`predict` refuses such a row instead).
//! A schema with an image column is refused ([`OnnxError::ImageColumn`]): the graph's inputs
//! are cells, and an image cell is a file path.
//!
//! It is written with opset 19 of the default domain (the first where `Equal` compares strings),
//! IR version 9, as protobuf by hand: the handful of ONNX messages it needs, field numbers from
//! `onnx.proto3`. The model's metadata carries the round, the model hash, the decision
//! threshold and, for a released model, its audit report's SHA-256 and verdict.

use medfed_protocol::model::ModelKind;
use medfed_protocol::schema::{ColumnKind, MISSING_LEVEL, MissingMode};

use crate::model_file::{ModelFile, Scoring};

/// The opset of the default domain the graph uses.
pub const OPSET: i64 = 19;
/// The ONNX IR version written.
pub const IR_VERSION: i64 = 9;
/// The name of the graph's output.
pub const OUTPUT: &str = "score";

/// Element types (`TensorProto.DataType`).
const FLOAT: i64 = 1;
const STRING: i64 = 8;
const BOOL: i64 = 9;

/// The ONNX model of `file`, or why there is none: a file without its scoring cannot say how
/// its inputs are encoded.
pub fn to_onnx(file: &ModelFile) -> Result<Vec<u8>, OnnxError> {
    let scoring = file.scoring.as_ref().ok_or(OnnxError::NoScoring)?;
    match &file.model.spec.kind {
        ModelKind::Layers(architecture) => {
            return Err(OnnxError::DeclaredLayers {
                layers: architecture.layers().len(),
            });
        }
        ModelKind::TorchScript(module) => {
            return Err(OnnxError::TorchScript {
                sha256: module.sha256.to_hex(),
            });
        }
        ModelKind::LogisticRegression | ModelKind::Mlp { .. } => {}
    }
    if let Some(column) = scoring
        .schema
        .columns()
        .iter()
        .find(|c| c.image().is_some())
    {
        return Err(OnnxError::ImageColumn {
            column: column.name().to_owned(),
        });
    }
    let mut graph = Graph::default();
    let features = graph.encode_inputs(scoring);
    let features: Vec<&str> = features.iter().map(String::as_str).collect();
    graph.node("Concat", &features, &["features"], &[Attr::Int("axis", 1)]);
    graph.network(file);

    let mut model = Proto::default();
    model.int(1, IR_VERSION);
    model.string(2, "medfed");
    model.string(3, env!("CARGO_PKG_VERSION"));
    model.message(7, &graph.finish());
    let mut opset = Proto::default();
    opset.string(1, "");
    opset.int(2, OPSET);
    model.message(8, &opset);
    let mut metadata = vec![
        ("medfed.round", file.round.to_string()),
        ("medfed.model_hash", file.model.hash().to_hex()),
        (
            "medfed.decision_threshold",
            scoring.decision_threshold.to_string(),
        ),
    ];
    if let Some(audit) = &file.audit {
        metadata.push(("medfed.audit_report_sha256", audit.report_sha256.clone()));
        metadata.push(("medfed.audit_approved", audit.approved.to_string()));
    }
    for (key, value) in metadata {
        let mut entry = Proto::default();
        entry.string(1, key);
        entry.string(2, &value);
        model.message(14, &entry);
    }
    Ok(model.bytes)
}

/// Why a model file cannot be exported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The file carries no schema and standardisation.
    #[error(
        "the model file carries no schema and standardisation (a checkpoint written before the statistics round)"
    )]
    NoScoring,
    /// A declared architecture: the export writes the MLP's graph only.
    #[error(
        "the model is a declared architecture of {layers} layers; ONNX export covers the MLP and logistic regression only (score it with `medfed-node predict`)"
    )]
    DeclaredLayers {
        /// Its number of layers.
        layers: usize,
    },
    /// The consortium's own TorchScript module: its graph is the module's code, which the
    /// export does not translate.
    #[error(
        "the model is the TorchScript module {sha256}; ONNX export covers the MLP and logistic regression only (score it with `medfed-node predict`, or export the module from PyTorch with the model file's weights)"
    )]
    TorchScript {
        /// The module file's SHA-256.
        sha256: String,
    },
    /// The schema has an image column, whose files the graph cannot read.
    #[error(
        "the schema's column \"{column}\" is an image: the ONNX export takes numeric and categorical inputs only"
    )]
    ImageColumn {
        /// The image column.
        column: String,
    },
}

/// An attribute of a node.
enum Attr<'a> {
    Int(&'a str, i64),
}

/// The graph being built: its nodes, initializers, inputs, and a counter for fresh names.
#[derive(Default)]
struct Graph {
    nodes: Vec<Proto>,
    initializers: Vec<Proto>,
    inputs: Vec<Proto>,
    fresh: usize,
}

impl Graph {
    /// Adds the inputs and the nodes that encode them; returns the names of the encoded
    /// features' tensors (`[N, 1]` each, or `[N, k]`), in the model's input order.
    fn encode_inputs(&mut self, scoring: &Scoring) -> Vec<String> {
        let schema = &scoring.schema;
        let (mean, std) = (&scoring.standardization.mean, &scoring.standardization.std);
        let mut features = Vec::new();
        let mut index = 0;
        for column in schema.columns() {
            let name = column.name();
            match column.kind() {
                ColumnKind::Numeric { .. } => {
                    self.inputs.push(value_info(name, FLOAT));
                    let value = self.standardised(name, mean[index], std[index]);
                    index += 1;
                    if column.missing() == MissingMode::Impute {
                        let absent = self.fresh("absent");
                        self.node("IsNaN", &[name], &[&absent], &[]);
                        let zero = self.constant(&[0.0], &[1, 1]);
                        let imputed = self.fresh("imputed");
                        self.node("Where", &[&absent, &zero, &value], &[&imputed], &[]);
                        features.push(imputed);
                        let flag = self.fresh("flag");
                        self.node("Cast", &[&absent], &[&flag], &[Attr::Int("to", FLOAT)]);
                        features.push(self.standardised(&flag, mean[index], std[index]));
                        index += 1;
                    } else {
                        features.push(value);
                    }
                }
                // Refused before the graph is built ([`to_onnx`]).
                ColumnKind::Image(_) => {}
                ColumnKind::Categorical { levels } => {
                    self.inputs.push(value_info(name, STRING));
                    let missing_level = column.missing() == MissingMode::Level;
                    let mut all: Vec<(&str, Vec<String>)> = levels
                        .iter()
                        .map(|level| (level.as_str(), vec![level.clone()]))
                        .collect();
                    if missing_level && !levels.iter().any(|l| l == MISSING_LEVEL) {
                        let mut tokens = vec![String::new()];
                        tokens.extend(schema.missing_values().iter().cloned());
                        all.push((MISSING_LEVEL, tokens));
                    }
                    for (_, values) in all {
                        let hot = self.any_equal(name, &values);
                        features.push(self.standardised(&hot, mean[index], std[index]));
                        index += 1;
                    }
                }
            }
        }
        features
    }

    /// `(x − mean) / std` of tensor `x`.
    fn standardised(&mut self, x: &str, mean: f32, std: f32) -> String {
        let mean = self.constant(&[mean], &[1, 1]);
        let std = self.constant(&[std], &[1, 1]);
        let (shifted, scaled) = (self.fresh("shifted"), self.fresh("standardised"));
        self.node("Sub", &[x, &mean], &[&shifted], &[]);
        self.node("Div", &[&shifted, &std], &[&scaled], &[]);
        scaled
    }

    /// 1.0 where the string tensor `x` equals one of `values`, else 0.0.
    fn any_equal(&mut self, x: &str, values: &[String]) -> String {
        let mut hit: Option<String> = None;
        for value in values {
            let constant = self.string_constant(value);
            let equal = self.fresh("equal");
            self.node("Equal", &[x, &constant], &[&equal], &[]);
            hit = Some(match hit {
                None => equal,
                Some(before) => {
                    let either = self.fresh("either");
                    self.node("Or", &[&before, &equal], &[&either], &[]);
                    either
                }
            });
        }
        let hot = self.fresh("hot");
        let hit = hit.unwrap_or_else(|| {
            // A level list is never empty; a constant false keeps the graph well formed.
            let name = self.fresh("never");
            self.initializers.push(tensor(&name, &[1, 1], BOOL, &[0]));
            name
        });
        self.node("Cast", &[&hit], &[&hot], &[Attr::Int("to", FLOAT)]);
        hot
    }

    /// The network on `features`: each layer a `Gemm` with the model's weights (`[out, in]`,
    /// so `transB = 1`), a `Relu` after every layer but the last, and a `Sigmoid` at the end.
    fn network(&mut self, file: &ModelFile) {
        let layout = file.model.spec.layout();
        let tensors = layout.split(&file.model.params).unwrap_or_default();
        let mut x = "features".to_owned();
        for (layer, pair) in layout.layers().iter().zip(tensors.chunks_exact(2)) {
            let (weight, bias) = (&pair[0], &pair[1]);
            let w = self.named_constant(&weight.0.name, weight.1, &[layer.fan_out, layer.fan_in]);
            let b = self.named_constant(&bias.0.name, bias.1, &[layer.fan_out]);
            let out = self.fresh("linear");
            self.node("Gemm", &[&x, &w, &b], &[&out], &[Attr::Int("transB", 1)]);
            x = if layer.relu_after {
                let relu = self.fresh("relu");
                self.node("Relu", &[&out], &[&relu], &[]);
                relu
            } else {
                out
            };
        }
        self.node("Sigmoid", &[&x], &[OUTPUT], &[]);
    }

    fn fresh(&mut self, stem: &str) -> String {
        self.fresh += 1;
        format!("{stem}_{}", self.fresh)
    }

    fn constant(&mut self, values: &[f32], dims: &[usize]) -> String {
        let name = self.fresh("constant");
        self.named_constant(&name, values, dims)
    }

    fn named_constant(&mut self, name: &str, values: &[f32], dims: &[usize]) -> String {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(tensor(name, dims, FLOAT, &raw));
        name.to_owned()
    }

    fn string_constant(&mut self, value: &str) -> String {
        let name = self.fresh("level");
        let mut t = Proto::default();
        t.int(1, 1);
        t.int(1, 1);
        t.int(2, STRING);
        t.bytes(6, value.as_bytes());
        t.string(8, &name);
        self.initializers.push(t);
        name
    }

    fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[Attr<'_>]) {
        let mut node = Proto::default();
        for input in inputs {
            node.string(1, input);
        }
        for output in outputs {
            node.string(2, output);
        }
        node.string(4, op);
        for attr in attrs {
            let Attr::Int(name, value) = attr;
            let mut a = Proto::default();
            a.string(1, name);
            a.int(3, *value);
            a.int(20, 2); // AttributeType INT
            node.message(5, &a);
        }
        self.nodes.push(node);
    }

    fn finish(self) -> Proto {
        let mut graph = Proto::default();
        for node in &self.nodes {
            graph.message(1, node);
        }
        graph.string(2, "medfed");
        for initializer in &self.initializers {
            graph.message(5, initializer);
        }
        for input in &self.inputs {
            graph.message(11, input);
        }
        graph.message(12, &value_info(OUTPUT, FLOAT));
        graph
    }
}

/// A tensor initializer of `dims` and element type `data_type` with `raw` little-endian data.
fn tensor(name: &str, dims: &[usize], data_type: i64, raw: &[u8]) -> Proto {
    let mut t = Proto::default();
    for &d in dims {
        t.int(1, d as i64);
    }
    t.int(2, data_type);
    t.string(8, name);
    t.bytes(9, raw);
    t
}

/// A graph input or output `name` of element type `elem_type` and shape `[N, 1]`.
fn value_info(name: &str, elem_type: i64) -> Proto {
    let mut batch = Proto::default();
    batch.string(2, "N");
    let mut one = Proto::default();
    one.int(1, 1);
    let mut shape = Proto::default();
    shape.message(1, &batch);
    shape.message(1, &one);
    let mut tensor_type = Proto::default();
    tensor_type.int(1, elem_type);
    tensor_type.message(2, &shape);
    let mut type_proto = Proto::default();
    type_proto.message(1, &tensor_type);
    let mut info = Proto::default();
    info.string(1, name);
    info.message(2, &type_proto);
    info
}

/// A protobuf message being written: varint and length-delimited fields only.
#[derive(Default)]
struct Proto {
    bytes: Vec<u8>,
}

impl Proto {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    /// An integer field (int32, int64, enum: negative values as ten-byte varints).
    fn int(&mut self, field: u32, value: i64) {
        self.key(field, 0);
        self.varint(value as u64);
    }

    fn bytes(&mut self, field: u32, value: &[u8]) {
        self.key(field, 2);
        self.varint(value.len() as u64);
        self.bytes.extend_from_slice(value);
    }

    fn string(&mut self, field: u32, value: &str) {
        self.bytes(field, value.as_bytes());
    }

    fn message(&mut self, field: u32, value: &Self) {
        self.bytes(field, &value.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_with_an_image_column_is_refused_naming_it() {
        let file =
            crate::model_file::tests::file_of(medfed_protocol::schema::EXAMPLE_IMAGE_SCHEMA, None);
        assert_eq!(
            to_onnx(&file),
            Err(OnnxError::ImageColumn {
                column: "scan".into()
            })
        );
    }

    #[test]
    fn varints_are_written_as_protobuf_does() {
        let mut p = Proto::default();
        p.int(1, 150);
        assert_eq!(p.bytes, [0x08, 0x96, 0x01]);
        let mut p = Proto::default();
        p.string(2, "testing");
        assert_eq!(p.bytes, b"\x12\x07testing");
        let mut p = Proto::default();
        p.int(3, -1);
        assert_eq!(
            p.bytes.len(),
            11,
            "a negative int64 takes ten bytes after its key"
        );
    }
}
