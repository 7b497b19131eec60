//! CPU time over the measured window, from Linux's `/proc/<pid>/stat`: the
//! load tool's own (is the tool the bottleneck?) and, with `--server-pid`, the
//! server's (its CPU per acked op). Elsewhere the figures are simply absent.

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
    }
}

/// Sleep until `from`, read the CPU times, sleep until `to`, read them again.
pub async fn sample_window(from: Instant, to: Instant, server_pid: Option<u32>) -> WindowCpu {
    tokio::time::sleep_until(from.into()).await;
    let started = Instant::now();
    let load0 = cpu_secs("self");
    let server0 = server_pid.and_then(|pid| cpu_secs(&pid.to_string()));
    tokio::time::sleep_until(to.into()).await;
    let load1 = cpu_secs("self");
    let server1 = server_pid.and_then(|pid| cpu_secs(&pid.to_string()));
    WindowCpu {
        wall_secs: started.elapsed().as_secs_f64(),
        load_secs: load0.zip(load1).map(|(a, b)| b - a),
        server_secs: server0.zip(server1).map(|(a, b)| b - a),
    }
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
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_secs("self").is_some());
    }
}
