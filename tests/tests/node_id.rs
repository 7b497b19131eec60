//! `server --node-id NAME` on real server processes: the name is stored in
//! the data dir at the first start; another name on that dir is refused
//! with a message naming both (exit status non-zero, nothing served); a
//! start without the flag runs as the stored node; a name that would not
//! make a link id (`r-NAME`) is refused by the flag's check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e_tests::{free_port, run_to_exit, server_binary, ServerProcess};

#[tokio::test]
async fn a_data_dir_belongs_to_one_node() {
    let bin = server_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = ServerProcess::start(&bin, data, free_port(), &["--node-id", "eu-1"])
        .await
        .unwrap();
    server.stop().unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("node-id")).unwrap(),
        "eu-1\n"
    );

    let refused = run_to_exit(data, &["--node-id", "us"]);
    assert!(!refused.status.success());
    // The failure is logged (stdout) as well as returned.
    let said = e2e_tests::output_text(&refused);
    assert!(
        said.contains("belongs to node `eu-1`") && said.contains("--node-id us"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("node-id")).unwrap(),
        "eu-1\n"
    );

    // Without the flag it runs as the stored node; with the same name too.
    for extra in [&[][..], &["--node-id", "eu-1"][..]] {
        let server = ServerProcess::start(&bin, data, free_port(), extra)
            .await
            .unwrap();
        server.stop().unwrap();
    }

    let invalid = run_to_exit(data, &["--node-id", "eu/1"]);
    assert_eq!(invalid.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("is not a node id"));
}
