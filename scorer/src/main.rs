use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The ABM scorer: rolling, explainable engagement scores per account from `abm.engagement`.
#[derive(Debug, Parser)]
#[command(name = "scorer", version)]
struct Args {
    #[command(flatten)]
    common: abm::service::CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay the retained history (`abm.engagement`, CRM outcomes included) through a
    /// candidate scoring model and the current one (`[scoring]` of --config), in memory, and
    /// compare them: alerts per week, MQA accounts, alert precision and recall, lead time, the
    /// accounts that change most. Writes nothing to Kafka.
    Backtest {
        /// TOML file with the candidate's `[scoring]` table (a whole scorer config file will do).
        #[arg(long, value_name = "FILE")]
        candidate: PathBuf,
        /// The alerter's config file, for its cooldowns (default: the alerter's defaults).
        #[arg(long, value_name = "FILE")]
        alerter_config: Option<PathBuf>,
        /// Replay only the records written since: YYYY-MM-DD, an RFC 3339 time, <N>d (days
        /// ago) or milliseconds since the epoch (default: all retained history).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Write the report as JSON to FILE (`-`: to stdout, instead of the table).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write the report as a self-contained HTML page with charts to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Write every alert of both models, one JSON object per line, to FILE.
        #[arg(long, value_name = "FILE")]
        alerts: Option<PathBuf>,
        /// How many of the most changed accounts to list.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        None => {
            abm::service::main("scorer", &args.common, &[("http.listen", scorer::DEFAULT_HTTP_LISTEN)], scorer::run)
        }
        Some(Command::Backtest { candidate, alerter_config, since, json, html, alerts, top }) => {
            let since = match since.map(|text| scorer::backtest::parse_since(&text, abm::clock::now_ms())).transpose() {
                Ok(since) => since,
                Err(error) => {
                    eprintln!("scorer: error: {error}");
                    return ExitCode::from(2);
                }
            };
            let options = scorer::backtest::Options { candidate, alerter_config, since, json, html, alerts, top };
            abm::service::main("scorer", &args.common, &[], move |config, _context| {
                scorer::backtest::run(config, options)
            })
        }
    }
}
