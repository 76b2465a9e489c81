//! Recognising "this device must be bonded first" in BlueZ errors, and saying how to bond.
//!
//! btleplug has no pairing API (rust-stack.md §2 "Bonding"), so the central cannot bond by
//! itself; what it can do is tell the operator precisely. BlueZ reports a refused read, write
//! or StartNotify on an unencrypted link as `org.bluez.Error.NotPermitted` /
//! `org.bluez.Error.NotAuthorized`, or as `org.bluez.Error.Failed` with "ATT error: 0x05"
//! (insufficient authentication), 0x08 (insufficient authorization), 0x0c (insufficient
//! encryption key size) or 0x0f (insufficient encryption). It also reads the ATT code out of
//! such a text (for the RACP's own codes, protocols.md §1.10). This module only classifies
//! text; it does no IO.

/// Whether an error (its Display and Debug text, which for D-Bus errors includes the error
/// name) means the device refuses access until it is bonded.
pub fn needs_bonding(error_text: &str) -> bool {
    let t = error_text.to_ascii_lowercase();
    const MARKERS: [&str; 12] = [
        "org.bluez.error.notpermitted",
        "org.bluez.error.notauthorized",
        "org.bluez.error.authenticationfailed",
        "not permitted",
        "not authorized",
        "insufficient authentication",
        "insufficient authorization",
        "insufficient encryption",
        "att error: 0x05",
        "att error: 0x08",
        "att error: 0x0c",
        "att error: 0x0f",
    ];
    MARKERS.iter().any(|m| t.contains(m))
}

/// The ATT error code in a BlueZ error text (`"Operation failed with ATT error: 0xfe"`), if any.
pub fn att_error_code(error_text: &str) -> Option<u8> {
    let t = error_text.to_ascii_lowercase();
    let at = t.find("att error: 0x")? + "att error: 0x".len();
    let hex: String = t
        .get(at..)?
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .take(2)
        .collect();
    u8::from_str_radix(&hex, 16).ok()
}

/// The operator's message for a device that needs bonding, with the `bluetoothctl` steps
/// (docs/ble.md "Bonding").
pub fn bonding_hint(address: &str) -> String {
    format!(
        "device {address} refused access until it is bonded (paired with encryption); pair it once on \
         this gateway: `bluetoothctl`, then `scan on`, put the device in pairing mode, `pair {address}` \
         (enter the passkey if the device shows one), `trust {address}`, `scan off`; see docs/ble.md"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_bonding_recognises_bluez_permission_errors() {
        // rust-stack.md §2 "Bonding": BP cuffs allow 0x2A35 indications only when bonded
        for text in [
            "D-Bus error: Not paired (org.bluez.Error.NotPermitted)",
            "D-Bus error: Operation not authorized (org.bluez.Error.NotAuthorized)",
            "Operation failed with ATT error: 0x05",
            "Operation failed with ATT error: 0x0f",
            "Operation failed with ATT error: 0x08",
            "Insufficient Encryption",
        ] {
            assert!(needs_bonding(text), "{text}");
        }
    }

    #[test]
    fn needs_bonding_ignores_unrelated_failures() {
        for text in [
            "D-Bus error: Not connected (org.bluez.Error.Failed)",
            "Operation failed with ATT error: 0x0e",
            "Timed out after 10s",
            "Service discovery timed out",
        ] {
            assert!(!needs_bonding(text), "{text}");
        }
    }

    #[test]
    fn att_error_code_reads_the_code_from_bluez_text() {
        // protocols.md §1.10: 0xFE procedure already in progress, 0x80 on older meters
        assert_eq!(
            att_error_code("Operation failed with ATT error: 0xfe"),
            Some(0xFE)
        );
        assert_eq!(
            att_error_code(
                "x [D-Bus error: Operation failed with ATT error: 0x80 (org.bluez.Error.Failed)]"
            ),
            Some(0x80)
        );
        assert_eq!(att_error_code("Operation failed with ATT error: 0x"), None);
        assert_eq!(att_error_code("Not connected"), None);
    }

    #[test]
    fn bonding_hint_names_the_address_and_the_bluetoothctl_steps() {
        let h = bonding_hint("A4:C1:38:12:34:56");
        assert!(h.contains("pair A4:C1:38:12:34:56"));
        assert!(h.contains("trust A4:C1:38:12:34:56"));
        assert!(h.contains("docs/ble.md"));
    }
}
