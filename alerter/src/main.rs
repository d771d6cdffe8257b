use std::process::ExitCode;

use clap::Parser;

/// The ABM alerter: explained, deduplicated sales alerts from `abm.score-crossings`.
#[derive(Debug, Parser)]
#[command(name = "alerter", version)]
struct Args {
    #[command(flatten)]
    common: abm::service::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    abm::service::main("alerter", &args.common, &[("http.listen", alerter::DEFAULT_HTTP_LISTEN)], alerter::run)
}
