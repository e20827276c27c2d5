//! TLS for every collector connection, with libpq's options and meaning:
//! `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert`, `sslcert` and `sslkey`.
//!
//! tokio-postgres only knows `disable`, `prefer` and `require` and reads no
//! certificate files, so this module does the rest on rustls (ring
//! provider): it takes the `ssl*` keys out of a connection string
//! ([`take_ssl_params`]), resolves them with libpq's environment variables
//! and default files ([`TlsOptions`]), and builds the connector
//! ([`MakeTls`]) whose certificate verifier follows the mode:
//!
//! * `prefer`, `require`: encrypted, the certificate is not checked, except
//!   that `require` checks the chain like `verify-ca` when a root
//!   certificate is given (as libpq does);
//! * `verify-ca`: the chain must lead to the root certificate, any host name;
//! * `verify-full`: the chain, and the host name against the certificate.
//!
//! The connector records whether the handshake took place, so a session
//! knows whether it is encrypted (`prefer` may end up in plain text).

use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode`, less `allow` (tokio-postgres cannot try plain text
/// first and TLS second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// libpq's default: TLS when the server offers it, plain text otherwise.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, String> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err("sslmode \"allow\" is not supported; use prefer".to_string()),
            other => Err(format!(
                "invalid sslmode \"{other}\": expected disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres does before the handshake.
    pub fn pg(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS options of one kind of connection (the repository's, or the
/// remote servers'). Paths left `None` fall back to libpq's default files
/// under `~/.postgresql` when those exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The `ssl*` values found in a connection string, not yet resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslParams {
    pub mode: Option<String>,
    pub rootcert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl SslParams {
    /// libpq's environment variables `PGSSLMODE`, `PGSSLROOTCERT`,
    /// `PGSSLCERT`, `PGSSLKEY`, through `env`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> SslParams {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        SslParams {
            mode: get("PGSSLMODE"),
            rootcert: get("PGSSLROOTCERT"),
            cert: get("PGSSLCERT"),
            key: get("PGSSLKEY"),
        }
    }

    /// Each value of `self`, else the one of `fallback`.
    pub fn or(self, fallback: SslParams) -> SslParams {
        SslParams {
            mode: self.mode.or(fallback.mode),
            rootcert: self.rootcert.or(fallback.rootcert),
            cert: self.cert.or(fallback.cert),
            key: self.key.or(fallback.key),
        }
    }

    pub fn resolve(self) -> Result<TlsOptions, String> {
        Ok(TlsOptions {
            mode: match &self.mode {
                Some(text) => SslMode::parse(text)?,
                None => SslMode::default(),
            },
            rootcert: self.rootcert.map(PathBuf::from),
            cert: self.cert.map(PathBuf::from),
            key: self.key.map(PathBuf::from),
        })
    }
}

/// The process environment, for [`SslParams::from_env`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

const SSL_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn set_param(params: &mut SslParams, key: &str, value: String) {
    match key {
        "sslmode" => params.mode = Some(value),
        "sslrootcert" => params.rootcert = Some(value),
        "sslcert" => params.cert = Some(value),
        "sslkey" => params.key = Some(value),
        _ => unreachable!("only SSL_KEYS are set"),
    }
}

/// Split a libpq connection string (key=value or URI) into the same string
/// without its `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, and those
/// values. Errors never quote a value (it could be a password).
pub fn take_ssl_params(dsn: &str) -> Result<(String, SslParams), String> {
    let trimmed = dsn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        take_from_uri(dsn)
    } else {
        take_from_key_value(dsn)
    }
}

fn take_from_uri(dsn: &str) -> Result<(String, SslParams), String> {
    let mut params = SslParams::default();
    let Some((head, query)) = dsn.split_once('?') else {
        return Ok((dsn.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key, "a query parameter name")?;
        if SSL_KEYS.contains(&key.as_str()) {
            let value = percent_decode(value, &format!("the value of \"{key}\""))?;
            set_param(&mut params, &key, value);
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// libpq's URI decoding: every `%` starts two hex digits, `%00` is
/// refused, the result must be UTF-8. The `percent-encoding` crate decodes
/// but lets malformed escapes through, hence the check first. Errors say
/// where, never the text (it could be a password).
fn percent_decode(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!(
                "invalid percent-encoding in {what}: \"%\" must be followed by two hex digits"
            ));
        }
        if hex == Some(b"00") {
            return Err(format!(
                "invalid percent-encoding in {what}: %00 is not allowed"
            ));
        }
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("invalid percent-encoding in {what}: not UTF-8 once decoded"))
}

fn take_from_key_value(dsn: &str) -> Result<(String, SslParams), String> {
    let mut params = SslParams::default();
    let mut kept = Vec::new();
    let mut last_key: Option<String> = None;
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // After a pair, the word may be the rest of a value that
            // needed quotes (`password=a b`): never quote it.
            return Err(match &last_key {
                None => format!("missing \"=\" after \"{key}\""),
                Some(last) => format!(
                    "missing \"=\" in the word after the value of \"{last}\" \
                     (a value with spaces must be quoted)"
                ),
            });
        }
        if key.is_empty() {
            return Err(match &last_key {
                None => "missing key before \"=\"".to_string(),
                Some(last) => format!("missing key before \"=\" after the value of \"{last}\""),
            });
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value of \"{key}\"")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of \"{key}\"")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if SSL_KEYS.contains(&key.as_str()) {
            set_param(&mut params, &key, value);
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
        last_key = Some(key);
    }
    Ok((kept.join(" "), params))
}

/// A TLS setup problem found before connecting (a missing or unreadable
/// file, a key with loose permissions), or a failed handshake.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct TlsError(String);

/// `~/.postgresql/<name>`, libpq's default location of its TLS files.
fn default_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql").join(name))
}

fn existing_default(name: &str) -> Option<PathBuf> {
    default_file(name).filter(|p| p.exists())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError(format!("cannot read {what} file {}: {e}", path.display())))
}

/// The root certificates of `path` (PEM, one or more).
fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read(path, "root certificate")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            TlsError(format!(
                "invalid root certificate file {}: {e}",
                path.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            TlsError(format!(
                "invalid root certificate in {}: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError(format!(
            "no certificate in root certificate file {}",
            path.display()
        )));
    }
    Ok(roots)
}

/// libpq's rule: the key file must not be readable by group or others,
/// except group-readable when root owns it.
fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        TlsError(format!(
            "cannot read private key file {}: {e}",
            path.display()
        ))
    })?;
    let mode = meta.mode() & 0o777;
    let loose = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if loose {
        return Err(TlsError(format!(
            "private key file {} has group or world access; permissions should be \
             u=rw (0600) or less, or u=rw,g=r (0640) or less if owned by root",
            path.display()
        )));
    }
    Ok(())
}

fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = read(cert, "client certificate")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError(format!(
                "invalid client certificate file {}: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "no certificate in client certificate file {}",
            cert.display()
        )));
    }
    check_key_permissions(key)?;
    let pem = read(key, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError(format!("invalid private key file {}: {e}", key.display())))?;
    Ok((chain, key))
}

/// Client configurations built so far, shared by every connection with the
/// same options: one per connection would cost tens of KiB each time
/// (session cache, provider), left scattered in the heap of a daemon that
/// holds a connection per server. Forgotten at reload, so that renewed
/// certificate files are read again.
static CONFIGS: Mutex<Vec<(TlsOptions, Arc<ClientConfig>)>> = Mutex::new(Vec::new());

/// Read the certificate files again at the next connection (on reload).
pub fn forget_configs() {
    CONFIGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

impl TlsOptions {
    /// The connector for these options. The certificate files are read the
    /// first time (and again after [`forget_configs`]), so that a missing
    /// or bad file is reported as such.
    pub fn connector(&self) -> Result<MakeTls, TlsError> {
        let config = match self.mode {
            SslMode::Disable => None,
            mode => Some(self.shared_config(mode)?),
        };
        Ok(MakeTls {
            config,
            mode: self.mode,
            used: Arc::new(AtomicBool::new(false)),
        })
    }

    fn shared_config(&self, mode: SslMode) -> Result<Arc<ClientConfig>, TlsError> {
        let mut configs = CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, config)) = configs.iter().find(|(options, _)| options == self) {
            return Ok(config.clone());
        }
        let config = Arc::new(self.client_config(mode)?);
        configs.push((self.clone(), config.clone()));
        Ok(config)
    }

    fn client_config(&self, mode: SslMode) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rootcert = self
            .rootcert
            .clone()
            .or_else(|| existing_default("root.crt"));
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, rootcert) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                let default = default_file("root.crt")
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.postgresql/root.crt".to_string());
                return Err(TlsError(format!(
                    "sslmode {mode} needs a root certificate: set sslrootcert \
                     ({default} does not exist), or use sslmode require to skip the check"
                )));
            }
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
                Arc::new(AnyCertificate(provider.clone()))
            }
            (mode, Some(path)) => {
                let roots = root_store(&path)?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            TlsError(format!("root certificates of {}: {e}", path.display()))
                        })?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS set-up: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let cert = self
            .cert
            .clone()
            .or_else(|| existing_default("postgresql.crt"));
        match cert {
            Some(cert) => {
                let key = self
                    .key
                    .clone()
                    .or_else(|| default_file("postgresql.key"))
                    .ok_or_else(|| {
                        TlsError(format!(
                            "client certificate {} has no sslkey",
                            cert.display()
                        ))
                    })?;
                let (chain, key) = client_identity(&cert, &key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError(format!("client certificate {}: {e}", cert.display())))
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// `require` without a root certificate: encrypted, identity not checked
/// (the handshake signatures still are).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full check, less the host name. webpki checks the
/// chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres' connector factory: one per connection attempt, so that
/// [`MakeTls::used`] tells about that connection.
#[derive(Clone)]
pub struct MakeTls {
    config: Option<Arc<ClientConfig>>,
    mode: SslMode,
    used: Arc<AtomicBool>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_keys_leave_key_value_strings() {
        let (rest, params) = take_ssl_params(
            "host=db sslmode=verify-full password='a b\\'c' sslrootcert = '/etc/ca dir/root.crt' \
             sslcert=/c.crt sslkey=/c.key",
        )
        .unwrap();
        assert_eq!(rest, "host='db' password='a b\\'c'");
        assert_eq!(params.mode.as_deref(), Some("verify-full"));
        assert_eq!(params.rootcert.as_deref(), Some("/etc/ca dir/root.crt"));
        assert_eq!(params.cert.as_deref(), Some("/c.crt"));
        assert_eq!(params.key.as_deref(), Some("/c.key"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn ssl_keys_leave_uris() {
        let (rest, params) = take_ssl_params(
            "postgresql://u:pw@db:5433/powa?sslmode=verify-ca&application_name=x&sslrootcert=%2Ftmp%2Fca.crt",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u:pw@db:5433/powa?application_name=x");
        assert_eq!(params.mode.as_deref(), Some("verify-ca"));
        assert_eq!(params.rootcert.as_deref(), Some("/tmp/ca.crt"));
        let (rest, params) = take_ssl_params("postgres://db/powa?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://db/powa");
        assert_eq!(params.mode.as_deref(), Some("require"));
    }

    #[test]
    fn errors_never_quote_values() {
        let err = take_ssl_params("host=db password='hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn errors_never_quote_the_rest_of_an_unquoted_value() {
        let err = take_ssl_params("host=db password=hunter2 secret2 user=u").unwrap_err();
        assert!(!err.contains("secret2"), "{err}");
        assert!(err.contains("password") && err.contains("quoted"), "{err}");
        let err = take_ssl_params("host=db ='x'").unwrap_err();
        assert!(err.contains("missing key"), "{err}");
    }

    #[test]
    fn uri_percent_encoding_is_checked() {
        for (uri, what) in [
            ("postgresql://h/d?sslrootcert=%2", "two hex digits"),
            ("postgresql://h/d?sslrootcert=%+1", "two hex digits"),
            ("postgresql://h/d?sslrootcert=%zz", "two hex digits"),
            ("postgresql://h/d?sslcert=a%00b", "%00"),
            ("postgresql://h/d?sslkey=%ff", "UTF-8"),
            ("postgresql://h/d?ssl%4", "name"),
        ] {
            let err = take_ssl_params(uri).unwrap_err();
            assert!(err.contains(what), "{uri}: {err}");
        }
        let (_, params) = take_ssl_params("postgresql://h/d?sslkey=%C3%A9t%C3%A9").unwrap();
        assert_eq!(params.key.as_deref(), Some("été"));
    }

    #[test]
    fn modes_parse_like_libpq() {
        assert_eq!(SslMode::parse("verify-full"), Ok(SslMode::VerifyFull));
        assert_eq!(SslMode::default(), SslMode::Prefer);
        assert!(SslMode::parse("allow")
            .unwrap_err()
            .contains("not supported"));
        assert!(SslMode::parse("bogus").unwrap_err().contains("verify-ca"));
    }

    #[test]
    fn connection_string_wins_over_environment() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("require".to_string()),
            "PGSSLROOTCERT" => Some("/env/root.crt".to_string()),
            _ => None,
        };
        let options = SslParams {
            mode: Some("verify-ca".into()),
            ..SslParams::default()
        }
        .or(SslParams::from_env(env))
        .resolve()
        .unwrap();
        assert_eq!(options.mode, SslMode::VerifyCa);
        assert_eq!(options.rootcert, Some(PathBuf::from("/env/root.crt")));
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let options = TlsOptions {
            mode: SslMode::VerifyFull,
            rootcert: Some(PathBuf::from("/nonexistent/root.crt")),
            ..TlsOptions::default()
        };
        let err = options.connector().err().unwrap().to_string();
        assert!(err.contains("/nonexistent/root.crt"), "{err}");
        assert!(TlsOptions::default().connector().is_ok());
    }
}
