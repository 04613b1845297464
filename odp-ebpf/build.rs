//! Compiles the BPF C programs with clang-19 and generates their libbpf-rs skeletons.

use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let abi = manifest.join("../bpf-common/include");
    let clang = std::env::var("ODP_CLANG").unwrap_or_else(|_| "clang-19".into());
    for name in ["odp", "feature"] {
        let src = manifest.join(format!("src/bpf/{name}.bpf.c"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(out.join(format!("{name}.bpf.o")))
            .clang(&clang)
            .clang_args([
                "-I".into(),
                abi.clone().into_os_string(),
                "-I".into(),
                manifest.join("src/bpf").into_os_string(),
                "-Wall".into(),
                "-Wno-unused-function".into(),
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
        println!("cargo:rerun-if-changed={}", src.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        abi.join("odp_events.h").display()
    );
    // The headers the programs include (vmlinux.h, core_fields.bpf.h, cpu_fault.bpf.h...).
    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-env-changed=ODP_CLANG");
}
