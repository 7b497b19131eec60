//! `ot-client` checks document and client ids by the protocol crate's rule
//! before touching the network or its saved state (an id names files).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(args: &[&str], data_dir: &std::path::Path) -> (bool, String) {
    let binary = e2e_tests::ot_client_binary().unwrap();
    let out = Command::new(binary)
        .arg("--data-dir")
        .arg(data_dir)
        // Nothing listens there: a valid id fails later, on connecting.
        .args(["--server", "ws://127.0.0.1:9"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_ids_are_refused_by_the_protocol_rule_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (args, what) in [
        (
            vec!["--client-id", "../../escape", "cat", "notes"],
            "client id",
        ),
        (vec!["--client-id", "a.b", "cat", "notes"], "client id"),
        (vec!["cat", "a/b"], "document id"),
        (vec!["cat", ""], "document id"),
    ] {
        let (ok, stderr) = run(&args, dir.path());
        assert!(!ok, "{args:?}");
        assert!(
            stderr.contains(&format!("invalid {what}")),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "an invalid id created files"
    );
    // A valid id gets past the check (and fails on the closed port instead).
    let (ok, stderr) = run(&["--client-id", "Ann_1-x", "cat", "notes"], dir.path());
    assert!(!ok);
    assert!(!stderr.contains("invalid"), "{stderr}");
}
