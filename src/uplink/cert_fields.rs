//! The two things vitalgate reads from an X.509 certificate itself: its validity period (for
//! the start-up check and the expiry warnings) and its subject's common name (the default
//! gateway id).
//!
//! Everything else about a certificate (chain, signature, key usage, names) is rustls-webpki's
//! job during the handshake. These two fields sit at fixed places in `tbsCertificate`
//! (RFC 5280 §4.1), so a small DER walk reads them: a general X.509 parser (x509-parser, with
//! its ASN.1 stack and OID registry) cost ~110 KiB of the arm64 binary and a dozen crates for
//! them (issue 18, lean binary). Every length is checked against what is left, so any bytes,
//! cut short or hostile, give an error naming what was wrong, never a panic.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// What was read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFields {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The first common name (OID 2.5.4.3) of the subject, when it is a UTF-8, printable or
    /// IA5 string.
    pub common_name: Option<String>,
}

/// Why a certificate's bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertFieldsError {
    #[error("DER ends inside {what}")]
    Truncated { what: &'static str },
    #[error("expected {what} (DER tag 0x{expected:02x}), found tag 0x{found:02x}")]
    UnexpectedTag {
        what: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("{what} has a length DER does not allow (indefinite, or over 4 bytes)")]
    BadLength { what: &'static str },
    #[error("{what} is not a valid DER time")]
    BadTime { what: &'static str },
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;
/// `[0] EXPLICIT Version` in `tbsCertificate`.
const VERSION_TAG: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3, as DER content octets.
const COMMON_NAME_OID: [u8; 3] = [0x55, 0x04, 0x03];

/// Reads the validity and subject common name of a DER certificate.
pub fn read(der: &[u8]) -> Result<CertFields, CertFieldsError> {
    let mut cert = Reader::new(der).expect(SEQUENCE, "the certificate")?;
    let mut tbs = cert.expect(SEQUENCE, "tbsCertificate")?;
    if tbs.peek_tag() == Some(VERSION_TAG) {
        tbs.any("the version")?;
    }
    tbs.expect(INTEGER, "the serial number")?;
    tbs.expect(SEQUENCE, "the signature algorithm")?;
    tbs.expect(SEQUENCE, "the issuer")?;
    let mut validity = tbs.expect(SEQUENCE, "the validity")?;
    let not_before = time_of(&mut validity, "notBefore")?;
    let not_after = time_of(&mut validity, "notAfter")?;
    let subject = tbs.expect(SEQUENCE, "the subject")?;
    Ok(CertFields {
        not_before,
        not_after,
        common_name: common_name(subject)?,
    })
}

/// The first common name in a `Name` (a SEQUENCE of SETs of type-and-value SEQUENCEs).
fn common_name(mut name: Reader<'_>) -> Result<Option<String>, CertFieldsError> {
    while !name.is_empty() {
        let mut rdn = name.expect(SET, "a relative distinguished name")?;
        while !rdn.is_empty() {
            let mut attribute = rdn.expect(SEQUENCE, "a subject attribute")?;
            let oid = attribute.expect(OID, "an attribute type")?;
            let (tag, value) = attribute.any("an attribute value")?;
            if oid.bytes != COMMON_NAME_OID {
                continue;
            }
            let text = match tag {
                UTF8_STRING | PRINTABLE_STRING | IA5_STRING => {
                    std::str::from_utf8(value.bytes).ok().map(str::to_owned)
                }
                _ => None,
            };
            return Ok(text);
        }
    }
    Ok(None)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the
/// two forms RFC 5280 §4.1.2.5 allows.
fn time_of(
    validity: &mut Reader<'_>,
    what: &'static str,
) -> Result<OffsetDateTime, CertFieldsError> {
    let bad = CertFieldsError::BadTime { what };
    let (tag, value) = validity.any(what)?;
    let text = value.bytes;
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&text[..2]).ok_or(bad.clone())?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&text[..4]).ok_or(bad.clone())?, &text[4..]),
        _ => return Err(bad),
    };
    if rest[10] != b'Z' {
        return Err(bad);
    }
    // Two ASCII digits: always below 100, so a u8.
    let field = |i: usize| {
        digits(&rest[i..i + 2])
            .and_then(|v| u8::try_from(v).ok())
            .ok_or(bad.clone())
    };
    let month = Month::try_from(field(0)?).map_err(|_| bad.clone())?;
    let year = i32::try_from(year).map_err(|_| bad.clone())?;
    let date = Date::from_calendar_date(year, month, field(2)?).map_err(|_| bad.clone())?;
    let time = Time::from_hms(field(4)?, field(6)?, field(8)?).map_err(|_| bad.clone())?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

/// The decimal value of ASCII digits; `None` if any byte is not one.
fn digits(ascii: &[u8]) -> Option<u32> {
    ascii.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// DER tag-length-value elements read one after another from a slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    /// The next element, whatever its tag: the tag and a reader over its contents.
    fn any(&mut self, what: &'static str) -> Result<(u8, Reader<'a>), CertFieldsError> {
        let truncated = CertFieldsError::Truncated { what };
        let (&tag, mut rest) = self.bytes.split_first().ok_or(truncated.clone())?;
        if tag & 0x1f == 0x1f {
            // A tag number above 30 follows in base-128 bytes, the last without bit 8; the
            // first byte stands for the whole tag (no tag this module looks for has that form).
            let end = rest
                .iter()
                .position(|b| b & 0x80 == 0)
                .ok_or(truncated.clone())?;
            rest = &rest[end + 1..];
        }
        let (&first, mut rest) = rest.split_first().ok_or(truncated.clone())?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err(CertFieldsError::BadLength { what });
            }
            let (octets, after) = rest.split_at_checked(count).ok_or(truncated.clone())?;
            rest = after;
            octets
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let (contents, after) = rest.split_at_checked(len).ok_or(truncated)?;
        self.bytes = after;
        Ok((tag, Reader::new(contents)))
    }

    /// The next element, which must have tag `expected`.
    fn expect(&mut self, expected: u8, what: &'static str) -> Result<Reader<'a>, CertFieldsError> {
        match self.peek_tag() {
            Some(found) if found != expected => Err(CertFieldsError::UnexpectedTag {
                what,
                expected,
                found,
            }),
            _ => self.any(what).map(|(_, contents)| contents),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(
        cn: Option<&str>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "NHS test trust");
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        dn.push(DnType::CountryName, "GB");
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn at(y: i32, m: Month, d: u8, hh: u8, mm: u8, ss: u8) -> OffsetDateTime {
        PrimitiveDateTime::new(
            Date::from_calendar_date(y, m, d).unwrap(),
            Time::from_hms(hh, mm, ss).unwrap(),
        )
        .assume_utc()
    }

    #[test]
    fn validity_and_common_name_are_read_from_a_certificate() {
        let (from, to) = (
            at(2026, Month::March, 1, 8, 30, 5),
            at(2027, Month::March, 1, 23, 59, 59),
        );
        let fields = read(&cert_with(Some("hub-0042"), from, to)).unwrap();
        assert_eq!(fields.not_before, from);
        assert_eq!(fields.not_after, to);
        assert_eq!(fields.common_name.as_deref(), Some("hub-0042"));
    }

    #[test]
    fn a_generalized_time_after_2049_is_read() {
        // RFC 5280 §4.1.2.5: from 2050 a certificate's times are GeneralizedTime.
        let to = at(2061, Month::July, 4, 12, 0, 0);
        let fields = read(&cert_with(
            Some("g"),
            at(2026, Month::January, 1, 0, 0, 0),
            to,
        ))
        .unwrap();
        assert_eq!(fields.not_after, to);
    }

    #[test]
    fn a_two_digit_utc_year_of_99_is_1999() {
        let from = at(1999, Month::December, 31, 23, 0, 0);
        let fields = read(&cert_with(
            Some("g"),
            from,
            at(2030, Month::January, 1, 0, 0, 0),
        ))
        .unwrap();
        assert_eq!(fields.not_before, from);
    }

    #[test]
    fn a_subject_without_a_common_name_has_none() {
        let der = cert_with(
            None,
            at(2026, Month::January, 1, 0, 0, 0),
            at(2027, Month::January, 1, 0, 0, 0),
        );
        assert_eq!(read(&der).unwrap().common_name, None);
    }

    #[test]
    fn every_cut_of_a_certificate_is_an_error_not_a_panic() {
        let der = cert_with(
            Some("hub"),
            at(2026, Month::January, 1, 0, 0, 0),
            at(2027, Month::January, 1, 0, 0, 0),
        );
        for len in 0..der.len() {
            assert!(read(&der[..len]).is_err(), "cut at {len} of {}", der.len());
        }
    }

    #[test]
    fn an_indefinite_or_oversized_length_is_refused() {
        assert_eq!(
            read(&[0x30, 0x80, 0x00, 0x00]),
            Err(CertFieldsError::BadLength {
                what: "the certificate"
            })
        );
        assert_eq!(
            read(&[0x30, 0x85, 1, 0, 0, 0, 0]),
            Err(CertFieldsError::BadLength {
                what: "the certificate"
            })
        );
        assert_eq!(
            read(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(CertFieldsError::Truncated {
                what: "the certificate"
            })
        );
    }

    #[test]
    fn an_element_with_a_high_tag_number_is_skipped_whole() {
        // [APPLICATION 14] (0x5f 0x0e), then its length: one element, not a tag 0x5f of 14 bytes.
        let mut r = Reader::new(&[0x5f, 0x0e, 0x02, 0xaa, 0xbb, 0x05, 0x00]);
        let (tag, contents) = r.any("a value").unwrap();
        assert_eq!((tag, contents.bytes), (0x5f, &[0xaa, 0xbb][..]));
        assert_eq!(r.any("a value").unwrap().0, 0x05);
    }

    #[test]
    fn a_pem_text_instead_of_der_names_the_tag_found() {
        let err = read(b"-----BEGIN CERTIFICATE-----").unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected the certificate (DER tag 0x30), found tag 0x2d"
        );
    }

    #[test]
    fn times_that_are_not_calendar_times_are_refused() {
        for bad in [
            &b"260230000000Z"[..],
            b"261301000000Z",
            b"260101246000Z",
            b"2601010000001",
            b"26010100000xZ",
        ] {
            let mut validity = vec![UTC_TIME, 13];
            validity.extend_from_slice(bad);
            let mut r = Reader::new(&validity);
            assert_eq!(
                time_of(&mut r, "notBefore"),
                Err(CertFieldsError::BadTime { what: "notBefore" }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn any_bytes_give_fields_or_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read(&bytes);
        }

        /// Differential: wherever x509-parser reads a certificate with one byte changed, this
        /// reader gives the same validity and common name (or an error), and never panics.
        #[test]
        fn a_certificate_with_a_byte_changed_reads_as_x509_parser_reads_it(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut der = cert_with(Some("hub-7"), at(2026, Month::May, 5, 5, 5, 5), at(2036, Month::May, 5, 5, 5, 5));
            let i = index.index(der.len());
            der[i] = byte;
            if let (Ok(ours), Ok((_, theirs))) = (read(&der), x509_parser::parse_x509_certificate(&der)) {
                let v = theirs.validity();
                prop_assert_eq!(ours.not_before.unix_timestamp(), v.not_before.timestamp());
                prop_assert_eq!(ours.not_after.unix_timestamp(), v.not_after.timestamp());
                // x509-parser reads a value of any tag as text; only the string types are names.
                let cn = theirs
                    .subject()
                    .iter_common_name()
                    .next()
                    .filter(|cn| {
                        let h = &cn.attr_value().header;
                        h.class() == x509_parser::der_parser::asn1_rs::Class::Universal
                            && !h.is_constructed()
                            && [UTF8_STRING, PRINTABLE_STRING, IA5_STRING]
                                .contains(&(h.tag().0 as u8))
                    })
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_owned);
                prop_assert_eq!(ours.common_name, cn, "byte {} changed to {:02x}", i, byte);
            }
        }
    }
}
