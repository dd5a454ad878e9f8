//! SCRAM channel binding's `tls-server-end-point` (RFC 5929): the server's
//! certificate hashed with the hash function of its signature, read from the DER
//! with the few lines of parsing that takes.

/// The certificate's hash with its signature's hash function, SHA-256 for MD5 and
/// SHA-1 (RFC 5929 section 4.1); `None` for algorithms without one here.
pub(super) fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_oid(cert)?;
    let alg = match (oid.strip_prefix(RSA), oid.strip_prefix(ECDSA)) {
        // md5, sha1, sha256 with RSA; ecdsa-with-SHA1, -SHA256.
        (Some([0x04 | 0x05 | 0x0b]), _) | (_, Some([0x01] | [0x03, 0x02])) => &digest::SHA256,
        (Some([0x0c]), _) | (_, Some([0x03, 0x03])) => &digest::SHA384,
        (Some([0x0d]), _) | (_, Some([0x03, 0x04])) => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(alg, cert).as_ref().to_vec())
}

/// The OID of `signatureAlgorithm` in a DER certificate:
/// `SEQUENCE { tbsCertificate, SEQUENCE { OID, … }, BIT STRING }`.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (_, _, rest) = der(cert)?;
    let (0x30, alg, _) = der(rest)? else {
        return None;
    };
    match der(alg)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// The DER element at the start of `b`: tag, contents and what follows.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |l, x| l << 8 | usize::from(*x));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outline: an empty TBS, the algorithm, an empty signature.
    fn cert(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend(oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend(alg);
        body.extend([0x03, 0x01, 0x00]);
        let mut c = vec![0x30, 0x81, body.len() as u8];
        c.extend(body);
        c
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let ecdsa_sha384 = cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        let h = end_point_hash(&ecdsa_sha384).unwrap();
        assert_eq!(
            h,
            ring::digest::digest(&ring::digest::SHA384, &ecdsa_sha384).as_ref()
        );
        // SHA-1 with RSA is hashed with SHA-256.
        let rsa_sha1 = cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(end_point_hash(&rsa_sha1).unwrap().len(), 32);
        // Ed25519: no hash function of its own.
        assert_eq!(end_point_hash(&cert(&[0x2b, 0x65, 0x70])), None);
        assert_eq!(end_point_hash(&[0x30, 0x05, 0x30]), None);
    }
}
