//! Mutual TLS 1.3 client configuration from PEM files.
//!
//! Builds a rustls `ClientConfig` with the ring provider, TLS 1.3 only (rust-stack.md §1.1: the
//! rumqttc default builder also allows TLS 1.2), trusting only the configured CA, presenting
//! the client certificate, and verifying the broker certificate against `server_name` (which
//! may differ from the host we connect to). Every error names the file and what is wrong, and
//! an expired client certificate is refused at load time with its notAfter, before the broker
//! has to reject it with an opaque alert.
//!
//! It does not read the clock: `now` is an argument. It never logs or returns key material.

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use time::OffsetDateTime;

use super::config::{valid_topic_level, UplinkConfig};

/// What went wrong loading the TLS material. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{file}: cannot read {what}: {source}")]
    Unreadable {
        /// The path.
        file: PathBuf,
        /// "CA file", "client certificate file" or "client key file".
        what: &'static str,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file holds no `CERTIFICATE` PEM block.
    #[error("{file}: no PEM certificate found in {what}")]
    NoCertificate {
        /// The path.
        file: PathBuf,
        /// Which file it is.
        what: &'static str,
    },
    /// A PEM block could not be decoded.
    #[error("{file}: malformed PEM: {reason}")]
    BadPem {
        /// The path.
        file: PathBuf,
        /// The decoder's complaint.
        reason: String,
    },
    /// No private key in the key file.
    #[error("{file}: no private key found (expected a PKCS#8, SEC1 or PKCS#1 PEM block)")]
    NoKey {
        /// The path.
        file: PathBuf,
    },
    /// The key is of a type or curve rustls/ring cannot use.
    #[error("{file}: unsupported private key ({reason}); use ECDSA P-256/P-384 or RSA")]
    UnsupportedKey {
        /// The path.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate could not be parsed as X.509.
    #[error("{file}: not a valid X.509 certificate: {reason}")]
    BadCertificate {
        /// The path.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client certificate's notAfter is in the past.
    #[error("{file}: client certificate expired at {not_after} (now {now}); install a renewed certificate and reload")]
    Expired {
        /// The path.
        file: PathBuf,
        /// notAfter, RFC 3339.
        not_after: String,
        /// The time of the check, RFC 3339.
        now: String,
    },
    /// The client certificate's notBefore is in the future.
    #[error("{file}: client certificate not valid before {not_before} (now {now}); check the system clock")]
    NotYetValid {
        /// The path.
        file: PathBuf,
        /// notBefore, RFC 3339.
        not_before: String,
        /// The time of the check, RFC 3339.
        now: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{key_file} does not match the certificate in {cert_file}: the key pair differs; install the key issued with this certificate")]
    KeyMismatch {
        /// The key path.
        key_file: PathBuf,
        /// The certificate path.
        cert_file: PathBuf,
    },
    /// The CA file holds a certificate rustls cannot use as a root.
    #[error("{file}: CA certificate rejected: {reason}")]
    BadCa {
        /// The path.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// No CN to derive the gateway id from.
    #[error("{file}: client certificate has no usable subject CN for the gateway id; set uplink.gateway_id")]
    NoCommonName {
        /// The path.
        file: PathBuf,
    },
    /// The server name is not a DNS name or IP address.
    #[error("server name {0:?} is not a valid DNS name or IP address")]
    BadServerName(String),
    /// Anything else rustls refused.
    #[error("TLS configuration refused: {0}")]
    Rustls(rustls::Error),
}

/// Everything a session needs from the files: the rustls config and the gateway id.
#[derive(Clone)]
pub struct LoadedTls {
    /// TLS 1.3-only mutual-TLS client configuration.
    pub config: Arc<ClientConfig>,
    /// The configured gateway id, or the client certificate CN.
    pub gateway_id: String,
    /// Client certificate notAfter.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the config: it holds the private key.
        f.debug_struct("LoadedTls")
            .field("gateway_id", &self.gateway_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn read(file: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Unreadable {
        file: file.to_owned(),
        what,
        source,
    })
}

fn certs_from_pem(
    pem: &[u8],
    file: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            file: file.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_owned(),
            what,
        });
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut BufReader::new(pem))
        .map_err(|e| TlsError::BadPem {
            file: file.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey {
            file: file.to_owned(),
        })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// notBefore and notAfter of a DER certificate.
fn validity(
    der: &CertificateDer<'_>,
    file: &Path,
) -> Result<(OffsetDateTime, OffsetDateTime), TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
            file: file.to_owned(),
            reason: e.to_string(),
        })?;
    let v = cert.validity();
    let conv = |ts: i64| {
        OffsetDateTime::from_unix_timestamp(ts).map_err(|e| TlsError::BadCertificate {
            file: file.to_owned(),
            reason: format!("validity out of range: {e}"),
        })
    };
    Ok((
        conv(v.not_before.timestamp())?,
        conv(v.not_after.timestamp())?,
    ))
}

pub(crate) fn common_name(der: &CertificateDer<'_>, file: &Path) -> Result<String, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
            file: file.to_owned(),
            reason: e.to_string(),
        })?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    match cn {
        Some(cn) if valid_topic_level(&cn) => Ok(cn),
        _ => Err(TlsError::NoCommonName {
            file: file.to_owned(),
        }),
    }
}

/// The subject CN of the first certificate in a PEM document: the default gateway id.
pub fn gateway_id_from_cert(pem: &[u8]) -> Result<String, TlsError> {
    let file = Path::new("<certificate>");
    let certs = certs_from_pem(pem, file, "client certificate")?;
    let first = certs.first().ok_or_else(|| TlsError::NoCertificate {
        file: file.to_owned(),
        what: "client certificate",
    })?;
    common_name(first, file)
}

/// Verifies the broker certificate against a fixed name instead of the connect address.
///
/// rumqttc uses the broker host as the TLS server name; the configured `server_name` may differ
/// (e.g. connecting by IP to a certificate issued for a DNS name), so verification is pinned to
/// it here. SNI still carries the broker host.
#[derive(Debug)]
struct PinnedNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Reads the CA, certificate and key named in `cfg` and builds the client configuration.
pub fn load(cfg: &UplinkConfig, now: OffsetDateTime) -> Result<LoadedTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let ca_pem = read(&cfg.ca_file, "CA file")?;
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(&ca_pem, &cfg.ca_file, "CA file")? {
        roots.add(ca).map_err(|e| TlsError::BadCa {
            file: cfg.ca_file.clone(),
            reason: e.to_string(),
        })?;
    }

    let cert_pem = read(&cfg.cert_file, "client certificate file")?;
    let chain = certs_from_pem(&cert_pem, &cfg.cert_file, "client certificate file")?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        file: cfg.cert_file.clone(),
        what: "client certificate file",
    })?;
    let (not_before, not_after) = validity(leaf, &cfg.cert_file)?;
    if now > not_after {
        return Err(TlsError::Expired {
            file: cfg.cert_file.clone(),
            not_after: rfc3339(not_after),
            now: rfc3339(now),
        });
    }
    if now < not_before {
        return Err(TlsError::NotYetValid {
            file: cfg.cert_file.clone(),
            not_before: rfc3339(not_before),
            now: rfc3339(now),
        });
    }
    let gateway_id = match &cfg.gateway_id {
        Some(id) => id.clone(),
        None => common_name(leaf, &cfg.cert_file)?,
    };

    let key_pem = read(&cfg.key_file, "client key file")?;
    let key = key_from_pem(&key_pem, &cfg.key_file)?;

    let name = ServerName::try_from(cfg.effective_server_name().to_owned())
        .map_err(|_| TlsError::BadServerName(cfg.effective_server_name().to_owned()))?;
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::BadCa {
            file: cfg.ca_file.clone(),
            reason: e.to_string(),
        })?;
    let verifier = Arc::new(PinnedNameVerifier { inner, name });

    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                key_file: cfg.key_file.clone(),
                cert_file: cfg.cert_file.clone(),
            },
            rustls::Error::General(reason) => TlsError::UnsupportedKey {
                file: cfg.key_file.clone(),
                reason,
            },
            other => TlsError::Rustls(other),
        })?;

    Ok(LoadedTls {
        config: Arc::new(config),
        gateway_id,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};
    use time::macros::datetime;

    struct Files {
        dir: tempfile::TempDir,
        cfg: UplinkConfig,
    }

    /// A self-signed client certificate for `cn` valid in 2026, used as its own CA.
    fn files(cn: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = datetime!(2026-01-01 00:00 UTC);
        p.not_after = datetime!(2026-12-31 00:00 UTC);
        let cert = p.self_signed(&key).unwrap();
        let w = |name: &str, data: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, data).unwrap();
            path
        };
        let cfg = UplinkConfig {
            broker: "localhost".into(),
            ca_file: w("ca.pem", &cert.pem()),
            cert_file: w("client.pem", &cert.pem()),
            key_file: w("client.key", &key.serialize_pem()),
            ..UplinkConfig::default()
        };
        Files { dir, cfg }
    }

    const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

    #[test]
    fn tls_load_ecdsa_pkcs8_gives_client_auth_config_and_cn_gateway_id() {
        let f = files("gw-0001");
        let t = load(&f.cfg, NOW).unwrap();
        assert_eq!(t.gateway_id, "gw-0001");
        assert!(t.config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn tls_load_configured_gateway_id_overrides_cn() {
        let mut f = files("gw-0001");
        f.cfg.gateway_id = Some("ward-7".into());
        assert_eq!(load(&f.cfg, NOW).unwrap().gateway_id, "ward-7");
    }

    #[test]
    fn tls_load_expired_client_certificate_says_when() {
        let f = files("gw-0001");
        let err = load(&f.cfg, datetime!(2027-01-01 00:00 UTC)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TlsError::Expired { .. }));
        assert!(
            msg.contains("client certificate expired at 2026-12-31T00:00:00Z"),
            "{msg}"
        );
        assert!(msg.contains("client.pem"), "{msg}");
    }

    #[test]
    fn tls_load_not_yet_valid_certificate_points_at_the_clock() {
        let f = files("gw-0001");
        let msg = load(&f.cfg, datetime!(2025-01-01 00:00 UTC))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("check the system clock"), "{msg}");
    }

    #[test]
    fn tls_load_key_of_another_certificate_is_a_mismatch_naming_both_files() {
        let f = files("gw-0001");
        let other = KeyPair::generate().unwrap();
        std::fs::write(&f.cfg.key_file, other.serialize_pem()).unwrap();
        let err = load(&f.cfg, NOW).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("client.key") && msg.contains("client.pem"),
            "{msg}"
        );
    }

    #[test]
    fn tls_load_missing_ca_file_names_it() {
        let mut f = files("gw-0001");
        f.cfg.ca_file = f.dir.path().join("nope.pem");
        let msg = load(&f.cfg, NOW).unwrap_err().to_string();
        assert!(
            msg.contains("nope.pem") && msg.contains("cannot read CA file"),
            "{msg}"
        );
    }

    #[test]
    fn tls_load_certificate_file_without_certificate_is_refused() {
        let f = files("gw-0001");
        std::fs::write(&f.cfg.cert_file, "hello").unwrap();
        let msg = load(&f.cfg, NOW).unwrap_err().to_string();
        assert!(
            msg.contains("no PEM certificate found in client certificate file"),
            "{msg}"
        );
    }

    #[test]
    fn tls_load_key_file_without_key_is_refused() {
        let f = files("gw-0001");
        let cert = std::fs::read(&f.cfg.cert_file).unwrap();
        std::fs::write(&f.cfg.key_file, cert).unwrap();
        let err = load(&f.cfg, NOW).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
    }

    #[test]
    fn tls_load_sec1_ec_key_is_accepted() {
        let f = files("gw-0001");
        // rcgen writes PKCS#8; the openssl CLI converts it to SEC1 ("EC PRIVATE KEY").
        let out = std::process::Command::new("openssl")
            .args(["ec", "-in"])
            .arg(&f.cfg.key_file)
            .output()
            .expect("openssl CLI (installed with the test tools)");
        let sec1 = String::from_utf8(out.stdout).unwrap();
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        std::fs::write(&f.cfg.key_file, sec1).unwrap();
        assert_eq!(load(&f.cfg, NOW).unwrap().gateway_id, "gw-0001");
    }

    #[test]
    fn gateway_id_from_cert_reads_subject_cn() {
        let f = files("gw-0042");
        let pem = std::fs::read(&f.cfg.cert_file).unwrap();
        assert_eq!(gateway_id_from_cert(&pem).unwrap(), "gw-0042");
    }

    #[test]
    fn gateway_id_from_cert_with_slash_in_cn_is_refused() {
        let f = files("gw/evil");
        let pem = std::fs::read(&f.cfg.cert_file).unwrap();
        assert!(matches!(
            gateway_id_from_cert(&pem),
            Err(TlsError::NoCommonName { .. })
        ));
    }
}
