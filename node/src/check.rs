//! `medfed-node check`: everything wrong with a hospital's CSV at once, what the data looks like
//! (rows, prevalence, audit groups), and how its schema differs from another.
//!
//! For the hospital's own eyes: nothing here is sent anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use medfed_protocol::schema::{ColumnKind, Schema};

use crate::data::{Dataset, RowProblem};

/// What `check` found in one CSV: its problems, counted by column and reason, and a summary of
/// the rows it kept.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    /// The CSV checked.
    pub csv: PathBuf,
    /// Data rows in the file (kept or not).
    pub rows_read: usize,
    /// Rows without any problem.
    pub rows_kept: usize,
    /// Of the kept rows, those in the training split and the held-out split.
    pub split: (usize, usize),
    /// Every problem, in file order.
    pub problems: Vec<RowProblem>,
    /// Problems counted per column (`None`: the whole row) and reason, most frequent first.
    pub counts: Vec<ProblemCount>,
    /// Kept rows whose label is positive.
    pub positives: usize,
    /// Per audit group of the schema, in its order: the kept rows in it and their positives.
    pub groups: Vec<GroupCount>,
    /// The schema's digest.
    pub digest: [u8; 32],
}

/// How many problems of one reason one column has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemCount {
    /// The column; `None` for a problem with the whole row.
    pub column: Option<String>,
    /// The reason ([`crate::data::ProblemReason::kind`]).
    pub reason: &'static str,
    /// Problems of this column and reason.
    pub count: usize,
}

/// The kept rows of one audit group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCount {
    /// The attribute audited.
    pub attribute: String,
    /// The group.
    pub group: String,
    /// Kept rows in the group.
    pub rows: usize,
    /// Of them, rows with a positive label.
    pub positives: usize,
}

impl CheckReport {
    /// The report on `csv`, read leniently into `dataset` (every kept row) and `problems`, of
    /// which `split` rows are (training, held-out).
    pub fn new(
        csv: &Path,
        schema: &Schema,
        dataset: &Dataset,
        problems: Vec<RowProblem>,
        split: (usize, usize),
    ) -> Self {
        let mut bad_rows: Vec<u64> = problems.iter().map(|p| p.row).collect();
        bad_rows.dedup();
        let mut by_key: BTreeMap<(Option<String>, &'static str), usize> = BTreeMap::new();
        for problem in &problems {
            *by_key
                .entry((problem.column.clone(), problem.reason.kind()))
                .or_default() += 1;
        }
        let mut counts: Vec<ProblemCount> = by_key
            .into_iter()
            .map(|((column, reason), count)| ProblemCount {
                column,
                reason,
                count,
            })
            .collect();
        // Most frequent first; ties in column, then reason order (the map's).
        counts.sort_by_key(|c| std::cmp::Reverse(c.count));

        let positive = |i: usize| dataset.examples.labels.get(i).is_some_and(|&l| l == 1.0);
        let mut groups: Vec<GroupCount> = schema
            .audit_groups()
            .into_iter()
            .map(|g| GroupCount {
                attribute: g.attribute,
                group: g.group,
                rows: 0,
                positives: 0,
            })
            .collect();
        for (i, row) in dataset.sensitive.iter().enumerate() {
            for g in schema.audit_groups_of(row) {
                if let Some(group) = groups.get_mut(g) {
                    group.rows += 1;
                    group.positives += usize::from(positive(i));
                }
            }
        }
        Self {
            csv: csv.to_owned(),
            rows_read: dataset.len() + bad_rows.len(),
            rows_kept: dataset.len(),
            split,
            problems,
            counts,
            positives: (0..dataset.len()).filter(|&i| positive(i)).count(),
            groups,
            digest: schema.digest(),
        }
    }

    /// Whether the file has no problem.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first `limit` problems, one line each, naming the file, the row and the column
    /// (`site.csv: row 3, column "age": "sixty" is not a number`), then a line saying how many
    /// more there are, if any.
    pub fn problem_lines(&self, limit: usize) -> Vec<String> {
        let mut lines: Vec<String> = self
            .problems
            .iter()
            .take(limit)
            .map(|p| format!("{}: {p}", self.csv.display()))
            .collect();
        if self.problems.len() > limit {
            lines.push(format!(
                "{}: … and {} more problems (all counted in the report)",
                self.csv.display(),
                self.problems.len() - limit
            ));
        }
        lines
    }

    /// The report as text: a first line that says whether the file is valid (`site.csv: valid;
    /// N training and M held-out rows`, or the number of problems), the rows, the problems per
    /// column and reason, the prevalence, the audit groups and the schema's digest.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let csv = self.csv.display();
        let (train, held_out) = self.split;
        // Writing to a String cannot fail.
        let _ = if self.is_clean() {
            writeln!(
                out,
                "{csv}: valid; {train} training and {held_out} held-out rows"
            )
        } else {
            writeln!(
                out,
                "{csv}: {} problems in {} of {} rows; {} rows kept ({train} training and {held_out} held-out)",
                self.problems.len(),
                self.rows_read - self.rows_kept,
                self.rows_read,
                self.rows_kept
            )
        };
        let _ = writeln!(
            out,
            "rows: {} read, {} kept",
            self.rows_read, self.rows_kept
        );
        if !self.counts.is_empty() {
            let _ = writeln!(out, "problems per column and reason:");
            for c in &self.counts {
                let column = c.column.as_deref().unwrap_or("(whole row)");
                let _ = writeln!(out, "  {column:<24} {:<24} {:>6}", c.reason, c.count);
            }
        }
        let _ = writeln!(
            out,
            "positive label: {} of {} kept rows ({})",
            self.positives,
            self.rows_kept,
            percent(self.positives, self.rows_kept)
        );
        if !self.groups.is_empty() {
            let _ = writeln!(out, "audit groups (kept rows, positives, prevalence):");
            for g in &self.groups {
                let name = format!("{}={}", g.attribute, g.group);
                let _ = writeln!(
                    out,
                    "  {name:<32} {:>6} {:>6} {:>8}",
                    g.rows,
                    g.positives,
                    percent(g.positives, g.rows)
                );
            }
        }
        let _ = writeln!(out, "schema digest: {}", hex::encode(self.digest));
        out
    }
}

/// How `other` differs from `ours`, one line per difference, in the schema's terms: columns
/// added or removed, their order, a column's type, levels, range or missing mode, the
/// `missing_values` tokens, the label, the sensitive attributes, the audit groups (bands and
/// intersections) and the dropped columns. Empty when they mean the same (and then their
/// digests agree).
pub fn schema_differences(ours: &Schema, other: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let names =
        |s: &Schema| -> Vec<String> { s.columns().iter().map(|c| c.name().to_owned()).collect() };
    let (our_names, their_names) = (names(ours), names(other));
    for name in their_names.iter().filter(|n| !our_names.contains(n)) {
        out.push(format!("column \"{name}\" added"));
    }
    for name in our_names.iter().filter(|n| !their_names.contains(n)) {
        out.push(format!("column \"{name}\" removed"));
    }
    let common = |list: &[String], keep: &[String]| -> Vec<String> {
        list.iter().filter(|n| keep.contains(n)).cloned().collect()
    };
    if common(&our_names, &their_names) != common(&their_names, &our_names) {
        out.push(format!(
            "columns in another order: {our_names:?} here, {their_names:?} there (the encoding follows it)"
        ));
    }
    for ours_column in ours.columns() {
        let Some(theirs) = other
            .columns()
            .iter()
            .find(|c| c.name() == ours_column.name())
        else {
            continue;
        };
        let name = ours_column.name();
        match (ours_column.kind(), theirs.kind()) {
            (ColumnKind::Numeric { range: a }, ColumnKind::Numeric { range: b }) if a != b => {
                out.push(format!(
                    "column \"{name}\": range [{}, {}] here, [{}, {}] there",
                    a.low(),
                    a.high(),
                    b.low(),
                    b.high()
                ));
            }
            (ColumnKind::Categorical { levels: a }, ColumnKind::Categorical { levels: b })
                if a != b =>
            {
                out.push(format!("column \"{name}\": levels {a:?} here, {b:?} there"));
            }
            (ColumnKind::Image(a), ColumnKind::Image(b)) if a != b => {
                out.push(format!("column \"{name}\": {a} here, {b} there"));
            }
            (a, b) if a.to_string() != b.to_string() => {
                out.push(format!("column \"{name}\": {a} here, {b} there"));
            }
            _ => {}
        }
        if ours_column.missing() != theirs.missing() {
            out.push(format!(
                "column \"{name}\": missing = \"{}\" here, \"{}\" there",
                ours_column.missing(),
                theirs.missing()
            ));
        }
    }
    if sorted(ours.missing_values()) != sorted(other.missing_values()) {
        out.push(format!(
            "missing_values: {:?} here, {:?} there",
            ours.missing_values(),
            other.missing_values()
        ));
    }
    let (a, b) = (ours.label(), other.label());
    if a.column() != b.column() {
        out.push(format!(
            "label column: \"{}\" here, \"{}\" there",
            a.column(),
            b.column()
        ));
    }
    if sorted(a.positive()) != sorted(b.positive()) || sorted(a.negative()) != sorted(b.negative())
    {
        out.push(format!(
            "label values: positive {:?} negative {:?} here, positive {:?} negative {:?} there",
            a.positive(),
            a.negative(),
            b.positive(),
            b.negative()
        ));
    }
    if ours.sensitive() != other.sensitive() {
        out.push(format!(
            "sensitive: {:?} here, {:?} there",
            ours.sensitive(),
            other.sensitive()
        ));
    }
    if ours.audit_groups() != other.audit_groups() {
        let groups = |s: &Schema| -> Vec<String> {
            s.audit_groups()
                .into_iter()
                .map(|g| format!("{}={}", g.attribute, g.group))
                .collect()
        };
        out.push(format!(
            "audit groups (bands, intersections): {:?} here, {:?} there",
            groups(ours),
            groups(other)
        ));
    }
    if sorted(ours.dropped()) != sorted(other.dropped()) {
        out.push(format!(
            "drop: {:?} here, {:?} there",
            ours.dropped(),
            other.dropped()
        ));
    }
    if out.is_empty() && ours.digest() != other.digest() {
        out.push("the digests differ in a part this comparison does not name".to_owned());
    }
    out
}

fn sorted(values: &[String]) -> Vec<&String> {
    let mut values: Vec<&String> = values.iter().collect();
    values.sort();
    values
}

/// `part` of `whole` as a percentage with one decimal, or `-` when `whole` is 0.
fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{:.1} %", 100.0 * part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ReadOptions, read_rows};

    /// The smallest complete schema: `id,age,sex,outcome`.
    const SCHEMA: &str = medfed_protocol::schema::EXAMPLE_SCHEMA;

    fn report(csv: &str) -> CheckReport {
        let schema = Schema::parse(SCHEMA).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.csv");
        std::fs::write(&path, csv).unwrap();
        let (data, problems) = read_rows(&path, &schema, &ReadOptions::default()).unwrap();
        let kept = data.len();
        CheckReport::new(&path, &schema, &data, problems, (kept, 0))
    }

    #[test]
    fn the_report_counts_problems_per_column_and_reason_and_summarises_kept_rows() {
        let report = report(
            "id,age,sex,outcome\n\
             1,50,F,1\n\
             2,x,M,0\n\
             3,,X,1\n\
             4,61,M,0\n\
             5,y,F,1\n\
             6,70,M,1\n\
             7,80,F\n",
        );
        assert_eq!((report.rows_read, report.rows_kept), (7, 3));
        assert!(!report.is_clean());
        let counts: Vec<(Option<&str>, &str, usize)> = report
            .counts
            .iter()
            .map(|c| (c.column.as_deref(), c.reason, c.count))
            .collect();
        assert_eq!(
            counts,
            [
                (Some("age"), "not a number", 2),
                (None, "wrong number of cells", 1),
                (Some("age"), "missing value", 1),
                (Some("sex"), "unknown level", 1),
            ]
        );
        assert_eq!(report.positives, 2);
        let groups: Vec<(&str, usize, usize)> = report
            .groups
            .iter()
            .map(|g| (g.group.as_str(), g.rows, g.positives))
            .collect();
        assert_eq!(groups, [("F", 1, 1), ("M", 2, 1)]);
        let text = report.to_text();
        assert!(text.contains("5 problems in 4 of 7 rows"), "{text}");
        assert!(
            text.contains("positive label: 2 of 3 kept rows (66.7 %)"),
            "{text}"
        );
        assert!(text.contains(&hex::encode(report.digest)), "{text}");
        // Listed up to the limit, all counted.
        let lines = report.problem_lines(2);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with("site.csv: row 3, column \"age\": \"x\" is not a number"));
        assert!(lines[2].contains("3 more problems"), "{lines:?}");
        assert_eq!(report.problem_lines(20).len(), 5);
    }

    #[test]
    fn a_clean_file_says_valid() {
        let report = report("id,age,sex,outcome\n1,50,F,1\n2,61,M,0\n");
        assert!(report.is_clean());
        assert!(report.problem_lines(20).is_empty());
        assert!(
            report
                .to_text()
                .contains("valid; 2 training and 0 held-out rows")
        );
    }

    #[test]
    fn schema_differences_name_an_image_columns_declaration() {
        use medfed_protocol::schema::EXAMPLE_IMAGE_SCHEMA;
        let ours = Schema::parse(EXAMPLE_IMAGE_SCHEMA).unwrap();
        let other =
            Schema::parse(&EXAMPLE_IMAGE_SCHEMA.replace("width = 3", "width = 3\nresize = true"))
                .unwrap();
        assert_eq!(
            schema_differences(&ours, &other),
            [
                "column \"scan\": image 1×2×3 (other sizes refused), mean [0.0], std [1.0] here, \
                 image 1×2×3 (other sizes resized), mean [0.0], std [1.0] there"
            ]
        );
    }

    #[test]
    fn schema_differences_name_each_part() {
        let ours = Schema::parse(SCHEMA).unwrap();
        assert!(schema_differences(&ours, &ours).is_empty());
        let cases = [
            (
                SCHEMA.replace("\"F\", \"M\"", "\"F\", \"M\", \"X\""),
                "column \"sex\": levels",
            ),
            (
                SCHEMA.replace("[0, 120]", "[0, 100]"),
                "column \"age\": range",
            ),
            (
                SCHEMA.replace("range = [0, 120]", "range = [0, 120]\nmissing = \"impute\""),
                "column \"age\": missing = \"refuse\" here, \"impute\" there",
            ),
            (
                format!(
                    "{SCHEMA}[[columns]]\nname = \"bmi\"\ntype = \"numeric\"\nrange = [10, 60]\n"
                ),
                "column \"bmi\" added",
            ),
            (
                SCHEMA.replace("drop = [\"id\"]", "drop = [\"id\", \"site\"]"),
                "drop:",
            ),
            (
                SCHEMA.replace("positive = [\"1\"]", "positive = [\"yes\"]"),
                "label values",
            ),
            (
                SCHEMA.replace("column = \"outcome\"", "column = \"y\""),
                "label column",
            ),
            (SCHEMA.replace("sensitive = [\"sex\"]", ""), "sensitive:"),
            (
                format!("missing_values = [\"NA\"]\n{SCHEMA}"),
                "missing_values: [] here, [\"NA\"] there",
            ),
        ];
        for (text, expected) in cases {
            let other = Schema::parse(&text).unwrap();
            let differences = schema_differences(&ours, &other);
            assert!(
                differences.iter().any(|d| d.contains(expected)),
                "{expected}: {differences:?}"
            );
            assert_ne!(ours.digest(), other.digest());
        }
        // A column turned from numeric to categorical, and one removed.
        let retyped = SCHEMA.replace(
            "type = \"numeric\"\nrange = [0, 120]",
            "type = \"categorical\"\nlevels = [\"young\", \"old\"]",
        );
        let differences = schema_differences(&ours, &Schema::parse(&retyped).unwrap());
        assert_eq!(
            differences,
            ["column \"age\": numeric here, categorical there"]
        );
        let reversed = schema_differences(&Schema::parse(&retyped).unwrap(), &ours);
        assert_eq!(
            reversed,
            ["column \"age\": categorical here, numeric there"]
        );
    }
}
