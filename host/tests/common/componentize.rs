//! The Python, JavaScript and C example plugins, built with their languages' tools
//! (scripts/install-test-deps.sh installs them): shared by the tests and the languages bench.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The example plugin of `language` (`python`, `javascript` or `c`), built into `dir`.
pub fn build_example(language: &str, dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if language == "c" {
        return build_c(&repo, dir);
    }
    let wasm = dir.join(format!("{language}.wasm"));
    let mut command = match language {
        "python" => {
            // Its source copied, so that Python's caches stay out of the checkout.
            let source = dir.join("python");
            std::fs::create_dir_all(&source).expect("source directory");
            std::fs::copy(
                repo.join("plugins/python-grayscale/app.py"),
                source.join("app.py"),
            )
            .expect("copy app.py");
            let mut command = Command::new("python3");
            command
                .args([
                    "-c",
                    "import sys; from componentize_py import script; \
                     sys.argv[0] = 'componentize-py'; sys.exit(script())",
                ])
                .arg("-d")
                .arg(repo.join("wit"))
                .args([
                    "-w",
                    "wasmcast:plugin/frame-plugin",
                    "componentize",
                    "app",
                    "-o",
                ])
                .arg(&wasm)
                .current_dir(&source);
            command
        }
        _ => {
            let project = repo.join("plugins/javascript-grayscale");
            let mut command = Command::new(project.join("node_modules/.bin/componentize-js"));
            command
                .arg("--wit")
                .arg(repo.join("wit"))
                .args(["--world-name", "wasmcast:plugin/frame-plugin"])
                .args(["--disable", "http", "fetch-event", "-o"])
                .arg(&wasm)
                .arg("app.js")
                .current_dir(&project);
            command
        }
    };
    let output = command.output().unwrap_or_else(|err| {
        panic!("the {language} componentizer runs ({err}); see scripts/install-test-deps.sh")
    });
    assert!(
        output.status.success(),
        "building the {language} plugin: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    wasm
}

/// The C example: bindings from wit-bindgen's C generator, a core module from clang (Debian's, with
/// wasi-libc and the wasm32 compiler-rt), and a component from wit-component with WASI's preview1
/// adapter. What `plugins/c-grayscale/build.sh` does with the command-line tools.
fn build_c(repo: &Path, dir: &Path) -> PathBuf {
    use wit_bindgen_core::wit_parser::Resolve;

    let source = dir.join("c");
    std::fs::create_dir_all(&source).expect("source directory");
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(repo.join("wit")).expect("the WIT");
    let world = resolve
        .select_world(&[package], Some("frame-plugin"))
        .expect("the frame-plugin world");
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .expect("C bindings");
    for (name, contents) in files.iter() {
        std::fs::write(source.join(name), contents).expect("write bindings");
    }
    let core = source.join("core.wasm");
    let output = Command::new("clang")
        .args([
            "--target=wasm32-wasi",
            "--sysroot=/usr",
            "-O2",
            "-Wall",
            "-Werror",
            "-mexec-model=reactor",
            "-I",
        ])
        .arg(&source)
        .arg(repo.join("plugins/c-grayscale/grayscale.c"))
        .arg(source.join("frame_plugin.c"))
        .arg(source.join("frame_plugin_component_type.o"))
        .arg("-o")
        .arg(&core)
        .output()
        .unwrap_or_else(|err| panic!("clang runs ({err}); see scripts/install-test-deps.sh"));
    assert!(
        output.status.success(),
        "building the C plugin: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let module = std::fs::read(&core).expect("core module");
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|encoder| {
            encoder.adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|encoder| encoder.encode())
        .unwrap_or_else(|err| panic!("making the C plugin a component: {err:#}"));
    let wasm = dir.join("c.wasm");
    std::fs::write(&wasm, component).expect("write the component");
    wasm
}
