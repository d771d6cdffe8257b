//! The scorer binary as a process against the broker under test (see abm_testkit).

#[test]
fn starts_serves_ops_endpoints_and_stops_on_sigterm() {
    abm_testkit::check_service_lifecycle(env!("CARGO_BIN_EXE_scorer"), "scorer");
}

#[test]
fn bad_config_is_one_clear_line_and_a_non_zero_exit() {
    abm_testkit::check_bad_config(env!("CARGO_BIN_EXE_scorer"), "scorer");
}
