//! Which of a node's patients are held out for evaluation: a random fraction, the rows a split
//! column names, or a separate file. [`Holdout::split`] is the one place that choice is made;
//! training ([`load_split`], through `crate::prepare`), `medfed-node predict --held-out` and
//! `medfed-node check` all go through it, so that they agree on the held-out rows.

use std::path::{Path, PathBuf};

use medfed_protocol::schema::Schema;

use super::csv_reader::load_csv_with;
use super::{DataError, Dataset, ReadOptions};

/// How a node chooses its held-out patients (`[data]` in `node.toml`).
#[derive(Clone, Debug, PartialEq)]
pub enum Holdout {
    /// A seeded random fraction of the node's CSV (`holdout_fraction`, `split_seed`): the
    /// default, 0.25 with seed 0. See [`Dataset::split`].
    Fraction {
        /// The fraction held out, in `[0, 1)`.
        fraction: f64,
        /// The seed of the shuffle.
        seed: u64,
    },
    /// The rows of the node's CSV whose trimmed cell of `column` is one of `values`
    /// (`holdout = { column = "cohort", values = ["validation"] }`); every other row trains (a
    /// blank cell too). The column decides the split, so it must not be a model input: the
    /// schema must list it under `drop`, and neither encode nor audit it.
    Column {
        /// The split column.
        column: String,
        /// The values that hold a row out, trimmed and non-empty.
        values: Vec<String>,
    },
    /// Every row of a separate file of held-out patients (`holdout_csv`), read with the same
    /// schema and as strictly as the node's CSV, all of which then trains.
    File(PathBuf),
}

impl Default for Holdout {
    fn default() -> Self {
        Self::Fraction {
            fraction: DEFAULT_HOLDOUT_FRACTION,
            seed: 0,
        }
    }
}

/// The fraction held out when `[data]` names no held-out rows.
pub const DEFAULT_HOLDOUT_FRACTION: f64 = 0.25;

impl Holdout {
    /// The options to read the node's CSV with for [`Self::split`]: `options`, plus the split
    /// column under [`Self::Column`] (its cells are kept in [`Dataset::split_cells`]).
    pub fn read_options(&self, options: &ReadOptions) -> ReadOptions {
        let mut options = options.clone();
        if let Self::Column { column, .. } = self {
            options.split_column = Some(column.clone());
        }
        options
    }

    /// Checks that the split column, if any, can decide the split under `schema`: it must be
    /// one of the schema's `drop` columns, not a feature, an audit-only column or the label (a
    /// column that decides which rows evaluate the model must not be an input of that model,
    /// nor what it predicts).
    pub fn check_schema(&self, schema: &Schema) -> Result<(), DataError> {
        let Self::Column { column, .. } = self else {
            return Ok(());
        };
        let role = if schema.columns().iter().any(|c| c.name() == column) {
            Some("a feature column (a model input)")
        } else if schema
            .audit_only_columns()
            .iter()
            .any(|c| c.name() == column)
        {
            Some("an audit-only column")
        } else if schema.label().column() == column {
            Some("the label")
        } else {
            None
        };
        if let Some(role) = role {
            return Err(DataError::SplitColumnInSchema {
                column: column.clone(),
                role,
            });
        }
        if !schema.dropped().iter().any(|d| d == column) {
            return Err(DataError::SplitColumnNotDropped {
                column: column.clone(),
            });
        }
        Ok(())
    }

    /// Splits the node's patients into `(train, held_out)`: the one choice of held-out rows.
    ///
    /// `dataset` holds the rows read from the node's CSV `csv` (with [`Self::read_options`]);
    /// under [`Self::File`], `held_out_file` holds those read from the held-out file, and
    /// `dataset` all trains. Under [`Self::Fraction`] this is [`Dataset::split`]; under
    /// [`Self::Column`] a row is held out when its split cell is one of the values, and both
    /// parts keep the file order. A split that leaves no training row is an error, and so is a
    /// split column none of whose values any row has.
    pub fn split(
        &self,
        csv: &Path,
        dataset: Dataset,
        held_out_file: Option<Dataset>,
    ) -> Result<(Dataset, Dataset), DataError> {
        match self {
            Self::Fraction { fraction, seed } => dataset.split(*fraction, *seed),
            Self::Column { column, values } => {
                if dataset.split_cells.len() != dataset.len() {
                    // The rows were read without the split column: a caller's mistake, named
                    // rather than splitting wrongly.
                    return Err(DataError::SplitColumnNotRead {
                        path: csv.to_owned(),
                        column: column.clone(),
                    });
                }
                let (held_out, train): (Vec<usize>, Vec<usize>) =
                    (0..dataset.len()).partition(|&i| values.contains(&dataset.split_cells[i]));
                let refused = |no_training| DataError::SplitColumnLeaves {
                    path: csv.to_owned(),
                    column: column.clone(),
                    values: values.clone(),
                    no_training,
                };
                if train.is_empty() && !dataset.is_empty() {
                    return Err(refused(true));
                }
                if held_out.is_empty() && !dataset.is_empty() {
                    return Err(refused(false));
                }
                Ok((dataset.subset(&train), dataset.subset(&held_out)))
            }
            Self::File(path) => match held_out_file {
                Some(held_out) => Ok((dataset, held_out)),
                None => Err(DataError::HoldoutFileNotRead { path: path.clone() }),
            },
        }
    }
}

impl std::fmt::Display for Holdout {
    /// Which rows are held out, in words: `a random 0.25 of the rows (split_seed 0)`, `the rows
    /// whose "cohort" is one of ["validation"]`, `every row of held-out.csv`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fraction { fraction, seed } => {
                write!(f, "a random {fraction} of the rows (split_seed {seed})")
            }
            Self::Column { column, values } => {
                write!(f, "the rows whose \"{column}\" is one of {values:?}")
            }
            Self::File(path) => write!(f, "every row of {}", path.display()),
        }
    }
}

/// Reads the node's patients strictly (all or nothing, as [`super::load_csv`]) from `csv` and,
/// under [`Holdout::File`], from the held-out file, each with `options` (plus the split column
/// under [`Holdout::Column`]), and splits them with [`Holdout::split`]. Training and
/// `medfed-node predict --held-out` both read through here.
pub fn load_split(
    csv: &Path,
    holdout: &Holdout,
    schema: &Schema,
    options: &ReadOptions,
) -> Result<(Dataset, Dataset), DataError> {
    holdout.check_schema(schema)?;
    let options = holdout.read_options(options);
    let dataset = load_csv_with(csv, schema, &options)?;
    let held_out_file = match holdout {
        Holdout::File(path) => Some(load_csv_with(path, schema, &options)?),
        _ => None,
    };
    holdout.split(csv, dataset, held_out_file)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const SCHEMA: &str = r#"
drop = ["id", "cohort"]
sensitive = ["sex"]
[label]
column = "y"
positive = ["1"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
range = [0, 120]
[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
"#;

    fn schema() -> Schema {
        Schema::parse(SCHEMA).unwrap()
    }

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    /// Six patients; rows 3 and 6 (spreadsheet numbering) are the validation cohort, row 5
    /// the test cohort (with spaces around its cell), row 7 has a blank cohort.
    const SITE: &str = "id,age,sex,cohort,y\n\
        p1,40,F,train,0\n\
        p2,50,M,validation,1\n\
        p3,60,F,train,1\n\
        p4,70,M,  test ,0\n\
        p5,45,F,validation,0\n\
        p6,55,M,,1\n";

    fn column(values: &[&str]) -> Holdout {
        Holdout::Column {
            column: "cohort".into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn ids() -> ReadOptions {
        ReadOptions {
            id_column: Some("id".into()),
            ..ReadOptions::default()
        }
    }

    #[test]
    fn a_split_column_holds_out_exactly_the_rows_whose_cell_is_one_of_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let csv = file(dir.path(), "site.csv", SITE);
        let (train, held_out) =
            load_split(&csv, &column(&["validation", "test"]), &schema(), &ids()).unwrap();
        assert_eq!(held_out.ids, ["p2", "p4", "p5"]);
        assert_eq!(held_out.rows, [3, 5, 6]);
        assert_eq!(held_out.examples.labels, [1.0, 0.0, 0.0]);
        assert_eq!(held_out.examples.row(1)[0], 70.0);
        // A blank cohort trains, as does any value not named.
        assert_eq!(train.ids, ["p1", "p3", "p6"]);
        assert_eq!(train.sensitive, [["F"], ["F"], ["M"]]);
        let (train, held_out) = load_split(&csv, &column(&["test"]), &schema(), &ids()).unwrap();
        assert_eq!((train.len(), held_out.ids.clone()), (5, vec!["p4".into()]));
    }

    #[test]
    fn a_split_column_that_leaves_no_training_or_no_held_out_row_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let csv = file(
            dir.path(),
            "site.csv",
            "id,age,sex,cohort,y\np1,40,F,test,0\np2,50,M,validation,1\n",
        );
        let all = load_split(&csv, &column(&["validation", "test"]), &schema(), &ids())
            .unwrap_err()
            .to_string();
        assert!(all.contains("site.csv"), "{all}");
        assert!(all.contains("data.holdout"), "{all}");
        assert!(all.contains("no training row"), "{all}");
        let none = load_split(&csv, &column(&["Validation"]), &schema(), &ids())
            .unwrap_err()
            .to_string();
        assert!(none.contains("no held-out row"), "{none}");
        assert!(none.contains("\"cohort\""), "{none}");
    }

    #[test]
    fn a_split_column_must_be_dropped_by_the_schema_and_present_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let csv = file(dir.path(), "site.csv", SITE);
        let with_audit_only = format!(
            "{SCHEMA}[[columns]]\nname = \"cohort\"\ntype = \"categorical\"\nlevels = [\"a\"]\ninput = false\n"
        )
        .replace("drop = [\"id\", \"cohort\"]", "drop = [\"id\"]")
        .replace("sensitive = [\"sex\"]", "sensitive = [\"sex\", \"cohort\"]");
        let audit_only = Schema::parse(&with_audit_only).unwrap();
        for (holdout, role) in [
            (
                Holdout::Column {
                    column: "age".into(),
                    values: vec!["40".into()],
                },
                "a feature column",
            ),
            (
                Holdout::Column {
                    column: "sex".into(),
                    values: vec!["F".into()],
                },
                "a feature column",
            ),
            (
                Holdout::Column {
                    column: "y".into(),
                    values: vec!["1".into()],
                },
                "the label",
            ),
            (
                Holdout::Column {
                    column: "ward".into(),
                    values: vec!["a".into()],
                },
                "drop",
            ),
        ] {
            let err = load_split(&csv, &holdout, &schema(), &ids())
                .unwrap_err()
                .to_string();
            assert!(err.contains(role), "{holdout:?}: {err}");
            assert!(err.contains("data.holdout.column"), "{err}");
        }
        let err = column(&["test"]).check_schema(&audit_only).unwrap_err();
        assert!(err.to_string().contains("audit-only"), "{err}");
        // Listed under drop but absent from the file: the header error names the key.
        let absent = file(dir.path(), "absent.csv", "id,age,sex,y\np1,40,F,0\n");
        let err = load_split(&absent, &column(&["test"]), &schema(), &ids())
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.csv"), "{err}");
        assert!(err.contains("data.holdout"), "{err}");
        assert!(err.contains("\"cohort\""), "{err}");
    }

    #[test]
    fn a_held_out_file_is_held_out_whole_and_the_node_csv_all_trains() {
        let dir = tempfile::tempdir().unwrap();
        let csv = file(dir.path(), "site.csv", SITE);
        let extra = file(
            dir.path(),
            "held-out.csv",
            "id,age,sex,cohort,y\nq1,33,F,x,1\nq2,44,M,y,0\n",
        );
        let holdout = Holdout::File(extra.clone());
        let (train, held_out) = load_split(&csv, &holdout, &schema(), &ids()).unwrap();
        assert_eq!(train.len(), 6);
        assert_eq!(held_out.ids, ["q1", "q2"]);
        assert_eq!(held_out.rows, [2, 3]);
        // The held-out file is read as strictly as the node's CSV, and its errors name it.
        let bad = file(
            dir.path(),
            "bad.csv",
            "id,age,sex,cohort,y\nq1,33,F,x,1\nq2,old,M,y,0\n",
        );
        let err = load_split(&csv, &Holdout::File(bad), &schema(), &ids())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.csv: row 3"), "{err}");
        assert!(err.contains("\"age\""), "{err}");
        let missing = dir.path().join("nowhere.csv");
        let err = load_split(&csv, &Holdout::File(missing), &schema(), &ids())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nowhere.csv"), "{err}");
    }

    #[test]
    fn the_fraction_is_the_seeded_random_split() {
        let dir = tempfile::tempdir().unwrap();
        let csv = file(dir.path(), "site.csv", SITE);
        let holdout = Holdout::Fraction {
            fraction: 0.5,
            seed: 3,
        };
        let split = load_split(&csv, &holdout, &schema(), &ids()).unwrap();
        let direct = load_csv_with(&csv, &schema(), &ids())
            .unwrap()
            .split(0.5, 3)
            .unwrap();
        assert_eq!(split, direct);
        assert_eq!((split.0.len(), split.1.len()), (3, 3));
    }

    #[test]
    fn rows_read_without_the_split_column_or_file_are_not_split() {
        let dir = tempfile::tempdir().unwrap();
        let csv = file(dir.path(), "site.csv", SITE);
        let dataset = load_csv_with(&csv, &schema(), &ids()).unwrap();
        let err = column(&["test"])
            .split(&csv, dataset.clone(), None)
            .unwrap_err();
        assert!(matches!(err, DataError::SplitColumnNotRead { .. }), "{err}");
        let err = Holdout::File(csv.clone())
            .split(&csv, dataset, None)
            .unwrap_err();
        assert!(matches!(err, DataError::HoldoutFileNotRead { .. }), "{err}");
    }
}
