//! Records libtorch's library folder as an rpath, so `medfed-node` finds libtorch without
//! `LD_LIBRARY_PATH`. torch-sys reports the folder through its `links = "tch"` metadata; without
//! the `torch` feature there is no torch-sys, no such variable and nothing to record.

fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
