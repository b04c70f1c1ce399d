//! The example app serves the same hello function written in Rust, Python
//! and JavaScript. Python and JavaScript components import filesystem,
//! environment, terminal (and Python sockets) by habit: they link against
//! the deny-all WASI and run (T18). Built by `examples/hello/build.sh`,
//! which the test command runs first.

mod support;

use support::{Server, TestApp, get, repo_root};

#[tokio::test]
async fn hello_in_rust_python_and_javascript() {
    let example = repo_root().join("examples/hello");
    for component in ["hello-rust", "hello-python", "hello-js"] {
        assert!(
            example.join(format!("build/{component}.wasm")).is_file(),
            "{component}.wasm is missing: run examples/hello/build.sh (scripts/test does)"
        );
    }
    let app = TestApp::existing(&example);
    let server = Server::start(&app);
    for (route, language) in [
        ("/hello/rust", "Rust"),
        ("/hello/python", "Python"),
        ("/hello/js", "JavaScript"),
    ] {
        let reply = get(server.addr, route).await;
        assert_eq!(reply.status, 200, "{route}: {}", reply.text());
        assert!(reply.text().contains(language), "{route}: {}", reply.text());
    }
}
