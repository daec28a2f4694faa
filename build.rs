//! Generates the ONNX protobuf types from the vendored `protos/onnx.proto`
//! (ONNX 1.23.2, as shipped in the `onnx` wheel). `protox` compiles the schema in
//! pure Rust, so building regraft never needs `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=protos/onnx.proto");
    let fds =
        protox::compile(["protos/onnx.proto"], ["protos"]).expect("compile protos/onnx.proto");
    let mut cfg = prost_build::Config::new();
    // Tensor payloads as `bytes::Bytes`: decoding from a `Bytes` buffer slices it instead
    // of copying, and external data can be memory-mapped behind the same type.
    cfg.bytes(["."]);
    cfg.compile_fds(fds).expect("generate ONNX types");
}
