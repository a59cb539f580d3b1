//! The original's command lines, accepted as they are: Go's `flag` package takes `-name` as
//! well as `--name`, `--bool` and `--bool=false`, and every manifest passes klog flags such as
//! `--logtostderr` and `-v=2`. Existing Deployments and DaemonSets must keep starting.
//!
//! Bool flags in the binaries use `num_args = 0..=1, default_missing_value = "true",
//! require_equals = true` so that `--forceNamespaced` and `--forceNamespaced=false` both work.

use std::ffi::OsString;

/// Rewrites Go-style single-dash long flags (`-forceNamespaced`, `-v=2`) to `--…`, leaving the
/// program name, `-h`, values after `--`, and anything not shaped like a flag untouched.
pub fn normalize_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut out = Vec::new();
    let mut rest_verbatim = false;
    for (i, arg) in args.into_iter().map(Into::into).enumerate() {
        if i == 0 || rest_verbatim {
            out.push(arg);
            continue;
        }
        let converted = arg.to_str().and_then(|s| {
            if s == "--" {
                return None;
            }
            let name = s.strip_prefix('-').filter(|r| !r.starts_with('-'))?;
            let first = name.chars().next()?;
            (first.is_ascii_alphabetic() && (name.len() > 1 || name == "v")).then(|| OsString::from(format!("-{s}")))
        });
        if arg.to_str() == Some("--") {
            rest_verbatim = true;
        }
        out.push(converted.unwrap_or(arg));
    }
    out
}

/// klog's flags, accepted so old manifests start, and ignored except `-v` (log level).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KlogArgs {
    /// klog verbosity; mapped to a log level when RUST_LOG is unset.
    #[arg(short = 'v', long = "v", default_value_t = 0, hide = true)]
    pub v: u8,
    #[arg(long = "logtostderr", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub logtostderr: Option<String>,
    #[arg(long = "alsologtostderr", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub alsologtostderr: Option<String>,
    #[arg(long = "vmodule", hide = true)]
    pub vmodule: Option<String>,
    #[arg(long = "log_dir", hide = true)]
    pub log_dir: Option<String>,
    #[arg(long = "log_file", hide = true)]
    pub log_file: Option<String>,
    #[arg(long = "log_file_max_size", hide = true)]
    pub log_file_max_size: Option<String>,
    #[arg(long = "stderrthreshold", hide = true)]
    pub stderrthreshold: Option<String>,
    #[arg(long = "log_backtrace_at", hide = true)]
    pub log_backtrace_at: Option<String>,
    #[arg(long = "skip_headers", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub skip_headers: Option<String>,
    #[arg(long = "skip_log_headers", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub skip_log_headers: Option<String>,
    #[arg(long = "add_dir_header", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub add_dir_header: Option<String>,
    #[arg(long = "one_output", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub one_output: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(long = "forceNamespaced", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "false")]
        force_namespaced: bool,
        #[arg(long = "nmi-port", default_value = "2579")]
        nmi_port: u16,
        #[command(flatten)]
        klog: KlogArgs,
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(normalize_args(args.iter().copied())).unwrap()
    }

    #[test]
    fn go_single_dash_flags_are_accepted() {
        let cli = parse(&["nmi", "-forceNamespaced", "-nmi-port=2580", "-v=4"]);
        assert!(cli.force_namespaced);
        assert_eq!(cli.nmi_port, 2580);
        assert_eq!(cli.klog.v, 4);
    }

    #[test]
    fn bool_flags_take_an_optional_value_and_klog_flags_are_ignored() {
        let cli = parse(&["mic", "--forceNamespaced=false", "--logtostderr", "--v=2", "--vmodule=x=1"]);
        assert!(!cli.force_namespaced);
        assert_eq!(cli.klog.v, 2);
        let cli = parse(&["mic", "--forceNamespaced"]);
        assert!(cli.force_namespaced);
    }

    #[test]
    fn values_and_the_program_name_are_left_alone() {
        let out = normalize_args(["-prog", "--nmi-port", "-1", "-h", "--", "-keep"]);
        assert_eq!(out, ["-prog", "--nmi-port", "-1", "-h", "--", "-keep"].map(OsString::from));
    }
}
