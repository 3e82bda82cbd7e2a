//! The `medfed-node` binary on bad input: a specific message naming the file, row and column,
//! and a non-zero exit, before anything is sent anywhere.

use std::path::Path;
use std::process::Command;

const SCHEMA: &str = medfed_protocol::schema::EXAMPLE_SCHEMA;

/// Writes a node configuration around `csv` and runs `medfed-node check` on it.
fn check(dir: &Path, schema: &str, csv: &str) -> (bool, String) {
    std::fs::write(dir.join("schema.toml"), schema).unwrap();
    std::fs::write(dir.join("site.csv"), csv).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        r#"
coordinator = "127.0.0.1:7400"
state_dir = "state"
[tls]
ca_cert = "ca.pem"
cert = "node.pem"
key = "node.key"
[data]
csv = "site.csv"
schema = "schema.toml"
[policy]
members = "members.toml"
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_medfed-node"))
        .args(["check", "--config"])
        .arg(dir.join("node.toml"))
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn valid_data_passes_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = check(
        dir.path(),
        SCHEMA,
        "id,age,sex,outcome\n1,50,F,1\n2,61,M,0\n3,44,M,0\n",
    );
    assert!(ok, "{stderr}");
}

/// The demo consortium's data (`data/heart`, `config/heart/schema.toml`) passes the check, every
/// row kept; without the `torch` feature this is the check a machine without libtorch runs.
#[test]
fn the_demo_data_passes_the_check_with_every_row_kept() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let schema = std::fs::read_to_string(root.join("config/heart/schema.toml")).unwrap();
    for hospital in ["cleveland", "hungary", "switzerland", "va_long_beach"] {
        let csv = std::fs::read_to_string(root.join(format!("data/heart/{hospital}.csv"))).unwrap();
        let rows = csv.lines().filter(|l| !l.trim().is_empty()).count() - 1;
        let dir = tempfile::tempdir().unwrap();
        let (ok, stderr) = check(dir.path(), &schema, &csv);
        assert!(ok, "{hospital}: {stderr}");
        let stdout = run(dir.path(), &["check"]).1;
        let (train, held_out) = sizes(&stdout).unwrap_or_else(|| panic!("{hospital}: {stdout}"));
        assert_eq!(train + held_out, rows, "{hospital}: {stdout}");
        assert!(train > 0 && held_out > 0, "{hospital}: {stdout}");
    }
}

/// A build without libtorch refuses the commands that train, saying why, rather than failing
/// somewhere inside.
#[cfg(not(feature = "torch"))]
#[test]
fn without_libtorch_the_commands_that_train_say_this_build_has_none() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        check(
            dir.path(),
            SCHEMA,
            "id,age,sex,outcome\n1,50,F,1\n2,61,M,0\n"
        )
        .0
    );
    for command in ["run", "local"] {
        let (ok, _, stderr) = run(dir.path(), &[command]);
        assert!(!ok, "{command} succeeded without libtorch");
        assert!(
            stderr.contains(&format!("medfed-node {command}")) && stderr.contains("no libtorch"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Runs `medfed-node SUBCOMMAND --config node.toml` in `dir` (written by [`check`]); returns
/// success, stdout and stderr.
fn run(dir: &Path, subcommand: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_medfed-node"))
        .args(subcommand)
        .arg("--config")
        .arg(dir.join("node.toml"))
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The training and held-out row counts of `check`'s report (`…: valid; N training and M
/// held-out rows`).
fn sizes(stdout: &str) -> Option<(usize, usize)> {
    let rest = stdout.split("valid; ").nth(1)?;
    let mut words = rest.split_whitespace();
    let train = words.next()?.parse().ok()?;
    let held_out = words.nth(2)?.parse().ok()?;
    Some((train, held_out))
}

#[test]
fn each_bad_input_names_where_it_is_and_fails() {
    let cases = [
        ("id,age,outcome\n1,50,1\n", vec!["site.csv", "sex"]),
        (
            "id,age,sex,outcome\n1,50,F,1\n2,sixty,M,0\n",
            vec!["site.csv", "row 3", "age", "sixty"],
        ),
        (
            "id,age,sex,outcome\n1,50,X,1\n",
            vec!["site.csv", "row 2", "sex", "X"],
        ),
        (
            "id,age,sex,outcome\n1,50,F,\n",
            vec!["site.csv", "row 2", "label"],
        ),
        ("", vec!["site.csv"]),
        ("id,age,sex,outcome\n", vec!["site.csv"]),
    ];
    for (csv, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (ok, stderr) = check(dir.path(), SCHEMA, csv);
        assert!(!ok, "accepted {csv:?}");
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{csv:?}: {stderr:?} lacks {needle:?}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn schema_naming_a_column_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let twice = format!("{SCHEMA}\n[[columns]]\nname = \"age\"\ntype = \"numeric\"\n");
    let (ok, stderr) = check(dir.path(), &twice, "id,age,sex,outcome\n1,50,F,1\n");
    assert!(!ok);
    assert!(
        stderr.contains("schema.toml") && stderr.contains("age"),
        "{stderr}"
    );
}

/// Runs `medfed-node privacy estimate` with `args`; returns stdout's last line.
fn estimate(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_medfed-node"))
        .args(["privacy", "estimate"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn privacy_estimate_prints_epsilon_or_sigma_as_its_last_line() {
    let common = [
        "--sample-rate",
        "0.04",
        "--steps",
        "2250",
        "--delta",
        "1e-5",
    ];
    let epsilon: f64 = estimate(&[&common[..], &["--noise-multiplier", "1.5"]].concat())
        .parse()
        .unwrap();
    assert!((epsilon - 7.32911117143).abs() < 1e-6, "{epsilon}");
    let sigma: f64 = estimate(&[&common[..], &["--target-epsilon", "8"]].concat())
        .parse()
        .unwrap();
    assert!((sigma - 1.416).abs() < 1e-3, "{sigma}");
}

#[test]
fn privacy_estimate_under_the_pld_accountant_is_the_library_figure_and_below_rdp() {
    use medfed_protocol::accounting::{self, Accountant, Mechanism};

    let common = [
        "--sample-rate",
        "0.04",
        "--steps",
        "2250",
        "--delta",
        "1e-5",
        "--accountant",
        "pld",
    ];
    let pld: f64 = estimate(&[&common[..], &["--noise-multiplier", "1.5"]].concat())
        .parse()
        .unwrap();
    let plan = Mechanism::SubsampledGaussian {
        sample_rate: 0.04,
        noise_multiplier: 1.5,
        steps: 2250,
    };
    assert_eq!(
        pld,
        accounting::epsilon(Accountant::Pld, &[plan], 1e-5).unwrap()
    );
    // Tighter than the RDP figure of the same plan (7.329), not by more than a fifth.
    assert!(pld < 7.32 && pld > 0.8 * 7.329, "{pld}");
    let sigma: f64 = estimate(&[&common[..], &["--target-epsilon", "8"]].concat())
        .parse()
        .unwrap();
    assert!(sigma < 1.416 && sigma > 1.0, "{sigma}");
    let output = Command::new(env!("CARGO_BIN_EXE_medfed-node"))
        .args(["privacy", "estimate", "--accountant", "moments"])
        .args(&common[..6])
        .args(["--noise-multiplier", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("moments") && stderr.contains("pld"),
        "{stderr}"
    );
}

/// The problem lines of `check`'s stderr that name the file.
fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("site.csv: row"))
        .collect()
}

#[test]
fn check_lists_every_problem_in_one_run_with_counts_per_column_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "id,age,sex,outcome\n\
               1,50,F,1\n\
               2,sixty,M,0\n\
               3,,X,1\n\
               4,61,M,0\n\
               5,old,F,\n\
               6,70,M,1\n\
               7,44,F\n";
    let (ok, stderr) = check(dir.path(), SCHEMA, csv);
    assert!(!ok, "problems must fail the check");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        problem_lines(&stderr)
            .iter()
            .map(|l| l.split("site.csv: ").nth(1).unwrap_or_default())
            .collect::<Vec<_>>(),
        [
            "row 3, column \"age\": \"sixty\" is not a number",
            "row 4, column \"age\": missing value (empty cell)",
            "row 4, column \"sex\": \"X\" is not one of the levels [\"F\", \"M\"]",
            "row 6, column \"age\": \"old\" is not a number",
            "row 6, column \"outcome\": missing label (empty cell)",
            "row 8: 3 cells, but the header has 4 columns",
        ]
    );
    let (ok, stdout, _) = run(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stdout.contains("6 problems in 4 of 7 rows; 3 rows kept"),
        "{stdout}"
    );
    let count = |column: &str, reason: &str| -> Option<usize> {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(column) && l.contains(reason))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    assert_eq!(count("age", "not a number"), Some(2), "{stdout}");
    assert_eq!(count("age", "missing value"), Some(1), "{stdout}");
    assert_eq!(count("sex", "unknown level"), Some(1), "{stdout}");
    assert_eq!(count("outcome", "missing label"), Some(1), "{stdout}");
    assert_eq!(
        count("(whole row)", "wrong number of cells"),
        Some(1),
        "{stdout}"
    );
    // The kept rows (ids 1, 4 and 6: two positive) and the audit groups.
    assert!(
        stdout.contains("positive label: 2 of 3 kept rows (66.7 %)"),
        "{stdout}"
    );
    let group = |name: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    assert_eq!(group("sex=F")[..2], ["1", "1"], "{stdout}");
    assert_eq!(group("sex=M")[..2], ["2", "1"], "{stdout}");
    let schema = medfed_protocol::schema::Schema::parse(SCHEMA).unwrap();
    assert!(
        stdout.contains(&format!("schema digest: {}", hex::encode(schema.digest()))),
        "{stdout}"
    );
}

#[test]
fn check_names_each_bad_image_file_and_keeps_the_good_scans() {
    let dir = tempfile::tempdir().unwrap();
    let schema = SCHEMA.replace(
        "[[columns]]\nname = \"age\"",
        "[[columns]]\nname = \"scan\"\ntype = \"image\"\nchannels = 1\nheight = 4\nwidth = 4\n\
         [[columns]]\nname = \"age\"",
    );
    std::fs::create_dir(dir.path().join("scans")).unwrap();
    let scan = |name: &str, side: u32| {
        image::GrayImage::new(side, side)
            .save(dir.path().join("scans").join(name))
            .unwrap();
    };
    scan("good.png", 4);
    scan("big.png", 8);
    std::fs::write(dir.path().join("scans/notes.png"), "not an image").unwrap();
    let csv = "id,scan,age,sex,outcome\n\
               1,scans/good.png,50,F,1\n\
               2,scans/gone.png,60,M,0\n\
               3,scans/notes.png,61,M,0\n\
               4,scans/big.png,62,F,1\n\
               5,scans/good.png,70,M,1\n";
    let (ok, stderr) = check(dir.path(), &schema, csv);
    assert!(!ok, "problems must fail the check");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let scans = dir.path().join("scans");
    let lines = problem_lines(&stderr);
    let expected_starts = [
        format!(
            "row 3, column \"scan\": image file {} not found",
            scans.join("gone.png").display()
        ),
        format!(
            "row 4, column \"scan\": cannot read image file {}: ",
            scans.join("notes.png").display()
        ),
        format!(
            "row 5, column \"scan\": image file {} is 8×8 (height×width), the schema declares 4×4 and no resize",
            scans.join("big.png").display()
        ),
    ];
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, start) in lines.iter().zip(&expected_starts) {
        let line = line.split("site.csv: ").nth(1).unwrap_or_default();
        assert!(line.starts_with(start.as_str()), "{line}\nexpected {start}");
    }
    let (_, stdout, _) = run(dir.path(), &["check"]);
    assert!(
        stdout.contains("3 problems in 3 of 5 rows; 2 rows kept"),
        "{stdout}"
    );
}

#[test]
fn check_lists_up_to_the_limit_and_counts_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,age,sex,outcome\n1,50,F,1\n");
    for i in 0..30 {
        csv.push_str(&format!("{i},,M,0\n"));
    }
    check(dir.path(), SCHEMA, &csv);
    let (ok, stdout, stderr) = run(dir.path(), &["check", "--limit", "5"]);
    assert!(!ok);
    assert_eq!(problem_lines(&stderr).len(), 5, "{stderr}");
    assert!(stderr.contains("25 more problems"), "{stderr}");
    assert!(stdout.contains("30 problems in 30 of 31 rows"), "{stdout}");
    // The default lists 20.
    let (_, _, stderr) = run(dir.path(), &["check"]);
    assert_eq!(problem_lines(&stderr).len(), 20, "{stderr}");
}

#[test]
fn check_accepts_blanks_where_the_schema_declares_them_and_compares_schemas() {
    let declared = SCHEMA
        .replace(
            "drop = [\"id\"]",
            "drop = [\"id\"]\nmissing_values = [\"NA\"]",
        )
        .replace("range = [0, 120]", "range = [0, 120]\nmissing = \"impute\"")
        .replace(
            "levels = [\"F\", \"M\"]",
            "levels = [\"F\", \"M\"]\nmissing = \"level\"",
        );
    let dir = tempfile::tempdir().unwrap();
    let csv = "id,age,sex,outcome\n1,50,F,1\n2,,M,0\n3,NA,,1\n4,61,M,0\n";
    let (ok, stderr) = check(dir.path(), &declared, csv);
    assert!(ok, "{stderr}");
    // The same file under the schema that refuses blanks.
    std::fs::write(dir.path().join("strict.toml"), SCHEMA).unwrap();
    let (ok, stdout, _) = run(
        dir.path(),
        &[
            "check",
            "--compare-schema",
            dir.path().join("strict.toml").to_str().unwrap(),
        ],
    );
    assert!(!ok, "a differing schema fails the check");
    for part in [
        "column \"age\": missing = \"impute\" here, \"refuse\" there",
        "column \"sex\": missing = \"level\" here, \"refuse\" there",
        "missing_values: [\"NA\"] here, [] there",
    ] {
        assert!(stdout.contains(part), "{part}: {stdout}");
    }
    // Compared with itself: the same schema, and a clean check.
    let (ok, stdout, _) = run(
        dir.path(),
        &[
            "check",
            "--compare-schema",
            dir.path().join("schema.toml").to_str().unwrap(),
        ],
    );
    assert!(ok && stdout.contains("the same schema"), "{stdout}");
}

/// `check` under `[data] holdout = { column, values }` and `holdout_csv`: it reports which rows
/// train and which are held out, and refuses a split column the model would read.
#[test]
fn check_reports_a_split_column_split_and_a_held_out_file() {
    let dir = tempfile::tempdir().unwrap();
    let schema = SCHEMA.replace("drop = [\"id\"]", "drop = [\"id\", \"cohort\"]");
    let csv = "id,age,sex,cohort,outcome\n\
               1,50,F,development,1\n\
               2,61,M, validation ,0\n\
               3,44,M,development,0\n\
               4,38,F,test,1\n\
               5,70,M,,0\n";
    check(dir.path(), &schema, csv);
    let config = std::fs::read_to_string(dir.path().join("node.toml")).unwrap();
    let with = |data: &str| {
        let text = config.replace(
            "schema = \"schema.toml\"",
            &format!("schema = \"schema.toml\"\n{data}"),
        );
        std::fs::write(dir.path().join("node.toml"), text).unwrap();
        run(dir.path(), &["check"])
    };
    let (ok, stdout, stderr) =
        with("holdout = { column = \"cohort\", values = [\"validation\", \"test\"] }");
    assert!(ok, "{stderr}");
    assert_eq!(sizes(&stdout), Some((3, 2)), "{stdout}");
    assert!(
        stdout.contains(
            "split: 3 training and 2 held-out rows; held out: the rows whose \"cohort\" is one of [\"validation\", \"test\"]"
        ),
        "{stdout}"
    );
    // A value no row has: refused, naming the file and the key.
    let (ok, _, stderr) = with("holdout = { column = \"cohort\", values = [\"Test\"] }");
    assert!(!ok);
    assert!(
        stderr.contains("site.csv: data.holdout: no row's \"cohort\""),
        "{stderr}"
    );
    // A value whose only rows are left out for their problems: the problems come first.
    std::fs::write(
        dir.path().join("site.csv"),
        csv.replace("4,38,F,test,1", "4,old,F,test,1"),
    )
    .unwrap();
    let (ok, _, stderr) = with("holdout = { column = \"cohort\", values = [\"test\"] }");
    assert!(!ok);
    let problem = stderr
        .find("site.csv: row 5, column \"age\": \"old\" is not a number")
        .unwrap_or_else(|| panic!("{stderr}"));
    let refused = stderr
        .find("no row's \"cohort\" is one of [\"test\"]")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(problem < refused, "{stderr}");
    std::fs::write(dir.path().join("site.csv"), csv).unwrap();
    // A model input cannot decide the split.
    let (ok, _, stderr) = with("holdout = { column = \"sex\", values = [\"F\"] }");
    assert!(!ok);
    assert!(
        stderr.contains("data.holdout.column \"sex\" is a feature column"),
        "{stderr}"
    );
    // A held-out file: the node's CSV all trains, and the file gets its own report.
    std::fs::write(
        dir.path().join("held-out.csv"),
        "id,age,sex,cohort,outcome\n9,55,F,x,0\n10,66,M,y,1\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = with("holdout_csv = \"held-out.csv\"");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("site.csv: valid; 5 training and 0 held-out rows"),
        "{stdout}"
    );
    assert!(
        stdout.contains("held-out.csv: valid; 0 training and 2 held-out rows"),
        "{stdout}"
    );
    assert!(
        stdout.contains("split: 5 training and 2 held-out rows; held out: every row of"),
        "{stdout}"
    );
    // Both ways at once: refused, naming both keys.
    let (ok, _, stderr) = with(
        "holdout_csv = \"held-out.csv\"\nholdout = { column = \"cohort\", values = [\"test\"] }",
    );
    assert!(!ok);
    assert!(
        stderr.contains("data.holdout and data.holdout_csv are exclusive"),
        "{stderr}"
    );
}
