//! The official gRPC library (Python `grpcio`, installed by `.ci/run`) through Outpost: a
//! bidirectional `stream_stream` ping-pong where each message is sent only after the answer to
//! the previous one, through an h2c upstream with the default retry policy (issue 10's
//! reproduction: with store-and-forward bodies it stalled until the total timeout).

mod support;

use std::process::Stdio;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn grpcio_bidi_ping_pong_through_outpost() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/grpc_pingpong.py"
    );
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 (grpcio is installed by .ci/run)");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = guard("the grpcio server's port", stdout.next_line())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the script exited early (is grpcio installed?)"));
    let proxy = Proxy::start(&format!(
        "upstreams:\n  echo:\n    base_url: http://127.0.0.1:{port}\n    http: http2\n    hosts: [grpc.outpost.local]\n"
    ))
    .await;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{} grpc.outpost.local\n", proxy.addr).as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let result = guard("the ping-pong", stdout.next_line()).await.unwrap();
    let output = guard("the script's exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(
        output.status.success() && result.as_deref() == Some("ok 5"),
        "grpcio ping-pong failed: {result:?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    proxy.shutdown().await;
}
