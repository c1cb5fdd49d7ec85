//! Certificates made at test time with rcgen: one CA, and certificates it signs for
//! 127.0.0.1 and localhost (servers and clients alike), written as PEM files. Shared by the
//! end-to-end tests and, through `#[path]` (`test_certs` in `src/lib.rs`), the unit tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
    date_time_ymd,
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
        let mut params = self.params(stem, names);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(stem, &params)
    }

    /// A client certificate from the CA, as `<stem>.pem` and `<stem>.key`: common name `cn`,
    /// DNS names `dns`, serial number `serial`, and valid only in 2020 when `expired`.
    pub fn issue_client(
        &self,
        stem: &str,
        cn: &str,
        dns: &[&str],
        serial: u64,
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let mut params = self.params(cn, dns);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 12, 31);
        }
        self.sign(stem, &params)
    }

    /// A certificate's parameters: common name `cn`, subject alternative names `names`.
    fn params(&self, cn: &str, names: &[&str]) -> CertificateParams {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
    }

    /// Signed by the CA with a new key, as `<stem>.pem` and `<stem>.key`.
    fn sign(&self, stem: &str, params: &CertificateParams) -> (PathBuf, PathBuf) {
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

    /// The CA's list of revoked certificates, these serial numbers, as `crl.pem`.
    pub fn revoke(&self, serials: &[u64]) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|n| RevokedCertParams {
                    serial_number: SerialNumber::from(*n),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("revocation list");
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, crl.pem().expect("PEM")).expect("write revocation list");
        path
    }
}
