"""Pack ``blender_addon/`` into ``dist/gen3d-<version>.zip``, installable with Blender's "Install from Disk".

Follows ``blender --command extension build``: the manifest and the package files at the zip root, files matched by
``[build] paths_exclude_pattern`` left out. The manifest is validated first (the rules Blender's extension tool
applies to the fields used here), and so is the add-on's promise to import only the standard library and Blender's
own modules. The zip is reproducible (fixed timestamps, sorted entries).

    python build_addon.py [--out dist] [--source blender_addon]
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import re
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MANIFEST = "blender_manifest.toml"
REQUIRED = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type", "blender_version_min",
            "license")
PERMISSIONS = ("files", "network", "clipboard", "camera", "microphone")
BLENDER_MODULES = {"bpy", "bpy_extras", "mathutils", "addon_utils", "bmesh", "gpu", "gpu_extras", "blf", "bl_math",
                   "idprop", "aud", "imbuf", "freestyle", "rna_prop_ui", "bl_ui"}
ZIP_TIME = (2024, 1, 1, 0, 0, 0)


class ManifestError(ValueError):
    pass


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _terse(key: str, value) -> str | None:
    """Blender's rule for short texts: non-empty, at most 64 characters, not ending in punctuation."""
    if not isinstance(value, str) or not value.strip():
        return f"{key}: a non-empty string expected"
    if len(value) > 64:
        return f"{key}: at most 64 characters, found {len(value)}"
    if value[-1] in ".,;:!?":
        return f"{key}: must not end with punctuation ({value[-1]!r})"
    return None


def validate_manifest(manifest: dict) -> list[str]:
    """Problems with a parsed manifest (empty when it is valid)."""
    errors = [f"missing required field {k!r}" for k in REQUIRED if k not in manifest]
    if manifest.get("schema_version") not in (None, "1.0.0"):
        errors.append(f"schema_version: '1.0.0' expected, found {manifest['schema_version']!r}")
    pkg_id = manifest.get("id", "")
    if pkg_id and (not pkg_id.isidentifier() or pkg_id.startswith("_") or pkg_id.endswith("_")):
        errors.append(f"id: a Python identifier without leading/trailing underscores expected, found {pkg_id!r}")
    if "version" in manifest and not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", str(manifest["version"])):
        errors.append(f"version: semantic version X.Y.Z expected, found {manifest['version']!r}")
    if manifest.get("type") not in (None, "add-on", "theme"):
        errors.append(f"type: 'add-on' or 'theme' expected, found {manifest['type']!r}")
    for key in ("tagline", "name", "maintainer"):
        if key in manifest and (problem := _terse(key, manifest[key])) and key != "maintainer":
            errors.append(problem)
    bmin = manifest.get("blender_version_min")
    if bmin is not None:
        if not re.fullmatch(r"\d+\.\d+\.\d+", str(bmin)):
            errors.append(f"blender_version_min: X.Y.Z expected, found {bmin!r}")
        elif _version(bmin) < (4, 2, 0):
            errors.append(f"blender_version_min: extensions need 4.2.0 or later, found {bmin}")
    lic = manifest.get("license")
    if lic is not None and (not isinstance(lic, list) or not lic or
                            not all(isinstance(x, str) and x.startswith("SPDX:") for x in lic)):
        errors.append(f"license: a list of 'SPDX:...' identifiers expected, found {lic!r}")
    perms = manifest.get("permissions", {})
    if not isinstance(perms, dict):
        errors.append("permissions: a table of permission = reason expected")
    else:
        for k, reason in perms.items():
            if k not in PERMISSIONS:
                errors.append(f"permissions: unknown permission {k!r} (known: {', '.join(PERMISSIONS)})")
            elif problem := _terse(f"permissions.{k}", reason):
                errors.append(problem)
    return errors


def check_imports(source: Path) -> list[str]:
    """Absolute imports that are neither the standard library nor Blender's modules (the add-on must be
    self-contained; its own modules are imported relatively)."""
    allowed = set(sys.stdlib_module_names) | BLENDER_MODULES | {"__future__"}
    problems = []
    for path in sorted(source.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] not in allowed:
                    problems.append(f"{path.relative_to(source)}:{node.lineno}: imports {name!r}")
    return problems


def package_files(source: Path, exclude: list[str]) -> list[Path]:
    """Files to pack, relative to ``source``, without those matching the build's exclude patterns."""
    out = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_dir():
            continue
        parts = rel.parts
        skip = False
        for pat in exclude:
            if pat.endswith("/"):
                skip |= any(fnmatch.fnmatch(p, pat[:-1]) for p in parts[:-1])
            else:
                skip |= fnmatch.fnmatch(rel.name, pat) or fnmatch.fnmatch(rel.as_posix(), pat)
        if not skip:
            out.append(rel)
    return out


def build(source: Path = ROOT / "blender_addon", out_dir: Path = ROOT / "dist") -> Path:
    """Validate and zip the add-on; returns the zip's path. Raises :class:`ManifestError` listing every problem."""
    manifest_path = source / MANIFEST
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path} does not exist")
    try:
        manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{manifest_path}: {e}") from None
    problems = validate_manifest(manifest) + check_imports(source)
    if problems:
        raise ManifestError(f"{manifest_path}:\n  " + "\n  ".join(problems))
    exclude = list((manifest.get("build") or {}).get("paths_exclude_pattern") or ["__pycache__/", "*.pyc", ".*"])
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = zip_path.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in package_files(source, exclude):
            info = zipfile.ZipInfo(rel.as_posix(), ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, (source / rel).read_bytes())
    tmp.replace(zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT / "blender_addon", help="add-on folder")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder")
    args = parser.parse_args(argv)
    try:
        path = build(args.source, args.out)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
