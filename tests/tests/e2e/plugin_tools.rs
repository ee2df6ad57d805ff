//! `weft plugin new | build | test`: scaffolding that builds and passes its own
//! sample test, and the standalone harness on real plugins.

use std::path::Path;
use std::process::{Command, Output};
use weft_tests::{builtin, FakeApi};

const BINARY: &str = env!("CARGO_BIN_EXE_weft-under-test");

fn weft(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(BINARY);
    cmd.arg("--log-level").arg("warn").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run weft")
}

fn stdout_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// `plugin new` → `plugin build` → the sample test, for every role in `lang`.
fn scaffold_build_and_test(lang: &str) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let tools = weft_tests::toolchain_dir();
    let env = [
        ("CARGO_TARGET_DIR", target.as_path()),
        ("WEFT_TOOLCHAIN_DIR", tools.as_path()),
    ];
    for role in ["source", "transform", "sink"] {
        let name = format!("my-{lang}-{role}");
        let out = weft(
            &[
                "plugin",
                "new",
                &name,
                "--lang",
                lang,
                "--role",
                role,
                "--dir",
                dir.path().to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plugin_dir = dir.path().join(&name);
        // Built the way the README says: `--dir` relative to where one is.
        let out = Command::new(BINARY)
            .current_dir(dir.path())
            .args(["--log-level", "warn", "plugin", "build", "--dir", &name])
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "build {lang} {role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let wasm = dir.path().join(&printed).display().to_string();
        assert!(Path::new(&wasm).exists(), "{wasm}");
        // The sample test exactly as the generated README gives it.
        let mut args = vec!["plugin".to_string(), "test".to_string(), wasm.clone()];
        args.extend(weft::scaffold::sample_test_args(role));
        let readme = std::fs::read_to_string(plugin_dir.join("README.md")).unwrap();
        assert!(readme.contains(&args[3..].join(" ")), "{readme}");
        let out = Command::new(BINARY)
            .current_dir(&plugin_dir)
            .arg("--log-level")
            .arg("warn")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{lang} {role} sample test: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("outputs as expected"));
        if role == "sink" {
            // The sample sink checks its config when loaded: without `url`,
            // or with a misspelt key, the load stops with the plugin's words.
            for (config, expected) in [
                (None, "set `url`"),
                (
                    Some("urll=http://x/"),
                    "unknown key \"urll\" (did you mean \"url\"?)",
                ),
                (Some("url=ftp://x/"), "must start with http"),
            ] {
                let mut args = vec![
                    "plugin",
                    "test",
                    wasm.as_str(),
                    "--input",
                    "test/input.jsonl",
                ];
                if let Some(config) = config {
                    args.extend(["--config", config]);
                }
                let out = Command::new(BINARY)
                    .current_dir(&plugin_dir)
                    .args(["--log-level", "warn"])
                    .args(&args)
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(!out.status.success(), "{lang} {config:?}: {err}");
                // A refusal (`err`), not a trap whose output says the same.
                assert!(
                    err.contains("the plugin refuses it") && err.contains(expected),
                    "{lang} {config:?}: {err}"
                );
            }
        }
    }
}

#[test]
fn scaffolded_rust_plugins_build_and_pass_their_own_sample_tests() {
    scaffold_build_and_test("rust");
}

#[test]
fn scaffolded_javascript_plugins_build_and_pass_their_own_sample_tests() {
    scaffold_build_and_test("js");
}

#[test]
fn scaffolded_python_plugins_build_and_pass_their_own_sample_tests() {
    scaffold_build_and_test("python");
}

/// `--record` empties its file only when the plugin records something: a
/// run that fails before (a mistyped component path) leaves the fixture.
#[test]
fn a_failed_recording_run_leaves_an_existing_fixture_alone() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("http.jsonl");
    std::fs::write(&fixture, "{\"kept\":true}\n").unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, "{\"id\":\"e1\",\"type\":\"t\",\"data\":{}}\n").unwrap();
    let missing = dir.path().join("no-such-plugin.wasm");
    let out = weft(
        &[
            "plugin",
            "test",
            missing.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--record",
            fixture.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&fixture).unwrap(),
        "{\"kept\":true}\n"
    );
}

#[test]
fn scaffolding_refuses_unknown_languages_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = weft(
        &[
            "plugin", "new", "x", "--lang", "cobol", "--role", "sink", "--dir", d,
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use rust, js or python"));
    for lang in ["rust", "js", "python"] {
        let out = weft(
            &[
                "plugin", "new", "x", "--lang", lang, "--role", "router", "--dir", d,
            ],
            &[],
        );
        assert!(!out.status.success(), "{lang}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unknown role \"router\""),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Names Cargo would refuse as a package name, or that leave the directory.
    for name in ["9lives", "My-Plugin", "a/b", ""] {
        let out = weft(
            &[
                "plugin", "new", name, "--lang", "rust", "--role", "sink", "--dir", d,
            ],
            &[],
        );
        assert!(!out.status.success(), "{name}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("start with a lower-case letter"),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is written on a refusal"
    );
}

#[test]
fn the_harness_runs_a_transform_and_diffs_expectations() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"o1\",\"type\":\"order\",\"data\":{\"items\":[{\"q\":2,\"p\":1.5},{\"q\":1,\"p\":4}]}}\n# comments and blank lines are skipped\n\n{\"id\":\"o2\",\"type\":\"order\",\"data\":{\"other\":true}}\n",
    )
    .unwrap();
    let mapping = "mapping=[{\"op\":\"sum\",\"from\":\"/items\",\"field\":\"/p\",\"times\":\"/q\",\"to\":\"/total\",\"required\":true},{\"op\":\"drop\",\"path\":\"/items\"}]";
    let wasm = builtin("json-map");
    // `weft plugin test` of json-map on the input, with `config` and,
    // if given, `--expect FILE`.
    let run = |config: &str, expect: Option<&std::path::Path>| {
        let mut args = vec![
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--config",
            config,
        ];
        if let Some(expect) = expect {
            args.extend(["--expect", expect.to_str().unwrap()]);
        }
        weft(&args, &[])
    };
    let out = run(mapping, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["events"][0]["data"],
        serde_json::json!({ "total": 7 })
    );
    assert_eq!(lines[1]["error"]["retryable"], false);
    assert!(lines[1]["error"]["reason"]
        .as_str()
        .unwrap()
        .contains("required field /items is missing"));

    // The same outputs as expectations pass; a changed one fails with a diff.
    let expect = dir.path().join("expect.jsonl");
    std::fs::write(&expect, String::from_utf8_lossy(&out.stdout).as_ref()).unwrap();
    assert!(run(mapping, Some(&expect)).status.success());
    std::fs::write(
        &expect,
        String::from_utf8_lossy(&out.stdout).replace("\"total\":7", "\"total\":8"),
    )
    .unwrap();
    let bad = run(mapping, Some(&expect));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("MISMATCH input line 1"), "{err}");

    // A config the plugin refuses stops the run before any input.
    let refused = run("mapping=[{\"op\":\"drop\",\"path\":\"items\"}]", None);
    assert!(!refused.status.success());
    assert!(stdout_lines(&refused).is_empty());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(
            "--config: the plugin refuses it: mapping[0]: `path` = \"items\" is not a JSON pointer"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_classifies_sink_outcomes_against_a_live_api() {
    let api = FakeApi::start().await;
    api.fail_next(1, 503, &[("retry-after", "7")]);
    api.fail_next(1, 400, &[]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\":\"a\",\"data\":{\"n\":1}}\n{\"id\":\"b\",\"data\":{\"n\":2}}\n{\"id\":\"c\",\"data\":{\"n\":3}}\n").unwrap();
    let url = format!("url={}/hook", api.origin());
    let wasm = builtin("http-post");
    let (input_s, wasm_s, origin) = (
        input.to_str().unwrap().to_string(),
        wasm.to_str().unwrap().to_string(),
        api.origin(),
    );
    let granted = tokio::task::spawn_blocking({
        let (input_s, wasm_s, url, origin) =
            (input_s.clone(), wasm_s.clone(), url.clone(), origin.clone());
        move || {
            weft(
                &[
                    "plugin",
                    "test",
                    &wasm_s,
                    "--input",
                    &input_s,
                    "--config",
                    &url,
                    "--allow-host",
                    &origin,
                ],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let lines = stdout_lines(&granted);
    assert_eq!(lines[0]["outcome"], "retry");
    assert_eq!(lines[0]["after_ms"], 7000);
    assert_eq!(lines[1]["outcome"], "rejected");
    assert_eq!(lines[2]["outcome"], "delivered");
    assert_eq!(api.requests().len(), 3);
    assert_eq!(api.delivered()[0].json()["n"], 3);

    // Without the grant, nothing leaves the sandbox, and the sink rejects
    // the event: the same request would be refused every time.
    let denied = tokio::task::spawn_blocking(move || {
        weft(
            &[
                "plugin", "test", &wasm_s, "--input", &input_s, "--config", &url,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let lines = stdout_lines(&denied);
    assert!(
        lines.iter().all(|l| l["outcome"] == "rejected"
            && l["reason"].as_str().unwrap().contains("HttpRequestDenied")),
        "{lines:?}"
    );
    assert_eq!(api.requests().len(), 3);
}

/// `weft plugin test` applies the host's caps on what a plugin makes as
/// `serve` does: a transform turning one event into more than
/// `limits.max_events` (default 10,000) reports the permanent error the
/// route would dead-letter, not the events.
#[test]
fn plugin_test_applies_the_output_caps_of_serve() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"ok\",\"type\":\"t\",\"data\":{\"chaos\":\"flood\",\"count\":10000}}\n\
         {\"id\":\"over\",\"type\":\"t\",\"data\":{\"chaos\":\"flood\",\"count\":10001}}\n",
    )
    .unwrap();
    let chaos = weft_tests::test_plugin("chaos");
    let out = weft(
        &[
            "plugin",
            "test",
            chaos.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["events"].as_array().map(Vec::len), Some(10_000));
    assert_eq!(lines[1]["error"]["retryable"], false, "{}", lines[1]);
    assert_eq!(
        lines[1]["error"]["reason"],
        "the transform made 10001 events, more than limits.max_events (10000) from one event"
    );
}
