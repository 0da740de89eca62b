//! Generates the Zerobus server stubs from `proto/zerobus_service.proto`, a byte-for-byte copy of
//! the file shipped in `databricks-zerobus-ingest-sdk` 3.0.0. The SDK generates only a client
//! (`build_server(false)`), so the emulator generates its own server. protox compiles the file in
//! pure Rust (it embeds `google/protobuf/duration.proto`), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/zerobus_service.proto");
    let fds = protox::compile(["zerobus_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
