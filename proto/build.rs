//! Compiles the bronze table schemas with protox (pure Rust, no protoc on the build host) and
//! keeps the descriptor set, which the Zerobus stream needs at creation time.
use std::{env, fs, io, path::PathBuf};

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=schemas/bronze.proto");
    let fds = protox::compile(["bronze.proto"], ["schemas"]).map_err(io::Error::other)?;
    let out =
        PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR unset"))?);
    fs::write(out.join("bronze.fds"), prost::Message::encode_to_vec(&fds))?;
    prost_build::Config::new().compile_fds(fds)
}
