//! How often the whole pipeline rides out two broker restarts exactly: the end-to-end run of
//! `tests/end_to_end.rs` on a private broker stopped for 12 s (`OUTAGE_SECONDS`) and restarted twice while the
//! stream flows (no service restarted), `OUTAGE_RUNS` times (default 10). A run counts as exact
//! when every score equals the independent recomputation, every expected alert is there once,
//! and no acknowledged event is lost. `ABM_TEST_KEEP_LOGS=1` keeps the services' logs.
//! `OUTAGE_KIND=random` runs the random schedule instead (three outages of 3-8 s, the first
//! right after the services restored; `OUTAGE_SEED` repeats one), and
//! `ABM_TEST_STALL_AFTER_MS=3600000` turns the loops' watchdog off in effect, to measure them
//! as they were before.
//!
//! Run with `deploy/local/bench.sh outages` (it builds the services first).

#[allow(dead_code, unused_imports)]
#[path = "../tests/end_to_end.rs"]
mod end_to_end;

fn main() {
    let runs: usize = std::env::var("OUTAGE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let random = std::env::var("OUTAGE_KIND").is_ok_and(|kind| kind == "random");
    let seconds = std::env::var("OUTAGE_SECONDS").unwrap_or_else(|_| "12".into());
    let fixed = format!("two broker restarts of {seconds} s each");
    let kind = if random { "three broker restarts of 3-8 s at random moments" } else { fixed.as_str() };
    let watched = std::env::var("ABM_TEST_STALL_AFTER_MS")
        .map_or_else(|_| "loops watched (stall_after 20 s)".to_owned(), |ms| format!("stall_after {ms} ms"));
    let mut exact = 0;
    for run in 1..=runs {
        let started = std::time::Instant::now();
        let run_once =
            if random { end_to_end::run_with_random_broker_restarts } else { end_to_end::run_with_two_broker_restarts };
        match std::panic::catch_unwind(run_once) {
            Ok(()) => {
                exact += 1;
                eprintln!("outages: run {run} exact ({:.0} s)", started.elapsed().as_secs_f64());
            }
            Err(_) => eprintln!(
                "outages: run {run} NOT exact ({:.0} s; the panic above says why)",
                started.elapsed().as_secs_f64()
            ),
        }
    }
    println!("outages: {exact} of {runs} runs exact ({kind}, no service restarted, {watched})");
}
