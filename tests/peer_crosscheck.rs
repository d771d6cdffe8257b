//! The Kafka Streams peer (benches/peers/kafka-streams), an independent implementation of the
//! scoring in Java that decodes our events with Avro's own Java library, agrees with the scorer
//! on every account and every crossing, after both were killed with SIGKILL mid-life and
//! restarted. Needs Maven and Java 17, which the test command installs for the broker anyway.

#[path = "../benches/peer_harness.rs"]
#[allow(dead_code)] // The benchmark uses more of the harness than this test.
mod harness;

#[test]
fn the_kafka_streams_peer_agrees_with_the_scorer_after_kill_and_recovery() {
    let root = &abm_testkit::repository_root();
    harness::build_peer(root);
    let run = harness::drain_kill_recover(root, 6_000, 300);
    let check = &run.cross_check;
    // Something to compare: most accounts scored and a fair number of crossings.
    assert!(check.our_accounts >= 250, "{}", check.summary());
    assert!(check.our_crossings.len() >= 50, "{}", check.summary());
    assert!(check.agree(), "{}", check.summary());
}
