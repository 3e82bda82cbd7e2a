//! The consortium schema parsed from a file's text.
//!
//! Invariants: no panic; a parsed schema is consistent (feature names match the encoded width,
//! column widths add up to it, the digest is deterministic); looking up audit groups and label
//! classes of arbitrary cell values does not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medfed_protocol::schema::Schema;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(schema) = Schema::parse(text) else {
        return;
    };
    let width: usize = schema.columns().iter().map(|c| c.width()).sum();
    assert_eq!(width, schema.num_features());
    assert_eq!(schema.feature_names().len(), schema.num_features());
    let _ = schema.stats_len();
    assert_eq!(schema.digest(), Schema::parse(text).unwrap().digest());
    let groups = schema.audit_groups();
    for (attribute, _) in schema.sensitive().iter().enumerate() {
        for probe in ["", "0", "-1", "1e308", "NaN", "inf", "Female", "65.5"] {
            if let Some(group) = schema.audit_group_of(attribute, probe) {
                assert!(
                    group < groups.len(),
                    "group {group} of {} groups",
                    groups.len()
                );
            }
        }
    }
    for value in ["", "0", "1"] {
        let _ = schema.label().class_of(value);
    }
    for column in schema.columns() {
        let _ = (column.name(), column.kind());
    }
});
