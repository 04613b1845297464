//! Generates the Perfetto trace types from proto/perfetto_trace.proto (prost, with protox as the
//! compiler, so no protoc is needed to build).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/perfetto_trace.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
