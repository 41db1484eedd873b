"""Optimizers against torch.optim (the trajectories in tests/golden/optim,
made in float64 and float32 by tests/golden/make_golden.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import rel_err

import gpt2rs

GOLDEN = Path(__file__).parent / "golden"


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(GOLDEN / "optim" / "batches.npz") as z:
        return [(z[f"input_ids_{i}"], z[f"labels_{i}"]) for i in range(8)]


def trajectory(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "optim" / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def make(rt: gpt2rs.Runtime, dtype: str, **tiles: int) -> gpt2rs.GPT2LMHead:
    return gpt2rs.GPT2LMHead.from_pretrained(GOLDEN / "tiny", dtype=dtype, runtime=rt, **tiles)


RUNS = {
    "adamw_fp64": lambda m: gpt2rs.AdamW(
        m, lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
    ),
    "adam_fp64": lambda m: gpt2rs.Adam(m, lr=1e-3, weight_decay=0.1),
    "sgd_fp64": lambda m: gpt2rs.SGD(m, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd_nesterov_fp64": lambda m: gpt2rs.SGD(
        m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01
    ),
}


def run(
    model: gpt2rs.GPT2LMHead, opt: gpt2rs.optim.Optimizer, steps: int
) -> tuple[list[float], list[dict[str, np.ndarray]]]:
    losses, states = [], []
    for ids, labels in batches()[:steps]:
        model.zero_grad()
        losses.append(model.forward_backward(ids, labels=labels))
        opt.step()
        states.append(model.state_dict())
    return losses, states


@pytest.mark.parametrize("name", list(RUNS))
def test_fp64_trajectory_matches_torch(rt: gpt2rs.Runtime, name: str) -> None:
    ref = trajectory(name)
    steps = len(ref["loss"])
    model = make(rt, "fp64", seq_len_tile=3, hidden_size_tile=5)
    losses, states = run(model, RUNS[name](model), steps)
    np.testing.assert_allclose(losses, ref["loss"], rtol=1e-10)
    for k in range(steps):
        for p, v in states[k].items():
            err = rel_err(v, ref[f"step{k + 1}/{p}"])
            assert err <= 1e-9, f"{name} step {k + 1} {p}: {err:.2e}"


def test_fp32_adamw_no_worse_than_torch_fp32(rt: gpt2rs.Runtime) -> None:
    ref = trajectory("adamw_fp64")
    torch32 = float(trajectory("adamw_fp32")["rel_err_vs_fp64"])
    model = make(rt, "fp32", seq_len_tile=4)
    _, states = run(model, RUNS["adamw_fp64"](model), 8)
    ours = np.concatenate([states[-1][p].ravel() for p in sorted(states[-1])]).astype(np.float64)
    theirs = np.concatenate([ref[f"step8/{p}"].ravel() for p in sorted(states[-1])])
    err = rel_err(ours, theirs)
    assert err <= 2e-3, f"fp32 AdamW after 8 steps: {err:.2e} (torch fp32: {torch32:.2e})"


def test_clip_grad_norm_matches_torch(rt: gpt2rs.Runtime) -> None:
    with np.load(GOLDEN / "optim" / "clip.npz") as z:
        ref = {k: z[k] for k in z.files}
    model = make(rt, "fp64", hidden_size_tile=5)
    model.zero_grad()
    model.forward_backward(ref["input_ids"], labels=ref["labels"])
    norm = gpt2rs.clip_grad_norm(model, float(ref["max_norm"]))
    assert abs(norm - float(ref["total_norm"])) <= 1e-12 * float(ref["total_norm"])
    for p, g in model.gradients().items():
        assert rel_err(g, ref[f"clipped_grad/{p}"]) <= 1e-12, p


def test_state_dict_resumes_exactly(rt: gpt2rs.Runtime) -> None:
    a = make(rt, "fp32")
    opt_a = RUNS["adamw_fp64"](a)
    run(a, opt_a, 3)
    b = make(rt, "fp32")
    b.load_state_dict(a.state_dict())
    opt_b = RUNS["adamw_fp64"](b)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.step_count == 3
    rest = batches()[3:6]
    for model, opt in ((a, opt_a), (b, opt_b)):
        for ids, labels in rest:
            model.zero_grad()
            model.forward_backward(ids, labels=labels)
            opt.step()
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_bf16_keeps_fp32_master_weights(rt: gpt2rs.Runtime) -> None:
    model = make(rt, "bf16")
    opt = gpt2rs.AdamW(model, lr=1e-3)
    before = model.state_dict()
    assert all(v.dtype == np.float32 for v in before.values())
    run(model, opt, 2)
    after = model.state_dict()
    # Updates of ~1e-3 relative survive in the fp32 masters (bf16 would round many away).
    changed = np.mean([np.mean(after[k] != before[k]) for k in after])
    assert changed > 0.99
    st = opt.state_dict()["state"]["transformer.wte.weight"]
    assert st["exp_avg"].dtype == np.float32 and st["exp_avg_sq"].shape == (37, 12)


def test_bad_hyperparameters(rt: gpt2rs.Runtime) -> None:
    model = make(rt, "fp32")
    with pytest.raises(ValueError, match="learning rate"):
        gpt2rs.AdamW(model, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        gpt2rs.Adam(model, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="nesterov"):
        gpt2rs.SGD(model, lr=0.1, nesterov=True)
