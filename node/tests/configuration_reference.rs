//! The configuration reference (`docs/CONFIGURATION.md`) and the example file
//! (`config/examples/node.toml`) against the node's real loader.

#[path = "../../coordinator/tests/support/config_reference.rs"]
mod config_reference;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use config_reference::{
    documented_keys, example, expected_fields, mismatches, missing_from_example, repo, tables_of,
    with_probe,
};
use medfed_node::NodeConfig;
use medfed_node::config::NoiseMultiplier;

/// The keys of the table at `path`, read from the loader's refusal of an unknown key there.
fn accepted_keys(example: &toml::Table, base: &Path, path: &str) -> BTreeSet<String> {
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    };
    let text = with_probe(example, &segments, &[]);
    let error = match NodeConfig::parse(&text, base) {
        Ok(_) => panic!("[{path}] accepted an unknown key: it lacks #[serde(deny_unknown_fields)]"),
        Err(e) => e.to_string(),
    };
    expected_fields(&error)
        .unwrap_or_else(|| panic!("[{path}]: not an unknown-field error: {error}"))
}

#[test]
fn the_example_node_toml_parses_and_resolves_paths_against_its_folder() {
    let (text, base) = example("node.toml");
    let config = NodeConfig::parse(&text, &base).expect("the example parses");
    assert_eq!(config.data.schema, base.join("../heart/schema.toml"));
    assert!(
        config.data.schema.exists(),
        "the example's schema {} exists",
        config.data.schema.display()
    );
    assert_eq!(config.tls.cert, base.join("certs/hospital-a.pem"));
    assert_eq!(config.state_dir, base.join("state/hospital-a"));
    assert_eq!(
        config.coordinator.to_string(),
        "coordinator.consortium.example:7400"
    );
    assert_eq!(config.server_name, "coordinator.consortium.example");
    assert_eq!(config.policy.members, Some(base.join("certs/members.toml")));
    let privacy = config.privacy.expect("the example sets a privacy budget");
    assert_eq!(privacy.noise_multiplier, NoiseMultiplier::Auto);
    NodeConfig::load(&base.join("node.toml")).expect("load reads the example");
}

#[test]
fn the_commented_out_holdout_choices_of_the_example_parse_too() {
    let (text, base) = example("node.toml");
    for choice in ["# holdout = {", "# holdout_csv = "] {
        let swapped = text
            .replace("holdout_fraction = 0.25", "# holdout_fraction = 0.25")
            .replace("split_seed = 0 ", "# split_seed = 0 ")
            .replace(choice, &choice[2..]);
        assert_ne!(swapped, text);
        NodeConfig::parse(&swapped, &base)
            .unwrap_or_else(|e| panic!("the example with {choice:?} uncommented: {e}"));
    }
}

#[test]
fn configuration_md_documents_exactly_the_keys_node_toml_accepts() {
    let (text, base) = example("node.toml");
    let example: toml::Table = toml::from_str(&text).expect("the example is TOML");
    let mut accepted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Every table of the example, and the inline table the example leaves commented out.
    let mut tables = tables_of(&example);
    tables.push("data.holdout".to_owned());
    for table in tables {
        let keys = accepted_keys(&example, &base, &table);
        accepted.entry(table).or_default().extend(keys);
    }
    let missing = missing_from_example(&text, &accepted);
    assert!(
        missing.is_empty(),
        "config/examples/node.toml neither sets nor shows (commented out): {missing:?}"
    );
    let reference = std::fs::read_to_string(repo().join("docs/CONFIGURATION.md"))
        .expect("docs/CONFIGURATION.md exists");
    let documented = documented_keys(&reference, "node.toml");
    assert!(
        !documented.is_empty(),
        "docs/CONFIGURATION.md has no `## node.toml` section with key rows"
    );
    let problems = mismatches(&documented, &accepted);
    assert!(
        problems.is_empty(),
        "docs/CONFIGURATION.md and node.toml disagree:\n{}",
        problems.join("\n")
    );
}
