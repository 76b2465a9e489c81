//! The serial ports of the sandboxed service (packaging/vitalgate.service: `PrivateDevices=yes`,
//! `BindPaths=-/dev/vitalgate/by-id:/dev/serial/by-id`): udev's helper
//! (packaging/udev/vitalgate-serial-node) makes and removes the nodes, and a node made after
//! the service started appears inside its private /dev (a hot-plugged pulse oximeter).
//!
//! Run as the helper runs: as root (mknod, chown, a mount namespace). The helper runs with its
//! directory and owner pointed at a temporary directory and root; the service's namespace is
//! made as systemd makes it: a new mount namespace, a tmpfs over /dev, the directory bound
//! over /dev/serial/by-id. Not as root, each test says so and checks nothing.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn as_root(test: &str) -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("{test}: needs root (mknod, mount namespaces), as udev runs the helper; not run");
    }
    root
}

/// The packaged helper with its directory `dir` and owner root.
struct Helper {
    script: PathBuf,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Helper {
    fn new() -> Helper {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vitalgate/by-id");
        let text = std::fs::read_to_string(root().join("packaging/udev/vitalgate-serial-node"))
            .unwrap()
            .replace(
                "DIR=/dev/vitalgate/by-id",
                &format!("DIR={}", dir.display()),
            )
            .replace("OWNER=vitalgate", "OWNER=root");
        let script = tmp.path().join("serial-node");
        std::fs::write(&script, text).unwrap();
        Helper {
            script,
            dir,
            _tmp: tmp,
        }
    }

    /// Runs it as udev would: `add MAJOR MINOR $links` or `remove MAJOR MINOR`.
    fn run(&self, args: &[&str]) {
        let out = Command::new("sh")
            .arg(&self.script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "serial-node {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// (major, minor) of a device node.
fn numbers(path: &Path) -> (u64, u64) {
    let rdev = std::fs::metadata(path).unwrap().rdev();
    // Linux's encoding (glibc's gnu_dev_major/minor).
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

const OXIMETER: &str = "usb-Nonin_Medical_Inc._3150_WristOx2_500123-if00";

#[test]
fn serial_node_is_the_ports_by_id_name_owned_by_the_service_and_private() {
    if !as_root("serial_node_is_the_ports_by_id_name_owned_by_the_service_and_private") {
        return;
    }
    let h = Helper::new();
    // ttyUSB0 is 188:0; $links lists every link udev made for it.
    let link = format!("serial/by-id/{OXIMETER}");
    h.run(&[
        "add",
        "188",
        "0",
        "serial/by-path/platform-3f980000.usb-usb-0:1.2:1.0-port0",
        &link,
    ]);
    assert_eq!(h.names(), [OXIMETER], "only the by-id name");
    let node = h.dir.join(OXIMETER);
    let meta = std::fs::symlink_metadata(&node).unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "a device node, not a link"
    );
    assert_eq!(numbers(&node), (188, 0));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0, "owned by the helper's OWNER");
}

#[test]
fn a_device_number_names_one_node_and_unplugging_removes_it() {
    if !as_root("a_device_number_names_one_node_and_unplugging_removes_it") {
        return;
    }
    let h = Helper::new();
    h.run(&["add", "188", "0", &format!("serial/by-id/{OXIMETER}")]);
    h.run(&["add", "188", "1", "serial/by-id/usb-Contec_CMS50D-if00"]);
    // The oximeter's remove event was missed; the kernel gives 188:0 to another adapter:
    // the old name must not open the new adapter.
    h.run(&["add", "188", "0", "serial/by-id/usb-FTDI_FT232R_A9XYZ-if00"]);
    assert_eq!(
        h.names(),
        ["usb-Contec_CMS50D-if00", "usb-FTDI_FT232R_A9XYZ-if00"]
    );
    // The same port again (a change event): same node, still there.
    h.run(&["add", "188", "0", "serial/by-id/usb-FTDI_FT232R_A9XYZ-if00"]);
    assert_eq!(
        h.names(),
        ["usb-Contec_CMS50D-if00", "usb-FTDI_FT232R_A9XYZ-if00"]
    );
    h.run(&["remove", "188", "0"]);
    assert_eq!(h.names(), ["usb-Contec_CMS50D-if00"]);
}

#[test]
fn a_port_plugged_in_after_the_service_started_appears_in_its_private_dev() {
    if !as_root("a_port_plugged_in_after_the_service_started_appears_in_its_private_dev") {
        return;
    }
    let h = Helper::new();
    // Makes the (empty) directory, as tmpfiles.d does at boot.
    h.run(&["remove", "188", "0"]);
    // The service: a private /dev (tmpfs) with the directory bound over /dev/serial/by-id,
    // waiting for the oximeter; it prints what it finds there.
    let inside = format!(
        "mount -t tmpfs tmpfs /dev && mkdir -p /dev/serial/by-id && \
         mount --bind {dir} /dev/serial/by-id && echo started && \
         while [ ! -c /dev/serial/by-id/{OXIMETER} ]; do sleep 0.05; done && \
         stat -c '%t:%T' /dev/serial/by-id/{OXIMETER}",
        dir = h.dir.display()
    );
    let mut service = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &inside])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "started", "the namespace was not set up");
    // Plugged in now.
    h.run(&["add", "188", "0", &format!("serial/by-id/{OXIMETER}")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = service.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = service.kill();
            panic!("the node made after start never appeared in the service's /dev");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "bc:0", "188:0 in hex, as stat prints it");
}
