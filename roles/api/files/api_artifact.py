# The app as the api role installs it, on the controller (tasks/validate.yml
# checks, tasks/release.yml builds). api_source is one of:
#   a directory     the package itself, copied as it is (nothing to do here);
#   a wheel (.whl)  built by your CI; installed with its dependencies;
#   an sdist        (.tar.gz, .zip) built into a wheel here;
#   a git repository, with api_source_ref (branch, tag or commit): fetched
#                   here at that ref (hosts need no access to it) and built
#                   into a wheel.
# Argument: a JSON object with source, ref, module (api_module), cache_dir,
# build (false: check only, build nothing), pip_args (extra arguments of
# `pip wheel`, e.g. an index URL). Prints one JSON object: kind, wheel (the
# wheel's path, "" for a directory or when not built) and its sha256, name,
# version, commit (git) and error ("" when the source is usable).
import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

args = json.loads(sys.argv[1])
source, ref = str(args["source"]), str(args.get("ref") or "")
module, _colon, attribute = str(args["module"]).partition(":")
result = {"kind": "", "wheel": "", "sha256": "", "name": "", "version": "", "commit": "", "error": ""}


class Refused(Exception):
    pass


def module_paths():
    """Where the module's file sits in a source tree or a wheel."""
    base = module.replace(".", "/")
    return (base + ".py", base + "/__init__.py")


def defines(text):
    """Whether the module text defines `attribute` at top level."""
    name = re.escape(attribute)
    return bool(re.search(rf"^(?:{name}\s*(?::[^=\n]*)?=|(?:async\s+)?def\s+{name}\b|class\s+{name}\b)", text, re.M))


def check_module(found, what):
    """found: {relative path: text} of the candidate module files."""
    if not found:
        raise Refused(f"{what} has no module {module} ({' or '.join(module_paths())}) for api_module {args['module']}")
    path, text = next(iter(found.items()))
    if not defines(text):
        raise Refused(f"{what}: {path} defines no top-level `{attribute}` for api_module {args['module']}")


def run(*argv, cwd=None):
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise Refused(f"`{' '.join(argv)}` failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def wheel_metadata(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        meta = next((n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if meta is None:
            raise Refused(f"api_source {path} is not a wheel: it has no .dist-info/METADATA")
        headers = email.parser.Parser().parsestr(archive.read(meta).decode("utf-8", "replace"))
        found = {p: archive.read(p).decode("utf-8", "replace") for p in module_paths() if p in names}
    return headers["Name"], headers["Version"], found


def build_wheel(tree_or_sdist, key):
    """A wheel built (once per key) from a source tree or an sdist, with pip."""
    out = os.path.join(args["cache_dir"], "artifacts", key)
    wheels = [n for n in os.listdir(out) if n.endswith(".whl")] if os.path.isdir(out) else []
    if not wheels:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        partial = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=key + ".")
        try:
            run(
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                *args.get("pip_args", []),
                "--wheel-dir",
                partial,
                tree_or_sdist,
            )
            shutil.rmtree(out, ignore_errors=True)
            os.replace(partial, out)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        wheels = [n for n in os.listdir(out) if n.endswith(".whl")]
    if len(wheels) != 1:
        raise Refused(f"building {tree_or_sdist} gave {len(wheels)} wheels, expected one")
    return os.path.join(out, wheels[0])


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def sdist_members(path):
    """{relative path inside the project: text} of the module candidates, and PKG-INFO."""
    wanted = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            items = [(n, lambda n=n: archive.read(n)) for n in archive.namelist()]
            return _pick(items, wanted)
    with tarfile.open(path) as archive:
        items = [(m.name, lambda m=m: archive.extractfile(m).read()) for m in archive.getmembers() if m.isfile()]
        return _pick(items, wanted)


def _pick(items, wanted):
    info = ""
    for name, read in items:
        inner = name.split("/", 1)[1] if "/" in name else name
        for candidate in module_paths():
            if inner in (candidate, "src/" + candidate):
                wanted[inner] = read().decode("utf-8", "replace")
        if inner == "PKG-INFO":
            info = read().decode("utf-8", "replace")
    return wanted, info


try:
    if ref:
        result["kind"] = "git"
        listed = run("git", "ls-remote", source)
        refs = dict(reversed(line.split("\t")) for line in listed.splitlines() if "\t" in line)
        names = (ref, f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}")
        commit = next((refs[name] for name in names if name in refs), "")
        commit = commit or (ref if re.fullmatch(r"[0-9a-f]{40}", ref) else "")
        if not commit:
            tags = sorted({n[len("refs/tags/") :].removesuffix("^{}") for n in refs if n.startswith("refs/tags/")})
            heads = sorted(n[len("refs/heads/") :] for n in refs if n.startswith("refs/heads/"))
            raise Refused(
                f"api_source_ref {ref} is no branch, tag or commit of {source}"
                f" (branches: {', '.join(heads) or 'none'}; tags: {', '.join(tags) or 'none'})"
            )
        result["commit"] = commit
        key = "git-" + hashlib.sha256(source.encode()).hexdigest()[:12] + "-" + commit[:12]
        tree = os.path.join(args["cache_dir"], "checkouts", key)
        if not os.path.isdir(os.path.join(tree, ".git")):
            os.makedirs(os.path.dirname(tree), exist_ok=True)
            partial = tempfile.mkdtemp(dir=os.path.dirname(tree), prefix=key + ".")
            try:
                run("git", "init", "--quiet", partial)
                run("git", "fetch", "--quiet", "--depth", "1", source, commit, cwd=partial)
                run("git", "checkout", "--quiet", "FETCH_HEAD", cwd=partial)
                shutil.rmtree(tree, ignore_errors=True)
                os.replace(partial, tree)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        found = {}
        for candidate in module_paths():
            for prefix in ("", "src/"):
                path = os.path.join(tree, prefix + candidate)
                if os.path.isfile(path) and not found:
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        found[prefix + candidate] = handle.read()
        check_module(found, f"{source} at {ref}")
        if args.get("build"):
            result["wheel"] = build_wheel(tree, key)
    elif os.path.isdir(source):
        result["kind"] = "directory"
    elif not os.path.exists(source):
        raise Refused(f"api_source {source} does not exist on the controller")
    elif source.endswith(".whl"):
        result["kind"] = "wheel"
        result["name"], result["version"], found = wheel_metadata(source)
        check_module(found, f"the wheel {os.path.basename(source)}")
        result["wheel"] = source
    elif source.endswith((".tar.gz", ".tgz", ".zip", ".tar.bz2")):
        result["kind"] = "sdist"
        found, info = sdist_members(source)
        if not info:
            raise Refused(f"api_source {source} is not an sdist: it has no PKG-INFO")
        headers = email.parser.Parser().parsestr(info)
        result["name"], result["version"] = headers["Name"] or "", headers["Version"] or ""
        check_module(found, f"the sdist {os.path.basename(source)}")
        if args.get("build"):
            result["wheel"] = build_wheel(source, "sdist-" + digest(source)[:24])
    else:
        raise Refused(
            f"api_source {source} is no directory, wheel (.whl) or sdist (.tar.gz, .zip);"
            " a git repository needs api_source_ref"
        )
    if result["wheel"] and result["kind"] != "wheel":
        result["name"], result["version"], _found = wheel_metadata(result["wheel"])
    if result["wheel"]:
        result["sha256"] = digest(result["wheel"])
except (Refused, OSError, zipfile.BadZipFile, tarfile.TarError) as error:
    result["error"] = str(error)
print(json.dumps(result))
