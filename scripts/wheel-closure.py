"""scripts/wheel-closure.py: the Python half of scripts/wheel-closure (read that first).

Modes:
  plan LOCK CACHE SPEC.json      (host, /usr/bin/python3.11) checks every wheel of the lock against
                                 its hash and this Python, reads Requires-Dist, writes the spec the
                                 Nix expression builds from
  install                        (Nix builder, the store's python) one package from its wheel
  env                            (Nix builder, the store's python) the python.withPackages-style env
  check STORE_LD SPEC PATH...    (host) every NEEDED of every ELF file resolves in the store

Only the standard library in the builder modes; `plan` also uses pip's vendored `packaging`.
Errors are one line naming the package and the file, and exit 1.
"""

import configparser
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import zipfile

# Provided by the driver at run time (the container runtime mounts them), never by the image.
DRIVER_LIBS = {"libcuda.so.1", "libnvidia-ml.so.1"}
PY_TAG = "cp311"


def die(msg):
    print(f"wheel-closure: {msg}", file=sys.stderr)
    sys.exit(1)


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


# --- plan (host) ---------------------------------------------------------------------------------


def read_lock(lock):
    """(name, version, [sha256…]) for every `name==version --hash=sha256:…` entry of a pip lock."""
    text = open(lock, encoding="utf-8").read()
    entries, lineno_of = [], {}
    logical, start = "", 0
    for i, line in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", line)
        if not logical:
            start = i
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)\s*(.*)$", logical)
            if not m:
                die(f"{lock}:{start}: not a pinned requirement (`name==version --hash=sha256:…`): {logical.strip()}")
            hashes = re.findall(r"--hash[= ]sha256:([0-9a-f]{64})", m.group(3))
            if not hashes:
                die(f"{lock}:{start}: {m.group(1)} has no --hash=sha256:… (the lock needs one per package)")
            name = normalize(m.group(1))
            if name in lineno_of:
                die(f"{lock}:{start}: {name} is listed twice (also line {lineno_of[name]})")
            lineno_of[name] = start
            entries.append((name, m.group(2), hashes, start))
        logical = ""
    return entries


def wheel_tags(filename):
    """(dist, version, python tags, abi tags, platform tags) from a wheel file name."""
    parts = filename[:-4].split("-")
    if len(parts) == 6:  # with a build tag
        parts = parts[:2] + parts[3:]
    if len(parts) != 5:
        return None
    dist, version, py, abi, plat = parts
    return normalize(dist), version, py.split("."), abi.split("."), plat.split(".")


def compatible(py, abi, plat):
    py_ok = PY_TAG in py or "py3" in py or "py311" in py or (
        "abi3" in abi and any(re.fullmatch(r"cp3(\d+)", t) and int(t[3:]) <= 11 for t in py)
    )
    abi_ok = bool({"none", "abi3", PY_TAG} & set(abi))
    plat_ok = "any" in plat or any(re.fullmatch(r"(manylinux\w*|linux)_x86_64", p) for p in plat)
    return py_ok and abi_ok and plat_ok


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def plan(lock, cache, spec_out):
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

    entries = read_lock(lock)
    names = {n: v for n, v, _, _ in entries}
    # `# wheel-closure: ignore-missing PKG LIB… -- why`: NEEDED libraries of optional parts of a
    # package that no store path provides on purpose (nixpkgs' autoPatchelfIgnoreMissingDeps).
    ignore = {}
    for i, line in enumerate(open(lock, encoding="utf-8"), 1):
        m = re.match(r"^#\s*wheel-closure:\s*ignore-missing\s+(\S+)\s+(.*?)\s*(--.*)?$", line)
        if m:
            pkg = normalize(m.group(1))
            if pkg not in names:
                die(f"{lock}:{i}: ignore-missing names {pkg}, which is not in the set")
            ignore.setdefault(pkg, []).extend(m.group(2).split())
    by_dist = {}
    for f in sorted(os.listdir(cache)):
        t = f.endswith(".whl") and wheel_tags(f)
        if t:
            by_dist.setdefault((t[0], t[1]), []).append(f)
    env = default_environment()
    env.update({"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
                "platform_machine": "x86_64", "implementation_name": "cpython",
                "platform_python_implementation": "CPython", "os_name": "posix"})
    packages, top_owners = [], {}
    for name, version, hashes, line in entries:
        files = [f for (d, v), fs in by_dist.items() if d == name and Version(v) == Version(version) for f in fs]
        where = f"{name}=={version} ({lock}:{line})"
        if not files:
            die(f"{where}: no wheel in {cache} (pip download found none for CPython 3.11 on x86_64 Linux?)")
        fits = [f for f in files if compatible(*wheel_tags(f)[2:])]
        if not fits:
            die(f"{where}: no wheel for CPython 3.11 on x86_64 Linux: {', '.join(files)}")
        chosen = None
        for f in fits:
            digest = sha256_file(os.path.join(cache, f))
            if digest in hashes:
                chosen = (f, digest)
                break
        if not chosen:
            die(f"{where}: hash mismatch: {os.path.join(cache, fits[0])} has sha256 {digest}, the lock says "
                f"{' or '.join(hashes)}")
        f, digest = chosen
        with zipfile.ZipFile(os.path.join(cache, f)) as z:
            tops = {n.split("/")[0] for n in z.namelist() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*/__init__\.py", n)}
            for t in tops:
                top_owners.setdefault(t, []).append(name)
            meta = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(meta) != 1:
                die(f"{where}: {f} has {len(meta)} */*.dist-info/METADATA files, not one")
            metadata = z.read(meta[0]).decode("utf-8", "replace").split("\n\n", 1)[0]
        requires = []
        for m in re.finditer(r"^Requires-Dist:\s*(.+)$", metadata, re.M):
            req = Requirement(m.group(1).strip())
            if req.marker and not req.marker.evaluate(dict(env, extra="")):
                continue
            dep = normalize(req.name)
            if dep not in names:
                die(f"{where}: {f} requires {req} (Requires-Dist), which is not in the set {lock}")
            if req.specifier and not req.specifier.contains(names[dep], prereleases=True):
                die(f"{where}: {f} requires {req} (Requires-Dist), but the set has {dep}=={names[dep]}")
            if dep != name and dep not in requires:
                requires.append(dep)
        packages.append({"name": name, "version": version, "file": f, "path": os.path.join(cache, f),
                         "sha256": digest, "requires": sorted(requires), "ignoreMissing": ignore.get(name, [])})
    # A top-level package several wheels ship (`nvidia/__init__.py` in every nvidia-* wheel) is a
    # namespace: pip merges them into one directory, separate store paths cannot, so each package
    # drops that __init__.py and Python joins the directories (nixpkgs' pythonNamespaces).
    shared = {t for t, owners in top_owners.items() if len(owners) > 1}
    for p in packages:
        p["namespaces"] = sorted(t for t in shared if p["name"] in top_owners[t])
    # The Requires-Dist closure of each package: the store paths its ELF files may link against.
    reqs = {p["name"]: p["requires"] for p in packages}
    for p in packages:
        seen, stack = set(), list(p["requires"])
        while stack:
            d = stack.pop()
            if d not in seen:
                seen.add(d)
                stack.extend(reqs[d])
        p["closure"] = sorted(seen)
    tmp = spec_out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump({"packages": packages}, out, indent=1, sort_keys=True)
        out.write("\n")
    if os.path.exists(spec_out) and open(spec_out, "rb").read() == open(tmp, "rb").read():
        os.remove(tmp)
    else:
        os.replace(tmp, spec_out)
    print(f"wheel-closure: {len(packages)} wheels checked against {lock}", file=sys.stderr)


# --- install (Nix builder) -----------------------------------------------------------------------


def is_elf(path):
    """An x86-64 executable or shared object (not a CUDA cubin, an object file or a symlink)."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(20)
    return (len(head) == 20 and head[:4] == b"\x7fELF" and head[4] == 2
            and int.from_bytes(head[16:18], "little") in (2, 3) and int.from_bytes(head[18:20], "little") == 62)


def run(*args):
    r = subprocess.run(args, capture_output=True, text=True)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def console_script(python, sitedirs, module, attr):
    adds = "".join(f"site.addsitedir({d!r})\n" for d in sitedirs)
    return (f"#!{python}\n# Generated by scripts/wheel-closure from the wheel's entry_points.txt.\n"
            f"import re\nimport site\nimport sys\n{adds}from {module} import {attr.split('.')[0]}\n\n"
            f"if __name__ == '__main__':\n"
            f"    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            f"    sys.exit({attr}())\n")


def install():
    e = os.environ
    out, python, wheel, name = e["out"], e["python"], e["wheel"], e["name"]
    short = e["pyShort"]
    site = os.path.join(out, "lib", f"python{short}", "site-packages")
    pyexe = os.path.join(python, "bin", f"python{short}")
    patchelf = os.path.join(e["patchelf"], "bin", "patchelf")
    deps = e.get("deps", "").split()
    ignore_missing = set(e.get("ignoreMissing", "").split())
    base_libs = e["baseLibs"].split()
    os.makedirs(site)
    # 1. Unpack, with the modes the wheel records; `.data/` goes where an installer puts it.
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            rel = info.filename
            if rel.endswith("/") or rel.startswith("/") or ".." in rel.split("/"):
                continue
            m = re.match(r"^[^/]+\.data/(scripts|purelib|platlib|headers|data)/(.+)$", rel)
            if not m:
                dest = os.path.join(site, rel)
            elif m.group(1) == "scripts":
                dest = os.path.join(out, "bin", m.group(2))
            elif m.group(1) == "headers":
                dest = os.path.join(out, "include", f"python{short}", name, m.group(2))
            elif m.group(1) == "data":
                dest = os.path.join(out, m.group(2))
            else:
                dest = os.path.join(site, m.group(2))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, 0o755 if mode & 0o111 else 0o644)
            if m and m.group(1) == "scripts":
                with open(dest, "rb") as f:
                    data = f.read()
                if re.match(rb"^#!python[0-9.]*w?\s", data):
                    os.chmod(dest, 0o755)
                    with open(dest, "wb") as f:
                        f.write(b"#!" + pyexe.encode() + data[data.index(b"\n"):])
    for ns in e.get("namespaces", "").split():
        init = os.path.join(site, ns, "__init__.py")
        with open(init, "rb") as f:
            code = re.sub(rb"(?m)^\s*#.*$", b"", f.read()).strip()
        if code and not re.fullmatch(rb"__path__\s*=\s*__import__\(.pkgutil.\)\.extend_path\(__path__,\s*__name__\)", code):
            die(f"{name}: {ns}/__init__.py, which other wheels of the set also ship, holds code: it cannot become "
                f"a namespace package")
        os.remove(init)
    dist_info = [d for d in os.listdir(site) if d.endswith(".dist-info")]
    if len(dist_info) != 1:
        die(f"{name}: {os.path.basename(wheel)} holds {len(dist_info)} .dist-info directories, not one")
    dist_info = os.path.join(site, dist_info[0])
    with open(os.path.join(dist_info, "INSTALLER"), "w") as f:
        f.write("nixoci wheel-closure\n")
    # 2. Console scripts with the store's python, seeing the package and its Requires-Dist closure.
    ep = os.path.join(dist_info, "entry_points.txt")
    if os.path.exists(ep):
        cp = configparser.ConfigParser(interpolation=None, delimiters=("=",))
        cp.optionxform = str
        cp.read(ep)
        sitedirs = [site] + [os.path.join(d, "lib", f"python{short}", "site-packages") for d in deps]
        for section in ("console_scripts", "gui_scripts"):
            for script, target in (cp.items(section) if cp.has_section(section) else []):
                module, _, attr = target.split("[")[0].strip().partition(":")
                path = os.path.join(out, "bin", script)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(console_script(pyexe, sitedirs, module.strip(), attr.strip() or "main"))
                os.chmod(path, 0o755)
    # 3. ELF files: the store's loader, RUNPATH = the store directories providing each NEEDED.
    provided = {}  # soname -> [dir…], in search order: this package, its closure, the base libraries

    def index(root, tag):
        for dirpath, _, files in os.walk(root):
            for fn in files:
                if ".so" in fn:
                    provided.setdefault(fn, []).append((tag, dirpath))

    index(out, "self")
    for d in deps:
        index(d, "dep")
    for d in base_libs:
        index(d, "base")
    dep_sites = [(d, os.path.join(d, "lib", f"python{short}", "site-packages")) for d in deps]
    ld = os.path.join(e["glibc"], "lib", "ld-linux-x86-64.so.2")
    n_elf, all_missing = 0, []
    for dirpath, _, files in sorted(os.walk(out)):
        for fn in sorted(files):
            path = os.path.join(dirpath, fn)
            if not is_elf(path):
                continue
            rc, needed, err = run(patchelf, "--print-needed", path)
            if rc != 0:
                continue  # not a dynamic object (static executables, object files)
            n_elf += 1
            rel = os.path.relpath(path, out)
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
            rc, interp, _ = run(patchelf, "--print-interpreter", path)
            if rc == 0 and interp:
                rc, _, err = run(patchelf, "--set-interpreter", ld, path)
                if rc != 0:
                    die(f"{name}: {rel}: patchelf --set-interpreter failed: {err}")
            rc, old, _ = run(patchelf, "--print-rpath", path)
            dirs = []
            # Old $ORIGIN entries that land in this package or a dependency's site-packages stay
            # (libraries dlopen siblings through them: cuDNN's engines, torch's CUDA libraries).
            for entry in (old.split(":") if old else []):
                if "$ORIGIN" not in entry and "${ORIGIN}" not in entry:
                    continue
                target = os.path.normpath(entry.replace("${ORIGIN}", dirpath).replace("$ORIGIN", dirpath))
                if os.path.isdir(target):
                    dirs.append(target)
                elif target.startswith(site + "/"):
                    inner = os.path.relpath(target, site)
                    dirs.extend(os.path.join(s, inner) for _, s in dep_sites if os.path.isdir(os.path.join(s, inner)))
            missing = []
            for lib in needed.split():
                if lib in DRIVER_LIBS or lib in ignore_missing or lib.startswith("ld-linux"):
                    continue
                if os.path.exists(os.path.join(dirpath, lib)):
                    dirs.append(dirpath)
                    continue
                where = provided.get(lib)
                if not where:
                    missing.append(lib)
                    continue
                dirs.append(where[0][1])
            if missing:
                all_missing.append(f"{rel} needs {', '.join(missing)}")
            seen, rpath = set(), []
            for d in dirs:
                if d not in seen:
                    seen.add(d)
                    rpath.append(d)
            rc, _, err = run(patchelf, "--set-rpath", ":".join(rpath), path)
            if rc != 0:
                die(f"{name}: {rel}: patchelf --set-rpath failed: {err}")
    if all_missing:
        die(f"{name}: NEEDED libraries no store path provides (searched: this package, its Requires-Dist "
            f"closure [{', '.join(os.path.basename(d) for d in deps) or 'none'}], glibc, the gcc and python "
            f"libraries; a lock line `# wheel-closure: ignore-missing {e['pname']} LIB… -- why` waives optional "
            f"ones):\n  " + "\n  ".join(all_missing))
    # 4. Requires-Dist → propagated-build-inputs (real references), then bytecode as nixpkgs does.
    os.makedirs(os.path.join(out, "nix-support"))
    with open(os.path.join(out, "nix-support", "propagated-build-inputs"), "w") as f:
        f.write(" ".join(e.get("propagated", "").split()) + "\n")
    subprocess.run([pyexe, "-I", "-m", "compileall", "-q", "-q", "-j", "0", "--invalidation-mode",
                    "unchecked-hash", site], check=False)
    print(f"{name}: {n_elf} ELF files patched", file=sys.stderr)


def make_env():
    """python.withPackages without a shell: a venv over the store's interpreter whose
    site-packages holds a .pth naming every package's site-packages; bin/ has every package's
    console scripts, run by the env's python."""
    e = os.environ
    out, python, short = e["out"], e["python"], e["pyShort"]
    packages = e["packages"].split()
    site = os.path.join(out, "lib", f"python{short}", "site-packages")
    bindir = os.path.join(out, "bin")
    os.makedirs(site)
    os.makedirs(bindir)
    for n in ("python3", f"python{short}", "python"):
        os.symlink(os.path.join(python, "bin", f"python{short}"), os.path.join(bindir, n))
    with open(os.path.join(out, "pyvenv.cfg"), "w") as f:
        f.write(f"home = {python}/bin\ninclude-system-site-packages = false\nversion = {e['pyVersion']}\n")
    with open(os.path.join(site, "nixoci-env.pth"), "w") as f:
        for p in packages:
            f.write(os.path.join(p, "lib", f"python{short}", "site-packages") + "\n")
    envpy = os.path.join(bindir, f"python{short}").encode()
    for p in packages:
        pbin = os.path.join(p, "bin")
        for fn in sorted(os.listdir(pbin)) if os.path.isdir(pbin) else []:
            dest = os.path.join(bindir, fn)
            if os.path.lexists(dest):
                continue
            with open(os.path.join(pbin, fn), "rb") as f:
                data = f.read()
            if data.startswith(b"#!" + python.encode()):
                with open(dest, "wb") as f:
                    f.write(b"#!" + envpy + data[data.index(b"\n"):])
                os.chmod(dest, 0o755)
            else:
                os.symlink(os.path.join(pbin, fn), dest)


# --- check (host, after the build) ---------------------------------------------------------------


def check(store_ld, spec, paths):
    """Asks the store's own loader (no ld.so.cache) to resolve every ELF file of `paths`; the
    driver's libraries and a package's `ignore-missing` ones (from the spec) may stay unresolved."""
    allowed_by_name = {}
    for p in json.load(open(spec))["packages"]:
        allowed_by_name[f"python3.11-{p['name']}-{p['version']}"] = set(p.get("ignoreMissing", []))
    bad, n, waived = [], 0, 0
    for root in paths:
        allowed = DRIVER_LIBS | allowed_by_name.get(os.path.basename(root).split("-", 1)[1], set())
        for dirpath, _, files in os.walk(root):
            for fn in files:
                path = os.path.join(dirpath, fn)
                if not is_elf(path):
                    continue
                r = subprocess.run([store_ld, "--inhibit-cache", "--list", path], capture_output=True, text=True)
                if "statically linked" in r.stdout + r.stderr or "not a dynamic" in r.stdout + r.stderr:
                    continue
                n += 1
                for line in r.stdout.splitlines():
                    parts = line.split()
                    if not parts or parts[0] in allowed:
                        waived += parts[0] not in DRIVER_LIBS
                        continue
                    if "not found" in line or ("=>" in parts and not parts[parts.index("=>") + 1].startswith("/nix/store/")):
                        bad.append(f"{path}: {line.strip()}")
                if r.returncode != 0 and not r.stdout.strip():
                    # The loader stops at the first library it cannot open. One the lock waives (or
                    # the driver's): check this file's NEEDED against its RUNPATH ourselves; the
                    # providers are ELF files of the closure, checked by the loader in their turn.
                    m = re.search(r"error while loading shared libraries: ([^:]+):", r.stderr)
                    if not (m and m.group(1) in allowed):
                        bad.append(f"{path}: the store's loader failed: {r.stderr.strip()}")
                        continue
                    waived += m.group(1) not in DRIVER_LIBS
                    needed = subprocess.run(["patchelf", "--print-needed", path], capture_output=True, text=True)
                    rpath = subprocess.run(["patchelf", "--print-rpath", path], capture_output=True, text=True)
                    dirs = [d for d in rpath.stdout.strip().split(":") if d]
                    for lib in needed.stdout.split():
                        if lib in allowed or lib.startswith("ld-linux"):
                            continue
                        if not any(d.startswith("/nix/store/") and os.path.exists(os.path.join(d, lib)) for d in dirs):
                            bad.append(f"{path}: {lib} is in none of its RUNPATH directories {dirs}")
    if bad:
        die("libraries that do not resolve inside the closure:\n  " + "\n  ".join(bad[:50]))
    print(f"wheel-closure: the store's loader resolves every NEEDED of {n} ELF files "
          f"(except {', '.join(sorted(DRIVER_LIBS))}; {waived} ignore-missing by the lock)", file=sys.stderr)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "plan" and len(sys.argv) == 5:
        plan(*sys.argv[2:])
    elif mode == "install":
        install()
    elif mode == "env":
        make_env()
    elif mode == "check" and len(sys.argv) >= 4:
        check(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        die(f"usage: {sys.argv[0]} plan LOCK CACHE SPEC | install | env | check STORE_LD SPEC PATH...")
