//! Compiles `proto/weir/v1/*.proto` with protoc (Debian's `protobuf-compiler`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["weir/v1/common.proto", "weir/v1/jobmanager.proto", "weir/v1/taskmanager.proto"];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    tonic_prost_build::configure().compile_protos(&paths, &[root])?;
    Ok(())
}
