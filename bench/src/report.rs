//! Writing results: `micro.json` (everything), `summary.md` (a table) and `micro.svg`
//! (a bar chart of the median net cost per path).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::micro::{MicroReport, FLOOR};

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

/// Machine and parameter lines plus the results table.
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
    let _ = writeln!(
        s,
        "- BPF_PROG_TEST_RUN, repeat {} per run, {} runs per path{}, measuring thread pinned to CPU {}",
        p.repeat,
        p.runs,
        if p.quick { " (--quick)" } else { "" },
        p.cpu
    );
    let _ = writeln!(
        s,
        "- floor (empty XDP program): median {} ns, min {} ns, max {} ns per packet\n",
        num(report.floor_ns.median),
        num(report.floor_ns.min),
        num(report.floor_ns.max)
    );
    s.push_str(&table_markdown(report));
    let _ = writeln!(
        s,
        "\nns per packet: the kernel's mean per repetition (whole ns). net = minus the floor's median. noise = (median − min) / median of the raw figure."
    );
    s
}

/// The results table alone (also pasted into bench/README.md).
pub fn table_markdown(report: &MicroReport) -> String {
    let mut s = String::new();
    s.push_str(
        "| path | program | verdict | frame B | median ns | min | max | net median | net min | net max | noise |\n",
    );
    s.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in &report.paths {
        let verdict = match &r.expected_reason {
            Some(reason) => format!("{} `{reason}`", short_action(&r.expected_action)),
            None => short_action(&r.expected_action).to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% |",
            r.name,
            r.program,
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
    let rows: Vec<_> = report.paths.iter().filter(|r| r.name != FLOOR).collect();
    let n = rows.len().max(1);
    // Row `i` of the table is drawn in segment `n - 1 - i`, so the chart reads top-down.
    let seg = |i: usize| n - 1 - i;
    let x_max = rows.iter().map(|r| r.net_ns.max).fold(1.0_f64, f64::max) * 1.15;
    let height = 130 + 40 * n as u32;
    let root = SVGBackend::new(out, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "sluice-bench micro: ns per packet net of the floor ({} ns); kernel {}, CPU {} pinned",
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
        .x_desc("ns per packet, net of the empty-program floor (bar: median over runs; whisker: min to max)")
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    let bar = RGBColor(0x2b, 0x6c, 0xb0);
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let mut rect = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(seg(i))),
                (r.net_ns.median.max(0.0), SegmentValue::Exact(seg(i) + 1)),
            ],
            bar.filled(),
        );
        rect.set_margin(6, 6, 0, 0);
        rect
    }))?;
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
    root.present()?;
    Ok(())
}
