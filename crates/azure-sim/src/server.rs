//! Serving a router on a listener, over plain HTTP or TLS, with the ability to drop a connection
//! without answering (the "down" fault). Every connection task lives in the accept loop's `JoinSet`,
//! so aborting the loop ends its connections too.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// Marker put in a response's extensions to make the server drop the connection instead of answering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sever;

/// A response that makes the server close the connection without a reply.
pub(crate) fn sever() -> Response {
    let mut resp = ().into_response();
    resp.extensions_mut().insert(Sever);
    resp
}

#[derive(Debug, thiserror::Error)]
#[error("connection severed by an injected fault")]
struct Severed;

/// Accepts connections forever, serving `router` on each (through TLS when `tls` is given).
pub(crate) async fn serve(listener: TcpListener, router: Router, tls: Option<Arc<rustls::ServerConfig>>) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!(error = %err, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => serve_conn(TokioIo::new(tls), router).await,
                        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_conn(TokioIo::new(stream), router).await,
            }
        });
    }
}

async fn serve_conn<I>(io: I, router: Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        async move {
            let resp = match router.oneshot(req.map(axum::body::Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if resp.extensions().get::<Sever>().is_some() {
                return Err(Severed);
            }
            Ok::<_, Severed>(resp)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(err) = builder.serve_connection(io, svc).await {
        tracing::trace!(error = %err, "Connection ended");
    }
}
