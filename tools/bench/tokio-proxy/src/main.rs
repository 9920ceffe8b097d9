//! Work-stealing reverse proxy for the bench: every request is a task on Tokio's multi-threaded
//! runtime (any worker thread may run it, idle ones steal), forwarded by Hyper's pooled client.
//! usage: tokio-proxy --listen PORT --backend PORT [--threads N] [--pool N]
use hyper::client::HttpConnector;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::AddrStream;
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Client, Request, Response, Server, Uri};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("numeric argument"))
        .unwrap_or(default)
}

async fn forward(
    client: Client<HttpConnector>,
    backend: u16,
    peer: SocketAddr,
    mut req: Request<Body>,
) -> Result<Response<Body>, Infallible> {
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    *req.uri_mut() = Uri::try_from(format!("http://127.0.0.1:{}{}", backend, pq)).unwrap();
    let h = req.headers_mut();
    // The same forwarded headers as corral, NGINX and HAProxy get asked for.
    let close = h
        .get(CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map_or(false, |v| v.eq_ignore_ascii_case("close"));
    h.remove(CONNECTION);
    h.insert("x-forwarded-for", HeaderValue::from_str(&peer.ip().to_string()).unwrap());
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    match client.request(req).await {
        Ok(mut resp) => {
            // Hyper closes after such a request but does not say so; the other proxies do.
            if close {
                resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        }
        Err(_) => Ok(Response::builder().status(502).body(Body::empty()).unwrap()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = arg(&args, "--listen", 0) as u16;
    let backend = arg(&args, "--backend", 9000) as u16;
    let threads = arg(&args, "--threads", 1);
    let pool = arg(&args, "--pool", 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder()
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        let make = make_service_fn(move |s: &AddrStream| {
            let client = client.clone();
            let peer = s.remote_addr();
            async move {
                Ok::<_, Infallible>(service_fn(move |req| forward(client.clone(), backend, peer, req)))
            }
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = Server::bind(&addr)
            .tcp_nodelay(true)
            .http1_keepalive(true)
            .serve(make);
        println!("listening on {}", server.local_addr());
        use std::io::Write;
        std::io::stdout().flush().ok();
        server.await.expect("server");
    });
}
