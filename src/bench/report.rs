//! What a run reports: a human summary or one JSON object, the latency distribution as an
//! HdrHistogram `.hgrm` text file, and percentile-spectrum plots (SVG, drawn here: a dozen
//! lines of geometry did not justify a plotting crate with font and image dependencies).

use super::baseline::Baseline;
use super::{LoadArgs, Measured};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Produce,
    Consume,
    ConsumeTail,
    E2e,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        let at = |q: f64| histogram.value_at_quantile(q) as f64;
        Latency {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
            p99_99: at(0.9999),
            max: histogram.max() as f64,
            mean: histogram.mean(),
            count: histogram.len(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub workload: Workload,
    pub topic: String,
    pub record_size: usize,
    pub acks: i16,
    pub seconds: f64,
    pub records: u64,
    pub bytes: u64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub errors: u64,
    /// Produce: per request, from when it was due. Consume: per fetch. E2e: per record.
    pub latency_us: Latency,
    /// E2e only: the same run's produce latency, per request from when it was due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produce_latency_us: Option<Latency>,
    pub baseline: Option<Baseline>,
    /// Throughput as a share of the baseline that bounds this workload.
    pub baseline_ratio: Option<f64>,
    pub baseline_bound: Option<&'static str>,
    /// Share of this machine's CPU time the hypervisor took during the run (/proc/stat
    /// steal): on a VM, latency tails above it are the host's, not the broker's.
    pub cpu_steal_percent: Option<f64>,
    #[serde(skip)]
    histogram: Histogram<u64>,
}

impl Summary {
    pub fn new(
        workload: Workload,
        args: &LoadArgs,
        measured: Measured,
        elapsed: Duration,
        baseline: Option<Baseline>,
    ) -> Summary {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let mb_per_s = measured.bytes as f64 / seconds / 1e6;
        let bound = baseline.as_ref().map(|b| match workload {
            Workload::Produce if b.write_mb_per_s <= b.loopback_mb_per_s => {
                ("O_DIRECT write", b.write_mb_per_s)
            }
            Workload::Produce => ("loopback TCP", b.loopback_mb_per_s),
            Workload::Consume => ("O_DIRECT read", b.read_mb_per_s),
            Workload::ConsumeTail | Workload::E2e => ("loopback TCP", b.loopback_mb_per_s),
        });
        Summary {
            workload,
            topic: args.topic.clone(),
            record_size: args.record_size,
            acks: args.acks,
            seconds,
            records: measured.records,
            bytes: measured.bytes,
            records_per_s: measured.records as f64 / seconds,
            mb_per_s,
            errors: measured.errors,
            latency_us: Latency::of(&measured.latency_us),
            produce_latency_us: measured.produce_latency_us.as_ref().map(Latency::of),
            baseline_ratio: bound.map(|(_, limit)| mb_per_s / limit.max(1e-9)),
            baseline_bound: bound.map(|(name, _)| name),
            baseline,
            cpu_steal_percent: None,
            histogram: measured.latency_us,
        }
    }
}

/// Prints the run and writes the files it was asked for.
pub fn finish(summary: &Summary, args: &LoadArgs) -> Result<(), String> {
    if let Some(path) = &args.hgrm {
        std::fs::write(path, hgrm(&summary.histogram))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let name = format!("{:?} {}", summary.workload, args.bootstrap);
        let svg = spectrum_svg(&[(name, spectrum(&summary.histogram))]);
        std::fs::write(path, svg).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if args.json {
        let text = serde_json::to_string(summary).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "{:?}: {} records in {:.1} s: {:.0} records/s, {:.1} MB/s, {} errors",
        summary.workload,
        summary.records,
        summary.seconds,
        summary.records_per_s,
        summary.mb_per_s,
        summary.errors
    );
    print_latency("latency", &summary.latency_us);
    if let Some(produce) = &summary.produce_latency_us {
        print_latency("produce latency", produce);
    }
    if let (Some(ratio), Some(bound)) = (summary.baseline_ratio, summary.baseline_bound) {
        println!("{:.2} of this machine's {bound} baseline", ratio);
    }
    if let Some(steal) = summary.cpu_steal_percent.filter(|steal| *steal >= 1.0) {
        println!("the hypervisor stole {steal:.0}% of the CPU time during the run");
    }
    Ok(())
}

fn print_latency(label: &str, l: &Latency) {
    println!(
        "{label} µs: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
        l.p50, l.p90, l.p99, l.p99_9, l.p99_99, l.max
    );
}

/// (total, steal) CPU ticks of the whole machine so far, from /proc/stat (Linux).
pub fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    Some((ticks.iter().take(8).sum(), *ticks.get(7)?))
}

pub fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((total0, steal0), (total1, steal1)) = (before?, after?);
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(100.0 * steal1.saturating_sub(steal0) as f64 / total as f64)
}

pub fn print_baseline(baseline: &Baseline, json: bool) -> Result<(), String> {
    if json {
        println!("{}", serde_json::to_string(baseline).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!(
        "O_DIRECT write {:.0} MB/s, read {:.0} MB/s ({} KiB blocks); one {} B write p50 {:.0} µs p99 {:.0} µs; append+fdatasync p50 {:.0} µs p99 {:.0} µs; loopback TCP {:.0} MB/s ({} B messages)",
        baseline.write_mb_per_s,
        baseline.read_mb_per_s,
        baseline.block_bytes >> 10,
        baseline.message_bytes,
        baseline.small_write_us_p50,
        baseline.small_write_us_p99,
        baseline.fdatasync_us_p50,
        baseline.fdatasync_us_p99,
        baseline.loopback_mb_per_s,
        baseline.message_bytes
    );
    Ok(())
}

/// The classic HdrHistogram percentile distribution text (values in ms), as HdrHistogram's
/// own tools and plotters read it.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for step in histogram.iter_quantiles(5) {
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 { format!("{:14.2}", 1.0 / (1.0 - quantile)) } else { String::new() };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {inverse}",
            step.value_iterated_to() as f64 / 1000.0,
            quantile,
            step.count_since_last_iteration()
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / 1000.0,
        histogram.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    out
}

/// (percentile, latency ms) points of a histogram.
fn spectrum(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    histogram
        .iter_quantiles(5)
        .map(|s| (s.quantile_iterated_to(), s.value_iterated_to() as f64 / 1000.0))
        .collect()
}

/// Reads the (percentile, value) rows of an .hgrm file.
pub fn parse_hgrm(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let value: f64 = fields.next()?.parse().ok()?;
            let quantile: f64 = fields.next()?.parse().ok()?;
            Some((quantile, value))
        })
        .collect()
}

pub fn plot_files(files: &[PathBuf], out: &Path) -> Result<(), String> {
    let mut series = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("read {}: {e}", file.display()))?;
        let name =
            file.file_stem().map_or_else(|| file.display().to_string(), |s| s.to_string_lossy().into_owned());
        series.push((name, parse_hgrm(&text)));
    }
    std::fs::write(out, spectrum_svg(&series)).map_err(|e| format!("write {}: {e}", out.display()))
}

/// The percentile spectrum: x is log10(1 / (1 - percentile)) so the tail gets room (90%,
/// 99%, 99.9%, …), y is latency in ms.
pub fn spectrum_svg(series: &[(String, Vec<(f64, f64)>)]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 50.0;
    const TOP: f64 = 20.0;
    const RIGHT: f64 = 20.0;
    const DECADES: f64 = 6.0;
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    let y_max =
        series.iter().flat_map(|(_, points)| points.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(0.001)
            * 1.05;
    let x =
        |q: f64| LEFT + (W - LEFT - RIGHT) * ((1.0 / (1.0 - q.min(0.999_999))).log10() / DECADES).min(1.0);
    let y = |v: f64| H - BOTTOM - (H - BOTTOM - TOP) * v / y_max;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"].iter().enumerate() {
        let px = LEFT + (W - LEFT - RIGHT) * i as f64 / DECADES;
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
    }
    for i in 0..=4 {
        let value = y_max * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{value:.2}</text>",
            LEFT - 6.0,
            y(value) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">latency (ms)</text>",
        (W + LEFT) / 2.0,
        H - 8.0,
        H / 2.0,
        H / 2.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = points.iter().map(|&(q, v)| format!("{:.1},{:.1}", x(q), y(v))).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>",
            LEFT + 10.0,
            TOP + 16.0 * (i as f64 + 1.0),
            xml_escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram = super::super::load::latency_histogram();
        for value in 1..=10_000u64 {
            histogram.record(value).expect("in range");
        }
        let latency = Latency::of(&histogram);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1.0;
        assert!(close(latency.p50, 5000.0), "{latency:?}");
        assert!(
            close(latency.p90, 9000.0) && close(latency.p99, 9900.0) && close(latency.p99_9, 9990.0),
            "{latency:?}"
        );
        assert!(close(latency.max, 10_000.0) && latency.count == 10_000, "{latency:?}");
        let rows = parse_hgrm(&hgrm(&histogram));
        assert!(rows.len() > 20, "the .hgrm lists the distribution");
        let median = rows.iter().find(|(q, _)| *q >= 0.5).expect("a row at the median");
        assert!(close(median.1 * 1000.0, 5000.0), "{median:?}");
        let svg = spectrum_svg(&[("run".into(), rows)]);
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    }
}
