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

/// A register entry must name a reader that exists and really reads what it
/// owns: the named test file holds the named function, and its source names
/// the vector file (path, file name or stem) or, for a folder, the folder.
/// A renamed test or a file dropped from a test's list fails here.
#[test]
fn every_named_reader_exists_and_names_what_it_reads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let on_disk: BTreeSet<String> = vectors::walk().into_iter().collect();
    let mut problems = Vec::new();
    for (pattern, owner) in OWNERS {
        let Owner::Test(reader) = owner else { continue };
        let target = reader.split([' ', ':']).next().unwrap_or(reader);
        let source_path = if target.contains('/') {
            root.join(format!("{target}.rs"))
        } else {
            root.join("tests/tests").join(format!("{target}.rs"))
        };
        let Ok(source) = std::fs::read_to_string(&source_path) else {
            problems.push(format!(
                "{pattern}: reader {reader:?}: no {}",
                source_path.display()
            ));
            continue;
        };
        // `file::function` names one function; free text ("* (every file ...)") names the file.
        if let Some(function) = reader.split_once("::").map(|(_, f)| f) {
            let plain = function
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if plain && !source.contains(&format!("fn {function}(")) {
                problems.push(format!("{pattern}: {reader:?} has no fn {function}"));
            }
        }
        let names_it = |file: &str| {
            let base = file.rsplit('/').next().unwrap_or(file);
            let stem = base.strip_suffix(".json").unwrap_or(base);
            source.contains(file)
                || source.contains(base)
                || source.contains(&format!("\"{stem}\""))
        };
        if let Some(folder) = pattern.strip_suffix('/') {
            if !source.contains(&format!("\"{folder}")) {
                problems.push(format!("{pattern}: {reader:?} never names the folder"));
            }
        } else if on_disk.contains(*pattern) && !names_it(pattern) {
            problems.push(format!("{pattern}: {reader:?} never names the file"));
        }
    }
    assert!(
        problems.is_empty(),
        "register entries whose reader does not read them:\n{}",
        problems.join("\n")
    );
}
