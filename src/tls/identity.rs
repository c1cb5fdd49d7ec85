//! Who a client certificate names, for mutual TLS that logs a client in as a user of the users
//! file (`--tls-client-user`): the subject's common name (`cn`), or its DNS subject alternative
//! names (`san`, in order). Read from the DER of a certificate rustls has already verified
//! against the client CA. Pure.

use super::der::{SEQUENCE, elements, tbs_fields};

/// Which field of a client certificate names its user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertUser {
    /// The subject's common name (CN).
    Cn,
    /// The DNS names of its subject alternative names, the first one that is a user.
    San,
}

impl std::str::FromStr for CertUser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cn" => Ok(CertUser::Cn),
            "san" => Ok(CertUser::San),
            _ => Err(format!("'{s}': cn or san")),
        }
    }
}

/// `2.5.4.3`, commonName.
const CN: &[u8] = &[0x55, 0x04, 0x03];
/// `2.5.29.17`, subjectAltName.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID: u8 = 0x06;
const SET: u8 = 0x31;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
/// `[3] EXPLICIT Extensions`.
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IA5String` in a GeneralName.
const DNS_NAME: u8 = 0x82;

/// The names `field` gives for the certificate `der`, in order (none if it cannot be read).
pub fn names(der: &[u8], field: CertUser) -> Vec<String> {
    let Some(fields) = tbs_fields(der) else {
        return Vec::new();
    };
    match field {
        // Serial, signature algorithm, issuer, validity, then the subject.
        CertUser::Cn => fields
            .get(4)
            .filter(|(tag, _)| *tag == SEQUENCE)
            .map(|(_, subject)| common_names(subject))
            .unwrap_or_default(),
        CertUser::San => fields
            .iter()
            .find(|(tag, _)| *tag == EXTENSIONS)
            .map(|(_, ext)| dns_names(ext))
            .unwrap_or_default(),
    }
}

/// A Name: a SEQUENCE of SETs of (OID, value) SEQUENCEs.
fn common_names(subject: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (tag, rdn) in elements(subject) {
        if tag != SET {
            continue;
        }
        for (tag, pair) in elements(rdn) {
            let mut parts = elements(pair);
            if let (SEQUENCE, Some((OID, CN)), Some((_, value))) = (tag, parts.next(), parts.next())
                && let Ok(text) = std::str::from_utf8(value)
            {
                out.push(text.to_string());
            }
        }
    }
    out
}

/// `[3] { SEQUENCE { Extension… } }`, each `SEQUENCE { OID, critical?, OCTET STRING }`.
fn dns_names(extensions: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (tag, list) in elements(extensions) {
        if tag != SEQUENCE {
            continue;
        }
        for (_, ext) in elements(list) {
            let mut parts = elements(ext).filter(|(tag, _)| *tag != BOOLEAN);
            let (Some((OID, SUBJECT_ALT_NAME)), Some((OCTET_STRING, value))) =
                (parts.next(), parts.next())
            else {
                continue;
            };
            for (tag, names) in elements(value) {
                if tag != SEQUENCE {
                    continue;
                }
                for (tag, name) in elements(names) {
                    if tag == DNS_NAME
                        && let Ok(text) = std::str::from_utf8(name)
                    {
                        out.push(text.to_string());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "clients");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_and_the_dns_names_of_a_real_certificate() {
        let der = cert("alice", &["alice.clients.internal", "127.0.0.1", "svc-a"]);
        assert_eq!(names(&der, CertUser::Cn), vec!["alice"]);
        assert_eq!(
            names(&der, CertUser::San),
            vec!["alice.clients.internal", "svc-a"],
            "DNS names only, in order (not the IP address)"
        );
        let none = cert("bob", &[]);
        assert_eq!(names(&none, CertUser::San), Vec::<String>::new());
    }

    #[test]
    fn garbage_names_no_one() {
        assert!(names(b"", CertUser::Cn).is_empty());
        assert!(names(b"\x30\x03\x02\x01\x05", CertUser::San).is_empty());
        let der = cert("carol", &["carol"]);
        for cut in [10, der.len() / 2, der.len() - 1] {
            // A truncated certificate: no panic, whatever it gives.
            let _ = names(&der[..cut], CertUser::Cn);
            let _ = names(&der[..cut], CertUser::San);
        }
        assert_eq!("CN".parse::<CertUser>(), Ok(CertUser::Cn));
        assert!("uri".parse::<CertUser>().is_err());
    }
}
