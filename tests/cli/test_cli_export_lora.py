"""``pvreg export-lora`` as a user types it: what it prints, its JSON, and its record in ``pvreg compositions``."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.cli import assert_terminal_safe, one_error_line


def test_export_lora_prints_the_error_and_is_recorded(cli, base_dir: Path, vector_file: Path, tmp_path: Path) -> None:
    assert cli("add", "helpful", "--vector", vector_file, "--base", base_dir).exit_code == 0
    r = cli("export-lora", "helpful:0.5", "--rank", "2", "--non-lora", "drop", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.stderr
    assert_terminal_safe(r.stdout)
    lines = r.stdout.splitlines()
    assert lines[0] == f"exported helpful@1:0.5 (svd) -> {tmp_path / 'a'} (peft)"
    assert lines[1].startswith("14 LoRA modules, rank 2-2; relative error ")
    assert lines[2].startswith("dropped 7 tensor(s), ")
    assert lines[-1].startswith("adapter sha256:") and lines[-1].endswith("composition #1")
    report = json.loads((tmp_path / "a" / "export_report.json").read_text())
    assert report["rank"] == 2 and len(report["dropped"]) == 7

    again = cli("export-lora", "helpful:0.5", "--rank", "2", "--non-lora", "drop", "--out", tmp_path / "a")
    assert "already exists and is not empty (use --force to replace it)" in one_error_line(again, 2)
    r = cli("export-lora", "helpful", "--energy", "0.9", "--non-lora", "drop", "--target", "vllm",
            "--out", tmp_path / "a", "--force", "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["target"] == "vllm" and result["report"]["uniform_rank"] <= 256
    assert result["files"] == ["adapter_config.json", "adapter_model.safetensors", "export_report.json"]

    r = cli("compositions")
    assert r.exit_code == 0
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[4] for row in rows] == ["helpful@1:0.5", "helpful@1:1"] and rows[0][5] == "lora"
    records = json.loads(cli("compositions", "--json").stdout)
    assert [rec["kind"] for rec in records] == ["lora", "lora"]
    assert records[1]["report"]["energy"] == 0.9 and "modules" not in records[1]["report"]
