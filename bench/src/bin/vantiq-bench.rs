//! The benchmark harness: starts the load server (on this process's one runtime thread),
//! runs each connector under test in turn, and prints a markdown report.
//!
//! ```text
//! vantiq-bench [--rounds N] [--quick] [--only tokio,smol,raw,python]
//!              [--tokio PATH] [--smol PATH] [--raw PATH] [--smol-threads N]
//!              [--python PYTHON --python-script SCRIPT]
//!              [--criterion DIR] [--out FILE] [--phases notify,echo,query,latency,connect]
//!              [--scale K]                # K × the operation counts (not the connect sizes)
//!              [--connect N,M]            # source counts of the connect benchmark
//!              [--extra NAME=PATH[,K=V...]]...  # another Rust echo connector (A/B of a
//!                                         # patch), with extra environment variables
//! vantiq-bench criterion DIR      # only the micro-benchmark table
//! ```
//!
//! The smol connectors run with `SMOL_THREADS` = `--smol-threads` (default 1, smol's own
//! default: one thread for the global executor, besides the `block_on` thread).
//!
//! Binaries default to the ones next to this one (`examples/echo_tokio`,
//! `examples/echo_smol`, `raw-echo`); without `--python` the Python SDK is skipped.
//! `scripts/bench.sh` builds everything and passes the right paths.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vantiq_bench::criterion_report;
use vantiq_bench::harness::{self, Plan, Sizes};
use vantiq_bench::proc::{ConnectorSpec, raise_nofile};

struct Args {
    rounds: Option<usize>,
    quick: bool,
    only: Option<Vec<String>>,
    tokio: Option<PathBuf>,
    smol: Option<PathBuf>,
    raw: Option<PathBuf>,
    smol_threads: String,
    python: Option<PathBuf>,
    python_script: Option<PathBuf>,
    criterion: Option<PathBuf>,
    out: Option<PathBuf>,
    phases: Vec<String>,
    scale: f64,
    connect: Option<Vec<usize>>,
    extra: Vec<Extra>,
}

/// An extra connector: name, program, extra environment.
type Extra = (String, PathBuf, Vec<(String, String)>);

fn usage() -> ExitCode {
    eprintln!(
        "usage: vantiq-bench [--rounds N] [--quick] [--only a,b] [--tokio PATH] [--smol PATH] [--raw PATH] \
         [--smol-threads N] [--python PYTHON --python-script SCRIPT] [--criterion DIR] [--out FILE] [--phases notify,echo,query,latency,connect] [--scale K] [--connect N,M] [--extra NAME=PATH[,K=V...]]\n       \
         vantiq-bench criterion DIR"
    );
    ExitCode::from(2)
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        rounds: None,
        quick: false,
        only: None,
        tokio: None,
        smol: None,
        raw: None,
        smol_threads: "1".to_owned(),
        python: None,
        python_script: None,
        criterion: None,
        out: None,
        phases: Vec::new(),
        scale: 1.0,
        connect: None,
        extra: Vec::new(),
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => {
                a.rounds = Some(value()?.parse().map_err(|e| format!("--rounds: {e}"))?);
            }
            "--quick" => a.quick = true,
            "--only" => a.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--tokio" => a.tokio = Some(value()?.into()),
            "--smol" => a.smol = Some(value()?.into()),
            "--raw" => a.raw = Some(value()?.into()),
            "--smol-threads" => a.smol_threads = value()?,
            "--python" => a.python = Some(value()?.into()),
            "--python-script" => a.python_script = Some(value()?.into()),
            "--criterion" => a.criterion = Some(value()?.into()),
            "--out" => a.out = Some(value()?.into()),
            "--connect" => {
                let sizes: Result<Vec<usize>, _> = value()?.split(',').map(str::parse).collect();
                a.connect = Some(sizes.map_err(|e| format!("--connect: {e}"))?);
            }
            "--extra" => {
                let v = value()?;
                let (name, rest) = v
                    .split_once('=')
                    .ok_or("--extra takes NAME=PATH[,K=V...]")?;
                let mut parts = rest.split(',');
                let path = parts.next().unwrap_or_default();
                let env = parts
                    .map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .ok_or_else(|| format!("--extra: `{kv}` is not K=V"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                a.extra.push((name.to_owned(), path.into(), env));
            }
            "--scale" => a.scale = value()?.parse().map_err(|e| format!("--scale: {e}"))?,
            "--phases" => a.phases = value()?.split(',').map(str::to_owned).collect(),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::env::var("RUSTC_VERSION").unwrap_or_else(|_| "unknown".to_owned());
    let python = std::env::var("PYTHON_VERSION").unwrap_or_default();
    #[allow(clippy::cast_precision_loss)]
    let gib = mem_kib as f64 / (1024.0 * 1024.0);
    format!(
        "- CPU: {model}, {cores} cores\n- RAM: {gib:.1} GiB\n- kernel: Linux {}\n- {rustc}{}\n",
        kernel.trim(),
        if python.is_empty() {
            String::new()
        } else {
            format!("\n- {python}")
        }
    )
}

fn beside_me(rel: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(rel))
}

fn spec(
    name: &str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    rust: bool,
) -> ConnectorSpec {
    ConnectorSpec {
        name: name.to_owned(),
        program,
        args,
        env,
        rust_keys: rust,
        max_sources: if rust { usize::MAX } else { 1_000 },
    }
}

fn connectors(a: &Args) -> Result<Vec<ConnectorSpec>, String> {
    let quiet = ("RUST_LOG".to_owned(), "warn".to_owned());
    let path = |given: &Option<PathBuf>, rel: &str| -> Result<PathBuf, String> {
        let p = given.clone().or_else(|| beside_me(rel)).ok_or("no path")?;
        if Path::new(&p).is_file() {
            std::path::absolute(&p).map_err(|e| format!("{}: {e}", p.display()))
        } else {
            Err(format!(
                "{} not found (build it, or pass its path)",
                p.display()
            ))
        }
    };
    let mut all = Vec::new();
    let wanted = |n: &str| a.only.as_ref().is_none_or(|o| o.iter().any(|x| x == n));
    if wanted("tokio") {
        all.push(spec(
            "tokio",
            path(&a.tokio, "examples/echo_tokio")?,
            vec![],
            vec![quiet.clone()],
            true,
        ));
    }
    if wanted("smol") {
        all.push(spec(
            "smol",
            path(&a.smol, "examples/echo_smol")?,
            vec![],
            vec![
                quiet.clone(),
                ("SMOL_THREADS".to_owned(), a.smol_threads.clone()),
            ],
            true,
        ));
    }
    if wanted("raw") {
        all.push(spec("raw", path(&a.raw, "raw-echo")?, vec![], vec![], true));
    }
    if wanted("python")
        && let (Some(py), Some(script)) = (&a.python, &a.python_script)
    {
        let script =
            std::fs::canonicalize(script).map_err(|e| format!("{}: {e}", script.display()))?;
        // Absolute (the connector runs in a temporary directory) but not canonical: a venv's
        // python is a symlink that must stay one.
        let py = std::path::absolute(py).map_err(|e| format!("{}: {e}", py.display()))?;
        all.push(spec(
            "python",
            py,
            vec![script.display().to_string()],
            vec![],
            false,
        ));
    }
    // Extra Rust connectors (e.g. a patched build, for an A/B run); a name starting with
    // `smol` gets SMOL_THREADS too; `,K=V` pairs after the path add or override variables.
    for (name, program, extra_env) in &a.extra {
        let mut env = vec![quiet.clone()];
        if name.starts_with("smol") {
            env.push(("SMOL_THREADS".to_owned(), a.smol_threads.clone()));
        }
        env.extend(extra_env.iter().cloned());
        let program =
            std::path::absolute(program).map_err(|e| format!("{}: {e}", program.display()))?;
        all.push(spec(name, program, vec![], env, true));
    }
    Ok(all)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("criterion") {
        let _ = argv.next();
        let Some(dir) = argv.next() else {
            return usage();
        };
        print!(
            "{}",
            criterion_report::markdown(&criterion_report::collect(Path::new(&dir)))
        );
        return ExitCode::SUCCESS;
    }
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vantiq-bench: {e}");
            return usage();
        }
    };
    let nofile = raise_nofile();
    let connectors = match connectors(&args) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            eprintln!("vantiq-bench: no connector to run");
            return usage();
        }
        Err(e) => {
            eprintln!("vantiq-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    }
    .scaled(args.scale);
    if let Some(c) = &args.connect {
        sizes.connect.clone_from(c);
    }
    let plan = Plan {
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
        sizes,
        connectors,
        settle: Duration::from_secs(1),
        phases: args.phases.clone(),
    };
    eprintln!(
        "vantiq-bench: {} round(s) of {:?}; RLIMIT_NOFILE {}",
        plan.rounds,
        plan.connectors
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        nofile.map_or_else(|| "?".to_owned(), |n| n.to_string())
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vantiq-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = rt.block_on(harness::run(&plan));
    let mut report = String::new();
    report.push_str("## Machine\n\n");
    report.push_str(&machine());
    report.push_str("\n## End-to-end (load server on loopback)\n\n");
    report.push_str(&results.markdown(&plan));
    if let Some(dir) = &args.criterion {
        let m = criterion_report::collect(dir);
        if !m.is_empty() {
            report.push_str("\n## Core micro-benchmarks (criterion, median per frame)\n\n");
            report.push_str(&criterion_report::markdown(&m));
        }
    }
    print!("{report}");
    if let Some(out) = &args.out
        && let Err(e) = std::fs::write(out, &report)
    {
        eprintln!("vantiq-bench: {}: {e}", out.display());
    }
    if results.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
