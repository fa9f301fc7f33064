//! Results of `faultline bench faults`: one [`RunResult`] per (backing, uffd mode), gathered
//! into a [`BenchReport`] that prints as a text table, serialises to JSON and draws plots.
//!
//! # JSON format
//! `{"tool": "faultline", "version", "command", "host": HostSettings, "runs": [RunResult]}`;
//! every field of [`RunResult`] is written, times in nanoseconds or seconds as named, KVM
//! stats as `{name: delta}` maps (cumulative stats: after − before; instant stats such as
//! `pages_4k`: the value after the run).
//!
//! # Plots (PNG and SVG, same name)
//! - `pages_per_sec`: total pages/s per run (one bar per backing/uffd mode);
//! - `uffd_service_cdf`: CDF of uffd fault service time, one line per uffd run;
//! - `kvm_mapping_levels`: KVM's `pages_4k`/`pages_2m`/`pages_1g` after each run, drawn only
//!   when those stats moved (KVM's shadow MMU keeps them at 0: not observable there).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::host::HostSettings;

type DrawResult = Result<(), String>;

/// Runs `$body` with `$root` bound to a 1000×600 PNG or SVG drawing area, chosen by the
/// extension of `$path` (a macro because the body is generic over the backend type).
macro_rules! with_backend {
    ($path:expr, |$root:ident| $body:block) => {{
        let path: &Path = $path;
        let err = |msg: String| ReportError::Draw {
            path: path.to_path_buf(),
            msg,
        };
        if path.extension().is_some_and(|e| e == "svg") {
            let $root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
            $root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
            let r: DrawResult = (|| $body)();
            r.map_err(err)?;
            $root.present().map_err(|e| err(e.to_string()))
        } else {
            let $root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
            $root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
            let r: DrawResult = (|| $body)();
            r.map_err(err)?;
            $root.present().map_err(|e| err(e.to_string()))
        }
    }};
}

/// One vCPU's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuResult {
    /// vCPU index.
    pub vcpu: usize,
    /// Pages touched.
    pub pages: u64,
    /// Host-measured time of the touch loop (first KVM_RUN of the stage to its exit).
    pub seconds: f64,
}

impl VcpuResult {
    /// Pages per second.
    #[must_use]
    pub fn pages_per_sec(&self) -> f64 {
        rate(self.pages, self.seconds)
    }
}

fn rate(pages: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        pages as f64 / seconds
    } else {
        0.0
    }
}

/// Percentiles of the uffd service-time histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UffdSummary {
    /// Register mode (MISSING or MINOR).
    pub mode: String,
    /// How MISSING faults were resolved (copy or zeropage).
    pub resolve: String,
    /// How readers waited (BusyPoll, Poll, Blocking), or Vcpu: no readers, each vCPU
    /// resolved its own faults.
    pub wait: String,
    /// Reader threads per uffd (0 with Vcpu).
    pub readers: usize,
    /// One uffd for all vCPUs.
    pub single_uffd: bool,
    /// Delay per fault in microseconds.
    pub delay_us: u64,
    /// Bytes installed per fault.
    pub chunk_bytes: usize,
    /// Fault events handled.
    pub faults: u64,
    /// Events already resolved by another reader (woken only).
    pub already_resolved: u64,
    /// Pages installed.
    pub pages_installed: u64,
    /// Faults per reader thread (with Vcpu: per vCPU's region).
    pub faults_per_reader: Vec<u64>,
    /// Mean service time (ns).
    pub mean_ns: f64,
    /// Median (ns).
    pub p50_ns: u64,
    /// 90th percentile (ns).
    pub p90_ns: u64,
    /// 99th percentile (ns).
    pub p99_ns: u64,
    /// 99.9th percentile (ns).
    pub p999_ns: u64,
    /// Maximum (ns).
    pub max_ns: u64,
    /// CDF points `(service time ns, fraction of faults ≤ it)`.
    pub cdf: Vec<(u64, f64)>,
}

impl UffdSummary {
    /// Fills the percentile fields and the CDF from a histogram of nanoseconds.
    pub fn set_histogram(&mut self, h: &Histogram<u64>) {
        self.mean_ns = h.mean();
        self.p50_ns = h.value_at_quantile(0.5);
        self.p90_ns = h.value_at_quantile(0.9);
        self.p99_ns = h.value_at_quantile(0.99);
        self.p999_ns = h.value_at_quantile(0.999);
        self.max_ns = h.max();
        self.cdf = if h.is_empty() {
            Vec::new()
        } else {
            h.iter_quantiles(4)
                .map(|v| (v.value_iterated_to(), v.quantile_iterated_to()))
                .collect()
        };
    }
}

/// One run: one backing and uffd mode, fresh VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Backing name (demand_paging_test's names: anonymous, anonymous_thp, shmem, ...).
    pub backing: String,
    /// `none`, `MISSING` or `MINOR`.
    pub uffd: String,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Bytes of the measured region per vCPU.
    pub bytes_per_vcpu: u64,
    /// Bytes between two accesses.
    pub stride: u64,
    /// `read`, `write` or `read-write`.
    pub access: String,
    /// `sequential` or `random`.
    pub order: String,
    /// Per-vCPU results.
    pub per_vcpu: Vec<VcpuResult>,
    /// Wall time from the first vCPU starting the stage to the last one finishing it.
    pub wall_seconds: f64,
    /// The uffd service, when used.
    pub uffd_summary: Option<UffdSummary>,
    /// KVM VM stats, delta over the touch stage.
    pub kvm_vm: BTreeMap<String, u64>,
    /// KVM vCPU stats summed over all vCPUs, delta over the touch stage.
    pub kvm_vcpu: BTreeMap<String, u64>,
}

impl RunResult {
    /// Pages touched by all vCPUs.
    #[must_use]
    pub fn total_pages(&self) -> u64 {
        self.per_vcpu.iter().map(|v| v.pages).sum()
    }

    /// Total pages per second over the wall time.
    #[must_use]
    pub fn pages_per_sec(&self) -> f64 {
        rate(self.total_pages(), self.wall_seconds)
    }

    /// Mean time per page seen by one vCPU, in microseconds.
    #[must_use]
    pub fn us_per_page(&self) -> f64 {
        let (pages, secs) = self
            .per_vcpu
            .iter()
            .fold((0, 0.0), |(p, s), v| (p + v.pages, s + v.seconds));
        if pages == 0 {
            0.0
        } else {
            secs * 1e6 / pages as f64
        }
    }

    /// A stat by name, VM stats first, then the summed vCPU stats.
    #[must_use]
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.kvm_vm
            .get(name)
            .or_else(|| self.kvm_vcpu.get(name))
            .copied()
    }

    /// `backing/uffd`, e.g. `anonymous/MISSING`.
    #[must_use]
    pub fn label(&self) -> String {
        if self.uffd == "none" {
            self.backing.clone()
        } else {
            format!("{}/{}", self.backing, self.uffd)
        }
    }
}

/// Everything one `faultline bench faults` invocation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always "faultline".
    pub tool: String,
    /// faultline's version.
    pub version: String,
    /// The command line.
    pub command: String,
    /// Host settings.
    pub host: HostSettings,
    /// One entry per run.
    pub runs: Vec<RunResult>,
}

/// Errors writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Cannot write {path:?}: {source}
    #[error("Cannot write {path:?}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Cannot draw {path:?}: {msg}
    #[error("Cannot draw {path:?}: {msg}")]
    Draw {
        /// The file.
        path: PathBuf,
        /// The plotting library's message.
        msg: String,
    },
    /// No TrueType font found for plot labels (looked in {0}); install one, e.g. `apt-get install fonts-dejavu-core`, or set FAULTLINE_FONT=/path/to/font.ttf
    #[error("No TrueType font found for plot labels (looked in {0}); install one, e.g. `apt-get install fonts-dejavu-core`, or set FAULTLINE_FONT=/path/to/font.ttf")]
    NoFont(String),
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.0}ms", ns as f64 / 1e6)
    } else if ns >= 10_000 {
        format!("{:.0}us", ns as f64 / 1e3)
    } else {
        format!("{:.1}us", ns as f64 / 1e3)
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

impl BenchReport {
    /// A new report for `command`, capturing the host settings now.
    #[must_use]
    pub fn new(command: String) -> Self {
        Self {
            tool: "faultline".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            command,
            host: HostSettings::capture(),
            runs: Vec::new(),
        }
    }

    /// The text table: one row per run.
    #[must_use]
    pub fn table(&self) -> String {
        let header = [
            "backing",
            "uffd",
            "vcpus",
            "MiB/vcpu",
            "pages/s",
            "us/page",
            "uffd p50",
            "uffd p99",
            "faults",
            "exits",
            "pf_fixed",
            "pf_emul",
            "insn_emul",
            "pte_write",
            "pages_4k",
            "pages_2m",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_string()).collect()];
        for r in &self.runs {
            let u = r.uffd_summary.as_ref();
            rows.push(vec![
                r.backing.clone(),
                r.uffd.clone(),
                r.vcpus.to_string(),
                (r.bytes_per_vcpu >> 20).to_string(),
                format!("{:.0}", r.pages_per_sec()),
                format!("{:.2}", r.us_per_page()),
                u.map_or_else(|| "-".into(), |u| fmt_ns(u.p50_ns)),
                u.map_or_else(|| "-".into(), |u| fmt_ns(u.p99_ns)),
                u.map_or_else(|| "-".into(), |u| u.faults.to_string()),
                opt(r.stat("exits")),
                opt(r.stat("pf_fixed")),
                opt(r.stat("pf_emulate")),
                opt(r.stat("insn_emulation")),
                opt(r.stat("mmu_pte_write")),
                opt(r.stat("pages_4k")),
                opt(r.stat("pages_2m")),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, w))| {
                    if c < 2 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
            if i == 0 {
                let _ = writeln!(
                    out,
                    "{}",
                    "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
                );
            }
        }
        let h = &self.host;
        let _ = writeln!(
            out,
            "host: Linux {}, {} ({} CPUs), THP {} (shmem {}), nr_hugepages {} (free {}), tdp_mmu {}",
            h.kernel,
            h.cpu_model,
            h.cpus,
            h.thp_enabled,
            h.thp_shmem_enabled,
            h.nr_hugepages_2m,
            h.free_hugepages_2m,
            h.kvm_tdp_mmu.as_deref().unwrap_or("n/a")
        );
        out
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let json = serde_json::to_string_pretty(self).expect("report serialises");
        std::fs::write(path, json + "\n").map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the plots into `dir` (created if needed); returns the files written.
    pub fn write_plots(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        ensure_font()?;
        let mut files = Vec::new();
        for ext in ["png", "svg"] {
            let p = dir.join(format!("pages_per_sec.{ext}"));
            self.plot_rates(&p)?;
            files.push(p);
            let p = dir.join(format!("uffd_service_cdf.{ext}"));
            self.plot_cdf(&p)?;
            files.push(p);
            // A plot shows only what was measured: on a host whose KVM keeps no level stats
            // (the shadow MMU never moves pages_4k/2m/1g) there is no levels plot.
            if self.levels_observable() {
                let p = dir.join(format!("kvm_mapping_levels.{ext}"));
                self.plot_levels(&p)?;
                files.push(p);
            }
        }
        Ok(files)
    }

    /// Whether KVM's mapping-level stats (`pages_4k`/`pages_2m`/`pages_1g`) moved in any run.
    pub fn levels_observable(&self) -> bool {
        self.runs.iter().any(|r| {
            ["pages_4k", "pages_2m", "pages_1g"]
                .iter()
                .any(|n| r.stat(n).unwrap_or(0) != 0)
        })
    }

    fn plot_rates(&self, path: &Path) -> Result<(), ReportError> {
        let labels: Vec<String> = self.runs.iter().map(RunResult::label).collect();
        let values: Vec<f64> = self.runs.iter().map(RunResult::pages_per_sec).collect();
        bar_chart(
            path,
            "Guest first-touch rate by backing",
            "pages/s (all vCPUs)",
            &labels,
            &[("pages/s", values)],
        )
    }

    fn plot_levels(&self, path: &Path) -> Result<(), ReportError> {
        let labels: Vec<String> = self.runs.iter().map(RunResult::label).collect();
        let series: Vec<(&str, Vec<f64>)> = ["pages_4k", "pages_2m", "pages_1g"]
            .iter()
            .map(|&n| {
                (
                    n,
                    self.runs
                        .iter()
                        .map(|r| r.stat(n).unwrap_or(0) as f64)
                        .collect(),
                )
            })
            .collect();
        bar_chart(
            path,
            "KVM mappings by level after the run",
            "SPTEs",
            &labels,
            &series,
        )
    }

    fn plot_cdf(&self, path: &Path) -> Result<(), ReportError> {
        let curves: Vec<(String, &Vec<(u64, f64)>)> = self
            .runs
            .iter()
            .filter_map(|r| r.uffd_summary.as_ref().map(|u| (r.label(), &u.cdf)))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        let max_us = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.0 as f64 / 1e3))
            .fold(1.0f64, f64::max);
        let min_us = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.0 as f64 / 1e3))
            .fold(max_us, f64::min)
            .max(0.1);
        // Whole decades, so the log axis has labelled ticks.
        let lo = 10f64.powf(min_us.log10().floor());
        let hi = 10f64.powf(max_us.log10().ceil()).max(lo * 10.0);
        let title = if curves.is_empty() {
            "uffd fault service time (no uffd run)"
        } else {
            "uffd fault service time: event read -> installed + woken"
        };
        with_backend!(path, |root| {
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d((lo..hi).log_scale(), 0.0f64..1.0)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("service time (us, log scale)")
                .x_labels(12)
                .x_label_formatter(&|v| format_value(*v))
                .y_desc("fraction of faults")
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, (label, cdf)) in curves.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(
                        cdf.iter().map(|&(ns, q)| (ns as f64 / 1e3, q)),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
            if !curves.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

/// Registers a TrueType font for "sans-serif" once (plotters' ab_glyph backend has none).
pub(crate) fn ensure_font() -> Result<(), ReportError> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("FAULTLINE_FONT") {
            candidates.push(p.into());
        }
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
            ]
            .iter()
            .map(PathBuf::from),
        );
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "))
    })
    .clone()
    .map_err(ReportError::NoFont)
}

/// Grouped bar chart: one group per label, one bar per series.
fn bar_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    labels: &[String],
    series: &[(&str, Vec<f64>)],
) -> Result<(), ReportError> {
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let n = labels.len().max(1);
    let k = series.len().max(1);
    with_backend!(path, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0f64..n as f64, 0.0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor();
                if (x - i - 0.5).abs() < 1e-6 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_desc)
            .y_label_formatter(&|v| format_value(*v))
            .draw()
            .map_err(|e| e.to_string())?;
        let width = 0.8 / k as f64;
        for (s, (name, values)) in series.iter().enumerate() {
            let color = Palette99::pick(s).to_rgba();
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 + 0.1 + s as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.95, v)], color.filled())
                }))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled())
                });
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x = i as f64 + 0.1 + (s as f64 + 0.5) * width;
                    Text::new(
                        format_value(v),
                        (x, v + ymax * 0.01),
                        ("sans-serif", 14).into_font().color(&BLACK).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Bottom,
                            ),
                        ),
                    )
                }))
                .map_err(|e| e.to_string())?;
        }
        if k > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

fn format_value(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> BenchReport {
        let mut report = BenchReport::new("faultline bench faults (test)".into());
        let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        for i in 0..1000u64 {
            h.record(20_000 + i * 50).unwrap();
        }
        for (backing, uffd, pps) in [
            ("anonymous", "none", 190_000.0),
            ("anonymous", "MISSING", 27_000.0),
            ("shmem", "MINOR", 30_000.0),
        ] {
            let pages = 4096;
            let mut u = None;
            if uffd != "none" {
                let mut s = UffdSummary {
                    mode: uffd.into(),
                    resolve: "copy".into(),
                    wait: "BusyPoll".into(),
                    readers: 1,
                    single_uffd: false,
                    delay_us: 0,
                    chunk_bytes: 4096,
                    faults: pages,
                    already_resolved: 0,
                    pages_installed: pages,
                    faults_per_reader: vec![pages],
                    mean_ns: 0.0,
                    p50_ns: 0,
                    p90_ns: 0,
                    p99_ns: 0,
                    p999_ns: 0,
                    max_ns: 0,
                    cdf: Vec::new(),
                };
                s.set_histogram(&h);
                u = Some(s);
            }
            report.runs.push(RunResult {
                backing: backing.into(),
                uffd: uffd.into(),
                vcpus: 1,
                bytes_per_vcpu: 16 << 20,
                stride: 4096,
                access: "write".into(),
                order: "sequential".into(),
                per_vcpu: vec![VcpuResult {
                    vcpu: 0,
                    pages,
                    seconds: pages as f64 / pps,
                }],
                wall_seconds: pages as f64 / pps,
                uffd_summary: u,
                kvm_vm: [("pages_4k".to_string(), 4100u64), ("pages_2m".into(), 0)].into(),
                kvm_vcpu: [("pf_fixed".to_string(), 4200u64)].into(),
            });
        }
        report
    }

    #[test]
    fn table_has_one_row_per_run_with_rates() {
        let r = sample_report();
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("backing"));
        assert_eq!(lines.len(), 2 + 3 + 1, "{t}");
        assert!(lines[2].contains("190000"), "{t}");
        assert!(
            lines[3].contains("MISSING") && lines[3].contains("4200"),
            "{t}"
        );
        assert!(lines[5].starts_with("host: Linux"));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let r = sample_report();
        let u = r.runs[1].uffd_summary.as_ref().unwrap();
        assert!((44_000..=46_000).contains(&u.p50_ns), "{}", u.p50_ns);
        assert!(u.p99_ns >= u.p90_ns && u.p90_ns >= u.p50_ns);
        assert!(u.max_ns >= 69_900);
        assert!((u.cdf.last().unwrap().1 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn json_round_trips() {
        let r = sample_report();
        let dir = std::env::temp_dir().join(format!("faultline-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.json");
        r.write_json(&p).unwrap();
        let back: BenchReport =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, r);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plots_are_valid_png_and_svg() {
        let r = sample_report();
        // FAULTLINE_KEEP_PLOTS=DIR keeps the plots for a look.
        let keep = std::env::var_os("FAULTLINE_KEEP_PLOTS").map(PathBuf::from);
        let dir = keep.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("faultline-plots-{}", std::process::id()))
        });
        let files = r.write_plots(&dir).unwrap();
        assert_eq!(files.len(), 6);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            if f.extension().unwrap() == "png" {
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{f:?}");
            } else {
                let s = String::from_utf8(bytes).unwrap();
                assert!(
                    s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
                    "{f:?}"
                );
                assert!(s.contains("anonymous/MISSING"), "{f:?}");
            }
        }
        if keep.is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
