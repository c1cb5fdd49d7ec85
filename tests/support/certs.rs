//! Certificates made at test time with rcgen: one CA, and certificates it signs for
//! 127.0.0.1 and localhost (servers and clients alike), written as PEM files. Shared by the
//! end-to-end tests and, through `#[path]` (`test_certs` in `src/lib.rs`), the unit tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

pub struct Certs {
    pub ca: PathBuf,
    /// A certificate for 127.0.0.1 and localhost, good for a server and for a client.
    pub cert: PathBuf,
    pub key: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Certs {
    /// A CA and one certificate, as `ca.pem`, `node.pem` and `node.key` in `dir`.
    pub fn make(dir: &Path) -> Certs {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sentinel-proxy test CA");
        let key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        let certs = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
        };
        certs.issue("node", &["127.0.0.1", "localhost"]);
        certs
    }

    /// A new certificate and key from the CA, for `names`, as `<stem>.pem` and `<stem>.key`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write certificate");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}
