//! The node's CSV loader (`medfed_node::data`, built without libtorch) reading an arbitrary file
//! against the heart-disease schema of `config/heart`.
//!
//! Invariants: no panic; a loaded dataset has one encoded row of the schema's width per label,
//! finite features, 0/1 labels and one sensitive record per row; the split keeps every row.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medfed_node::data::load_csv;
use medfed_protocol::schema::Schema;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::parse(include_str!("../../config/heart/schema.toml")).unwrap())
}

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("medfed-fuzz-csv-{}.csv", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let schema = schema();
    std::fs::write(scratch(), data).expect("scratch file");
    let Ok(dataset) = load_csv(scratch(), schema) else {
        return;
    };
    let width = schema.num_features();
    let rows = dataset.len();
    assert!(rows > 0);
    assert_eq!(dataset.examples.num_features, width);
    assert_eq!(dataset.examples.features.len(), rows * width);
    assert!(dataset.examples.features.iter().all(|v| v.is_finite()));
    assert!(
        dataset
            .examples
            .labels
            .iter()
            .all(|&l| l == 0.0 || l == 1.0)
    );
    assert_eq!(dataset.sensitive.len(), rows);
    assert!(
        dataset
            .sensitive
            .iter()
            .all(|s| s.len() == dataset.sensitive_columns.len())
    );
    if let Ok((train, held_out)) = dataset.split(0.25, 1) {
        assert_eq!(train.len() + held_out.len(), rows);
    }
});
