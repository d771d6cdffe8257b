//! Wall-clock time as the pipeline records it (`received_at`, `sent_at` corrections, alert and
//! reject times, the leaderboard's "now"): milliseconds since the Unix epoch, UTC.

/// Now, in milliseconds since the Unix epoch (0 on a clock set before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
