//! Whatever the file holds, `parse` returns: a config or problems, never a panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)] // test code: a failed step should fail loudly

use std::path::Path;
use std::sync::LazyLock;

use iot_connector_config::{Protocol, parse_with_env};
use proptest::prelude::*;

fn env(name: &str) -> Option<String> {
    (name == "SET").then(|| "value".to_owned())
}

fn assert_parses_or_reports(text: &str) {
    if let Err(errors) = parse_with_env(Path::new("/etc/fuzz.toml"), text, &env) {
        assert!(!errors.problems.is_empty());
        let lines = text.lines().count().max(1);
        for problem in &errors.problems {
            assert!(
                problem.line <= lines + 1,
                "line {} of {lines}: {errors}",
                problem.line
            );
        }
    }
}

const EXAMPLE: &str = include_str!("../../examples/all.toml");

/// Pieces of real configs, for text that looks like TOML and reaches the checks, and a
/// `protocol = "…"` line for every protocol, so that each source's decoding is fuzzed.
static FRAGMENTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let protocols = Protocol::ALL.map(|p| format!("protocol = \"{}\"\n", p.key()));
    PIECES
        .iter()
        .map(|&piece| piece.to_owned())
        .chain(protocols)
        .collect()
});

const PIECES: &[&str] = &[
    "[connector]\n",
    "[http]\n",
    "[zerobus]\n",
    "[spool]\n",
    "[[sources]]\n",
    "[[sources.registers]]\n",
    "id = \"x\"\n",
    "name = \"a\"\n",
    "name = \"a\"\n",
    "endpoint = \"tcp://h:502\"\n",
    "endpoint = \"${SET}\"\n",
    "endpoint = \"${UNSET}\"\n",
    "password = \"enc:AAAA\"\n",
    "password = \"file:/nonexistent\"\n",
    "password = \"credential:x\"\n",
    "max_bytes = \"10GiB\"\n",
    "max_bytes = -1\n",
    "max_bytes = \"1XB\"\n",
    "registers = [ { name = \"r\", kind = \"coil\", address = 65535, data_type = \"string\" } ]\n",
    "registers = [ { name = \"r\" }, { kind = 5 }, 7 ]\n",
    "topics = [ { filter = \"a/#/b\", qos = 9 } ]\n",
    "tables = { opcua = \"a\" }\n",
    "listen = \"x\"\n",
    "scale = nan\n",
    "scale = inf\n",
    "address = 1.5\n",
    "sources = 5\n",
    "sources = [1, \"a\", [2]]\n",
    "a.b.c = 1\n",
    "x = { y = { z = [ { } ] } }\n",
    "\"quoted key\" = 1\n",
    "= 1\n",
    "[\n",
    "]]\n",
    "\"\n",
    "'''\n",
    "${\n",
    "$${X}\n",
    "\u{0}\n",
    "\u{feff}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        assert_parses_or_reports(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_toml_ish_text_never_panics(pieces in proptest::collection::vec(0..FRAGMENTS.len(), 0..40)) {
        let text: String = pieces.iter().filter_map(|&i| FRAGMENTS.get(i).map(String::as_str)).collect();
        assert_parses_or_reports(&text);
    }

    #[test]
    fn mutated_examples_never_panic(
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), 0..FRAGMENTS.len(), 0u8..3), 1..8),
    ) {
        let mut lines: Vec<String> = EXAMPLE.lines().map(str::to_owned).collect();
        for (at, fragment, op) in cuts {
            if lines.is_empty() {
                break;
            }
            let i = at.index(lines.len());
            let piece = FRAGMENTS.get(fragment).map_or("", |f| f.trim_end()).to_owned();
            match op {
                0 => { lines.remove(i); }
                1 => lines.insert(i, piece),
                _ => {
                    // Replace the value of a `key = value` line.
                    if let Some((key, _)) = lines[i].split_once('=') {
                        let value = piece.split_once('=').map_or(piece.as_str(), |(_, v)| v);
                        lines[i] = format!("{key}={value}");
                    }
                }
            }
        }
        assert_parses_or_reports(&lines.join("\n"));
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for depth in [100, 10_000] {
        let arrays = format!("a = {}{}\n", "[".repeat(depth), "]".repeat(depth));
        assert_parses_or_reports(&format!("[connector]\nid = \"x\"\n{arrays}"));
        let tables = format!("b = {}{}\n", "{ c = ".repeat(depth), "}".repeat(depth));
        assert_parses_or_reports(&format!("[connector]\nid = \"x\"\n{tables}"));
    }
}
