//! `vigil pki` as an operator runs it: the files it writes are accepted by
//! OpenSSL (an independent X.509 implementation) when it is installed.

use std::{path::Path, process::Command};

fn vigil(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .output()
        .expect("run vigil")
}

fn openssl(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("openssl").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("openssl not installed: skipping the OpenSSL cross-check");
            None
        }
        Err(e) => panic!("openssl: {e}"),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn init_issue_revoke_and_openssl_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = p(&dir);

    let out = vigil(&["pki", "init", "--dir", d]);
    assert!(out.status.success(), "{out:?}");
    for f in ["ca.pem", "ca.key", "crl.pem"] {
        assert!(dir.join(f).exists(), "{f}");
    }

    let out = vigil(&[
        "pki", "issue", "--dir", d, "--role", "post", "--id", "p-017",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = vigil(&[
        "pki",
        "issue",
        "--dir",
        d,
        "--role",
        "broker",
        "--id",
        "broker",
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
    ]);
    assert!(out.status.success(), "{out:?}");

    let ca = dir.join("ca.pem");
    let post = dir.join("p-017.pem");
    let Some(out) = openssl(&["verify", "-CAfile", p(&ca), p(&post)]) else {
        return;
    };
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: OK", p(&post))
    );

    let out = openssl(&[
        "x509",
        "-in",
        p(&post),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ])
    .unwrap();
    let subject = String::from_utf8_lossy(&out.stdout);
    assert!(
        subject.contains("CN=p-017") && subject.contains("OU=post"),
        "{subject}"
    );

    let out = openssl(&[
        "x509",
        "-in",
        p(&post),
        "-noout",
        "-ext",
        "extendedKeyUsage",
    ])
    .unwrap();
    let eku = String::from_utf8_lossy(&out.stdout);
    assert!(
        eku.contains("Client Authentication") && !eku.contains("Server"),
        "{eku}"
    );

    let broker = dir.join("broker.pem");
    let out = openssl(&[
        "x509",
        "-in",
        p(&broker),
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ])
    .unwrap();
    let ext = String::from_utf8_lossy(&out.stdout);
    assert!(
        ext.contains("DNS:localhost") && ext.contains("IP Address:127.0.0.1"),
        "{ext}"
    );
    assert!(
        ext.contains("Server Authentication") && !ext.contains("Client"),
        "{ext}"
    );

    // Revocation: OpenSSL, given the CRL, now refuses p-017 but not the broker.
    let out = vigil(&["pki", "revoke", "--dir", d, "--id", "p-017"]);
    assert!(out.status.success(), "{out:?}");
    let crl = dir.join("crl.pem");
    let out = openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        p(&crl),
        "-CAfile",
        p(&ca),
        p(&post),
    ])
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked")
            || String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{out:?}"
    );
    let out = openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        p(&crl),
        "-CAfile",
        p(&ca),
        p(&broker),
    ])
    .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn operator_mistakes_exit_64_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    assert!(vigil(&["pki", "init", "--dir", d]).status.success());

    let cases: &[(&[&str], &str)] = &[
        (
            &["pki", "init", "--dir", d],
            "refusing to overwrite an existing CA",
        ),
        (
            &["pki", "issue", "--dir", d, "--role", "root", "--id", "x"],
            "unknown role \"root\"",
        ),
        (
            &["pki", "issue", "--dir", d, "--role", "post", "--id", "P_17"],
            "invalid identity \"P_17\"",
        ),
        (
            &["pki", "issue", "--dir", d, "--role", "ops", "--id", "ops-1"],
            "needs at least one --san",
        ),
        (
            &["pki", "revoke", "--dir", d, "--id", "nobody"],
            "no certificate for nobody",
        ),
    ];
    for (args, message) in cases {
        let out = vigil(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }

    let empty = tempfile::tempdir().unwrap();
    let out = vigil(&[
        "pki",
        "issue",
        "--dir",
        p(empty.path()),
        "--role",
        "post",
        "--id",
        "p-1",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vigil pki init"));
}

#[test]
fn bad_arguments_exit_64_and_help_exits_0() {
    for args in [
        &["pki", "issue", "--role", "nonsense"][..],
        &["no-such-command"],
        &["ack"],
        &["dev", "--posts", "many"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    for args in [&["--help"][..], &["--version"], &["ack", "--help"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}
