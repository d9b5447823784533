# Read, in one call, what the compose_stack role needs to know about a Docker
# host (tasks/install.yml runs it with the host's python3 -c). It changes
# nothing but its own cache file, and only when told to write it (not in check
# mode). Argument: a JSON object with
#   project, compose        the project name and the compose.yaml this run wants
#   packages, files         Debian packages to check; files to read as "sha1 uid gid mode"
#   images                  {key: reference}: the image id of each, "" when absent
#   build_label             the label holding the build id of the API image (images.api)
#   cache, write_cache      where the nginx version and Python of the base
#                           images (images.nginx, images.python) are kept, per image id
# Prints one JSON object: missing_packages, docker (active, compose), files,
# images, api_build, nginx_version, python {python, machine, glibc},
# wanted {service: config hash}, services {service: {hash, state, health,
# image, pid}}, status {service: missing|stopped|changed|current}, orphans,
# network {internal, subnets} of the existing backend network ({} if none).
import hashlib
import json
import os
import subprocess
import sys

args = json.loads(sys.argv[1])
out = {}


def run(argv, stdin=None):
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 1, ""
    return done.returncode, done.stdout


def record(path):
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            digest = hashlib.sha1(handle.read()).hexdigest()
    except OSError:
        return ""
    return f"{digest} {st.st_uid} {st.st_gid} {st.st_mode & 0o7777:o}"


missing = []
for package in args["packages"]:
    rc, status = run(["dpkg-query", "-W", "-f", "${db:Status-Status}", package])
    if status != "installed":
        missing.append(package)
out["missing_packages"] = missing
out["files"] = {path: record(path) for path in args["files"]}

rc, active = run(["systemctl", "is-active", "docker"])
rc_compose, compose = run(["docker", "compose", "version", "--short"])
out["docker"] = {"active": active.strip(), "compose": compose.strip() if rc_compose == 0 else ""}
docker = out["docker"]["active"] == "active"

# One inspect per image: its id and, for the API image, its build label.
images = {}
out["api_build"] = ""
for key, ref in args["images"].items():
    label = '{{{{ index .Config.Labels "{}" }}}}'.format(args["build_label"]) if key == "api" else ""
    rc, found = run(["docker", "image", "inspect", "-f", "{{.Id}} " + label, ref]) if docker else (1, "")
    image_id, _sep, build = found.strip().partition(" ")
    images[key] = image_id if rc == 0 else ""
    if key == "api" and rc == 0:
        out["api_build"] = build.strip().replace("<no value>", "")
out["images"] = images

try:
    with open(args["cache"]) as handle:
        cache = json.load(handle)
except (OSError, ValueError):
    cache = {}
stored = dict(cache)
fresh = {}
PYTHON = "import platform,sys;print(sys.version_info[0],sys.version_info[1],platform.machine(),platform.libc_ver()[1])"
out["nginx_version"] = ""
out["python"] = {}
if images.get("nginx"):
    key = images["nginx"]
    if key not in cache:
        # nginx -v writes to stderr.
        nginx_v = ["docker", "run", "--rm", "--entrypoint", "sh", args["images"]["nginx"], "-c", "nginx -v 2>&1"]
        rc, version = run(nginx_v)
        cache[key] = version.strip() if rc == 0 else ""
    fresh[key] = cache[key]
    out["nginx_version"] = cache[key]
if images.get("python"):
    key = images["python"]
    if key not in cache:
        rc, line = run(["docker", "run", "--rm", "--entrypoint", "python3", args["images"]["python"], "-c", PYTHON])
        cache[key] = line.split() if rc == 0 else []
    fresh[key] = cache[key]
    if len(cache[key]) == 4:
        major, minor, machine, glibc = cache[key]
        out["python"] = {"python": major + minor, "machine": machine, "glibc": glibc}
if args["write_cache"] and fresh and fresh != stored:
    os.makedirs(os.path.dirname(args["cache"]), exist_ok=True)
    with open(args["cache"], "w") as handle:
        json.dump(fresh, handle)

out["wanted"] = {}
out["services"] = {}
if docker and out["docker"]["compose"]:
    rc, hashes = run(["docker", "compose", "-p", args["project"], "-f", "-", "config", "--hash", "*"], args["compose"])
    out["wanted"] = dict(line.split(None, 1) for line in hashes.splitlines() if " " in line) if rc == 0 else {}
    rc, ids = run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=" + args["project"]])
    if rc == 0 and ids.split():
        rc, inspected = run(["docker", "inspect"] + ids.split())
        for container in json.loads(inspected) if rc == 0 else []:
            labels = container["Config"]["Labels"] or {}
            state = container["State"]
            out["services"][labels.get("com.docker.compose.service", "?")] = {
                "hash": labels.get("com.docker.compose.config-hash", ""),
                "state": state["Status"],
                "health": (state.get("Health") or {}).get("Status", ""),
                "image": container["Image"],
                "pid": state["Pid"],
            }
# The project's backend network as it exists: Compose never changes an
# existing network, so a changed subnet or internal flag must be seen here.
out["network"] = {}
if docker:
    rc, network = run(["docker", "network", "inspect", args["project"] + "_backend"])
    if rc == 0:
        found = json.loads(network)[0]
        subnets = [c.get("Subnet", "") for c in (found.get("IPAM") or {}).get("Config") or []]
        out["network"] = {"internal": found.get("Internal", False), "subnets": subnets}

# What `up` would do to each wanted service, and the services compose.yaml
# no longer has.
out["status"] = {}
for name, wanted in out["wanted"].items():
    have = out["services"].get(name)
    if have is None:
        out["status"][name] = "missing"
    elif have["state"] != "running":
        out["status"][name] = "stopped"
    elif have["hash"] != wanted:
        out["status"][name] = "changed"
    else:
        out["status"][name] = "current"
out["orphans"] = sorted(set(out["services"]) - set(out["wanted"]))
print(json.dumps(out))
