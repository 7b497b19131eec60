//! The real `ot-client` binary against a server with authentication on:
//! `--token-file` (read again on every run), `OT_TOKEN`, the one-line
//! failures scripts can tell apart ("token expired" for 401), a read-only
//! token's edit refused with `forbidden`, and `watch` ending with "token
//! expired" when its token is revoked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{cli, run, start, LIMIT};
use e2e_tests::{mint_test_token, start_server_with};
use ot_protocol::Access;
use tokio::io::{AsyncBufReadExt, BufReader};

const SECRET: &[u8] = b"the-client-cli-test-secret-of-32-bytes-or-more";

/// A token of the one user of this test ("ann": a writer id is bound to its
/// key and the token's subject); `_label` only names it at the call site.
fn token(docs: &[&str], access: Access, _label: &str, ttl: i64) -> String {
    mint_test_token(SECRET, "ann", docs, access, ttl)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripting_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write(&secret, std::str::from_utf8(SECRET).unwrap());
    let server = start_server_with(&dir.path().join("data"), |c| {
        c.auth_secret_file = Some(secret.clone());
        c.auth_leeway = 0;
    })
    .await
    .unwrap();
    let ws = format!("ws://{}", server.addr);
    let data = dir.path().join("client");
    let token_file = dir.path().join("token");
    let ot = |args: &[&str]| {
        let mut cmd = cli(&data, &ws);
        cmd.env_remove("OT_TOKEN").env_remove("OT_TOKEN_FILE");
        cmd.args(args);
        cmd
    };

    // No token: a one-line failure that names it.
    let r = run(ot(&["append", "memo", "x"])).await;
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("token expired or not accepted"), "{r:?}");
    let r = run(ot(&["cat", "memo"])).await;
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("token expired or not accepted"), "{r:?}");

    // With a token file: edits and reads work.
    write(&token_file, &token(&["memo"], Access::Write, "w1", 3600));
    let tf = token_file.to_str().unwrap();
    let r = run(ot(&["--token-file", tf, "append", "memo", "hello"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = run(ot(&["--token-file", tf, "cat", "memo"])).await;
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "hello"), "{r:?}");
    // The token from the environment works too.
    let mut cmd = ot(&["cat", "memo"]);
    cmd.env("OT_TOKEN", token(&["memo"], Access::Read, "env", 3600));
    let r = run(cmd).await;
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "hello"), "{r:?}");

    // An expired token in the file: "token expired"; the file is read again
    // on the next run, so a renewed one works at once.
    write(&token_file, &token(&["memo"], Access::Write, "old", -10));
    let r = run(ot(&["--token-file", tf, "append", "memo", " again"])).await;
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("token expired"), "{r:?}");
    write(&token_file, &token(&["memo"], Access::Write, "w2", 3600));
    let r = run(ot(&["--token-file", tf, "sync", "memo"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = run(ot(&["--token-file", tf, "cat", "memo"])).await;
    assert_eq!(r.stdout, "hello", "{r:?}");

    // A token for another document: refused (403).
    write(&token_file, &token(&["other"], Access::Write, "w3", 3600));
    let r = run(ot(&["--token-file", tf, "cat", "memo"])).await;
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("forbidden"), "{r:?}");

    // A read-only token: the edit is refused with `forbidden`, nothing changes.
    let reader_data = dir.path().join("reader");
    let mut cmd = cli(&reader_data, &ws);
    cmd.env("OT_TOKEN", token(&["memo"], Access::Read, "r1", 3600))
        .args(["append", "memo", " nope"]);
    let r = run(cmd).await;
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("forbidden"), "{r:?}");
    write(&token_file, &token(&["memo"], Access::Read, "r2", 3600));
    let r = run(ot(&["--token-file", tf, "cat", "memo"])).await;
    assert_eq!(r.stdout, "hello", "{r:?}");

    // `watch` ends with "token expired" when its token expires.
    write(&token_file, &token(&["memo"], Access::Read, "short", 2));
    let mut watch = start(ot(&["--token-file", tf, "watch", "memo"]));
    let stderr = watch.stderr.take().unwrap();
    let status = tokio::time::timeout(LIMIT, watch.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut lines = BufReader::new(stderr).lines();
    let mut said = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
    {
        said.push_str(&line);
    }
    assert!(said.contains("token expired"), "{said}");
    server.stop().await.unwrap();
}
