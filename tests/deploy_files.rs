//! The deployment files users copy stay valid: the Kubernetes manifests against Kubernetes'
//! schemas (`kubernetes-validate --strict`, from PyPI, installed by `make deps`), and every Weir
//! configuration they carry (the compose `config.yaml`, the ConfigMap's `config.yaml`, the
//! Secret's properties) through Weir's own loader, which refuses unknown keys and bad values.

use std::path::Path;
use std::process::Command;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn kubernetes_manifests_pass_the_schema_validation() {
    let k8s = Path::new(REPO).join("deploy/k8s");
    let mut files: Vec<_> =
        std::fs::read_dir(&k8s).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let out = Command::new("python3").args(["-m", "kubernetes_validate", "--strict"]).args(&files).output().expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("No module named"), "kubernetes-validate is not installed (make deps installs it): {text}");
    assert!(out.status.success(), "the manifests do not validate:\n{text}");
    assert!(text.matches("passed").count() >= 5, "{text}");
}

/// Weir's configuration inside a Kubernetes manifest: `data.<key>` of the ConfigMap or
/// `stringData.<key>` of the Secret, read with Python's YAML (a dependency of the validator).
fn manifest_value(file: &str, section: &str, key: &str) -> String {
    let path = Path::new(REPO).join("deploy/k8s").join(file);
    let script = format!("import sys, yaml\nprint(yaml.safe_load(open(sys.argv[1]))['{section}']['{key}'], end='')");
    let out = Command::new("python3").args(["-c", &script]).arg(&path).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_configuration_in_the_deployment_files_loads() {
    let dir = tempfile::tempdir().unwrap();
    let configmap = dir.path().join("config.yaml");
    std::fs::write(&configmap, manifest_value("configmap.yaml", "data", "config.yaml")).unwrap();
    let secret: Vec<String> = manifest_value("secret.yaml", "stringData", "properties").lines().map(|l| l.replacen(": ", "=", 1)).collect();
    for file in [configmap.as_path(), &Path::new(REPO).join("deploy/config.yaml")] {
        let (config, _) =
            weir_core::config::Config::load_layers(Some(file), &secret).unwrap_or_else(|e| panic!("{} does not load: {e}", file.display()));
        let tm = weir_core::settings::TaskManagerConfig::from_config(&config);
        assert_eq!((tm.host.as_str(), tm.bind_host.as_str()), ("auto", "0.0.0.0"), "{}", file.display());
    }
}
