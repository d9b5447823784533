# The api role's probe: everything the role needs to know about a host, read
# in one call (tasks/install.yml runs it with the host's python3 -c). It
# changes nothing. Argument: a JSON object with
#   name, ports, packages, health_host, health_path, drain_table, release_file, src,
#   user, group, root, files.
# Prints one JSON object:
#   python, machine, glibc   the wheelhouse's target (tasks/wheelhouse.yml)
#   missing_packages         packages of `packages` dpkg does not have installed
#   units                    {unit: {active, enabled}} for the configured
#                            instances and every other loaded name@PORT unit
#   health                   {port: {status, version}} of each configured port
#   refused                  ports the drain command refuses
#   account                  whether user and group exist as the role makes them
#                            (system ids, the user's group, home, nologin shell)
#   root                     owner, group and mode of the install directory
#   files                    {path: "sha1 uid gid mode"} of each of `files` that
#                            exists, compared with what the role would write
#   release                  the release the virtualenv was installed from
#   src_digest               digest of the installed app source, the same walk
#                            as files/api_release.py (which builds the release)
import grp
import hashlib
import json
import os
import platform
import pwd
import re
import subprocess
import sys
import urllib.request

args = json.loads(sys.argv[1])
name = args["name"]


def run(*argv):
    """stdout of a command; empty when it is not installed yet (the role installs it)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return ""


installed = set()
for line in run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *args["packages"]).splitlines():
    package, _sep, status = line.partition(" ")
    if status == "installed":
        installed.add(package)

pattern = re.compile(re.escape(name) + r"@[0-9]+\.service")
units = [f"{name}@{port}.service" for port in args["ports"]]
listed_units = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "--full", f"{name}@*.service")
for line in listed_units.splitlines():
    unit = line.split(" ", 1)[0]
    if pattern.fullmatch(unit) and unit not in units:
        units.append(unit)
state = {}
shown = run("systemctl", "show", "--property=Id,ActiveState,UnitFileState", *units)
for block in shown.strip().split("\n\n"):
    props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    if props.get("Id") in units:
        state[props["Id"]] = {"active": props.get("ActiveState", ""), "enabled": props.get("UnitFileState", "")}

health = {}
for port in args["ports"]:
    url = f"http://{args['health_host']}:{port}{args['health_path']}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = json.loads(response.read() or b"{}")
            health[str(port)] = {"status": response.status, "version": str(body.get("version", ""))}
    except Exception as error:  # noqa: BLE001 - any failure is "not healthy", reported as such
        health[str(port)] = {"status": getattr(error, "code", 0), "version": ""}

refused = []
listed = run("nft", "-j", "list", "set", "inet", args["drain_table"], "ports")
if listed:
    for item in json.loads(listed).get("nftables", []):
        refused += [int(port) for port in item.get("set", {}).get("elem", []) if isinstance(port, int)]

SKIP = ("__pycache__", ".pyc")
files = []
for base, dirs, names in os.walk(args["src"]):
    dirs[:] = [d for d in dirs if d not in SKIP]
    for file_name in names:
        if not file_name.endswith(SKIP):
            path = os.path.join(base, file_name)
            with open(path, "rb") as handle:
                files.append((os.path.relpath(path, args["src"]), hashlib.sha256(handle.read()).digest()))
total = hashlib.sha256()
for relative, file_digest in sorted(files):
    total.update(relative.encode() + b"\0" + file_digest)
src_digest = total.hexdigest() if os.path.isdir(args["src"]) else ""

try:
    group = grp.getgrnam(args["group"])
    user = pwd.getpwnam(args["user"])
    account = (
        group.gr_gid < 1000
        and user.pw_uid < 1000
        and user.pw_gid == group.gr_gid
        and user.pw_dir == args["root"]
        and user.pw_shell == "/usr/sbin/nologin"
    )
except KeyError:
    account = False
try:
    stat = os.stat(args["root"])
    root = [stat.st_uid, stat.st_gid, oct(stat.st_mode & 0o7777)]
except OSError:
    root = []

files = {}
for path in args["files"]:
    try:
        with open(path, "rb") as handle:
            file_digest = hashlib.sha1(handle.read()).hexdigest()  # noqa: S324 - Ansible's own file checksum
        stat = os.stat(path)
        files[path] = f"{file_digest} {stat.st_uid} {stat.st_gid} {stat.st_mode & 0o7777:o}"
    except OSError:
        pass

try:
    with open(args["release_file"], encoding="utf-8") as marker:
        release = marker.read().strip()
except OSError:
    release = ""

print(
    json.dumps(
        {
            "python": "{}{}".format(*sys.version_info[:2]),
            "machine": platform.machine(),
            "glibc": platform.libc_ver()[1],
            "missing_packages": sorted(set(args["packages"]) - installed),
            "units": state,
            "health": health,
            "refused": sorted(refused),
            "account": account,
            "root": root,
            "files": files,
            "release": release,
            "src_digest": src_digest,
        }
    )
)
