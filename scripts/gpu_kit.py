"""The Python half of the GPU kit (scripts/gpu-prepare.sh, scripts/gpu-check.sh, make gpu-dry-run).

The GPU machine holds its own PyTorch stack (scripts/gpu-target.txt) and reaches no registry, so
what featx needs beyond that travels as files in one folder, the kit. Subcommands:

- ``carry`` (build machine, network): downloads the wheels featx needs there and the target
  lacks or holds too old, with their dependency closure, for one CPython version.
- ``unpack-debs`` (GPU machine): unpacks Debian packages into a private prefix, without dpkg.
- ``install`` (GPU machine, no network): installs from the kit's wheels into a private folder
  exactly the requirements the running interpreter does not already satisfy, and fails naming
  any that neither the machine nor the kit satisfies.
- ``emulate`` (dry run): makes a virtual environment holding only the target's packages, linked
  from the environment that runs this command, to stand in for the GPU machine's interpreter.
- ``summary`` (both): writes gpu-check.sh's summary.md from its steps and result files.

Only the standard library and ``packaging`` (a dependency of pytest and pip, present on both
machines) are used.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import io
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
import venv
from collections.abc import Iterable, Iterator
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
TARGET_PACKAGES = ROOT / "scripts" / "gpu-target.txt"
CHECK_EXTRAS = ("cpu", "torch")
"""featx's extras the GPU check runs: the runtime with CPU ONNX Runtime (the machine's) and the
PyTorch side (fuse, bench, kernels)."""
CHECK_TOOLS = ("pytest", "pytest-benchmark", "pytest-xdist")
"""Test tools the check runs, with the versions featx's test extras ask for."""


def check_requirements() -> list[Requirement]:
    """What featx's GPU check needs, read from pyproject.toml: the package's dependencies, the
    CHECK_EXTRAS, the build requirements (the build runs without isolation) and CHECK_TOOLS."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    lines = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for extra in CHECK_EXTRAS:
        lines += extras[extra]
    in_extras = {
        canonicalize_name(Requirement(line).name): line
        for extra_lines in extras.values()
        for line in extra_lines
    }
    for tool in CHECK_TOOLS:
        if tool not in in_extras:
            raise SystemExit(f"gpu_kit: no extra in pyproject.toml names {tool}")
        lines.append(in_extras[tool])
    requirements = [Requirement(line) for line in lines]
    return [req for req in requirements if req.marker is None or req.marker.evaluate()]


def target_packages() -> dict[str, Version]:
    """scripts/gpu-target.txt: the GPU machine's own packages and their versions."""
    packages = {}
    for line in TARGET_PACKAGES.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            name, version = entry.split("==")
            packages[canonicalize_name(name)] = Version(version)
    return packages


def installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def requires(name: str) -> list[Requirement]:
    """An installed distribution's unconditional requirements (markers evaluated here)."""
    found = []
    for line in importlib.metadata.requires(name) or ():
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found.append(req)
    return found


# ---------------------------------------------------------------------------------------- carry
def carried_requirements() -> list[Requirement]:
    """featx's check requirements the target lacks or holds at a version they refuse."""
    target = target_packages()
    carried = []
    for req in check_requirements():
        version = target.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            carried.append(req)
    return carried


def resolve(requirements: list[Requirement], python_version: str) -> dict[str, str]:
    """pip's resolution of ``requirements`` for CPython ``python_version`` on manylinux x86-64,
    cut to what they need beyond the target's packages: {name: version}. The target's packages
    are pinned at its versions (so a carried wheel suits the numpy there, say), but pip resolves
    as if nothing were installed, so the walk from ``requirements`` through each item's
    dependencies stops at a package the target holds (``requirements`` themselves travel)."""
    target = target_packages()
    carried = {canonicalize_name(req.name) for req in requirements}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        constraints = Path(tmp) / "target.txt"
        constraints.write_text(
            "".join(f"{name}=={v}\n" for name, v in target.items() if name not in carried)
        )
        pip(
            "install",
            "--dry-run",
            "--ignore-installed",
            "--target",
            f"{tmp}/unused",
            *platform_options(python_version),
            "--constraint",
            str(constraints),
            "--report",
            str(report),
            *map(str, requirements),
        )
        items = json.loads(report.read_text())["install"]
    metadata = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in items}
    markers = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    needed: dict[str, str] = {}
    queue = [canonicalize_name(req.name) for req in requirements]
    while queue:
        name = queue.pop()
        if name in needed:
            continue
        needed[name] = metadata[name]["version"]
        for line in metadata[name].get("requires_dist", []):
            req = Requirement(line)
            dependency = canonicalize_name(req.name)
            applies = req.marker is None or req.marker.evaluate({**markers, "extra": ""})
            if applies and dependency not in target:
                queue.append(dependency)
    return needed


def platform_options(python_version: str) -> list[str]:
    """pip options selecting wheels for another interpreter: CPython ``python_version``,
    manylinux x86-64 up to glibc 2.28, which any machine running PyTorch's manylinux_2_28
    wheels has."""
    platforms = ["manylinux2014_x86_64", "manylinux_2_28_x86_64"]
    return [
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *[option for name in platforms for option in ("--platform", name)],
    ]


def carry(wheels: Path, python_version: str) -> None:
    pins = [
        f"{name}=={version}"
        for name, version in sorted(resolve(carried_requirements(), python_version).items())
    ]
    wheels.mkdir(parents=True, exist_ok=True)
    for pin in pins:
        # A pure-Python wheel where one exists: fonttools' is 1.2 MB, its compiled one 5.4 MB.
        pure = ["--only-binary=:all:", "--platform", "any", "--implementation", "py"]
        if pip("download", "--no-deps", "-d", str(wheels), *pure, pin, check=False) != 0:
            pip("download", "--no-deps", "-d", str(wheels), *platform_options(python_version), pin)
    print(f"carry: {len(pins)} wheels for CPython {python_version}: {', '.join(pins)}")


def pip(*arguments: str, check: bool = True) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *arguments, "--quiet"],
        stderr=subprocess.DEVNULL if not check else None,
        check=False,
    )
    if check and done.returncode != 0:
        sys.exit(f"gpu_kit: pip {' '.join(arguments)} failed (exit {done.returncode})")
    return done.returncode


# ---------------------------------------------------------------------------------- unpack-debs
def ar_members(deb: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of a .deb (an ar archive: 60-byte headers, 2-byte aligned)."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit(f"gpu_kit: {deb} is not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode())
        yield name, data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)


def unpack_debs(debs: Iterable[Path], prefix: Path) -> None:
    prefix.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        members = dict(ar_members(deb))
        if "data.tar.xz" not in members:
            raise SystemExit(
                f"gpu_kit: {deb}: expected an xz data archive, found {', '.join(members)}"
            )
        with tarfile.open(fileobj=io.BytesIO(lzma.decompress(members["data.tar.xz"]))) as tar:
            # The "tar" filter keeps the packages' relative library symlinks and strips leading
            # slashes, so nothing lands outside ``prefix``.
            tar.extractall(prefix, filter="tar")
        print(f"unpack-debs: {deb.name} -> {prefix}")


# -------------------------------------------------------------------------------------- install
def install(wheels: Path, site: Path) -> None:
    """Installs into ``site`` (on sys.path through PYTHONPATH) each requirement of the check
    that this interpreter does not satisfy, then the requirements of what it installed, until
    everything is satisfied."""
    pending = check_requirements()
    installed: dict[str, str] = {}
    while pending:
        needed = [req for req in pending if not _satisfied(req)]
        names = {canonicalize_name(req.name) for req in needed}
        if names & set(installed):
            _fail_unsatisfiable([req for req in needed if canonicalize_name(req.name) in installed])
        if not needed:
            break
        available = {canonicalize_name(_wheel_name(path)) for path in wheels.glob("*.whl")}
        missing = [req for req in needed if canonicalize_name(req.name) not in available]
        if missing:
            _fail_unsatisfiable(missing)
        pip(
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            str(site),
            "--no-deps",
            "--upgrade",
            *map(str, needed),
        )
        importlib.invalidate_caches()
        pending = []
        for req in needed:
            installed[canonicalize_name(req.name)] = importlib.metadata.version(req.name)
            pending += requires(req.name)
    shown = ", ".join(f"{name} {version}" for name, version in sorted(installed.items()))
    print(f"install: from the kit into {site}: {shown or 'nothing (the machine has it all)'}")


def _satisfied(req: Requirement) -> bool:
    version = installed_version(req.name)
    return version is not None and req.specifier.contains(version, prereleases=True)


def _wheel_name(path: Path) -> str:
    return path.name.split("-", 1)[0]


def _fail_unsatisfiable(requirements: list[Requirement]) -> None:
    lines = [
        f"  {req} (here: {installed_version(req.name) or 'not installed'})" for req in requirements
    ]
    raise SystemExit(
        "gpu_kit: neither this machine nor the kit satisfies:\n"
        + "\n".join(lines)
        + "\nCorrect scripts/gpu-target.txt for this machine and rerun scripts/gpu-prepare.sh."
    )


# -------------------------------------------------------------------------------------- emulate
def emulate(into: Path) -> None:
    """A virtual environment whose site-packages links, from this interpreter's environment, the
    target's packages and their dependency closure, and nothing else (not featx, not what the
    kit carries), so that the dry run installs what the GPU machine would."""
    names = set(target_packages())
    closure: dict[str, importlib.metadata.Distribution] = {}
    absent = set()
    queue = sorted(names)
    while queue:
        name = canonicalize_name(queue.pop())
        if name in closure:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            absent.add(name)
            continue
        closure[name] = dist
        queue += [req.name for req in requires(name)]
    venv.EnvBuilder(with_pip=True, clear=True).create(into)
    site = next(into.glob("lib/python*/site-packages"))
    for dist in closure.values():
        source = Path(dist.locate_file(""))
        for entry in _top_level_entries(dist):
            # An entry already there is the new environment's own pip or setuptools, or one
            # that another distribution of the closure shares (a namespace such as nvidia/).
            if (source / entry).exists() and not (site / entry).exists():
                (site / entry).symlink_to(source / entry)
    print(
        f"emulate: {into}: {len(closure)} distributions linked from {sys.prefix}; "
        f"not in this environment (the kit provides them): {', '.join(sorted(absent)) or 'none'}"
    )


def _top_level_entries(dist: importlib.metadata.Distribution) -> set[str]:
    """The site-packages entries (packages, modules, .dist-info) a distribution's files live
    under; scripts outside site-packages are skipped."""
    entries = set()
    for file in dist.files or ():
        first = file.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            entries.add(first)
    return entries


# -------------------------------------------------------------------------------------- summary
CLAIMS = (
    # (what featx claims, row filter, speedup field, at least)
    (
        "conv-BN-ReLU block vs cuDNN channels_last",
        {"kind": "conv", "backend": "featx"},
        "speedup_vs_reference",
        1.3,
    ),
    (
        "fused ResNet-50 vs eager fp16",
        {"kind": "model", "model": "resnet50", "backend": "fused"},
        "speedup_vs_same_dtype",
        1.5,
    ),
    ("attention vs SDPA", {"kind": "attention", "backend": "featx"}, "speedup_vs_reference", 1.0),
)


def summary(steps: Path, out: Path, mode: str) -> None:
    """$OUT/summary.md: the steps (status, seconds, cap), the test counts, featx's GPU claims as
    measured, and the extraction comparison."""
    lines = [f"# featx GPU check ({mode})", ""]
    lines += ["| step | result | seconds | cap |", "| --- | --- | ---: | ---: |"]
    rows = [line.split("\t") for line in steps.read_text().splitlines()]
    lines += [f"| {name} | {verdict} | {seconds} | {cap} |" for name, verdict, seconds, cap in rows]
    total = sum(int(row[2]) for row in rows)
    lines += ["", f"Total {total} s."]
    unrun = 0
    for junit in ("pytest-gpu.xml", "kernel-shapes.xml"):
        if (out / junit).is_file():
            counts, skipped_for_gpu = _junit_counts(out / junit)
            lines += ["", f"{junit}: {counts}"]
            unrun += skipped_for_gpu
    if mode == "gpu" and unrun:
        lines += ["", f"FAILED: {unrun} gpu tests skipped for want of a GPU on a GPU machine"]
    if (out / "bench.json").is_file():
        document = json.loads((out / "bench.json").read_text())
        lines += ["", f"bench.json: {_status_counts(document['rows'])}", ""]
        lines += [
            "| claim | rows | min | median | max | rows meeting it |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for claim, match, field, floor in CLAIMS:
            values = sorted(
                row[field]
                for row in document["rows"]
                if row["status"] == "ok"
                and row[field] is not None
                and all(row[key] == value for key, value in match.items())
            )
            if values:
                median = values[len(values) // 2]
                meeting = sum(value >= floor for value in values)
                lines.append(
                    f"| {claim} >= {floor}x | {len(values)} | {values[0]:.2f} | {median:.2f} "
                    f"| {values[-1]:.2f} | {meeting} |"
                )
            else:
                lines.append(f"| {claim} >= {floor}x | 0 | - | - | - | - |")
    if (out / "extract.json").is_file():
        extract = json.loads((out / "extract.json").read_text())
        lines += [
            "",
            f"extract.json: {extract['settings']['images']} JPEGs, eager "
            f"{extract['eager']['images_per_s']:.0f} img/s, featx --backend torch --fuse "
            f"{extract['featx-torch-fused']['images_per_s']:.0f} img/s "
            f"({extract['speedup']:.2f}x), min cosine {extract['parity']['min_cosine']:.6f}",
        ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if mode == "gpu" and unrun:
        sys.exit(1)


def _junit_counts(path: Path) -> tuple[str, int]:
    """A JUnit file's counts, and how many tests tests/conftest.py skipped for want of a GPU."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: suite.get(key) for key in ("tests", "failures", "errors", "skipped")}
    skipped_for_gpu = sum(
        "needs a CUDA GPU" in (skipped.get("message") or "") for skipped in suite.iter("skipped")
    )
    return ", ".join(f"{value} {key}" for key, value in counts.items()), skipped_for_gpu


def _status_counts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    carry_parser = commands.add_parser("carry")
    carry_parser.add_argument("wheels", type=Path)
    carry_parser.add_argument("--python-version", required=True)
    debs_parser = commands.add_parser("unpack-debs")
    debs_parser.add_argument("prefix", type=Path)
    debs_parser.add_argument("debs", type=Path, nargs="+")
    install_parser = commands.add_parser("install")
    install_parser.add_argument("wheels", type=Path)
    install_parser.add_argument("site", type=Path)
    emulate_parser = commands.add_parser("emulate")
    emulate_parser.add_argument("into", type=Path)
    summary_parser = commands.add_parser("summary")
    summary_parser.add_argument("steps", type=Path)
    summary_parser.add_argument("out", type=Path)
    summary_parser.add_argument("mode", choices=("gpu", "dry-run"))
    args = parser.parse_args(argv)
    if args.command == "carry":
        carry(args.wheels, args.python_version)
    elif args.command == "unpack-debs":
        unpack_debs(args.debs, args.prefix)
    elif args.command == "install":
        install(args.wheels, args.site)
    elif args.command == "emulate":
        emulate(args.into)
    else:
        summary(args.steps, args.out, args.mode)


if __name__ == "__main__":
    main()
