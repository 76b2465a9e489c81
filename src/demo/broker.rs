//! The demo's own MQTT broker: Mosquitto on a free loopback port with mutual TLS 1.3, client
//! certificate CN as user name, and an ACL that lets the gateway write only its own topics and
//! the platform read everything. The process is killed and reaped when [`Broker`] is dropped,
//! so neither Ctrl-C nor `--seconds` leaves a broker behind.
//!
//! Mosquitto is what the tests and a real platform use, so `--broker auto` prefers it. Without
//! it the demo runs its own in-process broker ([`super::embedded_broker`]), written for the demo
//! because rumqttd (0.20) verifies client certificates only behind a non-default feature that
//! needs a CA directory and maps the certificate's Organization to a tenant, does not pin TLS
//! 1.3, and brings a second rustls (rust-stack.md §9).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::{DemoPki, PLATFORM_CN};
use super::DemoError;

/// How long the broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Debian and others install Mosquitto (`/usr/sbin` is not on a normal user's PATH).
const CANDIDATES: [&str; 3] = [
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
];

/// The Mosquitto executable: `$PATH` first, then the usual sbin directories.
pub fn find_mosquitto() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mosquitto"))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// The ACL: the platform reads everything, the gateway reads and writes only its own subtree.
pub fn acl(gateway_id: &str, prefix: &str) -> String {
    format!(
        "user {PLATFORM_CN}\ntopic read #\n\nuser {gateway_id}\ntopic readwrite {prefix}/gw/{gateway_id}/#\n"
    )
}

/// The Mosquitto configuration for `pki` in `dir` on `port`.
pub fn mosquitto_conf(dir: &Path, pki: &DemoPki, port: u16, as_root: bool) -> String {
    let user = if as_root { "user root\n" } else { "" };
    format!(
        "{user}per_listener_settings false\nallow_anonymous false\npersistence false\n\
         log_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\n\
         acl_file {acl}\n\
         listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.3\n",
        log = dir.join("mosquitto.log").display(),
        acl = dir.join("acl").display(),
        ca = pki.ca.display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
    )
}

fn free_port() -> Result<u16, DemoError> {
    let io = |source| DemoError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source,
    };
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    Ok(l.local_addr().map_err(io)?.port())
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user; no libc call needed.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A running Mosquitto owned by the demo; dropped means killed and reaped.
pub struct Broker {
    child: Child,
    /// The TLS port on 127.0.0.1.
    pub port: u16,
    /// The broker's log file.
    pub log: PathBuf,
}

impl Broker {
    /// Writes the ACL and configuration into `dir` and starts `mosquitto`, waiting until it
    /// accepts TCP connections.
    pub fn start(
        mosquitto: &Path,
        dir: &Path,
        pki: &DemoPki,
        gateway_id: &str,
        prefix: &str,
    ) -> Result<Broker, DemoError> {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| DemoError::Io { path, source })
        };
        write("acl", &acl(gateway_id, prefix))?;
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        write("mosquitto.conf", &mosquitto_conf(dir, pki, port, is_root()))?;
        let log = dir.join("mosquitto.log");
        use std::os::unix::process::CommandExt;
        // Its own process group: a terminal's Ctrl-C reaches the demo, which stops the gateway
        // cleanly (offline status published) before it kills the broker itself.
        let child = Command::new(mosquitto)
            .process_group(0)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| DemoError::Io {
                path: mosquitto.to_path_buf(),
                source,
            })?;
        let mut broker = Broker { child, port, log };
        let started = Instant::now();
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(broker);
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(DemoError::Broker(format!(
                    "mosquitto exited at start ({status}); see {}",
                    broker.log.display()
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(DemoError::Broker(format!(
                    "mosquitto did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}; see {}",
                    broker.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The broker's process id (printed, so a test can check it is gone).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SIGKILL and reap: the demo keeps no broker state worth a graceful stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // demo.md item 2 / rust-stack.md §9: the gateway may write only below its own id.
    #[test]
    fn acl_confines_the_gateway_to_its_subtree_and_lets_the_platform_read() {
        let a = acl("demo-gw-0001", "rpm/v1");
        assert!(a.contains("user platform\ntopic read #\n"), "{a}");
        assert!(
            a.contains("user demo-gw-0001\ntopic readwrite rpm/v1/gw/demo-gw-0001/#\n"),
            "{a}"
        );
        assert!(!a.contains("topic readwrite #"), "{a}");
    }

    // rust-stack.md §9: mutual TLS 1.3, CN as user name, no anonymous clients, loopback only.
    #[test]
    fn mosquitto_conf_requires_client_certificates_over_tls13_on_loopback() {
        let dir = Path::new("/tmp/x");
        let pki = DemoPki::in_dir(dir);
        let c = mosquitto_conf(dir, &pki, 18883, false);
        for line in [
            "listener 18883 127.0.0.1",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.3",
            "allow_anonymous false",
            "acl_file /tmp/x/acl",
            "cafile /tmp/x/ca.pem",
        ] {
            assert!(c.lines().any(|l| l == line), "missing {line:?} in\n{c}");
        }
        assert!(!c.contains("user root"));
        assert!(mosquitto_conf(dir, &pki, 1, true).starts_with("user root\n"));
    }
}
