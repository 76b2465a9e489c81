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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use time::OffsetDateTime;

use super::cert_fields;
use super::config::{valid_topic_level, UplinkConfig};
use crate::secure_file::{self, FileError, FileKind};

/// What went wrong loading the TLS material. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is missing, not a regular file, too large, open to others or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
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
        /// What is wrong, never quoting the file (it may be a key).
        reason: &'static str,
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
    /// The client certificate does not chain to the configured CA (as a TLS client).
    #[error("{cert_file}: the client certificate is not accepted under the CA in {ca_file} ({reason}); install the certificate the platform issued for this gateway")]
    Untrusted {
        /// The certificate path.
        cert_file: PathBuf,
        /// The CA path.
        ca_file: PathBuf,
        /// What the verifier said.
        reason: String,
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

/// Reads one of the uplink's files: capped, regular, and for the key not open to others.
fn read(file: &Path, kind: &FileKind) -> Result<zeroize::Zeroizing<Vec<u8>>, TlsError> {
    Ok(secure_file::read(file, kind)?)
}

/// What is wrong with a PEM document, without quoting it (the PEM parser's own messages
/// carry the offending line, which in a key file may be key material).
fn pem_reason(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a BEGIN line has no matching END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "the base64 between BEGIN and END does not decode",
        pem::Error::SectionTooLarge => "a PEM section is too large",
        _ => "the PEM text cannot be parsed",
    }
}

/// The certificates of a PEM document (also the HL7 listener's, `transport::mllp_server`).
pub(crate) fn certs_from_pem(
    pem: &[u8],
    file: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            file: file.to_owned(),
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_owned(),
            what,
        });
    }
    Ok(certs)
}

/// The private key of a PEM document, never quoting it.
pub(crate) fn key_from_pem(pem: &[u8], file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            file: file.to_owned(),
        },
        other => TlsError::BadPem {
            file: file.to_owned(),
            reason: pem_reason(&other),
        },
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The validity and subject CN of a DER certificate ([`cert_fields`]).
fn fields(der: &CertificateDer<'_>, file: &Path) -> Result<cert_fields::CertFields, TlsError> {
    cert_fields::read(der).map_err(|e| TlsError::BadCertificate {
        file: file.to_owned(),
        reason: e.to_string(),
    })
}

/// notBefore and notAfter of a DER certificate.
fn validity(
    der: &CertificateDer<'_>,
    file: &Path,
) -> Result<(OffsetDateTime, OffsetDateTime), TlsError> {
    let f = fields(der, file)?;
    Ok((f.not_before, f.not_after))
}

pub(crate) fn common_name(der: &CertificateDer<'_>, file: &Path) -> Result<String, TlsError> {
    match fields(der, file)?.common_name {
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

/// Every problem with the uplink's files, all at once: for `check-config`, and before `run`
/// touches the state directory. Each file is read as [`load`] would read it (capped, regular,
/// the key not open to others) and parsed; the key must match the certificate and the
/// certificate must be accepted as a client certificate under the CA.
///
/// `now`: also check the certificate's validity period at this time. `None` skips that check
/// (the daemon at start: a hub without a real-time clock may not know the date yet, and an
/// expired certificate must not stop readings being collected and alarms sounding locally;
/// the uplink reports it and retries).
pub fn check_files(cfg: &UplinkConfig, now: Option<OffsetDateTime>) -> Vec<TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut problems = Vec::new();

    let roots = match read(&cfg.ca_file, &secure_file::CA_FILE)
        .and_then(|pem| certs_from_pem(&pem, &cfg.ca_file, "CA file"))
    {
        Ok(cas) => {
            let mut roots = RootCertStore::empty();
            let mut ok = true;
            for ca in cas {
                if let Err(e) = roots.add(ca) {
                    problems.push(TlsError::BadCa {
                        file: cfg.ca_file.clone(),
                        reason: e.to_string(),
                    });
                    ok = false;
                }
            }
            ok.then_some(roots)
        }
        Err(e) => {
            problems.push(e);
            None
        }
    };

    let chain = match read(&cfg.cert_file, &secure_file::CERT_FILE)
        .and_then(|pem| certs_from_pem(&pem, &cfg.cert_file, "client certificate file"))
        .and_then(|chain| {
            let validity = validity(&chain[0], &cfg.cert_file)?;
            Ok((chain, validity))
        }) {
        Ok((chain, (not_before, not_after))) => {
            if let Some(now) = now {
                if now > not_after {
                    problems.push(TlsError::Expired {
                        file: cfg.cert_file.clone(),
                        not_after: rfc3339(not_after),
                        now: rfc3339(now),
                    });
                } else if now < not_before {
                    problems.push(TlsError::NotYetValid {
                        file: cfg.cert_file.clone(),
                        not_before: rfc3339(not_before),
                        now: rfc3339(now),
                    });
                }
            }
            if cfg.gateway_id.is_none() {
                if let Err(e) = common_name(&chain[0], &cfg.cert_file) {
                    problems.push(e);
                }
            }
            Some((chain, not_before, not_after))
        }
        Err(e) => {
            problems.push(e);
            None
        }
    };

    let key = match read(&cfg.key_file, &secure_file::CLIENT_KEY)
        .and_then(|pem| key_from_pem(&pem, &cfg.key_file))
    {
        Ok(der) => match provider.key_provider.load_private_key(der) {
            Ok(key) => Some(key),
            Err(e) => {
                problems.push(TlsError::UnsupportedKey {
                    file: cfg.key_file.clone(),
                    reason: e.to_string(),
                });
                None
            }
        },
        Err(e) => {
            problems.push(e);
            None
        }
    };

    if let (Some((chain, _, _)), Some(key)) = (&chain, key) {
        if rustls::sign::CertifiedKey::new(chain.clone(), key)
            .keys_match()
            .is_err()
        {
            problems.push(TlsError::KeyMismatch {
                key_file: cfg.key_file.clone(),
                cert_file: cfg.cert_file.clone(),
            });
        }
    }

    if let (Some(roots), Some((chain, not_before, not_after))) = (roots, &chain) {
        // The chain is checked at a time inside the certificate's validity, so that a wrong
        // issuer is reported as such whatever the clock says (expiry is reported above).
        let at = now
            .unwrap_or_else(OffsetDateTime::now_utc)
            .clamp(*not_before, *not_after);
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(at.unix_timestamp()).unwrap_or(0),
        ));
        let verified = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())
        .and_then(|v| {
            v.verify_client_cert(&chain[0], &chain[1..], at)
                .map_err(|e| e.to_string())
        });
        if let Err(reason) = verified {
            problems.push(TlsError::Untrusted {
                cert_file: cfg.cert_file.clone(),
                ca_file: cfg.ca_file.clone(),
                reason,
            });
        }
    }
    problems
}

/// Reads the CA, certificate and key named in `cfg` and builds the client configuration.
pub fn load(cfg: &UplinkConfig, now: OffsetDateTime) -> Result<LoadedTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let ca_pem = read(&cfg.ca_file, &secure_file::CA_FILE)?;
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(&ca_pem, &cfg.ca_file, "CA file")? {
        roots.add(ca).map_err(|e| TlsError::BadCa {
            file: cfg.ca_file.clone(),
            reason: e.to_string(),
        })?;
    }

    let cert_pem = read(&cfg.cert_file, &secure_file::CERT_FILE)?;
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

    let key_pem = read(&cfg.key_file, &secure_file::CLIENT_KEY)?;
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
            // As docs/install.md installs them: the key readable by the service's group only.
            use std::os::unix::fs::PermissionsExt;
            let mode = if name.ends_with(".key") { 0o640 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
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
            msg.contains("nope.pem") && msg.contains("CA file does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn tls_load_ca_file_that_is_a_device_is_refused_without_reading_it() {
        let mut f = files("gw-0001");
        f.cfg.ca_file = PathBuf::from("/dev/zero");
        let msg = load(&f.cfg, NOW).unwrap_err().to_string();
        assert_eq!(
            msg,
            "/dev/zero: the CA file is a character device, not a regular file"
        );
    }

    #[test]
    fn tls_load_client_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let f = files("gw-0001");
        std::fs::set_permissions(&f.cfg.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = load(&f.cfg, NOW).unwrap_err().to_string();
        assert!(
            msg.contains("client.key") && msg.contains("open to others"),
            "{msg}"
        );
    }

    #[test]
    fn tls_load_malformed_key_pem_is_refused_without_quoting_it() {
        let f = files("gw-0001");
        let secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg";
        std::fs::write(
            &f.cfg.key_file,
            format!("-----BEGIN PRIVATE KEY-----\n{secret}\n"),
        )
        .unwrap();
        let msg = load(&f.cfg, NOW).unwrap_err().to_string();
        assert!(msg.contains("malformed PEM"), "{msg}");
        assert!(!msg.contains(secret) && !msg.contains("MIGH"), "{msg}");
    }

    #[test]
    fn check_files_accepts_a_matching_set() {
        let f = files("gw-0001");
        assert!(check_files(&f.cfg, Some(NOW)).is_empty());
    }

    #[test]
    fn check_files_reports_every_problem_at_once() {
        let mut f = files("gw-0001");
        f.cfg.ca_file = f.dir.path().join("missing-ca.pem");
        let other = KeyPair::generate().unwrap();
        std::fs::write(&f.cfg.key_file, other.serialize_pem()).unwrap();
        let found: Vec<String> = check_files(&f.cfg, Some(datetime!(2027-01-01 00:00 UTC)))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].contains("missing-ca.pem: CA file does not exist"));
        assert!(found[1].contains("client certificate expired"));
        assert!(found[2].contains("does not match the certificate"));
    }

    #[test]
    fn check_files_refuses_a_certificate_from_another_ca() {
        let f = files("gw-0001");
        let g = files("gw-0001");
        let cfg = UplinkConfig {
            ca_file: g.cfg.ca_file.clone(),
            ..f.cfg.clone()
        };
        let found = check_files(&cfg, Some(NOW));
        assert!(
            matches!(found.as_slice(), [TlsError::Untrusted { .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn check_files_without_a_time_ignores_expiry_but_not_the_issuer() {
        let f = files("gw-0001");
        assert!(check_files(&f.cfg, None).is_empty());
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
