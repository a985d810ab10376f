//! `sluice-bench`: measures the Sluice dataplane. See bench/README.md.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use sluice_bench::{control, e2e, micro, report};

/// Results land in the source tree's bench/results/latest unless --out says otherwise.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest");

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Benchmarks the Sluice dataplane")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Per-packet cost of every datapath path by BPF_PROG_TEST_RUN (needs root).
    Micro(MicroArgs),
    /// Traffic between two VMs on two hosts, Sluice against the kernel's bridge + VXLAN
    /// (needs root, iperf3).
    E2e(E2eArgs),
    /// Short TCP connections from a VM to the lab's Internet, through Sluice's NAT gateway
    /// against the kernel's nftables masquerade (needs root, nft).
    Nat(E2eArgs),
    /// Short TCP connections from a VM to a load balancer's VIP over three backend VMs,
    /// through Sluice's load balancer against the kernel's nftables numgen DNAT (needs
    /// root, nft).
    Lb(E2eArgs),
    /// Control-plane latency and scale with a real sluiced in a lab namespace (needs root).
    Control(ControlArgs),
    /// Every mode: micro with these options, then e2e, nat, lb and control (with --quick if
    /// given).
    All(MicroArgs),
}

#[derive(Args)]
struct MicroArgs {
    /// Fewer, shorter runs (repeat 10,000, 3 runs): proves the harness works, not for figures.
    #[arg(long)]
    quick: bool,
    /// Measured runs per path [default: 15, --quick: 3].
    #[arg(long)]
    runs: Option<u32>,
    /// BPF_PROG_TEST_RUN repetitions per run [default: 1000000, --quick: 10000].
    #[arg(long)]
    repeat: Option<u32>,
    /// CPU to pin the measuring thread to.
    #[arg(long, default_value_t = micro::Params::DEFAULT_CPU)]
    cpu: usize,
    /// Measure only the paths whose name contains one of these (repeatable), plus the
    /// floors: for profiling one path; the results are not the full set.
    #[arg(long, value_name = "SUBSTRING")]
    only: Vec<String>,
    /// Output directory for micro.json, summary.md and micro.svg.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct E2eArgs {
    /// One round of short tests (0.3 s, 300 pings, 1 s of iperf3): proves it works.
    #[arg(long)]
    quick: bool,
    /// Rounds, each running every test for both dataplanes [default: 5, --quick: 1].
    #[arg(long)]
    runs: Option<u32>,
    /// Seconds of UDP generation and of short connections per test; iperf3 runs 5/3 of it,
    /// rounded [default: 3, --quick: 0.3].
    #[arg(long)]
    secs: Option<f64>,
    /// CPU of the sending ends (generator, clients); the path's softirq work runs there.
    #[arg(long, default_value_t = e2e::Params::DEFAULT_SENDER_CPU)]
    sender_cpu: usize,
    /// CPU of the receiving ends (UDP receiver, servers).
    #[arg(long, default_value_t = e2e::Params::DEFAULT_RECEIVER_CPU)]
    receiver_cpu: usize,
    /// The sluiced binary [default: next to sluice-bench].
    #[arg(long)]
    sluiced: Option<PathBuf>,
    /// Output directory for e2e.json, e2e.svg and the e2e section of summary.md.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
}

#[derive(Args)]
struct ControlArgs {
    /// Few changes and a small intent (20 VPCs x 10 routes, 1 run): proves it works.
    #[arg(long)]
    quick: bool,
    /// Route changes in the latency series on a 1-VPC intent [default: 200, --quick: 6].
    #[arg(long)]
    changes: Option<u32>,
    /// VPCs of the scale intent [default: 1000, --quick: 20].
    #[arg(long)]
    vpcs: Option<u32>,
    /// Custom routes per VPC of the scale intent [default: 100, --quick: 10].
    #[arg(long)]
    routes: Option<u32>,
    /// Scale applies (each in a fresh lab) and in-process runs [default: 5, --quick: 1].
    #[arg(long)]
    runs: Option<u32>,
    /// Route changes in the latency series at scale [default: 50, --quick: 4].
    #[arg(long)]
    scale_changes: Option<u32>,
    /// The sluiced binary [default: next to sluice-bench].
    #[arg(long)]
    sluiced: Option<PathBuf>,
    /// Output directory for control.json, control.svg and the control section of summary.md.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Micro(args) => run_micro(&args),
        Mode::E2e(args) => run_e2e(&args),
        Mode::Nat(args) => run_nat(&args),
        Mode::Lb(args) => run_lb(&args),
        Mode::Control(args) => run_control(&args),
        Mode::All(args) => {
            let end_to_end = E2eArgs {
                quick: args.quick,
                runs: None,
                secs: None,
                sender_cpu: e2e::Params::DEFAULT_SENDER_CPU,
                receiver_cpu: e2e::Params::DEFAULT_RECEIVER_CPU,
                sluiced: None,
                out: args.out.clone(),
            };
            run_micro(&args)
                .and_then(|()| run_e2e(&end_to_end))
                .and_then(|()| run_nat(&end_to_end))
                .and_then(|()| run_lb(&end_to_end))
                .and_then(|()| {
                    run_control(&ControlArgs {
                        quick: args.quick,
                        changes: None,
                        vpcs: None,
                        routes: None,
                        runs: None,
                        scale_changes: None,
                        sluiced: None,
                        out: args.out.clone(),
                    })
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_micro(args: &MicroArgs) -> Result<()> {
    let mut params = micro::Params::new(args.quick, args.runs, args.repeat, args.cpu)?;
    params.only = args.only.clone();
    eprintln!(
        "sluice-bench micro: repeat {}, {} runs, CPU {}",
        params.repeat, params.runs, params.cpu
    );
    let result = micro::run(&params, |step| eprintln!("micro: {step}"))?;
    report::write_micro(&result, &args.out)?;
    print!("{}", report::table_markdown(&result));
    eprintln!(
        "sluice-bench micro: wrote micro.json, summary.md, micro.svg to {}",
        args.out.display()
    );
    Ok(())
}

/// The parameters of `e2e`, `nat` and `lb` (they share their options).
fn e2e_params(args: &E2eArgs) -> Result<e2e::Params> {
    e2e::Params::new(
        args.quick,
        args.runs,
        args.secs,
        args.sender_cpu,
        args.receiver_cpu,
        args.sluiced.clone(),
    )
}

fn run_e2e(args: &E2eArgs) -> Result<()> {
    let params = e2e_params(args)?;
    eprintln!(
        "sluice-bench e2e: {} rounds, UDP {} s, {} pings, iperf3 {} s, connections {} s; senders on CPU {}, receivers on CPU {}; sluiced {}",
        params.runs,
        params.udp_secs,
        params.pings,
        params.tcp_secs,
        params.crr_secs,
        params.sender_cpu,
        params.receiver_cpu,
        params.sluiced.display()
    );
    let result = e2e::run(&params, |step| eprintln!("e2e: {step}"))?;
    report::write_e2e(&result, &args.out)?;
    print!("{}", report::e2e_markdown(&result));
    eprintln!(
        "sluice-bench e2e: wrote e2e.json, e2e.svg and summary.md's e2e section to {}",
        args.out.display()
    );
    Ok(())
}

fn run_nat(args: &E2eArgs) -> Result<()> {
    let params = e2e_params(args)?;
    eprintln!(
        "sluice-bench nat: {} rounds, connections {} s; client on CPU {}, server on CPU {}; sluiced {}",
        params.runs,
        params.crr_secs,
        params.sender_cpu,
        params.receiver_cpu,
        params.sluiced.display()
    );
    let result = e2e::nat::run(&params, |step| eprintln!("nat: {step}"))?;
    report::write_nat(&result, &args.out)?;
    print!("{}", report::nat_markdown(&result));
    eprintln!(
        "sluice-bench nat: wrote nat.json, nat.svg and summary.md's nat section to {}",
        args.out.display()
    );
    Ok(())
}

fn run_lb(args: &E2eArgs) -> Result<()> {
    let params = e2e_params(args)?;
    eprintln!(
        "sluice-bench lb: {} rounds, connections {} s; client on CPU {}, servers on CPU {}; sluiced {}",
        params.runs,
        params.crr_secs,
        params.sender_cpu,
        params.receiver_cpu,
        params.sluiced.display()
    );
    let result = e2e::lb::run(&params, |step| eprintln!("lb: {step}"))?;
    report::write_lb(&result, &args.out)?;
    print!("{}", report::lb_markdown(&result));
    eprintln!(
        "sluice-bench lb: wrote lb.json, lb.svg and summary.md's lb section to {}",
        args.out.display()
    );
    Ok(())
}

fn run_control(args: &ControlArgs) -> Result<()> {
    let params = control::Params::new(
        args.quick,
        args.changes,
        args.vpcs,
        args.routes,
        args.runs,
        args.scale_changes,
        args.sluiced.clone(),
    )?;
    eprintln!(
        "sluice-bench control: {} changes, {} VPCs x {} routes, {} runs, sluiced {}",
        params.changes,
        params.vpcs,
        params.routes_per_vpc,
        params.runs,
        params.sluiced.display()
    );
    let result = control::run(&params, |step| eprintln!("control: {step}"))?;
    report::write_control(&result, &args.out)?;
    print!("{}", report::control_markdown(&result));
    eprintln!(
        "sluice-bench control: wrote control.json, control.svg and summary.md's control section to {}",
        args.out.display()
    );
    Ok(())
}
