use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The ABM alerter: explained, deduplicated sales alerts from `abm.score-crossings` to
/// `abm.sales-alerts` and optional webhooks.
#[derive(Debug, Parser)]
#[command(name = "alerter", version)]
struct Args {
    #[command(flatten)]
    common: abm::service::CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deliver the alerts parked for a webhook (each once), then exit.
    ReplayParked {
        /// The webhook's name in `alerter.webhooks`.
        #[arg(long)]
        endpoint: String,
    },
    /// Print alerts as they are published, one line each, until Ctrl-C.
    Tail {
        /// Start with every alert still in the topic.
        #[arg(long)]
        from_beginning: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        None => {
            abm::service::main("alerter", &args.common, &[("http.listen", alerter::DEFAULT_HTTP_LISTEN)], alerter::run)
        }
        Some(Command::ReplayParked { endpoint }) => {
            abm::service::main("alerter", &args.common, &[], move |config, _context| async move {
                let (delivered, skipped) = alerter::replay_parked(config, &endpoint).await?;
                println!(
                    "alerter: replayed {delivered} parked alert(s) to {endpoint} ({skipped} parked for other endpoints)"
                );
                Ok(())
            })
        }
        Some(Command::Tail { from_beginning }) => {
            abm::service::main("alerter", &args.common, &[], move |config, context| {
                alerter::tail(config, from_beginning, context.shutdown)
            })
        }
    }
}
