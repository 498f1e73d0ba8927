//! A small hydra through the real proxy: accounts each far under their own
//! limit, sharing a client stack, a network and prompt templates, are
//! linked into one cluster whose budget refuses them with a 429 that names
//! the cluster limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_hydra_is_refused_by_its_cluster_budget() {
    let env = Env::start(HYDRA_POLICY);
    let (served, cluster_429) = hydra_until_refused(&env.url("/v1/messages")).await;
    let (policy, v) = cluster_429.expect("the hydra was never refused");
    assert!(policy.starts_with("\"cluster-requests\";q="), "{policy}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cluster"), "{msg}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Each account sent at most 5 requests — far under its own 600/min — yet
    // the cluster (budget 20/min × multiplier, burst 5 × multiplier) stopped them.
    assert!(served < 60, "served {served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_accounts_on_one_client_are_not_clustered() {
    let env = Env::start(
        r#"
[cluster]
min_strength = "weak"
min_members = 2
[cluster.budget]
requests_per_minute = 1
burst_requests = 1
input_tokens_per_minute = 10000000
output_tokens_per_minute = 10000000
max_concurrent = 100
"#,
    );
    let c = client();
    for i in 0..20 {
        // Short, unrelated prompts: nothing to link on but client and network,
        // which the default rules do not link without TLS.
        let body = format!(
            r#"{{"model":"m","max_tokens":8,"messages":[{{"role":"user","content":"question number {i} about {}"}}]}}"#,
            fill(i * 97)
        );
        let mut req = messages_request(&env.url("/v1/messages"), &body);
        req.headers_mut()
            .insert("x-api-key", format!("sk-user-{i}").parse().unwrap());
        let r = timeout(c.request(req)).await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let _ = body_json(r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_blocks_the_cluster_and_exports_its_indicators() {
    let env = Env::start(
        "[cluster]\nmin_strength = \"strong\"\nmin_members = 3\n[cluster.budget]\nrequests_per_minute = 1000\n\
         burst_requests = 1000\ninput_tokens_per_minute = 10000000\noutput_tokens_per_minute = 10000000\nmax_concurrent = 100\n",
    );
    let send = |i: usize| {
        let key = format!("sk-hydra-{:02}", i % 6);
        let t = TEMPLATES[0];
        let prompt = t
            .replacen("{}", &fill(i), 1)
            .replacen("{}", &fill(i + 1000), 1);
        let body = serde_json::json!({"model": "m", "max_tokens": 16,
            "messages": [{"role": "user", "content": prompt}]})
        .to_string();
        let mut req = messages_request(&env.url("/v1/messages"), &body);
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
        req
    };
    for i in 0..24 {
        let r = timeout(client().request(send(i))).await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = body_json(r).await;
    }
    let admin = env.proxy.admin_addr().unwrap();
    let get = |path: String| async move {
        let r = timeout(
            client().request(
                http::Request::get(format!("http://{admin}{path}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        body_json(r).await
    };
    let top = get("/admin/top?by=requests".into()).await;
    let cluster = top["accounts"][0]["cluster"]
        .as_str()
        .expect("hydra member not clustered")
        .to_string();
    let c = get(format!("/admin/clusters/{cluster}")).await;
    assert!(c["members"].as_u64().unwrap() >= 3, "{c}");
    assert_eq!(c["strength"], "strong");
    let r = timeout(
        client().request(
            http::Request::post(format!("http://{admin}/admin/clusters/{cluster}/block"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Every member is now refused with a 403 in the API's shape.
    let r = timeout(client().request(send(99))).await.unwrap();
    assert_eq!(r.status(), 403);
    let v = body_json(r).await;
    assert_eq!(v["error"]["type"], "permission_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("cluster"));
    let x = get("/admin/export/indicators".into()).await;
    let exported = &x["clusters"][0];
    assert_eq!(exported["cluster"], cluster.as_str());
    let ind = &exported["indicators"];
    assert!(
        ind["ip_prefixes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "127.0.0.0/24"),
        "{ind}"
    );
    assert!(!ind["http"].as_array().unwrap().is_empty());
    assert!(!ind["prompt_keys"].as_array().unwrap().is_empty());
    assert!(!x.to_string().contains("sk-hydra"), "keys in the export");
}
