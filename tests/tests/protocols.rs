//! The checklist of `docs/adding-a-protocol.md` that the compiler cannot keep: for every
//! protocol of the closed list (`iot_connector_config::Protocol::ALL`), the places outside the
//! Rust type system that must name it. A new protocol added to the enum fails here until each
//! place is done.
#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed step should fail loudly

use std::path::{Path, PathBuf};

use iot_connector_config::Protocol;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_protocol_has_its_worker_crate_example_docs_and_end_to_end_test() {
    let readme = read("README.md");
    let mut missing = Vec::new();
    for protocol in Protocol::ALL {
        let key = protocol.key();
        let binary = protocol.binary();
        let mut need = |done: bool, what: String| {
            if !done {
                missing.push(format!("{key}: {what}"));
            }
        };
        assert_eq!(Protocol::from_key(key), Some(protocol));
        let manifest = std::fs::read_to_string(repo().join("workers").join(key).join("Cargo.toml"));
        need(
            manifest.is_ok_and(|m| m.contains(&format!("name = \"{binary}\""))),
            format!(
                "workers/{key}/Cargo.toml naming the crate {binary} (the workspace, a plain \
                 `cargo build` and the Dockerfile take every crate under workers/)"
            ),
        );
        need(
            repo()
                .join("examples")
                .join(format!("{key}.toml"))
                .is_file(),
            format!("examples/{key}.toml (loaded by config/tests/examples.rs)"),
        );
        need(
            readme.contains(&format!("(`{binary}`)")),
            format!("a README section on (`{binary}`)"),
        );
        need(
            repo()
                .join("tests/tests")
                .join(format!("{key}.rs"))
                .is_file(),
            format!("tests/tests/{key}.rs: its end-to-end test against a real peer"),
        );
    }
    assert!(
        missing.is_empty(),
        "unfinished protocols:\n{}",
        missing.join("\n")
    );
}
