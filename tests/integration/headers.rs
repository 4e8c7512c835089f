//! Header rules on the upstream request, per destination.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_set_and_removed_for_their_host_only() {
    let tls = Origin::https().await;
    let plain = Origin::http().await;
    let yaml = default_yaml(
        "auto",
        "",
        &format!(
            "headers:\n  - host: origin.test:{}\n    set: {{ anthropic-beta: tools-2024-04-04, x-team: warden }}\n    remove: [x-debug-token]\n  - host: origin.test:{}\n    set: {{ x-plain: yes }}\n",
            tls.port(),
            plain.port()
        ),
    );
    let w = TestWarden::start(&yaml).await;
    // auto intercepts the host with header rules: warden's CA alone verifies.
    let client = w.client();
    let r = client
        .get(format!("https://origin.test:{}/echo", tls.port()))
        .header("x-team", "agent-value")
        .header("x-debug-token", "dbg")
        .header("x-kept", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = &tls.seen()[0];
    assert_eq!(seen.header("anthropic-beta"), Some("tools-2024-04-04"));
    assert_eq!(
        seen.header("x-team"),
        Some("warden"),
        "the client's value is overwritten"
    );
    assert!(seen.header("x-debug-token").is_none());
    assert_eq!(seen.header("x-kept"), Some("1"));
    // Plain HTTP to its own entry; the https entry's headers do not leak onto it.
    client
        .get(format!("http://origin.test:{}/echo", plain.port()))
        .header("x-debug-token", "dbg")
        .send()
        .await
        .unwrap();
    let seen = &plain.seen()[0];
    assert_eq!(seen.header("x-plain"), Some("yes"));
    assert!(seen.header("anthropic-beta").is_none());
    assert_eq!(seen.header("x-debug-token"), Some("dbg"));
}
