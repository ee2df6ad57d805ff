//! HTTPS on Weft's own listeners (`server.tls`): webhooks and the admin API
//! over TLS with a certificate the test makes, plain HTTP refused on them,
//! and unusable certificate files stopping the start with a located error.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weft_tests::{eventually, try_send, FakeApi, TestHost};

/// A self-signed certificate for `localhost`, written as `cert.pem` and
/// `key.pem` in `dir`; returns the certificate (DER) to trust.
fn certificate(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.key_pair.serialize_pem()).unwrap();
    made.cert.der().clone()
}

/// A TLS handshake with `addr` as `localhost`, trusting only `trusted`.
async fn connect(
    addr: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One HTTPS request to `addr` as `localhost`, trusting only `trusted`;
/// returns the status and body.
async fn https(
    addr: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let tls = connect(addr, trusted)
        .await
        .expect("TLS handshake with Weft");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(
            request
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// POSTs the webhook `{"id": id}` over HTTPS to `addr`'s `/hooks/in`,
/// trusting only `trusted`; returns the status and body.
async fn post_event(
    addr: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    id: &str,
) -> (u16, String) {
    https(
        addr,
        trusted,
        "POST",
        "/hooks/in",
        &[("content-type", "application/json")],
        &format!("{{\"id\":\"{id}\"}}"),
    )
    .await
}

/// The `server.tls` setting for a certificate and key file.
fn tls_setting(cert: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

fn relay(api: &FakeApi, tls: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{tls}

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id" }}

[plugins.out]
builtin = "http-post"
config = {{ url = "{origin}/deliver" }}
allowed_hosts = ["{origin}"]

[[routes]]
name = "relay"
source = "in"
sinks = ["out"]
"#,
        origin = api.origin()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_speak_https_with_the_configured_certificate() {
    let api = FakeApi::start().await;
    let certs = tempfile::tempdir().unwrap();
    let trusted = certificate(certs.path());
    let tls = tls_setting(
        &certs.path().join("cert.pem"),
        &certs.path().join("key.pem"),
    );
    let host = TestHost::start(&relay(&api, &tls)).await;
    let webhook = host.running.webhook_addr;
    let admin = host.running.admin_addr.unwrap();

    let (status, body) = post_event(webhook, &trusted, "over-tls").await;
    assert_eq!(status, 202, "{body}");
    assert!(
        eventually(Duration::from_secs(30), || api.delivered_ids()
            == ["over-tls"])
        .await
    );

    let auth = format!("Bearer {}", host.running.admin_token);
    let (status, body) = https(
        admin,
        &trusted,
        "GET",
        "/api/status",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"relay\""), "{body}");

    // Plain HTTP on a TLS listener fails at once (a TLS alert, not a wait
    // for the handshake timeout), is counted, and nothing is stored.
    for url in [
        format!("http://{webhook}/hooks/in"),
        format!("http://{admin}/api/status"),
    ] {
        let plain = tokio::time::timeout(
            Duration::from_secs(3),
            try_send("POST", &url, "{\"id\":\"plain\"}", &[]),
        )
        .await
        .expect("refused before the 5 s handshake timeout");
        assert!(plain.is_err(), "{url}: {plain:?}");
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            host.counter("weft_tls_handshake_failures_total") == 2
        })
        .await
    );
    assert_eq!(host.counter("weft_events_accepted_total"), 1);
    // Still served over TLS afterwards.
    let (status, body) = post_event(webhook, &trusted, "after").await;
    assert_eq!(status, 202, "{body}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_stop_the_start_with_a_located_error() {
    let api = FakeApi::start().await;
    let certs = tempfile::tempdir().unwrap();
    certificate(certs.path());
    let other = tempfile::tempdir().unwrap();
    certificate(other.path());
    let cert = certs.path().join("cert.pem");
    let missing = certs.path().join("missing.pem");
    let foreign_key = other.path().join("key.pem");
    for (cert, key, expected) in [
        (&missing, &foreign_key, "server.tls.cert: "),
        (&cert, &cert, "server.tls.key: "),
        (
            &cert,
            &foreign_key,
            "server.tls: the certificate and key do not go together",
        ),
    ] {
        let tls = tls_setting(cert, key);
        let dir = tempfile::tempdir().unwrap();
        let text = weft_tests::with_defaults(&relay(&api, &tls), dir.path());
        let config = weft::config::Config::parse(&text, "test.toml", dir.path()).unwrap();
        let err = match weft::app::start(config).await {
            Ok(running) => {
                running.shutdown().await;
                panic!("started with {cert:?} and {key:?}");
            }
            Err(e) => e.to_string(),
        };
        // Located at the `tls` line of the file (after the test's
        // `[storage]` section).
        assert!(err.starts_with("test.toml:8:"), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

/// `SIGHUP` to the real binary reloads the certificate and key (a renewed
/// certificate takes over without a restart); files that cannot be used
/// are refused and the current certificate stays; the process keeps
/// serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_the_current_one_if_the_new_is_unusable() {
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path());
    let webhook: SocketAddr = format!("127.0.0.1:{}", weft_tests::free_port())
        .parse()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", weft_tests::free_port())
        .parse()
        .unwrap();
    let config = relay(&api, "tls = { cert = \"cert.pem\", key = \"key.pem\" }")
        .replace(
            "127.0.0.1:0\"\nadmin_listen",
            &format!("{webhook}\"\nadmin_listen"),
        )
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"{admin}\""),
        );
    let text = weft_tests::with_defaults(&config, &dir.path().join("data"));
    let path = dir.path().join("weft.toml");
    std::fs::write(&path, text).unwrap();
    let mut weft = weft_tests::WeftProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_weft-under-test")),
        &path,
        webhook,
        admin,
        &dir.path().join("weft.log"),
    )
    .await;
    assert_eq!(post_event(webhook, &first, "before").await.0, 202);

    // A renewed certificate: served to new connections after SIGHUP.
    let second = certificate(dir.path());
    weft.hangup();
    // Whether a new connection completes its handshake trusting only `cert`.
    let renewed = |trusted: &rustls::pki_types::CertificateDer<'static>| {
        let trusted = trusted.clone();
        async move { connect(webhook, &trusted).await.is_ok() }
    };
    let mut served = false;
    for _ in 0..100 {
        if renewed(&second).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the renewed certificate was never served");
    assert!(
        !renewed(&first).await,
        "the old certificate is no longer served"
    );
    assert_eq!(post_event(webhook, &second, "after").await.0, 202);

    // A key that is not one: refused, the second certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key\n").unwrap();
    weft.hangup();
    let log = dir.path().join("weft.log");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("TLS certificate not reloaded"))
        .await
    );
    assert!(weft.running());
    assert_eq!(post_event(webhook, &second, "still").await.0, 202);
    assert!(eventually(Duration::from_secs(30), || api.delivered_ids().len() == 3).await);
    assert!(weft.terminate(), "clean exit");
}

/// Under TLS the connection limits still hold: a client that opens a
/// connection and never completes its handshake is cut off after the
/// header-read timeout and counted; a TLS connection that goes idle after
/// its request is closed after the idle timeout; either way its slot is
/// given back (with `max_connections = 1`, the next client is served only
/// once the slot is free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_idle_tls_connections_give_their_slot_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = FakeApi::start().await;
    let certs = tempfile::tempdir().unwrap();
    let trusted = certificate(certs.path());
    let server = format!(
        "{}\nmax_connections = 1\nheader_read_timeout_ms = 1000\nidle_timeout_ms = 1000",
        tls_setting(
            &certs.path().join("cert.pem"),
            &certs.path().join("key.pem")
        )
    );
    let host = TestHost::start(&relay(&api, &server)).await;
    let webhook = host.running.webhook_addr;

    // A TCP connection that never says a word: no handshake, so it holds
    // the only slot until the header-read timeout closes it.
    let mut stalled = tokio::net::TcpStream::connect(webhook).await.unwrap();
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(30), stalled.read(&mut buf))
        .await
        .expect("the stalled handshake is cut off");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    assert!(
        eventually(Duration::from_secs(10), || {
            host.counter("weft_tls_handshake_failures_total") == 1
        })
        .await
    );
    // The slot is free again: a TLS client is served.
    let (status, body) = post_event(webhook, &trusted, "after-stall").await;
    assert_eq!(status, 202, "{body}");

    // A TLS connection kept alive after its request, then left idle: the
    // server closes it (end of stream or a close alert) and frees the slot.
    let mut tls = connect(webhook, &trusted).await.expect("TLS handshake");
    let body = "{\"id\":\"kept-alive\"}";
    let request = format!(
        "POST /hooks/in HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    // Read the answer and then on until the server closes the connection
    // (end of stream, or an error after its close alert).
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 512];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle TLS connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let (status, body) = post_event(webhook, &trusted, "after-idle").await;
    assert_eq!(status, 202, "{body}");

    assert!(
        eventually(Duration::from_secs(30), || api.delivered_ids().len() == 3).await,
        "{:?}",
        api.delivered_ids()
    );
    // Only the stalled connection failed its handshake.
    assert_eq!(host.counter("weft_tls_handshake_failures_total"), 1);
    host.stop().await;
}
