//! The shape of the source tree that the design relies on (design.md, "one door to durable state"): the
//! engine is the only door to the store. The API imports no store type, and the cluster module uses the
//! store only in its lease backends (`cluster/mod.rs`, `cluster/sql.rs`); the recovery scanner asks the
//! engine. A source scan, so a new shortcut fails here instead of in review.

// Panicking is how a test fails.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the source tree") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Lines of `file` outside comments and unit tests that name the store module.
fn store_uses(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("read a source file");
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| l.contains("crate::store") || l.contains("store::"))
        .map(|l| format!("{}: {}", file.display(), l.trim()))
        .collect()
}

#[test]
fn only_the_engine_reaches_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    for file in rust_files(&src.join("api")) {
        offenders.extend(store_uses(&file));
    }
    for file in rust_files(&src.join("cluster")) {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // The lease backends hold the store's lease and fencing rows.
        if !matches!(name, "mod.rs" | "sql.rs") {
            offenders.extend(store_uses(&file));
        }
    }
    assert!(
        offenders.is_empty(),
        "outside the engine, only the cluster's lease backends may use the store:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_engine_offers_no_store_or_clock() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine/mod.rs"))
            .expect("read engine/mod.rs");
    for getter in ["pub fn store(", "pub fn clock("] {
        assert!(!text.contains(getter), "Engine must not offer `{getter}`");
    }
}
