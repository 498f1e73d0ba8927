//! The guard embedded in another gateway as a tower layer: the
//! `axum_guard` example (an axum app whose own handler sits behind
//! `GuardLayer`) run as a process, and driven over a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;

/// The example's binary, built by `cargo test` next to this test's.
fn example_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join("axum_guard");
    assert!(
        bin.exists(),
        "{} is missing: cargo test builds the examples",
        bin.display()
    );
    bin
}

fn keyed(url: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = messages_request(url, SMALL_MESSAGE);
    match key {
        Some(k) => r.headers_mut().insert("x-api-key", k.parse().unwrap()),
        None => r.headers_mut().remove("x-api-key"),
    };
    r
}

#[tokio::test]
async fn an_axum_app_embedding_the_layer_is_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("embedded.toml");
    // The upstream is the app's own handler: this URL is never called;
    // nor is the listener opened (the app listens itself).
    std::fs::write(
        &config,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n\
         [tiers.default]\nrequests_per_minute = 3\nburst_requests = 3\n\
         input_tokens_per_minute = 10000000\noutput_tokens_per_minute = 10000000\n\
         max_concurrent = 8\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(example_bin());
    cmd.arg(&config).arg("127.0.0.1:0");
    let app = spawn_listening(&mut cmd, 1, false);
    let url = format!("http://{}/v1/messages", app.listeners[0]);
    let c = client();

    // Admitted: the app's handler answers, through the guard.
    let resp = timeout(c.request(keyed(&url, Some("embed-key-1"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let body = body_json(resp).await;
    assert_eq!(
        body["content"][0]["text"], "answered with max_tokens=8",
        "{body}"
    );

    // No key: refused by the guard in the API's error shape.
    let resp = timeout(c.request(keyed(&url, None))).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body = body_json(resp).await;
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");

    // The account's budget: 3 requests at once, then 429 with the
    // rate-limit headers; another account is still served.
    let mut refused = None;
    for _ in 0..5 {
        let resp = timeout(c.request(keyed(&url, Some("embed-key-2"))))
            .await
            .unwrap();
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let refused = refused.expect("the budget of 3 requests never refused");
    assert!(refused.headers().contains_key("retry-after"));
    assert!(refused.headers().contains_key("ratelimit-policy"));
    let body = body_json(refused).await;
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    let resp = timeout(c.request(keyed(&url, Some("embed-key-3"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let _ = app.stop("-TERM");
}
