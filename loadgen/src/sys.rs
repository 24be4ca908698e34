//! What loadgen reads from the operating system: clocks, CPU time and resident memory.

use std::fs;

/// `CLOCK_MONOTONIC` in nanoseconds. The same clock in every process on this host, so a
/// publisher in one loadgen process and a subscriber in another can subtract their readings.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall-clock time in microseconds since the Unix epoch (for the server's `tsUs`).
pub(crate) fn unix_us() -> u64 {
    clock_ns(libc::CLOCK_REALTIME) / 1_000
}

/// Clock `id` (`clock_gettime`) in nanoseconds.
pub fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) this process has used, in seconds.
pub(crate) fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `pid` and all its descendants (a server may be several processes: nginx's master and
/// workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        i += 1;
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// CPU time (user + system) of process `pid` and its descendants, in seconds.
pub(crate) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let mut total = None;
    for p in process_tree(pid) {
        if let Some(s) = one_process_cpu_seconds(p) {
            *total.get_or_insert(0.0) += s;
        }
    }
    total
}

/// CPU time of one process, from `/proc/PID/stat`.
fn one_process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / hz)
}

/// Resident memory of process `pid` and its descendants in bytes (`VmRSS`).
pub(crate) fn process_rss_bytes(pid: u32) -> Option<u64> {
    let mut total = None;
    for p in process_tree(pid) {
        if let Some(k) = status_kib(&format!("/proc/{p}/status"), "VmRSS:") {
            *total.get_or_insert(0) += k * 1024;
        }
    }
    total
}

/// Open file descriptors of process `pid` and its descendants.
pub(crate) fn process_fds(pid: u32) -> Option<usize> {
    let counts = process_tree(pid)
        .into_iter()
        .filter_map(|p| Some(fs::read_dir(format!("/proc/{p}/fd")).ok()?.count()));
    counts.reduce(|a, b| a + b)
}

fn status_kib(path: &str, key: &str) -> Option<u64> {
    let status = fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Raises the soft open-files limit to the hard limit and returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// The number of CPUs this process may run on (its affinity mask, so `taskset` is respected).
pub(crate) fn usable_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(process_rss_bytes(pid).unwrap() > 0);
        assert!(process_cpu_seconds(pid).is_some());
        assert!(process_fds(pid).unwrap() > 0);
        // A child process counts with its parent.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(process_tree(pid).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(mono_ns() > 0 && unix_us() > 1_600_000_000_000_000);
    }
}
