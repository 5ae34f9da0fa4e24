//! The Python and JavaScript example plugins, built with their languages' componentizers
//! (scripts/install-test-deps.sh installs both): shared by the tests and the languages bench.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The example plugin of `language` (`python` or `javascript`), built into `dir`.
pub fn build_example(language: &str, dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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
