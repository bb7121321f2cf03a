"""The versioned model pool: ``<pool>/<model>/<version>/`` on disk.

Each version holds ``model.onnx``, ``manifest.json`` and cached partitions
under ``partitions/``. Versions are integers; adding a byte-identical file
again returns the existing version, a changed file becomes the next version.
Every file read is checked against its recorded sha256 and size: a corrupted,
truncated or tampered model is a PoolError and is never used; a bad cached
partition is reported and rebuilt. Writers replace files atomically and
serialise manifest updates with a lock, so several workers can share a pool.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import onnx
from pydantic import ValidationError

from splitmq.shared.errors import ModelError, PoolError
from splitmq.shared.model.calibration import CalibrationTable
from splitmq.shared.model.config import ModelConfig, check_output, render
from splitmq.shared.model.cuts import find_cuts
from splitmq.shared.model.exits import ExitReport
from splitmq.shared.model.graph import Graph, load_model
from splitmq.shared.model.manifest import Cut, Manifest, OutputSpec, Preprocess, TensorSpec
from splitmq.shared.model.partition import extract_segment
from splitmq.shared.model.profile import Profile
from splitmq.shared.protocol.ids import MODEL_RULE, is_model_name

log = logging.getLogger(__name__)


def check_name(name: str) -> str:
    if not is_model_name(name):
        raise PoolError(f"bad model name {name!r}: use {MODEL_RULE}")
    return name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelVersion:
    """One version of one model in the pool; loads lazily, verifies every read."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.dir = directory
        self.manifest = manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def cuts(self) -> list[Cut]:
        return self.manifest.cuts

    @property
    def output_names(self) -> list[str]:
        """The outputs that answer: exit heads, then the finals (``OutputSpec.answering``)."""
        exits, finals = self.manifest.output.answering(self.manifest.outputs)
        return [*exits, *finals]

    @property
    def exits(self) -> list[str]:
        """The early-exit heads: a classifier's outputs before its last."""
        return self.manifest.output.answering(self.manifest.outputs)[0]

    @property
    def finals(self) -> list[str]:
        """The outputs that answer together when the whole model has run."""
        return self.manifest.output.answering(self.manifest.outputs)[1]

    @property
    def last_cut(self) -> int:
        return len(self.manifest.cuts) - 1

    @cached_property
    def model_bytes(self) -> bytes:
        data = _read(self.dir / "model.onnx")
        if len(data) != self.manifest.size or sha256_bytes(data) != self.manifest.sha256:
            raise PoolError(
                f"{self.dir / 'model.onnx'}: corrupted or tampered (size/sha256 differ from "
                "the manifest); remove the version and add the model again"
            )
        return data

    @cached_property
    def graph(self) -> Graph:
        try:
            graph = Graph(onnx.load_from_string(self.model_bytes))
        except Exception as exc:
            raise PoolError(f"{self.dir / 'model.onnx'}: cannot be parsed: {exc}") from exc
        return graph.answers(*self.manifest.output.answering(self.manifest.outputs))

    @cached_property
    def labels(self) -> list[str] | None:
        if not self.manifest.labels:
            return None
        return _read(self.dir / self.manifest.labels).decode().splitlines()

    def check_cut(self, cut: int) -> Cut:
        if not 0 <= cut <= self.last_cut:
            raise ModelError(
                f"{self.name} v{self.version} has no cut {cut}: valid cuts are 0..{self.last_cut}"
            )
        return self.cuts[cut]

    def segment(self, a: int, b: int | None = None) -> bytes:
        """Serialized partition a -> b (None: to the outputs), built once and cached on disk."""
        self.check_cut(a)
        if b is not None:
            self.check_cut(b)
        end = "end" if b is None or b == self.last_cut else str(b)
        path = self.dir / "partitions" / f"{a}_{end}.onnx"
        digest_path = path.with_suffix(".sha256")
        if path.exists() and digest_path.exists():
            data = path.read_bytes()
            if sha256_bytes(data) == digest_path.read_text().strip():
                return data
            log.error("%s: cached partition is corrupted; rebuilding it", path)
        data = extract_segment(self.graph, self.cuts, a, b).SerializeToString()
        write_atomic(path, data)
        write_atomic(digest_path, sha256_bytes(data).encode())
        return data

    def save_profile(self, profile: Profile) -> Manifest:
        """Store ``profile``, replacing any earlier one of the same host and provider."""
        doc = profile.model_dump()
        key = Profile.key_of(doc)
        return self.update(
            lambda raw: raw.__setitem__(
                "profiles", [p for p in raw["profiles"] if Profile.key_of(p) != key] + [doc]
            )
        )

    def save_calibration(self, table: CalibrationTable) -> Manifest:
        """Store ``table`` as the calibration, replacing any earlier one."""
        doc = table.model_dump()
        return self.update(lambda raw: raw.__setitem__("calibration", doc))

    def save_exits(self, report: ExitReport) -> Manifest:
        """Store what the exits are worth on labelled data (``offline.exit_report``)."""
        doc = report.model_dump()
        return self.update(lambda raw: raw.__setitem__("exits", doc))

    def codec_params(self, cut: int, codec: str) -> dict[str, object] | None:
        """What ``encode`` needs for ``codec`` at ``cut`` (calibrated clip range or None)."""
        table = self.manifest.calibration
        return None if table is None else table.params(cut, codec)

    def update(self, change: Callable[[dict], None]) -> Manifest:
        """Apply ``change`` to the manifest's JSON under the pool lock and save it."""
        with _locked(self.dir / ".lock"):
            raw = json.loads(_read(self.dir / "manifest.json"))
            change(raw)
            self.manifest = _parse_manifest(self.dir / "manifest.json", raw)
            write_atomic(self.dir / "manifest.json", _dump(self.manifest))
        return self.manifest


class ModelPool:
    """The pool directory; see module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        d = self.root / check_name(name)
        if not d.is_dir():
            return []
        return sorted(
            int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "manifest.json").exists()
        )

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or (
                "none (run `splitmq models build`, or set SPLITMQ_POOL or --pool to the "
                "pool that has them)"
            )
            raise PoolError(f"no model {name!r} in the pool {self.root}; models: {known}")
        v = versions[-1] if version is None else version
        if v not in versions:
            raise PoolError(f"model {name!r} has no version {v}; versions: {versions}")
        d = self.root / name / str(v)
        return ModelVersion(d, _parse_manifest(d / "manifest.json"))

    def families(self) -> list[str]:
        """The model families the pool's models are members of."""
        return sorted({f for n in self.names() if (f := self.get(n).manifest.family)})

    def family(self, name: str) -> list[ModelVersion]:
        """The members of family ``name``: the newest version of each model in it."""
        members = [mv for n in self.names() if (mv := self.get(n)).manifest.family == name]
        if not members:
            known = ", ".join(self.families()) or "none (pool add --family NAME)"
            raise PoolError(f"no model family {name!r} in the pool {self.root}; families: {known}")
        return members

    def matching(self, name: str, version: int, sha256: str) -> ModelVersion:
        """The version an announcement names, if this pool has the very same bytes."""
        mv = self.get(name, version)
        if mv.manifest.sha256 != sha256:
            raise PoolError(
                f"{name} v{version} in the pool {self.root} is not the announced one "
                f"(sha256 {mv.manifest.sha256[:12]}, announced {sha256[:12]})"
            )
        return mv

    def add(
        self,
        path: Path,
        name: str,
        *,
        preprocess: Preprocess | None = None,
        labels: list[str] | None = None,
        source: str | None = None,
        output: OutputSpec | None = None,
        config: ModelConfig | None = None,
        family: str | None = None,
    ) -> ModelVersion:
        """Add an ONNX file; idempotent for identical bytes, a new version otherwise.

        A new version of a model whose input and outputs look as before keeps the
        previous version's preprocessing, output and labels unless given: a retrained
        network takes the same images, so devices and cameras can move to it unchanged.
        A ``config`` (``splitmq pool add --config``) gives all three and is checked
        against the graph; without one, outputs that cannot answer as ``output`` says are
        still refused here (ConfigError), not per request. ``config.toml`` beside the
        model says how it is read."""
        if config is not None:
            preprocess, labels, output = config.preprocess, config.labels, config.output
        check_name(name)
        taken = self.names() if family is not None else self.families()
        if family is not None and (check_name(family) == name or family in taken):
            raise PoolError(f"family {family!r} is a model's name in {self.root}: pick another")
        if family is None and name in taken:
            raise PoolError(f"{name!r} names a model family in {self.root}: pick another name")
        data = Path(path).read_bytes() if Path(path).is_file() else b""
        model = load_model(path)  # validates, with a clear error
        digest = sha256_bytes(data)
        for v in self.versions(name):
            existing = self.get(name, v)
            same_family = family is None or existing.manifest.family == family
            if (
                existing.manifest.sha256 == digest
                and _same_config(existing, config)
                and same_family
            ):
                return existing  # the same file, as it was configured: the same version
        graph = Graph(model)
        inputs, outputs = (
            _spec(graph, graph.input_name),
            [_spec(graph, o) for o in graph.output_names],
        )
        if self.versions(name) and None in (preprocess, labels, output):
            before = self.get(name)
            if (before.manifest.input, before.manifest.outputs) == (inputs, outputs):
                preprocess = preprocess or before.manifest.preprocess
                labels = labels or before.labels
                output = output or before.manifest.output
        if family is None and self.versions(name):
            family = self.get(name).manifest.family  # a new version stays in its family
        output = output or OutputSpec()
        if config is not None:
            config.check(name, inputs, outputs)
        else:
            check_output(name, output, outputs)
        cuts = find_cuts(graph.answers(*output.answering(outputs)))
        with _locked(self.root / name / ".lock"):
            version = max(self.versions(name), default=0) + 1
            d = self.root / name / str(version)
            manifest = Manifest(
                name=name,
                version=version,
                sha256=digest,
                size=len(data),
                source=source or str(Path(path).resolve()),
                input=inputs,
                outputs=outputs,
                preprocess=preprocess,
                output=output,
                labels="labels.txt" if labels else None,
                cuts=cuts,
                family=family,
            )
            write_atomic(d / "model.onnx", data)
            if labels:
                write_atomic(d / "labels.txt", "\n".join(labels).encode() + b"\n")
            write_atomic(d / "config.toml", render(preprocess, output, manifest.labels).encode())
            write_atomic(d / "manifest.json", _dump(manifest))
        log.info("added %s v%d (%d cuts) to %s", name, version, len(cuts), self.root)
        return ModelVersion(d, manifest)


def _same_config(mv: ModelVersion, config: ModelConfig | None) -> bool:
    """Whether ``config`` (None: none given) is what ``mv`` runs with: a new config for
    the same file is a new version, so a running version never changes under a device."""
    m = mv.manifest
    return config is None or (config.preprocess, config.output, config.labels) == (
        m.preprocess,
        m.output,
        mv.labels,
    )


def _spec(graph: Graph, name: str) -> TensorSpec:
    info = graph.tensors[name]
    return TensorSpec(name=name, shape=list(info.shape), dtype=info.dtype, bytes=info.bytes)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PoolError(f"{path}: cannot be read ({exc.strerror})") from exc


def _parse_manifest(path: Path, raw: dict | None = None) -> Manifest:
    try:
        data = raw if raw is not None else json.loads(_read(path))
        return Manifest.model_validate(data)
    except (ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise PoolError(f"{path}: corrupted manifest ({first})") from exc


def _dump(manifest: Manifest) -> bytes:
    return manifest.model_dump_json(indent=1).encode()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_model(pool: ModelPool, ref: str) -> ModelVersion:
    """A pool name (``name`` or ``name@version``), or a path to an .onnx file.

    A path is added to a throw-away pool, so files and pool models take the
    same code path everywhere.
    """
    path = Path(ref).expanduser()
    if ref.endswith(".onnx") or path.is_file():
        scratch = ModelPool(Path(tempfile.mkdtemp(prefix="splitmq-")))
        atexit.register(shutil.rmtree, scratch.root, ignore_errors=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:64] or "model"
        return scratch.add(path, stem)
    return pool.get(*parse_ref(ref))


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name@version`` -> (name, version or None for the newest)."""
    name, at, version = ref.partition("@")
    if at and not version.isdigit():
        raise PoolError(f"bad model reference {ref!r}: use NAME, NAME@VERSION or FILE.onnx")
    return name, int(version) if version else None
