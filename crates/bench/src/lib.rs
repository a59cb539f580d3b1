//! Side-by-side benchmarks: our `mic` and `nmi` against the original v1.8.17
//! (`hack/build-original.sh`), on the same local control plane, Azure simulator and
//! network-namespace nodes, in the same run. Benchmarks are commands that print figures, never
//! timed tests; `bench --size tiny` only proves they start and finish.
//!
//! ```text
//! main (flags) -> nmi::run / mic::run (one Section each) -> report::render -> docs/benchmarks.md
//! ```

pub mod mic;
pub mod nmi;
pub mod original;
pub mod procstat;
pub mod report;

/// How big a run is; every benchmark maps it to its own counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// Seconds: proves every benchmark starts and finishes (what `.ci/run` runs).
    Tiny,
    /// The issue's sizes, for docs/benchmarks.md.
    Full,
}

/// What every benchmark gets from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub size: Size,
    /// Repetitions per measurement; the report gives medians.
    pub runs: usize,
    /// Our binaries (`mic`, `nmi`), built in release mode.
    pub ours: std::path::PathBuf,
    /// The original's binaries, or `None` to measure ours only.
    pub original: Option<std::path::PathBuf>,
    /// MIC sizes to run by name (`small`, `medium`, `large`, `tiny`); empty runs all of `size`.
    pub mic_sizes: Vec<String>,
}
