//! CPU time over the measured window, from Linux's `/proc/<pid>/stat`: the
//! load tool's own (is the tool the bottleneck?) and, with `--server-pid`, the
//! server's (its CPU per acked op), and with `--pg-pid` a PostgreSQL
//! postmaster's and its children's (the backends: their CPU per acked op).
//! Elsewhere the figures are simply absent.

use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat`: Linux reports these times in
/// USER_HZ, which is 100 on every architecture (the value is part of its ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used by the load tool and the server over the window.
#[derive(Debug, Default, Clone, Copy)]
pub struct WindowCpu {
    /// The window's wall-clock length, seconds.
    pub wall_secs: f64,
    /// The load tool's user + system CPU seconds.
    pub load_secs: Option<f64>,
    /// The server's user + system CPU seconds (with `--server-pid`).
    pub server_secs: Option<f64>,
    /// PostgreSQL's user + system CPU seconds, the postmaster and its
    /// children together (with `--pg-pid`). A backend that exits within the
    /// window is left out; one that starts within it counts whole.
    pub pg_secs: Option<f64>,
}

impl WindowCpu {
    /// Print the figures (if any) after the rest of a phase's summary.
    pub fn print(&self, label: &str, acked: u64, seconds: f64) {
        if let Some(load) = self.load_secs.filter(|_| self.wall_secs > 0.0) {
            let share = 100.0 * load / self.wall_secs;
            println!("load tool CPU over the window: {load:.2} s = {share:.1} % of one core");
            println!("RESULT {label} load_cpu_pct={share:.1}");
        }
        if let Some(server) = self.server_secs.filter(|_| self.wall_secs > 0.0) {
            // Acks are counted over `seconds`; the CPU over the same window.
            let ops = acked as f64 * self.wall_secs / seconds;
            let per_op = if ops > 0.0 { server * 1e6 / ops } else { 0.0 };
            println!(
                "server CPU over the window: {server:.2} s = {:.1} % of one core, {per_op:.1} µs per acked op",
                100.0 * server / self.wall_secs
            );
            println!(
                "RESULT {label} server_cpu_pct={:.1} server_us_per_op={per_op:.1}",
                100.0 * server / self.wall_secs
            );
        }
        if let Some(pg) = self.pg_secs.filter(|_| self.wall_secs > 0.0) {
            let ops = acked as f64 * self.wall_secs / seconds;
            let per_op = |secs: f64| if ops > 0.0 { secs * 1e6 / ops } else { 0.0 };
            println!(
                "PostgreSQL CPU over the window (postmaster and backends): {pg:.2} s = {:.1} % of one core, {:.1} µs per acked op",
                100.0 * pg / self.wall_secs,
                per_op(pg)
            );
            let total = self.server_secs.map(|server| per_op(server + pg));
            if let Some(total) = total {
                println!("server + PostgreSQL: {total:.1} µs per acked op");
            }
            println!(
                "RESULT {label} pg_cpu_pct={:.1} pg_us_per_op={:.1} server_pg_us_per_op={}",
                100.0 * pg / self.wall_secs,
                per_op(pg),
                total.map_or_else(|| "?".to_owned(), |t| format!("{t:.1}"))
            );
        }
    }
}

/// Sleep until `from`, read the CPU times, sleep until `to`, read them again.
pub async fn sample_window(
    from: Instant,
    to: Instant,
    server_pid: Option<u32>,
    pg_pid: Option<u32>,
) -> WindowCpu {
    tokio::time::sleep_until(from.into()).await;
    let started = Instant::now();
    let load0 = cpu_secs("self");
    let server0 = server_pid.and_then(|pid| cpu_secs(&pid.to_string()));
    let pg0 = pg_pid.map(tree_ticks);
    tokio::time::sleep_until(to.into()).await;
    let load1 = cpu_secs("self");
    let server1 = server_pid.and_then(|pid| cpu_secs(&pid.to_string()));
    let pg1 = pg_pid.map(tree_ticks);
    WindowCpu {
        wall_secs: started.elapsed().as_secs_f64(),
        load_secs: load0.zip(load1).map(|(a, b)| b - a),
        server_secs: server0.zip(server1).map(|(a, b)| b - a),
        pg_secs: pg0.zip(pg1).and_then(|(before, after)| {
            if after.is_empty() {
                return None; // no such process
            }
            let ticks: u64 = after
                .iter()
                .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                .sum();
            Some(ticks as f64 / TICKS_PER_SEC)
        }),
    }
}

/// CPU ticks of process `root` and of each of its children, by pid (empty
/// if `root` does not exist).
fn tree_ticks(root: u32) -> HashMap<u32, u64> {
    let mut ticks = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // exited meanwhile
        };
        if pid == root || parse_ppid(&stat) == Some(root) {
            if let Some(t) = parse_cpu_ticks(&stat) {
                ticks.insert(pid, t);
            }
        }
    }
    ticks
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` line.
fn parse_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of process `pid` (`self` for this one).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / TICKS_PER_SEC)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_command_with_spaces() {
        let stat =
            "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 4 0 99";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_ppid(stat), Some(1));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn a_process_tree_holds_its_root() {
        let me = std::process::id();
        assert!(tree_ticks(me).contains_key(&me));
        assert!(tree_ticks(u32::MAX).is_empty());
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_secs("self").is_some());
    }
}
