//! The results table: medians of repeated runs, ours against the original (and, for NMI, the
//! floor server), each row checked against its target.

use std::fmt::Write as _;

/// Which direction is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// A target to report against (never to tune the measurement towards).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// ours ≤ value (in the row's unit).
    AtMost(f64),
    /// ours ≥ value.
    AtLeast(f64),
    /// ours ≤ factor × the floor's median.
    AtMostTimesFloor(f64),
    /// ours ≥ factor × the original's median.
    AtLeastTimesOriginal(f64),
    /// ours ≤ factor × the original's median.
    AtMostTimesOriginal(f64),
}

/// The original's figures, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub enum Original {
    Measured(Vec<f64>),
    /// Not measured; the reason is printed in the table.
    Unavailable(String),
}

/// One metric, every run's value kept (the table shows medians).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    pub better: Better,
    pub ours: Vec<f64>,
    pub original: Original,
    /// The minimal server on the same path (NMI only).
    pub floor: Option<Vec<f64>>,
    pub target: Option<Target>,
    /// Why a target was missed, or what the figure means.
    pub note: String,
}

impl Row {
    /// A row with ours only; add the rest with the builder methods.
    pub fn new(metric: impl Into<String>, unit: impl Into<String>, better: Better, ours: Vec<f64>) -> Self {
        Self {
            metric: metric.into(),
            unit: unit.into(),
            better,
            ours,
            original: Original::Unavailable("not measured".to_owned()),
            floor: None,
            target: None,
            note: String::new(),
        }
    }

    pub fn original(mut self, original: Original) -> Self {
        self.original = original;
        self
    }

    pub fn floor(mut self, floor: Vec<f64>) -> Self {
        self.floor = Some(floor);
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// ours ÷ original (medians), when both exist.
    pub fn ratio(&self) -> Option<f64> {
        match &self.original {
            Original::Measured(v) => Some(median(&self.ours)? / median(v)?).filter(|r| r.is_finite()),
            Original::Unavailable(_) => None,
        }
    }

    /// Whether the target is met; `None` without a target or without what it compares to.
    pub fn target_met(&self) -> Option<bool> {
        let ours = median(&self.ours)?;
        let original = match &self.original {
            Original::Measured(v) => median(v),
            Original::Unavailable(_) => None,
        };
        let floor = self.floor.as_deref().and_then(median);
        Some(match self.target? {
            Target::AtMost(v) => ours <= v,
            Target::AtLeast(v) => ours >= v,
            Target::AtMostTimesFloor(k) => ours <= k * floor?,
            Target::AtLeastTimesOriginal(k) => ours >= k * original?,
            Target::AtMostTimesOriginal(k) => ours <= k * original?,
        })
    }
}

/// One benchmark's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub title: String,
    /// How the figures were produced (load, sizes, latencies), printed above the table.
    pub setup: String,
    pub rows: Vec<Row>,
    /// Free text after the table (what was not comparable and why).
    pub notes: Vec<String>,
}

/// Median of the finite values; `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] })
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn fmt_target(row: &Row) -> String {
    let unit = &row.unit;
    match row.target {
        None => String::new(),
        Some(Target::AtMost(v)) => format!("≤ {} {unit}", fmt_value(Some(v))),
        Some(Target::AtLeast(v)) => format!("≥ {} {unit}", fmt_value(Some(v))),
        Some(Target::AtMostTimesFloor(k)) => format!("≤ {k}× floor"),
        Some(Target::AtLeastTimesOriginal(k)) => format!("≥ {k}× original"),
        Some(Target::AtMostTimesOriginal(k)) => format!("≤ {k}× original"),
    }
}

/// The Markdown document: machine note, then one table per section.
pub fn render(machine: &str, runs: usize, sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks: ours against the original aad-pod-identity v1.8.17\n");
    let _ = writeln!(
        out,
        "Written by `bash hack/bench.sh` (the `bench` binary of `crates/bench`); do not edit by hand.\n\
         Every figure is the median of {runs} run(s) made in the same invocation, on the same \
         kube-apiserver, Azure simulator and network-namespace nodes, ours and the original alternating. \
         `ratio` is ours ÷ original.\n"
    );
    let _ = writeln!(out, "**Machine:** {machine}\n");
    for section in sections {
        let _ = writeln!(out, "## {}\n", section.title);
        if !section.setup.is_empty() {
            let _ = writeln!(out, "{}\n", section.setup);
        }
        let has_floor = section.rows.iter().any(|r| r.floor.is_some());
        let _ = write!(out, "| metric | unit | ours | original | ratio |");
        if has_floor {
            let _ = write!(out, " floor | ours ÷ floor |");
        }
        let _ = writeln!(out, " target | met | note |");
        let columns = if has_floor { 10 } else { 8 };
        let _ = writeln!(out, "|{}", "---|".repeat(columns));
        for row in &section.rows {
            let ours = median(&row.ours);
            let original = match &row.original {
                Original::Measured(v) => fmt_value(median(v)),
                Original::Unavailable(why) => format!("n/a ({why})"),
            };
            let ratio = row.ratio().map_or_else(String::new, |r| format!("{r:.2}×"));
            let _ = write!(out, "| {} | {} | {} | {original} | {ratio} |", row.metric, row.unit, fmt_value(ours));
            if has_floor {
                let floor = row.floor.as_deref().and_then(median);
                let vs_floor = ours.zip(floor).map_or_else(String::new, |(o, f)| format!("{:.2}×", o / f));
                let _ = write!(out, " {} | {vs_floor} |", fmt_value(floor));
            }
            let met = match row.target_met() {
                None if row.target.is_some() => "n/a",
                None => "",
                Some(true) => "yes",
                Some(false) => "**no**",
            };
            let _ = writeln!(out, " {} | {met} | {} |", fmt_target(row), row.note);
        }
        out.push('\n');
        for note in &section.notes {
            let _ = writeln!(out, "- {note}");
        }
        if !section.notes.is_empty() {
            out.push('\n');
        }
    }
    out
}

/// A one-line description of this machine for the report.
pub fn machine_note() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB RAM, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn targets_compare_medians() {
        let row = Row::new("p99", "ms", Better::Lower, vec![1.0, 1.4, 9.0]).floor(vec![1.0]);
        assert_eq!(row.clone().target(Target::AtMostTimesFloor(1.5)).target_met(), Some(true));
        assert_eq!(row.clone().target(Target::AtMostTimesFloor(1.2)).target_met(), Some(false));
        let rps = Row::new("rps", "req/s", Better::Higher, vec![1000.0])
            .original(Original::Measured(vec![50.0, 200.0, 90.0]))
            .target(Target::AtLeastTimesOriginal(10.0));
        assert_eq!(rps.ratio(), Some(1000.0 / 90.0));
        assert_eq!(rps.target_met(), Some(true));
        let unmeasured = Row::new("rss", "MiB", Better::Lower, vec![5.0]).target(Target::AtMostTimesOriginal(0.5));
        assert_eq!(unmeasured.target_met(), None);
    }

    #[test]
    fn table_names_a_missed_target_and_an_unavailable_original() {
        let section = Section {
            title: "NMI".to_owned(),
            setup: String::new(),
            rows: vec![
                Row::new("warm p99", "ms", Better::Lower, vec![3.0])
                    .floor(vec![1.0])
                    .target(Target::AtMostTimesFloor(1.5)),
                Row::new("rss", "MiB", Better::Lower, vec![4.0])
                    .original(Original::Unavailable("cannot reach the simulator".to_owned())),
            ],
            notes: vec!["why".to_owned()],
        };
        let text = render("test machine", 3, &[section]);
        assert!(
            text.contains("| warm p99 | ms | 3.00 | n/a (not measured) |  | 1.00 | 3.00× | ≤ 1.5× floor | **no** |"),
            "{text}"
        );
        assert!(text.contains("n/a (cannot reach the simulator)"), "{text}");
        assert!(text.contains("- why"), "{text}");
    }
}
