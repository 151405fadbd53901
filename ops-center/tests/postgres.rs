//! The PostgreSQL backend against a real server the test starts itself:
//! the same behaviour suite as SQLite's, each case on a fresh database,
//! plus what only a server can do (a restarted server, a bad URL).

use std::sync::Arc;

use vigil_ops::store::{Backend, PostgresBackend, Readers, StoreError, suite};
use vigil_tests::postgres::Postgres;

#[test]
fn the_store_suite_passes_on_postgresql() {
    let Some(pg) = Postgres::start() else { return };
    for (name, case) in suite::CASES {
        let backend = PostgresBackend::open(&pg.create_db()).unwrap();
        eprintln!("store suite on postgresql: {name}");
        case(&backend);
    }
}

#[test]
fn migrations_run_once_and_a_newer_schema_is_refused() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    PostgresBackend::open(&url).unwrap();
    // Opening again finds the schema current.
    PostgresBackend::open(&url).unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute("UPDATE vigil_schema SET version = version + 1")
        .unwrap();
    let err = PostgresBackend::open(&url).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
}

#[test]
fn bad_urls_and_unreachable_servers_are_clear_errors() {
    for (url, want) in [
        ("postgresql://u@host:5432/db", "sslmode=disable"),
        (
            "postgresql://u@/db?host=/nonexistent-dir&port=1",
            "unavailable",
        ),
        ("postgresql://u@/db?port=notaport", "store url"),
    ] {
        let err = PostgresBackend::open(url).unwrap_err().to_string();
        assert!(err.contains(want), "{url}: {err} should mention {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_recover_after_the_server_restarts() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let url = pg.create_db();
    let backend: Arc<dyn Backend> = Arc::new(PostgresBackend::open(&url).unwrap());
    let readers = Readers::new(backend.clone(), 2);
    assert_eq!(readers.read(|s| s.event_count()).await.unwrap(), 0);

    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    // The pooled connection died with the old server: the read says
    // UNAVAILABLE (and the pool drops it), the next opens a fresh one.
    let first = readers.read(|s| s.event_count()).await;
    assert!(
        matches!(first, Err(StoreError::Unavailable(_))),
        "{first:?}"
    );
    assert_eq!(readers.read(|s| s.event_count()).await.unwrap(), 0);
    drop(pg);
}

#[test]
fn the_leader_lease_fences_a_deposed_writer() {
    use std::time::Duration;
    let Some(pg) = Postgres::start() else { return };
    let backend = PostgresBackend::open(&pg.create_db()).unwrap();
    let ttl = Duration::from_secs(2);
    let a = backend.try_lead("a", ttl).unwrap().expect("a free lease");
    assert_eq!(a.epoch, 1);
    assert_eq!(backend.try_lead("b", ttl).unwrap(), None, "a holds it");
    let mut writer_a = backend.fenced_writer(a).unwrap();
    let tx = writer_a.begin().unwrap();
    tx.commit().unwrap();
    // A live leader renews in every transaction; one that stops lets it
    // expire, and then another takes it with a new epoch.
    std::thread::sleep(ttl + Duration::from_millis(500));
    let b = backend.try_lead("b", ttl).unwrap().expect("expired lease");
    assert_eq!(b.epoch, 2);
    let (holder, epoch, live) = backend.leader().unwrap().unwrap();
    assert_eq!((holder.as_str(), epoch, live), ("b", 2, true));
    // The deposed writer cannot commit anything any more.
    let err = writer_a.begin().err().expect("a is fenced off");
    assert!(matches!(err, StoreError::NotLeader(_)), "{err}");
    let mut writer_b = backend.fenced_writer(b).unwrap();
    writer_b.begin().unwrap().commit().unwrap();
}
