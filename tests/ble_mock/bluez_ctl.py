#!/usr/bin/env python3
"""Drives python-dbusmock's bluez5 template for tests/ble_mock.rs (rust-stack.md §2.1).

The mock bluetoothd runs as `python -m dbusmock --system --template bluez5` on a private bus
(DBUS_SYSTEM_BUS_ADDRESS). This script adds what the template lacks, only through the generic
org.freedesktop.DBus.Mock API (no template fork):

  adapter                          AddAdapter hci0
  device ADDR NAME PROFILE [ARG]   AddDevice + GATT objects for PROFILE:
      bp           Blood Pressure 0x1810 / 0x2A35 (indicate)
      bp-cts HEX   bp plus Current Time 0x1805 / 0x2A2B (read) whose value is HEX
      bp-bonded    bp whose StartNotify refuses with org.bluez.Error.NotPermitted (unbonded)
      glucose HEX,HEX,...  Glucose 0x1808: 0x2A18 (notify), 0x2A34 (notify), RACP 0x2A52
                   (write + indicate). The stored records are the given Glucose Measurement
                   values; writing `01 03 01 NN NN` to the RACP emits every record whose sequence
                   number is >= NNNN as a PropertiesChanged on 0x2A18's Value, then `06 00 01 01`
                   (or `06 00 01 06` when none match) on the RACP; `01 01` reports all.
  add-record ADDR HEX              store one more Glucose Measurement in the glucose meter
  indicate ADDR CHAR HEX           PropertiesChanged {Value: HEX} on the device's CHAR (e.g. char0011):
                                   how BlueZ delivers notifications and indications. Fails unless
                                   the central subscribed (Notifying) on this connection.
  disconnect ADDR                  Connected = ServicesResolved = Notifying = False (link dropped)
  advertise ADDR                   an RSSI update, as BlueZ reports a new advertisement
  calls ADDR [SUFFIX]              print the mock's call log (method names; WriteValue with its
                                   value in hex) for the device (ADDR - : the adapter) or e.g.
                                   /service0010/char0011

Device1.Connect/Disconnect are replaced so that the Connected property really changes and
ServicesResolved becomes True on connect (the template's Connect sets neither).
"""
import sys

import dbus

BLUEZ = "org.bluez"
MOCK = "org.freedesktop.DBus.Mock"
DEVICE = "org.bluez.Device1"
SERVICE = "org.bluez.GattService1"
CHAR = "org.bluez.GattCharacteristic1"
RACP_RECORDS = "org.vitalgate.MockRacp"  # the meter's stored records, a mock-only property


def uuid16(u):
    return "0000%s-0000-1000-8000-00805f9b34fb" % u.lower()


def dev_path(addr):
    return "/org/bluez/hci0/dev_" + addr.replace(":", "_").upper()


def obj(bus, path, iface):
    return dbus.Interface(bus.get_object(BLUEZ, path), iface)


def byte_array(data):
    return dbus.Array([dbus.Byte(b) for b in data], signature="y")


CONNECT = (
    "self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(True),"
    " 'ServicesResolved': dbus.Boolean(True)})"
)
DISCONNECT = (
    "self.UpdateProperties('org.bluez.Device1', {'Connected': dbus.Boolean(False),"
    " 'ServicesResolved': dbus.Boolean(False)})"
)
START_NOTIFY = "self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(True)})"
STOP_NOTIFY = "self.UpdateProperties('org.bluez.GattCharacteristic1', {'Notifying': dbus.Boolean(False)})"
NOT_PERMITTED = (
    "raise dbus.exceptions.DBusException('Operation is not permitted: insufficient authentication',"
    " name='org.bluez.Error.NotPermitted')"
)
READ_VALUE = "ret = self.Get('org.bluez.GattCharacteristic1', 'Value')"

# RACP WriteValue: runs inside the dbusmock process (mockobject's globals: dbus, objects).
RACP_WRITE = """
# No comprehensions: exec() with separate locals hides them from comprehension scopes.
req = bytes(args[0])
records = []
for r in self.props['org.vitalgate.MockRacp']['Records']:
    records.append(bytes(r))
gm = objects[self.path.rsplit('/', 1)[0] + '/char0011']
chosen = None
if req[:3] == bytes([1, 3, 1]) and len(req) == 5:
    first = req[3] | (req[4] << 8)
    chosen = []
    for r in records:
        if (r[1] | (r[2] << 8)) >= first:
            chosen.append(r)
elif req == bytes([1, 1]):
    chosen = records
if chosen is None:
    resp = bytes([6, 0, req[0] if req else 0, 2])
else:
    for r in chosen:
        value = dbus.Array([], signature='y')
        for b in r:
            value.append(dbus.Byte(b))
        gm.UpdateProperties('org.bluez.GattCharacteristic1', {'Value': value})
    resp = bytes([6, 0, 1, 1 if chosen else 6])
value = dbus.Array([], signature='y')
for b in resp:
    value.append(dbus.Byte(b))
self.UpdateProperties('org.bluez.GattCharacteristic1', {'Value': value})
"""

NOOP = [("Noop", "", "", "")]  # rust-stack §2.1 step 1: an interface needs at least one method


def add_service(root, dev, name, uuid):
    path = dev + "/" + name
    root.AddObject(
        path,
        SERVICE,
        {
            "UUID": uuid16(uuid),
            "Primary": dbus.Boolean(True),
            "Device": dbus.ObjectPath(dev),
            "Includes": dbus.Array([], signature="o"),
        },
        NOOP,
    )
    return path


def add_char(root, svc, name, uuid, flags, value=b"", start_notify=START_NOTIFY, write=None):
    path = svc + "/" + name
    methods = [
        ("StartNotify", "", "", start_notify),
        ("StopNotify", "", "", STOP_NOTIFY),
        ("ReadValue", "a{sv}", "ay", READ_VALUE),
        ("WriteValue", "aya{sv}", "", write or ""),
    ]
    root.AddObject(
        path,
        CHAR,
        {
            "UUID": uuid16(uuid),
            "Service": dbus.ObjectPath(svc),
            "Value": byte_array(value),
            "Notifying": dbus.Boolean(False),
            "Flags": dbus.Array(flags, signature="s"),
        },
        methods,
    )
    return path


def add_device(root, path, addr, name):
    """The template's AddDevice, but with a Connect/Disconnect that really change Connected and
    ServicesResolved from the first moment the device is visible (replacing the methods after
    AddDevice races with a central that connects on InterfacesAdded)."""
    props = {
        "Address": dbus.String(addr),
        "AddressType": dbus.String("public"),
        "Name": dbus.String(name),
        "Alias": dbus.String(name),
        "Icon": dbus.String("health"),
        "Class": dbus.UInt32(0),
        "Appearance": dbus.UInt16(0),
        "UUIDs": dbus.Array([], signature="s"),
        "Paired": dbus.Boolean(False),
        "Connected": dbus.Boolean(False),
        "Trusted": dbus.Boolean(False),
        "Blocked": dbus.Boolean(False),
        "WakeAllowed": dbus.Boolean(False),
        "Adapter": dbus.ObjectPath("/org/bluez/hci0"),
        "LegacyPairing": dbus.Boolean(False),
        "RSSI": dbus.Int16(-70),
        "TxPower": dbus.Int16(0),
        "ManufacturerData": dbus.Dictionary({}, signature="qv"),
        "ServiceData": dbus.Dictionary({}, signature="sv"),
        "ServicesResolved": dbus.Boolean(False),
        "AdvertisingFlags": dbus.Array([], signature="y"),
        "AdvertisingData": dbus.Dictionary({}, signature="yv"),
    }
    root.AddObject(
        path,
        DEVICE,
        props,
        [
            ("Connect", "", "", CONNECT),
            ("Disconnect", "", "", DISCONNECT),
            ("Pair", "", "", ""),
            ("CancelPairing", "", "", ""),
        ],
    )
    root.EmitSignal(
        "org.freedesktop.DBus.ObjectManager",
        "InterfacesAdded",
        "oa{sa{sv}}",
        dbus.Array(
            [dbus.ObjectPath(path), dbus.Dictionary({DEVICE: dbus.Dictionary(props, signature="sv")}, signature="sa{sv}")],
            signature="v",
        ),
    )


def main(argv):
    bus = dbus.SystemBus()
    root = obj(bus, "/", MOCK)
    bluez_mock = obj(bus, "/", "org.bluez.Mock")
    cmd = argv[1]
    if cmd == "adapter":
        bluez_mock.AddAdapter("hci0", "vitalgate-test")
    elif cmd == "device":
        addr, name, profile = argv[2], argv[3], argv[4]
        arg = argv[5] if len(argv) > 5 else ""
        # GATT objects first: the device must be complete when it appears (InterfacesAdded),
        # as a real one is by the time BlueZ sets ServicesResolved.
        dev = dev_path(addr)
        if profile in ("bp", "bp-cts", "bp-bonded"):
            svc = add_service(root, dev, "service0010", "1810")
            add_char(
                root,
                svc,
                "char0011",
                "2a35",
                ["indicate"],
                start_notify=NOT_PERMITTED if profile == "bp-bonded" else START_NOTIFY,
            )
            if profile == "bp-cts":
                cts = add_service(root, dev, "service0020", "1805")
                add_char(root, cts, "char0021", "2a2b", ["read", "notify"], bytes.fromhex(arg))
        elif profile == "glucose":
            records = [bytes.fromhex(h) for h in arg.split(",") if h]
            svc = add_service(root, dev, "service0010", "1808")
            add_char(root, svc, "char0011", "2a18", ["notify"])
            add_char(root, svc, "char0013", "2a34", ["notify"])
            racp = add_char(root, svc, "char0015", "2a52", ["write", "indicate"], write=RACP_WRITE)
            racp_mock = obj(bus, racp, MOCK)
            racp_mock.AddMethod(RACP_RECORDS, "Noop", "", "", "")  # see NOOP
            racp_mock.AddProperty(
                RACP_RECORDS, "Records", dbus.Array([byte_array(r) for r in records], signature="ay")
            )
        else:
            raise SystemExit("unknown profile " + profile)
        add_device(root, dev, addr, name)
    elif cmd == "indicate":
        addr, char, value = argv[2], argv[3], argv[4]
        path = dev_path(addr) + "/service0010/" + char
        props = dbus.Interface(bus.get_object(BLUEZ, path), dbus.PROPERTIES_IFACE)
        if not props.Get(CHAR, "Notifying"):
            # A device indicates only once the central has written the CCCD (StartNotify).
            raise SystemExit("not subscribed: %s is not notifying, so the device sends nothing" % char)
        obj(bus, path, MOCK).UpdateProperties(CHAR, {"Value": byte_array(bytes.fromhex(value))})
    elif cmd == "add-record":
        racp = obj(bus, dev_path(argv[2]) + "/service0010/char0015", MOCK)
        props = dbus.Interface(bus.get_object(BLUEZ, dev_path(argv[2]) + "/service0010/char0015"), dbus.PROPERTIES_IFACE)
        records = list(props.Get(RACP_RECORDS, "Records")) + [byte_array(bytes.fromhex(argv[3]))]
        racp.UpdateProperties(RACP_RECORDS, {"Records": dbus.Array(records, signature="ay")})
    elif cmd == "disconnect":
        obj(bus, dev_path(argv[2]), MOCK).UpdateProperties(
            DEVICE, {"Connected": dbus.Boolean(False), "ServicesResolved": dbus.Boolean(False)}
        )
        # An unbonded peer forgets its CCCDs with the link (protocols.md §1.1).
        for char in ("char0011", "char0013", "char0015"):
            path = dev_path(argv[2]) + "/service0010/" + char
            try:
                obj(bus, path, MOCK).UpdateProperties(CHAR, {"Notifying": dbus.Boolean(False)})
            except dbus.exceptions.DBusException:
                pass  # this profile has no such characteristic
    elif cmd == "advertise":
        obj(bus, dev_path(argv[2]), MOCK).UpdateProperties(DEVICE, {"RSSI": dbus.Int16(-60)})
    elif cmd == "calls":
        base = "/org/bluez/hci0" if argv[2] == "-" else dev_path(argv[2])
        path = base + (argv[3] if len(argv) > 3 else "")
        for _, method, call_args in obj(bus, path, MOCK).GetCalls():
            if method == "WriteValue":
                print(method, bytes(int(b) for b in call_args[0]).hex())
            else:
                print(method)
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
