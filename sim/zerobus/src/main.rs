//! `iot-connector-sim-zerobus`: the emulator in a process of its own, for benches whose figures
//! must not include its work (it decodes every row it acknowledges). It writes its addresses
//! and its CA as JSON (`grpc_url`, `oauth_url`, `ca_pem`) to the file its one argument names,
//! then answers each line on stdin: `rows <table>` gets the number of rows acknowledged in that
//! table. It ends when stdin closes.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // its stdout is its answers

use std::{io::BufRead, io::Write, process::ExitCode};

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: iot-connector-sim-zerobus <file for the addresses and the CA>");
        return ExitCode::from(64);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let emulator = match runtime.block_on(iot_connector_sim_zerobus::start(Default::default())) {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!("cannot start the emulator: {e}");
            return ExitCode::from(71);
        }
    };
    let addresses = serde_json::json!({
        "grpc_url": emulator.grpc_url(),
        "oauth_url": emulator.oauth_url(),
        "ca_pem": emulator.ca_pem(),
    });
    if let Err(e) = std::fs::write(&path, addresses.to_string()) {
        eprintln!(
            "cannot write {}: {e}",
            std::path::Path::new(&path).display()
        );
        return ExitCode::from(73);
    }
    let state = emulator.state().clone();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim().split_once(' ') {
            Some(("rows", table)) => state.row_count(table).to_string(),
            _ => format!("? {line}: ask `rows <table>`"),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}
