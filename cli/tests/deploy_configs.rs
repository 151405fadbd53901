//! The example configs in deploy/config/ load as they are, once their
//! absolute paths point at real files: no unknown key, no invalid value.

use std::path::{Path, PathBuf};

use vigil_pki::{Identity, Role, authority};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/config")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `name` into `dir` with the machine paths replaced by `dir`'s.
fn localised(dir: &Path, name: &str) -> PathBuf {
    let text = example(name)
        .replace("/etc/vigil/pki/", &format!("{}/pki/", dir.display()))
        .replace("/var/lib/", &format!("{}/state/", dir.display()));
    let settings = text.lines().filter(|l| !l.trim_start().starts_with('#'));
    for line in settings {
        assert!(!line.contains("/etc/") && !line.contains("/var/"), "{line}");
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn deploy_examples_load() {
    vigil_pki::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    authority::init(&pki, "example CA").unwrap();
    let san = vec!["mqtt.region.example".to_owned()];
    for (role, id) in [
        (Role::Broker, "broker-1"),
        (Role::Ops, "ops-1"),
        (Role::Post, "p-017"),
    ] {
        let sans = if role == Role::Post {
            Vec::new()
        } else {
            san.clone()
        };
        authority::issue(&pki, role, &Identity::new(id).unwrap(), &sans, 30, false).unwrap();
    }

    let broker = vigil_broker::BrokerConfig::load(&localised(tmp.path(), "broker.toml"))
        .unwrap_or_else(|e| panic!("broker.toml: {e}"));
    assert_eq!(broker.listen.port(), 8883);
    assert!(broker.metrics.is_some());

    let gateway = vigil_gateway::GatewayConfig::load(&localised(tmp.path(), "gateway.toml"))
        .unwrap_or_else(|e| panic!("gateway.toml: {e}"));
    assert_eq!(gateway.dc09.accounts.len(), 2);
    assert!(gateway.dc09.accounts[0].key.is_some());
    assert_eq!(gateway.push_cameras().unwrap().len(), 1);
    assert_eq!(
        gateway.mqtt_brokers().unwrap(),
        [
            ("mqtt-1.region.example".to_owned(), 8883),
            ("mqtt-2.region.example".to_owned(), 8883)
        ]
    );
    gateway.tls.load().expect("the gateway's certificate loads");

    let ops = vigil_ops::config::OpsConfig::load(&localised(tmp.path(), "ops.toml"))
        .unwrap_or_else(|e| panic!("ops.toml: {e}"));
    assert_eq!(ops.api.listen.port(), 50051);
    assert_eq!(ops.console.as_ref().map(|c| c.listen.port()), Some(8443));
    assert_eq!(ops.engine.zone_cameras.len(), 1);
    assert_eq!(ops.mqtt.share_group, None);
    assert_eq!(ops.mqtt.brokers().unwrap().len(), 2);
    ops.tls.load().expect("the ops certificate loads");
}
