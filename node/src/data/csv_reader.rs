//! Reading a hospital CSV against the schema: strictly (all or nothing, for training) or
//! leniently (every good row kept, every bad row's problem returned), by one encoder.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use csv::{ReaderBuilder, StringRecord, Trim};
use medfed_protocol::schema::{Column, ColumnKind, MissingMode, Schema};

use super::{DataError, Dataset, ProblemReason, RowProblem};
use crate::examples::Examples;

/// Whether the CSV must carry the label column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// The header must name the label column, and every kept row has a valid label (training,
    /// evaluation, `check`).
    #[default]
    Required,
    /// The label column may be absent (scoring new patients, whose outcome is unknown): then no
    /// label is read, [`Dataset::labelled`] is false and every label slot holds NaN, so that a
    /// label used by mistake poisons a figure rather than biasing it. When the column is
    /// present, labels are read and checked as under [`Self::Required`].
    Optional,
}

/// How [`read_rows`] reads a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Whether the label column must be present.
    pub label: LabelColumn,
    /// A header column (typically a patient identifier the schema lists under `drop`) whose
    /// trimmed raw cell is kept for each kept row in [`Dataset::ids`]; the header must name it.
    pub id_column: Option<String>,
    /// The split column of [`super::Holdout::Column`], whose trimmed raw cell is kept for each
    /// kept row in [`Dataset::split_cells`]; the header must name it. Set by
    /// [`super::Holdout::read_options`].
    pub split_column: Option<String>,
}

/// Loads and encodes a hospital's CSV, refusing it at the first problem.
///
/// The header must name every schema column and the label, and nothing the schema does not list
/// under `columns`, `label` or `drop`; columns may come in any order. Cells are trimmed. Numeric
/// cells must parse as finite `f32`; categorical cells must be one of the levels; label cells
/// must be in the positive or negative list. A missing cell (blank, or a `missing_values` token)
/// is refused unless its column declares `missing = "level"` (a one at the missing level) or
/// `missing = "impute"` (NaN in the value's slot and a one in its indicator, replaced by the
/// pooled mean at standardisation). Audit-only columns (`input = false`) are checked the same
/// way, and refused the same way, but never encoded. Every row must have as many cells as the
/// header,
/// and there must be at least one data row. Errors name the file, the row (as a spreadsheet
/// numbers it: header = 1, see [`DataError`]) and the column.
pub fn load_csv(path: &Path, schema: &Schema) -> Result<Dataset, DataError> {
    let (dataset, _) = read_csv(
        open(path)?,
        path,
        schema,
        &ReadOptions::default(),
        OnProblem::Stop,
    )?;
    Ok(dataset)
}

/// [`load_csv`] with `options`: as strict, keeping the asked id and split cells (and, under
/// [`LabelColumn::Optional`], not requiring the label column).
pub fn load_csv_with(
    path: &Path,
    schema: &Schema,
    options: &ReadOptions,
) -> Result<Dataset, DataError> {
    let (dataset, _) = read_csv(open(path)?, path, schema, options, OnProblem::Stop)?;
    Ok(dataset)
}

/// Reads and encodes a hospital's CSV as [`load_csv`] does, but keeps going past bad rows: it
/// returns every good row (with its spreadsheet row number in [`Dataset::rows`]) and every
/// problem of every bad row, in file order and, within a row, in the schema's column order with
/// the label last. A row with a problem is left out whole.
///
/// What concerns the whole file is still an error: a file that cannot be read, a header that
/// lacks a schema column (or the label, under [`LabelColumn::Required`], or the asked
/// [`ReadOptions::id_column`]), names an undescribed column or a column twice, a file without
/// any data row, and a read error of the underlying file. A file whose every row is bad gives an
/// empty dataset and the problems.
pub fn read_rows(
    path: &Path,
    schema: &Schema,
    options: &ReadOptions,
) -> Result<(Dataset, Vec<RowProblem>), DataError> {
    read_csv(open(path)?, path, schema, options, OnProblem::Continue)
}

/// What to do at a bad row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnProblem {
    /// Return the first problem as the error ([`load_csv`]).
    Stop,
    /// Leave the row out, note its problems and read on ([`read_rows`]).
    Continue,
}

fn open(path: &Path) -> Result<File, DataError> {
    File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads CSV from any reader; `path` is only used in errors.
fn read_csv(
    input: impl Read,
    path: &Path,
    schema: &Schema,
    options: &ReadOptions,
    on_problem: OnProblem,
) -> Result<(Dataset, Vec<RowProblem>), DataError> {
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(Trim::All)
        .from_reader(input);
    let header = reader.headers().map_err(|e| csv_error(path, e, 1))?.clone();
    let layout = Layout::new(&header, path, schema, options)?;

    let mut dataset = Dataset {
        examples: Examples {
            num_features: schema.num_features(),
            features: Vec::new(),
            labels: Vec::new(),
        },
        sensitive_columns: schema.sensitive().to_vec(),
        labelled: layout.label.is_some(),
        ..Dataset::default()
    };
    let mut problems = Vec::new();
    let mut record = StringRecord::new();
    // Spreadsheet numbering: the header is row 1.
    let mut row = 1;
    loop {
        let before = reader.position().byte();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                row += 1;
                let found = problems.len();
                layout.push_row(&record, row, &mut dataset, &mut problems);
                if on_problem == OnProblem::Stop && problems.len() > found {
                    return Err(problems.swap_remove(found).into_error(path));
                }
            }
            Err(e) => {
                // A read error of the file, or (strictly read) any error, ends the reading, as
                // does a parser that did not move on (it would report the same error forever).
                let stuck = reader.position().byte() == before;
                if e.is_io_error() || on_problem == OnProblem::Stop || stuck {
                    return Err(csv_error(path, e, row + 1));
                }
                row += 1;
                problems.push(RowProblem {
                    row,
                    column: None,
                    raw: String::new(),
                    reason: ProblemReason::Malformed {
                        message: e.to_string(),
                    },
                });
            }
        }
    }
    if row == 1 {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok((dataset, problems))
}

/// Where each schema column sits in the file, resolved once from the header.
struct Layout<'a> {
    /// Number of header columns; every row must have exactly this many cells.
    fields: usize,
    /// Per schema column, in encoding order: its header index, the column, its first feature.
    columns: Vec<(usize, &'a Column, usize)>,
    /// Header index of the label; `None` when it is optional and absent.
    label: Option<usize>,
    /// Header index of each sensitive attribute, in schema order.
    sensitive: Vec<usize>,
    /// Header index of the column kept in [`Dataset::ids`], if asked for.
    id: Option<usize>,
    /// Header index of the column kept in [`Dataset::split_cells`], if asked for.
    split: Option<usize>,
    /// Per audit-only column: its header index and the column.
    audit_only: Vec<(usize, &'a Column)>,
    /// The CSV file's directory, which image paths are relative to.
    base: &'a Path,
    schema: &'a Schema,
}

impl<'a> Layout<'a> {
    fn new(
        header: &StringRecord,
        path: &'a Path,
        schema: &'a Schema,
        options: &ReadOptions,
    ) -> Result<Self, DataError> {
        let mut seen = HashSet::new();
        for name in header {
            if !seen.insert(name) {
                return Err(DataError::DuplicateColumn {
                    path: path.to_owned(),
                    column: name.to_owned(),
                });
            }
        }
        let position = |column: &str| header.iter().position(|h| h == column);
        let find = |column: &str| {
            position(column).ok_or_else(|| DataError::MissingColumn {
                path: path.to_owned(),
                column: column.to_owned(),
            })
        };

        let mut columns = Vec::with_capacity(schema.columns().len());
        let mut offset = 0;
        for column in schema.columns() {
            columns.push((find(column.name())?, column, offset));
            offset += column.width();
        }
        let label = match options.label {
            LabelColumn::Required => Some(find(schema.label().column())?),
            LabelColumn::Optional => position(schema.label().column()),
        };
        let sensitive = schema
            .sensitive()
            .iter()
            .map(|s| find(s))
            .collect::<Result<_, _>>()?;

        let audit_only = schema
            .audit_only_columns()
            .iter()
            .map(|c| Ok((find(c.name())?, c)))
            .collect::<Result<_, DataError>>()?;
        let described = |name: &str| {
            schema.columns().iter().any(|c| c.name() == name)
                || schema.audit_only_columns().iter().any(|c| c.name() == name)
                || schema.label().column() == name
                || schema.dropped().iter().any(|d| d == name)
        };
        if let Some(extra) = header.iter().find(|h| !described(h)) {
            return Err(DataError::UnexpectedColumn {
                path: path.to_owned(),
                column: extra.to_owned(),
            });
        }
        let id = options.id_column.as_deref().map(find).transpose()?;
        let split = match options.split_column.as_deref() {
            Some(column) => {
                Some(
                    position(column).ok_or_else(|| DataError::MissingSplitColumn {
                        path: path.to_owned(),
                        column: column.to_owned(),
                    })?,
                )
            }
            None => None,
        };

        Ok(Self {
            fields: header.len(),
            columns,
            label,
            sensitive,
            id,
            split,
            audit_only,
            base: path.parent().unwrap_or_else(|| Path::new("")),
            schema,
        })
    }

    /// Appends one row to `dataset`, or leaves it out and appends its problems to `problems`.
    fn push_row(
        &self,
        record: &StringRecord,
        row: u64,
        dataset: &mut Dataset,
        problems: &mut Vec<RowProblem>,
    ) {
        if record.len() != self.fields {
            problems.push(RowProblem {
                row,
                column: None,
                raw: String::new(),
                reason: ProblemReason::FieldCount {
                    expected: self.fields,
                    found: record.len(),
                },
            });
            return;
        }
        // Invariant: every index in the layout is below `self.fields`, the record's length
        // checked above, so `get` never falls back.
        let cell = |index: usize| record.get(index).unwrap_or_default();

        let examples = &mut dataset.examples;
        let start = examples.features.len();
        examples
            .features
            .resize(start + self.schema.num_features(), 0.0);
        let features = &mut examples.features[start..];
        let before = problems.len();
        for &(index, column, offset) in &self.columns {
            let value = cell(index);
            let width = column.width();
            let missing = self.schema.is_missing(value);
            if let Err(reason) = encode_cell(
                column,
                value,
                missing,
                self.base,
                &mut features[offset..offset + width],
            ) {
                problems.push(RowProblem {
                    row,
                    column: Some(column.name().to_owned()),
                    raw: value.to_owned(),
                    reason,
                });
            }
        }
        // Audit-only cells are checked by the same encoder, into a scratch buffer: read for
        // the audit, never features.
        for &(index, column) in &self.audit_only {
            let value = cell(index);
            let mut scratch = vec![0.0; column.width()];
            let missing = self.schema.is_missing(value);
            if let Err(reason) = encode_cell(column, value, missing, self.base, &mut scratch) {
                problems.push(RowProblem {
                    row,
                    column: Some(column.name().to_owned()),
                    raw: value.to_owned(),
                    reason,
                });
            }
        }
        let label = match self.label {
            Some(index) => match self.read_label(cell(index)) {
                Ok(label) => label,
                Err(reason) => {
                    problems.push(RowProblem {
                        row,
                        column: Some(self.schema.label().column().to_owned()),
                        raw: cell(index).to_owned(),
                        reason,
                    });
                    f32::NAN
                }
            },
            None => f32::NAN,
        };
        if problems.len() > before {
            examples.features.truncate(start);
            return;
        }
        examples.labels.push(label);
        dataset.rows.push(row);
        dataset
            .sensitive
            .push(self.sensitive.iter().map(|&i| cell(i).to_owned()).collect());
        if let Some(index) = self.id {
            dataset.ids.push(cell(index).to_owned());
        }
        if let Some(index) = self.split {
            dataset.split_cells.push(cell(index).to_owned());
        }
    }

    /// The label of a trimmed label cell: 1 for the positive class, 0 for the negative.
    fn read_label(&self, value: &str) -> Result<f32, ProblemReason> {
        let label = self.schema.label();
        if value.is_empty() {
            return Err(ProblemReason::MissingLabel);
        }
        match label.class_of(value) {
            Some(true) => Ok(1.0),
            Some(false) => Ok(0.0),
            None => Err(ProblemReason::UnknownLabel {
                positive: label.positive().to_vec(),
                negative: label.negative().to_vec(),
            }),
        }
    }
}

/// Encodes one trimmed cell of `column` into its features `out` (zeroed, `column.width()` long):
/// the number, a one at its level, or the normalised pixels of the image file it names (relative
/// to `base`, the CSV file's directory, unless absolute). A `missing` cell (blank or a `missing_values` token) is
/// refused, or under `missing = "level"` a one at the missing level (the last feature), or under
/// `missing = "impute"` NaN in the value's slot and a one in the indicator, for
/// [`medfed_protocol::stats::Standardization::standardize`] to replace with the pooled mean. A
/// present value of an imputing column has indicator 0.
fn encode_cell(
    column: &Column,
    value: &str,
    missing: bool,
    base: &Path,
    out: &mut [f32],
) -> Result<(), ProblemReason> {
    if missing {
        // Invariant: `out` is `column.width()` long, at least 2 under `level` (one declared
        // level and the missing one) and exactly 2 under `impute`, so both indices exist.
        let last = out.len().saturating_sub(1);
        return match column.missing() {
            MissingMode::Refuse => Err(ProblemReason::MissingValue),
            MissingMode::Level => {
                out[last] = 1.0;
                Ok(())
            }
            MissingMode::Impute => {
                out[0] = f32::NAN;
                out[last] = 1.0;
                Ok(())
            }
        };
    }
    match column.kind() {
        ColumnKind::Numeric { .. } => {
            let number: f32 = value.parse().map_err(|_| ProblemReason::NotNumeric)?;
            if !number.is_finite() {
                return Err(ProblemReason::NonFinite);
            }
            out[0] = number;
        }
        ColumnKind::Categorical { levels } => {
            let level = levels.iter().position(|l| l == value).ok_or_else(|| {
                ProblemReason::UnknownCategory {
                    levels: levels.clone(),
                }
            })?;
            out[level] = 1.0;
        }
        ColumnKind::Image(image) => super::image::read_image(&base.join(value), image, out)?,
    }
    Ok(())
}

/// Turns a csv error into ours: IO stays IO, the rest is malformed CSV in row `row`.
fn csv_error(path: &Path, error: csv::Error, row: u64) -> DataError {
    if error.is_io_error() {
        if let csv::ErrorKind::Io(source) = error.into_kind() {
            return DataError::Io {
                path: path.to_owned(),
                source,
            };
        }
        // Unreachable: `is_io_error` means the kind is `Io`; fall back to an IO error anyway.
        return DataError::Io {
            path: path.to_owned(),
            source: std::io::ErrorKind::Other.into(),
        };
    }
    DataError::Csv {
        path: path.to_owned(),
        row,
        source: error,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const SCHEMA: &str = r#"
drop = ["id"]
sensitive = ["sex", "age"]
[label]
column = "num"
positive = ["1", "2", "3", "4"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
range = [0, 120]
[[columns]]
name = "sex"
type = "categorical"
levels = ["Female", "Male"]
[[columns]]
name = "cp"
type = "categorical"
levels = ["typical", "atypical", "asymptomatic"]
[[columns]]
name = "chol"
type = "numeric"
range = [0, 600]
[bands]
age = [50]
"#;

    const HEADER: &str = "id,age,sex,cp,chol,num\n";

    fn schema() -> Schema {
        Schema::parse(SCHEMA).unwrap()
    }

    /// Writes `text` to a fresh temporary CSV and loads it; returns the path shown in errors.
    fn load(text: &[u8]) -> (String, Result<Dataset, DataError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hospital.csv");
        std::fs::write(&path, text).unwrap();
        let result = load_csv(&path, &schema());
        (path.display().to_string(), result)
    }

    /// Loads `HEADER` followed by `rows`, expecting an error whose message names every part.
    fn load_err(rows: &str, parts: &[&str]) -> DataError {
        let (path, result) = load(format!("{HEADER}{rows}").as_bytes());
        let err = result.expect_err("the file should be refused");
        let message = err.to_string();
        assert!(
            message.contains(&path),
            "message does not name the file: {message}"
        );
        for part in parts {
            assert!(
                message.contains(part),
                "message does not name {part:?}: {message}"
            );
        }
        err
    }

    const GOOD_ROW: &str = "1,63,Male,typical,233,0\n";

    #[test]
    fn good_file_encodes_one_hot() {
        // Columns in another order than the schema's, spaces around cells, a quoted cell.
        let text = "num, chol,cp ,sex,id,age\n\
                    2, 233.5, typical,Male,p1,63\n\
                    0,180,\"asymptomatic\",Female,p2, 41 \n\
                    4,250,atypical, Female ,p3,70\n";
        let (_, result) = load(text.as_bytes());
        let data = result.unwrap();
        let expected = Examples {
            num_features: 7,
            #[rustfmt::skip]
            features: vec![
                63.0, 0.0, 1.0, 1.0, 0.0, 0.0, 233.5,
                41.0, 1.0, 0.0, 0.0, 0.0, 1.0, 180.0,
                70.0, 1.0, 0.0, 0.0, 1.0, 0.0, 250.0,
            ],
            labels: vec![1.0, 0.0, 1.0],
        };
        assert_eq!(data.examples, expected);
        assert_eq!(data.sensitive_columns, ["sex", "age"]);
        assert_eq!(
            data.sensitive,
            [["Male", "63"], ["Female", "41"], ["Female", "70"]]
                .map(|r| r.map(String::from).to_vec())
        );
        assert_eq!(data.len(), 3);
        assert_eq!(data.rows, [2, 3, 4]);
        assert!(data.labelled);
        assert!(data.ids.is_empty(), "no id column was asked for");
    }

    #[test]
    fn missing_column() {
        let (path, result) = load(b"id,age,sex,chol,num\n1,63,Male,233,0\n");
        let err = result.unwrap_err();
        assert!(
            matches!(&err, DataError::MissingColumn { column, .. } if column == "cp"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&path) && message.contains("\"cp\""),
            "{message}"
        );
    }

    #[test]
    fn missing_label_column() {
        let (_, result) = load(b"id,age,sex,cp,chol\n1,63,Male,typical,233\n");
        let err = result.unwrap_err();
        assert!(
            matches!(&err, DataError::MissingColumn { column, .. } if column == "num"),
            "{err:?}"
        );
    }

    #[test]
    fn undescribed_column() {
        let (path, result) = load(b"id,age,sex,cp,chol,num,thal\n1,63,Male,typical,233,0,3\n");
        let err = result.unwrap_err();
        assert!(
            matches!(&err, DataError::UnexpectedColumn { column, .. } if column == "thal"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&path) && message.contains("\"thal\"") && message.contains("drop"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_header_column() {
        let (_, result) = load(b"id,age,sex,cp,chol,num,age\n1,63,Male,typical,233,0,63\n");
        let err = result.unwrap_err();
        assert!(
            matches!(&err, DataError::DuplicateColumn { column, .. } if column == "age"),
            "{err:?}"
        );
    }

    #[test]
    fn not_numeric() {
        let rows = format!("{GOOD_ROW}{GOOD_ROW}3,sixty,Male,typical,233,0\n");
        let err = load_err(&rows, &["row 4", "\"age\"", "\"sixty\""]);
        assert!(
            matches!(&err, DataError::NotNumeric { row: 4, column, value, .. } if column == "age" && value == "sixty"),
            "{err:?}"
        );
    }

    #[test]
    fn non_finite() {
        for bad in ["NaN", "inf", "-infinity", "1e39"] {
            let rows = format!("1,63,Male,typical,{bad},0\n");
            let err = load_err(&rows, &["row 2", "\"chol\"", bad]);
            assert!(
                matches!(&err, DataError::NonFinite { row: 2, column, value, .. } if column == "chol" && value == bad),
                "{err:?}"
            );
        }
    }

    #[test]
    fn missing_value() {
        let rows = format!("{GOOD_ROW}2,70,Female,,250,1\n");
        let err = load_err(&rows, &["row 3", "\"cp\""]);
        assert!(
            matches!(&err, DataError::MissingValue { row: 3, column, .. } if column == "cp"),
            "{err:?}"
        );
        // A cell of blanks is empty once trimmed.
        let err = load_err("2,  ,Female,typical,250,1\n", &["row 2", "\"age\""]);
        assert!(
            matches!(&err, DataError::MissingValue { row: 2, column, .. } if column == "age"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_category() {
        let err = load_err(
            "1,63,male,typical,233,0\n",
            &["row 2", "\"sex\"", "\"male\"", "Female"],
        );
        assert!(
            matches!(&err, DataError::UnknownCategory { row: 2, column, value, levels, .. }
                if column == "sex" && value == "male" && levels == &["Female", "Male"]),
            "{err:?}"
        );
    }

    #[test]
    fn missing_label() {
        let rows = format!("{GOOD_ROW}2,70,Female,typical,250,\n");
        let err = load_err(&rows, &["row 3", "\"num\""]);
        assert!(
            matches!(&err, DataError::MissingLabel { row: 3, column, .. } if column == "num"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_label() {
        let err = load_err("1,63,Male,typical,233,?\n", &["row 2", "\"num\"", "\"?\""]);
        assert!(
            matches!(&err, DataError::UnknownLabel { row: 2, column, value, .. } if column == "num" && value == "?"),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_field_count() {
        let rows = format!("{GOOD_ROW}2,70,Female,typical,250\n");
        let err = load_err(&rows, &["row 3", "5 cells", "6 columns"]);
        assert!(
            matches!(
                err,
                DataError::FieldCount {
                    row: 3,
                    expected: 6,
                    found: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = load_err("2,70,Female,typical,250,1,extra\n", &["row 2"]);
        assert!(
            matches!(
                err,
                DataError::FieldCount {
                    row: 2,
                    found: 7,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn header_only_is_empty() {
        let (path, result) = load(HEADER.as_bytes());
        let err = result.unwrap_err();
        assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
        assert!(err.to_string().contains(&path));
        let (_, result) = load(b"");
        assert!(matches!(result, Err(DataError::MissingColumn { .. })));
    }

    #[test]
    fn rows_are_numbered_as_records() {
        // A quoted cell spanning two lines is one row; a blank line is skipped and not counted.
        let rows =
            format!("{GOOD_ROW}\"p\nq\",63,Male,typical,233,0\n\n2,70,Female,typical,250,9\n");
        let err = load_err(&rows, &["row 4"]);
        assert!(
            matches!(err, DataError::UnknownLabel { row: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn first_error_aborts() {
        let rows = format!("{GOOD_ROW}1,x,Male,typical,233,0\n1,63,Male,typical,233,7\n");
        let err = load_err(&rows, &["row 3"]);
        assert!(
            matches!(err, DataError::NotNumeric { row: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_utf8_is_a_csv_error() {
        let mut text = format!("{HEADER}{GOOD_ROW}").into_bytes();
        text.extend_from_slice(b"1,63,M\xffle,typical,233,0\n");
        let (path, result) = load(&text);
        let err = result.unwrap_err();
        assert!(matches!(err, DataError::Csv { row: 3, .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&path) && message.contains("row 3"),
            "{message}"
        );
    }

    #[test]
    fn audit_only_columns_are_read_for_the_audit_and_never_encoded() {
        // `race` and `bmi` are audited but are not model inputs.
        let schema = Schema::parse(
            &SCHEMA
                .replace(
                    "sensitive = [\"sex\", \"age\"]",
                    "sensitive = [\"sex\", \"race\", \"age\", \"bmi\"]",
                )
                .replace("age = [50]", "age = [50]\nbmi = [30]")
                .replace(
                    "[[columns]]\nname = \"cp\"",
                    "[[columns]]\nname = \"race\"\ntype = \"categorical\"\nlevels = [\"A\", \"B\"]\n\
                     input = false\n[[columns]]\nname = \"bmi\"\ntype = \"numeric\"\n\
                     range = [10, 60]\ninput = false\n[[columns]]\nname = \"cp\"",
                ),
        )
        .unwrap();
        let read = |text: &str| {
            let options = ReadOptions::default();
            read_csv(
                text.as_bytes(),
                Path::new("site.csv"),
                &schema,
                &options,
                OnProblem::Stop,
            )
            .map(|(dataset, _)| dataset)
        };
        let data = read(
            "id,age,sex,race,cp,chol,bmi,num\n\
             1,63,Male,B,typical,233,31.5,0\n\
             2,41,Female,A,asymptomatic,180, 22 ,1\n",
        )
        .unwrap();
        // The features are those of the schema without race and bmi.
        assert_eq!(data.examples.num_features, 7);
        assert_eq!(data.examples.features.len(), 14);
        assert_eq!(data.sensitive_columns, ["sex", "race", "age", "bmi"]);
        assert_eq!(
            data.sensitive,
            [["Male", "B", "63", "31.5"], ["Female", "A", "41", "22"]]
                .map(|r| r.map(String::from).to_vec())
        );
        // The CSV must carry the column, and its cells are checked as a feature's would be.
        let err = read("id,age,sex,cp,chol,bmi,num\n1,63,Male,typical,233,31,0\n").unwrap_err();
        assert!(
            matches!(&err, DataError::MissingColumn { column, .. } if column == "race"),
            "{err:?}"
        );
        let header = "id,age,sex,race,cp,chol,bmi,num\n";
        for (row, wrong) in [
            ("1,63,Male,C,typical,233,31,0\n", "UnknownCategory"),
            ("1,63,Male,,typical,233,31,0\n", "MissingValue"),
            ("1,63,Male,A,typical,233,heavy,0\n", "NotNumeric"),
            ("1,63,Male,A,typical,233,inf,0\n", "NonFinite"),
        ] {
            let err = read(&format!("{header}{row}")).unwrap_err();
            assert!(format!("{err:?}").starts_with(wrong), "{row}: {err:?}");
            assert!(err.to_string().contains("row 2"), "{err}");
        }
    }

    #[test]
    fn unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("absent.csv");
        let err = load_csv(&path, &schema()).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.csv"));
    }

    /// Reads `text` leniently with `options`.
    fn read(text: &[u8], options: &ReadOptions) -> Result<(Dataset, Vec<RowProblem>), DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hospital.csv");
        std::fs::write(&path, text).unwrap();
        read_rows(&path, &schema(), options)
    }

    /// `(row, column, reason kind, raw cell)` of each problem, to compare at a glance.
    fn summary(problems: &[RowProblem]) -> Vec<(u64, Option<&str>, &str, &str)> {
        problems
            .iter()
            .map(|p| (p.row, p.column.as_deref(), p.reason.kind(), p.raw.as_str()))
            .collect()
    }

    #[test]
    fn the_lenient_reader_keeps_good_rows_and_reports_every_bad_one() {
        let text = format!(
            "{HEADER}\
             p1,63,Male,typical,233,0\n\
             p2,sixty,Male,typical,233,0\n\
             p3,41,Female,asymptomatic,180,1\n\
             p4,,male,typical,233,7\n\
             p5,70,Female,typical\n\
             p6,55,Female,atypical,inf,\n\
             p7,48,Male,atypical,210,2\n"
        );
        let options = ReadOptions {
            id_column: Some("id".into()),
            ..ReadOptions::default()
        };
        let (data, problems) = read(text.as_bytes(), &options).unwrap();
        assert_eq!(data.rows, [2, 4, 8]);
        assert_eq!(data.ids, ["p1", "p3", "p7"]);
        assert_eq!(data.examples.labels, [0.0, 1.0, 1.0]);
        assert_eq!(
            data.examples.row(1),
            [41.0, 1.0, 0.0, 0.0, 0.0, 1.0, 180.0],
            "a kept row after a bad one is encoded whole"
        );
        assert_eq!(data.examples.features.len(), 3 * 7);
        assert_eq!(
            data.sensitive,
            [["Male", "63"], ["Female", "41"], ["Male", "48"]]
        );
        // Every problem of a row, in column order with the label last.
        assert_eq!(
            summary(&problems),
            [
                (3, Some("age"), "not a number", "sixty"),
                (5, Some("age"), "missing value", ""),
                (5, Some("sex"), "unknown level", "male"),
                (5, Some("num"), "unknown label", "7"),
                (6, None, "wrong number of cells", ""),
                (7, Some("chol"), "not a finite number", "inf"),
                (7, Some("num"), "missing label", ""),
            ]
        );
    }

    #[test]
    fn a_problem_reads_as_the_strict_error_without_the_file() {
        let text = format!("{HEADER}{GOOD_ROW}1,63,male,typical,233,0\n");
        let (_, problems) = read(text.as_bytes(), &ReadOptions::default()).unwrap();
        let [problem] = problems.as_slice() else {
            panic!("{problems:?}")
        };
        let (path, strict) = load(text.as_bytes());
        let strict = strict.unwrap_err().to_string();
        assert_eq!(strict, format!("{path}: {problem}"));
        assert_eq!(
            problem.clone().into_error(Path::new(&path)).to_string(),
            strict
        );
    }

    #[test]
    fn a_row_that_is_not_csv_is_a_problem_and_reading_goes_on() {
        let mut text = format!("{HEADER}{GOOD_ROW}").into_bytes();
        text.extend_from_slice(b"1,63,M\xffle,typical,233,0\n");
        text.extend_from_slice(GOOD_ROW.as_bytes());
        let (data, problems) = read(&text, &ReadOptions::default()).unwrap();
        assert_eq!(data.rows, [2, 4]);
        assert_eq!(summary(&problems), [(3, None, "not valid CSV", "")]);
        assert!(problems[0].to_string().starts_with("row 3: not valid CSV"));
    }

    #[test]
    fn every_row_bad_gives_an_empty_dataset_and_header_only_is_still_an_error() {
        let text = format!("{HEADER}1,x,Male,typical,233,0\n1,y,Male,typical,233,0\n");
        let (data, problems) = read(text.as_bytes(), &ReadOptions::default()).unwrap();
        assert!(data.is_empty());
        assert_eq!(problems.len(), 2);
        let err = read(HEADER.as_bytes(), &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
    }

    #[test]
    fn header_problems_are_still_errors_when_reading_leniently() {
        let options = ReadOptions::default();
        let err = read(b"id,age,sex,chol,num\n1,63,Male,233,0\n", &options).unwrap_err();
        assert!(matches!(err, DataError::MissingColumn { column, .. } if column == "cp"));
        let err = read(
            b"id,age,sex,cp,chol,num,x\n1,63,Male,typical,233,0,1\n",
            &options,
        )
        .unwrap_err();
        assert!(matches!(err, DataError::UnexpectedColumn { column, .. } if column == "x"));
        let err = read(
            b"id,age,sex,cp,chol,age,num\n1,63,Male,typical,233,63,0\n",
            &options,
        )
        .unwrap_err();
        assert!(matches!(err, DataError::DuplicateColumn { column, .. } if column == "age"));
        // The id column asked for must be there.
        let options = ReadOptions {
            id_column: Some("mrn".into()),
            ..ReadOptions::default()
        };
        let err = read(format!("{HEADER}{GOOD_ROW}").as_bytes(), &options).unwrap_err();
        assert!(matches!(err, DataError::MissingColumn { column, .. } if column == "mrn"));
        let dir = tempfile::tempdir().unwrap();
        let err = read_rows(&dir.path().join("absent.csv"), &schema(), &options).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    }

    #[test]
    fn an_optional_label_column_may_be_absent_and_then_no_label_is_read() {
        let optional = ReadOptions {
            label: LabelColumn::Optional,
            id_column: Some("id".into()),
            ..ReadOptions::default()
        };
        let text = "id,age,sex,cp,chol\np1,63,Male,typical,233\np2,41,Female,atypical,\n";
        let (data, problems) = read(text.as_bytes(), &optional).unwrap();
        assert!(!data.labelled);
        assert_eq!(data.len(), 1);
        assert!(data.examples.labels[0].is_nan(), "an unread label is NaN");
        assert_eq!(data.ids, ["p1"]);
        assert_eq!(summary(&problems), [(3, Some("chol"), "missing value", "")]);
        // Required, the same file is refused at its header.
        let err = read(text.as_bytes(), &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::MissingColumn { column, .. } if column == "num"));
        // Optional but present: labels are read and checked.
        let text = format!("{HEADER}{GOOD_ROW}2,70,Female,typical,250,\n");
        let (data, problems) = read(text.as_bytes(), &optional).unwrap();
        assert!(data.labelled);
        assert_eq!(data.examples.labels, [0.0]);
        assert_eq!(summary(&problems), [(3, Some("num"), "missing label", "")]);
    }

    #[test]
    fn missing_cells_are_a_level_imputed_or_refused_as_each_column_declares() {
        let text = SCHEMA
            .replace(
                "drop = [\"id\"]",
                "drop = [\"id\"]\nmissing_values = [\"NA\", \"?\"]",
            )
            .replace(
                "levels = [\"typical\", \"atypical\", \"asymptomatic\"]",
                "levels = [\"typical\", \"atypical\", \"asymptomatic\"]\nmissing = \"level\"",
            )
            .replace("range = [0, 600]", "range = [0, 600]\nmissing = \"impute\"");
        let schema = Schema::parse(&text).unwrap();
        let csv = format!(
            "{HEADER}\
             p1,63,Male,typical,233,0\n\
             p2,41,Female,,NA,1\n\
             p3,70,Female,?,250,1\n\
             p4,NA,Male,atypical,,0\n\
             p5,,Male,atypical,200,0\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hospital.csv");
        std::fs::write(&path, csv).unwrap();
        let (data, problems) = read_rows(&path, &schema, &ReadOptions::default()).unwrap();
        // age refuses: a token and a blank cell are both missing values, the token named.
        assert_eq!(
            summary(&problems),
            [
                (5, Some("age"), "missing value", "NA"),
                (6, Some("age"), "missing value", ""),
            ]
        );
        assert_eq!(
            problems[0].to_string(),
            "row 5, column \"age\": missing value (\"NA\")"
        );
        assert_eq!(data.rows, [2, 3, 4]);
        // age | sex F M | cp typical atypical asymptomatic (missing) | chol, chol (missing)
        let width = schema.num_features();
        assert_eq!(width, 9);
        let rows: Vec<&[f32]> = data.examples.features.chunks(width).collect();
        assert_eq!(rows[0], [63.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 233.0, 0.0]);
        assert_eq!(rows[1][..7], [41.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert!(rows[1][7].is_nan(), "an imputed value travels as NaN");
        assert_eq!(rows[1][8], 1.0, "with its indicator set");
        assert_eq!(rows[2], [70.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 250.0, 0.0]);
        // The strict loader refuses the same file at its first refused cell.
        let err = load_csv(&path, &schema).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingValue { row: 5, column, .. } if column == "age"),
            "{err:?}"
        );
    }

    #[test]
    fn the_strict_loader_is_the_lenient_reader_stopping_at_the_first_problem() {
        // Each cell good, or now and then bad, in many small files.
        let columns: [(&[&str], &[&str]); 5] = [
            (&["63", "41.5", " 70 "], &["", "sixty", "inf"]),
            (&["Male", "Female"], &["male", ""]),
            (&["typical", "atypical", "asymptomatic"], &["none"]),
            (&["233", "180"], &["", "NaN"]),
            (&["0", "1", "4"], &["", "9"]),
        ];
        let mut state: u64 = 7;
        let mut pick = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hospital.csv");
        let (mut clean, mut refused) = (0, 0);
        for _ in 0..300 {
            let mut text = String::from(HEADER);
            for id in 0..1 + pick(4) {
                let mut row = format!("p{id}");
                for (good, bad) in columns {
                    let cell = if pick(10) == 0 {
                        bad[pick(bad.len())]
                    } else {
                        good[pick(good.len())]
                    };
                    row.push(',');
                    row.push_str(cell);
                }
                if pick(12) == 0 {
                    row.push_str(",extra");
                }
                text.push_str(&row);
                text.push('\n');
            }
            std::fs::write(&path, &text).unwrap();
            let strict = load_csv(&path, &schema());
            let (lenient, problems) = read_rows(&path, &schema(), &ReadOptions::default()).unwrap();
            match strict {
                Ok(strict) => {
                    assert!(problems.is_empty(), "{text}: {problems:?}");
                    assert_eq!(strict, lenient, "{text}");
                    clean += 1;
                }
                Err(err) => {
                    let first = problems.first().cloned().expect("a problem");
                    assert_eq!(
                        err.to_string(),
                        first.into_error(&path).to_string(),
                        "{text}"
                    );
                    refused += 1;
                }
            }
        }
        // Both branches were exercised.
        assert!(
            clean > 10 && refused > 10,
            "{clean} clean, {refused} refused"
        );
    }
}
