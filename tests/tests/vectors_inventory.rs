//! Every vector file the reference produced is read by some test, or is
//! explicitly owned by a later issue. A new vector file fails this test until
//! someone decides who reads it.

use std::collections::BTreeSet;

use asap_tests::vectors::{self, Owner, OWNERS};

#[test]
fn every_vector_file_has_an_owner() {
    let on_disk: BTreeSet<String> = vectors::walk().into_iter().collect();
    assert!(
        on_disk.len() > 50,
        "vectors dir {} looks empty ({} files); set ASAP_VECTORS_DIR",
        vectors::dir().display(),
        on_disk.len()
    );

    let index: BTreeSet<String> = vectors::load("INDEX.json")
        .as_array()
        .expect("INDEX.json is an array")
        .iter()
        .map(|v| v.as_str().expect("INDEX entries are strings").to_owned())
        .collect();

    // INDEX.json and the directory agree (INDEX.json does not list itself).
    let missing_on_disk: Vec<_> = index.difference(&on_disk).collect();
    assert!(
        missing_on_disk.is_empty(),
        "listed in INDEX.json but absent: {missing_on_disk:?}"
    );
    let unindexed: Vec<_> = on_disk
        .iter()
        .filter(|p| *p != "INDEX.json" && !index.contains(*p))
        .collect();
    assert!(
        unindexed.is_empty(),
        "on disk but not in INDEX.json: {unindexed:?}"
    );

    // Every file has exactly one reader.
    let orphans: Vec<_> = on_disk
        .iter()
        .filter(|p| vectors::owner_of(p).is_none())
        .collect();
    assert!(
        orphans.is_empty(),
        "vector files nobody reads; add a test or an Owner::LaterIssue entry in \
         tests/src/vectors.rs: {orphans:?}"
    );

    // The register names no file or folder that does not exist (stale entries hide gaps).
    for (pattern, _) in OWNERS {
        let exists = if pattern.ends_with('/') {
            on_disk.iter().any(|p| p.starts_with(pattern))
        } else {
            on_disk.contains(*pattern)
        };
        assert!(exists, "OWNERS entry {pattern:?} matches no vector file");
    }
    let mut seen = BTreeSet::new();
    for (pattern, _) in OWNERS {
        assert!(seen.insert(*pattern), "OWNERS lists {pattern:?} twice");
    }

    let consumed = on_disk
        .iter()
        .filter(|p| matches!(vectors::owner_of(p), Some((_, Owner::Test(_)))))
        .count();
    let later = on_disk.len() - consumed;
    eprintln!("{consumed} vector files checked here, {later} owned by later issues");
}

#[test]
fn required_vector_files_are_consumed_by_a_test() {
    // Issue 2 ("Foundation") promises these are read by tests, not deferred.
    let mut required: Vec<String> = vectors::files_in("envelopes");
    required.extend(
        [
            "parts.json",
            "entities.json",
            "state_machine.json",
            "timestamp_formats.json",
            "rejected_inputs.json",
            "jsonrpc/errors.json",
        ]
        .map(String::from),
    );
    for rel in required {
        match vectors::owner_of(&rel) {
            Some((_, Owner::Test(_))) => {}
            other => panic!("{rel} must be consumed by a test, register says {other:?}"),
        }
    }
}
