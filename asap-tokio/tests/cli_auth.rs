//! `asap serve` identity settings: a misconfigured IdP or subject map is a
//! startup error that names the URL or flag and the cause.

use std::process::Command;

fn serve(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(["serve", "--bind", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("s.db"))
        .args(args)
        .output()
        .expect("run asap serve");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_issuer_fails_at_startup_naming_the_url() {
    // A port nothing listens on: bound, then freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let (ok, err) = serve(&["--oidc-issuer", &issuer]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{issuer}/.well-known/openid-configuration")),
        "{err}"
    );
    let (ok, err) = serve(&["--jwks-uri", &format!("{issuer}/jwks")]);
    assert!(!ok);
    assert!(
        err.contains("JWKS") && err.contains(&format!("{issuer}/jwks")),
        "{err}"
    );
}

#[test]
fn a_malformed_subject_map_or_scope_fails_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("k.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let jwks = jwks.to_str().unwrap();
    let (ok, err) = serve(&["--jwks-file", jwks, "--subject-map", "{not json"]);
    assert!(!ok);
    assert!(err.contains("ASAP_AUTH_SUBJECT_MAP"), "{err}");
    let (ok, err) = serve(&["--jwks-file", jwks, "--required-scope", "asap:everything"]);
    assert!(!ok);
    assert!(err.contains("--required-scope"), "{err}");
}
