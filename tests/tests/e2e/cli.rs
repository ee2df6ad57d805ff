//! The command line: precise config errors, validation, clean shutdown.

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_weft-under-test");

/// Runs `weft validate` on `text`; also checks that it leaves nothing in
/// the temporary directory, whether the config is good or not.
fn validate(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = Command::new(BINARY)
        .args(["validate", "--config"])
        .arg(&path)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "weft validate left {left:?} behind");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        all.replace(&path.display().to_string(), "bad.toml"),
    )
}

/// `weft demo`, as a newcomer runs it: the shop example with its two
/// stand-in services, five orders, a story of what arrived where, exit 0,
/// and nothing left in the temporary directory. (Its compiled-plugin cache
/// goes to a directory of the test's own.)
#[test]
fn the_demo_tells_where_every_order_arrived_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = Command::new(BINARY)
        .arg("demo")
        .env("TMPDIR", &tmp)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for i in 0..5 {
        let order = format!("ORD-{}", 1000 + i);
        assert!(
            stdout.contains(&format!("Inventory API received {order}:")),
            "{order} not reported at the inventory API:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("entry for {order}: total")),
            "{order} not reported at the accounting API:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("All 5 orders reached both services."),
        "{stdout}"
    );
    // The story is the output: the host's own log stays quiet.
    assert!(!stderr.contains(" INFO "), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "weft demo left {left:?} behind");
}

#[test]
fn bad_config_errors_name_file_line_and_field() {
    // (config text, what the error must say)
    let cases = [
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\n\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"missing\"]\n",
            "bad.toml:7:10: routes[0].sinks: unknown plugin \"missing\"",
        ),
        ("[retry]\nmax_attempts = -1\n", "bad.toml:2:16:"),
        (
            "[plugins.x]\nbuiltin = \"http-post\"\nallowed_hosts = [\"*\"]\n",
            "bad.toml:3:1: plugins.x.allowed_hosts:",
        ),
        ("[server]\nlisten = \"not an address\"\n", "bad.toml:2:10:"),
        (
            "[plugins.x]\nbuiltin = \"json-map\"\nlimits = { instance_reuse = 0 }\n",
            "bad.toml:3:12: plugins.x.limits.instance_reuse: must be 1..=1000000",
        ),
        (
            "[plugins.x]\nbuiltin = \"http-post\"\nlimits = { max_batch = 5000 }\n",
            "bad.toml:3:12: plugins.x.limits.max_batch: must be 1..=256",
        ),
        (
            "[plugins.x]\nbuiltin = \"webhook-json\"\nlimits = { requests_per_s = 0 }\n",
            "bad.toml:3:12: plugins.x.limits.requests_per_s: must be 1..=1000000",
        ),
        (
            "[plugins.x]\nbuiltin = \"webhook-json\"\nlimits = { max_events = 0 }\n",
            "bad.toml:3:12: plugins.x.limits.max_events: must be 1..=1000000",
        ),
        (
            "[plugins.x]\nbuiltin = \"webhook-json\"\nlimits = { max_output_bytes = 0 }\n",
            "bad.toml:3:12: plugins.x.limits.max_output_bytes: must be 1..=1073741824",
        ),
        (
            "[storage]\nmax_pending = 0\n",
            "bad.toml:2:1: storage.max_pending: must be 1..=1099511627776",
        ),
        (
            "[storage]\nmin_free_mib = 2000000000\n",
            "bad.toml:2:1: storage.min_free_mib: must be 0..=1073741824",
        ),
        ("[plugins.x]\npath = \"nowhere.wasm\"\n", "plugin x: cannot read"),
        (
            "[plugins.x]\nbuiltin = \"../x\"\n",
            "bad.toml:2:1: plugins.x.builtin: \"../x\" is not a built-in plugin name",
        ),
        // A test fixture built beside the built-ins is not one.
        (
            "[plugins.x]\nbuiltin = \"chaos\"\n",
            "bad.toml:2:1: plugins.x.builtin: no built-in plugin named \"chaos\"",
        ),
        (
            "[plugins.x]\nbuiltin = \"http-pots\"\n",
            "bad.toml:2:1: plugins.x.builtin: no built-in plugin named \"http-pots\"",
        ),
        // Plugins check their own config when loaded (`check-config`), and
        // the error points at the plugin's `config`.
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\nconfig = { id_pointer = \"/id\", signing_sercet = \"shop\" }\n",
            "bad.toml:3:1: plugins.in.config: unknown key \"signing_sercet\" (did you mean \"signing_secret\"?)",
        ),
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\nconfig = { signing_secret = \"shop\" }\n",
            "bad.toml:3:1: plugins.in.config: signing_secret = \"shop\": secret \"shop\" is not granted to this plugin",
        ),
        // A secret named by an `[[inject]]` entry is that header's only:
        // the plugin may not sign with it.
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\nconfig = { signing_secret = \"shop\" }\nallowed_hosts = [\"https://api.example\"]\nsecrets = { shop = { env = \"PATH\" } }\ninject = [{ host = \"https://api.example\", header = \"x-key\", secret = \"shop\" }]\n",
            "bad.toml:3:1: plugins.in.config: signing_secret = \"shop\": secret \"shop\" is granted to this plugin only as an injected header, not for signing",
        ),
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\nconfig = { id_pointer = \"order_id\" }\n",
            "plugins.in.config: id_pointer = \"order_id\" is not a JSON pointer",
        ),
        (
            "[plugins.out]\nbuiltin = \"http-post\"\nconfig = { url = \"http://127.0.0.1:9/x\", mode = \"structurd\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\n",
            "bad.toml:3:1: plugins.out.config: mode = \"structurd\": must be \"binary\" or \"structured\"",
        ),
        (
            "[plugins.out]\nbuiltin = \"http-post\"\n",
            "bad.toml:1:1: plugins.out.config: `url` is required",
        ),
        (
            "[plugins.map]\nbuiltin = \"json-map\"\nconfig = { mapping = [{ op = \"sett\", path = \"/a\" }] }\n",
            "bad.toml:3:1: plugins.map.config: mapping[0]: unknown mapping operation `sett`",
        ),
        // Found after parsing, still located.
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\n[plugins.out]\nbuiltin = \"http-post\"\nconfig = { url = \"http://127.0.0.1:9/\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\nsource = \"out\"\nsinks = [\"out\"]\n",
            "bad.toml:9:10: route \"r\": plugin \"out\" is a sink, but is used as a source",
        ),
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\n[plugins.out]\nbuiltin = \"http-post\"\nconfig = { url = \"http://127.0.0.1:9/\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\", \"out\"]\n",
            "bad.toml:10:17: routes[0].sinks: \"out\" is listed twice",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"0.0.0.0:8080\"\n",
            "bad.toml:3:1: server.admin_listen: 0.0.0.0:8080 is the webhook listener's address too",
        ),
        (
            "[plugins.in]\nbuiltin = \"webhook-json\"\nsecrets = { key = { env = \"WEFT_TEST_SECRET_THAT_IS_NOT_SET\" } }\n",
            "bad.toml:3:13: plugins.in.secrets.key: environment variable WEFT_TEST_SECRET_THAT_IS_NOT_SET is not set",
        ),
        // What `serve` would refuse, `validate` refuses too.
        (
            "[server]\nadmin_token = { env = \"WEFT_TEST_TOKEN_THAT_IS_NOT_SET\" }\n",
            "server.admin_token: environment variable WEFT_TEST_TOKEN_THAT_IS_NOT_SET is not set",
        ),
    ];
    for (text, expected) in cases {
        let (ok, out) = validate(text);
        assert!(!ok, "{text}");
        assert!(out.contains(expected), "{text}\n{out}");
    }
}

#[test]
fn a_plugin_in_the_wrong_role_is_refused() {
    let (ok, out) = validate("[plugins.a]\nbuiltin = \"http-post\"\nconfig = { url = \"http://127.0.0.1:9/\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\n[plugins.b]\nbuiltin = \"json-map\"\n[[routes]]\nname = \"r\"\nsource = \"a\"\nsinks = [\"b\"]\n");
    assert!(!ok);
    assert!(
        out.contains("bad.toml:9:10: route \"r\": plugin \"a\" is a sink, but is used as a source"),
        "{out}"
    );
}

#[test]
fn the_shop_example_validates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/shop/weft.toml");
    let out = Command::new(BINARY)
        .args(["validate", "--config", path])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (4 plugins, 1 route)"), "{stdout}");
}

#[test]
fn a_store_of_an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("data/queue")).unwrap();
        db.insert("m/format", "7").unwrap();
        db.flush().unwrap();
    }
    let config = dir.path().join("weft.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"data\"\n").unwrap();
    // sled's threads in this process let go of the store's lock shortly
    // after the handle above is dropped, not during the drop.
    let mut tries = 0;
    let err = loop {
        let out = Command::new(BINARY)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        tries += 1;
        if !err.contains("in use by another Weft process") || tries == 100 {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(err.contains("format version 7"), "{err}");
}

/// `weft serve` refuses a config a plugin refuses, as `validate` does (the
/// check runs before the listeners are bound): a misspelt `signing_secret`
/// must not start an endpoint that takes unsigned webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_config_its_plugins_refuse_before_accepting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let text = weft_tests::with_defaults(
        "[plugins.in]\nbuiltin = \"webhook-json\"\nconfig = { signing_sercet = \"shop\" }\nsecrets = { shop = { env = \"PATH\" } }\n[plugins.out]\nbuiltin = \"http-post\"\nconfig = { url = \"http://127.0.0.1:9/\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\n",
        dir.path(),
    );
    let config = weft::config::Config::parse(&text, "shop.toml", dir.path()).unwrap();
    let err = match weft::app::start(config).await {
        Ok(_) => panic!("started with a misspelt signing_secret"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(
            "plugins.in.config: unknown key \"signing_sercet\" (did you mean \"signing_secret\"?)"
        ),
        "{err}"
    );
    // The line of the plugin's `config` in the whole file.
    let line = text
        .lines()
        .position(|l| l.starts_with("config = { signing_sercet"))
        .unwrap()
        + 1;
    assert!(err.starts_with(&format!("shop.toml:{line}:1: ")), "{err}");
}

/// The data directory holds webhook bodies: Weft keeps it to its own user
/// (created 0700, or narrowed to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_readable_by_its_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"off\"\n[storage]\ndata_dir = \"{}\"\n",
        data.display()
    );
    let config = weft::config::Config::parse(&text, "weft.toml", dir.path()).unwrap();
    let running = weft::app::start(config).await.unwrap();
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
    running.shutdown().await;
}

/// What is valid but surely not meant is said, not refused: a config
/// without routes, a plugin on no route.
#[test]
fn validate_warns_of_unused_plugins_and_a_config_without_routes() {
    let (ok, out) = validate("[plugins.spare]\nbuiltin = \"json-map\"\n");
    assert!(ok, "{out}");
    assert!(out.contains("the config has no routes"), "{out}");
    assert!(out.contains("plugin spare is on no route"), "{out}");
    let (ok, out) = validate("[plugins.in]\nbuiltin = \"webhook-json\"\n[plugins.out]\nbuiltin = \"http-post\"\nconfig = { url = \"http://127.0.0.1:9/\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\n");
    assert!(ok, "{out}");
    assert!(
        !out.contains("on no route") && !out.contains("no routes"),
        "{out}"
    );
    assert!(!out.contains("max_output_bytes"), "{out}");
    // A source that may make fewer bytes than a webhook may hold.
    let (ok, out) = validate(
        "[server]\nmax_body_bytes = 2000000\n\
         [plugins.in]\nbuiltin = \"webhook-json\"\nlimits = { max_output_bytes = 1000000 }\n\
         [plugins.out]\nbuiltin = \"http-post\"\nconfig = { url = \"http://127.0.0.1:9/\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\n\
         [[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\n\
         [[routes]]\nname = \"r2\"\nsource = \"in\"\nsinks = [\"out\"]\n",
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.matches("limits.max_output_bytes (1000000) is below server.max_body_bytes (2000000)")
            .count(),
        1,
        "once per source: {out}"
    );
}
