//! The PostgreSQL store: the conformance suite, two nodes racing on one
//! document, restarts, migrations.

use std::sync::Arc;

use super::test_db::TestSchema;
use crate::storage::conformance;
use crate::storage::{Storage, StorageError};

#[test]
fn round_trip() {
    let schema = TestSchema::new();
    conformance::round_trip(&schema.open());
}

#[test]
fn gaps_write_nothing() {
    let schema = TestSchema::new();
    conformance::gaps_write_nothing(&schema.open());
}

#[test]
fn two_nodes_commit_one_revision_and_exactly_one_wins() {
    let schema = TestSchema::new();
    let a: Arc<dyn Storage> = Arc::new(schema.open());
    let b: Arc<dyn Storage> = Arc::new(schema.open());
    conformance::concurrent_commits_at_one_revision(a, b);
}

#[test]
fn delete_and_recreate() {
    let schema = TestSchema::new();
    conformance::delete_and_recreate(&schema.open());
}

#[test]
fn region_records() {
    let schema = TestSchema::new();
    conformance::region_records(&schema.open());
}

#[test]
fn revocations() {
    let schema = TestSchema::new();
    conformance::revocations(&schema.open());
}

#[test]
fn large_document_and_snapshots() {
    let schema = TestSchema::new();
    conformance::large_document_and_snapshots(&schema.open());
}

#[test]
fn a_restart_keeps_everything_and_the_epoch() {
    let schema = TestSchema::new();
    let first = schema.open();
    let epoch = first.epoch();
    conformance::round_trip(&first);
    drop(first);
    let second = schema.open();
    assert_eq!(second.epoch(), epoch, "every ack was durable: same epoch");
    assert_eq!(second.last_rev("d").unwrap(), 6);
    assert!(second.load("d").unwrap().is_some());
}

#[test]
fn a_schema_newer_than_this_server_is_refused_naming_both_versions() {
    let schema = TestSchema::new();
    let storage = schema.open();
    storage
        .block_on(async {
            let client = super::connection(&storage.commits).await?;
            client
                .execute(
                    "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                    &[],
                )
                .await?;
            Ok::<_, StorageError>(())
        })
        .unwrap();
    drop(storage);
    let err = super::PgStorage::open(&super::PgOptions {
        url: schema.url.clone(),
        commit_connections: 1,
        read_connections: 1,
        timeout: std::time::Duration::from_secs(5),
        ca_file: None,
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::SchemaTooNew { .. }), "{text}");
    assert!(
        text.contains("99") && text.contains(&super::schema::SCHEMA_VERSION.to_string()),
        "{text}"
    );
}

#[test]
fn nodes_starting_together_migrate_once() {
    let schema = TestSchema::new();
    let url = schema.url.clone();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                super::PgStorage::open(&super::PgOptions {
                    url,
                    commit_connections: 1,
                    read_connections: 1,
                    timeout: std::time::Duration::from_secs(10),
                    ca_file: None,
                })
                .map(|s| (s.epoch(), s.migrations_run()))
            })
        })
        .collect();
    let opened: Vec<(u64, usize)> = opened
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert!(
        opened.windows(2).all(|w| w[0].0 == w[1].0),
        "one epoch: {opened:?}"
    );
    let ran: usize = opened.iter().map(|(_, ran)| ran).sum();
    assert_eq!(
        ran,
        super::schema::MIGRATION_COUNT,
        "each migration ran once: {opened:?}"
    );
}

#[test]
fn an_unreachable_database_is_a_typed_error_within_the_timeout() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let err = super::PgStorage::open(&super::PgOptions {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        commit_connections: 1,
        read_connections: 1,
        timeout: std::time::Duration::from_secs(2),
        ca_file: None,
    })
    .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn an_ops_time_is_the_databases_clock_not_the_nodes() {
    let schema = TestSchema::new();
    let storage = schema.open();
    let mut h = ot_core::history::DocumentHistory::new();
    let op = ot_core::Operation::insert_at(0, 0, "x").unwrap();
    let ot_core::history::Receipt::Applied { applied, received } =
        h.receive("w", 1, 0, op).unwrap()
    else {
        panic!("not applied")
    };
    // A node whose clock is far off (here: 1970).
    let item = crate::storage::WriteItem::Op {
        doc: "d".into(),
        op: crate::storage::StoredOp::from_applied(&applied, received, 5),
        len_after: 1,
    };
    storage.commit(&[item]).unwrap();
    let now = crate::storage::rows::now_ms();
    let stored = storage.ops("d", 0, 1).unwrap()[0].time_ms;
    assert!((now - stored).abs() < 60_000, "stored {stored}, now {now}");
}

#[test]
fn an_epoch_bump_raises_the_epoch_every_node_then_reads() {
    let schema = TestSchema::new();
    let storage = schema.open();
    let before = storage.epoch();
    storage
        .commit(&[crate::storage::WriteItem::DeleteDoc {
            doc: "gone".into(),
            epoch: before + 1_000_000,
        }])
        .unwrap();
    let bumped = storage.bump_epoch().unwrap();
    assert!(
        bumped > before + 1_000_001,
        "{before} -> {bumped}: past every deleted epoch"
    );
    drop(storage);
    assert_eq!(schema.open().epoch(), bumped);
}

/// A commit of several documents whose heads other nodes moved first names
/// every one of them, and writes nothing (not even the documents that were
/// not behind).
#[test]
fn a_commit_names_every_document_another_node_moved_first() {
    use crate::storage::conformance::{apply, ins};
    use ot_core::history::DocumentHistory;
    let schema = TestSchema::new();
    let (this, other) = (schema.open(), schema.open());
    let (mut x, mut y, mut z) = (
        DocumentHistory::new(),
        DocumentHistory::new(),
        DocumentHistory::new(),
    );
    // The other node writes revision 1 of x and y.
    let mut ox = DocumentHistory::new();
    let mut oy = DocumentHistory::new();
    other
        .commit(&[
            apply(&mut ox, "x", "o", 1, 0, ins(0, 0, "o")),
            apply(&mut oy, "y", "o", 1, 0, ins(0, 0, "o")),
        ])
        .unwrap();
    // This node, which has not seen them, writes revision 1 of x, y and z.
    let err = this
        .commit(&[
            apply(&mut z, "z", "t", 1, 0, ins(0, 0, "t")),
            apply(&mut y, "y", "t", 1, 0, ins(0, 0, "t")),
            apply(&mut x, "x", "t", 1, 0, ins(0, 0, "t")),
        ])
        .unwrap_err();
    let mut lost = err.lost_races().unwrap_or_default();
    lost.sort();
    assert_eq!(lost, ["x", "y"], "{err}");
    assert!(matches!(err, StorageError::LostRaces { .. }), "{err}");
    assert_eq!(
        this.last_rev("z").unwrap(),
        0,
        "nothing of the commit was written"
    );
    assert_eq!(this.text_at("x", 1).unwrap().as_deref(), Some("o"));
    // One document behind: a `Gap` naming it.
    let err = this
        .commit(&[apply(
            &mut DocumentHistory::new(),
            "x",
            "t",
            1,
            0,
            ins(0, 0, "t"),
        )])
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::Gap { doc, expected: 2, found: 1 } if doc == "x"),
        "{err}"
    );
}

#[test]
fn node_settings_are_stored_once_and_shared_by_every_process() {
    let schema = TestSchema::new();
    let a = schema.open();
    let b = schema.open();
    assert_eq!(a.node_setting("node_id", None).unwrap(), None);
    assert_eq!(
        a.node_setting("node_id", Some("eu")).unwrap().as_deref(),
        Some("eu")
    );
    // Another process proposing another value gets the stored one.
    assert_eq!(
        b.node_setting("node_id", Some("us")).unwrap().as_deref(),
        Some("eu")
    );
    assert_eq!(
        b.node_setting("node_id", None).unwrap().as_deref(),
        Some("eu")
    );
    // Settings are apart from each other, and survive a restart.
    assert_eq!(b.node_setting("link_key", None).unwrap(), None);
    drop((a, b));
    let c = schema.open();
    assert_eq!(
        c.node_setting("node_id", None).unwrap().as_deref(),
        Some("eu")
    );
    // The node id rules on top: another name is refused, naming both.
    let refused = crate::node_id::settle_in_storage(&c, Some("us")).unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("`eu`") && message.contains("us"),
        "{message}"
    );
    assert_eq!(
        crate::node_id::settle_in_storage(&c, None).unwrap(),
        Some(Some("eu".to_owned()))
    );
}
