//! The server checks its rules directory before serving: the example rules load,
//! and a broken file stops start-up with every problem and its position.

use driftwatch_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_rules_load_and_broken_rules_are_refused_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("a"));
    cfg.rules = Some(example_configs().join("../rules"));
    let server = start_server_with(cfg).await;
    let n = server.rules.as_ref().map(|r| r.rules().len()).unwrap_or(0);
    assert!(n >= 20, "example rules loaded: {n}");
    server.stop().await.unwrap();

    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("broken.yaml"),
        "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {file: \"*.env\", key: A}\n        expr: \"value > 'x' +\"\n        severity: high\n        bogus: 1\n",
    )
    .unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("b"));
    cfg.rules = Some(rules);
    let Err(e) = driftwatch_server::start(cfg).await else { panic!("a broken rules directory was accepted") };
    let text = e.to_string();
    assert!(text.contains("broken.yaml:8:9: ") && text.contains("unknown field `bogus`"), "{text}");
}
