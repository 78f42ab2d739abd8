//! The benchmark run: every benchmark for every connector, interleaved (A B C D A B C D …)
//! for a number of rounds, then a markdown report of medians and ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::proc::{ConnectorSpec, Running};
use crate::server::{LoadServer, PhaseResult, thread_cpu};
use crate::stats::{median, percentile_us, thousands};

/// The name the report compares everything with.
pub const BASELINE: &str = "raw";
/// The published Python SDK's name in the report.
pub const PYTHON: &str = "python";

/// How much work each benchmark does.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Notifications in the burst.
    pub notify: u64,
    /// Publish → notification round trips.
    pub echo: u64,
    /// Queries in the throughput test.
    pub query: u64,
    /// Outstanding round trips / queries.
    pub inflight: u64,
    /// Sequential queries timed for the latency percentiles.
    pub latency: u64,
    /// Sequential queries before those (not timed).
    pub latency_warmup: u64,
    /// Operations of each kind before measuring (warm-up).
    pub warmup: u64,
    /// Source counts of the connect benchmark.
    pub connect: Vec<usize>,
    /// Bytes of the notification / echo payload (a string of that many `x`).
    pub payload: usize,
}

impl Sizes {
    /// The sizes the issue asks for.
    #[must_use]
    pub fn full() -> Self {
        Sizes {
            notify: 200_000,
            echo: 100_000,
            query: 100_000,
            inflight: 64,
            latency: 2_000,
            latency_warmup: 200,
            warmup: 10_000,
            connect: vec![1_000, 10_000],
            payload: 64,
        }
    }

    /// Multiplies the operation counts of the throughput and latency benchmarks by `k`.
    #[must_use]
    pub fn scaled(mut self, k: f64) -> Self {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let f = |n: u64| ((n as f64 * k).round() as u64).max(1);
        self.notify = f(self.notify);
        self.echo = f(self.echo);
        self.query = f(self.query);
        self.latency = f(self.latency);
        self
    }

    /// A smoke run (about a minute).
    #[must_use]
    pub fn quick() -> Self {
        Sizes {
            notify: 20_000,
            echo: 10_000,
            query: 10_000,
            inflight: 64,
            latency: 500,
            latency_warmup: 50,
            warmup: 2_000,
            connect: vec![100],
            payload: 64,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rounds (each runs every benchmark for every connector once).
    pub rounds: usize,
    /// Sizes.
    pub sizes: Sizes,
    /// The connectors, in the order they take turns.
    pub connectors: Vec<ConnectorSpec>,
    /// Seconds a connector idles after configuring before its memory is read.
    pub settle: Duration,
    /// Phases to run (`notify`, `echo`, `query`, `latency`, `connect`); empty for all.
    pub phases: Vec<String>,
}

impl Plan {
    /// Whether `phase` runs.
    #[must_use]
    pub fn wants(&self, phase: &str) -> bool {
        self.phases.is_empty() || self.phases.iter().any(|p| p == phase)
    }
}

/// One metric's definition.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Stable key.
    pub key: String,
    /// Row label.
    pub label: String,
    /// Higher is better (throughput) or lower is better (time, memory).
    pub higher_better: bool,
}

/// Everything measured: per metric, per connector, one value per round (NaN when that
/// round's measurement failed).
#[derive(Debug, Default)]
pub struct Results {
    /// Metrics in report order.
    pub metrics: Vec<Metric>,
    /// `(metric key, connector) → values by round`.
    pub values: BTreeMap<(String, String), Vec<f64>>,
    /// Failures, in order.
    pub failures: Vec<String>,
    /// Connectors in order.
    pub connectors: Vec<String>,
}

impl Results {
    fn define(&mut self, key: &str, label: &str, higher_better: bool) {
        if !self.metrics.iter().any(|m| m.key == key) {
            self.metrics.push(Metric {
                key: key.to_owned(),
                label: label.to_owned(),
                higher_better,
            });
        }
    }

    fn record(&mut self, round: usize, key: &str, connector: &str, value: f64) {
        let v = self
            .values
            .entry((key.to_owned(), connector.to_owned()))
            .or_default();
        if v.len() <= round {
            v.resize(round + 1, f64::NAN);
        }
        if let Some(slot) = v.get_mut(round) {
            *slot = value;
        }
    }

    fn fail(&mut self, round: usize, connector: &str, what: &str, error: &str) {
        let line = format!("round {}: {connector} {what}: {error}", round + 1);
        eprintln!("  FAILED {line}");
        self.failures.push(line);
    }

    /// The values of one metric for one connector, by round.
    #[must_use]
    pub fn get(&self, key: &str, connector: &str) -> &[f64] {
        self.values
            .get(&(key.to_owned(), connector.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// Median over rounds.
    #[must_use]
    pub fn median(&self, key: &str, connector: &str) -> Option<f64> {
        median(self.get(key, connector))
    }

    /// Median over rounds of the per-round ratio `connector / other` (both measured in the
    /// same round, next to each other).
    #[must_use]
    pub fn ratio(&self, key: &str, connector: &str, other: &str) -> Option<f64> {
        let a = self.get(key, connector);
        let b = self.get(key, other);
        let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        median(&ratios)
    }
}

fn payload_json(bytes: usize) -> String {
    format!("\"{}\"", "x".repeat(bytes))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs every round; progress goes to stderr.
pub async fn run(plan: &Plan) -> Results {
    let mut r = Results {
        connectors: plan.connectors.iter().map(|c| c.name.clone()).collect(),
        ..Results::default()
    };
    let s = &plan.sizes;
    r.define(
        "notify",
        &format!(
            "notify: notifications/s ({} × {} B payload)",
            thousands(s.notify as f64),
            s.payload
        ),
        true,
    );
    r.define(
        "echo",
        &format!("echo: round trips/s ({} in flight)", s.inflight),
        true,
    );
    r.define(
        "query",
        &format!("query: queries/s ({} in flight, 1 row)", s.inflight),
        true,
    );
    r.define("p50", "query latency p50 (µs, 1 in flight)", false);
    r.define("p99", "query latency p99 (µs, 1 in flight)", false);
    for &n in &s.connect {
        r.define(
            &format!("connect{n}"),
            &format!("connect: {} sources configured (ms)", thousands(n as f64)),
            false,
        );
        r.define(
            &format!("mem{n}"),
            &format!("idle memory per source at {} (KiB)", thousands(n as f64)),
            false,
        );
    }
    r.define("rss1", "RSS with 1 idle source (KiB)", false);
    for round in 0..plan.rounds {
        eprintln!("== round {} of {}", round + 1, plan.rounds);
        // Each round starts with the next connector, so that no connector always runs
        // first (right after the previous round's connect storm, say).
        let mut order: Vec<&ConnectorSpec> = plan.connectors.iter().collect();
        let len = order.len();
        if len > 0 {
            order.rotate_left(round % len);
        }
        if ["notify", "echo", "query", "latency"]
            .iter()
            .any(|p| plan.wants(p))
        {
            for c in &order {
                throughput(&mut r, round, plan, c).await;
            }
        }
        if !plan.wants("connect") {
            continue;
        }
        for c in &order {
            connect(&mut r, round, plan, c, 1).await;
        }
        for &n in &s.connect {
            for c in &order {
                if n <= c.max_sources {
                    connect(&mut r, round, plan, c, n).await;
                }
            }
        }
    }
    r
}

/// CPU use of the server thread and the connector process over one phase.
struct Cpu {
    server: Option<Duration>,
    connector: Option<Duration>,
}

fn cpu_now(p: &Running) -> Cpu {
    Cpu {
        server: thread_cpu(),
        connector: p.cpu(),
    }
}

fn record_cpu(
    r: &mut Results,
    round: usize,
    name: &str,
    key: &str,
    before: &Cpu,
    after: &Cpu,
    res: &PhaseResult,
) {
    let wall = secs(res.elapsed);
    if let (Some(a), Some(b)) = (before.server, after.server)
        && wall > 0.0
    {
        r.define(
            &format!("srv_{key}"),
            &format!("server CPU during {key} (% of one core)"),
            false,
        );
        r.record(
            round,
            &format!("srv_{key}"),
            name,
            100.0 * secs(b.saturating_sub(a)) / wall,
        );
    }
    if let (Some(a), Some(b)) = (before.connector, after.connector)
        && res.ops > 0
    {
        r.define(
            &format!("cpu_{key}"),
            &format!("connector CPU per op during {key} (µs)"),
            false,
        );
        #[allow(clippy::cast_precision_loss)]
        let per_op = 1e6 * secs(b.saturating_sub(a)) / res.ops as f64;
        r.record(round, &format!("cpu_{key}"), name, per_op);
        r.define(
            &format!("util_{key}"),
            &format!("connector CPU during {key} (% of one core)"),
            false,
        );
        r.record(
            round,
            &format!("util_{key}"),
            name,
            100.0 * secs(b.saturating_sub(a)) / wall,
        );
    }
}

#[allow(clippy::cast_precision_loss)]
fn rate(res: &PhaseResult) -> f64 {
    res.ops as f64 / secs(res.elapsed)
}

async fn throughput(r: &mut Results, round: usize, plan: &Plan, c: &ConnectorSpec) {
    let s = &plan.sizes;
    let name = c.name.as_str();
    eprintln!("-- {name}: notify / echo / query / latency");
    let server = match LoadServer::start() {
        Ok(s) => s,
        Err(e) => return r.fail(round, name, "server", &e.to_string()),
    };
    let source = "bench".to_owned();
    let mut p = match Running::spawn(c, server.port(), std::slice::from_ref(&source)) {
        Ok(p) => p,
        Err(e) => return r.fail(round, name, "spawn", &e.to_string()),
    };
    if let Err(e) = wait(&server, &mut p, 1, Duration::from_secs(30)).await {
        return r.fail(round, name, "configure", &e);
    }
    let payload = payload_json(s.payload);
    let long = Duration::from_secs(300);
    // Warm-up: every path once, not measured.
    let warm = async {
        server.notify(&source, s.warmup, &payload, long).await?;
        server
            .echo(&source, s.warmup, s.inflight, &payload, long)
            .await?;
        server.query(&source, s.warmup, s.inflight, long).await?;
        Ok::<(), String>(())
    };
    if let Err(e) = warm.await {
        return r.fail(
            round,
            name,
            "warm-up",
            &format!("{e}; stderr: {}", p.stderr_tail()),
        );
    }
    for phase in ["notify", "echo", "query"] {
        if !plan.wants(phase) {
            continue;
        }
        let before = cpu_now(&p);
        let res = match phase {
            "notify" => server.notify(&source, s.notify, &payload, long).await,
            "echo" => {
                server
                    .echo(&source, s.echo, s.inflight, &payload, long)
                    .await
            }
            _ => server.query(&source, s.query, s.inflight, long).await,
        };
        match res {
            Ok(res) => {
                let after = cpu_now(&p);
                eprintln!("   {phase:<7} {:>12}/s", thousands(rate(&res)));
                r.record(round, phase, name, rate(&res));
                record_cpu(r, round, name, phase, &before, &after, &res);
            }
            Err(e) => return r.fail(round, name, phase, &e),
        }
    }
    if !plan.wants("latency") {
        return;
    }
    let before = cpu_now(&p);
    match server
        .latency(&source, s.latency_warmup, s.latency, long)
        .await
    {
        Ok(mut res) => {
            let after = cpu_now(&p);
            record_cpu(r, round, name, "latency", &before, &after, &res);
            res.latencies.sort();
            let p50 = percentile_us(&res.latencies, 50.0).unwrap_or(f64::NAN);
            let p99 = percentile_us(&res.latencies, 99.0).unwrap_or(f64::NAN);
            eprintln!("   latency p50 {p50:.1} µs, p99 {p99:.1} µs");
            r.record(round, "p50", name, p50);
            r.record(round, "p99", name, p99);
        }
        Err(e) => r.fail(round, name, "latency", &e),
    }
}

/// Waits for `n` configured sources, watching the process: a connector that exits fails
/// at once instead of at the timeout.
async fn wait(
    server: &LoadServer,
    p: &mut Running,
    n: usize,
    timeout: Duration,
) -> Result<Instant, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let slice =
            Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now()));
        match server.wait_configured(n, slice).await {
            Ok(t) => return Ok(t),
            Err(e) => {
                if let Some(status) = p.exited() {
                    return Err(format!(
                        "the connector exited ({status}) with {} of {n} sources configured; stderr: {}",
                        server.configured(),
                        p.stderr_tail()
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!("{e}; stderr: {}", p.stderr_tail()));
                }
            }
        }
    }
}

async fn connect(r: &mut Results, round: usize, plan: &Plan, c: &ConnectorSpec, n: usize) {
    let name = c.name.as_str();
    let server = match LoadServer::start() {
        Ok(s) => s,
        Err(e) => return r.fail(round, name, "server", &e.to_string()),
    };
    let sources: Vec<String> = (0..n).map(|i| format!("s{i:05}")).collect();
    let t0 = Instant::now();
    let mut p = match Running::spawn(c, server.port(), &sources) {
        Ok(p) => p,
        Err(e) => return r.fail(round, name, "spawn", &e.to_string()),
    };
    let timeout = Duration::from_secs(60 + (n as u64) / 50);
    let done = match wait(&server, &mut p, n, timeout).await {
        Ok(t) => t,
        Err(e) => return r.fail(round, name, &format!("connect {n}"), &e),
    };
    let ms = 1e3 * secs(done.saturating_duration_since(t0));
    tokio::time::sleep(plan.settle).await;
    if server.configured() != n {
        return r.fail(
            round,
            name,
            &format!("connect {n}"),
            "sources dropped while idle",
        );
    }
    let rss = p.rss_kib();
    #[allow(clippy::cast_precision_loss)]
    let rss_f = rss.map_or(f64::NAN, |k| k as f64);
    if n == 1 {
        eprintln!("-- {name}: 1 source: RSS {rss_f} KiB");
        r.record(round, "rss1", name, rss_f);
        return;
    }
    let base = r.get("rss1", name).get(round).copied().unwrap_or(f64::NAN);
    #[allow(clippy::cast_precision_loss)]
    let per = (rss_f - base) / (n - 1) as f64;
    eprintln!(
        "-- {name}: {n} sources configured in {ms:.0} ms; RSS {rss_f} KiB → {per:.1} KiB/source"
    );
    r.record(round, &format!("connect{n}"), name, ms);
    r.record(round, &format!("mem{n}"), name, per);
    drop(p);
    drop(server);
    // Let the kernel tear down the killed process's sockets (thousands of them after a
    // large run) before the next measurement.
    let settle = Duration::from_millis(300 + (n as u64) / 4);
    tokio::time::sleep(settle).await;
}

fn fmt_value(key: &str, v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(v) if key.starts_with("mem") || key.starts_with("cpu_") || key.starts_with('p') => {
            format!("{v:.1}")
        }
        Some(v) if key.starts_with("srv_") || key.starts_with("util_") => format!("{v:.0} %"),
        Some(v) => thousands(v),
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}×"))
}

impl Results {
    /// The markdown report: the main table (medians and median per-round ratios), the
    /// target check, CPU figures, and every round's values.
    #[must_use]
    pub fn markdown(&self, plan: &Plan) -> String {
        let mut out = String::new();
        let cs = &self.connectors;
        let has = |c: &str| cs.iter().any(|x| x == c);
        let others: Vec<&String> = cs
            .iter()
            .filter(|c| c.as_str() != BASELINE && c.as_str() != PYTHON)
            .collect();
        let _ = writeln!(
            out,
            "Medians of {} round(s); ratios are medians of per-round ratios (each round runs the connectors back to back).\n",
            plan.rounds
        );
        let mut head = String::from("| metric |");
        let mut rule = String::from("|---|");
        for c in cs {
            let _ = write!(head, " {c} |");
            rule.push_str("---:|");
        }
        if has(BASELINE) {
            for c in &others {
                let _ = write!(head, " {c} ÷ {BASELINE} |");
                rule.push_str("---:|");
            }
        }
        if has(PYTHON) {
            for c in &others {
                let _ = write!(head, " {c} ÷ {PYTHON} |");
                rule.push_str("---:|");
            }
        }
        let table = |out: &mut String, filter: &dyn Fn(&str) -> bool| {
            let _ = writeln!(out, "{head}\n{rule}");
            for m in self.metrics.iter().filter(|m| filter(&m.key)) {
                let _ = write!(out, "| {} |", m.label);
                for c in cs {
                    let _ = write!(out, " {} |", fmt_value(&m.key, self.median(&m.key, c)));
                }
                if has(BASELINE) {
                    for c in &others {
                        let _ = write!(out, " {} |", fmt_ratio(self.ratio(&m.key, c, BASELINE)));
                    }
                }
                if has(PYTHON) {
                    for c in &others {
                        let _ = write!(out, " {} |", fmt_ratio(self.ratio(&m.key, c, PYTHON)));
                    }
                }
                out.push('\n');
            }
        };
        table(&mut out, &|k| {
            !(k.starts_with("srv_") || k.starts_with("cpu_") || k.starts_with("util_"))
        });
        let _ = writeln!(
            out,
            "\nCPU (from /proc; server = the load server's thread, connector = the whole process):\n"
        );
        table(&mut out, &|k| {
            k.starts_with("srv_") || k.starts_with("cpu_") || k.starts_with("util_")
        });

        let _ = writeln!(
            out,
            "\nTargets (medians of per-round ratios to `{BASELINE}`):\n"
        );
        let _ = writeln!(
            out,
            "| target | connector | measured | met |\n|---|---|---:|:---:|"
        );
        let check = |out: &mut String,
                     label: &str,
                     c: &str,
                     v: Option<f64>,
                     ok: &dyn Fn(f64) -> bool,
                     unit: &str| {
            let (text, met) = match v {
                Some(v) => (
                    format!("{v:.2}{unit}"),
                    if ok(v) { "yes" } else { "**no**" },
                ),
                None => ("—".to_owned(), "**no**"),
            };
            let _ = writeln!(out, "| {label} | {c} | {text} | {met} |");
        };
        for c in &others {
            for (k, l) in [
                ("notify", "notify ≥ 0.9× raw"),
                ("echo", "echo ≥ 0.9× raw"),
                ("query", "query ≥ 0.9× raw"),
            ] {
                check(
                    &mut out,
                    l,
                    c,
                    self.ratio(k, c, BASELINE),
                    &|v| v >= 0.9,
                    "×",
                );
            }
            check(
                &mut out,
                "query p50 ≤ 1.2× raw",
                c,
                self.ratio("p50", c, BASELINE),
                &|v| v <= 1.2,
                "×",
            );
            if let Some(&n) = plan.sizes.connect.first() {
                check(
                    &mut out,
                    &format!("idle memory ≤ 24 KiB/source at {n}"),
                    c,
                    self.median(&format!("mem{n}"), c),
                    &|v| v <= 24.0,
                    " KiB",
                );
            }
            if let Some(&n) = plan.sizes.connect.iter().find(|&&n| n >= 10_000) {
                let ok = self
                    .get(&format!("connect{n}"), c)
                    .iter()
                    .filter(|v| v.is_finite())
                    .count();
                let _ = writeln!(
                    out,
                    "| {} sources connect and configure | {c} | {ok} of {} rounds | {} |",
                    thousands(n as f64),
                    plan.rounds,
                    if ok == plan.rounds { "yes" } else { "**no**" }
                );
            }
        }

        let _ = writeln!(out, "\nEvery round:\n");
        let _ = writeln!(
            out,
            "| metric | connector | values by round |\n|---|---|---|"
        );
        for m in &self.metrics {
            for c in cs {
                let v = self.get(&m.key, c);
                if v.is_empty() {
                    continue;
                }
                let vals: Vec<String> = v
                    .iter()
                    .map(|x| fmt_value(&m.key, x.is_finite().then_some(*x)))
                    .collect();
                let _ = writeln!(out, "| {} | {c} | {} |", m.key, vals.join(" · "));
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nFailures:\n");
            for f in &self.failures {
                let _ = writeln!(out, "- {}", f.replace('\n', " / "));
            }
        }
        out
    }
}
