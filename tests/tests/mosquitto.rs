//! Broker interchangeability: the same end-to-end flow as `flow.rs` with
//! Debian's Mosquitto in place of `vigil broker` — mutual TLS with the
//! region's CA and CRL, identity from the certificate's CN, client id
//! forced to that identity, and a pattern ACL equivalent to ours (the
//! config `deploy/mosquitto/` documents).
//!
//! Skipped, with a notice, when `mosquitto` is not installed, unless
//! `VIGIL_REQUIRE_MOSQUITTO` is set (CI sets it), in which case a missing
//! Mosquitto fails the test.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use vigil_ops::store::Store;
use vigil_pki::{Identity, authority};
use vigil_proto::{
    Message,
    v1::{AlarmSignal, Event, EventBatch, event},
};
use vigil_sim::panel::{self as simulator, PanelConfig};
use vigil_tests::{
    Region,
    faults::{self, Accounting, eventually_within},
    open_store,
};

const MOSQUITTO: &str = "mosquitto";

/// The ACL: what `vigil broker` enforces, as Mosquitto `acl_file` rules.
/// `%u` is the certificate CN (`use_identity_as_username`).
const ACL: &str = "\
# Posts: publish their own events and status, read their own receipts and
# commands.
pattern write vigil/v1/posts/%u/events
pattern write vigil/v1/posts/%u/status
pattern read vigil/v1/posts/%u/receipts
pattern read vigil/v1/posts/%u/commands

# The operations center (one `user` block per ops identity). Reading covers
# the shared subscription $share/GROUP/...: Mosquitto checks delivery
# against the message's topic.
user ops-1
topic read vigil/v1/posts/+/events
topic read vigil/v1/posts/+/status
topic write vigil/v1/posts/+/receipts
topic write vigil/v1/posts/+/commands
";

/// The stricter alternative docs/broker.md describes: one `user` block per
/// post instead of patterns, so an identity that is not listed (an
/// analyst's certificate, say) may do nothing at all.
fn strict_acl(posts: &[&str]) -> String {
    let mut acl = String::new();
    for post in posts {
        acl.push_str(&format!(
            "user {post}\n\
             topic write vigil/v1/posts/{post}/events\n\
             topic write vigil/v1/posts/{post}/status\n\
             topic read vigil/v1/posts/{post}/receipts\n\
             topic read vigil/v1/posts/{post}/commands\n\n"
        ));
    }
    let ops = ACL.split_once("user ops-1").expect("ops block").1;
    acl.push_str("user ops-1");
    acl.push_str(ops);
    acl
}

fn mosquitto_available() -> bool {
    match Command::new(MOSQUITTO).arg("-h").output() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("VIGIL_REQUIRE_MOSQUITTO").is_none(),
                "VIGIL_REQUIRE_MOSQUITTO is set but `mosquitto` is not installed"
            );
            eprintln!(
                "SKIPPED: `mosquitto` is not installed (apt-get install mosquitto \
                 mosquitto-clients); set VIGIL_REQUIRE_MOSQUITTO=1 to make this a failure"
            );
            false
        }
        Err(e) => panic!("mosquitto: {e}"),
    }
}

/// Mosquitto as a child process, killed when dropped.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    fn start(region: &Region, acl_rules: &str) -> Self {
        // A port free a moment ago; Mosquitto takes it at once.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(region, acl_rules, port)
    }

    /// Starts Mosquitto on `port` (again, after a `kill -9`).
    fn start_on(region: &Region, acl_rules: &str, port: u16) -> Self {
        let pki = region.path("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let acl = region.path("mosquitto.acl");
        std::fs::write(&acl, acl_rules).unwrap();
        // Per port: two Mosquittos may run side by side.
        let log = region.path(&format!("mosquitto-{port}.log"));
        let conf = region.path(&format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\n\
                 allow_anonymous false\n\
                 acl_file {acl}\n\
                 persistence false\n\
                 log_type all\n\
                 log_dest file {log}\n\
                 # Stay the user who runs the test: the PKI files are private to it.\n\
                 user {user}\n\
                 listener {port} 127.0.0.1\n\
                 cafile {ca}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 crlfile {crl}\n\
                 require_certificate true\n\
                 use_identity_as_username true\n\
                 use_username_as_clientid true\n",
                acl = acl.display(),
                log = log.display(),
                user = whoami(),
                ca = p("ca.pem"),
                cert = p("broker-1.pem"),
                key = p("broker-1.key"),
                crl = p("crl.pem"),
            ),
        )
        .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto");
        let mut broker = Self {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(broker.addr).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("mosquitto exited ({status}): {}", broker.log_text());
            }
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// `kill -9`, then reap.
    fn kill9(mut self) {
        self.child.kill().expect("kill -9 mosquitto");
        self.child.wait().expect("reap mosquitto");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Publishes `payload` with `mosquitto_pub` as `id` (its certificate) to
/// `topic` at QoS 1; returns once the broker acknowledged it.
fn mosquitto_pub(region: &Region, broker: SocketAddr, id: &str, topic: &str, payload: &[u8]) {
    let file = region.path("forged.bin");
    std::fs::write(&file, payload).unwrap();
    let pki = region.path("pki");
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .arg("--cafile")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{id}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{id}.key")))
        .args(["-i", id, "-q", "1", "-t", topic, "-f"])
        .arg(&file)
        .status()
        .expect("run mosquitto_pub (package mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub: {status}");
}

async fn panel(dc09: SocketAddr, account: &str, count: u64, first_seq: u16) -> simulator::Summary {
    let mut config = PanelConfig::new(dc09.to_string(), account);
    config.count = Some(count);
    config.interval = Duration::from_millis(5);
    config.first_seq = first_seq;
    config.seed = Some(u64::from(first_seq));
    let summary = simulator::run(config, CancellationToken::new())
        .await
        .expect("panel runs");
    assert_eq!(summary.counts.failed, 0, "{summary}");
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_runs_through_mosquitto_with_an_equivalent_acl() {
    if mosquitto_available() {
        // The limit of an ACL file: pattern rules cannot see the role, so
        // an analyst's certificate can pose as a post named by its CN.
        flow(ACL, AnalystPosing::Stored).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_user_block_per_post_other_identities_can_do_nothing() {
    if mosquitto_available() {
        flow(&strict_acl(&["p-1", "p-2", "p-3"]), AnalystPosing::Refused).await;
    }
}

/// What becomes of an analyst's certificate publishing as a post.
#[derive(Debug, PartialEq, Eq)]
enum AnalystPosing {
    Stored,
    Refused,
}

async fn flow(acl: &str, analyst: AnalystPosing) {
    let region = Region::new();
    // A post whose certificate is revoked before Mosquitto starts.
    let pki = region.path("pki");
    authority::issue(
        &pki,
        vigil_pki::Role::Post,
        &Identity::new("p-3").unwrap(),
        &[],
        2,
        false,
    )
    .unwrap();
    authority::revoke(&pki, &Identity::new("p-3").unwrap()).unwrap();
    authority::issue(
        &pki,
        vigil_pki::Role::Analyst,
        &Identity::new("alice").unwrap(),
        &[],
        2,
        false,
    )
    .unwrap();
    let broker = Mosquitto::start(&region, acl);
    let ops = region.start_ops(broker.addr).await;
    let gw1 = region.start_gateway("p-1", broker.addr, "").await;
    let gw2 = region.start_gateway("p-2", broker.addr, "").await;

    // Panel alarm → gateway → Mosquitto → ops store → receipt → outbox empty.
    let (s1, s2) = tokio::join!(
        panel(gw1.dc09, "1234", 40, 1),
        panel(gw2.dc09, "1234", 40, 500)
    );
    for gw in [&gw1, &gw2] {
        eventually_within(
            "receipts through Mosquitto",
            Duration::from_secs(30),
            || {
                let (last, receipted, depth) = gw.outbox();
                last > 0 && receipted == last && depth == 0
            },
        )
        .await;
    }

    // p-2 tries to speak for p-1: a well-formed batch on p-1's topic.
    // Mosquitto acknowledges (MQTT 3.1.1 has no refusal) and drops it.
    let (last1, ..) = gw1.outbox();
    let forged = EventBatch {
        post_id: "p-1".into(),
        events: vec![Event {
            post_id: "p-1".into(),
            seq: last1 + 1,
            description: "forged by p-2".into(),
            body: Some(event::Body::Alarm(AlarmSignal {
                account: "1234".into(),
                raw_data: "#1234|Nri1/BA001".into(),
                ..Default::default()
            })),
            ..Default::default()
        }],
    };
    mosquitto_pub(
        &region,
        broker.addr,
        "p-2",
        "vigil/v1/posts/p-1/events",
        &forged.encode_to_vec(),
    );
    // An analyst's certificate publishing as a post of its own name.
    let posing = EventBatch {
        post_id: "alice".into(),
        events: vec![Event {
            post_id: "alice".into(),
            seq: 1,
            description: "posted by an analyst".into(),
            ..Default::default()
        }],
    };
    mosquitto_pub(
        &region,
        broker.addr,
        "alice",
        "vigil/v1/posts/alice/events",
        &posing.encode_to_vec(),
    );
    // Then p-1's own next alarm, which must go through (after the forgery,
    // which Mosquitto handled first: it acknowledged it already).
    let s1b = panel(gw1.dc09, "1234", 3, 100).await;
    eventually_within(
        "p-1's next alarms receipted",
        Duration::from_secs(30),
        || {
            let (last, receipted, depth) = gw1.outbox();
            last > last1 && receipted == last && depth == 0
        },
    )
    .await;

    // A revoked post cannot connect: its gateway ACKs its panel (the
    // outbox holds the alarm) but every connection attempt fails.
    let gw3 = region.start_gateway("p-3", broker.addr, "").await;
    let s3 = panel(gw3.dc09, "1234", 2, 1).await;
    assert!(s3.counts.acked > 0);
    eventually_within(
        "p-3's connection attempts refused",
        Duration::from_secs(30),
        || gw3.metrics.publisher.disconnects.load(Ordering::Relaxed) >= 2,
    )
    .await;
    assert_eq!(gw3.metrics.publisher.connects.load(Ordering::Relaxed), 0);
    assert_eq!(gw3.outbox().1, 0, "nothing of p-3 receipted");

    let (last1, ..) = gw1.outbox();
    let (last2, ..) = gw2.outbox();
    for gw in [gw1, gw2, gw3] {
        gw.stop().await;
    }
    let data = ops.stop().await;
    let log = broker.log_text();
    drop(broker);

    let store = open_store(&data);
    let mut report = Accounting::new("flow through Mosquitto", 0);
    report.add_post(&store, "p-1", &[s1, s1b], Some(last1));
    report.add_post(&store, "p-2", &[s2], Some(last2));
    report.check();
    assert!(
        store.events("p-1", 1, 100_000).unwrap().iter().all(|e| e
            .event
            .as_ref()
            .unwrap()
            .description
            != "forged by p-2"),
        "the forged event reached the store"
    );
    assert!(store.events("p-3", 1, 10).unwrap().is_empty());
    // p-1's alarms after alice's publish went through, so hers was handled.
    let alice = store.events("alice", 1, 10).unwrap();
    match analyst {
        AnalystPosing::Stored => assert_eq!(alice.len(), 1, "the ACL file's known limit"),
        AnalystPosing::Refused => {
            assert!(alice.is_empty(), "an analyst spoke as a post");
            assert!(log.contains("Denied PUBLISH from alice"), "{log}");
        }
    }
    // p-3's certificate is the only one that fails verification: revoked.
    assert!(
        log.contains("certificate verify failed"),
        "Mosquitto refused the revoked certificate:\n{log}"
    );
    assert!(
        log.contains("Denied PUBLISH from p-2"),
        "Mosquitto logged the refusal:\n{log}"
    );
}

/// The fault suite's broker scenario with Mosquitto: `kill -9` at random
/// points while panels send (Mosquitto runs without persistence, so each
/// kill loses whatever it held), restarted on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_killed_at_random_points_loses_nothing() {
    if !mosquitto_available() {
        return;
    }
    let (seed, mut rng) = faults::seeded_rng("mosquitto kill -9");
    let region = Region::new();
    let mut broker = Mosquitto::start(&region, ACL);
    let addr = broker.addr;
    let ops = region.start_ops(addr).await;
    let accounts = ["1234", "1235"];
    let gw = region
        .start_gateway("p-1", addr, &faults::accounts_toml(&accounts))
        .await;
    let count = faults::iterations(150, 2000);
    let panels: Vec<_> = accounts
        .iter()
        .enumerate()
        .map(|(i, account)| {
            let interval = Duration::from_millis(rng.random_range(15..30));
            let config = faults::fault_panel(gw.dc09, account, count, interval, rng.random());
            faults::spawn_panel(faults::vary(config, i))
        })
        .collect();

    let kills = faults::iterations(4, 40);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        broker.kill9();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        broker = Mosquitto::start_on(&region, ACL, addr.port());
    }

    let summaries = faults::join_panels(panels).await;
    eventually_within("backlog receipted", Duration::from_secs(90), || {
        let (last, receipted, depth) = gw.outbox();
        last > 0 && receipted == last && depth == 0
    })
    .await;
    let (last, ..) = gw.outbox();
    let resends = gw.metrics.publisher.resends.load(Ordering::Relaxed);
    gw.stop().await;
    let data = ops.stop().await;
    drop(broker);

    let store = open_store(&data);
    let mut report = Accounting::new("mosquitto kill -9", seed);
    report.note(format!(
        "{kills} kill -9 of mosquitto, each restarted on the same port; the gateway re-sent {resends} times"
    ));
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
}

/// Two different brokers in one region: `vigil broker` and Mosquitto. The
/// operations center hears both; p-1 prefers Mosquitto, p-2 the other.
/// Mosquitto is killed with SIGKILL mid-ingest and not restarted: p-1
/// fails over, and every ACKed alarm of both posts is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_beside_vigil_broker_killed_while_its_posts_fail_over() {
    if !mosquitto_available() {
        return;
    }
    let (seed, mut rng) = faults::seeded_rng("mosquitto beside vigil broker");
    let region = Region::new();
    let mosquitto = Mosquitto::start(&region, ACL);
    let ours = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let (m, v) = (mosquitto.addr, ours.addr());
    let ops = region.start_ops_on(&[m, v], "").await;
    let posts = [
        ("p-1", ["1234", "1235"], [m, v]),
        ("p-2", ["2234", "2235"], [v, m]),
    ];
    let count = faults::iterations(150, 1500);
    let mut gateways = Vec::new();
    let mut panels = Vec::new();
    for (post, accounts, brokers) in posts {
        let gw = region
            .start_gateway_on(post, &brokers, 5, &faults::accounts_toml(&accounts))
            .await;
        panels.push(faults::spawn_fleet(
            gw.dc09,
            &accounts,
            count,
            15..30,
            panels.len(),
            &mut rng,
            |_, _| {},
        ));
        gateways.push(gw);
    }
    for gw in &gateways {
        eventually_within(
            "receipts through each gateway's first broker",
            Duration::from_secs(30),
            || gw.outbox().1 > 0,
        )
        .await;
        assert_eq!(gw.metrics.publisher.broker.load(Ordering::Relaxed), 0);
    }

    tokio::time::sleep(faults::ms(&mut rng, 200..1200)).await;
    mosquitto.kill9();
    let p1 = &gateways[0].metrics.publisher;
    eventually_within(
        "p-1 on vigil broker, its second",
        Duration::from_secs(30),
        || p1.failovers.load(Ordering::Relaxed) > 0 && p1.broker.load(Ordering::Relaxed) == 1,
    )
    .await;

    let mut summaries = Vec::new();
    for mine in panels {
        summaries.push(faults::join_panels(mine).await);
    }
    let mut lasts = Vec::new();
    for gw in &gateways {
        eventually_within("backlog receipted", Duration::from_secs(90), || {
            let (last, receipted, depth) = gw.outbox();
            last > 0 && receipted == last && depth == 0
        })
        .await;
        lasts.push(gw.outbox().0);
    }
    // Only vigil broker is left: index 1 of p-1's list, 0 of p-2's.
    for (gw, index) in gateways.iter().zip([1, 0]) {
        assert_eq!(gw.metrics.publisher.broker.load(Ordering::Relaxed), index);
    }
    let note = format!(
        "p-1 failed over {} times",
        p1.failovers.load(Ordering::Relaxed)
    );
    for gw in gateways {
        gw.stop().await;
    }
    let data = ops.stop().await;
    ours.stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("mosquitto beside vigil broker, killed", seed);
    report.note(note);
    for (((post, _, _), summaries), last) in posts.iter().zip(&summaries).zip(lasts) {
        report.add_post(&store, post, summaries, Some(last));
    }
    report.check();
}

#[test]
fn the_documented_acl_is_the_tested_one() {
    let documented = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/vigil.acl"),
    )
    .expect("deploy/mosquitto/vigil.acl");
    let rules = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(rules(&documented), rules(ACL));
}
