//! Writing results: `micro.json` (everything), `summary.md` (a table) and `micro.svg`
//! (a bar chart of the median net cost per path).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{ensure, Context, Result};
use plotters::{
    coord::{
        ranged1d::{SegmentedCoord, ValueFormatter},
        types::RangedCoordusize,
    },
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    control::{self, ControlReport, Dist, StepResult},
    e2e::{labs::Dataplane, lb::LbReport, nat::NatReport, Compared, E2eReport, RunInfo},
    machine::Machine,
    micro::{MicroReport, PathResult},
    stats::Summary,
    vpc::Scale,
};

/// Writes all three files into `out_dir` (created if missing).
pub fn write_micro(report: &MicroReport, out_dir: &Path) -> Result<()> {
    fs::create_dir_all(out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    write(&out_dir.join("micro.json"), &(json + "\n"))?;
    // Other modes' sections of an earlier summary stay.
    let summary = out_dir.join("summary.md");
    let kept = fs::read_to_string(&summary)
        .map(|t| marked_sections(&t))
        .unwrap_or_default();
    write(&summary, &(summary_markdown(report) + &kept))?;
    let svg = out_dir.join("micro.svg");
    chart_svg(report, &svg).with_context(|| format!("drawing {}", svg.display()))?;
    Ok(())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The issue-3 targets for the encap, decap and local paths.
pub const TARGET_NS: f64 = 60.0;
pub const TARGET_GROWTH: f64 = 1.5;
/// The paths the targets apply to.
pub const TARGET_PATHS: [&str; 3] = ["vpc_local", "vpc_encap", "vpc_decap"];

/// Machine and parameter lines plus the results, scale and target tables.
pub fn summary_markdown(report: &MicroReport) -> String {
    let m = &report.machine;
    let p = &report.params;
    let mut s = String::new();
    let _ = writeln!(s, "# sluice-bench micro\n");
    let _ = writeln!(s, "- date: {}", report.date_utc);
    let _ = writeln!(
        s,
        "- source: {}",
        report.git_commit.as_deref().unwrap_or("unknown commit")
    );
    let _ = writeln!(
        s,
        "- machine: {} ({} CPUs), kernel {} {}",
        m.cpu_model, m.nproc, m.kernel_release, m.arch
    );
    let _ = writeln!(s, "- load average at start: {}", m.loadavg_at_start);
    let _ = writeln!(s, "- bpf_jit_enable: {}", m.bpf_jit_enable);
    for (name, state) in &m.cpu_mitigations {
        let _ = writeln!(s, "- {name}: {state}");
    }
    let _ = writeln!(
        s,
        "- BPF_PROG_TEST_RUN, repeat {} per run (fresh-frame paths: {} packets per run), {} runs per path{}, measuring thread pinned to CPU {}",
        p.repeat,
        p.fresh_packets,
        p.runs,
        if p.quick { " (--quick)" } else { "" },
        p.cpu
    );
    for f in report.paths.iter().filter(|r| is_floor(r)) {
        let _ = writeln!(
            s,
            "- floor `{}` (empty XDP program, {}): median {} ns, min {} ns, max {} ns per packet",
            f.name,
            f.method_short,
            num(f.raw_ns.median),
            num(f.raw_ns.min),
            num(f.raw_ns.max)
        );
    }
    for sc in &report.scales {
        let _ = writeln!(
            s,
            "- tables `@{}`: VPCs {}, routes {}, endpoints {} (filled in {:.1} s)",
            sc.scale.suffix(),
            sc.vpcs,
            sc.routes,
            sc.endpoints,
            sc.fill_secs
        );
    }
    s.push('\n');
    s.push_str(&table_markdown(report));
    let _ = writeln!(
        s,
        "\nns per packet: the kernel's mean per repetition (whole ns per call). net = minus the median of the floor measured the same way (`repeat`/`restored`: `floor`; `fresh R × C`: `floor_repeat_R`). noise = (median − min) / median of the raw figure. `restored`: through the bench wrapper that moves `data` back after the real entry point (its cost is included); `restored+frame`: it also writes the frame's first 56 bytes back; `new flows R × 1`: and counts a port (or address) up after every repetition, so each is a new flow (floor `floor_repeat_R`). `fresh R × C`: C calls per run, each on a fresh copy of the frame with R repetitions, for paths that change their frame (TTL, ARP reply); with few repetitions per call the per-call timer and cold start weigh more, so these are noisier than the repeated ones."
    );
    if !report.scale_ratios.is_empty() {
        s.push_str("\n## 10 routes against 100,000 routes\n\n");
        s.push_str(&scale_markdown(report));
        s.push_str("\n## Issue 3 targets\n\n");
        s.push_str(&targets_markdown(report));
    }
    if !report.nat_targets.is_empty() {
        s.push_str("\n## NAT targets (issues 5 and 7)\n\n");
        s.push_str(&nat_targets_markdown(report));
    }
    s.push_str(&coverage_markdown(report));
    s
}

/// Which verdict reasons this run measured, and which no path reaches yet.
pub fn coverage_markdown(report: &MicroReport) -> String {
    let measured: std::collections::BTreeSet<&str> = report
        .paths
        .iter()
        .filter_map(|r| r.expected_reason.as_deref())
        .collect();
    let unreachable =
        |r: &sluice_common::stats::Reason| crate::micro::UNREACHABLE.iter().any(|(u, _)| u == r);
    let missing: Vec<String> = sluice_common::stats::Reason::ALL
        .iter()
        .filter(|r| !unreachable(r))
        .map(|r| r.name())
        .filter(|n| !measured.contains(n))
        .map(|n| format!("`{n}`"))
        .collect();
    let reachable = sluice_common::stats::Reason::ALL.len() - crate::micro::UNREACHABLE.len();
    let mut s = format!(
        "\n## Coverage\n\n{} of the {reachable} verdict reasons a test run can reach have a path in this run.",
        reachable - missing.len(),
    );
    if !missing.is_empty() {
        let _ = write!(s, " Not measured: {}.", missing.join(", "));
    }
    let why: Vec<String> = crate::micro::UNREACHABLE
        .iter()
        .map(|(r, why)| format!("`{}` ({why})", r.name()))
        .collect();
    let _ = write!(s, " Out of a test run's reach: {}.", why.join("; "));
    s.push('\n');
    s
}

/// Each translating NAT path against its target, with its ratio to the floor measured the
/// same way (one repetition per call: the per-call timer weighs on every such figure).
pub fn nat_targets_markdown(report: &MicroReport) -> String {
    let mut s = String::new();
    if let Some(n) = &report.nat {
        let _ = writeln!(
            s,
            "NAT instance: {}; the established SNAT flow holds port {}. New SNAT flows at most 80 ns, established and DNAT paths at most 50 (DNAT new flows: 80).\n",
            n.label, n.established_port
        );
    }
    s.push_str("| path | target ns | raw median | floor (same method) | raw ÷ floor | net median | raw − `nat_vpc_local` | ≤ target raw | ≤ target net |\n");
    s.push_str("|---|--:|--:|--:|--:|--:|--:|:-:|:-:|\n");
    for t in &report.nat_targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            t.path,
            num(t.target_ns),
            num(t.raw_median),
            num(t.floor_median),
            t.raw_over_floor,
            num(t.net_median),
            t.over_vpc_local.map_or("n/a".into(), num),
            yes(t.raw_within_target),
            yes(t.net_within_target),
        );
    }
    s
}

fn is_floor(r: &PathResult) -> bool {
    r.program == sluice_common::programs::XDP_FLOOR
}

/// The results table alone (also pasted into bench/README.md).
pub fn table_markdown(report: &MicroReport) -> String {
    let mut s = String::new();
    s.push_str(
        "| path | program | method | verdict | frame B | median ns | min | max | net median | net min | net max | noise |\n",
    );
    s.push_str("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in &report.paths {
        let verdict = match &r.expected_reason {
            Some(reason) => format!("{} `{reason}`", short_action(&r.expected_action)),
            None => short_action(&r.expected_action).to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% |",
            r.name,
            r.program,
            r.method_short,
            verdict,
            r.frame_len,
            num(r.raw_ns.median),
            num(r.raw_ns.min),
            num(r.raw_ns.max),
            num(r.net_ns.median),
            num(r.net_ns.min),
            num(r.net_ns.max),
            r.raw_ns.noise() * 100.0,
        );
    }
    s
}

/// Medians at both scales and their ratios, one row per VPC path.
pub fn scale_markdown(report: &MicroReport) -> String {
    let mut s = String::new();
    s.push_str("| path | raw @10 | raw @100k | raw ratio | net @10 | net @100k | net ratio |\n");
    s.push_str("|---|--:|--:|--:|--:|--:|--:|\n");
    for r in &report.scale_ratios {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} | {} | {} |",
            r.path,
            num(r.raw_median_10),
            num(r.raw_median_100k),
            r.raw_ratio,
            num(r.net_median_10),
            num(r.net_median_100k),
            r.net_ratio
                .map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}")),
        );
    }
    s
}

/// The targets (≤ 60 ns per packet, ≤ 1.5x growth) for local, encap and decap, judged on
/// the raw figure (what this machine measures) and on the net one (Sluice's code alone).
pub fn targets_markdown(report: &MicroReport) -> String {
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "At most {TARGET_NS} ns per packet (at 100k routes, the worse scale) and at most {TARGET_GROWTH}x growth from 10 to 100,000 routes. Judged on the raw figure (what BPF_PROG_TEST_RUN reports on this machine, floor included) and on the net one (Sluice's code alone).\n"
    );
    s.push_str("| path | raw @100k | ≤ 60 raw | net @100k | ≤ 60 net | raw growth | ≤ 1.5x raw | net growth | ≤ 1.5x net |\n");
    s.push_str("|---|--:|:-:|--:|:-:|--:|:-:|--:|:-:|\n");
    for name in TARGET_PATHS {
        let Some(r) = report.scale_ratios.iter().find(|r| r.path == name) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
            name,
            num(r.raw_median_100k),
            yes(r.raw_median_100k.max(r.raw_median_10) <= TARGET_NS),
            num(r.net_median_100k),
            yes(r.net_median_100k.max(r.net_median_10) <= TARGET_NS),
            r.raw_ratio,
            yes(r.raw_ratio <= TARGET_GROWTH),
            r.net_ratio
                .map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}")),
            yes(r.net_ratio.is_some_and(|v| v <= TARGET_GROWTH)),
        );
    }
    s
}

fn short_action(action: &str) -> &str {
    action.strip_prefix("XDP_").unwrap_or(action)
}

/// Whole numbers without a fraction, others with one decimal (medians of even counts).
fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Horizontal bars of the median net ns per path (first path on top), with min–max whiskers.
fn chart_svg(report: &MicroReport, out: &Path) -> Result<()> {
    let rows: Vec<_> = report.paths.iter().filter(|r| !is_floor(r)).collect();
    let n = rows.len().max(1);
    // Row `i` of the table is drawn in segment `n - 1 - i`, so the chart reads top-down.
    let seg = |i: usize| n - 1 - i;
    let x_max = rows.iter().map(|r| r.net_ns.max).fold(1.0_f64, f64::max) * 1.15;
    let height = 130 + 34 * n as u32;
    let root = SVGBackend::new(out, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "sluice-bench micro: ns per packet net of the floor ({} ns repeated); kernel {}, CPU {} pinned",
        num(report.floor_ns.median),
        report.machine.kernel_release,
        report.params.cpu
    );
    let names: Vec<String> = rows.iter().rev().map(|r| r.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(270)
        .build_cartesian_2d(0.0..x_max, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .x_labels(10)
        .y_labels(n)
        .label_style(("sans-serif", 16))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_desc("ns per packet net of the floor measured the same way (bar: median; whisker: min to max)")
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    // One series per table scale, so the legend tells them apart.
    let groups: [(Option<Scale>, &str, RGBColor); 3] = [
        (None, "not a VPC path", RGBColor(0x2b, 0x6c, 0xb0)),
        (
            Some(Scale::Routes10),
            "VPC path, 10 routes",
            RGBColor(0x2f, 0x9e, 0x44),
        ),
        (
            Some(Scale::Routes100k),
            "VPC path, 100k routes (1,000 VPCs)",
            RGBColor(0xe0, 0x7b, 0x16),
        ),
    ];
    for (scale, label, colour) in groups {
        let bars = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.scale == scale)
            .map(|(i, r)| {
                let mut rect = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(seg(i))),
                        (r.net_ns.median.max(0.0), SegmentValue::Exact(seg(i) + 1)),
                    ],
                    colour.filled(),
                );
                rect.set_margin(5, 5, 0, 0);
                rect
            });
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        PathElement::new(
            vec![
                (r.net_ns.min.max(0.0), SegmentValue::CenterOf(seg(i))),
                (r.net_ns.max.max(0.0), SegmentValue::CenterOf(seg(i))),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    let label_style =
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        Text::new(
            format!("{} ns", num(r.net_ns.median)),
            (
                r.net_ns.max.max(0.0) + x_max * 0.01,
                SegmentValue::CenterOf(seg(i)),
            ),
            label_style.clone(),
        )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Other modes' sections of summary.md
// ---------------------------------------------------------------------------------------

fn section_begin(mode: &str) -> String {
    format!("<!-- sluice-bench {mode}: begin -->")
}

fn section_end(mode: &str) -> String {
    format!("<!-- sluice-bench {mode}: end -->")
}

/// Every marked section in `text` (`<!-- sluice-bench MODE: begin -->` to its end marker),
/// each preceded by a blank line: what micro keeps when it rewrites summary.md.
pub fn marked_sections(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!-- sluice-bench ") {
        let tail = &rest[start..];
        let Some(mode) = tail
            .strip_prefix("<!-- sluice-bench ")
            .and_then(|t| t.split_once(": begin -->"))
            .map(|(m, _)| m)
            .filter(|m| !m.contains(char::is_whitespace))
        else {
            rest = &tail[1..];
            continue;
        };
        let end = section_end(mode);
        let Some(stop) = tail.find(&end) else { break };
        out.push('\n');
        out.push_str(&tail[..stop + end.len()]);
        out.push('\n');
        rest = &tail[stop + end.len()..];
    }
    out
}

/// `text` with `mode`'s marked section replaced by `body` (appended if there is none).
pub fn splice_section(text: &str, mode: &str, body: &str) -> String {
    let (begin, end) = (section_begin(mode), section_end(mode));
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    match (text.find(&begin), text.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{section}{}", &text[..a], &text[b + end.len()..])
        }
        _ => {
            let mut out = text.trim_end().to_string();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(&section);
            out.push('\n');
            out
        }
    }
}

// ---------------------------------------------------------------------------------------
// control
// ---------------------------------------------------------------------------------------

/// Writes `control.json`, `control.svg` and the control section of `summary.md`.
pub fn write_control(report: &ControlReport, out_dir: &Path) -> Result<()> {
    write_mode(
        out_dir,
        "control",
        report,
        &control_markdown(report),
        |svg| control_chart_svg(report, svg),
    )
}

/// Writes `<mode>.json` (`report`), `<mode>.svg` (by `chart`) and `mode`'s section of
/// `summary.md` (`markdown`), keeping the other sections.
fn write_mode<R: serde::Serialize>(
    out_dir: &Path,
    mode: &str,
    report: &R,
    markdown: &str,
    chart: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    fs::create_dir_all(out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    write(&out_dir.join(format!("{mode}.json")), &(json + "\n"))?;
    let summary = out_dir.join("summary.md");
    let existing = fs::read_to_string(&summary).unwrap_or_default();
    write(&summary, &splice_section(&existing, mode, markdown))?;
    let svg = out_dir.join(format!("{mode}.svg"));
    chart(&svg).with_context(|| format!("drawing {}", svg.display()))
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

fn dist_row(name: &str, n: usize, d: &Dist, extra: &str) -> String {
    format!(
        "| {name} | {n} | {} | {} | {} | {} | {}{extra} |\n",
        f2(d.p50),
        f2(d.p90),
        f2(d.p99),
        f2(d.max),
        f2(d.min)
    )
}

fn summary_row(name: &str, s: &Summary, fmt: fn(f64) -> String) -> String {
    format!(
        "| {name} | {} | {} | {} |\n",
        fmt(s.median),
        fmt(s.min),
        fmt(s.max)
    )
}

fn steps_table(steps: &[StepResult], scale: f64, unit: &str) -> String {
    let mut s = format!("| step | what | median {unit} | min | max |\n|---|---|--:|--:|--:|\n");
    for st in steps {
        let _ = writeln!(
            s,
            "| `{}` | {} | {:.3} | {:.3} | {:.3} |",
            st.step,
            st.what,
            st.seconds.median * scale,
            st.seconds.min * scale,
            st.seconds.max * scale
        );
    }
    s
}

/// What a mode run with a real `sluiced` says about itself at the top of its section.
struct RunHeader<'a> {
    mode: &'a str,
    date_utc: &'a str,
    git_commit: Option<&'a str>,
    machine: &'a Machine,
    sluiced: &'a Path,
    sluiced_debug_build: bool,
    bench_debug_build: bool,
    /// Why a debug build of the harness matters for this mode.
    bench_debug_note: &'a str,
}

/// Title, date, source, machine and the builds of `sluiced` and the harness.
fn run_header(h: &RunHeader) -> String {
    let m = h.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# sluice-bench {}\n", h.mode);
    let _ = writeln!(s, "- date: {}", h.date_utc);
    let _ = writeln!(s, "- source: {}", h.git_commit.unwrap_or("unknown commit"));
    let _ = writeln!(
        s,
        "- machine: {} ({} CPUs), kernel {} {}; load average at start: {}",
        m.cpu_model, m.nproc, m.kernel_release, m.arch, m.loadavg_at_start
    );
    let _ = writeln!(
        s,
        "- sluiced: {}{}; harness{}",
        h.sluiced.display(),
        if h.sluiced_debug_build {
            " (**debug build**: not for publishing)"
        } else {
            ""
        },
        if h.bench_debug_build {
            format!(" **debug build** ({})", h.bench_debug_note)
        } else {
            " optimised".to_string()
        }
    );
    s
}

/// [`run_header`] of an end-to-end mode's run, and its load average at the end.
fn e2e_run_header(r: &RunInfo, bench_debug_note: &str) -> String {
    let mut s = run_header(&RunHeader {
        mode: &r.mode,
        date_utc: &r.date_utc,
        git_commit: r.git_commit.as_deref(),
        machine: &r.machine,
        sluiced: &r.params.sluiced,
        sluiced_debug_build: r.sluiced_debug_build,
        bench_debug_build: r.bench_debug_build,
        bench_debug_note,
    });
    let _ = writeln!(s, "- load average at the end: {}", r.loadavg_at_end);
    s
}

/// The control section of summary.md (also printed by the mode).
pub fn control_markdown(r: &ControlReport) -> String {
    let p = &r.params;
    let mut s = run_header(&RunHeader {
        mode: "control",
        date_utc: &r.date_utc,
        git_commit: r.git_commit.as_deref(),
        machine: &r.machine,
        sluiced: &p.sluiced,
        sluiced_debug_build: r.sluiced_debug_build,
        bench_debug_build: r.bench_debug_build,
        bench_debug_note: "the in-process figures are not for publishing",
    });
    let _ = writeln!(
        s,
        "- parameters: {} changes on 1 VPC, {} at scale; scale intent {} VPCs x {} custom routes ({} routes in the trie); {} runs{}; watcher pause {} µs",
        p.changes,
        p.scale_changes,
        p.vpcs,
        p.routes_per_vpc,
        r.apply.routes_total,
        p.runs,
        if p.quick { " (--quick)" } else { "" },
        p.poll_us
    );

    let _ = writeln!(s, "\n## API call to datapath (ms)\n");
    let _ = writeln!(
        s,
        "`PUT /v1/routes` until a frame run through `xdp_vm` against the daemon's maps takes the new verdict. Target: p99 < {} ms.\n",
        control::TARGET_LATENCY_P99_MS
    );
    s.push_str("| series | n | p50 | p90 | p99 | max | min | p99 < 50 ms |\n|---|--:|--:|--:|--:|--:|--:|:-:|\n");
    for l in [&r.latency_small, &r.latency_at_scale] {
        let name = format!(
            "API → datapath, {} ({} VPC{}, {} routes each)",
            l.label,
            l.vpcs,
            if l.vpcs == 1 { "" } else { "s" },
            l.routes_per_vpc
        );
        s.push_str(&dist_row(
            &name,
            l.api_to_datapath_ms.n,
            &l.api_to_datapath_ms,
            &format!(" | {}", yes(l.meets_target)),
        ));
        s.push_str(&dist_row(
            &format!("… of which API reply (controller commit), {}", l.label),
            l.api_reply_ms.n,
            &l.api_reply_ms,
            " | ",
        ));
        s.push_str(&dist_row(
            &format!("… reply → datapath (agent), {}", l.label),
            l.reply_to_datapath_ms.n,
            &l.reply_to_datapath_ms,
            " | ",
        ));
        s.push_str(&dist_row(
            &format!("add (no route → forward), {}", l.label),
            l.add_ms.n,
            &l.add_ms,
            " | ",
        ));
        s.push_str(&dist_row(
            &format!("replace (forward → blackhole), {}", l.label),
            l.replace_ms.n,
            &l.replace_ms,
            " | ",
        ));
    }
    let b = &r.baselines;
    s.push_str(&dist_row(
        "baseline: `GET /healthz` round trip (same client)",
        b.http_roundtrip_ms.n,
        &b.http_roundtrip_ms,
        " | ",
    ));
    s.push_str(&dist_row(
        "baseline: `PUT /v1/routes` of an unchanged route (validated, nothing committed)",
        b.noop_put_ms.n,
        &b.noop_put_ms,
        " | ",
    ));
    s.push_str(&dist_row(
        "baseline: route written into the pinned trie by the harness, seen by the watcher",
        b.direct_map_write_ms.n,
        &b.direct_map_write_ms,
        " | ",
    ));
    let _ = writeln!(
        s,
        "\nWatcher: one test run every {:.0} µs (1 VPC) / {:.0} µs (at scale) on average.",
        r.latency_small.poll_interval_us, r.latency_at_scale.poll_interval_us
    );

    let a = &r.apply;
    let _ = writeln!(
        s,
        "\n## Apply {} VPCs x {} routes, {} security-group rules (s)\n",
        a.vpcs, a.routes_per_vpc, a.sg_rules
    );
    let _ = writeln!(
        s,
        "`POST /v1/topology` into a fresh controller until the agent reports the generation applied; {} runs, each in a fresh lab. NICs: {}. Target: < {} s.\n",
        a.runs.len(),
        a.interfaces,
        control::TARGET_APPLY_S
    );
    s.push_str("| | median | min | max |\n|---|--:|--:|--:|\n");
    let st = &a.summary;
    s.push_str(&summary_row("total: call → applied", &st.total_s, f3));
    s.push_str(&summary_row(
        "controller commit (call → reply: parse, validate, store)",
        &st.commit_s,
        f3,
    ));
    s.push_str(&summary_row("agent (reply → applied)", &st.agent_s, f3));
    s.push_str(&summary_row(
        "… agent apply (its sluice_agent_apply_seconds: resolve, map writes, XDP attach)",
        &st.agent_apply_s,
        f3,
    ));
    s.push_str(&summary_row(
        "… the rest (long-poll wake-up, compile, tables as JSON over the socket, decode)",
        &st.agent_fetch_s,
        f3,
    ));
    s.push_str(&summary_row(
        "daemon resident memory after the apply (MiB)",
        &Summary {
            median: st.rss_after_kib.median / 1024.0,
            min: st.rss_after_kib.min / 1024.0,
            max: st.rss_after_kib.max / 1024.0,
        },
        |v| format!("{v:.0}"),
    ));
    if let Some(note) = &a.note {
        let _ = writeln!(s, "\n**Note:** {note}.");
    }
    if let Some(last) = a.runs.last() {
        let _ = writeln!(
            s,
            "\nMet: {}. Topology {:.1} MB in {} request(s). Maps afterwards: {} routes, {} endpoints, {} ports, {} VNIs; {} interfaces attached. Daemon memory: {:.0} MiB before, {:.0} MiB after, peak {:.0} MiB.",
            yes(a.meets_target),
            last.body_bytes as f64 / 1e6,
            last.requests,
            last.maps.routes,
            last.maps.endpoints,
            last.maps.ports,
            last.maps.vnis,
            last.interfaces_attached,
            last.rss_before_kib as f64 / 1024.0,
            last.rss_after_kib as f64 / 1024.0,
            last.rss_peak_kib as f64 / 1024.0
        );
    }
    let i = &r.idle_resync;
    let _ = writeln!(
        s,
        "\nIdle at scale: the agent's periodic resync ran {} applies in {:.1} s ({:.3} s of apply); the daemon used {:.2} s of CPU ({:.0} % of one CPU).",
        i.rounds,
        i.window_s,
        i.apply_s,
        i.cpu_s,
        i.cpu_share * 100.0
    );

    let ip = &r.in_process;
    let _ = writeln!(s, "\n## In-process breakdown (s, {} runs)\n", ip.runs);
    let _ = writeln!(
        s,
        "The same pipeline as library calls in one thread, inside a namespace with the same interfaces, into freshly loaded maps. Topology {:.1} MB of JSON, the host's tables {:.1} MB.\n",
        ip.topology_json_bytes as f64 / 1e6,
        ip.tables_json_bytes as f64 / 1e6
    );
    s.push_str(&steps_table(&ip.apply, 1.0, "s"));
    let _ = writeln!(
        s,
        "\nSum of medians: {:.3} s. The kernel programming the same routes into one routing table per VPC (`ip -batch`): median {:.3} s (min {:.3}, max {:.3}).",
        ip.apply_total_s,
        ip.kernel_fib_batch_s.median,
        ip.kernel_fib_batch_s.min,
        ip.kernel_fib_batch_s.max
    );
    let _ = writeln!(
        s,
        "\n### One route change, in process (ms)\n\nAt scale (sum of medians {:.2} ms):\n",
        ip.change_at_scale_total_ms
    );
    s.push_str(&steps_table(&ip.change_at_scale, 1e3, "ms"));
    let _ = writeln!(
        s,
        "\nOn the 1-VPC intent (sum of medians {:.2} ms):\n",
        ip.change_small_total_ms
    );
    s.push_str(&steps_table(&ip.change_small, 1e3, "ms"));
    if let Some(m) = &r.maglev {
        let _ = writeln!(
            s,
            "\n### Load balancer table build\n\nA Maglev table of {} backends ({} entries), in process, {} runs: weights all 100, median {:.1} ms (min {:.1}, max {:.1}); weights 1..100, median {:.1} ms (min {:.1}, max {:.1}). Creating and filling its inner map (one batch update), median {:.1} ms.",
            m.backends,
            m.table_size,
            m.runs,
            m.equal_weights_ms.median,
            m.equal_weights_ms.min,
            m.equal_weights_ms.max,
            m.mixed_weights_ms.median,
            m.mixed_weights_ms.min,
            m.mixed_weights_ms.max,
            m.load_ms.median
        );
    }
    s
}

/// Cumulative distributions of API → datapath (both intents) and the direct-write floor.
fn control_chart_svg(r: &ControlReport, out: &Path) -> Result<()> {
    let series: [(&str, Vec<f64>, RGBColor); 3] = [
        (
            "API → datapath, 1 VPC",
            r.latency_small
                .samples
                .iter()
                .map(|s| s.datapath_ms)
                .collect(),
            RGBColor(0x2f, 0x9e, 0x44),
        ),
        (
            "API → datapath, at scale",
            r.latency_at_scale
                .samples
                .iter()
                .map(|s| s.datapath_ms)
                .collect(),
            RGBColor(0xe0, 0x7b, 0x16),
        ),
        (
            "floor: direct map write → watcher",
            Vec::new(),
            RGBColor(0x2b, 0x6c, 0xb0),
        ),
    ];
    let floor = &r.baselines.direct_map_write_ms;
    let all_max = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .chain([floor.max, control::TARGET_LATENCY_P99_MS])
        .fold(1.0_f64, f64::max);
    let x_min = floor.min.clamp(0.001, 0.1) / 2.0;
    let x_max = all_max * 2.0;
    let root = SVGBackend::new(out, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "sluice-bench control: API call to datapath, cumulative; kernel {}",
                r.machine.kernel_release
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms (log scale)")
        .y_desc("fraction of changes")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .draw()?;
    let cdf = |v: &[f64]| -> Vec<(f64, f64)> {
        let mut s: Vec<f64> = v.iter().map(|x| x.max(x_min)).collect();
        s.sort_by(f64::total_cmp);
        let n = s.len() as f64;
        s.iter()
            .enumerate()
            .flat_map(|(i, x)| [(*x, i as f64 / n), (*x, (i + 1) as f64 / n)])
            .collect()
    };
    for (label, values, colour) in &series {
        if values.is_empty() {
            continue;
        }
        let colour = *colour;
        chart
            .draw_series(std::iter::once(PathElement::new(
                cdf(values),
                colour.stroke_width(2),
            )))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    // The floor as its p50..max band at the bottom.
    let (_, _, floor_colour) = series[2];
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(floor.p50.max(x_min), 0.02), (floor.max.max(x_min), 0.02)],
            floor_colour.stroke_width(4),
        )))?
        .label(format!(
            "floor: harness writes the trie, watcher sees it (p50 {} ms .. max {} ms)",
            f3(floor.p50),
            f3(floor.max)
        ))
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], floor_colour.stroke_width(4))
        });
    let target = control::TARGET_LATENCY_P99_MS;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(target, 0.0), (target, 1.0)],
            RED.stroke_width(1),
        )))?
        .label(format!("target: p99 < {target} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// e2e
// ---------------------------------------------------------------------------------------

/// Writes `e2e.json`, `e2e.svg` and the e2e section of `summary.md`.
pub fn write_e2e(report: &E2eReport, out_dir: &Path) -> Result<()> {
    write_mode(out_dir, "e2e", report, &e2e_markdown(report), |svg| {
        e2e_chart_svg(report, svg)
    })
}

// ---------------------------------------------------------------------------------------
// nat (end to end)
// ---------------------------------------------------------------------------------------

/// Writes `nat.json`, `nat.svg` and the nat section of `summary.md`.
pub fn write_nat(report: &NatReport, out_dir: &Path) -> Result<()> {
    write_mode(out_dir, "nat", report, &nat_markdown(report), |svg| {
        nat_chart_svg(report, svg)
    })
}

/// The nat section of summary.md (also printed by the mode).
pub fn nat_markdown(r: &NatReport) -> String {
    let p = &r.run.params;
    let mut s = e2e_run_header(
        &r.run,
        "its client and server threads are slower: not for publishing",
    );
    let _ = writeln!(
        s,
        "- {} round(s){}: short connections {} s per test, VM to the lab's Internet through Sluice's NAT gateway (SNAT EIP {}) and through nftables masquerade; client pinned to CPU {}, server to CPU {}; labs {}",
        p.runs,
        if p.quick { " (--quick)" } else { "" },
        p.crr_secs,
        r.eip,
        p.sender_cpu,
        p.receiver_cpu,
        r.run.labs.join(", ")
    );
    let _ = writeln!(
        s,
        "\n## Through NAT: Sluice against nftables masquerade (median, min–max over rounds)\n"
    );
    s.push_str(&comparison_table(&r.comparisons));
    let _ = writeln!(s, "\n## Per round\n");
    s.push_str("| round | dataplane | server ports | connections/s | connections | failed | translated out | translated in | client retransmits | server PAWS rejects | drops |\n|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
    for c in &r.crr {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            c.run,
            c.dataplane.name(),
            c.server_ports,
            c.per_second,
            c.connections,
            c.failures,
            c.counters.translated_out,
            c.counters.translated_in,
            c.counters.client_retransmits,
            c.counters.server_paws_rejected,
            drops_cell(&c.counters.drop_reasons)
        );
    }
    let _ = writeln!(
        s,
        "\nTranslated out/in: Sluice's `fwd_nat_out`/`fwd_nat_in` packets; the kernel's masquerade rule counter (first packet of each connection; replies are translated by conntrack without a rule)."
    );
    s
}

/// Drop counts by reason for a table cell (`none` when there are none).
fn drops_cell(drops: &std::collections::BTreeMap<String, u64>) -> String {
    if drops.is_empty() {
        return "none".into();
    }
    let v: Vec<String> = drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    v.join(", ")
}

/// The comparisons as a Markdown table: median (min–max) for each side and the ratio.
fn comparison_table(comparisons: &[Compared]) -> String {
    let mut s = String::from(
        "| test | unit | Sluice | kernel | Sluice ÷ kernel |\n|---|---|--:|--:|--:|\n",
    );
    for c in comparisons {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            c.metric,
            c.unit,
            spread(&c.sluice),
            spread(&c.kernel),
            c.ratio.as_ref().map_or("n/a".into(), spread),
        );
    }
    s
}

/// `Sluice ÷ kernel <median>` (and `÷ kernel+nft <median>` where measured) for a chart
/// title.
fn ratio_title(c: &Compared) -> String {
    let mut t = match &c.ratio {
        Some(v) => format!("Sluice ÷ kernel {:.2}", v.median),
        None => "no ratio".into(),
    };
    if let Some(v) = &c.ratio_nft {
        let _ = write!(t, ", ÷ kernel+nft {:.2}", v.median);
    }
    t
}

/// A chart of `size` with a two-line header (what, then the machine and date); returns the
/// area below the header.
fn chart_with_header<'a>(
    out: &'a Path,
    size: (u32, u32),
    what: &str,
    machine: &Machine,
    date_utc: &str,
    font_size: u32,
) -> Result<DrawingArea<SVGBackend<'a>, plotters::coord::Shift>> {
    let root = SVGBackend::new(out, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(56);
    let second = format!(
        "{} ({} CPUs), kernel {}; {date_utc}",
        machine.cpu_model, machine.nproc, machine.kernel_release
    );
    for (i, line) in [what, &second].iter().enumerate() {
        top.draw(&Text::new(
            line.to_string(),
            (14, 10 + 22 * i as i32),
            ("sans-serif", font_size).into_font(),
        ))?;
    }
    Ok(body)
}

/// One panel: connections per second through each NAT.
fn nat_chart_svg(r: &NatReport, out: &Path) -> Result<()> {
    ensure!(r.comparisons.len() == 2, "expected two NAT comparisons");
    let body = chart_with_header(
        out,
        (1000, 460),
        &format!(
            "sluice-bench nat: median of {} round(s), whiskers min–max",
            r.run.params.runs
        ),
        &r.run.machine,
        &r.run.date_utc,
        14,
    )?;
    let panels = body.split_evenly((1, 2));
    for ((c, title), panel) in r
        .comparisons
        .iter()
        .zip(["one server port", "64 server ports"])
        .zip(panels.iter())
    {
        e2e_panel(
            panel,
            &format!("connections/s through NAT, {title} ({})", ratio_title(c)),
            "connections/s",
            &[("SNAT vs masquerade", c)],
            false,
        )?;
    }
    body.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// lb (end to end)
// ---------------------------------------------------------------------------------------

/// Writes `lb.json`, `lb.svg` and the lb section of `summary.md`.
pub fn write_lb(report: &LbReport, out_dir: &Path) -> Result<()> {
    write_mode(out_dir, "lb", report, &lb_markdown(report), |svg| {
        lb_chart_svg(report, svg)
    })
}

/// The lb section of summary.md (also printed by the mode).
pub fn lb_markdown(r: &LbReport) -> String {
    let p = &r.run.params;
    let mut s = e2e_run_header(
        &r.run,
        "its client and server threads are slower: not for publishing",
    );
    let _ = writeln!(
        s,
        "- {} round(s){}: short connections {} s per test, a VM to VIP {} in front of {} backend VMs on the same host ({}), through Sluice's load balancer ({}) and through nftables DNAT with `numgen inc`; client pinned to CPU {}, servers to CPU {}; labs {}",
        p.runs,
        if p.quick { " (--quick)" } else { "" },
        p.crr_secs,
        r.vip,
        r.backends.len(),
        r.backends.join(", "),
        r.scheduler,
        p.sender_cpu,
        p.receiver_cpu,
        r.run.labs.join(", ")
    );
    let _ = writeln!(
        s,
        "\n## Through a VIP: Sluice against nftables numgen DNAT (median, min–max over rounds)\n"
    );
    s.push_str(&comparison_table(&r.comparisons));
    let _ = writeln!(s, "\n## Per round\n");
    s.push_str("| round | dataplane | connections/s | connections | failed | answered per backend | DNAT rule matched | client retransmits | drops |\n|--:|---|--:|--:|--:|---|--:|--:|---|\n");
    for c in &r.crr {
        let served: Vec<String> = c.served.iter().map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            c.run,
            c.dataplane.name(),
            c.per_second,
            c.connections,
            c.failures,
            served.join(" / "),
            c.counters
                .dnat_matched
                .map_or("n/a".into(), |n| n.to_string()),
            c.counters.client_retransmits,
            drops_cell(&c.counters.drop_reasons)
        );
    }
    let _ = writeln!(
        s,
        "\nAnswered per backend: connections each backend's server answered, all from the client's own address (checked). DNAT rule matched: the kernel's rule counter (first packet of each connection; replies are translated by conntrack without a rule)."
    );
    s
}

/// One panel: connections per second through the VIP.
fn lb_chart_svg(r: &LbReport, out: &Path) -> Result<()> {
    ensure!(r.comparisons.len() == 1, "expected one LB comparison");
    let c = &r.comparisons[0];
    let body = chart_with_header(
        out,
        (700, 460),
        &format!(
            "sluice-bench lb: median of {} round(s), whiskers min–max",
            r.run.params.runs
        ),
        &r.run.machine,
        &r.run.date_utc,
        14,
    )?;
    e2e_panel(
        &body,
        &format!(
            "connections/s through a VIP, {} backends ({})",
            r.backends.len(),
            ratio_title(c)
        ),
        "connections/s",
        &[(&format!("{} vs numgen DNAT", r.scheduler), c)],
        false,
    )?;
    body.present()?;
    Ok(())
}

/// A figure with the precision its size needs.
fn sig(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn spread(s: &Summary) -> String {
    format!("{} ({}–{})", sig(s.median), sig(s.min), sig(s.max))
}

/// The e2e section of summary.md (also printed by the mode).
pub fn e2e_markdown(r: &E2eReport) -> String {
    let p = &r.run.params;
    let mut s = e2e_run_header(
        &r.run,
        "its own threads, generator and receivers, are slower: not for publishing",
    );
    let _ = writeln!(
        s,
        "- {} round(s){}: UDP {} s, {} pings, iperf3 {} s, short connections {} s per test; senders pinned to CPU {}, receivers to CPU {}; VNI {}; labs {}",
        p.runs,
        if p.quick { " (--quick)" } else { "" },
        p.udp_secs,
        p.pings,
        p.tcp_secs,
        p.crr_secs,
        p.sender_cpu,
        p.receiver_cpu,
        r.vni,
        r.run.labs.join(", ")
    );
    let _ = writeln!(
        s,
        "\n## Sluice against the kernel (median, min–max over rounds)\n"
    );
    s.push_str(
        "| test | unit | Sluice | kernel | Sluice ÷ kernel | kernel + nftables | Sluice ÷ kernel + nftables | better |\n|---|---|--:|--:|--:|--:|--:|---|\n",
    );
    let cell = |v: &Option<Summary>| v.as_ref().map_or("n/a".into(), spread);
    for c in &r.comparisons {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.metric,
            c.unit,
            spread(&c.sluice),
            spread(&c.kernel),
            cell(&c.ratio),
            cell(&c.kernel_nft),
            cell(&c.ratio_nft),
            if c.higher_is_better {
                "higher"
            } else {
                "lower"
            }
        );
    }
    let _ = writeln!(
        s,
        "\nRatios are taken per round (the dataplanes measured back to back), then summarised. Sluice's NICs carry the VPC's default security group (stateful: connection table, ingress from the group's members): \"kernel + nftables\" is the kernel path with the same policy in nftables over conntrack, the like-for-like baseline; \"kernel\" filters nothing."
    );

    let _ = writeln!(s, "\n## UDP, 64-byte frames, per round\n");
    s.push_str("| round | dataplane | sent Mpps | arrived at rx NIC Mpps | received Mpps | loss % | socket buffer overflows | path: sender host / receiver host / drops |\n|--:|---|--:|--:|--:|--:|--:|---|\n");
    for u in &r.udp {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} / {} / {} |",
            u.run,
            u.dataplane.name(),
            u.offered_pps / 1e6,
            u.arrived_pps / 1e6,
            u.received_pps / 1e6,
            u.loss * 100.0,
            u.rcvbuf_errors,
            u.path.sender_host,
            u.path.receiver_host,
            u.path.drops
        );
    }
    let _ = writeln!(s, "\n## UDP ping-pong RTT (µs), per round\n");
    s.push_str("| round | dataplane | n | lost | min | p50 | p99 | p99.9 | max |\n|--:|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for l in &r.latency {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            l.run,
            l.dataplane.name(),
            l.n,
            l.lost,
            l.min_us,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us
        );
    }
    let _ = writeln!(s, "\n## TCP, per round\n");
    s.push_str("| round | dataplane | iperf3 Gbit/s | retransmits | connections/s | connections | failed |\n|--:|---|--:|--:|--:|--:|--:|\n");
    for t in &r.tcp {
        let c = r
            .crr
            .iter()
            .find(|c| c.run == t.run && c.dataplane == t.dataplane);
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {} | {} | {} |",
            t.run,
            t.dataplane.name(),
            t.gbit_per_s,
            t.retransmits,
            c.map_or("-".into(), |c| format!("{:.0}", c.per_second)),
            c.map_or("-".into(), |c| c.connections.to_string()),
            c.map_or("-".into(), |c| c.failures.to_string()),
        );
    }
    let md = &r.method;
    let _ = writeln!(s, "\n## Method\n");
    for (what, text) in [
        ("Topology", &md.topology),
        ("Generator", &md.generator),
        ("Receiver", &md.receiver),
        ("Latency", &md.latency),
        ("TCP throughput", &md.tcp),
        ("Connections", &md.crr),
        ("CPUs", &md.cpus),
        ("Rounds", &md.rounds),
    ] {
        let _ = writeln!(s, "- **{what}.** {text}");
    }
    let _ = writeln!(
        s,
        "\nAfter teardown no namespace of the labs was left (`ip netns list` checked)."
    );
    s
}

const SLUICE_COLOUR: RGBColor = RGBColor(0x2f, 0x9e, 0x44);
const KERNEL_COLOUR: RGBColor = RGBColor(0x7a, 0x7a, 0x7a);
const KERNEL_NFT_COLOUR: RGBColor = RGBColor(0xb0, 0xb0, 0xb0);

/// One panel: for each group a bar per dataplane measured (Sluice, kernel, and kernel +
/// nftables where the mode has it), each a median with a min–max whisker.
fn e2e_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    groups: &[(&str, &Compared)],
    log_scale: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let bars: Vec<(String, Dataplane, Summary)> = groups
        .iter()
        .flat_map(|(g, c)| {
            let present = [
                (Dataplane::Sluice, Some(c.sluice)),
                (Dataplane::Kernel, Some(c.kernel)),
                (Dataplane::KernelNft, c.kernel_nft),
            ]
            .into_iter()
            .filter_map(|(dp, v)| v.map(|v| (dp, v)))
            .collect::<Vec<_>>();
            // One group: each bar its dataplane; several: the group's name under its
            // middle bar (the legend names the colours).
            let mid = present.len() / 2;
            present.into_iter().enumerate().map(move |(i, (dp, v))| {
                let label = if groups.len() == 1 {
                    dp.name().to_string()
                } else if i == mid {
                    g.to_string()
                } else {
                    String::new()
                };
                (label, dp, v)
            })
        })
        .collect();
    let n = bars.len();
    let top = bars
        .iter()
        .map(|(_, _, v)| v.max.max(v.median))
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let floor = bars
        .iter()
        .map(|(_, _, v)| v.min)
        .fold(f64::INFINITY, f64::min)
        .max(1e-9);
    // Log scale: bars start at a third of the smallest figure; whiskers and labels stay
    // inside. Linear: from 0, with room for the labels.
    let (y_min, y_max) = if log_scale {
        (floor / 3.0, top * 6.0)
    } else {
        (0.0, top * 1.2)
    };
    let y = |v: f64| v.max(y_min);
    let above = |v: f64| {
        if log_scale {
            v * 1.08
        } else {
            v + y_max * 0.01
        }
    };
    let builder = |area| {
        let mut b = ChartBuilder::on(area);
        b.caption(title, ("sans-serif", 17))
            .margin(14)
            .x_label_area_size(30)
            .y_label_area_size(64);
        b
    };
    // Segments 0..n-1 (plus the axis end): one per bar.
    let x = (0..n.saturating_sub(1)).into_segmented();
    if log_scale {
        let chart = builder(area).build_cartesian_2d(x, (y_min..y_max).log_scale())?;
        e2e_bars(chart, &bars, unit, y, above)
    } else {
        let chart = builder(area).build_cartesian_2d(x, y_min..y_max)?;
        e2e_bars(chart, &bars, unit, y, above)
    }
}

/// Draws [`e2e_panel`]'s bars, whiskers, labels and legend on either kind of y axis.
fn e2e_bars<'a, DB: DrawingBackend + 'a, Y>(
    mut chart: ChartContext<'a, DB, Cartesian2d<SegmentedCoord<RangedCoordusize>, Y>>,
    bars: &[(String, Dataplane, Summary)],
    unit: &str,
    y: impl Fn(f64) -> f64,
    above: impl Fn(f64) -> f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                bars.get(*i).map(|b| b.0.clone()).unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc(unit)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    for (dp, colour) in [
        (Dataplane::Sluice, SLUICE_COLOUR),
        (Dataplane::Kernel, KERNEL_COLOUR),
        (Dataplane::KernelNft, KERNEL_NFT_COLOUR),
    ] {
        if !bars.iter().any(|b| b.1 == dp) {
            continue;
        }
        let rects = bars
            .iter()
            .enumerate()
            .filter(|(_, b)| b.1 == dp)
            .map(|(i, b)| {
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), y(0.0)),
                        (SegmentValue::Exact(i + 1), y(b.2.median)),
                    ],
                    colour.filled(),
                );
                r.set_margin(0, 0, 10, 10);
                r
            });
        chart
            .draw_series(rects)?
            .label(dp.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        PathElement::new(
            vec![
                (SegmentValue::CenterOf(i), y(b.2.min)),
                (SegmentValue::CenterOf(i), y(b.2.max)),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    let label_style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        Text::new(
            sig(b.2.median),
            (SegmentValue::CenterOf(i), above(y(b.2.max.max(b.2.median)))),
            label_style.clone(),
        )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Four panels: UDP packet rate, ping-pong RTT percentiles, TCP throughput, connections.
fn e2e_chart_svg(r: &E2eReport, out: &Path) -> Result<()> {
    let find = |metric: &str| {
        r.comparisons
            .iter()
            .find(|c| c.metric == metric)
            .with_context(|| format!("no {metric} comparison"))
    };
    let root = SVGBackend::new(out, (1100, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(56);
    for (i, line) in [
        format!(
            "sluice-bench e2e: Sluice against the kernel's bridge + VXLAN, VM to VM across two hosts; median of {} round(s), whiskers min–max",
            r.run.params.runs
        ),
        format!(
            "{} ({} CPUs), kernel {}; senders pinned to CPU {}, receivers to CPU {}; {}",
            r.run.machine.cpu_model,
            r.run.machine.nproc,
            r.run.machine.kernel_release,
            r.run.params.sender_cpu,
            r.run.params.receiver_cpu,
            r.run.date_utc
        ),
    ]
    .iter()
    .enumerate()
    {
        top.draw(&Text::new(
            line.clone(),
            (14, 10 + 22 * i as i32),
            ("sans-serif", 16).into_font(),
        ))?;
    }
    let panels = body.split_evenly((2, 2));
    let ratio = ratio_title;
    let (sent, arrived, recv) = (
        find("UDP sent")?,
        find("UDP arrived at rx NIC")?,
        find("UDP received")?,
    );
    e2e_panel(
        &panels[0],
        &format!(
            "UDP, 64-byte frames, generator flat out (received: {})",
            ratio(recv)
        ),
        "Mpps",
        &[("sent", sent), ("arrived", arrived), ("received", recv)],
        false,
    )?;
    let (p50, p99, p999) = (
        find("latency p50")?,
        find("latency p99")?,
        find("latency p99.9")?,
    );
    e2e_panel(
        &panels[1],
        &format!("UDP ping-pong RTT, log scale (p50: {})", ratio(p50)),
        "µs",
        &[("p50", p50), ("p99", p99), ("p99.9", p999)],
        true,
    )?;
    let tcp = find("TCP throughput")?;
    e2e_panel(
        &panels[2],
        &format!("TCP throughput, iperf3 ({})", ratio(tcp)),
        "Gbit/s",
        &[("1 stream", tcp)],
        false,
    )?;
    let crr = find("TCP connections")?;
    e2e_panel(
        &panels[3],
        &format!("TCP connections per second ({})", ratio(crr)),
        "connections/s",
        &[("connect, 1 B each way, close", crr)],
        false,
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod section_tests {
    use super::*;

    #[test]
    fn a_section_is_appended_then_replaced_and_the_rest_kept() {
        let micro = "# micro\n\ntable\n";
        let once = splice_section(micro, "control", "first");
        assert!(
            once.starts_with("# micro\n\ntable\n\n<!-- sluice-bench control: begin -->\nfirst\n")
        );
        let twice = splice_section(&once, "control", "second\n");
        assert!(
            twice.contains("second") && !twice.contains("first"),
            "{twice}"
        );
        assert!(twice.starts_with(micro.trim_end()));
        assert_eq!(twice.matches("control: begin").count(), 1);
    }

    #[test]
    fn micro_keeps_the_marked_sections_of_other_modes() {
        let text = splice_section("# old micro\n", "control", "ctl body");
        let text = splice_section(&text, "e2e", "e2e body");
        let kept = marked_sections(&text);
        assert!(!kept.contains("old micro"));
        assert!(kept.contains("ctl body") && kept.contains("e2e body"));
        assert_eq!(marked_sections("# nothing marked\n"), "");
        // An unterminated section is not kept half.
        assert_eq!(
            marked_sections("<!-- sluice-bench control: begin -->\nx"),
            ""
        );
    }
}

#[cfg(test)]
mod e2e_tests {
    use super::*;
    use crate::e2e::{labs::PathCounters, CrrRun, LatencyRun, Method, Params, TcpRun, UdpRun};

    fn summary(v: f64) -> Summary {
        Summary {
            median: v,
            min: v * 0.9,
            max: v * 1.1,
        }
    }

    fn compared(metric: &str, unit: &str, s: f64, k: f64) -> Compared {
        Compared {
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better: !matches!(unit, "µs" | "%"),
            sluice: summary(s),
            kernel: summary(k),
            ratio: (k != 0.0).then(|| summary(s / k)),
            kernel_nft: Some(summary(k * 0.8)),
            ratio_nft: (k != 0.0).then(|| summary(s / (k * 0.8))),
        }
    }

    pub fn run_info(mode: &str) -> RunInfo {
        RunInfo {
            mode: mode.into(),
            date_utc: "2026-12-03T00:00:00Z".into(),
            git_commit: Some("abc".into()),
            machine: crate::machine::Machine::collect(),
            loadavg_at_end: "0.50 0.40 0.30 1/100 1".into(),
            params: Params {
                quick: true,
                runs: 1,
                udp_secs: 0.3,
                pings: 300,
                ping_warmup: 20,
                tcp_secs: 1.0,
                crr_secs: 0.3,
                sender_cpu: 1,
                receiver_cpu: 0,
                sluiced: "/x/release/sluiced".into(),
            },
            bench_debug_build: false,
            sluiced_debug_build: false,
            labs: vec!["sl0001".into(), "sl0002".into()],
            leftover_namespaces: vec![],
        }
    }

    pub fn sample() -> E2eReport {
        let dp = [Dataplane::Sluice, Dataplane::Kernel];
        let text = String::from("text");
        E2eReport {
            run: run_info("e2e"),
            method: Method {
                topology: text.clone(),
                generator: text.clone(),
                receiver: text.clone(),
                latency: text.clone(),
                tcp: text.clone(),
                crr: text.clone(),
                cpus: text.clone(),
                rounds: text,
            },
            vni: 1,
            comparisons: vec![
                compared("UDP sent", "Mpps", 1.2, 0.4),
                compared("UDP arrived at rx NIC", "Mpps", 1.15, 0.4),
                compared("UDP received", "Mpps", 1.1, 0.4),
                compared("UDP loss", "%", 2.0, 0.0),
                compared("latency p50", "µs", 40.0, 50.0),
                compared("latency p99", "µs", 90.0, 120.0),
                compared("latency p99.9", "µs", 900.0, 2000.0),
                compared("TCP throughput", "Gbit/s", 1.5, 2.0),
                compared("TCP connections", "per s", 5000.0, 4000.0),
            ],
            udp: dp
                .iter()
                .map(|d| UdpRun {
                    run: 0,
                    dataplane: *d,
                    sent: 100,
                    secs: 1.0,
                    offered_pps: 100.0,
                    received: 99,
                    received_pps: 99.0,
                    loss: 0.01,
                    arrived_nic: 99,
                    arrived_pps: 99.0,
                    rcvbuf_errors: 0,
                    foreign: 0,
                    path: PathCounters::default(),
                })
                .collect(),
            latency: dp
                .iter()
                .map(|d| LatencyRun {
                    run: 0,
                    dataplane: *d,
                    n: 300,
                    lost: 0,
                    min_us: 30.0,
                    p50_us: 40.0,
                    p99_us: 90.0,
                    p999_us: 900.0,
                    max_us: 1000.0,
                })
                .collect(),
            tcp: dp
                .iter()
                .map(|d| TcpRun {
                    run: 0,
                    dataplane: *d,
                    gbit_per_s: 1.5,
                    retransmits: 0,
                })
                .collect(),
            crr: dp
                .iter()
                .map(|d| CrrRun {
                    run: 0,
                    dataplane: *d,
                    connections: 1500,
                    failures: 0,
                    secs: 0.3,
                    per_second: 5000.0,
                })
                .collect(),
        }
    }

    #[test]
    fn e2e_files_are_written_and_other_sections_kept() {
        let dir = std::env::temp_dir().join(format!("sluice-e2e-report-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let summary = splice_section("# micro\n", "control", "control body");
        fs::write(dir.join("summary.md"), summary).unwrap();
        let r = sample();
        write_e2e(&r, &dir).unwrap();
        let back: E2eReport =
            serde_json::from_str(&fs::read_to_string(dir.join("e2e.json")).unwrap()).unwrap();
        // (Floats may differ in the last bit after the round trip.)
        assert_eq!(back.comparisons.len(), r.comparisons.len());
        assert_eq!((&back.udp, &back.tcp, &back.crr), (&r.udp, &r.tcp, &r.crr));
        let md = fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.starts_with("# micro"), "{md}");
        assert!(md.contains("control body"));
        assert!(md.contains("<!-- sluice-bench e2e: begin -->"));
        // Loss has no ratio when the kernel lost nothing.
        assert!(
            md.contains("| UDP loss | % | 2.00 (1.80–2.20) | 0.000 (0.000–0.000) | n/a | 0.000 (0.000–0.000) | n/a | lower |"),
            "{md}"
        );
        assert!(
            md.contains("| UDP received | Mpps | 1.10 (0.990–1.21)"),
            "{md}"
        );
        let svg = fs::read_to_string(dir.join("e2e.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("p99.9") && svg.contains("kernel+nft"),
            "not the chart"
        );
        // Written twice, the section is replaced, not repeated.
        write_e2e(&r, &dir).unwrap();
        let md = fs::read_to_string(dir.join("summary.md")).unwrap();
        assert_eq!(md.matches("e2e: begin").count(), 1);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn lb_files_are_written_with_the_per_backend_counts() {
        use crate::e2e::{
            lb::{LbCounters, LbCrrRun},
            CrrMethod,
        };
        let dir = std::env::temp_dir().join(format!("sluice-lb-report-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let text = String::from("text");
        let crr = |dataplane, served: Vec<u64>, dnat_matched| LbCrrRun {
            run: 0,
            dataplane,
            connections: served.iter().sum(),
            failures: 0,
            secs: 1.0,
            per_second: served.iter().sum::<u64>() as f64,
            served,
            foreign_peers: 0,
            counters: LbCounters {
                dnat_matched,
                ..LbCounters::default()
            },
        };
        let r = LbReport {
            run: run_info("lb"),
            method: CrrMethod {
                topology: text.clone(),
                crr: text.clone(),
                cpus: text.clone(),
                rounds: text,
            },
            vip: "10.0.1.100:80".into(),
            scheduler: "maglev".into(),
            backends: vec!["10.0.1.21:9002".into(), "10.0.1.22:9002".into()],
            comparisons: vec![compared(
                "TCP connections through a VIP",
                "per s",
                6000.0,
                5000.0,
            )],
            crr: vec![
                crr(Dataplane::Sluice, vec![3100, 2900], None),
                crr(Dataplane::Kernel, vec![2500, 2500], Some(5000)),
            ],
        };
        write_lb(&r, &dir).unwrap();
        let back: LbReport =
            serde_json::from_str(&fs::read_to_string(dir.join("lb.json")).unwrap()).unwrap();
        assert_eq!(back.crr, r.crr);
        assert_eq!(back.run.labs, r.run.labs);
        let md = fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.contains("<!-- sluice-bench lb: begin -->"), "{md}");
        assert!(
            md.contains("| TCP connections through a VIP | per s | 6000 (5400–6600) | 5000 (4500–5500) | 1.20 (1.08–1.32) |"),
            "{md}"
        );
        assert!(
            md.contains("| 0 | sluice | 6000 | 6000 | 0 | 3100 / 2900 | n/a | 0 | none |"),
            "{md}"
        );
        assert!(
            md.contains("| 0 | kernel | 5000 | 5000 | 0 | 2500 / 2500 | 5000 | 0 | none |"),
            "{md}"
        );
        let svg = fs::read_to_string(dir.join("lb.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("Sluice ÷ kernel 1.20"),
            "not the chart"
        );
        fs::remove_dir_all(&dir).ok();
    }
}
