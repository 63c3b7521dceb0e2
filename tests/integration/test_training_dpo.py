"""DPO training of θ+ and θ− (``train_pair``) on a tiny random Llama, checked independently of pvreg.

- Learning: on a synthetic preference ("answer yes over no"), the held-out score
  mean[log p(" yes"|prompt) − log p(" no"|prompt)] — computed here with plain transformers
  forward passes on prompts never trained on — rises for θ+, falls for θ−, and rises for
  base + (θ+ − θ−) built here with torch from the state dicts (LoRA: merged with peft here).
- The θ− trainer really got the swapped pairs, in the same order as θ+'s (read off the trainers).
- Same seed → byte-identical weights (sha256 of the saved files); another seed → different.
- Without trl installed → one MissingExtraError line naming pvreg[train], before torch is imported.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pvreg.registry.errors import (
    DeviceUnavailableError,
    OutputExistsError,
    PreferenceDataError,
    TrainOptionsError,
)
from pvreg.registry.training import build_options, load_pairs, split_pairs, train_pair, training_order
from helpers.models import random_prompts, write_jsonl, yes_no_pairs, make_tiny_llama

LEARN = {"full": dict(method="full", steps=15, lr=2e-3, batch_size=8),
         "lora": dict(method="lora", steps=15, lr=3e-2, batch_size=8)}
WEIGHTS = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One torch thread: fastest for a model this small, and immune to a busy machine's oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def base(root: Path) -> Path:
    return make_tiny_llama(root / "base")


@pytest.fixture(scope="module")
def data(root: Path) -> Any:
    return load_pairs(write_jsonl(root / "yes-no.jsonl", yes_no_pairs(40, seed=1)), label="yes-no")


class Recorder:
    """A progress sink that keeps what it was told."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.steps: list[tuple[int, float]] = []

    def start(self, total_steps: int) -> None:
        self.total = total_steps

    def step(self, n: int, loss: float) -> None:
        self.steps.append((n, loss))


def _capture(seen: dict[str, Any]) -> Any:
    """An on_trainer hook keeping, per run, the tokenized rows, the sampler order and the first batches."""

    def hook(run: str, trainer: Any) -> None:
        ds = trainer.train_dataset
        batches = []
        for i, batch in enumerate(trainer.get_train_dataloader()):
            batches.append(batch["input_ids"].clone())
            if i == 2:
                break
        seen[run] = {
            "prompt_ids": list(ds["prompt_ids"]), "chosen_ids": list(ds["chosen_ids"]),
            "rejected_ids": list(ds["rejected_ids"]), "order": list(trainer._get_train_sampler()),
            "batches": batches, "tokenizer": trainer.processing_class,
        }

    return hook


@pytest.fixture(scope="module", params=["full", "lora"])
def trained(request: pytest.FixtureRequest, root: Path, base: Path, data: Any) -> dict[str, Any]:
    method = request.param
    seen: dict[str, Any] = {}
    progress = Recorder()
    work = root / f"work-{method}"
    result = train_pair(base, data, build_options(**LEARN[method]), work, progress, on_trainer=_capture(seen))
    return {"method": method, "result": result, "work": work, "seen": seen, "progress": progress}


# --- independent scoring ---------------------------------------------------------------------


def _load(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _model_of(method: str, base: Path, out: Path) -> Any:
    if method == "full":
        return _load(out)
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():  # peft still calls a transformers API deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        return PeftModel.from_pretrained(_load(base), out).merge_and_unload()


def held_out_score(model: Any, base: Path) -> float:
    """mean over unseen prompts of log p(yes | prompt) − log p(no | prompt), one batched forward pass."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    prompts = random_prompts(32, seed=999)
    ids = torch.tensor([tok(p)["input_ids"] for p in prompts])
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[:, -1].float().log_softmax(-1)
    return float((logp[:, yes] - logp[:, no]).mean())


def test_held_out_preference_moves_the_right_way(trained: dict[str, Any], base: Path) -> None:
    method, work = trained["method"], trained["work"]
    base_model = _load(base)
    s_base = held_out_score(base_model, base)
    pos, neg = _model_of(method, base, work / "positive"), _model_of(method, base, work / "negative")
    s_pos, s_neg = held_out_score(pos, base), held_out_score(neg, base)
    assert s_pos > s_base + 0.3, (s_base, s_pos)
    assert s_neg < s_base - 0.3, (s_base, s_neg)

    theta = base_model.state_dict()
    plus, minus = pos.state_dict(), neg.state_dict()
    assert plus.keys() == minus.keys() == theta.keys()
    merged = _load(base)
    merged.load_state_dict({k: theta[k] + (plus[k] - minus[k]) for k in theta})
    s_phi = held_out_score(merged, base)
    assert s_phi > s_base + 0.3, (s_base, s_phi)


def test_metrics_versions_and_outputs(trained: dict[str, Any], data: Any) -> None:
    result, work, method = trained["result"], trained["work"], trained["method"]
    train_idx, eval_idx = split_pairs(data, 0.1, 0)
    for run in (result.positive, result.negative):
        assert run.steps == LEARN[method]["steps"]
        assert (run.train_rows, run.seen_rows, run.eval_rows) == (len(train_idx), 36, len(eval_idx)) == (36, 36, 4)
        assert math.isfinite(run.train_loss) and run.train_loss < math.log(2)  # DPO loss starts at ln 2
        assert run.eval_loss is not None and run.eval_loss < math.log(2)
        assert run.eval_reward_accuracy == 1.0  # every held-out pair prefers this run's chosen side
        assert run.seconds_per_step > 0 and run.wall_seconds >= run.train_seconds > 0
    assert {"trl", "transformers", "torch", "peft", "datasets"} <= result.versions.keys()
    assert result.options.lr == LEARN[method]["lr"] and result.data.sha256 == data.sha256
    assert result.artifact == ("model" if method == "full" else "lora")
    assert sorted(p.name for p in work.iterdir()) == ["negative", "positive"]  # no scratch left behind
    for side in ("positive", "negative"):
        assert (work / side / WEIGHTS[method]).is_file()
    if method == "lora":
        cfg = json.loads((work / "positive" / "adapter_config.json").read_text())
        assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (8, 16.0, 0.0)
    assert "positive_dir" not in result.provenance()["training"]
    json.dumps(result.provenance())


def test_progress_saw_every_step_of_both_runs(trained: dict[str, Any]) -> None:
    progress, steps = trained["progress"], LEARN[trained["method"]]["steps"]
    assert progress.total == 2 * steps
    assert [n for n, _ in progress.steps] == list(range(1, 2 * steps + 1))
    assert all(math.isfinite(loss) for _, loss in progress.steps)


def test_negative_run_got_the_swapped_pairs_in_the_same_order(trained: dict[str, Any], data: Any) -> None:
    pos, neg = trained["seen"]["positive"], trained["seen"]["negative"]
    tok = pos["tokenizer"]
    train_idx, _ = split_pairs(data, 0.1, 0)
    assert pos["order"] == neg["order"]
    assert len(pos["order"]) == LEARN[trained["method"]]["steps"] * LEARN[trained["method"]]["batch_size"]
    assert pos["prompt_ids"] == neg["prompt_ids"]
    assert pos["chosen_ids"] == neg["rejected_ids"] and pos["rejected_ids"] == neg["chosen_ids"]
    for i, source in enumerate(train_idx):  # row i of the trainer's dataset is the i-th training pair
        pair = data.pairs[source]
        assert tok.decode(pos["prompt_ids"][i]) == pair.prompt
        assert tok.decode(pos["chosen_ids"][i]) == "yes </s>" and tok.decode(neg["chosen_ids"][i]) == "no </s>"
    # The batches the dataloaders actually produce: [chosen; rejected] halves, swapped between the runs.
    for a, b in zip(pos["batches"], neg["batches"]):
        half = a.shape[0] // 2
        assert a[:half].tolist() == b[half:].tolist() and a[half:].tolist() == b[:half].tolist()


def test_only_the_pairs_the_steps_consume_are_prepared(tmp_path: Path, base: Path, data: Any) -> None:
    seen: dict[str, Any] = {}
    opts = build_options(method="lora", steps=2, batch_size=3, eval_fraction=0.25, max_eval_pairs=2)
    result = train_pair(base, data, opts, tmp_path / "w", on_trainer=_capture(seen))
    train_idx, _ = split_pairs(data, 0.25, 0)
    expected = [data.pairs[train_idx[p]].prompt for p in training_order(len(train_idx), opts)]
    for run in ("positive", "negative"):
        got = seen[run]
        assert len(got["prompt_ids"]) == 6  # 2 steps x 3 pairs, not the 30 of the split
        assert [got["tokenizer"].decode(got["prompt_ids"][i]) for i in got["order"]] == expected
    assert (result.positive.train_rows, result.positive.seen_rows, result.positive.eval_rows) == (30, 6, 2)


def test_registers_through_the_pair_path(trained: dict[str, Any], base: Path) -> None:
    from helpers.cli import run_cli

    work = trained["work"]
    res = run_cli("add", f"yes-{trained['method']}", "--positive", work / "positive", "--negative",
                  work / "negative", "--base", base)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(f"yes-{trained['method']}@1")


# --- reproducibility -------------------------------------------------------------------------


def _weights_sha(work: Path, method: str) -> tuple[str, str]:
    return tuple(  # type: ignore[return-value]
        hashlib.sha256((work / side / WEIGHTS[method]).read_bytes()).hexdigest() for side in ("positive", "negative")
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, base: Path, data: Any, method: str) -> None:
    import torch

    opts = dict(method=method, steps=3, lr=1e-2, batch_size=4, eval_fraction=0, threads=1)
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    torch.set_num_threads(2)
    try:
        first = train_pair(base, data, build_options(**opts, seed=0), tmp_path / "a")
        assert torch.get_num_threads() == 2  # the caller's thread count, RNG and flags are restored
    finally:
        torch.set_num_threads(1)
    assert torch.equal(torch.rand(3), expected_next)
    assert not torch.are_deterministic_algorithms_enabled()
    train_pair(base, data, build_options(**opts, seed=0), tmp_path / "b")
    other = train_pair(base, data, build_options(**opts, seed=1), tmp_path / "c")
    a, b, c = (_weights_sha(tmp_path / w, method) for w in "abc")
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]
    assert a[0] != a[1]
    assert first.positive.data_sha256 != other.positive.data_sha256  # the seed also reorders the data


# --- chat templates ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_base(root: Path) -> Path:
    return make_tiny_llama(root / "chat-base", chat=True)


def test_plain_pairs_with_a_chat_template_tokenizer_become_one_user_and_one_assistant_turn(
    tmp_path: Path, chat_base: Path, data: Any
) -> None:
    seen: dict[str, Any] = {}
    opts = build_options(method="lora", steps=1, batch_size=2, eval_fraction=0)
    result = train_pair(chat_base, data, opts, tmp_path / "w", on_trainer=_capture(seen))
    assert result.chat_template
    tok = seen["positive"]["tokenizer"]
    pair = data.pairs[training_order(data.rows, opts)[0]]  # the first pair trained on (no eval split)
    first = seen["positive"]["order"][0]
    expected = tok.apply_chat_template([{"role": "user", "content": pair.prompt}], add_generation_prompt=True,
                                       tokenize=False)
    assert tok.decode(seen["positive"]["prompt_ids"][first]) == expected.strip()
    assert tok.decode(seen["positive"]["chosen_ids"][first]) == "yes <|end|>"
    assert tok.decode(seen["negative"]["chosen_ids"][first]) == "no <|end|>"

    plain = train_pair(chat_base, data, opts.model_copy(update={"chat_template": "off"}), tmp_path / "w2")
    assert not plain.chat_template


def test_chat_message_pairs_train_with_the_template(tmp_path: Path, chat_base: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for p in random_prompts(6, seed=5)]
    chat = load_pairs(write_jsonl(tmp_path / "chat.jsonl", rows))
    opts = build_options(method="full", steps=2, batch_size=2, precompute_ref=False)  # TRL's live reference model
    result = train_pair(chat_base, chat, opts, tmp_path / "w")
    assert result.chat_template and result.data.conversational
    assert (tmp_path / "w" / "positive" / "model.safetensors").is_file()


# --- refusals before any model is loaded -------------------------------------------------------


def test_chat_pairs_without_a_chat_template_are_refused(tmp_path: Path, base: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": "w1"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]}]
    chat = load_pairs(write_jsonl(tmp_path / "chat.jsonl", rows))
    with pytest.raises(TrainOptionsError, match="holds chat messages but the tokenizer of .* has no chat template"):
        train_pair(base, chat, build_options(eval_fraction=0), tmp_path / "w")
    with pytest.raises(TrainOptionsError, match="chat_template=on but the tokenizer"):
        train_pair(base, load_pairs(write_jsonl(tmp_path / "p.jsonl", yes_no_pairs(2, seed=0))),
                   build_options(chat_template="on", eval_fraction=0), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_prompt_that_fills_max_length_names_its_row(tmp_path: Path, base: Path) -> None:
    rows = yes_no_pairs(3, seed=0)
    rows[1]["prompt"] = "w1 w2 w3 w4 w5 w6 w7 w8"
    f = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(PreferenceDataError) as info:
        train_pair(base, load_pairs(f), build_options(max_length=6, eval_fraction=0), tmp_path / "w")
    assert str(info.value).startswith(f"{f.resolve()}: row 2: the prompt is 8 tokens")


@pytest.mark.parametrize(
    ("targets", "message"),
    [(["nope_proj"], "cannot set up DPO training: Target modules {'nope_proj'} not found"),
     (["embed_tokens", "q_proj"], "LoRA on model.embed_tokens (Embedding) cannot be registered"),
     (["lm_head"], "cannot set up DPO training: Applying a PEFT adapter to `lm_head` is not supported")],
)
def test_lora_targets_pvreg_cannot_register_are_refused_before_training(
    tmp_path: Path, base: Path, data: Any, targets: list[str], message: str
) -> None:
    progress = Recorder()
    with pytest.raises(TrainOptionsError) as info:
        train_pair(base, data, build_options(steps=1, lora_targets=targets), tmp_path / "w", progress)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert progress.steps == [] and list((tmp_path / "w").iterdir()) == []


def test_existing_outputs_are_refused(tmp_path: Path, base: Path, data: Any) -> None:
    (tmp_path / "w" / "negative").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="negative: already exists"):
        train_pair(base, data, build_options(steps=1), tmp_path / "w")
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["negative"]


def test_base_must_be_a_model_directory(tmp_path: Path, data: Any) -> None:
    from pvreg.registry.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no such base model directory"):
        train_pair(tmp_path / "missing", data, build_options(steps=1), tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainOptionsError, match="no config.json"):
        train_pair(tmp_path / "empty", data, build_options(steps=1), tmp_path / "w")


def test_cuda_without_a_gpu(tmp_path: Path, base: Path, data: Any) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceUnavailableError, match="no usable CUDA GPU"):
        train_pair(base, data, build_options(steps=1, device="cuda"), tmp_path / "w")


def test_one_epoch_by_default_and_nothing_printed(tmp_path: Path, base: Path, data: Any,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    progress = Recorder()
    result = train_pair(base, data, build_options(method="full", batch_size=4, grad_accum=2), tmp_path / "w", progress)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    # One epoch of 36 training pairs in optimizer steps of 4 x 2 pairs: ceil(36 / 8) = 5 steps per run.
    assert result.options.epochs == 1.0 and result.positive.steps == result.negative.steps == 5
    assert progress.total == 10 and [n for n, _ in progress.steps] == list(range(1, 11))


def test_divergence_is_refused_and_leaves_no_output(tmp_path: Path, base: Path, data: Any) -> None:
    from pvreg.registry.errors import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match="positive run: .*NaN/Inf after training; lower lr"):
        train_pair(base, data, build_options(method="full", steps=2, lr=1e30), tmp_path / "w")
    assert list((tmp_path / "w").iterdir()) == []


def test_a_failed_negative_run_takes_the_positive_output_with_it(tmp_path: Path, base: Path, data: Any) -> None:
    def fail_on_negative(run: str, trainer: Any) -> None:
        assert (tmp_path / "w" / "positive").is_dir() == (run == "negative")
        if run == "negative":
            raise KeyboardInterrupt  # what an interrupted pvreg train meets

    with pytest.raises(KeyboardInterrupt):
        train_pair(base, data, build_options(method="lora", steps=1), tmp_path / "w", on_trainer=fail_on_negative)
    assert list((tmp_path / "w").iterdir()) == []


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(steps=0), "steps"), (dict(steps=2, epochs=1), "give steps or epochs, not both"),
        (dict(lr=float("nan")), "lr"), (dict(lr=-1), "lr"), (dict(beta=0), "beta"),
        (dict(eval_fraction=1), "eval_fraction"), (dict(method="qlora"), "method"),
        (dict(device="tpu"), "device"), (dict(lora_targets=[]), "lora_targets"), (dict(bogus=1), "bogus"),
    ],
)
def test_bad_options_are_one_line(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainOptionsError) as info:
        build_options(**values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_training_order_is_whole_steps_of_seeded_permutations() -> None:
    order = training_order(10, build_options(steps=7, batch_size=2, grad_accum=2, seed=5))
    assert len(order) == 28
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert order == training_order(10, build_options(steps=7, batch_size=2, grad_accum=2, seed=5))
    assert order != training_order(10, build_options(steps=7, batch_size=2, grad_accum=2, seed=6))
    assert len(training_order(10, build_options(epochs=1, batch_size=4))) == 12  # rounded up to whole steps
    assert len(training_order(10, build_options(batch_size=5))) == 10  # default: one epoch


# --- the extra --------------------------------------------------------------------------------


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_without_trl_train_pair_names_the_extra_before_importing_torch(tmp_path: Path, base: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", yes_no_pairs(4, seed=0))
    code = f"""
import sys, json
sys.modules["trl"] = None  # as if trl were not installed
from pvreg.registry.errors import MissingExtraError
from pvreg.registry.training import build_options, load_pairs, train_pair
try:
    train_pair({str(base)!r}, load_pairs({str(f)!r}), build_options(), {str(tmp_path / 'w')!r})
except MissingExtraError as exc:
    print(json.dumps([str(exc), exc.exit_code, [m for m in ("torch", "transformers", "datasets") if m in sys.modules]]))
"""
    out = _run_python(code)
    assert out.returncode == 0, out.stderr
    message, code_, heavy = json.loads(out.stdout)
    assert "pip install 'pvreg[train]'" in message and "'trl'" in message and "\n" not in message
    assert code_ == 2 and heavy == []
    assert not (tmp_path / "w").exists()


def test_importing_the_training_package_loads_no_heavy_library() -> None:
    out = _run_python(
        "import sys, pvreg.registry.training; "
        "print([m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules])"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
