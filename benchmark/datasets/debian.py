"""Built-in datasets whose card lists its photographs, some of them from Debian packages.

Why: the default built-in dataset has 21 photographs and a test split of 4, too little
content for the zoo and for intervals over photographs. Debian ships freely licensed
photographs in wallpaper packages that anyone can download without installing them
(`apt-get download`). A card with `[[photos]]` (e.g. `datasets/builtin-photos.toml`) names
every source photograph with its package, version, path, licence, sha256 and split; this
module gathers those files and hands them to `builtin.py`'s recipe unchanged (the same
crops, distortions and pseudo-MOS), so the two datasets differ only in content.

Where the Debian files live:

- the user downloads the `.deb` files into a folder: `--debs DIR` of `build-dataset`, else
  `$BENCHMARK_DEBS`, else `<cache>/debs` (cache: `$BENCHMARK_CACHE`, default
  `~/.cache/iqa-benchmark`);
- the build reads only the listed photographs out of each `.deb` (an `ar` archive holding
  `data.tar.*`; no root, no `dpkg` needed for xz, gz or bz2) into `<cache>/debian/<package>/`
  after checking each file's sha256 against the card; a tree unpacked there by hand
  (`dpkg-deb -x FILE <cache>/debian/<package>`) is used as is.

A missing package is a `DataError` that prints the exact download commands. The dataset
is generated into `<cache>/<card name>-<recipe hash>/` like `builtin`, never committed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmark.datasets.builtin import (
    DEFAULT_CONFIG,
    BuildConfig,
    Source,
    all_sources,
    cache_root,
    estimate_minutes,
    generate_builtin,
    is_built,
    recipe_hash,
)
from benchmark.datasets.card import DatasetCard, PhotoRecord
from benchmark.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEBS_ENV = "BENCHMARK_DEBS"
_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def _cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root()


def debs_dir(
    debs: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the downloaded `.deb` files are: the argument, else $BENCHMARK_DEBS, else <cache>/debs."""
    if debs is not None:
        return Path(debs).expanduser()
    if os.environ.get(DEBS_ENV):
        return Path(os.environ[DEBS_ENV]).expanduser()
    return _cache(cache_dir) / "debs"


def extracted_dir(package: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a package's photographs are unpacked (the `dpkg-deb -x` target)."""
    return _cache(cache_dir) / "debian" / package


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packages(card: DatasetCard) -> dict[str, str]:
    """Debian package -> version the card's photographs were checked against, in card order."""
    out: dict[str, str] = {}
    for photo in card.photos:
        if photo.origin == "deb":
            out.setdefault(photo.package, photo.version)
    return out


def how_to_get(card: DatasetCard, missing: Sequence[str], debs: Path, cache: Path) -> str:
    """The instructions a missing package error prints: download, unpack, or skip."""
    versions = packages(card)
    names = " ".join(versions)
    pinned = ", ".join(f"{p} {versions[p]}" for p in missing)
    return (
        f"dataset {card.name!r} needs photographs from Debian packages that are not here: "
        f"{pinned}. Looked for {', '.join(f'{p}_*.deb' for p in missing)} in {debs} and for "
        f"unpacked trees in {cache / 'debian'}/<package>/.\n"
        "Get them with apt on any Debian 12 (bookworm) or later machine (downloading needs "
        "no root and installs nothing):\n"
        f"  mkdir -p {debs} && cd {debs} && apt-get download {names}\n"
        f"  python -m benchmark build-dataset {card.name} --debs {debs}"
        f"   # or set {DEBS_ENV}={debs}\n"
        "Without apt: download those versions' .deb files from "
        "https://packages.debian.org/<package> into that folder. Already unpacked with "
        f"`dpkg-deb -x FILE DIR`? Put each tree at {cache / 'debian'}/<package>/.\n"
        "Each photograph's sha256 is checked against the card. The default dataset "
        "`builtin` needs none of this (it is built from installed wheels)."
    )


# -- reading .deb files -----------------------------------------------------------------------


def _ar_members(deb: Path) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of an `ar` archive (the .deb container)."""
    with open(deb, "rb") as fh:
        if fh.read(len(_AR_MAGIC)) != _AR_MAGIC:
            raise DataError(f"{deb}: not a Debian package (no ar header)")
        while True:
            header = fh.read(_AR_HEADER)
            if not header:
                return
            if len(header) < _AR_HEADER or header[58:60] != b"`\n":
                raise DataError(f"{deb}: damaged ar archive")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise DataError(f"{deb}: damaged ar archive (bad member size)") from None
            offset = fh.tell()
            yield name, offset, size
            fh.seek(offset + size + (size % 2))


def _data_tar(deb: Path) -> tarfile.TarFile:
    """The package's file tree (data.tar.*) as a streaming tar reader."""
    for name, offset, size in _ar_members(deb):
        if not name.startswith("data.tar"):
            continue
        if name in ("data.tar", "data.tar.gz", "data.tar.xz", "data.tar.bz2"):
            with open(deb, "rb") as fh:
                fh.seek(offset)
                blob = fh.read(size)
            return tarfile.open(fileobj=io.BytesIO(blob), mode="r|*")
        # data.tar.zst and friends: Python's tarfile cannot read them before 3.14.
        if shutil.which("dpkg-deb"):
            out = subprocess.run(
                ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
            ).stdout
            return tarfile.open(fileobj=io.BytesIO(out), mode="r|")
        raise DataError(
            f"{deb}: its {name} needs dpkg-deb to unpack; run `dpkg-deb -x {deb} DIR` on a "
            "machine that has it and put DIR where the error above says"
        )
    raise DataError(f"{deb}: no data.tar member; not a Debian binary package")


def read_members(deb: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the regular files `wanted` (paths without a leading './') in a .deb."""
    found: dict[str, bytes] = {}
    with _data_tar(deb) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name not in wanted:
                continue
            if not member.isfile():
                raise DataError(f"{deb}: {name} is not a regular file")
            fh = tar.extractfile(member)
            if fh is None:
                raise DataError(f"{deb}: cannot read {name}")
            found[name] = fh.read()
    return found


def _deb_candidates(package: str, version: str, debs: Path) -> list[Path]:
    """The package's .deb files in `debs`, the card's version first."""
    if not debs.is_dir():
        return []
    files = sorted(debs.glob(f"{package}_*.deb"))
    quoted = version.replace(":", "%3a")
    return sorted(files, key=lambda f: f.name.split("_")[1] not in (version, quoted))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _extract_package(
    package: str, photos: Sequence[PhotoRecord], candidates: Sequence[Path], target: Path
) -> None:
    """Unpack `photos` from the first .deb whose files match the card's sha256s."""
    problems = []
    for deb in candidates:
        found = read_members(deb, {p.path for p in photos})
        bad = [p.path for p in photos if p.path not in found]
        bad += [
            f"{p.path} (sha256 {hashlib.sha256(found[p.path]).hexdigest()[:12]}..., "
            f"card {p.sha256[:12]}...)"
            for p in photos
            if p.path in found and hashlib.sha256(found[p.path]).hexdigest() != p.sha256
        ]
        if not bad:
            for p in photos:
                _write_atomic(target / p.path, found[p.path])
            log.info("unpacked %d photograph(s) of %s from %s", len(photos), package, deb.name)
            return
        problems.append(f"{deb.name}: missing or different {', '.join(bad)}")
    raise DataError(
        f"no .deb of {package} holds the photographs the card lists (version "
        f"{photos[0].version}): " + "; ".join(problems)
    )


# -- sources ------------------------------------------------------------------------------


def _wheel_source(photo: PhotoRecord, known: dict[str, Source]) -> Source:
    src = known.get(photo.name)
    if src is None:
        raise ConfigError(
            f"photo {photo.name!r} (origin wheel) is not a builtin source; known: {', '.join(known)}"
        )
    if not src.path.as_posix().endswith("/" + photo.path):
        raise ConfigError(
            f"photo {photo.name!r}: the card says {photo.path}, the recipe reads {src.path}"
        )
    if not src.path.is_file():
        raise DataError(
            f"photo {photo.name!r} not found at {src.path}; install {photo.package} "
            f"(checked with {photo.version})"
        )
    if _sha256(src.path) != photo.sha256:
        # Same as `builtin`: another wheel version may ship other bytes; the recipe hash
        # (and so the cache folder) then differs, so this build is never mistaken for ours.
        log.warning(
            "photo %s in %s %s differs from the card's (checked with %s)",
            photo.name,
            photo.package,
            src.path,
            photo.version,
        )
    return Source(photo.name, photo.group, src.path, photo.package, photo.split)


def find_photo_sources(
    card: DatasetCard,
    cache_dir: str | os.PathLike[str] | None = None,
    debs: str | os.PathLike[str] | None = None,
) -> list[Source]:
    """Every photograph of the card as a recipe source, unpacking Debian ones first if needed."""
    if not card.photos:
        raise ConfigError(f"dataset {card.name!r} lists no [[photos]]")
    cache = _cache(cache_dir)
    debs_path = debs_dir(debs, cache_dir)
    todo: dict[str, list[PhotoRecord]] = {}
    for photo in card.photos:
        if photo.origin != "deb":
            continue
        path = extracted_dir(photo.package, cache) / photo.path
        if not (path.is_file() and _sha256(path) == photo.sha256):
            todo.setdefault(photo.package, []).append(photo)
    candidates = {
        pkg: _deb_candidates(pkg, photos[0].version, debs_path) for pkg, photos in todo.items()
    }
    missing = [pkg for pkg, files in candidates.items() if not files]
    if missing:
        raise DataError(how_to_get(card, missing, debs_path, cache))
    for pkg, photos in todo.items():
        _extract_package(pkg, photos, candidates[pkg], extracted_dir(pkg, cache))

    known = {s.name: s for s in all_sources()}
    sources = []
    for photo in card.photos:
        if photo.origin == "wheel":
            sources.append(_wheel_source(photo, known))
        else:
            path = extracted_dir(photo.package, cache) / photo.path
            sources.append(Source(photo.name, photo.group, path, photo.package, photo.split))
    return sources


# -- building -----------------------------------------------------------------------------


def dataset_dir(
    card: DatasetCard, sources: Sequence[Source], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    return _cache(cache_dir) / f"{card.name}-{recipe_hash(DEFAULT_CONFIG, sources)}"


def build_photos(
    card: DatasetCard,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    debs: str | os.PathLike[str] | None = None,
    config: BuildConfig = DEFAULT_CONFIG,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Build (or reuse) the card's dataset under the cache with `builtin`'s recipe; its folder."""
    sources = find_photo_sources(card, cache_dir, debs)
    out = _cache(cache_dir) / f"{card.name}-{recipe_hash(config, sources)}"
    if not force and is_built(out, out.name.removeprefix(f"{card.name}-")):
        return out
    log.info(
        "generating dataset %s into %s (~%.0f min, once)",
        card.name,
        out,
        estimate_minutes(config, workers, sources),
    )
    return generate_builtin(
        out, config, sources=sources, workers=workers, progress=progress, force=force
    )


def photos_status(
    card: DatasetCard, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[bool, str]:
    """(usable here?, a line for listings); never unpacks or builds, never hashes big files."""
    cache = _cache(cache_dir)
    debs_path = debs_dir(None, cache_dir)
    missing = [
        pkg
        for pkg, version in packages(card).items()
        if not _deb_candidates(pkg, version, debs_path)
        and not all(
            (extracted_dir(pkg, cache) / p.path).is_file()
            for p in card.photos
            if p.package == pkg and p.origin == "deb"
        )
    ]
    if missing:
        return False, (
            f"needs Debian packages {', '.join(missing)}: "
            f"`python -m benchmark build-dataset {card.name}` says how to get them"
        )
    built = sorted(cache.glob(f"{card.name}-*/manifest.json"))
    for manifest in built:
        if is_built(manifest.parent):
            return True, f"cached at {manifest.parent}"
    n = len(card.photos)
    return True, f"generated on first use from {n} photographs into {cache}/{card.name}-<hash>"


def provenance_markdown(card: DatasetCard) -> str:
    """The card's photographs as a Markdown table (docs/datasets.md is regenerated from it)."""
    lines = [
        "| photograph | split | package | version | path | licence | copyright | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in card.photos:
        lic = p.license + (f" (upstream: {p.upstream_license})" if p.upstream_license else "")
        group = f" ({p.group})" if p.group != p.name else ""
        lines.append(
            f"| {p.name}{group} | {p.split} | {p.package} | {p.version} | `{p.path}` | {lic} "
            f"| {p.copyright.replace('|', '/')} | `{p.sha256[:16]}` |"
        )
    return "\n".join(lines)


__all__ = [
    "DEBS_ENV",
    "build_photos",
    "dataset_dir",
    "debs_dir",
    "extracted_dir",
    "find_photo_sources",
    "how_to_get",
    "packages",
    "photos_status",
    "provenance_markdown",
    "read_members",
]
