//! The soak run: the fault mix of `tests/faults.rs` (notifications, publishes and chunked
//! queries through a proxy that cuts, stalls, delays and refuses the link at seeded random
//! points) for as long as asked, against a fresh test server every 20 faults, on loopback.
//! Prints the counts (messages, faults, reconnects, lost, duplicated, peak RSS) and exits
//! non-zero if any check failed. Run it with `scripts/soak.sh`.
//!
//! ```text
//! soak [--minutes N] [--runtime tokio|smol|both] [--seed S]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;
use std::time::Duration;

use vantiq_e2e::faults::{Plan, Report, run_mix, seed_from_env};
use vantiq_e2e::{Smol, TestRuntime, Tokio};

fn usage() -> ! {
    eprintln!("usage: soak [--minutes N] [--runtime tokio|smol|both] [--seed S]");
    std::process::exit(2);
}

fn mix<R: TestRuntime>(name: &'static str, plan: &Plan) -> Report {
    R::block_on(run_mix::<R>(name, plan))
}

fn main() -> ExitCode {
    let mut minutes = 5.0f64;
    let mut runtime = "both".to_owned();
    let mut seed = seed_from_env(0x50a4);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--minutes" => minutes = value().parse().unwrap_or_else(|_| usage()),
            "--runtime" => runtime = value(),
            "--seed" => {
                let v = value();
                seed = match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => v.parse(),
                }
                .unwrap_or_else(|_| usage());
            }
            _ => usage(),
        }
    }
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let mut plan = Plan::ci(seed);
    plan.seed = seed;
    plan.duration = Some(Duration::from_secs_f64(minutes * 60.0));
    let runtimes: &[&str] = match runtime.as_str() {
        "tokio" => &["tokio"],
        "smol" => &["smol"],
        "both" => &["tokio", "smol"],
        _ => usage(),
    };
    let mut clean = true;
    for (i, rt) in runtimes.iter().enumerate() {
        let mut plan = plan.clone();
        plan.seed = seed.wrapping_add(i as u64);
        eprintln!(
            "soak on {rt}: {minutes} minute(s), seed {:#x}, {} faults per server",
            plan.seed, plan.faults_per_epoch
        );
        let report = match *rt {
            "tokio" => mix::<Tokio>("tokio", &plan),
            _ => mix::<Smol>("smol", &plan),
        };
        println!("{report}");
        println!(
            "  SOAK {rt}: messages {} faults {} reconnects {} in-flight-at-cut {} \
             (never written to a socket {}) lost {} duplicated {} peak-RSS {} KiB",
            report.a.received
                + report.b.received
                + report.p.received
                + report.queries.completed
                + report.queries.errored,
            report.faults(),
            report.sessions.saturating_sub(1),
            report.a.in_flight_at_cut + report.p.in_flight_at_cut,
            report.a.unwritten,
            report.lost(),
            report.duplicated(),
            report.rss_peak_kib
        );
        clean &= report.violations.is_empty();
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
