//! The demo's throw-away PKI: a CA, a broker certificate for `localhost` / 127.0.0.1, the
//! gateway's client certificate (CN = the gateway id, which the broker's ACL uses as user name)
//! and the "platform" subscriber's client certificate, all X.509 v3, ECDSA P-256, written as PEM
//! files with mode 0600.
//!
//! It exists only so `vitalgate demo` runs the real mutual-TLS path with no set-up. It is not a
//! certificate authority for anything else: the CA key is discarded once the leaves are signed,
//! the certificates are valid for a day, and nothing here is used by `vitalgate run`.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::DemoError;

/// CN of the platform subscriber's certificate (and its broker user name).
pub const PLATFORM_CN: &str = "platform";

/// Paths of the generated PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPki {
    /// The demo CA certificate: the only root the broker and both clients trust.
    pub ca: PathBuf,
    /// Broker certificate (SAN `localhost`, 127.0.0.1) and key.
    pub server_cert: PathBuf,
    /// Broker private key.
    pub server_key: PathBuf,
    /// Gateway client certificate (CN = gateway id) and key.
    pub gateway_cert: PathBuf,
    /// Gateway private key.
    pub gateway_key: PathBuf,
    /// Platform client certificate (CN = [`PLATFORM_CN`]) and key.
    pub platform_cert: PathBuf,
    /// Platform private key.
    pub platform_key: PathBuf,
}

fn cert_err(what: &'static str) -> impl Fn(rcgen::Error) -> DemoError {
    move |e| DemoError::Certificate {
        what,
        reason: e.to_string(),
    }
}

/// Writes `data` to `path`, created with mode 0600 (never briefly world-readable).
fn write_private(path: &Path, data: &str) -> Result<(), DemoError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn leaf_params(
    cn: &str,
    names: Vec<String>,
    eku: ExtendedKeyUsagePurpose,
    now: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(names)?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(1);
    Ok(p)
}

impl DemoPki {
    /// Where the PEM files of a demo PKI live in `dir` (one layout for writer and readers).
    pub fn in_dir(dir: &Path) -> DemoPki {
        DemoPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            gateway_cert: dir.join("gateway.pem"),
            gateway_key: dir.join("gateway.key"),
            platform_cert: dir.join("platform.pem"),
            platform_key: dir.join("platform.key"),
        }
    }

    /// Generates every certificate and key into `dir` (which must exist and be private).
    /// `gateway_id` becomes the gateway certificate's CN; `now` sets the validity window.
    pub fn generate(
        dir: &Path,
        gateway_id: &str,
        now: OffsetDateTime,
    ) -> Result<DemoPki, DemoError> {
        let ca_key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA"))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "vitalgate demo CA (throw-away)");
        ca.not_before = now - Duration::hours(1);
        ca.not_after = now + Duration::days(1);
        let ca_cert = ca.self_signed(&ca_key).map_err(cert_err("CA"))?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().map_err(cert_err("broker key"))?;
        let mut server = leaf_params(
            "localhost",
            vec!["localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
        )
        .map_err(cert_err("broker certificate"))?;
        server
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .map_err(cert_err("broker certificate"))?;

        let client = |cn: &str, what: &'static str| -> Result<(String, String), DemoError> {
            let key = KeyPair::generate().map_err(cert_err(what))?;
            let params = leaf_params(cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, now)
                .map_err(cert_err(what))?;
            let cert = params.signed_by(&key, &issuer).map_err(cert_err(what))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (gw_pem, gw_key) = client(gateway_id, "gateway certificate")?;
        let (pf_pem, pf_key) = client(PLATFORM_CN, "platform certificate")?;

        let pki = DemoPki::in_dir(dir);
        write_private(&pki.ca, &ca_cert.pem())?;
        write_private(&pki.server_cert, &server_cert.pem())?;
        write_private(&pki.server_key, &server_key.serialize_pem())?;
        write_private(&pki.gateway_cert, &gw_pem)?;
        write_private(&pki.gateway_key, &gw_key)?;
        write_private(&pki.platform_cert, &pf_pem)?;
        write_private(&pki.platform_key, &pf_key)?;
        Ok(pki)
    }

    /// Every file, for checks and clean-up.
    pub fn files(&self) -> [&Path; 7] {
        [
            &self.ca,
            &self.server_cert,
            &self.server_key,
            &self.gateway_cert,
            &self.gateway_key,
            &self.platform_cert,
            &self.platform_key,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::UplinkConfig;
    use std::os::unix::fs::PermissionsExt;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

    fn pki() -> (tempfile::TempDir, DemoPki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), "demo-gw-0001", NOW).unwrap();
        (dir, pki)
    }

    fn parse(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        der.to_vec()
    }

    // demo.md item 1: files 0600.
    #[test]
    fn generate_writes_every_file_with_mode_0600() {
        let (_dir, pki) = pki();
        for f in pki.files() {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }

    // demo.md item 1: the gateway certificate's CN is the demo gateway id (the ACL user name).
    #[test]
    fn generate_gateway_certificate_cn_is_the_gateway_id() {
        let (_dir, pki) = pki();
        let pem = std::fs::read(&pki.gateway_cert).unwrap();
        assert_eq!(
            crate::uplink::gateway_id_from_cert(&pem).unwrap(),
            "demo-gw-0001"
        );
        let pem = std::fs::read(&pki.platform_cert).unwrap();
        assert_eq!(
            crate::uplink::gateway_id_from_cert(&pem).unwrap(),
            PLATFORM_CN
        );
    }

    // demo.md item 1: X.509 v3, broker certificate for localhost and 127.0.0.1.
    #[test]
    fn generate_broker_certificate_is_v3_for_localhost_and_loopback_ip() {
        let (_dir, pki) = pki();
        let der = parse(&pki.server_cert);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        use x509_parser::extensions::GeneralName;
        let names = &san.value.general_names;
        assert!(
            names.contains(&GeneralName::DNSName("localhost")),
            "{names:?}"
        );
        assert!(
            names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])),
            "{names:?}"
        );
    }

    // The gateway's own TLS loader (TLS 1.3, client auth) accepts the generated files.
    #[test]
    fn generate_gateway_files_load_as_an_uplink_client_config() {
        let (_dir, pki) = pki();
        let cfg = UplinkConfig {
            broker: "127.0.0.1".into(),
            server_name: Some("localhost".into()),
            ca_file: pki.ca.clone(),
            cert_file: pki.gateway_cert.clone(),
            key_file: pki.gateway_key.clone(),
            ..UplinkConfig::default()
        };
        let loaded = crate::uplink::tls::load(&cfg, NOW).unwrap();
        assert_eq!(loaded.gateway_id, "demo-gw-0001");
    }

    #[test]
    fn generate_into_a_directory_that_already_holds_the_files_is_refused() {
        let (dir, _pki) = pki();
        let err = DemoPki::generate(dir.path(), "demo-gw-0001", NOW).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
