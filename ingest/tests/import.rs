//! `ingest import-tal` against the broker under test.

use std::path::Path;
use std::time::Duration;

use abm::topics::TopicRole;
use abm_schemas::{Account, Tier};
use abm_testkit::{TestTopics, read_all, run_to_exit, unique};

const INGEST: &str = env!("CARGO_BIN_EXE_ingest");

fn write_csv(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.csv", unique("tal")));
    std::fs::write(&path, text).expect("csv written");
    path
}

#[test]
fn a_valid_tal_is_imported_and_a_bad_one_is_refused_with_line_numbers() {
    let topics = TestTopics::new("ingest-import");
    topics.create();
    let good = write_csv(
        "account_id,name,domains,tier,owner,industry,employees\n\
         a1,Acme,acme.com;acme.io,1,sdr1@v.example,Manufacturing,1200\n\
         a2,Initech,initech.com,3,sdr2@v.example,,\n",
    );
    let (status, stderr) = run_to_exit(
        Path::new(INGEST),
        &["import-tal", &good.display().to_string()],
        &topics.env(),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let accounts: Vec<(String, Account)> = read_all(&topics.name(TopicRole::Accounts));
    assert_eq!(accounts.len(), 2);
    let acme = &accounts.iter().find(|(key, _)| key == "a1").expect("a1 keyed by id").1;
    assert_eq!(acme.domains, vec!["acme.com", "acme.io"]);
    assert_eq!(acme.tier, Tier::Tier1);
    assert_eq!(acme.owner, "sdr1@v.example");

    let bad = write_csv("account_id,name,domains,tier,owner\na3,Ok,ok.com,2,o\na4,,bad domain!,9,o\n");
    let (status, stderr) = run_to_exit(
        Path::new(INGEST),
        &["import-tal", &bad.display().to_string()],
        &topics.env(),
        Duration::from_secs(60),
    );
    assert!(!status.success());
    assert!(stderr.contains(":line 3: name is empty"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(read_all::<Account>(&topics.name(TopicRole::Accounts)).len(), 2, "the bad file wrote nothing");
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(bad);
}
