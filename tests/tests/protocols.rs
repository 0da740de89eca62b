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

#[test]
fn the_image_ships_every_binary_the_supervisor_starts() {
    // The Dockerfile builds the workspace's default members and copies every `iot-connector*`
    // executable: the default members must hold the supervisor, the uplink and every worker.
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("cargo build --release --locked \\")
            && !dockerfile.contains("-p iot-connector-")
            && dockerfile.contains("-name 'iot-connector*'"),
        "the Dockerfile must build the default members and copy every iot-connector* binary"
    );
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let defaults: Vec<&str> = manifest["workspace"]["default-members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    for needed in ["supervisor", "uplink", "workers/*"] {
        assert!(
            defaults.contains(&needed),
            "default-members lacks {needed:?}: {defaults:?}"
        );
    }
    for protocol in Protocol::ALL {
        let folder = repo().join("workers").join(protocol.key());
        assert!(
            folder.join("Cargo.toml").is_file(),
            "{} has no crate under workers/",
            protocol.binary()
        );
    }
}
