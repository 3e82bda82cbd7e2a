//! The configuration reference (`docs/CONFIGURATION.md`) and the example file
//! (`config/examples/coordinator.toml`) against the coordinator's real loader.

#[path = "support/config_reference.rs"]
mod config_reference;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use config_reference::{
    documented_keys, example, expected_fields, mismatches, missing_from_example, repo, tables_of,
    with_probe,
};
use medfed_coordinator::config::CoordinatorConfig;
use medfed_protocol::schema::Schema;

/// The keys of the table at `path`, read from the loader's refusal of an unknown key there.
fn accepted_keys(
    example: &toml::Table,
    base: &Path,
    path: &str,
    seed: &[(&str, &str)],
) -> BTreeSet<String> {
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    };
    let text = with_probe(example, &segments, seed);
    let error = match CoordinatorConfig::parse(&text, base) {
        Ok(_) => panic!("[{path}] accepted an unknown key: it lacks #[serde(deny_unknown_fields)]"),
        Err(e) => e.to_string(),
    };
    expected_fields(&error)
        .unwrap_or_else(|| panic!("[{path}]: not an unknown-field error: {error}"))
}

#[test]
fn the_example_coordinator_toml_parses_and_resolves_paths_against_its_folder() {
    let (text, base) = example("coordinator.toml");
    let config = CoordinatorConfig::parse(&text, &base).expect("the example parses");
    assert_eq!(config.schema, base.join("../heart/schema.toml"));
    assert!(
        config.schema.exists(),
        "the example's schema {} exists",
        config.schema.display()
    );
    assert_eq!(config.tls.cert, base.join("certs/coordinator.pem"));
    assert!(config.secure_aggregation.enabled);
    assert!(config.task.min_nodes >= 2);
    assert!(
        config.danger_pause_at.is_none(),
        "the example never sets a test-only key"
    );
    // The same file through `load`, as `medfed-coordinator run --config` reads it.
    CoordinatorConfig::load(&base.join("coordinator.toml")).expect("load reads the example");
}

#[test]
fn configuration_md_documents_exactly_the_keys_coordinator_toml_accepts() {
    let (text, base) = example("coordinator.toml");
    let example: toml::Table = toml::from_str(&text).expect("the example is TOML");
    let mut accepted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for table in tables_of(&example) {
        let keys = accepted_keys(&example, &base, &table, &[]);
        accepted.entry(table).or_default().extend(keys);
    }
    // Tables the example leaves out or shows one variant of.
    for (table, seed) in [
        ("danger_pause_at", &[][..]),
        ("strategy", &[("name", "fed_avg")][..]),
        ("strategy", &[("name", "fed_adam")][..]),
        ("strategy", &[("name", "fed_yogi")][..]),
        ("task.distributed_dp", &[][..]),
    ] {
        let keys = accepted_keys(&example, &base, table, seed);
        accepted.entry(table.to_owned()).or_default().extend(keys);
    }
    // The declared-layers model, on a model table holding only that tag (the example's is an
    // MLP, whose `hidden` the variant would refuse before the probe).
    let mut declared = example.clone();
    declared
        .get_mut("task")
        .and_then(toml::Value::as_table_mut)
        .expect("the example has a [task] table")
        .insert("model".into(), toml::Value::Table(toml::Table::new()));
    for kind in ["layers", "torchscript"] {
        let keys = accepted_keys(&declared, &base, "task.model", &[("kind", kind)]);
        accepted
            .entry("task.model".into())
            .or_default()
            .extend(keys);
    }
    // Tags of internally tagged tables: the variant's error lists its fields, not the tag.
    accepted
        .entry("strategy".into())
        .or_default()
        .insert("name".into());
    accepted
        .entry("task.model".into())
        .or_default()
        .insert("kind".into());

    let missing = missing_from_example(&text, &accepted);
    assert!(
        missing.is_empty(),
        "config/examples/coordinator.toml neither sets nor shows (commented out): {missing:?}"
    );
    let reference = std::fs::read_to_string(repo().join("docs/CONFIGURATION.md"))
        .expect("docs/CONFIGURATION.md exists");
    let documented = documented_keys(&reference, "coordinator.toml");
    assert!(
        !documented.is_empty(),
        "docs/CONFIGURATION.md has no `## coordinator.toml` section with key rows"
    );
    let problems = mismatches(&documented, &accepted);
    assert!(
        problems.is_empty(),
        "docs/CONFIGURATION.md and coordinator.toml disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_key_comparison_notices_a_key_missing_from_either_side() {
    let (text, base) = example("coordinator.toml");
    let example: toml::Table = toml::from_str(&text).unwrap();
    let accepted = BTreeMap::from([("tls".to_owned(), accepted_keys(&example, &base, "tls", &[]))]);
    let reference = "## coordinator.toml\n| key | type |\n|---|---|\n\
                     | `tls.ca_cert` | path |\n| `tls.cert` | path |\n| `tls.key` | path |\n\
                     | `tls.crl` | path |\n| `tls.colour` | string |\n";
    let problems = mismatches(&documented_keys(reference, "coordinator.toml"), &accepted);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`allow_expired_crl` is accepted but not documented")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`colour` is documented but not accepted")),
        "{problems:?}"
    );
}

#[test]
fn configuration_md_documents_exactly_the_keys_a_schema_file_accepts() {
    let path = repo().join("config/heart/schema.toml");
    let text = std::fs::read_to_string(&path).expect("the demo's schema exists");
    let schema: toml::Table = toml::from_str(&text).expect("the schema is TOML");
    Schema::parse(&text).expect("the demo's schema parses");
    let mut accepted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // `bands` is a table of arbitrary attribute names, not a table of keys.
    for table in ["", "label", "columns"] {
        let segments: Vec<&str> = table.split('.').filter(|s| !s.is_empty()).collect();
        let probed = with_probe(&schema, &segments, &[]);
        let error = match Schema::parse(&probed) {
            Ok(_) => panic!("schema [{table}] accepted an unknown key"),
            Err(e) => e.to_string(),
        };
        let keys = expected_fields(&error)
            .unwrap_or_else(|| panic!("schema [{table}]: not an unknown-field error: {error}"));
        accepted.insert(table.to_owned(), keys);
    }
    let reference = std::fs::read_to_string(repo().join("docs/CONFIGURATION.md"))
        .expect("docs/CONFIGURATION.md exists");
    let documented = documented_keys(&reference, "The schema file");
    let problems = mismatches(&documented, &accepted);
    assert!(
        problems.is_empty(),
        "docs/CONFIGURATION.md and the schema file disagree:\n{}",
        problems.join("\n")
    );
}
