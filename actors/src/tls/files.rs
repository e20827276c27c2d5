//! The TLS files: libpq's defaults under `~/.postgresql`, root
//! certificates, and the client certificate with its key, whose file must
//! not be readable by others (libpq's rule).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::tls::TlsError;

/// `~/.postgresql/<name>`, libpq's default location of its TLS files.
pub(super) fn default_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql").join(name))
}

pub(super) fn existing_default(name: &str) -> Option<PathBuf> {
    default_file(name).filter(|p| p.exists())
}

pub(super) fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError(format!("cannot read {what} file {}: {e}", path.display())))
}

/// The root certificates of `path` (PEM, one or more).
pub(super) fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
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
pub(super) fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
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

pub(super) fn client_identity(
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
