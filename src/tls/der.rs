//! The little of DER that reading a certificate's fields takes: one element at a time (its tag,
//! its contents, what follows it). Pure; anything malformed gives `None`. Used on certificates
//! rustls has loaded or verified, never to decide whether one is valid.

/// One DER element at the start of `b`: its tag, its contents, and what follows it.
pub(super) fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed element's contents, in order (stops at the first malformed).
pub(super) fn elements(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = element(b)?;
        b = rest;
        Some((tag, contents))
    })
}

pub(super) const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT Version` in a TBSCertificate.
pub(super) const VERSION: u8 = 0xa0;

/// The fields of a certificate's TBSCertificate after its optional version: serial number,
/// signature algorithm, issuer, validity, subject, subject public key info, then the optional
/// unique identifiers and extensions.
pub(super) fn tbs_fields(der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut fields: Vec<(u8, &[u8])> = elements(tbs).collect();
    if fields.first().is_some_and(|(tag, _)| *tag == VERSION) {
        fields.remove(0);
    }
    Some(fields)
}
