//! A minimal DER reader: just enough to find the SubjectPublicKeyInfo inside an X.509 certificate,
//! so that a registered client certificate can verify its assertions. Never panics on bad input.

/// One TLV: its tag, the full encoding and the content.
struct Tlv<'a> {
    tag: u8,
    whole: &'a [u8],
    content: &'a [u8],
}

fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*input.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    let content = input.get(header..end)?;
    Some((Tlv { tag, whole, content }, input.get(end..)?))
}

/// The DER SubjectPublicKeyInfo of a DER certificate, or `None` if it is not one.
pub(crate) fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (certificate, _) = read_tlv(cert)?;
    if certificate.tag != SEQUENCE {
        return None;
    }
    let (tbs, _) = read_tlv(certificate.content)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs.content;
    // [0] version is optional; then serial, signature, issuer, validity, subject, spki.
    let (first, after) = read_tlv(rest)?;
    if first.tag == 0xa0 {
        rest = after;
    }
    for _ in 0..5 {
        let (_, after) = read_tlv(rest)?;
        rest = after;
    }
    let (spki, _) = read_tlv(rest)?;
    (spki.tag == SEQUENCE).then_some(spki.whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_spki_of_an_rcgen_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap().self_signed(&key).unwrap();
        use rcgen::PublicKeyData as _;
        assert_eq!(certificate_spki(cert.der()).unwrap(), key.subject_public_key_info().as_slice());
    }

    #[test]
    fn rejects_truncated_and_random_input() {
        assert!(certificate_spki(&[]).is_none());
        assert!(certificate_spki(&[0x30, 0x82, 0xff]).is_none());
        assert!(certificate_spki(b"not a certificate at all").is_none());
    }
}
