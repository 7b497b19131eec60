//! A size-limited tmpfs the test mounts itself (as root), for disk-full
//! tests: unmounted when dropped, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A mounted tmpfs; unmounted (lazily, so a process still inside cannot keep
/// it) when dropped.
pub struct Tmpfs {
    /// Holds the mount point.
    _dir: tempfile::TempDir,
    mount_point: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size_kib` KiB on a new temporary directory. Fails
    /// when not root or when the mount is refused (a container without the
    /// capability): callers skip their test with a message then.
    pub fn mount(size_kib: u64) -> Result<Tmpfs> {
        if !is_root() {
            bail!("not running as root");
        }
        let dir = tempfile::TempDir::new().context("creating the mount point")?;
        let mount_point = dir.path().to_owned();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kib}k"))
            .arg("tmpfs")
            .arg(&mount_point)
            .output()
            .context("running mount")?;
        if !output.status.success() {
            bail!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Tmpfs {
            _dir: dir,
            mount_point,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
        if !matches!(unmounted, Ok(status) if status.success()) {
            eprintln!("could not unmount {}", self.mount_point.display());
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Fill the file system holding `path` with the file `path` (zeros, in
/// 64 KiB writes, each flushed) until a write fails for lack of space;
/// returns how many bytes it holds.
pub fn fill_with_ballast(path: &Path) -> Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).context("creating the ballast file")?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded: a tmpfs the test made is small; stop at 16 GiB whatever happens.
    while written < 16 << 30 {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e).context("writing the ballast"),
        }
    }
    // Whatever fits in the last partial page, too.
    let small = [0u8; 512];
    while let Ok(n) = file.write(&small) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    Ok(written)
}
