use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ABM ingest: collects tracker events over HTTP (`POST /v1/events`) and normalises the raw
/// topics into `abm.engagement`, `abm.unresolved` and `abm.rejected`.
#[derive(Debug, Parser)]
#[command(name = "ingest", version)]
struct Args {
    #[command(flatten)]
    common: abm::service::CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a Target Account List (CSV) into `abm.accounts`. Columns: account_id, name,
    /// domains (`;`-separated), tier (1, 2, 3, untiered), owner, optional industry, employees.
    ImportTal {
        /// The CSV file.
        file: PathBuf,
        /// Validate only; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        None => {
            abm::service::main("ingest", &args.common, &[("http.listen", ingest::DEFAULT_HTTP_LISTEN)], ingest::run)
        }
        Some(Command::ImportTal { file, dry_run }) => {
            abm::service::main("ingest", &args.common, &[], move |config, _context| async move {
                let count = ingest::import_tal(config, &file, dry_run).await?;
                let verb = if dry_run { "validated" } else { "imported" };
                println!("ingest: {verb} {count} accounts from {}", file.display());
                Ok(())
            })
        }
    }
}
