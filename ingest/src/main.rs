use std::process::ExitCode;

use clap::Parser;

/// ABM ingest: collects tracker events over HTTP and normalises the raw topics into `abm.engagement`.
#[derive(Debug, Parser)]
#[command(name = "ingest", version)]
struct Args {
    #[command(flatten)]
    common: abm::service::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    abm::service::main("ingest", &args.common, &[("http.listen", ingest::DEFAULT_HTTP_LISTEN)], ingest::run)
}
