//! `bench`: runs the side-by-side benchmarks and writes docs/benchmarks.md.

use std::path::PathBuf;

use aadpodid_bench::{Config, Size, mic, nmi, original, report};
use anyhow::Context as _;
use clap::Parser;

/// Ours against the original aad-pod-identity v1.8.17, on the local control plane and simulator.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// `tiny` proves the benchmarks start and finish (CI); `full` is the sizes the targets are set for.
    #[arg(long, value_enum, default_value = "full")]
    size: Size,
    /// Repetitions per measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Which benchmarks to run.
    #[arg(long, value_delimiter = ',', default_value = "nmi,mic")]
    only: Vec<Which>,
    /// Only these MIC sizes (`small`, `medium`, `large`; `tiny` with `--size tiny`); all when absent.
    #[arg(long, value_delimiter = ',')]
    mic_sizes: Vec<String>,
    /// Measure ours only (no Go build of the original).
    #[arg(long)]
    no_original: bool,
    /// Measure the `mic` and `nmi` in this directory in the original's place, e.g. an earlier
    /// build of ours, to compare before and after a change in one run (the table's "original"
    /// column then holds them).
    #[arg(long, conflicts_with = "no_original")]
    baseline_dir: Option<PathBuf>,
    /// Where to write the Markdown table (nothing is written when absent).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Nmi,
    Mic,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = aadpodid_testkit::repo_root();
    let ours = original::build_ours(&root)?;
    let original = match (&args.baseline_dir, args.no_original) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => None,
        (None, false) => Some(original::build_original(&root)?),
    };
    let config = Config { size: args.size, runs: args.runs.max(1), ours, original, mic_sizes: args.mic_sizes };

    let mut sections = Vec::new();
    if args.only.contains(&Which::Nmi) {
        sections.push(nmi::run(&config).await.context("NMI benchmark")?);
    }
    if args.only.contains(&Which::Mic) {
        sections.extend(mic::run(&config).await.context("MIC benchmark")?);
    }

    let text = report::render(&report::machine_note(), config.runs, &sections);
    println!("{text}");
    if let Some(path) = args.out {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
