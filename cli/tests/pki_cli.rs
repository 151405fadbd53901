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

fn list_json(dir: &str, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut args = vec!["pki", "list", "--dir", dir, "--json"];
    args.extend_from_slice(extra);
    let out = vigil(&args);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
    (
        out.status.code(),
        rows.as_array().expect("an array").clone(),
    )
}

#[test]
fn list_shows_what_was_issued_soonest_expiry_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = p(&dir);
    assert!(vigil(&["pki", "init", "--dir", d]).status.success());
    for args in [
        &["--role", "analyst", "--id", "alice"][..],
        &["--role", "post", "--id", "p-017", "--days", "10"],
        &["--role", "post", "--id", "p-018", "--days", "5"],
        &[
            "--role",
            "broker",
            "--id",
            "broker",
            "--san",
            "localhost",
            "--days",
            "90",
        ],
    ] {
        let mut full = vec!["pki", "issue", "--dir", d];
        full.extend_from_slice(args);
        let out = vigil(&full);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(
        vigil(&["pki", "revoke", "--dir", d, "--id", "p-018"])
            .status
            .success()
    );

    // Default threshold, 30 days: p-017 is due (p-018 too, but revoked).
    let out = vigil(&["pki", "list", "--dir", d]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p-017") && !stderr.contains("p-018") && !stderr.contains("broker"),
        "{stderr}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][..3], ["IDENTITY", "ROLE", "SERIAL"], "{table}");
    let rows: Vec<(&str, &str, &str)> = lines[1..]
        .iter()
        .map(|l| (l[0], l[1], *l.last().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            ("p-018", "post", "revoked"),
            ("p-017", "post", "due"),
            ("broker", "broker", "ok"),
            ("alice", "analyst", "ok"),
        ],
        "{table}"
    );
    // Aligned: every row's status column starts where the header's does.
    let at = table.lines().next().unwrap().find("STATUS").unwrap();
    for line in table.lines().skip(1) {
        assert!(
            line[at..].starts_with(|c: char| c.is_ascii_alphabetic())
                && line.as_bytes()[at - 1] == b' ',
            "{table}"
        );
    }

    let (code, rows) = list_json(d, &[]);
    assert_eq!(code, Some(2));
    let field = |i: usize, k: &str| rows[i][k].clone();
    let ids: Vec<_> = (0..4).map(|i| field(i, "identity")).collect();
    assert_eq!(ids, ["p-018", "p-017", "broker", "alice"]);
    assert_eq!(field(0, "revoked"), true);
    assert_eq!(field(1, "revoked"), false);
    assert_eq!(field(1, "role"), "post");
    // Issued for 10 days a moment ago: 9 whole days and some hours left.
    assert_eq!(field(1, "days_left"), 9);
    assert_eq!(field(3, "days_left"), 364);
    let not_after: Vec<String> = (0..4)
        .map(|i| field(i, "not_after").as_str().unwrap().to_owned())
        .collect();
    assert!(not_after.is_sorted(), "{not_after:?}");

    // Tighter and looser thresholds.
    assert_eq!(list_json(d, &["--within", "5"]).0, Some(0));
    assert_eq!(list_json(d, &["--within", "0"]).0, Some(0));
    let out = vigil(&["pki", "list", "--dir", d, "--within", "100"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p-017") && stderr.contains("broker"),
        "{stderr}"
    );

    // OpenSSL reads the same serial and expiry.
    let Some(out) = openssl(&[
        "x509",
        "-in",
        p(&dir.join("p-017.pem")),
        "-noout",
        "-serial",
        "-enddate",
    ]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let serial = field(1, "serial");
    assert!(
        text.contains(&format!("serial={}", serial.as_str().unwrap())),
        "{text} vs {serial}"
    );
}

#[test]
fn renew_keeps_identity_role_sans_and_openssl_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = p(&dir);
    assert!(vigil(&["pki", "init", "--dir", d]).status.success());
    let out = vigil(&[
        "pki",
        "issue",
        "--dir",
        d,
        "--role",
        "ops",
        "--id",
        "ops-1",
        "--san",
        "ops.region.example",
        "--san",
        "127.0.0.1",
        "--days",
        "10",
    ]);
    assert!(out.status.success(), "{out:?}");
    let cert = dir.join("ops-1.pem");
    let key = dir.join("ops-1.key");
    let key_before = std::fs::read(&key).unwrap();
    let (_, before) = list_json(d, &[]);

    let out = vigil(&["pki", "renew", "--dir", d, "--id", "ops-1", "--days", "200"]);
    assert!(out.status.success(), "{out:?}");
    let (code, after) = list_json(d, &[]);
    assert_eq!(code, Some(0), "nothing due after the renewal");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["identity"], "ops-1");
    assert_eq!(after[0]["role"], "ops");
    assert_ne!(after[0]["serial"], before[0]["serial"]);
    assert_ne!(after[0]["not_after"], before[0]["not_after"]);
    assert_eq!(after[0]["days_left"], 199);
    assert_eq!(std::fs::read(&key).unwrap(), key_before, "key kept");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    let out = vigil(&["pki", "renew", "--dir", d, "--id", "ops-1", "--new-key"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(std::fs::read(&key).unwrap(), key_before, "new key");
    let (_, renewed) = list_json(d, &[]);
    assert_ne!(renewed[0]["serial"], after[0]["serial"]);

    let ca = dir.join("ca.pem");
    let Some(out) = openssl(&["verify", "-CAfile", p(&ca), p(&cert)]) else {
        return;
    };
    assert!(out.status.success(), "{out:?}");
    let out = openssl(&[
        "x509",
        "-in",
        p(&cert),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ])
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "CN=ops-1",
        "OU=ops",
        "DNS:ops.region.example",
        "IP Address:127.0.0.1",
        "Server Authentication",
        "Client Authentication",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // The new key is the certificate's key.
    let from_cert = openssl(&["x509", "-in", p(&cert), "-noout", "-pubkey"]).unwrap();
    let from_key = openssl(&["pkey", "-in", p(&key), "-pubout"]).unwrap();
    assert!(from_key.status.success(), "{from_key:?}");
    assert_eq!(from_cert.stdout, from_key.stdout);
}

#[test]
fn list_and_renew_refusals_exit_64() {
    let tmp = tempfile::tempdir().unwrap();
    let d = p(tmp.path());
    let other = tempfile::tempdir().unwrap();
    let o = p(other.path());
    for dir in [d, o] {
        assert!(vigil(&["pki", "init", "--dir", dir]).status.success());
    }
    // Same default CA name, another key: not ours.
    let out = vigil(&["pki", "issue", "--dir", o, "--role", "post", "--id", "p-9"]);
    assert!(out.status.success(), "{out:?}");
    for f in ["p-9.pem", "p-9.key"] {
        std::fs::copy(other.path().join(f), tmp.path().join(f)).unwrap();
    }
    let out = vigil(&["pki", "issue", "--dir", d, "--role", "post", "--id", "p-1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        vigil(&["pki", "revoke", "--dir", d, "--id", "p-1"])
            .status
            .success()
    );
    let missing = tmp.path().join("missing");

    let cases: &[(&[&str], &str)] = &[
        (&["pki", "list", "--dir", p(&missing)], "vigil pki init"),
        (
            &["pki", "renew", "--dir", d, "--id", "nobody"],
            "no certificate for nobody",
        ),
        (
            &["pki", "renew", "--dir", d, "--id", "p-9"],
            "was not issued by this CA",
        ),
        (
            &["pki", "renew", "--dir", p(&missing), "--id", "p-9"],
            "vigil pki init",
        ),
        (&["pki", "renew", "--dir", d, "--id", "p-1"], "is revoked"),
    ];
    for (args, message) in cases {
        let out = vigil(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }

    // The foreign certificate is not listed, and said to be skipped.
    let (code, rows) = list_json(d, &[]);
    assert_eq!((code, rows.len()), (Some(0), 1));
    assert_eq!(rows[0]["identity"], "p-1");
    assert_eq!(rows[0]["status"], "revoked");
    let out = vigil(&["pki", "list", "--dir", d]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p-9.pem") && stderr.contains("not issued by this CA"),
        "{stderr}"
    );
}

/// `vigil` with `VIGIL_CA_PASSPHRASE` set to `passphrase` (or unset), and
/// no stdin.
fn vigil_with(passphrase: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    cmd.args(args).stdin(std::process::Stdio::null());
    match passphrase {
        Some(p) => cmd.env("VIGIL_CA_PASSPHRASE", p),
        None => cmd.env_remove("VIGIL_CA_PASSPHRASE"),
    };
    cmd.output().expect("run vigil")
}

/// The CRL's fields as OpenSSL prints them, after OpenSSL checked its
/// signature against the CA.
fn openssl_crl(ca: &Path, crl: &Path) -> Option<String> {
    let out = openssl(&[
        "crl",
        "-in",
        p(crl),
        "-CAfile",
        p(ca),
        "-verify",
        "-noout",
        "-text",
    ])?;
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("verify OK"), "{stderr}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value after `label` on its line in OpenSSL's CRL text, or on the
/// next line (CRL Number is printed below its label).
fn crl_field(text: &str, label: &str) -> String {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix(label) {
            let rest = rest.trim();
            if rest.is_empty() {
                return lines.next().unwrap_or_default().trim().to_owned();
            }
            return rest.to_owned();
        }
    }
    panic!("{label} not in {text}");
}

#[test]
fn crl_refresh_keeps_revocations_and_openssl_verifies_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = p(dir);
    assert!(vigil(&["pki", "init", "--dir", d]).status.success());
    for id in ["p-1", "p-2"] {
        let out = vigil(&["pki", "issue", "--dir", d, "--role", "post", "--id", id]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(
        vigil(&["pki", "revoke", "--dir", d, "--id", "p-1"])
            .status
            .success()
    );
    let (ca, crl) = (dir.join("ca.pem"), dir.join("crl.pem"));
    let Some(before) = openssl_crl(&ca, &crl) else {
        return;
    };
    // The this-update of a CRL has a one-second resolution.
    let first_update = crl_field(&before, "Last Update:");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let after = loop {
        let out = vigil(&["pki", "crl", "--dir", d]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 revoked"), "{stdout}");
        // The key is plain: said, once the work is done.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not encrypted"), "{stderr}");
        let after = openssl_crl(&ca, &crl).unwrap();
        if crl_field(&after, "Last Update:") != first_update || std::time::Instant::now() > deadline
        {
            break after;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_ne!(crl_field(&after, "Last Update:"), first_update);
    assert_ne!(
        crl_field(&after, "Next Update:"),
        crl_field(&before, "Next Update:")
    );
    let number = |t: &str| crl_field(t, "X509v3 CRL Number:").parse::<u64>().unwrap();
    assert!(number(&after) > number(&before));
    // The same revoked serial, with its original revocation date.
    let revoked = |t: &str| {
        let tail = &t[t.find("Revoked Certificates:").expect("revoked list")..];
        (
            crl_field(tail, "Serial Number:"),
            crl_field(tail, "Revocation Date:"),
        )
    };
    assert_eq!(revoked(&after), revoked(&before));
    let out = openssl(&["x509", "-noout", "-serial", "-in", p(&dir.join("p-1.pem"))]).unwrap();
    let serial_hex = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    assert_eq!(revoked(&after).0, serial_hex);
    assert!(!dir.join("crl.tmp").exists());

    // p-1 stays refused by OpenSSL with the fresh CRL; p-2 passes.
    let verify = |id: &str| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            p(&crl),
            "-CAfile",
            p(&ca),
            p(&dir.join(format!("{id}.pem"))),
        ])
        .unwrap()
        .status
        .success()
    };
    assert!(!verify("p-1"));
    assert!(verify("p-2"));
}

#[test]
fn an_encrypted_ca_key_asks_for_its_passphrase_and_openssl_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = p(&dir);
    let secret = "correct horse battery";

    let out = vigil_with(Some(secret), &["pki", "init", "--dir", d, "--encrypt"]);
    assert!(out.status.success(), "{out:?}");
    let key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{key}"
    );

    // Every command that signs needs the passphrase: a wrong one exits 64
    // with one clear line and writes nothing.
    let crl_before = std::fs::read(dir.join("crl.pem")).unwrap();
    let issue = ["pki", "issue", "--dir", d, "--role", "post", "--id", "p-1"];
    let cases: &[&[&str]] = &[
        &issue,
        &["pki", "revoke", "--dir", d, "--id", "p-1"],
        &["pki", "renew", "--dir", d, "--id", "p-1"],
        &["pki", "crl", "--dir", d],
    ];
    for args in cases {
        let out = vigil_with(Some("correct horse battery!"), args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("wrong passphrase"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        let out = vigil_with(Some(""), args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("VIGIL_CA_PASSPHRASE"));
    }
    assert!(!dir.join("p-1.pem").exists());
    assert_eq!(std::fs::read(dir.join("crl.pem")).unwrap(), crl_before);

    // With the right one, all of them work, and say nothing about a plain key.
    let out = vigil_with(Some(secret), &issue);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    for args in [
        &["pki", "renew", "--dir", d, "--id", "p-1"][..],
        &["pki", "revoke", "--dir", d, "--id", "p-1"],
        &["pki", "crl", "--dir", d],
    ] {
        let out = vigil_with(Some(secret), args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    // The key stayed encrypted; listing needs no passphrase.
    assert_eq!(std::fs::read_to_string(dir.join("ca.key")).unwrap(), key);
    let out = vigil_with(None, &["pki", "list", "--dir", d, "--json"]);
    assert!(out.status.success(), "{out:?}");

    let ca = dir.join("ca.pem");
    let Some(out) = openssl(&["verify", "-CAfile", p(&ca), p(&dir.join("p-1.pem"))]) else {
        return;
    };
    assert!(out.status.success(), "{out:?}");
    // OpenSSL reads the key as PBES2-encrypted PKCS#8 with the passphrase,
    // finds the CA certificate's public key in it, and refuses a wrong one.
    let out = openssl(&["asn1parse", "-in", p(&dir.join("ca.key"))]).unwrap();
    let asn1 = String::from_utf8_lossy(&out.stdout);
    assert!(
        asn1.contains(":PBES2") && asn1.contains(":PBKDF2") && asn1.contains("aes-256-cbc"),
        "{asn1}"
    );
    let pass = format!("pass:{secret}");
    let out = openssl(&[
        "pkey",
        "-in",
        p(&dir.join("ca.key")),
        "-passin",
        &pass,
        "-pubout",
    ])
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let from_key = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = openssl(&["x509", "-in", p(&ca), "-noout", "-pubkey"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), from_key);
    let out = openssl(&[
        "pkey",
        "-in",
        p(&dir.join("ca.key")),
        "-passin",
        "pass:wrong",
        "-noout",
    ])
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn export_writes_a_bundle_openssl_opens_with_the_password_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = p(&dir);
    assert!(vigil(&["pki", "init", "--dir", d]).status.success());
    let out = vigil(&[
        "pki", "issue", "--dir", d, "--role", "analyst", "--id", "alice",
    ]);
    assert!(out.status.success(), "{out:?}");
    let export = |password: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args(["pki", "export", "--dir", d, "--id", "alice"]);
        cmd.env_remove("VIGIL_EXPORT_PASSPHRASE");
        if let Some(pw) = password {
            cmd.env("VIGIL_EXPORT_PASSPHRASE", pw);
        }
        cmd.stdin(std::process::Stdio::null()).output().unwrap()
    };
    // No password and no terminal: a usage error, nothing written.
    let out = export(None);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!dir.join("alice.p12").exists());
    let out = export(Some("correct horse battery"));
    assert!(out.status.success(), "{out:?}");
    let bundle = dir.join("alice.p12");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&bundle).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let b = p(&bundle);
    let Some(info) = openssl(&[
        "pkcs12",
        "-info",
        "-in",
        b,
        "-passin",
        "pass:correct horse battery",
        "-nodes",
    ]) else {
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&info.stdout),
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(info.status.success(), "{text}");
    assert!(text.contains("MAC: sha256"), "{text}");
    assert!(text.contains("PBES2, PBKDF2, AES-256-CBC"), "{text}");
    assert!(
        text.contains("CN=alice") || text.contains("CN = alice"),
        "{text}"
    );
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2, "{text}");
    // The key inside is the key on disk.
    let key = std::fs::read_to_string(dir.join("alice.key")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let text_flat: String = text.lines().collect();
    assert!(text_flat.contains(&key_body), "{text}");
    // A wrong password opens nothing.
    let wrong = openssl(&[
        "pkcs12",
        "-info",
        "-in",
        b,
        "-passin",
        "pass:wrong",
        "-nodes",
    ])
    .unwrap();
    assert!(!wrong.status.success());
}
