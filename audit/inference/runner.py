"""The inference runner: prefetching, cache lookup, sliding-window prediction, back to the native grid.

Per case: a worker thread reads the image bytes once through the guarded reader (file size bounded; sha256 of
those bytes for the cache key, the header's budget checked from them, then gzip decompression and preprocessing;
the reference label's header is its only other open) while the main thread runs the network on the previous
case, and another worker maps the prediction back to the reference grid and writes it. zlib, NumPy and SciPy release the GIL, so loading,
decompression and writing overlap with compute and a GPU does not wait on gzip.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from audit.harmonize.geometry import Volume, resample_to_grid, save_volume, volume_from_bytes
from audit.harmonize.limits import ReadLimits
from audit.harmonize.loading import load_label_array, read_file_bytes, read_header
from audit.inference.cache import cache_key, cache_path, clean_temporary_files
from audit.inference.loaders import LoadedModel
from audit.inference.predict import prepare_image, predict_labels_with_retry
from audit.records import UNKNOWN, CaseFailure
from audit.sites.base import path_in_root

logger = logging.getLogger(__name__)

__all__ = ["InferenceCase", "InferenceResult", "run_inference", "predict_case"]

_STAGE = "inference"


@dataclasses.dataclass(frozen=True)
class InferenceCase:
    """One case to predict.

    Parameters
    ----------
    case_id : str
        Audit-wide identifier (``site/local_id``).
    image_path : Path
        Input image.
    label_path : Path
        Reference segmentation; its grid (shape, affine) is the native grid predictions go back to.
    site : str
        Site name (for failure records).
    prediction_path : Path or None
        For ``predictions`` models without a folder: the precomputed prediction of this case.
    """

    case_id: str
    image_path: Path
    label_path: Path
    site: str = UNKNOWN
    prediction_path: Path | None = None


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    """A finished case.

    Attributes
    ----------
    case_id : str
        The case.
    prediction_path : Path
        NIfTI on the reference grid (reference affine and shape), model label values.
    cached : bool
        True when found in the cache (nothing computed).
    timings : Mapping[str, float]
        Seconds per phase: ``load``, ``preprocess``, ``infer``, ``postprocess``, ``write`` (and ``hash``).
    info : Mapping[str, Any]
        Device, window batch size and out-of-memory retries, when a network ran.
    """

    case_id: str
    prediction_path: Path
    cached: bool
    timings: Mapping[str, float]
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Prepared:
    case: InferenceCase
    out_path: Path
    ref_shape: tuple[int, ...]
    ref_affine: np.ndarray
    timings: dict[str, float]
    hit: bool = False
    native: Volume | None = None
    grid: Volume | None = None


def _reference_grid(label_path: Path, limits: ReadLimits | None) -> tuple[tuple[int, ...], np.ndarray]:
    header = read_header(label_path, role="label", limits=limits)  # header only; voxels are not read
    return header.shape, header.affine


def _predictions_source(model: LoadedModel, case: InferenceCase) -> Path:
    if model.spec.path is None:
        if case.prediction_path is None:
            raise ValueError(f"prediction_path: model kind 'predictions' without a folder needs each case's prediction_path; case {case.case_id} has none")
        return Path(case.prediction_path)
    pattern = str(model.spec.options.get("pattern", "{case_id}.nii.gz"))
    site, _, local = case.case_id.partition("/")
    rel = pattern.format(case_id=case.case_id, site=site, local_id=local or case.case_id)
    path = path_in_root(model.spec.path, rel, what="prediction", root_name="predictions folder")  # a pattern or case id never leaves the folder
    if not path.is_file():
        raise FileNotFoundError(f"predictions: no file {rel!r} for case {case.case_id} in {model.spec.path} (options.pattern={pattern!r})")
    return path


def _prepare(model: LoadedModel, case: InferenceCase, cache_dir: Path, limits: ReadLimits | None = None) -> _Prepared:
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    ref_shape, ref_affine = _reference_grid(Path(case.label_path), limits)
    source = _predictions_source(model, case) if model.kind == "predictions" else Path(case.image_path)
    role = "prediction" if model.kind == "predictions" else "image"
    data = read_file_bytes(source, role=role, limits=limits)  # the one open of this file in the stage (file size bounded)
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    digest = hashlib.sha256(data).hexdigest()
    key = cache_key(
        model_sha256=model.sha256,
        image_sha256=digest,
        reference_shape=ref_shape,
        reference_affine=ref_affine,
        preprocessing=model.spec.preprocessing,
        inference=model.spec.inference,
        extra={"kind": model.kind},
    )
    out = cache_path(cache_dir, key)
    t["hash"] = time.perf_counter() - t0
    prepared = _Prepared(case, out, ref_shape, ref_affine, t)
    if out.is_file():
        read_header(data, role=role, limits=limits, name=str(source))  # a cached case's file still passes the header checks
        prepared.hit = True
        return prepared
    t0 = time.perf_counter()  # decoding below checks the header (budget, geometry) before any voxel is decompressed
    if model.kind == "predictions":  # a precomputed prediction is a label file: finite integers only
        labels = load_label_array(data, role=role, name=str(source), limits=limits)
        native = Volume(labels.array, labels.affine)
    else:
        native = volume_from_bytes(data, name=str(source), dtype=np.float32, limits=limits, role=role)
    t["load"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    if model.kind == "predictions" or model.predict_volume is not None:
        prepared.native = native
    else:
        prepared.grid = prepare_image(native, model.spec.preprocessing)
    t["preprocess"] = time.perf_counter() - t0
    return prepared


def _infer(model: LoadedModel, p: _Prepared) -> tuple[Volume, dict[str, Any]]:
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if model.kind == "predictions":
        assert p.native is not None
        out = p.native
    elif model.predict_volume is not None:
        assert p.native is not None
        out = model.predict_volume(p.native)
        info["device"] = str(model.device)
    else:
        assert p.grid is not None
        labels, retry = predict_labels_with_retry(
            model.network, p.grid.array, model.spec.inference, device=model.device, cpu_networks=model.cpu_networks
        )
        out = Volume(labels, p.grid.affine)
        info.update(dataclasses.asdict(retry))
    p.timings["infer"] = time.perf_counter() - t0
    return out, info


def _finish(p: _Prepared, labels: Volume, info: dict[str, Any]) -> InferenceResult:
    t0 = time.perf_counter()
    arr = labels.array
    if arr.dtype.kind == "f":
        arr = np.rint(arr).astype(np.int32)
    native = resample_to_grid(arr, labels.affine, p.ref_shape, p.ref_affine, order=0)
    native = native.astype(np.uint8 if native.size == 0 or native.max() <= 255 else np.uint16)
    p.timings["postprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_volume(native, p.ref_affine, p.out_path)
    p.timings["write"] = time.perf_counter() - t0
    return InferenceResult(p.case.case_id, p.out_path, False, dict(p.timings), info)


def predict_case(model: LoadedModel, case: InferenceCase, *, cache_dir: Path, limits: ReadLimits | None = None) -> InferenceResult:
    """Predict one case synchronously (cache honoured); raises on failure."""
    p = _prepare(model, case, Path(cache_dir), limits)
    if p.hit:
        return InferenceResult(case.case_id, p.out_path, True, dict(p.timings))
    labels, info = _infer(model, p)
    return _finish(p, labels, info)


def _failure(case: InferenceCase, exc: BaseException) -> CaseFailure:
    logger.warning("inference failed for %s: %s: %s", case.case_id, type(exc).__name__, exc)
    return CaseFailure.from_exception(case.case_id, _STAGE, exc, site=case.site)


def run_inference(
    model: LoadedModel,
    cases: Iterable[InferenceCase],
    *,
    cache_dir: Path,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    limits: ReadLimits | None = None,
) -> Iterator[InferenceResult | CaseFailure]:
    """Predict every case, yielding results (or failures) in input order.

    Parameters
    ----------
    model : LoadedModel
        From :func:`~audit.inference.loaders.load_model`.
    cases : iterable of InferenceCase
        Cases to predict.
    cache_dir : Path
        Prediction cache; finished cases are skipped on a rerun (``cached=True``).
    workers : int
        Threads that load, hash, decompress and preprocess ahead of the network (and write behind it).
    progress : callable, optional
        Called as ``progress(done, total)`` after each case.
    limits : ReadLimits, optional
        Per-file voxel and memory budget, checked from each header before its voxels are read
        (default :class:`~audit.harmonize.limits.ReadLimits`).

    Yields
    ------
    InferenceResult or CaseFailure
        A failing case (unreadable file, over the budget, bad geometry, out of memory even on CPU) is yielded as a
        :class:`~audit.records.CaseFailure` with stage ``inference`` and the run goes on.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"run_inference: workers must be a positive integer; got {workers!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    clean_temporary_files(cache_dir)
    todo = list(cases)
    total = len(todo)
    lookahead = max(2, 2 * workers)
    with cf.ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="spine-audit-io") as pool:
        loading: collections.deque[tuple[InferenceCase, cf.Future[_Prepared]]] = collections.deque()
        writing: collections.deque[tuple[InferenceCase, cf.Future[Any]]] = collections.deque()
        next_case = 0
        done = 0

        def refill() -> None:
            nonlocal next_case
            while next_case < total and len(loading) < lookahead:
                c = todo[next_case]
                loading.append((c, pool.submit(_prepare, model, c, cache_dir, limits)))
                next_case += 1

        def settled(case: InferenceCase, fut: cf.Future[Any]) -> InferenceResult | CaseFailure:
            try:
                return fut.result()
            except Exception as exc:  # noqa: BLE001 - any per-case error becomes a recorded failure
                return _failure(case, exc)

        refill()
        while loading or writing:
            if loading:
                case, fut = loading.popleft()
                refill()
                try:
                    p = fut.result()
                    if p.hit:
                        res: cf.Future[Any] = cf.Future()
                        res.set_result(InferenceResult(case.case_id, p.out_path, True, dict(p.timings)))
                    else:
                        labels, info = _infer(model, p)
                        res = pool.submit(_finish, p, labels, info)
                except Exception as exc:  # noqa: BLE001
                    res = cf.Future()
                    res.set_result(_failure(case, exc))
                writing.append((case, res))
            while writing and (writing[0][1].done() or not loading or len(writing) > workers):
                c, w = writing.popleft()
                done += 1
                yield settled(c, w)
                if progress is not None:
                    progress(done, total)
