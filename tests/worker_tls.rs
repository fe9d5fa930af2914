//! TLS (rustls) on the worker's one port: ALPN h2 and http/1.1, with a certificate the
//! test generates, checked with reqwest and with curl.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn tls_serves_h2_and_http11_by_alpn() {
    let tmp = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = tmp.path().join("cert.pem");
    let key = tmp.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let w = Worker::start(&[
        ("OUTPOST_TLS_CERT", cert.to_str().unwrap()),
        ("OUTPOST_TLS_KEY", key.to_str().unwrap()),
    ]);
    let root = reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap();
    for (client, want) in [
        (
            reqwest::Client::builder()
                .add_root_certificate(root.clone())
                .http1_only()
                .build()
                .unwrap(),
            reqwest::Version::HTTP_11,
        ),
        (
            reqwest::Client::builder()
                .add_root_certificate(root.clone())
                .build()
                .unwrap(),
            reqwest::Version::HTTP_2,
        ),
    ] {
        let r = client.get(w.url("/hello")).send().await.unwrap();
        assert_eq!(r.version(), want);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "available");
    }
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                flag,
                "--cacert",
            ])
            .arg(&cert)
            .arg(w.url("/pty/status"))
            .output()
            .unwrap();
        let v = String::from_utf8(out.stdout).unwrap();
        assert_eq!(v, version, "curl {flag}");
    }
    // Plain HTTP on the TLS port is refused (no downgrade).
    assert!(reqwest::get(format!("http://127.0.0.1:{}/hello", w.port))
        .await
        .is_err());
}

#[test]
fn tls_with_a_missing_key_file_stops_the_start_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("serve")
        .env("PORT", free_port().to_string())
        .env("OUTPOST_DATA", tmp.path())
        .env("OUTPOST_TLS_CERT", tmp.path().join("nope.pem"))
        .env("OUTPOST_TLS_KEY", tmp.path().join("nokey.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OUTPOST_TLS_CERT") && err.contains("nope.pem"),
        "{err}"
    );
}
