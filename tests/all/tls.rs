//! HTTPS on the serving and admin listeners (rustls), with certificates
//! made here by a throwaway CA: a client that trusts the CA gets answers,
//! plain HTTP and an untrusting client get none, a stalled handshake holds
//! nobody up, the CLI talks to an HTTPS admin API with `--ca-cert`, and a
//! host with an unreadable certificate refuses to start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::admin::{ADMIN, READER};
use crate::support;

/// A CA and a server certificate it signed for 127.0.0.1 and localhost.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&certs.ca, ca.pem()).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}

fn client(ca: Option<&Path>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(20));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn host_config(dir: &Path, tls: &str, admin: &str) -> PathBuf {
    let input = dir.join("events.ndjson");
    support::write_ndjson(&input, &support::events(3, 500, 3_600_000, 1_000, None));
    let cfg = support::config(
        dir,
        &input,
        "",
        &format!(
            "{tls}\n[admin]\nregistry_dir = \"{}\"\ntokens = [{{ token = \"{ADMIN}\", role = \"admin\" }}, {{ token = \"{READER}\", role = \"read\" }}]\n{admin}\n",
            dir.join("registry").display()
        ),
    );
    let path = dir.join("tessera.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn start(cfg: &Path) -> support::KillOnDrop {
    support::KillOnDrop(Some(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", "--serve", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(cfg.with_extension("log")).unwrap())
            .spawn()
            .unwrap(),
    ))
}

fn status_of(c: &reqwest::blocking::Client, url: &str, token: Option<&str>) -> Result<u16, String> {
    let req = c.get(url);
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    req.send()
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn the_api_and_the_admin_api_serve_https_to_clients_that_trust_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let (api, admin) = (support::free_port(), support::free_port());
    let tls = |table: &str| {
        format!(
            "[{table}.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            certs.cert.display(),
            certs.key.display()
        )
    };
    let cfg = host_config(
        dir.path(),
        &format!("[api]\nlisten = \"127.0.0.1:{api}\"\n{}", tls("api")),
        &format!("listen = \"127.0.0.1:{admin}\"\n{}", tls("admin")),
    );
    let host = start(&cfg);
    let trusting = client(Some(&certs.ca));
    let status = format!("https://127.0.0.1:{api}/v1/status");
    support::wait_until(Duration::from_secs(60), "the HTTPS API to answer", || {
        status_of(&trusting, &status, None) == Ok(200)
    });
    // A client that connects and never handshakes holds nobody up.
    let stalled = std::net::TcpStream::connect(("127.0.0.1", api)).unwrap();
    assert_eq!(status_of(&trusting, &status, None), Ok(200));
    assert_eq!(
        status_of(
            &trusting,
            &format!("https://localhost:{api}/v1/features"),
            None
        ),
        Ok(200),
        "the certificate names localhost too"
    );
    // The admin API on its own HTTPS listener, tokens as ever.
    let plugins = format!("https://127.0.0.1:{admin}/v1/plugins");
    assert_eq!(status_of(&trusting, &plugins, Some(READER)), Ok(200));
    assert_eq!(status_of(&trusting, &plugins, None), Ok(401));

    // Plain HTTP gets no answer; a client that does not trust the CA
    // refuses the certificate.
    let plain = status_of(
        &client(None),
        &format!("http://127.0.0.1:{api}/v1/status"),
        None,
    );
    assert!(plain.is_err(), "{plain:?}");
    let untrusting = status_of(&client(None), &status, None).unwrap_err();
    assert!(
        untrusting.to_lowercase().contains("certificate"),
        "{untrusting}"
    );

    // The CLI, with and without the CA.
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "plugin",
                "--api",
                &format!("https://127.0.0.1:{admin}"),
                "--token",
                READER,
            ])
            .args(extra)
            .arg("list")
            .env_remove("TESSERA_CA_CERT")
            .output()
            .unwrap()
    };
    let ok = cli(&["--ca-cert", certs.ca.to_str().unwrap()]);
    assert!(ok.status.success(), "{ok:?}");
    let listed: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(listed["plugins"][0]["name"], "json-parser", "{listed}");
    let refused = cli(&[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{refused:?}"
    );
    drop(stalled);
    let out = host.interrupt_and_wait();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_host_with_an_unreadable_certificate_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let api = support::free_port();
    // The key of another certificate: the pair does not match.
    let other = tempfile::tempdir().unwrap();
    let other = make_certs(other.path());
    for (cert, key, says) in [
        (
            dir.path().join("missing.pem"),
            certs.key.clone(),
            "certificate chain",
        ),
        (
            certs.cert.clone(),
            dir.path().join("missing.key"),
            "private key",
        ),
        (
            certs.cert.clone(),
            other.key.clone(),
            "do not make a server config",
        ),
    ] {
        let cfg = host_config(
            dir.path(),
            &format!(
                "[api]\nlisten = \"127.0.0.1:{api}\"\n[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            "",
        );
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["run", "--serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
}
