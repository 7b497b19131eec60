//! Storage faults with the real `server` binary: a second process on the
//! same data directory, a full disk (a size-limited tmpfs the test mounts;
//! skipped with a message unless root), and a data directory restored from
//! a copy. docs/attacks.md ("Storage faults") lists them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use e2e_tests::attack::RssBound;
use e2e_tests::tmpfs::{fill_with_ballast, Tmpfs};
use e2e_tests::{doc_state, free_port, metric_value, server_binary, ServerProcess, WsClient};
use ot_core::Operation;

/// Generous bound for one wait on the server.
const WAIT: Duration = Duration::from_secs(20);

/// Type `token` at the end of the client's text and wait for its ack.
async fn type_acked(c: &mut WsClient, token: &str) -> Result<()> {
    type_token(c, token).await?;
    c.pump_until(WAIT, |c| c.client().all_saved())
        .await
        .with_context(|| format!("ack of {token}"))
}

/// Type `token` at the end of the client's text (not waiting).
async fn type_token(c: &mut WsClient, token: &str) -> Result<()> {
    let len = c.client().text().len_chars();
    c.edit(&Operation::insert_at(len, len, token)?).await
}

fn storage_errors(c: &WsClient) -> usize {
    c.errors
        .iter()
        .filter(|e| e.code.as_str() == "storage_error")
        .count()
}

/// Run a second server on `data_dir`; it must exit by itself (bounded):
/// returns its exit code and its stderr.
fn run_second_server(bin: &Path, data_dir: &Path) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(bin)
        .arg("--addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the second server")?;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            let output = child.wait_with_output()?;
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            return Ok((output.status.code(), text));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("the second server did not exit within {WAIT:?}")
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() -> Result<()> {
    let bin = server_binary().expect("building the server binary");
    let dir = tempfile::TempDir::new()?;
    let first = ServerProcess::start(&bin, dir.path(), free_port(), &[]).await?;
    let mut c = WsClient::join(first.addr, "locked", "writer").await?;
    type_acked(&mut c, "one ").await?;
    let memory = RssBound::start(first.child.id())?;

    let bin2 = bin.clone();
    let data = dir.path().to_owned();
    let (code, output) =
        tokio::task::spawn_blocking(move || run_second_server(&bin2, &data)).await??;
    assert!(
        code.is_some_and(|code| code != 0),
        "the second server must fail: {code:?}\n{output}"
    );
    assert!(
        output.contains(&dir.path().display().to_string())
            && output.contains("in use by another server process"),
        "the message names the directory and the other server:\n{output}"
    );

    // The first one is untouched: it acks, and the stored text is right.
    type_acked(&mut c, "two").await?;
    memory.check().await?;
    let (rev, text) = doc_state(first.addr, "locked").await?;
    assert_eq!((rev, text.as_str()), (2, "one two"));
    Ok(())
}

/// Each token exactly once in `text`.
fn assert_once(text: &str, tokens: &[String]) {
    for token in tokens {
        assert_eq!(
            text.matches(token.as_str()).count(),
            1,
            "{token} in {text:?}"
        );
    }
}

/// Type tokens until one gets `storage_error` (the disk is full); returns
/// the tokens acked before it and the failed one. Bounded.
async fn type_until_storage_error(c: &mut WsClient, prefix: &str) -> Result<(Vec<String>, String)> {
    let before = storage_errors(c);
    let mut acked = Vec::new();
    for n in 0..2000 {
        let token = format!("«{prefix}{n}»");
        type_token(c, &token).await?;
        c.pump_until(WAIT, |c| {
            c.client().all_saved() || storage_errors(c) > before
        })
        .await?;
        if storage_errors(c) > before {
            return Ok((acked, token));
        }
        acked.push(token);
    }
    bail!("no storage_error after 2000 commits on a full disk")
}

#[tokio::test]
async fn a_full_disk_gives_storage_error_loses_nothing_and_recovers_by_itself() -> Result<()> {
    let tmpfs = match Tmpfs::mount(16 * 1024) {
        Ok(tmpfs) => tmpfs,
        Err(e) => {
            eprintln!("SKIPPED a_full_disk_…: cannot mount a small tmpfs ({e:#}); run as root to test a full disk");
            return Ok(());
        }
    };
    let bin = server_binary().expect("building the server binary");
    let data = tmpfs.path().join("data");
    let ballast = tmpfs.path().join("ballast");
    let mut server = ServerProcess::start(&bin, &data, free_port(), &[]).await?;
    let mut c = WsClient::join(server.addr, "full", "writer").await?;
    let mut acked: Vec<String> = Vec::new();
    for n in 0..5 {
        let token = format!("«a{n}»");
        type_acked(&mut c, &token).await?;
        acked.push(token);
    }

    // Round 1: the disk fills up; space returns without a restart.
    let memory = RssBound::start(server.child.id())?;
    fill_with_ballast(&ballast)?;
    let (more, failed) = type_until_storage_error(&mut c, "b").await?;
    acked.extend(more);
    let error = c.errors.last().expect("the storage_error");
    assert_eq!(error.code.as_str(), "storage_error");
    assert!(
        error.seq.is_some(),
        "it names the op's seq: {:?}",
        error.seq
    );
    assert!(!c.client().all_saved(), "the failed op is still pending");
    std::fs::remove_file(&ballast)?;
    // The same client resends the op byte-for-byte: applied once.
    c.pump_until(WAIT, |c| c.client().all_saved()).await?;
    acked.push(failed);
    for n in 0..3 {
        let token = format!("«c{n}»");
        type_acked(&mut c, &token).await?;
        acked.push(token);
    }
    let (_, text) = doc_state(server.addr, "full").await?;
    assert_eq!(
        text,
        c.client().text().to_string(),
        "the server's text is the client's"
    );
    assert_once(&text, &acked);
    memory.check().await?;

    // Round 2: the disk fills up again and the server is killed while it
    // is full; after space returns and a restart nothing acked is lost.
    fill_with_ballast(&ballast)?;
    let (more, failed) = type_until_storage_error(&mut c, "d").await?;
    acked.extend(more);
    server.kill9();
    std::fs::remove_file(&ballast)?;
    let server = ServerProcess::start(&bin, &data, free_port(), &[]).await?;
    let (_, text) = doc_state(server.addr, "full").await?;
    assert_once(&text, &acked);
    assert!(
        !text.contains(failed.as_str()),
        "the failed op was not applied"
    );
    c.addr = server.addr;
    c.cut();
    c.reconnect().await?;
    c.pump_until(WAIT, |c| c.client().all_saved()).await?;
    acked.push(failed);
    type_acked(&mut c, "«e0»").await?;
    acked.push("«e0»".to_owned());
    let (_, text) = doc_state(server.addr, "full").await?;
    assert_eq!(text, c.client().text().to_string());
    assert_once(&text, &acked);
    drop(server);
    drop(tmpfs);
    Ok(())
}

/// Copy every file of `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_data_dir_restored_from_a_copy_changes_the_epoch() -> Result<()> {
    let bin = server_binary().expect("building the server binary");
    let parent = tempfile::TempDir::new()?;
    let data = parent.path().join("data");
    let backup = parent.path().join("backup");

    let mut server = ServerProcess::start(&bin, &data, free_port(), &[]).await?;
    let mut c = WsClient::join(server.addr, "restored", "writer").await?;
    type_acked(&mut c, "kept ").await?;
    let epoch = c.epoch();
    assert_eq!(server.terminate(WAIT)?, Some(0));
    copy_dir(&data, &backup)?;

    // A normal restart keeps the epoch: the client resumes.
    let mut server = ServerProcess::start(&bin, &data, free_port(), &[]).await?;
    c.addr = server.addr;
    c.reconnect().await?;
    assert_eq!(c.epoch(), epoch, "a clean restart keeps the epoch");
    type_acked(&mut c, "lost").await?;
    assert_eq!(
        metric_value(server.addr, "ot_storage_faults_at_open").await?,
        0.0
    );
    assert_eq!(server.terminate(WAIT)?, Some(0));

    // Restore the copy (the directory as it was before "lost").
    std::fs::rename(&data, parent.path().join("moved-away"))?;
    copy_dir(&backup, &data)?;
    let server = ServerProcess::start(&bin, &data, free_port(), &[]).await?;
    assert_eq!(
        metric_value(server.addr, "ot_storage_faults_at_open").await?,
        1.0
    );
    c.addr = server.addr;
    c.reconnect().await?;
    c.pump_until(WAIT, |c| c.synced() && c.client().all_saved())
        .await?;
    assert_ne!(c.epoch(), epoch, "the restored directory shows a new epoch");
    let (_, text) = doc_state(server.addr, "restored").await?;
    assert_eq!(text, "kept ");
    assert_eq!(
        c.client().text().to_string(),
        "kept ",
        "the client resynced to the restored text"
    );
    Ok(())
}
