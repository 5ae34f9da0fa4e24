//! Builds the plugins in `../plugins` for `wasm32-wasip2` and embeds the example ones in the binary
//! as `builtin:NAME`.
//!
//! The plugins are a workspace of their own, built by a nested cargo into this build's `OUT_DIR`.
//! Packet, frame and picture plugins are built in separate runs: the SDK compiles the bindings of
//! the world a plugin enables, and one run would unify the features into every plugin.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Plugins built into the binary, by name (the crate's name).
const BUILTINS: [&str; 9] = [
    "passthrough",
    "keyframes",
    "sei-timestamp",
    "grayscale",
    "clock",
    "privacy-box",
    "motion",
    "grayscale-in-place",
    "luma-meter",
];

/// Each run of the nested cargo: the packages it builds.
const RUNS: [&[&str]; 3] = [
    &[
        "passthrough",
        "keyframes",
        "sei-timestamp",
        "spin",
        "memory-bomb",
        "trap-tenth",
        "wrong-world",
        "hostile",
        "counter",
        "world-0-1-0",
    ],
    &["grayscale", "clock", "privacy-box", "motion"],
    &["grayscale-in-place", "luma-meter", "picture-trap"],
];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let plugins = manifest_dir.join("../plugins");
    let target_dir = out_dir.join("plugins-target");
    println!("cargo::rerun-if-changed=../wit");
    for entry in ["Cargo.toml", "Cargo.lock", "sdk", "testing"]
        .into_iter()
        .chain(BUILTINS)
    {
        println!("cargo::rerun-if-changed=../plugins/{entry}");
    }

    // Fuzzing builds (`--cfg fuzzing`, nightly, sanitizers) exercise parsers, not plugins, and the
    // nightly toolchain has no wasm32-wasip2 standard library to build them with.
    let fuzzing = std::env::var_os("CARGO_CFG_FUZZING").is_some();
    let builtins_built: &[&str] = if fuzzing { &[] } else { &BUILTINS };
    if !fuzzing {
        for packages in RUNS {
            build(&plugins, &target_dir, packages);
        }
    }

    let wasm_dir = target_dir.join(TARGET).join("release");
    let mut builtins = String::from("/// The plugins built into the binary: name and component.\n");
    builtins.push_str("pub const BUILTINS: &[(&str, &[u8])] = &[\n");
    for name in builtins_built {
        let file = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        builtins.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    builtins.push_str("];\n");
    write(&out_dir.join("builtins.rs"), &builtins);
    // Tests and benches load the other plugins from here.
    println!(
        "cargo::rustc-env=WASMCAST_PLUGIN_DIR={}",
        wasm_dir.display()
    );
}

fn build(plugins: &Path, target_dir: &Path, packages: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(plugins)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // The outer build's settings are for the host, not for the plugins' target: flags, wrappers
    // (clippy's driver, when this runs under `cargo clippy`) and a forced target directory.
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(variable);
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(err) => panic!("cannot run cargo to build the plugins: {err}"),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("target may not be installed") {
            "\nhint: `rustup target add wasm32-wasip2` (rust-toolchain.toml lists it)"
        } else {
            ""
        };
        panic!("building the plugins for {TARGET} failed:\n{stderr}{hint}");
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

fn write(path: &Path, contents: &str) {
    if let Err(err) = std::fs::write(path, contents) {
        panic!("cannot write {}: {err}", path.display());
    }
}
