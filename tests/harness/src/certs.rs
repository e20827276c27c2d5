//! Throwaway certificates for TLS tests: a test CA, server certificates
//! for chosen host names, client certificates for chosen roles, all
//! written as PEM files in a temporary directory removed on drop. Made in
//! process (no `openssl` program needed).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::HarnessError;

/// A certificate and its private key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority that exists only for one test.
pub struct TestCa {
    dir: tempfile::TempDir,
    cert: Certificate,
    key: KeyPair,
}

fn rcgen_error(what: &str) -> impl FnOnce(rcgen::Error) -> HarnessError + '_ {
    move |e| HarnessError::Other(format!("{what}: {e}"))
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("powa-fleet-certs-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a certificate directory", e))?;
        let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA parameters"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(rcgen_error("CA"))?;
        let ca = TestCa { dir, cert, key };
        write(&ca.root(), &ca.cert.pem(), 0o644)?;
        Ok(ca)
    }

    /// The CA certificate file (what `sslrootcert` names).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root.crt")
    }

    pub fn root_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate valid for `names` (host names or IP
    /// addresses), saved as `<file>.crt` and `<file>.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> Result<Issued, HarnessError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params =
            CertificateParams::new(names.clone()).map_err(rcgen_error("server parameters"))?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client certificate whose common name is `role` (what PostgreSQL's
    /// `cert` authentication compares with the user name).
    pub fn client(&self, file: &str, role: &str) -> Result<Issued, HarnessError> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(rcgen_error("client parameters"))?;
        params.distinguished_name.push(DnType::CommonName, role);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Result<Issued, HarnessError> {
        let key = KeyPair::generate().map_err(rcgen_error("key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen_error("signing"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        write(&issued.cert, &issued.cert_pem, 0o644)?;
        // libpq and powa-fleet refuse keys readable by others.
        write(&issued.key, &issued.key_pem, 0o600)?;
        Ok(issued)
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), HarnessError> {
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}
