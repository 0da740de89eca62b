//! Compiles the Sparkplug B schema with protox (pure Rust, no protoc on the build host), the same
//! way `proto/build.rs` compiles the bronze tables.
use std::io;

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=sparkplug_b.proto");
    let fds = protox::compile(["sparkplug_b.proto"], ["."]).map_err(io::Error::other)?;
    prost_build::Config::new().compile_fds(fds)
}
