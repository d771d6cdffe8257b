use std::process::ExitCode;

use clap::Parser;

/// The ABM scorer: rolling, explainable engagement scores per account from `abm.engagement`.
#[derive(Debug, Parser)]
#[command(name = "scorer", version)]
struct Args {
    #[command(flatten)]
    common: abm::service::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    abm::service::main("scorer", &args.common, &[("http.listen", scorer::DEFAULT_HTTP_LISTEN)], scorer::run)
}
