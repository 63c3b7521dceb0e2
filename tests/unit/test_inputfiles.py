"""Input files that are not regular files (FIFOs, devices, files that lie about their size) are refused, never block.

Every reader opens with ``O_NONBLOCK`` and checks the descriptor, so a named pipe where a
checkpoint or a spec file should be is one error line, not a hung command; ``finishes`` fails
the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from helpers.tensors import finishes
from pvreg.registry.errors import InvalidTensorFileError, NotFoundError, SpecError
from pvreg.registry.tensors.checkpoint import checkpoint_files, open_checkpoint
from pvreg.registry.tensors.inputfile import read_capped
from pvreg.registry.tensors.safetensors import parse_header
from pvreg.registry.tensors.torchfile import load_torch_weights_only
from safetensors.torch import save_file

# --- files that are not regular files ----------------------------------------------------------------------------------


def test_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "p.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InvalidTensorFileError, match=re.escape(f"{fifo}: is a FIFO (named pipe), not a regular file")):
        finishes(lambda: parse_header(fifo))
    with pytest.raises(InvalidTensorFileError, match="is a FIFO"):
        finishes(lambda: open_checkpoint(fifo))
    with pytest.raises(InvalidTensorFileError, match="is a FIFO"):
        finishes(lambda: load_torch_weights_only(fifo))


def test_fifo_in_a_model_directory_is_refused(tmp_path: Path) -> None:
    from pvreg.registry.tensors.fingerprint import fingerprint_path

    model = tmp_path / "model"
    model.mkdir()
    save_file({"a": torch.ones(2)}, str(model / "model-1.safetensors"))
    os.mkfifo(model / "model-2.safetensors")
    for fn in (lambda: checkpoint_files(model), lambda: fingerprint_path(model)):
        with pytest.raises(InvalidTensorFileError, match=re.escape(f"{model / 'model-2.safetensors'}: is a FIFO")):
            finishes(fn)


def test_unused_fifo_and_directories_named_like_weights_are_not_opened(tmp_path: Path) -> None:
    """Only files pvreg would read are checked: a .bin FIFO next to safetensors shards is never opened."""
    model = tmp_path / "model"
    (model / "sub.safetensors").mkdir(parents=True)
    save_file({"a": torch.ones(2)}, str(model / "model.safetensors"))
    os.mkfifo(model / "pytorch_model.bin")
    assert finishes(lambda: checkpoint_files(model)) == [model / "model.safetensors"]


def test_file_swapped_for_a_fifo_after_the_check_does_not_block(tmp_path: Path, monkeypatch) -> None:
    """The open itself never blocks: O_NONBLOCK, then fstat on the descriptor."""
    import pvreg.registry.tensors.inputfile as inputfile

    fifo = tmp_path / "swap"
    os.mkfifo(fifo)
    # Simulate the race: the path passed the stat check as a regular file, then became a FIFO.
    monkeypatch.setattr(inputfile, "check_regular", lambda path, error: None)
    with pytest.raises(InvalidTensorFileError, match="is a FIFO"):
        finishes(lambda: inputfile.open_regular(fifo, InvalidTensorFileError))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_read_cap_applies_to_what_is_read_not_to_st_size() -> None:
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0  # it lies about its size
    assert b"Name:" in read_capped(status, 1 << 20, SpecError)
    with pytest.raises(SpecError, match=re.escape("/proc/self/status: spec file is larger than the 64 bytes limit")):
        read_capped(status, 64, SpecError, "spec file")


def test_spec_file_reading_is_bounded(tmp_path: Path) -> None:
    from pvreg.registry.merge.spec import MAX_SPEC_BYTES, load_spec_file

    with pytest.raises(SpecError, match="/dev/zero: is a character device, not a regular file"):
        finishes(lambda: load_spec_file("/dev/zero"))
    fifo = tmp_path / "s.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="is a FIFO"):
        finishes(lambda: load_spec_file(fifo))
    big = tmp_path / "big.yaml"
    big.write_bytes(b"terms: [helpful]\n" + b"#" * MAX_SPEC_BYTES)
    with pytest.raises(SpecError, match="larger than the 16 MiB limit"):
        load_spec_file(big)
    ok = tmp_path / "ok.json"  # just under the cap (JSON: PyYAML takes seconds over 16 MiB)
    ok.write_bytes(b'{"terms": ["helpful"]}' + b" " * (MAX_SPEC_BYTES - 100))
    assert [t.ref for t in load_spec_file(ok).terms] == ["helpful"]
    with pytest.raises(NotFoundError, match="no such spec file"):
        load_spec_file(tmp_path / "none.yaml")
