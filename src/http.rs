//! The HTTP endpoint, off unless `[http] listen` is set: `/metrics`
//! (Prometheus text, or OpenMetrics when the scraper asks for it),
//! `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Every answer is read from shared state ([`Probes`]), never from an actor
//! or the repository, and the server runs on worker threads of its own:
//! it answers at once while the repository is down or frozen and while an
//! actor is wedged. A reload that changes the address binds the new one
//! before the old one is stopped; a bind failure keeps the running one.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use actix_web::http::header::{self, ContentType};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use powa_fleet_actors::liveness;
use powa_fleet_actors::probes::Probes;
use slog::{error, info, Logger};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the scraper prefers OpenMetrics (Prometheus sends
/// `application/openmetrics-text;version=1.0.0,...;q=0.5,text/plain;...`).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.trim().starts_with("application/openmetrics-text"))
}

async fn metrics(req: HttpRequest, probes: web::Data<Probes>) -> HttpResponse {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if wants_openmetrics(accept) {
        HttpResponse::Ok()
            .content_type(OPENMETRICS)
            .body(probes.metrics.encode_openmetrics())
    } else {
        HttpResponse::Ok()
            .content_type(TEXT)
            .body(probes.metrics.encode_text())
    }
}

async fn healthz(probes: web::Data<Probes>) -> HttpResponse {
    match probes.liveness.check() {
        Ok(()) => HttpResponse::Ok()
            .content_type(ContentType::plaintext())
            .body("alive\n"),
        Err(wedged) => HttpResponse::ServiceUnavailable()
            .content_type(ContentType::plaintext())
            .body(format!("{}\n", liveness::describe(&wedged))),
    }
}

async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    match probes.readiness.check() {
        Ok(()) => HttpResponse::Ok()
            .content_type(ContentType::plaintext())
            .body("ready\n"),
        Err(reasons) => HttpResponse::ServiceUnavailable()
            .content_type(ContentType::plaintext())
            .body(format!("{}\n", reasons.join("; "))),
    }
}

/// The running server, if any, and what it serves.
pub struct Endpoint {
    probes: Probes,
    logger: Logger,
    running: Option<(SocketAddr, ServerHandle)>,
}

impl Endpoint {
    pub fn new(probes: Probes, logger: Logger) -> Endpoint {
        Endpoint {
            probes,
            logger,
            running: None,
        }
    }

    /// Serve on `listen` (none: stop serving). Must run inside the actix
    /// system. An error leaves the running server as it was.
    pub async fn apply(&mut self, listen: Option<SocketAddr>) -> Result<(), String> {
        if self.running.as_ref().map(|(a, _)| *a) == listen {
            return Ok(());
        }
        let new = match listen {
            None => None,
            Some(addr) => Some((addr, self.bind(addr)?)),
        };
        if let Some((old, handle)) = std::mem::replace(&mut self.running, new) {
            info!(self.logger, "HTTP endpoint stopped"; "listen" => %old);
            handle.stop(true).await;
        }
        Ok(())
    }

    fn bind(&self, addr: SocketAddr) -> Result<ServerHandle, String> {
        let probes = web::Data::new(self.probes.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(probes.clone())
                .route("/metrics", web::get().to(metrics))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
        })
        // Two threads of their own: the answers never wait for the
        // actors' threads.
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(addr)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?
        .run();
        let handle = server.handle();
        let logger = self.logger.clone();
        actix_rt::spawn(async move {
            if let Err(e) = server.await {
                error!(logger, "HTTP endpoint failed"; "error" => %e);
            }
        });
        info!(self.logger, "HTTP endpoint listening"; "listen" => %addr);
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_preferred() {
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(""));
    }
}
