//! tokio-postgres' TLS connector on rustls: one handshake per connection
//! attempt, recording whether it took place, and the encrypted stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::tls::{SslMode, TlsError};

/// tokio-postgres' connector factory: one per connection attempt, so that
/// [`MakeTls::used`] tells about that connection.
#[derive(Clone)]
pub struct MakeTls {
    pub(super) config: Option<Arc<ClientConfig>>,
    pub(super) mode: SslMode,
    pub(super) used: Arc<AtomicBool>,
}

impl MakeTls {
    /// Whether a TLS handshake succeeded through this connector.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Acquire)
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = TlsConnector;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsConnector, TlsError> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| TlsError("TLS is disabled (sslmode disable)".to_string()))?;
        let name = ServerName::try_from(domain.to_string())
            .map_err(|_| TlsError(format!("invalid host name for TLS: {domain}")))?;
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(config),
            name,
            host: domain.to_string(),
            mode: self.mode,
            used: self.used.clone(),
        })
    }
}

/// One handshake with one host.
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    host: String,
    mode: SslMode,
    used: Arc<AtomicBool>,
}

impl<S> TlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self
                .connector
                .connect(self.name, stream)
                .await
                .map_err(|e| handshake_error(&e, &self.host, self.mode))?;
            self.used.store(true, Ordering::Release);
            Ok(TlsStream(stream))
        })
    }
}

/// A handshake failure in words a DBA acts on.
fn handshake_error(err: &io::Error, host: &str, mode: SslMode) -> TlsError {
    let rustls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let text = match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("certificate is not valid for host {host} (sslmode {mode})")
            }
            CertificateError::UnknownIssuer => format!(
                "certificate of {host} is not signed by a trusted root certificate \
                 (sslrootcert, sslmode {mode})"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("certificate of {host} has expired (sslmode {mode})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("certificate of {host} is not valid yet (sslmode {mode})")
            }
            other => format!("certificate of {host} rejected: {other:?} (sslmode {mode})"),
        },
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "the server ended the TLS handshake ({alert:?}); check the client certificate \
             (sslcert, sslkey) and the server's TLS settings"
        ),
        Some(other) => format!("TLS handshake with {host} failed: {other}"),
        None => format!("TLS handshake with {host} failed: {err}"),
    };
    TlsError(text)
}

/// An encrypted stream as tokio-postgres wants it.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// No channel binding: SCRAM still authenticates both sides' password
    /// knowledge; binding it to the certificate would need the hash
    /// algorithm of each certificate's signature.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
