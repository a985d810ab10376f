//! Writing results: `micro.json` (everything), `summary.md` (a table) and `micro.svg`
//! (a bar chart of the median net cost per path).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    micro::{MicroReport, PathResult},
    vpc::Scale,
};

/// Writes all three files into `out_dir` (created if missing).
pub fn write_micro(report: &MicroReport, out_dir: &Path) -> Result<()> {
    fs::create_dir_all(out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    write(&out_dir.join("micro.json"), &(json + "\n"))?;
    write(&out_dir.join("summary.md"), &summary_markdown(report))?;
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
        "\nns per packet: the kernel's mean per repetition (whole ns per call). net = minus the median of the floor measured the same way (`repeat`/`restored`: `floor`; `fresh R × C`: `floor_repeat_R`). noise = (median − min) / median of the raw figure. `restored`: through the bench wrapper that moves `data` back after the real entry point (its cost is included). `fresh R × C`: C calls per run, each on a fresh copy of the frame with R repetitions, for paths that change their frame (TTL, ARP reply); with few repetitions per call the per-call timer and cold start weigh more, so these are noisier than the repeated ones."
    );
    if !report.scale_ratios.is_empty() {
        s.push_str("\n## 10 routes against 100,000 routes\n\n");
        s.push_str(&scale_markdown(report));
        s.push_str("\n## Issue 3 targets\n\n");
        s.push_str(&targets_markdown(report));
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
