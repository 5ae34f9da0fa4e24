//! The Kubernetes manifests in `deploy/kubernetes`: the kustomization names every manifest, and the
//! config each ConfigMap carries passes `wasmcast check`. (CI validates the manifests against the
//! Kubernetes schemas with kubernetes-validate.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{TempDir, run};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

#[test]
fn the_kustomization_names_every_manifest() {
    let kustomization =
        std::fs::read_to_string(manifests().join("kustomization.yaml")).expect("kustomization");
    let named: BTreeSet<String> = kustomization
        .split("resources:")
        .nth(1)
        .expect("a resources list")
        .lines()
        .skip(1)
        .map_while(|line| line.trim().strip_prefix("- ").map(str::to_owned))
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(manifests())
        .expect("deploy/kubernetes")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(named, present);
}

#[test]
fn every_configmap_holds_a_config_that_checks() {
    let dir = TempDir::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(manifests()).expect("deploy/kubernetes") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("a manifest");
        if !text.contains("kind: ConfigMap") {
            continue;
        }
        // The block under `wasmcast.toml: |`, four spaces in.
        let block = text
            .split("wasmcast.toml: |\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{} has no wasmcast.toml", path.display()));
        let config: String = block
            .lines()
            .take_while(|line| line.is_empty() || line.starts_with("    "))
            .map(|line| format!("{}\n", line.get(4..).unwrap_or("")))
            .collect();
        let file = dir.path().join(path.file_name().expect("a name"));
        std::fs::write(&file, config).expect("write the config");
        let (ok, stdout, stderr) = run(
            Command::new(env!("CARGO_BIN_EXE_wasmcast"))
                .args(["check", "--config"])
                .arg(&file),
            Duration::from_secs(30),
        );
        assert!(ok, "{}: {stdout}{stderr}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 2, "the origin's and the edges' configs");
}
