//! Writing results: `micro.json` (everything), `summary.md` (a table) and `micro.svg`
//! (a bar chart of the median net cost per path).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    control::{self, ControlReport, Dist, StepResult},
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
    fs::create_dir_all(out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    write(&out_dir.join("control.json"), &(json + "\n"))?;
    let summary = out_dir.join("summary.md");
    let existing = fs::read_to_string(&summary).unwrap_or_default();
    write(
        &summary,
        &splice_section(&existing, "control", &control_markdown(report)),
    )?;
    let svg = out_dir.join("control.svg");
    control_chart_svg(report, &svg).with_context(|| format!("drawing {}", svg.display()))?;
    Ok(())
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

/// The control section of summary.md (also printed by the mode).
pub fn control_markdown(r: &ControlReport) -> String {
    let m = &r.machine;
    let p = &r.params;
    let mut s = String::new();
    let _ = writeln!(s, "# sluice-bench control\n");
    let _ = writeln!(s, "- date: {}", r.date_utc);
    let _ = writeln!(
        s,
        "- source: {}",
        r.git_commit.as_deref().unwrap_or("unknown commit")
    );
    let _ = writeln!(
        s,
        "- machine: {} ({} CPUs), kernel {} {}; load average at start: {}",
        m.cpu_model, m.nproc, m.kernel_release, m.arch, m.loadavg_at_start
    );
    let _ = writeln!(
        s,
        "- sluiced: {}{}; harness{}",
        p.sluiced.display(),
        if r.sluiced_debug_build {
            " (**debug build**: not for publishing)"
        } else {
            ""
        },
        if r.bench_debug_build {
            " **debug build** (the in-process figures are not for publishing)"
        } else {
            " optimised"
        }
    );
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
        "\n## Apply {} VPCs x {} routes (s)\n",
        a.vpcs, a.routes_per_vpc
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
