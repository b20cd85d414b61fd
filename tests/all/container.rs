//! The host image: built with buildah (no daemon, no registry) from the
//! Dockerfile's runtime stage over the binary and plugins this suite built,
//! then run with `buildah run`: `tessera --version`, and the quickstart,
//! whose answers must equal the same quickstart run outside the image.

use std::path::Path;
use std::process::{Command, Output};

use crate::support;

struct Buildah {
    root: tempfile::TempDir,
}

impl Buildah {
    fn new() -> Self {
        let found = Command::new("buildah").arg("--version").output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "buildah is needed to build the host image (scripts/test.sh installs Debian's package when it can): {found:?}"
        );
        Buildah {
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--storage-driver")
            .arg("vfs")
            .arg("--root")
            .arg(self.root.path().join("storage"))
            .arg("--runroot")
            .arg(self.root.path().join("run"));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(out.status.success(), "buildah {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `tessera ARGS` inside a container of the image, with `env`.
    fn tessera(&self, container: &str, env: &[&str], args: &[&str]) -> Output {
        let mut c = self.command();
        c.args(["run", "--isolation", "chroot"]);
        for e in env {
            c.args(["--env", e]);
        }
        c.args([container, "--", "/usr/local/bin/tessera"])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        // Containers and images live under the temporary root; unmount them
        // before it is removed.
        let _ = self.command().args(["rm", "--all"]).output();
        let _ = self.command().args(["rmi", "--all", "--force"]).output();
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const QUERY: [&str; 8] = [
    "--feature",
    "likes_per_post",
    "--entity",
    "post-0",
    "--window",
    "2h",
    "--at",
    "2026-11-23T03:00:00Z",
];

/// The quickstart outside the image, in `dir`: its query answer.
fn native_quickstart(dir: &Path) -> serde_json::Value {
    let root = support::workspace_root();
    let cfg = std::fs::read_to_string(root.join("examples/quickstart.toml"))
        .unwrap()
        .replace(
            "data/events.ndjson",
            &root
                .join("examples/data/events.ndjson")
                .display()
                .to_string(),
        )
        .replace(
            "../target/wasm32-wasip2/release/",
            &format!("{}/", support::plugin_dir().display()),
        )
        .replace("\"out/", &format!("\"{}/out/", dir.display()));
    let path = dir.join("quickstart.toml");
    std::fs::write(&path, cfg).unwrap();
    let tessera = env!("CARGO_BIN_EXE_tessera");
    let run = Command::new(tessera)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", describe(&run));
    let query = Command::new(tessera)
        .args(["query", "--config"])
        .arg(&path)
        .args(QUERY)
        .output()
        .unwrap();
    assert!(query.status.success(), "{}", describe(&query));
    serde_json::from_slice(&query.stdout).unwrap()
}

#[test]
fn the_host_image_builds_without_a_registry_and_runs_the_quickstart_as_a_non_root_user() {
    let buildah = Buildah::new();
    let root = support::workspace_root();
    let build = Command::new(root.join("scripts/build-image.sh"))
        .arg("localhost/tessera:test")
        .arg(env!("CARGO_BIN_EXE_tessera"))
        .arg(support::plugin_dir())
        .env("BUILDAH_ROOT", buildah.root.path())
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", describe(&build));

    let user = buildah.ok(&[
        "inspect",
        "--format",
        "{{.OCIv1.Config.User}}",
        "localhost/tessera:test",
    ]);
    assert_eq!(user, "10001:10001", "the image runs as the non-root user");
    let container = buildah.ok(&["from", "localhost/tessera:test"]);

    let version = buildah.tessera(&container, &[], &["--version"]);
    assert!(version.status.success(), "{}", describe(&version));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tessera {}", env!("CARGO_PKG_VERSION"))
    );

    // The quickstart inside, its config chosen by the environment; state
    // goes to /var/lib/tessera, which the user may write.
    let env = ["TESSERA_CONFIG=/etc/tessera/quickstart.toml"];
    let run = buildah.tessera(&container, &env, &["run"]);
    assert!(run.status.success(), "{}", describe(&run));
    assert!(
        describe(&run).contains("records in: 20000"),
        "{}",
        describe(&run)
    );
    let query = buildah.tessera(&container, &env, &[&["query"][..], &QUERY[..]].concat());
    assert!(query.status.success(), "{}", describe(&query));
    let inside: serde_json::Value = serde_json::from_slice(&query.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(inside, native_quickstart(dir.path()));
    assert!(inside["count"].as_u64().unwrap() > 0, "{inside}");

    // The image's own config (Kafka, with `${VAR:-default}` references
    // filled from the environment) loads with its defaults.
    let features = buildah.tessera(&container, &[], &["features"]);
    assert!(features.status.success(), "{}", describe(&features));
}
