# The status of this host's API instances, read on the host by
# tasks/status.yml (playbooks/status.yml) with the host's python3 -c. It
# changes nothing. Argument: a JSON object with name, ports, health_path,
# drain_table, timeout. Prints one JSON object {instances: [...]}, one per
# configured port:
#   port, unit, active, sub, enabled  systemd's view of <name>@<port>.service
#   restarts                          automatic restarts since the unit was
#                                     loaded (NRestarts, i.e. since boot)
#   memory                            MemoryCurrent in bytes (0: unknown)
#   listen                            addresses listening on the port
#                                     (/proc/net/tcp and tcp6)
#   refused                           the drain command refuses new
#                                     connections to it (a restart in progress)
#   status, version, error            a GET of the health path on the first
#                                     listening address (0 when none answered)
import http.client
import ipaddress
import json
import struct
import subprocess
import sys

args = json.loads(sys.argv[1])


def run(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return ""


def listeners():
    """{port: [address, ...]} of the TCP sockets in LISTEN state."""
    found = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, encoding="ascii") as handle:
                lines = handle.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = struct.unpack("<" + "I" * (len(raw) // 4), raw)
            packed = struct.pack(">" + "I" * len(words), *words)
            address = str(ipaddress.ip_address(packed))
            found.setdefault(int(port_hex, 16), []).append(address)
    return found


def health(address, port):
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    connection = http.client.HTTPConnection(host, port, timeout=args["timeout"])
    try:
        connection.request("GET", args["health_path"], headers={"User-Agent": "lb-status"})
        response = connection.getresponse()
        try:
            version = json.loads(response.read(4096)).get("version", "")
        except (ValueError, AttributeError):
            version = ""
        return {"status": response.status, "version": version, "error": ""}
    except OSError as error:
        return {"status": 0, "version": "", "error": str(error) or type(error).__name__}
    finally:
        connection.close()


refused = set()
listed = run("nft", "-j", "list", "set", "inet", args["drain_table"], "ports")
if listed:
    for item in json.loads(listed).get("nftables", []):
        refused.update(port for port in item.get("set", {}).get("elem", []) if isinstance(port, int))

units = [f"{args['name']}@{port}.service" for port in args["ports"]]
properties = "Id,ActiveState,SubState,UnitFileState,NRestarts,MemoryCurrent"
shown = {}
for block in run("systemctl", "show", f"--property={properties}", *units).strip().split("\n\n"):
    props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    shown[props.get("Id", "")] = props

listening = listeners()
instances = []
for port, unit in zip(args["ports"], units, strict=True):
    props = shown.get(unit, {})
    memory = props.get("MemoryCurrent", "")
    addresses = sorted(set(listening.get(port, [])))
    instance = {
        "port": port,
        "unit": unit,
        "active": props.get("ActiveState", "unknown"),
        "sub": props.get("SubState", ""),
        "enabled": props.get("UnitFileState", "unknown"),
        "restarts": int(props.get("NRestarts") or 0),
        "memory": int(memory) if memory.isdigit() else 0,
        "listen": addresses,
        "refused": port in refused,
    }
    if addresses:
        instance.update(health(addresses[0], port))
    else:
        instance.update({"status": 0, "version": "", "error": "nothing listens on the port"})
    instances.append(instance)

print(json.dumps({"instances": instances}))
