"""Re-checking stored blobs against their metadata.

Each distinct blob is hashed once and its per-tensor norms recomputed in
float64; hashing and norm computation run in parallel threads (both release
the GIL), so verification runs near disk/hash speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pvreg.registry.errors import PvregError
from pvreg.registry.sources.ingest import tensor_sq_norm
from pvreg.registry.storage.blobstore import BlobStore
from pvreg.registry.tensors.safetensors import SafetensorsFile
from pvreg.schemas.vector import VectorMeta, VerifyProblem, VerifyReport

REL_TOL = 1e-9


def _norms(blob_path: str, label: str) -> dict[str, float]:
    f = SafetensorsFile(Path(blob_path))
    norms: dict[str, float] = {}
    try:
        for n in sorted(f.infos):
            norms[n] = math.sqrt(tensor_sq_norm(f.tensor(n), label=label, name=n))
            f.release(n)  # keep RSS flat on blobs larger than RAM
        return norms
    finally:
        f.close()


def verify_versions(metas: Sequence[VectorMeta], store: BlobStore) -> VerifyReport:
    report = VerifyReport(checked=len(metas))
    by_sha: dict[str, list[VectorMeta]] = {}
    for m in metas:
        by_sha.setdefault(m.sha256, []).append(m)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for sha, group in by_sha.items():
            refs = [m.ref for m in group]
            path = store.path(sha)
            if not path.is_file():
                for r in refs:
                    report.problems.append(VerifyProblem(ref=r, problem=f"blob sha256:{sha[:12]} is missing"))
                continue
            size = path.stat().st_size
            hashed = pool.submit(BlobStore.hash_file, path)
            normed = pool.submit(_norms, str(path), f"blob sha256:{sha[:12]}")
            actual = hashed.result()
            try:
                norms = normed.result()
            except PvregError as exc:
                norms = None
                for r in refs:
                    report.problems.append(VerifyProblem(ref=r, problem=str(exc)))
            for m in group:
                if actual != sha:
                    report.problems.append(
                        VerifyProblem(ref=m.ref, problem=f"blob content hashes to {actual[:12]}, expected {sha[:12]}")
                    )
                    continue
                if size != m.size_bytes:
                    report.problems.append(
                        VerifyProblem(ref=m.ref, problem=f"blob is {size} bytes, expected {m.size_bytes}")
                    )
                if norms is None:
                    continue
                if set(norms) != set(m.tensor_norms):
                    report.problems.append(
                        VerifyProblem(ref=m.ref, problem="blob tensor names differ from the recorded per-tensor norms")
                    )
                    continue
                bad = [
                    n
                    for n, v in norms.items()
                    if not math.isclose(v, m.tensor_norms[n], rel_tol=REL_TOL, abs_tol=1e-30)
                ]
                if bad:
                    report.problems.append(
                        VerifyProblem(
                            ref=m.ref,
                            problem=f"norm of tensor {bad[0]!r} is {norms[bad[0]]:.9g}, recorded {m.tensor_norms[bad[0]]:.9g}",
                        )
                    )
                total = math.sqrt(sum(v * v for v in norms.values()))
                if not math.isclose(total, m.norm, rel_tol=1e-6):
                    report.problems.append(
                        VerifyProblem(ref=m.ref, problem=f"L2 norm is {total:.9g}, recorded {m.norm:.9g}")
                    )
    _verify_factors(metas, store, report)
    return report


def _verify_factors(metas: Sequence[VectorMeta], store: BlobStore, report: VerifyReport) -> None:
    """LoRA-sourced versions: their factors blob must be there and hash to its address."""
    by_sha: dict[str, list[str]] = {}
    for m in metas:
        if m.factors_sha256 is not None:
            by_sha.setdefault(m.factors_sha256, []).append(m.ref)
    for sha, refs in by_sha.items():
        path = store.path(sha)
        actual = BlobStore.hash_file(path) if path.is_file() else None
        if actual == sha:
            continue
        problem = (
            f"LoRA factors blob sha256:{sha[:12]} is missing"
            if actual is None
            else f"LoRA factors blob content hashes to {actual[:12]}, expected {sha[:12]}"
        )
        report.problems.extend(VerifyProblem(ref=r, problem=problem) for r in refs)
