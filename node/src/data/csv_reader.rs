//! Strict reading of a hospital CSV against the schema.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use csv::{ReaderBuilder, StringRecord, Trim};
use medfed_protocol::schema::{Column, ColumnKind, Schema};

use super::{DataError, Dataset};
use crate::examples::Examples;

/// Loads and encodes a hospital's CSV, refusing it at the first problem.
///
/// The header must name every schema column and the label, and nothing the schema does not list
/// under `columns`, `label` or `drop`; columns may come in any order. Cells are trimmed. Numeric
/// cells must parse as finite `f32`; categorical cells must be one of the levels; label cells
/// must be in the positive or negative list. Audit-only columns (`input = false`) are checked
/// the same way, and refused the same way, but never encoded. Every row must have as many cells as the header,
/// and there must be at least one data row. Errors name the file, the row (as a spreadsheet
/// numbers it: header = 1, see [`DataError`]) and the column.
pub fn load_csv(path: &Path, schema: &Schema) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_csv(file, path, schema)
}

/// Reads CSV from any reader; `path` is only used in errors.
fn read_csv(input: impl Read, path: &Path, schema: &Schema) -> Result<Dataset, DataError> {
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(Trim::All)
        .from_reader(input);
    let header = reader.headers().map_err(|e| csv_error(path, e, 1))?.clone();
    let layout = Layout::new(&header, path, schema)?;

    let width = schema.num_features();
    let mut examples = Examples {
        num_features: width,
        features: Vec::new(),
        labels: Vec::new(),
    };
    let mut sensitive = Vec::new();
    let mut record = StringRecord::new();
    // Spreadsheet numbering: the header is row 1.
    let mut row = 1;
    while reader
        .read_record(&mut record)
        .map_err(|e| csv_error(path, e, row + 1))?
    {
        row += 1;
        layout.encode_row(&record, row, path, &mut examples)?;
        layout.check_audit_only(&record, row, path)?;
        sensitive.push(layout.sensitive_values(&record));
    }
    if examples.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Dataset {
        examples,
        sensitive_columns: schema.sensitive().to_vec(),
        sensitive,
    })
}

/// Where each schema column sits in the file, resolved once from the header.
struct Layout<'a> {
    /// Number of header columns; every row must have exactly this many cells.
    fields: usize,
    /// Per schema column, in encoding order: its header index, the column, its first feature.
    columns: Vec<(usize, &'a Column, usize)>,
    /// Header index of the label.
    label: usize,
    /// Header index of each sensitive attribute, in schema order.
    sensitive: Vec<usize>,
    /// Per audit-only column: its header index and the column.
    audit_only: Vec<(usize, &'a Column)>,
    schema: &'a Schema,
}

impl<'a> Layout<'a> {
    fn new(header: &StringRecord, path: &Path, schema: &'a Schema) -> Result<Self, DataError> {
        let mut seen = HashSet::new();
        for name in header {
            if !seen.insert(name) {
                return Err(DataError::DuplicateColumn {
                    path: path.to_owned(),
                    column: name.to_owned(),
                });
            }
        }
        let find = |column: &str| {
            header
                .iter()
                .position(|h| h == column)
                .ok_or_else(|| DataError::MissingColumn {
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
        let label = find(schema.label().column())?;
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

        Ok(Self {
            fields: header.len(),
            columns,
            label,
            sensitive,
            audit_only,
            schema,
        })
    }

    /// Appends one row's encoded features and label to `examples`, or refuses the row.
    fn encode_row(
        &self,
        record: &StringRecord,
        row: u64,
        path: &Path,
        examples: &mut Examples,
    ) -> Result<(), DataError> {
        if record.len() != self.fields {
            return Err(DataError::FieldCount {
                path: path.to_owned(),
                row,
                expected: self.fields,
                found: record.len(),
            });
        }
        // Invariant: every index in the layout is below `self.fields`, the record's length
        // checked above, so `get` never falls back.
        let cell = |index: usize| record.get(index).unwrap_or_default();

        let start = examples.features.len();
        examples
            .features
            .resize(start + self.schema.num_features(), 0.0);
        let features = &mut examples.features[start..];
        for &(index, column, offset) in &self.columns {
            let value = cell(index);
            let at = |column: &Column| (path.to_owned(), row, column.name().to_owned());
            if value.is_empty() {
                let (path, row, column) = at(column);
                return Err(DataError::MissingValue { path, row, column });
            }
            match column.kind() {
                ColumnKind::Numeric { .. } => {
                    let number: f32 = value.parse().map_err(|_| {
                        let (path, row, column) = at(column);
                        DataError::NotNumeric {
                            path,
                            row,
                            column,
                            value: value.to_owned(),
                        }
                    })?;
                    if !number.is_finite() {
                        let (path, row, column) = at(column);
                        return Err(DataError::NonFinite {
                            path,
                            row,
                            column,
                            value: value.to_owned(),
                        });
                    }
                    features[offset] = number;
                }
                ColumnKind::Categorical { levels } => {
                    let Some(level) = levels.iter().position(|l| l == value) else {
                        let (path, row, column) = at(column);
                        return Err(DataError::UnknownCategory {
                            path,
                            row,
                            column,
                            value: value.to_owned(),
                            levels: levels.clone(),
                        });
                    };
                    features[offset + level] = 1.0;
                }
            }
        }

        let label = self.schema.label();
        let value = cell(self.label);
        if value.is_empty() {
            return Err(DataError::MissingLabel {
                path: path.to_owned(),
                row,
                column: label.column().to_owned(),
            });
        }
        let Some(positive) = label.class_of(value) else {
            return Err(DataError::UnknownLabel {
                path: path.to_owned(),
                row,
                column: label.column().to_owned(),
                value: value.to_owned(),
                positive: label.positive().into(),
                negative: label.negative().into(),
            });
        };
        examples.labels.push(if positive { 1.0 } else { 0.0 });
        Ok(())
    }

    /// Checks a row's audit-only cells as [`Self::encode_row`] checks a feature's (a blank, a
    /// non-number or an unknown level refuses the file, as it would were the column a model
    /// input), without encoding them. Call it after `encode_row` accepted the row.
    fn check_audit_only(
        &self,
        record: &StringRecord,
        row: u64,
        path: &Path,
    ) -> Result<(), DataError> {
        for &(index, column) in &self.audit_only {
            // Invariant: `encode_row` checked the row's length, so every index is present.
            let value = record.get(index).unwrap_or_default();
            let (path, name) = (path.to_owned(), column.name().to_owned());
            if value.is_empty() {
                return Err(DataError::MissingValue {
                    path,
                    row,
                    column: name,
                });
            }
            match column.kind() {
                ColumnKind::Numeric { .. } => match value.parse::<f32>() {
                    Ok(number) if number.is_finite() => {}
                    Ok(_) => {
                        return Err(DataError::NonFinite {
                            path,
                            row,
                            column: name,
                            value: value.to_owned(),
                        });
                    }
                    Err(_) => {
                        return Err(DataError::NotNumeric {
                            path,
                            row,
                            column: name,
                            value: value.to_owned(),
                        });
                    }
                },
                ColumnKind::Categorical { levels } => {
                    if !levels.iter().any(|l| l == value) {
                        return Err(DataError::UnknownCategory {
                            path,
                            row,
                            column: name,
                            value: value.to_owned(),
                            levels: levels.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The raw sensitive cells of a row that [`Self::encode_row`] accepted.
    fn sensitive_values(&self, record: &StringRecord) -> Vec<String> {
        // Invariant: the row's length was checked by `encode_row`, so every index is present.
        self.sensitive
            .iter()
            .map(|&i| record.get(i).unwrap_or_default().to_owned())
            .collect()
    }
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
        let read = |text: &str| read_csv(text.as_bytes(), Path::new("site.csv"), &schema);
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
}
