//! The rustls client configuration of each [`TlsOptions`]: the verifier
//! its mode wants, the client identity, built once and shared.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::ClientConfig;

use crate::tls::files::{client_identity, default_file, existing_default, root_store};
use crate::tls::verify::{AnyCertificate, ChainOnly};
use crate::tls::{MakeTls, SslMode, TlsError, TlsOptions};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::SslMode;
    use std::path::PathBuf;

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
