//! RocksDB built from source (the default) links the C++ standard library itself; a prebuilt
//! one (`ROCKSDB_LIB_DIR`, e.g. the main workspace's, to skip a second long build) does not, and
//! `write_seeds` links nothing else that would bring it in.
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if std::env::var_os("ROCKSDB_LIB_DIR").is_some() {
        println!("cargo:rustc-link-arg-bins=-lstdc++");
    }
}
