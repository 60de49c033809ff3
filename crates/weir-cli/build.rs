//! Tells the end-to-end tests whether a Docker engine answers here (`cfg(docker_engine)`): the
//! compose test runs where one does and is reported as ignored, never as passed, where none
//! does. Checked when this crate is built; `WEIR_DOCKER_TESTS=0` turns the compose test off,
//! `=1` on (then a missing engine fails it).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(docker_engine)");
    println!("cargo::rerun-if-env-changed=WEIR_DOCKER_TESTS");
    println!("cargo::rerun-if-env-changed=DOCKER_HOST");
    let engine = match std::env::var("WEIR_DOCKER_TESTS").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => {
            let answers = |cmd: &str, args: &[&str]| {
                std::process::Command::new(cmd)
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            answers("docker", &["info"]) && answers("docker-compose", &["version"])
        }
    };
    if engine {
        println!("cargo::rustc-cfg=docker_engine");
    }
}
