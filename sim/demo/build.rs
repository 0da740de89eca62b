//! Compiles the Sparkplug B schema the MQTT worker decodes, from that worker's one copy of the
//! file (never a second copy), with protox exactly as `workers/mqtt/build.rs` does, so the demo's
//! edge node encodes what the worker decodes.
use std::io;

const SCHEMA: &str = "../../workers/mqtt/sparkplug_b.proto";

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed={SCHEMA}");
    let fds = protox::compile([SCHEMA], ["../../workers/mqtt"]).map_err(io::Error::other)?;
    prost_build::Config::new().compile_fds(fds)
}
