"""`pvreg list` latency on a registry with 10,000 versions (target: < 0.5 s).

Builds the registry through the public API (one real blob shared by every
version, since `list` never reads blobs), then times `pvreg list` and
`pvreg list --json` as subprocesses next to a bare interpreter start, reporting
medians of several interleaved runs.  Run: python bench/bench_list.py [--versions N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(home: Path, versions: int, names: int) -> None:
    import torch
    from safetensors.torch import save_file

    from pvreg import Registry
    from pvreg.registry.storage.writes import NewVersion

    base = home.parent / "base"
    base.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(4, 4)}, str(base / "model.safetensors"))
    save_file({"w": torch.ones(4, 4)}, str(home.parent / "v.safetensors"))
    with Registry.open(home) as reg:
        first = reg.add("name-0", home.parent / "v.safetensors", base=base)
        resolved = reg.resolve_base(base)
        stats_meta = first
        from pvreg.registry.sources.ingest import BlobStats

        stats = BlobStats(
            sha256=stats_meta.sha256,
            size_bytes=stats_meta.size_bytes,
            norm=stats_meta.norm,
            tensor_norms=stats_meta.tensor_norms,
            dtype=stats_meta.dtype,
            num_tensors=stats_meta.num_tensors,
            num_params=stats_meta.num_params,
        )
        for i in range(1, versions):
            reg.store.commit_version(
                NewVersion(name=f"name-{i % names}", stats=stats, base=resolved, dataset="bench", tags={"i": str(i)})
            )


DEPS = "import sqlalchemy, typer; from pydantic import BaseModel"


def timed_all(cmds: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time of each command, runs interleaved round by round so load drifts hit all alike."""
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for key, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            samples[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def list_commands(pvreg: str, home: Path) -> dict[str, list[str]]:
    """`pvreg list` and `--json`, next to a bare interpreter and the import floor of pvreg's read path."""
    return {
        "bare": [sys.executable, "-c", "pass"],
        # What no implementation on these libraries can go below: importing them.
        "deps": [sys.executable, "-c", DEPS],
        "list": [pvreg, "--registry", str(home), "list"],
        "json": [pvreg, "--registry", str(home), "list", "--json"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        t = time.perf_counter()
        build(home, args.versions, args.names)
        print(f"built {args.versions} versions over {args.names} names in {time.perf_counter() - t:.1f} s")
        pvreg = str(Path(sys.executable).with_name("pvreg"))
        t = timed_all(list_commands(pvreg, home), args.runs)
        bare, deps, plain, as_json = t["bare"], t["deps"], t["list"], t["json"]
        torch_loaded = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pvreg.cli.main import app; "
                "from typer.testing import CliRunner; CliRunner().invoke(app, ['--registry', sys.argv[1], 'list']); "
                "print('torch' in sys.modules)",
                str(home),
            ],
            capture_output=True,
            text=True,
            check=True,  # a probe that crashed must not read as "torch not loaded"
        ).stdout.strip()
    print("| measure | median s | target |")
    print("|---|---|---|")
    print(f"| python -c pass | {bare:.3f} | |")
    print(f'| python -c "{DEPS}" | {deps:.3f} | |')
    print(
        f"| pvreg list ({args.versions} versions) | {plain:.3f} | < 0.5 ({'met' if plain < 0.5 else 'MISSED'}); "
        f"{plain / deps:.2f}x the import floor |"
    )
    print(f"| pvreg list --json | {as_json:.3f} | |")
    print(f"torch imported by list: {torch_loaded}")


if __name__ == "__main__":
    main()
