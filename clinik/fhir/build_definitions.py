"""Build the FHIR R4 element table from the official definitions package.

`python -m clinik.fhir.build_definitions` (run by `make install`):

1. `npm pack hl7.fhir.r4.examples@4.0.1` into `var/cache/npm/` unless the tarball is
   already there, so later runs (and `make`) work offline;
2. extract the package to `var/fhir/package/` (the examples, `Bundle-searchParams.json`
   and the rest stay readable for search and tests);
3. compile the resource and datatype StructureDefinitions into one compact table,
   `clinik/fhir/definitions/r4-elements.json`, that `clinik.fhir.spec` loads at start-up.

Each step is skipped when its output already matches its input, so a second run takes
well under a second.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

PACKAGE_NAME = "hl7.fhir.r4.examples"
PACKAGE_VERSION = "4.0.1"
FHIR_VERSION = "4.0.1"
# The published tarball never changes; a different one is a corrupt or forged download.
PACKAGE_SHA256 = "dce87f1b5b9341867033f7d1f544fa1b5232503f6d62813887ac6b8a8b6cb682"
TABLE_FORMAT = 1

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "var" / "cache" / "npm"
TARBALL = CACHE_DIR / f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz"
PACKAGE_DIR = ROOT / "var" / "fhir" / "package"
DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"
TABLE = DEFINITIONS_DIR / "r4-elements.json"

# The bundles of conformance resources the table is compiled from.
RESOURCE_PROFILES = "Bundle-resources.json"
TYPE_PROFILES = "Bundle-types.json"
VALUE_SET_BUNDLES = (
    "Bundle-valuesets.json",
    "Bundle-v3-valuesets.json",
    "Bundle-v2-valuesets.json",
)

FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."
FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXTENSION = "http://hl7.org/fhir/StructureDefinition/regex"
INLINE_TYPES = frozenset({"BackboneElement", "Element"})


class BuildError(Exception):
    pass


def fetch_tarball() -> Path:
    if TARBALL.is_file():
        return TARBALL
    if shutil.which("npm") is None:
        raise BuildError(
            f"{TARBALL.relative_to(ROOT)} is missing and npm is not installed: install "
            "Node.js/npm (or copy the tarball there) and run `make install` again."
        )
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    spec = f"{PACKAGE_NAME}@{PACKAGE_VERSION}"
    print(f"npm pack {spec}", file=sys.stderr)
    # A partial download must never look like a cached package: pack into a scratch
    # folder of the same filesystem, then rename.
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as scratch:
        result = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            ["npm", "pack", spec, "--pack-destination", scratch, "--silent"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        packed = Path(scratch) / TARBALL.name
        if result.returncode != 0 or not packed.is_file():
            raise BuildError(f"npm pack {spec} failed:\n{result.stderr.strip()}")
        packed.replace(TARBALL)
    return TARBALL


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_package(tarball: Path, tarball_sha256: str) -> Path:
    stamp = PACKAGE_DIR / ".source-sha256"
    if stamp.is_file() and stamp.read_text().strip() == tarball_sha256:
        return PACKAGE_DIR
    PACKAGE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=PACKAGE_DIR.parent) as scratch:
        with tarfile.open(tarball, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/")]
            # The "data" filter refuses absolute paths, links out of the tree and
            # device files: the tarball comes from a public registry.
            archive.extractall(scratch, members=members, filter="data")
        extracted = Path(scratch) / "package"
        check_manifest(extracted)
        (extracted / ".source-sha256").write_text(tarball_sha256 + "\n")
        if PACKAGE_DIR.exists():
            shutil.rmtree(PACKAGE_DIR)
        extracted.replace(PACKAGE_DIR)
    return PACKAGE_DIR


def check_manifest(package_dir: Path) -> None:
    manifest = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    if manifest.get("name") != PACKAGE_NAME or manifest.get("version") != PACKAGE_VERSION:
        raise BuildError(
            f"{TARBALL.relative_to(ROOT)} is not {PACKAGE_NAME}@{PACKAGE_VERSION}: "
            "delete it and run `make install` again."
        )
    if FHIR_VERSION not in manifest.get("fhirVersions", []):
        raise BuildError(f"{PACKAGE_NAME} does not declare FHIR {FHIR_VERSION}")


def bundle_resources(path: Path) -> Iterator[dict[str, Any]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    for entry in bundle.get("entry", []):
        yield entry["resource"]


def extension_value(holder: dict[str, Any], url: str) -> Any:
    for extension in holder.get("extension", []):
        if extension.get("url") == url:
            return next((v for k, v in extension.items() if k.startswith("value")), None)
    return None


def primitive_regexes(type_profiles: list[dict[str, Any]]) -> dict[str, str | None]:
    regexes: dict[str, str | None] = {}
    for profile in type_profiles:
        if profile["kind"] != "primitive-type":
            continue
        name = profile["type"]
        regexes[name] = None
        for element in profile["snapshot"]["element"]:
            if element["path"] == f"{name}.value":
                for type_ in element.get("type", []):
                    regexes[name] = extension_value(type_, REGEX_EXTENSION)
    return regexes


def type_code(type_: dict[str, Any]) -> str:
    code: str = type_["code"]
    if code.startswith(FHIRPATH_SYSTEM):
        # The base definitions type Element.id, Extension.url and friends with FHIRPath
        # system types and name the FHIR type in an extension.
        return extension_value(type_, FHIR_TYPE_EXTENSION) or "string"
    return code


def compile_profile(
    profile: dict[str, Any], required_value_sets: set[str]
) -> dict[str, dict[str, list[Any]]]:
    """One structure per complex type, resource and inline (backbone) element.

    An element is `[type, min, many, choice_group, value_set]`, keyed by its JSON
    property name; `value[x]` is spelled out once per allowed type (`valueQuantity`).
    A backbone element's type is the key of its own structure, its path.
    """
    elements = profile["snapshot"]["element"]
    parents = {element["path"].rsplit(".", 1)[0] for element in elements}
    structures: dict[str, dict[str, list[Any]]] = {}
    for element in elements:
        path: str = element["path"]
        if "." not in path:
            structures.setdefault(path, {})
            continue
        parent, name = path.rsplit(".", 1)
        many = element["max"] != "1"
        minimum = int(element["min"])
        if "contentReference" in element:
            types = [element["contentReference"].lstrip("#")]
        else:
            types = []
            for type_ in element.get("type", []):
                code = type_code(type_)
                if code in INLINE_TYPES and path in parents:
                    code = path
                types.append(code)
        if element.get("base", {}).get("path") == "Resource.id":
            types = ["id"]  # a resource's logical id has the id format, unlike Element.id
        value_set = None
        binding = element.get("binding", {})
        if types == ["code"] and binding.get("strength") == "required" and binding.get("valueSet"):
            value_set = binding["valueSet"].split("|", 1)[0]
            required_value_sets.add(value_set)
        children = structures.setdefault(parent, {})
        if name.endswith("[x]"):
            group = name[:-3]
            for code in types:
                children[group + code[0].upper() + code[1:]] = [code, minimum, many, group, None]
        else:
            children[name] = [types[0], minimum, many, None, value_set]
    return structures


def concept_codes(concepts: Iterable[dict[str, Any]]) -> Iterator[str]:
    for concept in concepts:
        yield concept["code"]
        yield from concept_codes(concept.get("concept", []))


def expand_value_sets(package_dir: Path, urls: set[str]) -> dict[str, list[str]]:
    """Codes of the required value sets that can be expanded without a terminology
    server: explicit code lists and whole code systems published in full in the
    package. Anything else (filters, imports, external systems such as BCP-13
    mime types) is left out, and elements bound to it are not code-checked."""
    value_sets: dict[str, dict[str, Any]] = {}
    code_systems: dict[str, dict[str, Any]] = {}
    for name in VALUE_SET_BUNDLES:
        for resource in bundle_resources(package_dir / name):
            if resource["resourceType"] == "ValueSet":
                value_sets[resource["url"]] = resource
            elif resource["resourceType"] == "CodeSystem":
                code_systems[resource["url"]] = resource
    expansions: dict[str, list[str]] = {}
    for url in sorted(urls):
        value_set = value_sets.get(url)
        if value_set is None or "exclude" in value_set.get("compose", {}):
            continue
        codes: set[str] = set()
        for include in value_set.get("compose", {}).get("include", []):
            if "filter" in include or "valueSet" in include:
                break
            if "concept" in include:
                codes.update(concept["code"] for concept in include["concept"])
                continue
            code_system = code_systems.get(include.get("system", ""))
            if code_system is None or code_system.get("content") != "complete":
                break
            if code_system.get("caseSensitive") is False:
                break
            codes.update(concept_codes(code_system.get("concept", [])))
        else:
            if codes:
                expansions[url] = sorted(codes)
    return expansions


def build_table(package_dir: Path, tarball_sha256: str) -> dict[str, Any]:
    type_profiles = [
        p
        for p in bundle_resources(package_dir / TYPE_PROFILES)
        if p["resourceType"] == "StructureDefinition" and p.get("derivation") != "constraint"
    ]
    resource_profiles = [
        p
        for p in bundle_resources(package_dir / RESOURCE_PROFILES)
        if p["resourceType"] == "StructureDefinition" and p["kind"] == "resource"
    ]
    primitives = primitive_regexes(type_profiles)
    structures: dict[str, dict[str, list[Any]]] = {}
    required_value_sets: set[str] = set()
    for profile in type_profiles + resource_profiles:
        # Primitives are checked natively and abstract types are folded into their
        # children's snapshots; Element stays, as the content of a `_field` extension.
        skip = profile["kind"] == "primitive-type" or profile.get("abstract")
        if skip and profile["type"] != "Element":
            continue
        structures.update(compile_profile(profile, required_value_sets))
    resource_types = sorted(p["type"] for p in resource_profiles if not p.get("abstract"))
    known = set(primitives) | set(structures) | {"Resource"}
    for key, children in structures.items():
        for name, (type_name, *_rest) in children.items():
            if type_name not in known:
                raise BuildError(f"{key}.{name} has type {type_name}, which is not defined")
    return {
        "format": TABLE_FORMAT,
        "fhirVersion": FHIR_VERSION,
        "package": {"name": PACKAGE_NAME, "version": PACKAGE_VERSION, "sha256": tarball_sha256},
        "resourceTypes": resource_types,
        "primitives": primitives,
        "structures": structures,
        "valueSets": expand_value_sets(package_dir, required_value_sets),
    }


def builder_fingerprint(tarball_sha256: str) -> str:
    """Changes when the package or this builder changes: either may change the table."""
    source = Path(__file__).read_bytes()
    return hashlib.sha256(source + tarball_sha256.encode()).hexdigest()


def table_is_current(fingerprint: str) -> bool:
    stamp = DEFINITIONS_DIR / ".fingerprint"
    return TABLE.is_file() and stamp.is_file() and stamp.read_text().strip() == fingerprint


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(path)


def main() -> int:
    try:
        tarball = fetch_tarball()
        tarball_sha256 = sha256_of(tarball)
        if tarball_sha256 != PACKAGE_SHA256:
            raise BuildError(
                f"{tarball.relative_to(ROOT)} has SHA-256 {tarball_sha256}, not the published "
                f"{PACKAGE_SHA256}: delete it and run `make install` again."
            )
        package_dir = extract_package(tarball, tarball_sha256)
        fingerprint = builder_fingerprint(tarball_sha256)
        if table_is_current(fingerprint):
            return 0
        table = build_table(package_dir, tarball_sha256)
    except BuildError as exc:
        print(f"build_definitions: {exc}", file=sys.stderr)
        return 1
    write_atomically(TABLE, json.dumps(table, separators=(",", ":"), sort_keys=True))
    write_atomically(DEFINITIONS_DIR / ".fingerprint", fingerprint + "\n")
    print(
        f"wrote {TABLE.relative_to(ROOT)}: {len(table['resourceTypes'])} resource types, "
        f"{len(table['structures'])} structures, {len(table['valueSets'])} value sets",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
