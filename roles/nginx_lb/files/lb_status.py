# The status of one load balancer, read on the host by tasks/status.yml
# (playbooks/status.yml) with the host's python3 -c. It changes nothing.
# Argument: a JSON object with site_file, state_file, cert, health_path,
# timeout. Prints one JSON object:
#   nginx          {active, enabled} of nginx.service
#   config_test    {ok, output} of `nginx -t -q`
#   servers        the upstream's servers as the site file has them, each
#                  {key, options, backup, drained, down, status, version,
#                  error}: a GET of the health path sent from this host
#                  (status 0 and error when nothing answered)
#   cert           {not_after, days_left} of the site's certificate, or null
import datetime
import http.client
import json
import re
import ssl
import subprocess
import sys

args = json.loads(sys.argv[1])


def run(*argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        return 127, str(error)
    return done.returncode, (done.stdout + done.stderr).strip()


def read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def health(key):
    host, _sep, port = key.rpartition(":")
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=args["timeout"])
    try:
        connection.request("GET", args["health_path"], headers={"Host": "status", "User-Agent": "lb-status"})
        response = connection.getresponse()
        body = response.read(4096)
        try:
            version = json.loads(body).get("version", "")
        except (ValueError, AttributeError):
            version = ""
        return {"status": response.status, "version": version, "error": ""}
    except OSError as error:
        return {"status": 0, "version": "", "error": str(error) or type(error).__name__}
    finally:
        connection.close()


result = {"nginx": {}, "config_test": {}, "servers": [], "cert": None}
result["nginx"]["active"] = run("systemctl", "is-active", "nginx")[1]
result["nginx"]["enabled"] = run("systemctl", "is-enabled", "nginx")[1]
code, output = run("nginx", "-t", "-q")
result["config_test"] = {"ok": code == 0, "output": output}

state = {}
text = read(args["state_file"])
if text:
    try:
        state = json.loads(text)
    except ValueError:
        state = {}
drained = set(state.get("drained", []))

site = read(args["site_file"]) or ""
upstream = re.search(r"^upstream\s+\S+\s*\{(.*?)^\}", site, re.S | re.M)
for line in (upstream.group(1) if upstream else "").splitlines():
    match = re.match(r"\s*server\s+(\S+)\s*(.*?);", line)
    if not match:
        continue
    key, options = match.group(1), match.group(2).split()
    server = {
        "key": key,
        "options": [option for option in options if option not in ("down", "backup")],
        "backup": "backup" in options,
        "drained": key in drained,
        "down": "down" in options and key not in drained,
    }
    server.update(health(key))
    result["servers"].append(server)

if args.get("cert"):
    pem = read(args["cert"])
    if pem:
        try:
            decoded = ssl._ssl._test_decode_cert(args["cert"])  # noqa: SLF001 - the stdlib's only certificate reader
            not_after = datetime.datetime.strptime(decoded["notAfter"], "%b %d %H:%M:%S %Y %Z").replace(
                tzinfo=datetime.timezone.utc  # noqa: UP017 - Python 3.10 (Ubuntu 22.04) has no datetime.UTC
            )
            left = not_after - datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - as above
            result["cert"] = {"not_after": not_after.strftime("%Y-%m-%d %H:%M UTC"), "days_left": left.days}
        except (ValueError, KeyError, OSError) as error:
            result["cert"] = {"not_after": "", "days_left": -1, "error": str(error)}

print(json.dumps(result))
