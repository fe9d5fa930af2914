//! HTTP: the listener (HTTP/1.1 and h2c on one port, TLS with ALPN when configured),
//! auth, the routes of the contract, and the event streams. Handlers never block the
//! runtime; every error leaves in the contract's JSON shape.

pub mod coalesce;
pub mod errors;
pub mod health;
pub mod inline;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod stream;
pub mod subscribe;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::{ready, Either, Ready};

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::config::Config;
use crate::task::Registry;
use errors::{respond, ApiError, Resp};

/// What every handler can reach. It lives as long as the process (`&'static`), so a
/// request costs no reference counting on it.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub reg: Arc<Registry>,
    pub metrics: health::Counters,
}

/// What a request turns into: an answer at once (the health routes), or a boxed
/// future for the rest, so the hot path does not carry the size of every route's state.
pub type Handled = Either<
    Ready<Result<Resp, Infallible>>,
    Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>,
>;

/// The router: the health routes without allocating (load balancers hammer them), then
/// auth and every other route.
pub fn handle(state: &'static AppState, req: Request<Incoming>) -> Handled {
    state.metrics.request();
    if req.method() == Method::GET {
        match req.uri().path() {
            "/hello" => return Either::Left(ready(Ok(health::hello(state)))),
            "/healthz" => return Either::Left(ready(Ok(health::healthz()))),
            _ => {}
        }
    }
    Either::Right(Box::pin(route(state, req)))
}

async fn route(state: &'static AppState, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let (route, id) = match routes::lookup(req.method().as_str(), &path) {
        routes::Lookup::Found(r, id) => (r, id.unwrap_or("")),
        routes::Lookup::WrongMethod { allow, open } => {
            let auth = if open {
                Ok(())
            } else {
                check_auth(&state.cfg, &req)
            };
            return respond(auth.and(Err(ApiError::method_not_allowed(allow))));
        }
        routes::Lookup::NotFound => {
            let auth = check_auth(&state.cfg, &req);
            let e = ApiError::new(
                hyper::StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "there is no route {} {}: GET /openapi.json lists every route",
                    req.method(),
                    path.chars().take(200).collect::<String>()
                ),
            );
            return respond(auth.and(Err(e)));
        }
    };
    if !route.open {
        if let Err(e) = check_auth(&state.cfg, &req) {
            return respond(Err(e));
        }
    }
    use routes::Op;
    let r = match route.op {
        Op::Hello => Ok(health::hello(state)),
        Op::Healthz => Ok(health::healthz()),
        Op::Readyz => health::readyz(state),
        Op::Metrics => Ok(health::metrics(state)),
        Op::PtyStatus => Ok(health::pty_status(state)),
        Op::OpenapiJson => Ok(openapi::json()),
        Op::OpenapiYaml => Ok(openapi::yaml()),
        Op::ListWork => routes::list(state, &req),
        Op::CreateWork => routes::create(state, req, false).await,
        Op::Run => routes::create(state, req, true).await,
        Op::GetWork => routes::get(state, id),
        Op::CancelWork => routes::cancel(state, id),
        Op::Events => routes::events(state, id, &req),
        Op::Log => routes::log(state, id).await,
        Op::Input => routes::input(state, id, req).await,
        Op::Resize => routes::resize(state, id, req).await,
    };
    respond(r)
}

/// Bearer token check, in constant time.
fn check_auth<B>(cfg: &Config, req: &Request<B>) -> Result<(), ApiError> {
    let Some(token) = &cfg.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            hyper::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send Authorization: Bearer <OUTPOST_TOKEN>",
        ))
    }
}

/// Compares without an early exit, so timing does not reveal a prefix match.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for (i, y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_works() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secreT", b"secret"));
        assert!(!super::constant_time_eq(b"secret1", b"secret"));
        assert!(!super::constant_time_eq(b"", b"secret"));
    }
}
