//! Shared by `coordinator/tests/configuration_reference.rs` and
//! `node/tests/configuration_reference.rs`: compares the keys `docs/CONFIGURATION.md` documents
//! with the keys a configuration loader accepts.
//!
//! The accepted keys are not copied by hand: every table of both files is deserialised with
//! serde's `deny_unknown_fields`, so a table given one key it does not know is refused with
//! "unknown field `x`, expected one of `a`, `b`, …", and that list is the table's keys. A probe
//! puts such a key into one table of a valid configuration (the example file), parses it with the
//! real loader and reads the list back from the error.
//!
//! The reference writes each key in the first cell of a table row, as `` `key` `` for the root
//! table and `` `table.key` `` otherwise (`` `task.training.pos_weight` ``), under the heading
//! that names the file (`## coordinator.toml`). A row of a nested key documents its table as a
//! key of the parent: `` `task.training.pos_weight` `` documents `training` in `[task]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root (both crates that include this file sit directly in it).
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_owned()
}

/// The text of `config/examples/<file>` and the folder its relative paths resolve against.
pub(crate) fn example(file: &str) -> (String, PathBuf) {
    let path = repo().join("config/examples").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("config/examples/{file} cannot be read: {e}"));
    (text, path.parent().unwrap().to_owned())
}

/// The key the probes insert; no configuration has it.
pub(crate) const PROBE_KEY: &str = "not_a_configuration_key";

/// Documented keys of the file whose heading is `## {file}`, by table (`""`: the root table;
/// `"task.training"`), as written in the first cell of each table row of that section.
pub(crate) fn documented_keys(reference: &str, file: &str) -> BTreeMap<String, BTreeSet<String>> {
    let heading = format!("## {file}");
    let mut in_section = false;
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in reference.lines() {
        if line.starts_with("## ") {
            in_section = line.trim_end() == heading;
            continue;
        }
        if !in_section {
            continue;
        }
        let Some(cell) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((path, _)) = cell.split_once('`') else {
            continue;
        };
        let parts: Vec<&str> = path.split('.').collect();
        // `a.b.c` documents `c` in `a.b`, `b` in `a` and `a` in the root table.
        for depth in 0..parts.len() {
            tables
                .entry(parts[..depth].join("."))
                .or_default()
                .insert(parts[depth].to_owned());
        }
    }
    tables
}

/// The keys listed by a serde "unknown field" error about [`PROBE_KEY`]; `None` if `error` is
/// not one.
pub(crate) fn expected_fields(error: &str) -> Option<BTreeSet<String>> {
    let marker = format!("unknown field `{PROBE_KEY}`, ");
    let rest = &error[error.find(&marker)? + marker.len()..];
    let rest = rest.lines().next().unwrap_or_default();
    if rest.starts_with("there are no fields") {
        return Some(BTreeSet::new());
    }
    let list = rest.strip_prefix("expected ")?;
    // "`a`", "`a` or `b`" or "one of `a`, `b`, `c`": every key is between backticks.
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// `example` with [`PROBE_KEY`] put into the table at `path` (`[]`: the root table; the first
/// entry of an array of tables), creating
/// the table (holding `seed`'s keys, for a tag such as a strategy's `name`) where the example
/// does not have it. Returns the TOML text.
pub(crate) fn with_probe(example: &toml::Table, path: &[&str], seed: &[(&str, &str)]) -> String {
    let mut table = example.clone();
    let mut at = &mut table;
    for key in path {
        let value = at
            .entry((*key).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match value {
            toml::Value::Table(inner) => inner,
            // An array of tables (`[[columns]]`): its first entry.
            toml::Value::Array(items) => match items.first_mut() {
                Some(toml::Value::Table(inner)) => inner,
                _ => panic!("{key} is not an array of tables in the example"),
            },
            other => panic!("{key} is not a table in the example: {other:?}"),
        };
    }
    for (key, value) in seed {
        at.insert((*key).to_owned(), toml::Value::String((*value).to_owned()));
    }
    at.insert(PROBE_KEY.to_owned(), toml::Value::Integer(1));
    toml::to_string(&table).expect("a TOML table serialises")
}

/// Every table (dotted path) of `example`, inline tables included, the root as `""`.
pub(crate) fn tables_of(example: &toml::Table) -> Vec<String> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        out.push(prefix.to_owned());
        for (key, value) in table {
            if let toml::Value::Table(inner) = value {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                walk(inner, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(example, "", &mut out);
    out
}

/// Compares documented and accepted keys table by table; returns one line per mismatch.
pub(crate) fn mismatches(
    documented: &BTreeMap<String, BTreeSet<String>>,
    accepted: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = |table: &str| {
        if table.is_empty() {
            "the root table".to_owned()
        } else {
            format!("[{table}]")
        }
    };
    for (table, keys) in accepted {
        let empty = BTreeSet::new();
        let written = documented.get(table).unwrap_or(&empty);
        for key in keys.difference(written) {
            problems.push(format!(
                "{}: `{key}` is accepted but not documented",
                name(table)
            ));
        }
        for key in written.difference(keys) {
            problems.push(format!(
                "{}: `{key}` is documented but not accepted",
                name(table)
            ));
        }
    }
    for table in documented.keys() {
        if !accepted.contains_key(table) {
            problems.push(format!(
                "{} is documented but no probe reads its keys (not a table the loader knows, \
                 or missing from the example file and from the test's extra probes)",
                name(table)
            ));
        }
    }
    problems
}

/// Keys of `accepted` (tables themselves aside) that the example file `text` neither sets nor
/// shows commented out (`key = …` at the start of a line, after `# `, or inside an inline
/// table).
pub(crate) fn missing_from_example(
    text: &str,
    accepted: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut missing = Vec::new();
    for (table, keys) in accepted {
        for key in keys {
            let path = if table.is_empty() {
                key.clone()
            } else {
                format!("{table}.{key}")
            };
            if accepted.contains_key(&path) {
                continue;
            }
            let shown = [
                format!("\n{key} ="),
                format!("# {key} ="),
                format!("{{ {key} ="),
                format!(", {key} ="),
            ]
            .iter()
            .any(|pattern| text.contains(pattern.as_str()));
            if !shown {
                missing.push(path);
            }
        }
    }
    missing
}
