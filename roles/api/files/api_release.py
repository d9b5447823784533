# Build a release of the app on the controller (tasks/install.yml runs it):
# one tar file holding the app source directory under src/ (empty for an
# artifact), the requirements and, for a wheelhouse install, the wheels under
# wheels/ (an artifact's wheel always). Its name is a digest of what it holds,
# so an unchanged release is built once and compared as one file. Argument:
# a JSON object with source (a directory, or "" for an artifact),
# requirements (a file, or ""), artifact (the app's wheel, or ""),
# artifact_requirement (its `name==version`, added to the requirements),
# wheelhouse (a tar file, or "" for an index install), target (extra text for
# the digest), cache_dir. Prints {"id", "path", "sha1", "src_digest"}; sha1 is
# the file's checksum as Ansible computes it.
# src_digest uses the same walk as files/api_probe.py, which computes it on the
# host, so a hand-edited install is found and replaced.
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

args = json.loads(sys.argv[1])
SKIP = ("__pycache__", ".pyc")


def tree(root):
    """(relative path, bytes) of every file under root, sorted, caches left out."""
    files = []
    for base, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP]
        for name in names:
            if not name.endswith(SKIP):
                path = os.path.join(base, name)
                with open(path, "rb") as handle:
                    files.append((os.path.relpath(path, root), handle.read()))
    return sorted(files)


def digest(files):
    total = hashlib.sha256()
    for relative, data in files:
        total.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
    return total.hexdigest()


# Under src/ the source keeps its directory name, the package uvicorn imports.
source = []
if args["source"]:
    package = os.path.basename(os.path.normpath(args["source"]))
    source = [(os.path.join(package, relative), data) for relative, data in tree(args["source"])]
src_digest = digest(source)
requirements = b""
if args["requirements"]:
    with open(args["requirements"], "rb") as handle:
        requirements = handle.read()
artifact = b""
if args.get("artifact"):
    with open(args["artifact"], "rb") as handle:
        artifact = handle.read()
    requirements = requirements.rstrip(b"\n") + b"\n" + args["artifact_requirement"].encode() + b"\n"
    requirements = requirements.lstrip(b"\n")
release = hashlib.sha256(
    "\n".join(
        [
            src_digest,
            hashlib.sha256(requirements).hexdigest(),
            hashlib.sha256(artifact).hexdigest() if artifact else "",
            os.path.basename(args["wheelhouse"]),
            args["target"],
        ]
    ).encode()
).hexdigest()[:16]
path = os.path.join(args["cache_dir"], f"release-{release}.tar")


def add(archive, name, data=None, mode=0o644):
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
    if data is None:
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    else:
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


if not os.path.exists(path):
    os.makedirs(args["cache_dir"], exist_ok=True)
    # A private temporary file and an atomic rename: runs at once never see a half.
    handle, partial = tempfile.mkstemp(dir=args["cache_dir"], suffix=".partial")
    os.close(handle)
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        add(archive, "src", mode=0o755)
        for directory in sorted({os.path.dirname(relative) for relative, _data in source} - {""}):
            for depth in range(directory.count("/") + 1):
                name = "src/" + "/".join(directory.split("/")[: depth + 1])
                if name not in archive.getnames():
                    add(archive, name, mode=0o755)
        for relative, data in source:
            add(archive, f"src/{relative}", data)
        add(archive, "requirements.txt", requirements)
        add(archive, "wheels", mode=0o755)
        if args["wheelhouse"]:
            with tarfile.open(args["wheelhouse"]) as wheels:
                for member in sorted(wheels.getmembers(), key=lambda m: m.name):
                    if member.isfile() and os.path.basename(member.name) != os.path.basename(args.get("artifact", "")):
                        add(archive, "wheels/" + os.path.basename(member.name), wheels.extractfile(member).read())
        if artifact:
            add(archive, "wheels/" + os.path.basename(args["artifact"]), artifact)
    os.chmod(partial, 0o644)
    os.replace(partial, path)

with open(path, "rb") as handle:
    sha1 = hashlib.sha1(handle.read()).hexdigest()  # noqa: S324 - Ansible's own file checksum
print(json.dumps({"id": release, "path": path, "sha1": sha1, "src_digest": src_digest}))
